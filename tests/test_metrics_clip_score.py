"""CLIP-S / RefCLIP-S equal a transcription of jmhessel/clipscore; the model path embeds correctly.

The reference functions below transcribe clipscore.py (get_clip_score, get_refonlyclipscore
and the harmonic mean in main). A tiny deterministic fake CLIP checks batching, the
"A photo depicts " prefix, the scorer name in the output, and ClipBundle compatibility.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from vlbridge.errors import BadInputError
from vlbridge.evaluation.metrics.clip_score import CLIP_S_PREFIX, clip_s_from_embeddings, clip_score, embed_texts


def reference_clip_s(images, candidates, w=2.5):
    images = images / np.sqrt(np.sum(images**2, axis=1, keepdims=True))
    candidates = candidates / np.sqrt(np.sum(candidates**2, axis=1, keepdims=True))
    per = w * np.clip(np.sum(images * candidates, axis=1), 0, None)
    return np.mean(per), per, candidates


def reference_ref_only(references, candidates):
    per = []
    for cand, refs in zip(candidates, references):
        refs = refs / np.sqrt(np.sum(refs**2, axis=1, keepdims=True))
        per.append(np.max(cand.dot(refs.transpose())))
    return np.mean(per), np.array(per)


def random_features(seed, n=12, d=16, refs_per_item=(1, 5)):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, d))
    candidates = images * 0.5 + rng.normal(size=(n, d))  # mostly positive cosines, some negative
    references = [candidates[i] + rng.normal(size=(rng.integers(*refs_per_item), d)) for i in range(n)]
    return images, candidates, references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_reference_implementation(seed):
    images, candidates, references = random_features(seed)
    ref_mean, ref_per, normed_candidates = reference_clip_s(images, candidates)
    _, text_per = reference_ref_only(references, normed_candidates)
    ref_refclip = 2 * ref_per * text_per / (ref_per + text_per)
    result = clip_s_from_embeddings(images, candidates, references)
    assert result["CLIP-S"] == pytest.approx(ref_mean, abs=1e-12)
    np.testing.assert_allclose([v["CLIP-S"] for v in result["per_id"].values()], ref_per, atol=1e-12, rtol=0)
    np.testing.assert_allclose([v["RefCLIP-S"] for v in result["per_id"].values()], ref_refclip, atol=1e-12, rtol=0)
    assert result["RefCLIP-S"] == pytest.approx(np.mean(ref_refclip), abs=1e-12)


def test_negative_image_text_cosine_is_clipped_and_torch_input_accepted():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    candidates = torch.tensor([[-1.0, 0.2], [3.0, 4.0]])
    result = clip_s_from_embeddings(images, candidates, ids=["neg", "pos"])
    assert result["per_id"]["neg"]["CLIP-S"] == 0.0
    assert result["per_id"]["pos"]["CLIP-S"] == pytest.approx(2.5 * 0.6)
    assert result["RefCLIP-S"] is None


def test_both_sides_zero_gives_zero_not_nan():
    result = clip_s_from_embeddings([[1.0, 0.0]], [[-1.0, 0.0]], [np.array([[1.0, 0.0], [0.0, 1.0]])])
    assert result["per_id"]["0"] == {"CLIP-S": 0.0, "RefCLIP-S": 0.0}


def test_bad_embeddings_raise_user_errors():
    with pytest.raises(BadInputError, match="same shape"):
        clip_s_from_embeddings(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(BadInputError, match="zero"):
        clip_s_from_embeddings(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(BadInputError, match="2-d"):
        clip_s_from_embeddings(np.ones(3), np.ones(3))


class FakeClip(torch.nn.Module):
    """A deterministic 'CLIP': images -> projected channel means; texts -> mean of byte embeddings."""

    def __init__(self, dim=8):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.image_proj = torch.nn.Parameter(torch.randn(3, dim, generator=generator))
        self.text_embed = torch.nn.Parameter(torch.randn(256, dim, generator=generator))
        self.seen_texts: list[str] = []

    def encode_image(self, pixel_values):
        return pixel_values.mean(dim=(2, 3)) @ self.image_proj + 0.1  # (B, dim)

    def encode_text(self, token_ids):
        mask = (token_ids > 0).float().unsqueeze(-1)  # (B, L, 1)
        return (self.text_embed[token_ids] * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, dim)


class FakeScorer:
    name = "fake-clip"

    def __init__(self):
        self.model = FakeClip()
        self.device = torch.device("cpu")

    def preprocess(self, image):
        array = np.asarray(image.resize((8, 8)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)  # (3, 8, 8)

    def tokenizer(self, texts):
        self.model.seen_texts.extend(texts)
        width = max(len(t.encode()) for t in texts)
        return torch.tensor([list(t.encode()) + [0] * (width - len(t.encode())) for t in texts])


def make_images(n):
    return [Image.new("RGB", (12, 10), color=(40 * i % 255, 90, 200 - 10 * i)) for i in range(n)]


def test_model_path_equals_pure_function_on_the_same_features():
    scorer = FakeScorer()
    images = make_images(5)
    candidates = [f"a shape number {i}" for i in range(5)]
    references = [["shape one", "a picture"], ["thing two"], ["x"], ["y", "z", "w"], ["v"]]
    result = clip_score(scorer, images, candidates, references, ids=list("abcde"), batch_size=2)
    with torch.no_grad():
        image_features = torch.cat([scorer.model.encode_image(scorer.preprocess(im).unsqueeze(0)) for im in images])
        candidate_features = embed_texts(scorer, [CLIP_S_PREFIX + c for c in candidates])
        reference_features = [embed_texts(scorer, [CLIP_S_PREFIX + r for r in refs]) for refs in references]
    expected = clip_s_from_embeddings(image_features.numpy(), candidate_features, reference_features, list("abcde"))
    assert result["scorer"] == "fake-clip" and result["num_images"] == 5
    assert result["CLIP-S"] == pytest.approx(expected["CLIP-S"], abs=1e-6)
    assert result["RefCLIP-S"] == pytest.approx(expected["RefCLIP-S"], abs=1e-6)
    assert all(t.startswith("A photo depicts ") for t in scorer.model.seen_texts)


def test_batch_size_does_not_change_scores():
    images, candidates = make_images(7), [f"caption {i}" for i in range(7)]
    one = clip_score(FakeScorer(), images, candidates, batch_size=1)
    many = clip_score(FakeScorer(), images, candidates, batch_size=64)
    assert one["CLIP-S"] == pytest.approx(many["CLIP-S"], abs=1e-6)


def test_works_with_a_clip_bundle():
    bundle_module = pytest.importorskip("vlbridge.models.bundle")
    fake = FakeScorer()
    bundle = bundle_module.ClipBundle(model=fake.model, preprocess=fake.preprocess, tokenizer=fake.tokenizer, name="bundle-clip")
    result = clip_score(bundle, make_images(3), ["a", "b", "c"])
    assert result["scorer"] == "bundle-clip" and 0 <= result["CLIP-S"] <= 2.5


def test_bad_inputs_raise_user_errors(tmp_path):
    scorer = FakeScorer()
    with pytest.raises(BadInputError, match="2 images but 1"):
        clip_score(scorer, make_images(2), ["a"])
    with pytest.raises(BadInputError, match="no references"):
        clip_score(scorer, make_images(1), ["a"], [[]])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(BadInputError, match="image of id 'b0'"):
        clip_score(scorer, [broken], ["a"], ids=["b0"])
