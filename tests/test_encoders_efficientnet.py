"""The embedded EfficientNet-Lite0 encoder: real ImageNet weights (installed with the package
deps), pooled 1280-d = global average of the final map, grid 7x7 at 224 px / 4x4 at 128 px,
smaller multiples of 32 equal a net built for that size, random init differs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlbridge.errors import UserError
from vlbridge.models.registry import build_encoder


pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def lite0():
    return build_encoder("efficientnet-lite0")


def test_pooled_is_global_average_of_final_map(lite0):
    from vlbridge import assets

    reference = assets.load_efficientnet_lite0()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fmap = reference.extract_features(pixels)  # (2, 1280, 7, 7)
        assert torch.allclose(lite0(pixels), fmap.mean(dim=(2, 3)), atol=1e-5)
    assert (lite0.feature_dim, lite0.num_tokens, lite0.image_size) == (1280, 1, (224, 224))
    assert lite0.encoder_id.startswith("efficientnet-lite0@")


def test_grid_tokens_and_preprocessing():
    grid = build_encoder("efficientnet-lite0:grid")
    assert (grid.feature_dim, grid.num_tokens) == (1280, 49)
    small = build_encoder("efficientnet-lite0:grid:128px")
    assert (small.num_tokens, small.image_size) == (16, (128, 128))
    assert small.preprocess_id != grid.preprocess_id
    # TF-Lite normalisation: (x - 127) / 128 on a 0..255 scale, full-side centre crop
    white = small.preprocess(Image.new("RGB", (40, 40), (255, 255, 255)))
    assert white.shape == (3, 128, 128)
    assert torch.allclose(white, torch.full_like(white, (1.0 - 0.498) / 0.502), atol=1e-4)


def test_multiple_of_32_matches_a_net_built_for_that_size(lite0):
    """The 224 px net's static 'same' padding equals a 128 px build's: every strided layer sees an even size."""
    from efficientnet_lite_pytorch import EfficientNet

    small = build_encoder("efficientnet-lite0:128px")
    net128 = EfficientNet.from_name("efficientnet-lite0", image_size=128)
    net128.load_state_dict(small.net.state_dict())
    net128.eval()
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(small(pixels), net128.extract_features(pixels).mean(dim=(2, 3)))
    with pytest.raises(UserError, match="multiple of 32"):
        build_encoder("efficientnet-lite0:100px")


def test_random_efficientnet_differs_and_is_deterministic(lite0):
    random_a = build_encoder("random:efficientnet-lite0:64px")
    random_b = build_encoder("random:efficientnet-lite0:64px")
    trained = build_encoder("efficientnet-lite0:64px")
    assert random_a.encoder_id == random_b.encoder_id != trained.encoder_id
    assert random_a.encoder_id.startswith("random:efficientnet-lite0@")
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(random_a(pixels), random_b(pixels))
        assert not torch.allclose(random_a(pixels), trained(pixels))
