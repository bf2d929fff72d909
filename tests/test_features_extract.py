"""The one pixel -> feature path, `vlbridge.data.features.extract_features`, and everything that uses it.

The references are the loops it replaced, inlined: FeatureStore's former `encode_records`,
`ClipBundle.embed_images` and CLIP-S's `embed_images`. Features must equal them bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from helpers.eval_helpers import single_thread, tiny_clip_bundle  # noqa: F401  (autouse fixture)
from PIL import Image
from safetensors.torch import save_file

from vlbridge.data import features as features_module
from vlbridge.data.features import FeatureStore, extract_features
from vlbridge.data.records import BadImage, ImageTextRecord, SkipCounter, open_image, to_rgb
from vlbridge.errors import BadInputError
from vlbridge.evaluation.metrics import clip_score
from vlbridge.models import bundle as bundle_module
from vlbridge.models.registry import build_encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("w") / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(path))
    return build_encoder(f"timm:test_resnet@{path}:32px")


def pictures(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (20 + i % 7, 24), ((41 * i) % 256, (83 * i) % 256, 90)) for i in range(n)]


def with_bad(tmp_path) -> list:
    good = pictures(5)
    return [good[0], tmp_path / "missing.png", good[1], b"not an image", good[2], good[3], good[4]]


@torch.no_grad()
def legacy_encode_records(encoder, images, batch_size):
    """FeatureStore's former encode_records: (kept positions, features) per window of images."""
    kept, outputs = [], []
    for start in range(0, len(images), batch_size):
        pixels = []
        for position in range(start, min(start + batch_size, len(images))):
            try:
                pixels.append(encoder.preprocess(open_image(images[position])))
            except BadImage:
                continue
            kept.append(position)
        if pixels:
            outputs.append(encoder(torch.stack(pixels).to(encoder.device)).float().cpu())
    return kept, torch.cat(outputs)


def test_bad_images_are_skipped_counted_and_the_rest_encoded(tmp_path, encoder):
    images = with_bad(tmp_path)
    ids = [f"r{i}" for i in range(len(images))]
    skips = SkipCounter("test")
    out = extract_features(encoder, images, ids, batch_size=3, skips=skips)
    assert out.kept == [0, 2, 4, 5, 6] and out.ids == ["r0", "r2", "r4", "r5", "r6"]
    assert set(out.skipped) == {"r1", "r3"} and "missing image file" in out.skipped["r1"]
    assert skips.as_dict() == {"bad image": 2}
    kept, expected = legacy_encode_records(encoder, images, 3)
    assert out.kept == kept and torch.equal(out.features, expected)
    nothing = extract_features(encoder, images[1:2], batch_size=3)
    assert nothing.features.shape == (0, encoder.feature_dim) and nothing.skipped == {"0": nothing.skipped["0"]}


def test_feature_store_features_equal_the_former_loop(tmp_path, encoder):
    images = with_bad(tmp_path)
    records = [ImageTextRecord(f"r{i}", image, ["x"]) for i, image in enumerate(images)]
    got = FeatureStore(tmp_path / "cache", chunk_size=4).get_or_extract(encoder, "toy", "train", records, batch_size=2)
    expected = torch.cat([legacy_encode_records(encoder, images[:4], 2)[1], legacy_encode_records(encoder, images[4:], 2)[1]])
    assert list(got) == ["r0", "r2", "r4", "r5", "r6"] and torch.equal(torch.stack(list(got.values())), expected)


@torch.no_grad()
def test_clip_bundle_and_clip_score_embed_as_before(tmp_path):
    bundle = tiny_clip_bundle()
    images = pictures(5)
    chunks = [bundle.model.encode_image(torch.stack([bundle.preprocess(to_rgb(im)) for im in images[s : s + 2]])).float()
              for s in range(0, 5, 2)]
    legacy = torch.cat(chunks)  # (5, E): the former ClipBundle.embed_images / CLIP-S loops, batch 2
    assert torch.equal(bundle.embed_images(images, batch_size=2), torch.nn.functional.normalize(legacy, dim=-1))
    assert torch.equal(bundle.embed_images(images, batch_size=2, normalize=False), legacy)
    scored = clip_score.embed_images(bundle, images, [str(i) for i in range(5)], batch_size=2)
    assert scored.dtype == np.float64 and np.array_equal(scored, legacy.numpy().astype(np.float64))
    with pytest.raises(BadInputError, match="image 1 of 2: missing image file"):
        bundle.embed_images([images[0], tmp_path / "gone.png"])
    with pytest.raises(BadInputError, match="image of id 'b': cannot decode"):
        clip_score.embed_images(bundle, [images[0], b"junk"], ["a", "b"])


def test_every_pixel_path_runs_extract_features_with_its_precision(tmp_path, encoder, monkeypatch):
    calls = []
    real = features_module.extract_features

    def spy(encoder, images, *args, **kwargs):
        calls.append((type(encoder).__name__, kwargs.get("mixed_precision", True)))
        return real(encoder, images, *args, **kwargs)

    for module in (features_module, bundle_module, clip_score):
        monkeypatch.setattr(module, "extract_features", spy)
    bundle = tiny_clip_bundle()
    images = pictures(2)
    records = [ImageTextRecord(f"r{i}", image, ["x"]) for i, image in enumerate(images)]
    FeatureStore(tmp_path).get_or_extract(encoder, "toy", "train", records)
    bundle.embed_images(images)
    clip_score.embed_images(bundle, images, ["a", "b"])
    # bf16 autocast on CUDA for cached features and CLIP-S (as before); fp32 for ClipBundle.embed_images
    assert calls == [(type(encoder).__name__, True), ("ClipBundle", False), ("SimpleNamespace", True)]
