"""Robustness: zero-shot and probe top-1 on clean vs shifted sets, and the drop."""

import pytest
import torch
import torch.nn.functional as F
from helpers.eval_helpers import single_thread  # noqa: F401  (autouse fixture)

from vlbridge.evaluation.linear_probe import ProbeConfig, select_and_fit
from vlbridge.evaluation.robustness import LabelledFeatures, evaluate_robustness, robustness_scores


def _world(seed=0, classes=5, dim=12):
    """Class prototypes; sets drawn around them with a chosen noise level (more noise = shifted)."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)

    def draw(n, noise, offset=0.0):
        labels = torch.randint(0, classes, (n,), generator=generator)
        features = prototypes[labels] + noise * torch.randn(n, dim, generator=generator) + offset
        return LabelledFeatures(features, labels)

    return prototypes, draw


def _accuracy(logits, labels):
    return float((logits.argmax(1) == labels).double().mean())


def test_scores_equal_direct_accuracies_and_drops():
    prototypes, draw = _world()
    train, clean = draw(300, 0.3), draw(200, 0.3)
    shifted = {"noisy": draw(200, 0.6), "offset": draw(200, 0.3, offset=0.25)}
    probe = select_and_fit(train.features, train.labels, 5, ProbeConfig(c_steps=2, c_min=0.1, c_max=1.0)).probe
    report = robustness_scores(clean, shifted, classifier=prototypes, probe=probe)

    zero_shot = {name: _accuracy(F.normalize(d.features, dim=-1) @ prototypes.T, d.labels) for name, d in shifted.items()}
    probe_top1 = {name: _accuracy(probe.logits(d.features), d.labels) for name, d in shifted.items()}
    clean_zero_shot = _accuracy(clean.features @ prototypes.T, clean.labels)
    clean_probe = _accuracy(probe.logits(clean.features), clean.labels)
    assert report["clean"] == pytest.approx({"zero_shot_top1": clean_zero_shot, "probe_top1": clean_probe})
    for name in shifted:
        row = report["shifts"][name]
        assert row["zero_shot_top1"] == pytest.approx(zero_shot[name])
        assert row["probe_top1"] == pytest.approx(probe_top1[name])
        assert row["zero_shot_drop"] == pytest.approx(clean_zero_shot - zero_shot[name])
        assert row["probe_drop"] == pytest.approx(clean_probe - probe_top1[name])
    assert report["mean_drop"]["probe"] == pytest.approx(sum(clean_probe - v for v in probe_top1.values()) / 2)
    assert report["shifts"]["noisy"]["zero_shot_drop"] > 0.05  # more noise really hurts


def test_one_head_only_and_errors():
    prototypes, draw = _world(seed=1)
    clean, shifted = draw(100, 0.3), {"s": draw(100, 0.5)}
    report = robustness_scores(clean, shifted, classifier=prototypes)
    assert set(report["clean"]) == {"zero_shot_top1"} and set(report["mean_drop"]) == {"zero_shot"}
    with pytest.raises(ValueError, match="got neither"):
        robustness_scores(clean, shifted)
    with pytest.raises(ValueError, match="at least one shifted"):
        robustness_scores(clean, {}, classifier=prototypes)


def test_evaluate_robustness_trains_probe_on_clean_train_only():
    prototypes, draw = _world(seed=2)
    train, clean, shifted = draw(250, 0.4), draw(150, 0.4), {"s": draw(150, 0.8)}
    config = ProbeConfig(c_steps=3, c_min=0.01, c_max=10.0, seed=5)
    report = evaluate_robustness(train, clean, shifted, 5, classifier=prototypes, probe_config=config)
    fit = select_and_fit(train.features, train.labels, 5, config)
    assert report["probe_C"] == fit.c
    assert report == robustness_scores(clean, shifted, prototypes, fit.probe) | {"probe_C": fit.c}
