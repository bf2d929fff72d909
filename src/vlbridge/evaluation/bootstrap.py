"""Paired bootstrap confidence intervals over evaluation units (images, questions), and over seeds.

Every number the study draws a conclusion from is a function of per-unit sums: accuracy is
(correct, 1) summed over questions, token-weighted NLL is (loss sum, token count) summed over
images. `resample_sums(columns, groups)` draws bootstrap replicates of those column sums:

- units are resampled with replacement (multinomial counts, so a replicate is one matrix product);
- all columns share the same draw, which makes differences between conditions *paired*;
- with `groups` (e.g. the seed each unit came from), groups are resampled first and units within
  each chosen group after that: a two-stage (hierarchical) bootstrap whose interval also covers
  seed-to-seed variation.

A statistic is computed from each replicate's sums (`stat(sums) -> value`), and `percentile_ci`
turns the replicate values into a 95 % percentile interval. `estimate` applies the same
statistic to the full sample. Everything is seeded and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000  # bootstrap replicates (Monte Carlo error of a 95 % bound ~0.5 % of its width)


@dataclass
class Interval:
    """A point estimate with its bootstrap interval."""

    estimate: float  # the statistic on the full sample
    low: float  # lower bound of the interval
    high: float  # upper bound of the interval
    n: int  # units (images, questions) behind it

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def resample_sums(
    columns: np.ndarray, groups: np.ndarray | None = None, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """(R, K) bootstrap replicates of the K column sums of `columns` (N units x K values).

    Each replicate's sums are scaled to the sample's size (a resample of N units), so ratios and
    means of replicate sums are on the scale of the full-sample statistic.
    """
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim != 2 or len(columns) == 0:
        raise ValueError(f"columns must be a non-empty (N, K) array, got shape {columns.shape}")
    rng = np.random.default_rng(seed)
    weights = unit_weights(len(columns), groups, n_resamples, rng)  # (R, N)
    return weights @ columns  # (R, K)


def unit_weights(n_units: int, groups: np.ndarray | None, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, N) how many times each unit is drawn in each replicate (one- or two-stage)."""
    if groups is None:
        return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples).astype(np.float64)
    groups = np.asarray(groups)
    if len(groups) != n_units:
        raise ValueError(f"groups has {len(groups)} entries for {n_units} units")
    names = np.unique(groups)
    members = [np.flatnonzero(groups == name) for name in names]
    weights = np.zeros((n_resamples, n_units))
    picks = rng.integers(0, len(names), size=(n_resamples, len(names)))  # (R, G) groups drawn
    for replicate in range(n_resamples):
        for group in picks[replicate]:
            units = members[group]
            weights[replicate, units] += rng.multinomial(len(units), np.full(len(units), 1.0 / len(units)))
    return weights * (n_units / weights.sum(axis=1, keepdims=True))


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap replicate values (NaNs ignored)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def interval(
    columns: np.ndarray,
    stat: Callable[[np.ndarray], np.ndarray],
    groups: np.ndarray | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Point estimate and 95 % interval of `stat` (a function of column sums, vectorised over rows)."""
    columns = np.asarray(columns, dtype=np.float64)
    point = float(stat(columns.sum(axis=0, keepdims=True))[0])
    replicates = stat(resample_sums(columns, groups, n_resamples, seed))
    low, high = percentile_ci(replicates)
    return Interval(point, low, high, len(columns))


def mean_difference(a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> Interval:
    """mean(a) - mean(b) over paired units, with its paired bootstrap interval."""
    columns = np.stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)], axis=1)  # (N, 2)
    n = len(columns)
    return interval(columns, lambda sums: (sums[:, 0] - sums[:, 1]) / n, groups, seed=seed)


def ratio_difference(num_a, den_a, num_b, den_b, groups: np.ndarray | None = None, seed: int = 0) -> Interval:
    """sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b) over paired units (e.g. token-weighted NLLs)."""
    columns = np.stack([np.asarray(x, dtype=np.float64) for x in (num_a, den_a, num_b, den_b)], axis=1)  # (N, 4)
    return interval(columns, lambda s: s[:, 0] / s[:, 1] - s[:, 2] / s[:, 3], groups, seed=seed)
