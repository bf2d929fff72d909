"""Tests for image-tower runs: the same start as a CLIP of the same seed, exact save/load, and the
`tower:` encoder reading the same features as the `clip:` encoder of the CLIP it came from."""

import pytest
import torch

from vlbridge.errors import UserError
from vlbridge.models.clip import architecture_config, model_from_config, save_openclip_run
from vlbridge.models.registry import build_encoder
from vlbridge.models.tower import build_tower, load_tower, save_tower


def test_a_tower_starts_exactly_where_a_clip_of_the_same_seed_does():
    tower, _ = build_tower("vl-micro-rn", seed=5)
    torch.manual_seed(5)
    clip = model_from_config(architecture_config("vl-micro-rn"))
    for (name, a), (_, b) in zip(tower.state_dict().items(), clip.visual.state_dict().items()):
        assert torch.equal(a, b), name
    other, _ = build_tower("vl-micro-rn", seed=6)
    assert not torch.equal(next(iter(other.state_dict().values())), next(iter(tower.state_dict().values())))


def test_tower_features_equal_the_clip_encoder_of_the_same_weights(tmp_path):
    torch.manual_seed(3)  # not the random: re-initialisation's seed
    model_cfg = architecture_config("vl-micro-rn")
    clip = model_from_config(model_cfg).eval()
    save_openclip_run(clip, model_cfg, tmp_path / "clip")
    save_tower(clip.visual, model_cfg, tmp_path / "tower", objective="contrastive", steps=0)
    tower, _, config = load_tower(tmp_path / "tower")
    assert config["objective"] == "contrastive" and config["steps"] == 0
    pixels = torch.randn(3, 3, 32, 32)
    from_clip, from_tower = build_encoder(f"clip:{tmp_path / 'clip'}"), build_encoder(f"tower:{tmp_path / 'tower'}")
    assert torch.equal(from_clip(pixels), from_tower(pixels))
    assert from_tower.encoder_id.startswith("tower:") and from_tower.feature_dim == model_cfg["embed_dim"]
    assert from_clip.preprocess_id == from_tower.preprocess_id
    randomised = build_encoder(f"random:tower:{tmp_path / 'tower'}")
    assert randomised.encoder_id != from_tower.encoder_id and not torch.equal(randomised(pixels), from_tower(pixels))


def test_bad_tower_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not an image-tower run"):
        load_tower(tmp_path)
    (tmp_path / "tower.json").write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        load_tower(tmp_path)
