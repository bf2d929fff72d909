"""Tests for the study's findings: verdicts computed from intervals, claims on synthetic data with
known effects, and the effective-robustness trend against numpy's least squares."""

import numpy as np
import pytest

from vlbridge.evaluation.bootstrap import Interval
from vlbridge.study import findings
from vlbridge.study.findings import Measurements, NLLArrays, Part


def test_verdict_follows_the_interval():
    assert findings.verdict(Interval(0.3, 0.1, 0.5, 10), 0.0) == "reproduced"
    assert findings.verdict(Interval(-0.3, -0.5, -0.1, 10), 0.0) == "contradicted"
    assert findings.verdict(Interval(0.1, -0.1, 0.3, 10), 0.0) == "inconclusive"
    assert findings.verdict(Interval(0.0, -0.04, 0.02, 10), -0.05) == "reproduced"  # a non-inferiority margin
    assert findings.verdict(Interval(float("nan"), float("nan"), float("nan"), 0), 0.0) == "inconclusive"


def test_combined_verdicts_and_weakest_part():
    good, weak, bad = (Part("g", Interval(1, 0.5, 1.5, 5), 0), Part("w", Interval(0.2, -0.1, 0.5, 5), 0),
                       Part("b", Interval(-1, -1.5, -0.5, 5), 0))
    assert findings.combine([good, good]) == ("reproduced", good)
    assert findings.combine([good, weak]) == ("inconclusive", weak)
    assert findings.combine([good, weak, bad]) == ("contradicted", bad)


def test_effective_robustness_equals_a_least_squares_fit_in_logit_space():
    rng = np.random.default_rng(0)
    id_acc, ood_acc = rng.uniform(0.3, 0.9, size=5), rng.uniform(0.1, 0.6, size=5)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    slope, intercept = np.polyfit(logit(id_acc), logit(ood_acc), 1)
    expected = 0.5 - 1 / (1 + np.exp(-(intercept + slope * logit(0.8))))
    got = findings.effective_robustness(id_acc[None], ood_acc[None], np.array([0.8]), np.array([0.5]))
    assert got[0] == pytest.approx(expected)


def synthetic(n=400, seed=0, zs_clean=0.87, zs_shift=0.7):
    rng = np.random.default_rng(seed)
    m = Measurements(twins={"clip": "random", "self-supervised": "random"})
    difficulty = rng.random(n)  # the same images are hard for every classifier: paired comparisons
    m.zero_shot = {"clean": difficulty < zs_clean, "blur": rng.random(n) < zs_shift}
    levels = {"random": (0.2, 0.1), "self-supervised": (0.6, 0.3), "clip": (0.88, 0.45)}
    m.probes = {k: {"clean": difficulty < a, "blur": rng.random(n) < b} for k, (a, b) in levels.items()}
    tokens = np.full(n, 10.0)
    per_token = {"random": (4.0, 4.0), "self-supervised": (3.5, 2.5), "clip": (2.0, 2.3), "blind": (5, 5)}
    m.nll = {k: NLLArrays(total=tokens * (c + p) / 2 + rng.normal(0, 1, n), tokens=tokens,
                          category=5 * c + rng.normal(0, 0.5, n), category_tokens=np.full(n, 5.0),
                          property=5 * p + rng.normal(0, 0.5, n), property_tokens=np.full(n, 5.0))
             for k, (c, p) in per_token.items()}
    m.vqa = {"clip": {"0": (rng.random(n) < 0.1) * 1.0, "4": (rng.random(n) < 0.5) * 1.0},
             "blind": {"0": (rng.random(n) < 0.1) * 1.0, "4": (rng.random(n) < 0.3) * 1.0}}
    return m


def test_claims_on_synthetic_data_with_known_effects():
    m = synthetic()
    c1 = findings.c1_zero_shot_vs_probe(m)
    assert c1["verdict"] == "reproduced" and -0.1 < c1["effect"] < 0.05 and c1["n"] == 400
    c2 = findings.c2_effective_robustness(m)
    assert c2["verdict"] == "reproduced" and c2["ci95"][0] > 0
    c3 = findings.c3_transfer(m)
    assert c3["verdict"] == "reproduced" and len(c3["parts"]) == 2
    c4 = findings.c4_language_supervision(m, ["random", "self-supervised", "clip"])
    assert c4["verdict"] == "reproduced" and c4["effect"] == pytest.approx((3.5 - 2.0) - (2.5 - 2.3), abs=0.05)
    c5 = findings.c5_vqa(m, "clip", "4")
    assert c5["verdict"] == "reproduced" and [p["verdict"] for p in c5["parts"]] == ["reproduced"] * 2
    for result in (c1, c2, c3, c4, c5):
        assert set(result) >= {"id", "claim", "metric", "effect", "ci95", "verdict", "n"}
        assert result["ci95"][0] <= result["effect"] <= result["ci95"][1]


def test_claims_that_fail_are_contradicted_or_inconclusive():
    m = synthetic(zs_clean=0.5, zs_shift=0.05)
    assert findings.c1_zero_shot_vs_probe(m)["verdict"] == "contradicted"
    assert findings.c2_effective_robustness(m)["verdict"] == "contradicted"
    m.vqa["blind"]["4"] = m.vqa["clip"]["4"].copy()
    assert findings.c5_vqa(m, "clip", "4")["verdict"] == "inconclusive"  # identical answers: a zero-width gap at 0
