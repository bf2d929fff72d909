"""The study's claims C1-C5, each turned into a measured effect, a 95 % interval and a verdict.

Every claim names one primary measurement (`metric`) and a decision threshold fixed before
looking at the data. The verdict is computed from the interval, never typed in:

    reproduced     the whole interval lies on the claim's side of the threshold
    contradicted   the whole interval lies on the other side
    inconclusive   the interval straddles the threshold

A claim with several parts (C3: every trained encoder, C5: prefix beats blind AND shots help) is
reproduced when every part is, contradicted when any part is, and inconclusive otherwise; its
`effect` and `ci95` are those of its weakest part (the part closest to failing). Intervals are
paired bootstraps over the evaluation units (test images, questions) from
`vlbridge.evaluation.bootstrap`, two-stage (seeds, then units) when units carry a seed group.

Input: `Measurements`, per-unit arrays aligned across conditions (the same images / questions in
the same order for every encoder), built by the runner from the stages' outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vlbridge.evaluation.bootstrap import DEFAULT_RESAMPLES, Interval, interval

C1_MARGIN = 0.05  # "competitive": zero-shot no more than 5 accuracy points below the probe
VERDICTS = ("reproduced", "contradicted", "inconclusive")


@dataclass
class Part:
    """One measured part of a claim."""

    name: str  # what is compared, in words
    value: Interval  # effect with its interval
    threshold: float  # the claim holds when the effect is above this

    @property
    def verdict(self) -> str:
        return verdict(self.value, self.threshold)


def verdict(value: Interval, threshold: float) -> str:
    if not (math.isfinite(value.low) and math.isfinite(value.high)):
        return "inconclusive"
    if value.low > threshold:
        return "reproduced"
    if value.high < threshold:
        return "contradicted"
    return "inconclusive"


def combine(parts: list[Part]) -> tuple[str, Part]:
    """(overall verdict, weakest part): see the module docstring."""
    verdicts = [p.verdict for p in parts]
    overall = "contradicted" if "contradicted" in verdicts else "reproduced" if set(verdicts) == {"reproduced"} else "inconclusive"
    weakest = min(parts, key=lambda p: p.value.low - p.threshold)
    return overall, weakest


@dataclass
class NLLArrays:
    """Per image: summed caption-token NLL and token counts, overall and per word class."""

    total: np.ndarray  # (N,) summed NLL (nats) of every scored token
    tokens: np.ndarray  # (N,) scored tokens
    category: np.ndarray  # (N,) summed NLL over category-word tokens
    category_tokens: np.ndarray  # (N,)
    property: np.ndarray  # (N,) summed NLL over property-word tokens
    property_tokens: np.ndarray  # (N,)

    def head(self, n: int) -> "NLLArrays":
        """The first n units (the seeds a shorter row was scored on)."""
        return NLLArrays(*(getattr(self, name)[:n] for name in
                           ("total", "tokens", "category", "category_tokens", "property", "property_tokens")))


def leading_groups(groups: np.ndarray | None, n: int) -> np.ndarray | None:
    """The seed groups of the first n units, or None when they all come from one seed.

    A row scored on the first seeds only (`limber.reference_seeds`) holds a prefix of the units;
    comparisons with it use the common prefix, one-seed intervals the plain bootstrap."""
    if groups is None:
        return None
    part = groups[:n]
    return part if len(np.unique(part)) > 1 else None


def seed_count(groups: np.ndarray | None, n: int) -> int:
    """How many seeds the first n units come from."""
    return 1 if groups is None else len(np.unique(groups[:n]))


@dataclass
class Measurements:
    """Per-unit results the findings are computed from (aligned across conditions)."""

    zero_shot: dict[str, np.ndarray] = field(default_factory=dict)  # condition ("clean", shift) -> (M,) correct 0/1
    probes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # encoder -> condition -> (M,) correct
    image_groups: np.ndarray | None = None  # (M,) seed of each classification test image (None: one seed)
    nll: dict[str, NLLArrays] = field(default_factory=dict)  # condition (encoder, blind, text) -> arrays over (N,)
    caption_groups: np.ndarray | None = None  # (N,) seed of each captioned image
    vqa: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # condition -> shots -> (Q,) open accuracy
    question_groups: np.ndarray | None = None  # (Q,) seed of each question
    clip_key: str = "clip"  # the contrastive rung
    none_key: str = "self-supervised"  # the rung without language
    twins: dict[str, str] = field(default_factory=dict)  # trained encoder -> its random-init twin


def finding(claim_id: str, claim: str, metric: str, parts: list[Part], details: dict | None = None) -> dict:
    overall, weakest = combine(parts)
    return {
        "id": claim_id, "claim": claim, "metric": metric, "effect": weakest.value.estimate,
        "ci95": weakest.value.as_list(), "verdict": overall, "n": weakest.value.n, "threshold": weakest.threshold,
        "parts": [{"name": p.name, "effect": p.value.estimate, "ci95": p.value.as_list(), "n": p.value.n,
                   "threshold": p.threshold, "verdict": p.verdict} for p in parts],
        **({"details": details} if details else {}),
    }


def _accuracy_gap(a: np.ndarray, b: np.ndarray, groups) -> Interval:
    n = min(len(a), len(b))  # the units both were scored on (a common prefix of seeds)
    columns = np.stack([np.asarray(a[:n], dtype=np.float64), np.asarray(b[:n], dtype=np.float64)], axis=1)
    return interval(columns, lambda s: (s[:, 0] - s[:, 1]) / n, leading_groups(groups, n))


def c1_zero_shot_vs_probe(m: Measurements) -> dict:
    gap = _accuracy_gap(m.zero_shot["clean"], m.probes[m.clip_key]["clean"], m.image_groups)
    return finding("C1", "Zero-shot CLIP is competitive with a linear probe on the same features (in domain).",
                   f"zero-shot top-1 minus linear-probe top-1 on CLIP's own features, held-out in-domain images; "
                   f"competitive = at most {100 * C1_MARGIN:g} accuracy points below the probe",
                   [Part("zero-shot minus probe", gap, -C1_MARGIN)])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def effective_robustness(id_acc: np.ndarray, ood_acc: np.ndarray, zs_id: np.ndarray, zs_ood: np.ndarray) -> np.ndarray:
    """Zero-shot OOD accuracy minus the probes' logit-linear ID->OOD trend at its ID accuracy (vectorised over rows).

    id_acc, ood_acc: (R, P) accuracies of P probe models; zs_id, zs_ood: (R,).
    """
    x, y = _logit(id_acc), _logit(ood_acc)  # (R, P)
    x_mean, y_mean = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    slope = ((x - x_mean) * (y - y_mean)).sum(axis=1) / np.maximum(((x - x_mean) ** 2).sum(axis=1), 1e-12)
    intercept = y_mean[:, 0] - slope * x_mean[:, 0]
    predicted = 1 / (1 + np.exp(-(intercept + slope * _logit(zs_id))))
    return zs_ood - predicted


def c2_effective_robustness(m: Measurements, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    shifts = [c for c in m.zero_shot if c != "clean"]
    models = sorted(m.probes)
    n = len(m.zero_shot["clean"])
    ood = lambda by_condition: np.mean([np.asarray(by_condition[s], dtype=np.float64) for s in shifts], axis=0)  # noqa: E731
    clean = lambda x: np.asarray(x["clean"], dtype=np.float64)  # noqa: E731
    columns = np.stack([clean(m.zero_shot), ood(m.zero_shot)]
                       + [clean(m.probes[k]) for k in models] + [ood(m.probes[k]) for k in models], axis=1)

    def stat(sums: np.ndarray) -> np.ndarray:
        acc = sums / n
        p = len(models)
        return effective_robustness(acc[:, 2 : 2 + p], acc[:, 2 + p :], acc[:, 0], acc[:, 1])

    robustness = interval(columns.astype(np.float64), stat, m.image_groups, n_resamples, seed)
    drop = _drop_gap(m, shifts)
    trend = {k: {"id": float(clean(m.probes[k]).mean()), "ood": float(ood(m.probes[k]).mean())} for k in models}
    details = {"shifts": shifts, "probe_models": trend, "zero_shot": {"id": float(clean(m.zero_shot).mean()),
               "ood": float(ood(m.zero_shot).mean())}, "drop_gap_same_features": {"effect": drop.estimate,
               "ci95": drop.as_list(), "n": drop.n}}
    return finding("C2", "Under distribution shift, zero-shot loses less than a linear probe (effective robustness).",
                   "zero-shot accuracy under shift minus the accuracy the linear probes' logit-linear "
                   "in-distribution -> shifted trend predicts at zero-shot's in-distribution accuracy",
                   [Part("effective robustness of zero-shot", robustness, 0.0)], details)


def _drop_gap(m: Measurements, shifts: list[str]) -> Interval:
    """(probe drop) - (zero-shot drop) on CLIP's own features: > 0 means zero-shot loses less."""
    zs = {k: np.asarray(v, dtype=np.float64) for k, v in m.zero_shot.items()}
    probe = {k: np.asarray(v, dtype=np.float64) for k, v in m.probes[m.clip_key].items()}
    per_image = [(probe["clean"] - probe[s]) - (zs["clean"] - zs[s]) for s in shifts]
    values = np.mean(per_image, axis=0)
    n = len(values)
    return interval(values[:, None].astype(np.float64), lambda s: s[:, 0] / n, m.image_groups)


def _nll_gap(m: Measurements, worse: str, better: str, part: str = "") -> Interval:
    """NLL per token of `worse` minus that of `better` (nats; > 0: `better` transfers more), token-weighted."""
    a, b, groups = _common(m, worse, better)
    num = {"": "total", "category": "category", "property": "property"}[part]
    den = {"": "tokens", "category": "category_tokens", "property": "property_tokens"}[part]
    columns = np.stack([getattr(a, num), getattr(a, den), getattr(b, num), getattr(b, den)], axis=1)
    return interval(columns, lambda s: s[:, 0] / s[:, 1] - s[:, 2] / s[:, 3], groups)


def _common(m: Measurements, first: str, second: str) -> tuple[NLLArrays, NLLArrays, np.ndarray | None]:
    """Both conditions' NLL arrays over the units both were scored on, and those units' seed groups."""
    a, b = m.nll[first], m.nll[second]
    n = min(len(a.total), len(b.total))
    return a.head(n), b.head(n), leading_groups(m.caption_groups, n)


def c3_transfer(m: Measurements) -> dict:
    parts = [Part(f"{twin} minus {trained}", _nll_gap(m, twin, trained), 0.0)
             for trained, twin in m.twins.items() if trained in m.nll and twin in m.nll]
    return finding("C3", "One linear map transfers: each trained encoder beats its random-init twin.",
                   "caption NLL per token (nats) of the random-init twin minus that of the trained encoder, "
                   "held-out reference captions", parts)


def c4_language_supervision(m: Measurements, ladder: list[str]) -> dict:
    clip, none = m.clip_key, m.none_key
    category = _nll_gap(m, none, clip, "category")
    prop = _nll_gap(m, none, clip, "property")
    a, b, groups = _common(m, none, clip)
    columns = np.stack([a.category, a.category_tokens, b.category, b.category_tokens,
                        a.property, a.property_tokens, b.property, b.property_tokens], axis=1)
    did = interval(columns, lambda s: (s[:, 0] / s[:, 1] - s[:, 2] / s[:, 3]) - (s[:, 4] / s[:, 5] - s[:, 6] / s[:, 7]),
                   groups)
    steps = {f"{lower} -> {higher}": _nll_gap(m, lower, higher, "category") for lower, higher in zip(ladder, ladder[1:])
             if lower in m.nll and higher in m.nll}
    details = {"category_gain": {"effect": category.estimate, "ci95": category.as_list()},
               "property_gain": {"effect": prop.estimate, "ci95": prop.as_list()},
               "category_gain_by_step": {k: {"effect": v.estimate, "ci95": v.as_list()} for k, v in steps.items()}}
    return finding("C4", "More language supervision in pretraining gives better transfer into the LM, above all on "
                   "category words, while properties transfer about equally.",
                   f"category-word NLL gain of captions ({clip}) over no language ({none}) minus the property-word "
                   "gain (nats per token)", [Part("category gain minus property gain", did, 0.0)], details)


def c5_vqa(m: Measurements, clip: str, most_shots: str, no_shots: str = "0") -> dict:
    seeing, blind = m.vqa[clip], m.vqa["blind"]
    prefix = _accuracy_gap(seeing[most_shots], blind[most_shots], m.question_groups)
    shots = _accuracy_gap(seeing[most_shots], seeing[no_shots], m.question_groups)
    return finding("C5", "Image prefixes beat the blind baseline at VQA, and shots help.",
                   f"open-ended VQA accuracy: {clip} minus blind at {most_shots} shots; {clip} at {most_shots} minus "
                   f"{no_shots} shots", [Part(f"{clip} minus blind, {most_shots} shots", prefix, 0.0),
                                         Part(f"{clip}: {most_shots} shots minus {no_shots}", shots, 0.0)])


def mean_interval(values: np.ndarray, groups: np.ndarray | None = None) -> Interval:
    """Mean of per-unit values with its bootstrap interval (for tables)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    return interval(values[:, None], lambda s: s[:, 0] / n, groups)


def ratio_interval(num: np.ndarray, den: np.ndarray, groups: np.ndarray | None = None) -> Interval:
    """sum(num) / sum(den) with its interval; a resample whose denominators are all 0 has no ratio and
    is left out of the percentiles (percentile_ci ignores NaN), without numpy's divide warning."""
    columns = np.stack([num, den], axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval(columns, lambda s: s[:, 0] / s[:, 1], groups)
