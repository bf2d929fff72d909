"""LinearProjector: exactly one Linear map, pooled (B, D) -> (B, k, H), grid (B, N, D) -> (B, N, H).
Spec: vlbridge.models.projector."""

from __future__ import annotations

import pytest
import torch

from vlbridge.models.projector import LinearProjector


def test_pooled_features_become_k_prefix_vectors_of_one_linear_map():
    projector = LinearProjector(feature_dim=6, hidden_size=5, num_prefix_tokens=3)
    features = torch.randn(4, 6)
    out = projector(features)
    assert out.shape == (4, 3, 5)
    weight, bias = projector.proj.weight, projector.proj.bias  # (k*H, D), (k*H,)
    expected = (features @ weight.T + bias).view(4, 3, 5)
    assert torch.allclose(out, expected, atol=1e-6)
    # prefix vector j is rows [j*H, (j+1)*H) of the weight
    assert torch.allclose(out[:, 1], features @ weight[5:10].T + bias[5:10], atol=1e-6)


def test_grid_features_map_token_by_token():
    projector = LinearProjector(feature_dim=6, hidden_size=5, pooled=False)
    features = torch.randn(2, 7, 6)
    out = projector(features)
    assert out.shape == (2, 7, 5)
    for token in range(7):
        assert torch.allclose(out[:, token], projector.proj(features[:, token]), atol=1e-6)


def test_only_the_linear_layer_is_trainable():
    projector = LinearProjector(feature_dim=8, hidden_size=4, num_prefix_tokens=2, dropout=0.1)
    names = sorted(name for name, _ in projector.named_parameters())
    assert names == ["proj.bias", "proj.weight"]
    assert sum(p.numel() for p in projector.parameters()) == 8 * 2 * 4 + 2 * 4
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in projector.modules())


def test_dropout_acts_only_in_training_mode():
    projector = LinearProjector(feature_dim=64, hidden_size=4, num_prefix_tokens=1, dropout=0.5)
    features = torch.randn(3, 64)
    projector.eval()
    assert torch.equal(projector(features), projector(features))
    projector.train()
    torch.manual_seed(0)
    assert not torch.allclose(projector(features), projector.eval()(features))


@pytest.mark.parametrize(
    "pooled, shape",
    [(True, (2, 5)), (True, (2, 3, 6)), (False, (2, 6)), (False, (2, 3, 5))],
)
def test_wrong_feature_shapes_say_what_was_expected(pooled, shape):
    projector = LinearProjector(feature_dim=6, hidden_size=4, pooled=pooled)
    with pytest.raises(ValueError, match=r"D=6, got shape"):
        projector(torch.randn(*shape))


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        LinearProjector(0, 4)
    with pytest.raises(ValueError):
        LinearProjector(4, 4, num_prefix_tokens=0)
    with pytest.raises(ValueError):
        LinearProjector(4, 4, dropout=1.0)


def test_input_scale_is_a_fixed_factor_before_the_linear_map():
    torch.manual_seed(0)
    scaled = LinearProjector(6, 4, num_prefix_tokens=2, input_scale=0.25)
    plain = LinearProjector(6, 4, num_prefix_tokens=2)
    plain.load_state_dict(scaled.state_dict())  # same weights: the scale is not a parameter
    features = torch.randn(3, 6)  # (B, D)
    assert torch.allclose(scaled(features), plain(features * 0.25))
    assert set(scaled.state_dict()) == {"proj.weight", "proj.bias"}
    with pytest.raises(ValueError, match="input_scale"):
        LinearProjector(6, 4, input_scale=0.0)


def test_unit_norm_feature_scale_sets_one_over_the_mean_norm_in_projector_and_config():
    from types import SimpleNamespace

    from vlbridge.errors import UserError
    from vlbridge.models.limber import LimberConfig
    from vlbridge.training.limber import TrainingData, scale_features

    features = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1: mean 3
    model = SimpleNamespace(projector=LinearProjector(2, 4), config=LimberConfig())
    scale_features(model, features, "unit-norm")
    assert model.projector.input_scale == pytest.approx(1 / 3) and model.config.input_scale == pytest.approx(1 / 3)
    untouched = SimpleNamespace(projector=LinearProjector(2, 4), config=LimberConfig())
    scale_features(untouched, features, "none")
    assert untouched.projector.input_scale == 1.0 and untouched.config.input_scale == 1.0
    with pytest.raises(UserError, match="feature_scale"):
        scale_features(untouched, features, "l2")


@pytest.mark.parametrize("pooled, shape", [(True, (64, 16)), (False, (8, 8, 16))])
def test_dropout_zeroes_prefix_entries_after_the_linear_map(pooled, shape):
    """LiMBeR's image_embed_dropout acts on the projected prefix (jmerullo/limber image_prefix.py), so whole
    output entries are zero; dropout on the input features would give W x' + b, never exactly 0."""
    torch.manual_seed(0)
    projector = LinearProjector(feature_dim=16, hidden_size=8, num_prefix_tokens=2, pooled=pooled, dropout=0.5)
    torch.nn.init.normal_(projector.proj.bias)  # no output entry is 0 without dropout
    features = torch.randn(*shape)
    projector.eval()
    kept = projector(features)
    assert (kept == 0).sum() == 0
    projector.train()
    dropped = projector(features)
    zero = dropped == 0
    assert 0.35 < zero.float().mean() < 0.65
    assert torch.allclose(dropped[~zero], kept[~zero] * 2.0)  # survivors scaled by 1 / (1 - p)
