"""Tests for the captioning protocol: batched generation, scoring against references, domains, pixels path."""

import pytest
import torch
from helpers.limber_train_helpers import make_tiny_encoder, make_tiny_lm, tiny_records

from vlbridge.data.records import ImageTextRecord
from vlbridge.errors import UserError
from vlbridge.evaluation import captioning
from vlbridge.evaluation.captioning import CaptionEvalConfig, evaluate_captioning
from vlbridge.models.generation import GenerationConfig

SHORT = GenerationConfig(max_new_tokens=4)  # keeps the tiny-LM generation fast


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vlbridge.models.limber import Limber, LimberConfig

    root = tmp_path_factory.mktemp("captioning")
    lm_dir = make_tiny_lm(root / "lm")
    spec = make_tiny_encoder(root / "encoder") + ":32px"
    torch.manual_seed(0)
    with_encoder = Limber.build(LimberConfig(encoder=spec, lm=str(lm_dir), num_prefix_tokens=2)).eval()
    return {"model": with_encoder}


@pytest.fixture(scope="module")
def records():
    # held-out images of every domain, with their reference captions
    return [r for domain in ("in", "near", "out") for r in tiny_records(2, split="test", domain=domain)]


def features_of(model, records):
    with torch.no_grad():
        pixels = torch.stack([model.encoder.preprocess(r.image) for r in records])
        return dict(zip([r.id for r in records], model.encoder(pixels)))


def test_scores_equal_the_metrics_on_the_generated_captions(models, records):
    from vlbridge.evaluation.metrics.io import score_captions

    model = models["model"]
    result = evaluate_captioning(
        model, records, CaptionEvalConfig(batch_size=4), generation=SHORT, features=features_of(model, records)
    )
    captions = {s["id"]: s["caption"] for s in result["samples"]}
    assert list(captions) == [r.id for r in records]
    assert all(c == c.strip() and "\n" not in c for c in captions.values())
    reference = score_captions(
        {r.id: r.captions for r in records}, captions, tokenize="ptb", domains={r.id: r.domain for r in records}
    )
    for metric in ("CIDEr-D", "BLEU-4", "ROUGE-L"):
        assert result[metric] == reference["corpus"][metric]
    assert set(result["by_domain"]) == {"in", "near", "out", "entire"} and result["df_scope"] == "per-domain"
    assert result["by_domain"]["out"]["CIDEr-D"] == reference["by_domain"]["out"]["CIDEr-D"]
    assert result["samples"][0]["refs"] == records[0].captions and result["n_images"] == 6


def test_pixels_and_cached_features_give_the_same_captions(models, records):
    model = models["model"]
    config = CaptionEvalConfig(batch_size=3)
    from_pixels = captioning.generate_captions(model, records, config, SHORT)
    from_features = captioning.generate_captions(model, records, config, SHORT, features=features_of(model, records))
    assert from_pixels == from_features


def test_images_without_cached_features_are_skipped(models, records):
    model = models["model"]
    features = features_of(model, records)
    del features[records[0].id]
    result = evaluate_captioning(model, records, CaptionEvalConfig(batch_size=4), SHORT, features=features)
    assert result["n_images"] == 5 and [s["id"] for s in result["samples"]] == [r.id for r in records[1:]]


def test_batching_does_not_change_captions(models, records):
    model = models["model"]
    features = features_of(model, records)
    one = captioning.generate_captions(model, records, CaptionEvalConfig(batch_size=1), SHORT, features=features)
    six = captioning.generate_captions(model, records, CaptionEvalConfig(batch_size=6), SHORT, features=features)
    assert one == six


def test_prompt_is_placed_after_the_image(models, records, monkeypatch):
    import vlbridge.models.generation as generation

    calls = []

    def fake_caption_images(model, batch, prompt, config):
        calls.append((prompt, batch["image_features"].shape[0]))
        return ["  a red circle \n"] * batch["image_features"].shape[0]

    monkeypatch.setattr(generation, "caption_images", fake_caption_images)
    model = models["model"]
    captions = captioning.generate_captions(
        model, records, CaptionEvalConfig(prompt="A photo of", batch_size=4), features=features_of(model, records)
    )
    assert calls == [("A photo of", 4), ("A photo of", 2)]
    assert set(captions.values()) == {"a red circle"}


def test_perfect_captions_score_high_and_bad_images_are_skipped(models, records, monkeypatch):
    import vlbridge.models.generation as generation

    by_pixels = {}

    def echo_first_reference(model, batch, prompt, config):
        return [by_pixels[i] for i in batch["id"]]

    monkeypatch.setattr(generation, "caption_images", echo_first_reference)
    broken = ImageTextRecord(id="broken", image=b"not a png", captions=["a thing"], domain="in")
    for r in records:
        by_pixels[r.id] = r.captions[0]
    result = evaluate_captioning(models["model"], [*records, broken])
    assert result["n_images"] == 6 and "broken" not in [s["id"] for s in result["samples"]]
    assert result["BLEU-1"] == pytest.approx(1.0)


def test_bad_inputs_are_user_errors(models, records):
    with pytest.raises(UserError, match="no images"):
        evaluate_captioning(models["model"], [])
    no_refs = ImageTextRecord(id="x", image=records[0].image, captions=[])
    with pytest.raises(UserError, match="no reference captions"):
        evaluate_captioning(models["model"], [no_refs])
    assert captioning.generate_captions(models["model"], records, features={}) == {}
    with pytest.raises(UserError, match="no captions to score"):
        evaluate_captioning(models["model"], records, features={})


class ColourClip(torch.nn.Module):
    """A stand-in CLIP: images -> mean RGB, texts -> counts of colour words (both 3-d)."""

    WORDS = ("red", "green", "blue")

    def encode_image(self, pixels):
        return pixels.mean(dim=(2, 3)) + 0.01  # (B, 3)

    def encode_text(self, counts):
        return counts + 0.01  # (B, 3)

    @classmethod
    def tokenize(cls, texts):
        return torch.tensor([[float(t.lower().split().count(w)) for w in cls.WORDS] for t in texts])


def test_clip_scores_use_the_scorer_on_images_and_captions(models, records, monkeypatch):
    import numpy as np
    from torchvision.transforms.functional import to_tensor

    import vlbridge.models.generation as generation
    from vlbridge.evaluation.metrics.clip_score import clip_s_from_embeddings
    from vlbridge.models.bundle import ClipBundle

    captions = {r.id: ["a red circle", "a blue square", "green"][i % 3] for i, r in enumerate(records)}
    monkeypatch.setattr(generation, "caption_images", lambda model, batch, prompt, config: [captions[i] for i in batch["id"]])
    scorer = ClipBundle(model=ColourClip(), preprocess=to_tensor, tokenizer=ColourClip.tokenize, name="colour-clip")
    result = evaluate_captioning(models["model"], records, clip_scorer=scorer)
    images = np.stack([np.asarray(r.image, dtype=np.float64).mean(axis=(0, 1)) / 255 + 0.01 for r in records])
    cands = ColourClip.tokenize(["A photo depicts " + captions[r.id] for r in records]).numpy() + 0.01
    refs = [ColourClip.tokenize(["A photo depicts " + c for c in r.captions]).numpy() + 0.01 for r in records]
    expected = clip_s_from_embeddings(images, cands, refs)
    assert result["CLIP-S"] == pytest.approx(expected["CLIP-S"], rel=1e-6)
    assert result["RefCLIP-S"] == pytest.approx(expected["RefCLIP-S"], rel=1e-6)
    assert result["clip_scorer"] == "colour-clip"
