"""Linear probe: equal to scikit-learn's LogisticRegression (same C) in accuracy and coefficients;
CLIP's C search (coarse sweep, then binary search) visits and picks what the same search with
scikit-learn as the fitter does."""

import math

import numpy as np
import pytest
import torch
from helpers.eval_helpers import single_thread  # noqa: F401  (autouse fixture)
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import vlbridge.evaluation.linear_probe as lp
from vlbridge.errors import UserError
from vlbridge.evaluation.linear_probe import (
    ProbeConfig,
    best_row,
    fit_probe,
    linear_probe,
    search_c,
    select_and_fit,
    stratified_split,
)
from vlbridge.evaluation.zero_shot import classification_scores


def _blobs(n=400, dim=12, classes=5, noise=1.6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + noise * torch.randn(n, dim, generator=generator), labels


def _sklearn(x, y, c, standardize=False):
    model = LogisticRegression(C=c, tol=1e-10, max_iter=20000)
    if standardize:
        model = make_pipeline(StandardScaler(), model)
    return model.fit(x.double().numpy(), y.numpy())


def _assert_close_to_sklearn(probe, reference, x_test, y_test, coef_atol):
    ours = probe.predict(x_test).numpy()
    theirs = reference.predict(x_test.double().numpy())
    accuracy_gap = abs(np.mean(ours == y_test.numpy()) - np.mean(theirs == y_test.numpy()))
    assert accuracy_gap <= 0.005
    coef = torch.from_numpy(reference.coef_)
    intercept = torch.from_numpy(reference.intercept_)
    torch.testing.assert_close(probe.weight, coef, atol=coef_atol, rtol=1e-3)
    # the multinomial intercept is defined up to a shared constant: compare centred values
    torch.testing.assert_close(probe.bias - probe.bias.mean(), intercept - intercept.mean(), atol=coef_atol * 5, rtol=1e-3)


@pytest.mark.parametrize("c", [0.01, 1.0, 30.0])
def test_matches_sklearn_on_synthetic_blobs(c):
    x, y = _blobs()
    x_test, y_test = _blobs(n=600, seed=0)[0][400:], _blobs(n=600, seed=0)[1][400:]
    probe = fit_probe(x, y, 5, c, ProbeConfig())
    _assert_close_to_sklearn(probe, _sklearn(x, y, c), x_test, y_test, coef_atol=1e-3)


def test_matches_sklearn_on_digits():
    digits = load_digits()  # 1797 8x8 handwritten digits, shipped inside scikit-learn
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_train, y_train, x_test, y_test = x[:1200], y[:1200], x[1200:], y[1200:]
    probe = fit_probe(x_train, y_train, 10, 0.5, ProbeConfig())
    reference = _sklearn(x_train, y_train, 0.5)
    _assert_close_to_sklearn(probe, reference, x_test, y_test, coef_atol=1e-3)
    assert np.mean(probe.predict(x_test).numpy() == y_test.numpy()) > 0.85


def test_standardized_matches_sklearn_pipeline():
    x, y = _blobs(n=300, dim=6, classes=3, seed=3)
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0, 50.0]) + 5.0  # very different feature scales
    probe = fit_probe(x, y, 3, 2.0, ProbeConfig(standardize=True))
    reference = _sklearn(x, y, 2.0, standardize=True)
    logistic = reference[-1]
    torch.testing.assert_close(probe.weight, torch.from_numpy(logistic.coef_), atol=1e-3, rtol=1e-3)
    np.testing.assert_array_equal(probe.predict(x).numpy(), reference.predict(x.double().numpy()))


def test_search_visits_and_picks_the_same_c_as_the_same_search_with_sklearn_and_refits_on_train_plus_val():
    x, y = _blobs(n=300, dim=20, classes=4, noise=2.5, seed=5)
    x_test, y_test = _blobs(n=300, dim=20, classes=4, noise=2.5, seed=6)
    config = ProbeConfig(c_min=1e-3, c_max=10.0, c_steps=5, seed=7)
    fit = select_and_fit(x, y, 4, config)
    train_idx, val_idx = stratified_split(y, config.val_fraction, config.seed)
    x_val, y_val = x[val_idx].double().numpy(), y[val_idx].numpy()

    def sklearn_evaluate(c):
        model = _sklearn(x[train_idx], y[train_idx], c)
        loss = log_loss(y_val, model.predict_proba(x_val), labels=range(4))
        return {"val_top1": np.mean(model.predict(x_val) == y_val), "val_loss": loss}

    reference = search_c(sklearn_evaluate, config)
    assert [row["C"] for row in fit.sweep] == pytest.approx([row["C"] for row in reference], rel=1e-12)
    assert [row["stage"] for row in fit.sweep] == [row["stage"] for row in reference]
    assert [row["val_top1"] for row in fit.sweep] == pytest.approx([row["val_top1"] for row in reference], abs=0.005)
    assert [row["val_loss"] for row in fit.sweep] == pytest.approx([row["val_loss"] for row in reference], rel=1e-3)
    assert fit.c == pytest.approx(best_row(reference)["C"], rel=1e-12)
    assert [row["C"] for row in fit.sweep if row["stage"] == "coarse"] == pytest.approx(config.c_grid())
    final_reference = _sklearn(x, y, fit.c)  # train + val is all of x
    _assert_close_to_sklearn(fit.probe, final_reference, x_test, y_test, coef_atol=1e-3)


def test_linear_probe_reports_test_scores_and_chosen_c_deterministically():
    x, y = _blobs(n=300, dim=8, classes=6, seed=2)
    x_test, y_test = _blobs(n=200, dim=8, classes=6, seed=9)
    config = ProbeConfig(c_steps=3, c_min=0.01, c_max=1.0)
    first = linear_probe(x, y, x_test, y_test, 6, config)
    second = linear_probe(x, y, x_test, y_test, 6, config)
    assert first == second
    fit = select_and_fit(x, y, 6, config)
    expected = int((fit.probe.predict(x_test) == y_test).sum()) / len(y_test)
    assert first["top1"] == expected and first["C"] == fit.c
    assert {"top1", "top5", "mean_per_class_recall", "n", "C", "sweep"} <= set(first)


def test_given_validation_split_is_used_instead_of_carving_train():
    x, y = _blobs(n=200, dim=8, classes=3, seed=4)
    x_val, y_val = _blobs(n=100, dim=8, classes=3, seed=8)
    config = ProbeConfig(c_steps=2, c_min=0.01, c_max=1.0)
    fit = select_and_fit(x, y, 3, config, x_val, y_val)
    for row in fit.sweep:
        probe = fit_probe(x, y, 3, row["C"], config)
        assert row["val_top1"] == int((probe.predict(x_val) == y_val).sum()) / len(y_val)
    refit = fit_probe(torch.cat([x, x_val]), torch.cat([y, y_val]), 3, fit.c, config)
    torch.testing.assert_close(fit.probe.weight, refit.weight, atol=1e-6, rtol=1e-5)


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    train, val = stratified_split(labels, 0.2, seed=3)
    again_train, again_val = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert sorted(train.tolist() + val.tolist()) == list(range(16))
    assert torch.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]  # singleton class stays in train
    assert not torch.equal(stratified_split(labels, 0.2, seed=4)[1], val)


def test_float32_fit_agrees_with_float64():
    x, y = _blobs(n=300, dim=10, classes=4, seed=11)
    exact = fit_probe(x, y, 4, 1.0, ProbeConfig())
    fast = fit_probe(x, y, 4, 1.0, ProbeConfig(dtype="float32", tolerance=1e-6))
    assert fast.weight.dtype == torch.float32
    torch.testing.assert_close(fast.weight.double(), exact.weight, atol=1e-3, rtol=1e-3)


def test_validation_ties_go_to_the_lower_validation_loss():
    x, y = _blobs(n=200, dim=8, classes=3, noise=0.05, seed=12)  # separable: every C is 100% on val
    fit = select_and_fit(x, y, 3, ProbeConfig(c_min=1.0, c_max=100.0, c_steps=3))
    assert {row["val_top1"] for row in fit.sweep} == {1.0}
    assert fit.c == min(fit.sweep, key=lambda row: row["val_loss"])["C"] == 100.0


def test_refine_steps_halve_the_coarse_step_down_to_the_resolution():
    assert ProbeConfig().refine_steps() == pytest.approx([1.0, 0.5, 0.25, 0.125])  # CLIP: 1e-6..1e6 every 2 decades
    assert ProbeConfig(c_min=1e-3, c_max=1e4, c_steps=8).refine_steps() == pytest.approx([0.5, 0.25, 0.125])
    assert ProbeConfig(refine_per_decade=0).refine_steps() == []
    assert ProbeConfig(c_steps=1).refine_steps() == []
    with pytest.raises(UserError, match="refine_per_decade"):
        ProbeConfig(refine_per_decade=-1).refine_steps()


@pytest.mark.parametrize("peak", [-5.9, -2.3, 0.3, 1.06, 3.55, 5.97, 7.0])
def test_search_c_binary_search_lands_within_the_resolution_of_a_single_peak(peak):
    """A validation loss with one minimum at 10**peak: the search ends within 1/8 decade of it (or at the edge)."""
    calls = []

    def evaluate(c):
        calls.append(c)
        return {"val_top1": 0.5, "val_loss": (math.log10(c) - peak) ** 2}

    config = ProbeConfig()
    rows = search_c(evaluate, config)
    chosen = math.log10(best_row(rows)["C"])
    assert abs(chosen - min(peak, 6.0)) <= 1 / 8 + 1e-9
    assert len(calls) == len(set(calls)) == len(rows) <= 7 + 2 * 4  # never the same C twice
    assert all(1e-6 * (1 - 1e-9) <= c <= 1e6 * (1 + 1e-9) for c in calls)
    assert [row["C"] for row in rows] == sorted(calls)
    assert calls[:7] == pytest.approx(config.c_grid()) and {row["stage"] for row in rows[7:]} <= {"refine", "coarse"}


def test_search_c_prefers_top1_then_lower_loss_and_refines_around_the_best():
    def evaluate(c):
        exponent = math.log10(c)
        return {"val_top1": 1.0 if 0.9 <= exponent <= 1.2 else 0.5, "val_loss": abs(exponent - 1.5)}

    rows = search_c(evaluate, ProbeConfig())
    # coarse best 10^2 (lowest loss); step 1 finds 10^1 on the top-1 plateau; 10^1.5 (loss 0, top-1 0.5)
    # does not displace it; step 1/8 finds 10^1.125, on the plateau with a lower loss than 10^1
    assert [round(math.log10(row["C"]), 3) for row in rows if row["stage"] == "refine"] == [0.5, 0.75, 0.875, 1.0, 1.125, 1.25, 1.5, 3.0]
    best = best_row(rows)
    assert best["stage"] == "refine" and best["val_top1"] == 1.0
    assert math.log10(best["C"]) == pytest.approx(1.125)


def test_refined_c_is_at_least_as_good_on_validation_as_the_best_coarse_c():
    x, y = _blobs(n=400, dim=30, classes=6, noise=3.0, seed=13)
    fit = select_and_fit(x, y, 6, ProbeConfig(c_min=1e-4, c_max=1e2, c_steps=4))
    coarse = [row for row in fit.sweep if row["stage"] == "coarse"]
    refined = [row for row in fit.sweep if row["stage"] == "refine"]
    assert len(coarse) == 4 and len(refined) >= 2
    key = lambda row: (row["val_top1"], -row["val_loss"])  # noqa: E731
    assert key(best_row(fit.sweep)) >= key(best_row(coarse))
    assert fit.c == best_row(fit.sweep)["C"]
    assert key(best_row(fit.sweep)) > key(best_row(coarse))  # here the finer search does find a better C


def test_float32_search_then_float64_refit_chooses_and_fits_like_an_all_float64_search():
    x, y = _blobs(n=300, dim=16, classes=5, noise=2.0, seed=14)
    mixed = select_and_fit(x, y, 5, ProbeConfig(c_min=1e-3, c_max=1e3, c_steps=4))
    exact = select_and_fit(x, y, 5, ProbeConfig(c_min=1e-3, c_max=1e3, c_steps=4, search_dtype="float64"))
    assert mixed.probe.weight.dtype == torch.float64
    assert mixed.c == exact.c and [row["C"] for row in mixed.sweep] == [row["C"] for row in exact.sweep]
    assert [row["val_top1"] for row in mixed.sweep] == [row["val_top1"] for row in exact.sweep]
    torch.testing.assert_close(mixed.probe.weight, exact.probe.weight, atol=1e-5, rtol=1e-5)


def test_single_fit_predicts_exactly_like_sklearn_on_a_well_conditioned_many_class_problem():
    x, y = _blobs(n=1500, dim=40, classes=30, noise=1.0, seed=15)
    x_test, y_test = _blobs(n=3000, dim=40, classes=30, noise=1.0, seed=15)
    x_test, y_test = x_test[1500:], y_test[1500:]
    probe = fit_probe(x, y, 30, 0.1, ProbeConfig())
    reference = _sklearn(x, y, 0.1)
    np.testing.assert_array_equal(probe.predict(x_test).numpy(), reference.predict(x_test.double().numpy()))
    assert reference.n_iter_[0] < 20000  # sklearn converged too


def test_bad_dtypes_are_user_errors():
    x, y = _blobs(n=60, dim=4, classes=3, seed=16)
    with pytest.raises(UserError, match="dtype"):
        select_and_fit(x, y, 3, ProbeConfig(c_steps=2, search_dtype="float16"))
    with pytest.raises(UserError, match="dtype"):
        fit_probe(x, y, 3, 1.0, ProbeConfig(dtype="bfloat"))


@pytest.mark.parametrize("limit,expected", [(lp.SMALL_FIT_ELEMENTS, 1), (0, 2)])
def test_small_searches_run_on_one_thread_and_restore_the_setting(monkeypatch, limit, expected):
    """Validation scoring inside the search sees one thread for small problems, torch's setting otherwise."""
    seen = []

    def recording_scores(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return classification_scores(*args, **kwargs)

    monkeypatch.setattr(lp, "classification_scores", recording_scores)
    monkeypatch.setattr(lp, "SMALL_FIT_ELEMENTS", limit)
    x, y = _blobs(n=120, dim=6, classes=3, seed=17)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        select_and_fit(x, y, 3, ProbeConfig(c_steps=1, c_min=1.0, c_max=1.0, max_iter=5))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {expected}
