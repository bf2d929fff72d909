"""Robustness to distribution shift: zero-shot and linear probe, clean vs shifted, side by side.

The protocol (CLIP paper, section 3.3): both heads see the same frozen image features.
The zero-shot head is the text classifier from `zero_shot.build_classifier`; the probe is
fitted on *clean* training features only (`linear_probe.select_and_fit`). Both are then
scored on the clean test set and on each shifted test set (the same scenes drawn with a
shapes-world shift, or any other dataset with the same classes); the drop is
clean top-1 minus shifted top-1 (in accuracy fractions, so 0.25 = 25 points).

`robustness_scores` is pure (features in, dict of floats out); `evaluate_robustness` adds
the probe fit. Either head may be left out (None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from vlbridge.evaluation.linear_probe import LinearProbe, ProbeConfig, select_and_fit
from vlbridge.evaluation.zero_shot import classification_scores


@dataclass
class LabelledFeatures:
    """Frozen image features of one evaluation set and their class indices."""

    features: torch.Tensor  # (N, E) image embeddings
    labels: torch.Tensor  # (N,) class indices into the shared class list


def robustness_scores(
    clean: LabelledFeatures,
    shifted: Mapping[str, LabelledFeatures],
    classifier: torch.Tensor | None = None,
    probe: LinearProbe | None = None,
) -> dict:
    """{"clean": {head_top1}, "shifts": {name: {head_top1, head_drop}}, "mean_drop": {head}} for head in zero_shot/probe."""
    heads = _heads(classifier, probe)
    if not heads:
        raise ValueError("robustness_scores needs a zero-shot classifier, a probe, or both; got neither")
    if not shifted:
        raise ValueError("robustness_scores needs at least one shifted evaluation set, got none")
    clean_top1 = {head: _top1(score, clean) for head, score in heads.items()}
    report = {"clean": {f"{head}_top1": top1 for head, top1 in clean_top1.items()}, "shifts": {}}
    for name, data in shifted.items():
        row = {}
        for head, score in heads.items():
            top1 = _top1(score, data)
            row[f"{head}_top1"] = top1
            row[f"{head}_drop"] = clean_top1[head] - top1
        report["shifts"][name] = row
    report["mean_drop"] = {
        head: sum(row[f"{head}_drop"] for row in report["shifts"].values()) / len(shifted) for head in heads
    }
    return report


def evaluate_robustness(
    train: LabelledFeatures,
    clean_test: LabelledFeatures,
    shifted_tests: Mapping[str, LabelledFeatures],
    num_classes: int,
    classifier: torch.Tensor | None = None,
    probe_config: ProbeConfig | None = None,
) -> dict:
    """Fit the probe on clean train features, then `robustness_scores` for both heads (+ the probe's C)."""
    fit = select_and_fit(train.features, train.labels, num_classes, probe_config or ProbeConfig())
    report = robustness_scores(clean_test, shifted_tests, classifier=classifier, probe=fit.probe)
    report["probe_C"] = fit.c
    return report


def _heads(classifier: torch.Tensor | None, probe: LinearProbe | None) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> function mapping (N, E) features to (N, C) class scores."""
    heads: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if classifier is not None:
        heads["zero_shot"] = lambda features: F.normalize(features.float(), dim=-1) @ classifier.float().T  # (N, C)
    if probe is not None:
        heads["probe"] = probe.logits
    return heads


def _top1(score: Callable[[torch.Tensor], torch.Tensor], data: LabelledFeatures) -> float:
    return classification_scores(score(data.features), data.labels)["top1"]
