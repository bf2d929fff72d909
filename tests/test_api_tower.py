"""The API on a projector shaped like the redesigned study's: a `tower:` encoder and a unit-norm input scale.

Spec: `vlbridge.load` of a study-style projector folder (run dir with model/limber.yaml whose encoder
is `tower:DIR` and whose `input_scale` came from `feature_scale: unit-norm`) keeps the scale; the
API's image features are the ones the study trained on (`extract_features`, the feature-cache path);
the projector multiplies them by the scale before its linear map; and a caption from the API equals
the caption decoded from those cached features.
"""

from __future__ import annotations

import pytest
import torch

from helpers.serve_helpers import spread_projector, write_images
from helpers.tiny_lm import save_tiny_lm


@pytest.fixture(scope="module")
def study_like(tmp_path_factory):
    """(projector run dir, image paths, the input scale) of a tiny tower -> GPT-2 LiMBeR saved like the study's."""
    from vlbridge.data.records import open_image
    from vlbridge.models.clip import architecture_config, model_from_config
    from vlbridge.models.limber import Limber, LimberConfig
    from vlbridge.models.tower import save_tower

    root = tmp_path_factory.mktemp("study-like")
    torch.manual_seed(3)
    model_cfg = architecture_config("vl-micro-rn")
    tower_dir = save_tower(model_from_config(model_cfg).visual.eval(), model_cfg, root / "rung" / "tower",
                           objective="contrastive", steps=0)
    lm_dir = save_tiny_lm(root / "lm", "gpt2", seed=0)
    paths = sorted(write_images(root / "images", 4).glob("*.png"))
    model = Limber.build(LimberConfig(encoder=f"tower:{tower_dir}", lm=str(lm_dir), num_prefix_tokens=2))
    with torch.no_grad():
        features = model.encode(torch.stack([model.encoder.preprocess(open_image(p)) for p in paths]))
    scale = float(1.0 / features.norm(dim=-1).mean())  # what `feature_scale: unit-norm` sets
    spread_projector(model)
    model.projector.input_scale = model.config.input_scale = scale
    with torch.no_grad():
        model.projector.proj.weight.div_(scale)  # the same map on scaled features, so images stay apart
    model.save(root / "projector" / "model")
    return root / "projector", paths, scale


def test_load_keeps_the_tower_encoder_and_the_input_scale(study_like):
    import vlbridge

    folder, _, scale = study_like
    limber = vlbridge.load(folder)
    assert limber.model.config.encoder.startswith("tower:") and limber.model.config.encoder_id.startswith("tower:")
    assert limber.model.projector.input_scale == pytest.approx(scale) and scale != pytest.approx(1.0)
    assert limber.name == "projector"


def test_api_features_are_the_cached_training_features_and_are_scaled(study_like):
    import vlbridge
    from vlbridge.data.features import extract_features

    folder, paths, scale = study_like
    limber = vlbridge.load(folder)
    cached = extract_features(limber.model.encoder, [str(p) for p in paths]).features  # (B, D), the study's path
    served = limber.image_features([str(p) for p in paths])
    assert torch.allclose(served, cached, atol=1e-6)
    projector = limber.model.projector
    with torch.no_grad():
        by_hand = (cached * scale) @ projector.proj.weight.T + projector.proj.bias  # (B, k*H)
        assert torch.allclose(projector(cached).flatten(1), by_hand, atol=1e-5)


def test_api_captions_equal_captions_of_the_cached_features(study_like):
    import vlbridge
    from vlbridge.data.features import extract_features
    from vlbridge.models.generation import GenerationConfig, answer_questions

    folder, paths, _ = study_like
    limber = vlbridge.load(folder)
    cached = extract_features(limber.model.encoder, [str(p) for p in paths]).features
    expected = answer_questions(limber.model, [[row, "A picture of"] for row in cached], GenerationConfig(max_new_tokens=8))
    captions = limber.caption([str(p) for p in paths], max_new_tokens=8)
    assert captions == expected and len(set(captions)) > 1
