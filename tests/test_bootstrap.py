"""Tests for the paired / two-stage bootstrap behind every interval the study reports."""

import numpy as np
import pytest

from vlbridge.evaluation.bootstrap import interval, mean_difference, percentile_ci, ratio_difference, resample_sums


def test_replicates_are_seeded_resamples_of_the_sample_size():
    columns = np.arange(20, dtype=float).reshape(10, 2)
    first = resample_sums(columns, n_resamples=50, seed=3)
    assert first.shape == (50, 2)
    np.testing.assert_array_equal(first, resample_sums(columns, n_resamples=50, seed=3))
    assert not np.array_equal(first, resample_sums(columns, n_resamples=50, seed=4))
    # column 1 is column 0 + 1 on every unit: each replicate's sums differ by exactly N (the same draw)
    np.testing.assert_allclose(first[:, 1] - first[:, 0], 10.0)


def test_a_replicate_equals_an_explicit_resample():
    rng = np.random.default_rng(0)
    columns = rng.normal(size=(7, 3))
    from vlbridge.evaluation.bootstrap import unit_weights

    weights = unit_weights(7, None, 4, np.random.default_rng(9))
    for row in weights:
        picked = np.repeat(np.arange(7), row.astype(int))
        assert len(picked) == 7
        np.testing.assert_allclose(row @ columns, columns[picked].sum(axis=0))


def test_paired_differences_are_tight_when_conditions_move_together():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 5, size=300)
    shifted = base + 0.1 + rng.normal(0, 0.01, size=300)
    paired = mean_difference(shifted, base)
    assert paired.estimate == pytest.approx(0.1, abs=0.01)
    assert 0.0 < paired.low < paired.estimate < paired.high < 0.2 and paired.n == 300
    same = mean_difference(base, base)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_ratio_difference_is_token_weighted():
    num_a, den_a = np.array([2.0, 8.0]), np.array([1.0, 4.0])
    num_b, den_b = np.array([1.0, 1.0]), np.array([1.0, 1.0])
    result = ratio_difference(num_a, den_a, num_b, den_b)
    assert result.estimate == pytest.approx(10 / 5 - 1.0)


def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    covered = 0
    for trial in range(200):
        sample = rng.exponential(1.0, size=80)  # skewed, mean 1
        result = interval(sample[:, None], lambda s: s[:, 0] / 80, n_resamples=1000, seed=trial)
        covered += result.low <= 1.0 <= result.high
    assert 0.88 <= covered / 200 <= 0.99


def test_two_stage_intervals_widen_with_seed_to_seed_spread():
    rng = np.random.default_rng(3)
    groups = np.repeat([0, 1, 2], 100)
    seed_effect = np.array([-0.3, 0.0, 0.3])[groups]
    values = seed_effect + rng.normal(0, 0.1, size=300)
    units_only = interval(values[:, None], lambda s: s[:, 0] / 300)
    with_seeds = interval(values[:, None], lambda s: s[:, 0] / 300, groups=groups)
    assert (with_seeds.high - with_seeds.low) > 3 * (units_only.high - units_only.low)


def test_percentile_ci_ignores_nans_and_handles_empty():
    assert percentile_ci(np.array([np.nan, 1.0, 1.0])) == (1.0, 1.0)
    low, high = percentile_ci(np.array([np.nan]))
    assert np.isnan(low) and np.isnan(high)
    with pytest.raises(ValueError, match="non-empty"):
        resample_sums(np.zeros((0, 2)))
