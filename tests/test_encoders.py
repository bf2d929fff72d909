"""Encoder registry + timm encoders: spec parsing, weights loaded through the real path give the
same features as timm itself, grid/pooled shapes, identity (encoder_id / preprocess_id),
random init, freezing. Models are timm's tiny `test_resnet` / `test_vit` with random weights
saved to disk as safetensors or torch state dicts."""

from __future__ import annotations

import pytest
import timm
import timm.data
import torch
from PIL import Image
from safetensors.torch import save_file

from vlbridge.errors import UserError
from vlbridge.models.encoders import preprocess_identity
from vlbridge.models.registry import EncoderSpec, build_encoder, parse_encoder_spec


def _timm_file(tmp_path, name: str, fmt: str = "safetensors", seed: int = 1):
    """A timm model with random weights (classifier included) saved to disk; returns (model, path)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    if fmt == "safetensors":
        path = tmp_path / f"{name}-{seed}.safetensors"
        save_file(model.state_dict(), str(path))
    else:
        path = tmp_path / f"{name}-{seed}.pth"
        torch.save({"state_dict": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    return _timm_file(tmp_path_factory.mktemp("timm"), "test_resnet")


def test_parse_spec_kinds_and_modifiers():
    assert parse_encoder_spec("efficientnet-lite0") == EncoderSpec("efficientnet-lite0", "", text="efficientnet-lite0")
    spec = parse_encoder_spec("random:timm:resnet10t@/w/x.safetensors:grid:64px")
    assert (spec.kind, spec.target, spec.grid, spec.image_size, spec.random_init) == (
        "timm", "resnet10t@/w/x.safetensors", True, 64, True,
    )
    assert parse_encoder_spec("clip-grid:runs/clip").grid and parse_encoder_spec("clip-grid:runs/clip").kind == "clip"
    assert not parse_encoder_spec("clip:runs/clip").grid
    assert parse_encoder_spec("hf:/models/beit:grid") == EncoderSpec("hf", "/models/beit", True, text="hf:/models/beit:grid")


@pytest.mark.parametrize("spec", ["vit:base", "foo", "timm:", "ssl:", "random:nothing:x"])
def test_unknown_or_incomplete_spec_is_user_error(spec):
    with pytest.raises(UserError) as err:
        build_encoder(spec)
    assert "timm:NAME@WEIGHTS_FILE" in str(err.value) or "needs a target" in str(err.value)


def test_timm_without_weights_file_refuses_to_download():
    with pytest.raises(UserError, match="local weights file"):
        build_encoder("timm:test_resnet")


def test_timm_pooled_and_grid_equal_timm(resnet_file):
    model, path = resnet_file
    pooled = build_encoder(f"timm:test_resnet@{path}")
    grid = build_encoder(f"timm:test_resnet@{path}:grid")
    pixels = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        fmap = model.forward_features(pixels)  # (2, C, 5, 5)
        expected_pooled = model.forward_head(fmap, pre_logits=True)
        expected_grid = fmap.flatten(2).transpose(1, 2)
        assert torch.equal(pooled(pixels), expected_pooled)
        assert torch.equal(grid(pixels), expected_grid)
    assert (pooled.pooled, pooled.num_tokens, pooled.feature_dim) == (True, 1, model.num_features)
    assert (grid.pooled, grid.num_tokens, grid.feature_dim) == (False, 25, model.num_features)
    # preprocessing is timm's own eval transform for the architecture
    image = Image.new("RGB", (90, 70), (200, 30, 60))
    timm_transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    assert torch.equal(pooled.preprocess(image), timm_transform(image))
    assert pooled.image_size == (160, 160)


def test_timm_vit_grid_drops_class_token_and_reads_wrapped_pth(tmp_path):
    model, path = _timm_file(tmp_path, "test_vit", fmt="pth")
    grid = build_encoder(f"timm:test_vit@{path}:grid")
    pooled = build_encoder(f"timm:test_vit@{path}")
    pixels = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        tokens = model.forward_features(pixels)  # (2, 1 + N, D)
        assert torch.equal(grid(pixels), tokens[:, model.num_prefix_tokens :])
        assert torch.equal(pooled(pixels), model.forward_head(tokens, pre_logits=True))
    patch = model.patch_embed.patch_size[0]
    assert grid.num_tokens == (160 // patch) ** 2


def test_timm_weights_of_another_architecture_are_rejected(tmp_path):
    _, vit_path = _timm_file(tmp_path, "test_vit")
    with pytest.raises(UserError, match="does not fit"):
        build_encoder(f"timm:test_resnet@{vit_path}")
    with pytest.raises(UserError, match="does not exist"):
        build_encoder(f"timm:test_resnet@{tmp_path / 'missing.safetensors'}")


def test_encoder_id_tracks_weights_and_mode(tmp_path, resnet_file):
    _, path = resnet_file
    first = build_encoder(f"timm:test_resnet@{path}")
    again = build_encoder(f"timm:test_resnet@{path}")
    assert first.encoder_id == again.encoder_id and first.encoder_id.startswith("timm:test_resnet@")
    state = {k: v.clone() for k, v in first.model.state_dict().items()}
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[key][0, 0, 0, 0] += 1e-3
    changed_path = tmp_path / "changed.safetensors"
    save_file(state, str(changed_path))
    changed = build_encoder(f"timm:test_resnet@{changed_path}")
    assert changed.encoder_id != first.encoder_id
    assert build_encoder(f"timm:test_resnet@{path}:grid").encoder_id != first.encoder_id


def test_preprocess_id_tracks_input_size(resnet_file):
    _, path = resnet_file
    native = build_encoder(f"timm:test_resnet@{path}")
    small = build_encoder(f"timm:test_resnet@{path}:64px")
    assert small.image_size == (64, 64) and small.preprocess_id.startswith("64x64-")
    assert small.preprocess_id != native.preprocess_id
    assert small.encoder_id == native.encoder_id  # same weights; the cache key also holds preprocess_id
    # the id is a pure function of the transform: the same transform built twice gives the same id
    assert preprocess_identity(small.preprocess)[1] == preprocess_identity(build_encoder(f"timm:test_resnet@{path}:64px").preprocess)[1]


def test_random_init_is_deterministic_and_differs_from_weights(resnet_file):
    _, path = resnet_file
    trained = build_encoder(f"timm:test_resnet@{path}")
    random_a = build_encoder("random:timm:test_resnet")
    random_b = build_encoder(f"random:timm:test_resnet@{path}")  # the weights file is ignored
    assert random_a.encoder_id == random_b.encoder_id and random_a.encoder_id.startswith("random:timm:test_resnet@")
    pixels = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(random_a(pixels), random_b(pixels))
        assert not torch.allclose(random_a(pixels), trained(pixels))
    for name, param in random_a.named_parameters():
        if param.ndim > 1:
            assert not torch.equal(param, trained.state_dict()[name]), name


def test_encoder_is_frozen_until_unfrozen(resnet_file):
    _, path = resnet_file
    encoder = build_encoder(f"timm:test_resnet@{path}")
    assert not any(p.requires_grad for p in encoder.parameters())
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    encoder.unfreeze().train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    out = encoder(torch.randn(2, 3, 64, 64)).sum()
    out.backward()
    assert any(p.grad is not None for p in encoder.parameters())
    encoder.freeze()
    assert not encoder.training


def test_forward_rejects_wrong_shape(resnet_file):
    _, path = resnet_file
    encoder = build_encoder(f"timm:test_resnet@{path}")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder(torch.randn(3, 32, 32))


def test_size_modifier_rejected_for_fixed_size_models(tmp_path):
    _, path = _timm_file(tmp_path, "test_vit")
    with pytest.raises(UserError, match="fixed input size"):
        build_encoder(f"timm:test_vit@{path}:64px")
