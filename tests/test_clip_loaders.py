"""create_clip / load_clip: every on-disk format gives the same embeddings as its original library."""

from __future__ import annotations

import open_clip
import pytest
import torch
from helpers.clip_fixtures import hf_clip_dir, solid_images

from vlbridge.errors import UserError
from vlbridge.models.clip import architecture_config, create_clip, list_architectures, save_openclip_run
from vlbridge.models.clip_loading import load_clip
from vlbridge.checkpoint import save_checkpoint

TEXTS = ["a red circle", "two shapes: a blue square and a star", "a picture of a grinning face"]
TOL = 1e-5


def pixels(bundle, images):
    return torch.stack([bundle.preprocess(im) for im in images])


def raw_embeddings(model, bundle, images, texts):
    """encode_image / encode_text of `model` on the bundle's own inputs (unnormalised)."""
    with torch.no_grad():
        return model.encode_image(pixels(bundle, images)), model.encode_text(bundle.tokenizer(texts))


def assert_same_embeddings(bundle, model, images=None):
    images = images or solid_images(3)
    ours_image, ours_text = raw_embeddings(bundle.model, bundle, images, TEXTS)
    ref_image, ref_text = raw_embeddings(model, bundle, images, TEXTS)
    assert (ours_image - ref_image).abs().max() <= TOL
    assert (ours_text - ref_text).abs().max() <= TOL


@pytest.mark.parametrize("arch", ["vl-tiny-vit", "vl-tiny-rn", "vl-micro-vit", "vl-micro-rn"])
def test_create_clip_builds_registered_tiny_configs(arch):
    assert arch in list_architectures()
    cfg = architecture_config(arch)
    bundle = create_clip(arch)
    assert isinstance(bundle.model, open_clip.CLIP)
    assert bundle.tokenizer(TEXTS).shape == (3, cfg["text_cfg"]["context_length"])
    assert bundle.preprocess(solid_images(1)[0]).shape == (3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
    assert bundle.embed_images(solid_images(2)).shape == (2, cfg["embed_dim"])
    assert torch.allclose(bundle.embed_texts(TEXTS).norm(dim=-1), torch.ones(3))
    assert bundle.model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.07)).item())


def test_create_clip_image_size_override_and_unknown_name():
    bundle = create_clip("vl-micro-vit", image_size=48)
    assert bundle.preprocess(solid_images(1)[0]).shape == (3, 48, 48)
    with pytest.raises(UserError, match="unknown CLIP architecture 'no-such-arch'"):
        create_clip("no-such-arch")


def test_run_dir_roundtrip_is_also_an_open_clip_local_dir(tmp_path):
    bundle = create_clip("vl-micro-rn")
    save_openclip_run(bundle.model, architecture_config("vl-micro-rn"), tmp_path)
    loaded = load_clip(str(tmp_path))
    assert_same_embeddings(loaded, bundle.model)
    reference = open_clip.create_model(f"local-dir:{tmp_path}").eval()  # open_clip's own loader
    assert_same_embeddings(loaded, reference)


def test_vlbridge_checkpoint_file_and_run_dir_without_final_weights(tmp_path):
    bundle = create_clip("vl-micro-vit")
    spec = {"kind": "open_clip", "arch": "vl-micro-vit", "model_cfg": architecture_config("vl-micro-vit")}
    path = save_checkpoint(tmp_path, 7, {"model": bundle.model.state_dict(), "model_spec": spec})
    from_file = load_clip(path)
    assert from_file.name.endswith("@step-7")
    assert_same_embeddings(from_file, bundle.model)
    assert_same_embeddings(load_clip(tmp_path), bundle.model)  # run dir -> checkpoints/latest


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_open_clip_state_dict_with_arch_matches_open_clip(tmp_path, suffix):
    source = create_clip("vl-micro-vit").model
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    else:
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    loaded = load_clip(str(path), arch="vl-micro-vit")
    reference = open_clip.create_model("vl-micro-vit", pretrained=str(path)).eval()
    assert_same_embeddings(loaded, reference)
    assert_same_embeddings(loaded, source)


def openai_style_clip(kind: str) -> open_clip.CLIP:
    """A tiny CLIP with OpenAI's conventions (QuickGELU, 64-wide heads), as OpenAI checkpoints hold."""
    vision = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8} if kind == "vit" else {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16}
    text = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
    torch.manual_seed(11)
    return open_clip.CLIP(32, vision, text, quick_gelu=True).eval()


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_openai_torchscript_archive_architecture_inferred(tmp_path, kind):
    model = openai_style_clip(kind)
    images, tokens = torch.ones(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.long)
    methods = {"forward": (images, tokens), "encode_image": (images,), "encode_text": (tokens,)}
    traced = torch.jit.trace_module(model, methods)  # as OpenAI's released .pt files were made
    path = tmp_path / f"openai-{kind}.pt"
    torch.jit.save(traced, str(path))
    scripted = torch.jit.load(str(path))  # the original artefact
    loaded = load_clip(str(path))
    assert loaded.name.startswith("openai:")
    assert loaded.preprocess(solid_images(1)[0]).shape == (3, 32, 32)
    images = solid_images(2)
    batch = pixels(loaded, images)
    tokens = loaded.tokenizer(TEXTS[:2])
    with torch.no_grad():
        assert (loaded.model.encode_image(batch) - scripted.encode_image(batch)).abs().max() <= TOL
        assert (loaded.model.encode_text(tokens) - scripted.encode_text(tokens)).abs().max() <= TOL


def test_openai_state_dict_without_arch(tmp_path):
    model = openai_style_clip("vit")
    torch.save(model.state_dict(), tmp_path / "openai.pt")
    assert_same_embeddings(load_clip(tmp_path / "openai.pt"), model)


def test_hf_clip_directory_matches_transformers(tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = hf_clip_dir(tmp_path / "hf")
    bundle = load_clip(str(folder))
    model = CLIPModel.from_pretrained(str(folder)).eval()
    processor = CLIPImageProcessor.from_pretrained(str(folder))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    images = solid_images(3)
    with torch.no_grad():
        ref_image = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")  # the library's own usage
        ref_text = model.get_text_features(**encoded).pooler_output
    ours_image = bundle.embed_images(images, normalize=False)
    ours_text = bundle.embed_texts(TEXTS, normalize=False)
    assert (ours_image - ref_image).abs().max() <= TOL
    assert (ours_text - ref_text).abs().max() <= TOL
    assert bundle.model.logit_scale is model.logit_scale or torch.equal(bundle.model.logit_scale, model.logit_scale)


def test_bad_specs_are_one_line_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    torch.save(create_clip("vl-micro-vit").model.state_dict(), tmp_path / "micro.pt")
    cases = [
        (tmp_path / "nope", "does not exist"),
        (tmp_path / "empty", "holds no CLIP weights"),
        (tmp_path / "junk.pt", "cannot read checkpoint"),
        (tmp_path / "micro.pt", "cannot infer a CLIP architecture"),
    ]
    for spec, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            load_clip(str(spec))
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="does not fit architecture 'vl-micro-rn'"):
        load_clip(str(tmp_path / "micro.pt"), arch="vl-micro-rn")
