"""Tests for the embedded pretrained encoders: EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2.

They load the real installed weights (marker `assets`; skipped with the install command when an
asset is missing) and never touch a model hub.
"""

import pytest
import torch

from vlbridge import assets

pytestmark = pytest.mark.assets


def need(name: str):
    asset = assets.get_asset(name)
    if asset.locate() is None:
        pytest.skip(asset.missing_message())
    return asset.locate()


def _normalise(batch01: torch.Tensor, mean, std) -> torch.Tensor:
    return (batch01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def natural_noise_images(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) in 0..1 with natural-image statistics: a 1/f amplitude spectrum,
    channels mostly sharing one luminance, per-image mean 0.45 and std 0.25 (ImageNet-like)."""
    generator = torch.Generator().manual_seed(seed)
    fy, fx = torch.fft.fftfreq(size)[:, None], torch.fft.rfftfreq(size)[None, :]
    frequency = (fx**2 + fy**2).sqrt()
    frequency[0, 0] = 1.0
    spectrum = torch.randn(count, 3, size, size // 2 + 1, generator=generator, dtype=torch.complex64) / frequency
    images = torch.fft.irfftn(spectrum, s=(size, size), dim=(-2, -1))  # (count, 3, size, size)
    images = 0.8 * images.mean(1, keepdim=True) + 0.2 * images
    images = (images - images.mean(dim=(-2, -1), keepdim=True)) / images.std(dim=(-2, -1), keepdim=True)
    return (0.45 + 0.25 * images).clamp(0, 1)


@pytest.fixture(scope="module")
def efficientnet():
    need("efficientnet-lite0")
    return assets.load_efficientnet_lite0()


def test_efficientnet_weights_are_the_real_ones(efficientnet):
    from efficientnet_lite_pytorch import EfficientNet

    assert not efficientnet.training
    random_init = EfficientNet.from_name("efficientnet-lite0").state_dict()
    loaded = efficientnet.state_dict()
    assert loaded.keys() == random_init.keys()
    floats = [k for k, v in loaded.items() if v.is_floating_point()]
    assert all(not torch.equal(loaded[k], random_init[k]) for k in floats if not k.endswith("num_batches_tracked"))
    assert not torch.allclose(efficientnet._bn0.running_var, torch.ones_like(efficientnet._bn0.running_var))
    assert isinstance(efficientnet._swish, torch.nn.ReLU6)  # Lite uses ReLU6, not swish


def test_efficientnet_classifies_a_synthetic_image(efficientnet):
    size = assets.EFFICIENTNET_LITE0_SIZE
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([xx, yy, (xx + yy) / 2])[None]  # (1, 3, 224, 224) colour gradient
    pixels = _normalise(image, assets.EFFICIENTNET_LITE0_MEAN, assets.EFFICIENTNET_LITE0_STD)
    with torch.no_grad():
        logits = efficientnet(pixels)  # (1, 1000)
        features = efficientnet.extract_features(pixels)  # (1, 1280, 7, 7)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    grid = assets.EFFICIENTNET_LITE0_GRID
    assert features.shape == (1, assets.EFFICIENTNET_LITE0_FEATURE_DIM, grid, grid)
    assert 0 <= int(logits.argmax()) < 1000


def test_efficientnet_documented_normalisation_matches_its_batchnorm(efficientnet):
    """The stem BatchNorm's running variance was measured on correctly normalised ImageNet photos.
    On images with natural statistics our documented mean/std (TF-Lite's 127/128) must land near
    it (variance ratio 0.85 measured), and clearly nearer than ImageNet's 0.229-std normalisation (4.2)."""
    images = natural_noise_images(8)
    captured = {}
    hook = efficientnet._bn0.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0]))
    ratios = {}
    try:
        for name, mean, std in [
            ("documented", assets.EFFICIENTNET_LITE0_MEAN, assets.EFFICIENTNET_LITE0_STD),
            ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]:
            with torch.no_grad():
                efficientnet(_normalise(images, mean, std))
            observed = captured["x"].var(dim=(0, 2, 3))  # (32,) per stem channel
            ratios[name] = (observed / efficientnet._bn0.running_var).median().log().abs().item()
    finally:
        hook.remove()
    assert ratios["documented"] < 0.4 < 1.0 < ratios["imagenet"], ratios  # |log variance ratio|


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    folder = need("minilm")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True), AutoModel.from_pretrained(folder, local_files_only=True).eval()


def _embed(minilm, sentences):
    tokenizer, model = minilm
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # (B, 384) mean over real tokens
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_minilm_folder_loads_offline_and_embeds_384(minilm):
    folder = assets.minilm_dir()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    embedding = _embed(minilm, ["a red circle above a blue square"])
    assert embedding.shape == (1, 384)
    dog, puppy, spreadsheet = _embed(minilm, ["a photo of a dog", "a picture of a puppy", "a quarterly spreadsheet"])
    assert float(dog @ puppy) > float(dog @ spreadsheet) + 0.2


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_reference(minilm):
    """Our mean-pool + L2 recipe equals sentence-transformers' own pipeline for this folder (slow import)."""
    from sentence_transformers import SentenceTransformer

    sentences = ["a red circle", "two green triangles on a white background"]
    reference = SentenceTransformer(str(assets.minilm_dir()), device="cpu").encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(_embed(minilm, sentences), torch.nn.functional.normalize(reference, dim=-1), atol=1e-5, rtol=0)
