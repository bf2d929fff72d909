"""The fast CLIP training transform does open_clip's operations exactly, with torchvision's crop distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image

from vlbridge.models.clip import create_clip, train_transform
from vlbridge.training.clip_augment import FastCropNormalize, crop_box


@pytest.fixture(scope="module")
def transform():
    return train_transform(create_clip("vl-micro-rn").model, scale_min=0.5)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_pixels_equal_torchvision_for_the_same_crop(transform):
    fast = FastCropNormalize.from_transform(transform)
    crop, normalize = transform.transforms[0], transform.transforms[-1]
    image = noise_image(50, 41)
    for seed in range(5):
        top, left, h, w = crop_box(50, 41, fast.scale, fast.ratio, np.random.default_rng(seed))
        expected = F.normalize(F.to_tensor(F.resized_crop(image, top, left, h, w, list(crop.size), crop.interpolation)),
                               normalize.mean, normalize.std)
        got = fast(image, np.random.default_rng(seed))
        assert got.shape == expected.shape == (3, *crop.size) and got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=1e-6)


def test_crop_boxes_follow_the_configured_ranges():
    rng = np.random.default_rng(0)
    boxes = [crop_box(64, 64, (0.5, 1.0), (3 / 4, 4 / 3), rng) for _ in range(2000)]
    for top, left, h, w in boxes:
        assert 0 <= top <= 64 - h and 0 <= left <= 64 - w
        assert 0.5 - 0.05 <= h * w / 64**2 <= 1.0
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1  # rounding to whole pixels
    areas = np.array([h * w / 64**2 for _, _, h, w in boxes])
    assert 0.65 < areas.mean() < 0.8  # torchvision's accept/reject loop: mean area between the bounds
    assert len(set(boxes)) > 500


def test_extreme_aspect_ratios_fall_back_to_torchvision_centre_crop():
    rng = np.random.default_rng(0)
    assert crop_box(200, 10, (0.9, 1.0), (3 / 4, 4 / 3), rng) == (0, (200 - 13) // 2, 10, 13)
    assert crop_box(10, 200, (0.9, 1.0), (3 / 4, 4 / 3), rng) == ((200 - 13) // 2, 0, 13, 10)


def test_other_transform_shapes_use_the_generic_path():
    from torchvision import transforms as T

    assert FastCropNormalize.from_transform(T.Compose([T.ToTensor()])) is None
    jitter = train_transform(create_clip("vl-micro-rn").model, scale_min=0.9, color_jitter=0.4)
    assert FastCropNormalize.from_transform(jitter) is None
    assert math.isclose(float(FastCropNormalize.from_transform(train_transform(create_clip("vl-micro-rn").model)).scale[0]), 0.9)


def test_batched_normalisation_equals_per_sample(transform):
    fast = FastCropNormalize.from_transform(transform)
    images = [noise_image(40 + i, 36, seed=i) for i in range(4)]
    one_by_one = torch.stack([fast(im, np.random.default_rng(i)) for i, im in enumerate(images)])
    batched = fast.normalize(torch.stack([fast.crop(im, np.random.default_rng(i)) for i, im in enumerate(images)]))
    assert torch.equal(one_by_one, batched)
