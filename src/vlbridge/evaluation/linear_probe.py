"""Linear probe: multinomial logistic regression on frozen image features (CLIP's protocol).

Objective (minimised by full-batch L-BFGS in torch, strong-Wolfe line search), stated in
the *mean form* (the solver works on an equivalent, better-conditioned scaling; see
`fit_logistic_regression`):

    loss(W, b) = mean_i CE(W x_i + b, y_i) + (lambda / 2) * ||W||_F^2,   lambda = 1 / (C * n)

which has the same minimiser as scikit-learn's `LogisticRegression(C=C)` objective
`C * sum_i CE_i + 0.5 * ||W||^2` (sklearn itself optimises this scaled form). W is the full
(classes x features) matrix (multinomial, like sklearn for >= 3 classes) and the intercept b
is not penalised (like sklearn's lbfgs solver). With exactly 2 classes sklearn switches to
one binary weight vector; our C then equals sklearn's 2*C.

Protocol (`select_and_fit`), CLIP's (Radford et al. 2021, appendix A.3): each C is fitted on
the training features and scored on a validation split (given, or a stratified `val_fraction`
of train, seeded). `search_c` first sweeps a coarse log-spaced grid (default C = 1e-6, 1e-4,
..., 1e6, CLIP's lambda grid), then runs CLIP's "parametric binary search": halve the log-step,
try the two neighbours of the best C so far, and repeat until the step is 1/8 decade. The best
C (validation top-1, ties: lower validation cross-entropy) is refitted on train+val. Fits along
the search start from the solution of the nearest C already fitted (warm start), the refit
from the chosen C's solution. Features are used raw by default (as CLIP did);
`standardize=True` z-scores them with the statistics of the set being fitted.
The fits along the search run in float32 (`search_dtype`; half the time of float64, and they
only rank C values); the final refit runs in float64 by default (`dtype`), starting from the
float32 solution, so L-BFGS reaches the true optimum and the probe matches scikit-learn.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlbridge.data.subsets import stratified_split
from vlbridge.errors import UserError
from vlbridge.evaluation.probe_config import ProbeConfig
from vlbridge.evaluation.zero_shot import classification_scores

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class LinearProbe:
    """A fitted probe: logits = ((x - mean) / scale) @ weight.T + bias."""

    weight: torch.Tensor  # (C, D) class weights
    bias: torch.Tensor  # (C,) intercepts
    c: float  # inverse L2 strength it was fitted with
    mean: torch.Tensor | None = None  # (D,) feature means when standardised
    scale: torch.Tensor | None = None  # (D,) feature standard deviations when standardised

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) class scores of (N, D) features."""
        x = features.to(self.weight.device, self.weight.dtype)  # (N, D)
        if self.mean is not None:
            x = (x - self.mean) / self.scale  # (N, D)
        return x @ self.weight.T + self.bias  # (N, C)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) predicted class indices."""
        return self.logits(features).argmax(dim=1)


@dataclass
class ProbeFit:
    """The outcome of the C sweep and the final fit on train+val."""

    probe: LinearProbe  # refitted on train+val with the chosen C
    c: float  # chosen inverse L2 strength
    sweep: list[dict] = field(default_factory=list)  # [{"C", "val_top1", "val_loss", "stage"}, ...] ascending C


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    c: float,
    max_iter: int = 1000,
    tolerance: float = 1e-7,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) minimising the mean-form L2 logistic loss, on features' device/dtype.

    Solved on centred features (W (x - mu) + b' with b' = b + W mu: the same model and the same
    objective, since b is not penalised) and with the loss summed over examples instead of
    averaged: both only improve L-BFGS's conditioning (CLIP features share a large mean
    direction; torch's L-BFGS skips curvature pairs with y.s < 1e-10). `tolerance` still
    applies to the gradient of the mean form.
    """
    with _threads_for(features):
        return _minimise(features, labels, num_classes, c, max_iter, tolerance, init)


def _minimise(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    c: float,
    max_iter: int,
    tolerance: float,
    init: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_logistic_regression`'s L-BFGS run on centred features with the summed loss."""
    n, dim = features.shape
    mean = features.mean(dim=0)  # (D,)
    centred = features - mean  # (N, D)
    if init is None:
        weight = torch.zeros(num_classes, dim, dtype=features.dtype, device=features.device)  # (C, D)
        bias = torch.zeros(num_classes, dtype=features.dtype, device=features.device)  # (C,) of centred model
    else:
        weight = init[0].detach().to(features.device, features.dtype).clone()  # (C, D)
        bias = (init[1].detach().to(weight) + weight @ mean).detach()  # (C,)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance * n,  # the summed loss has n times the mean-form gradient
        tolerance_change=torch.finfo(features.dtype).eps,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = centred @ weight.T + bias  # (N, C)
        loss = F.cross_entropy(logits, labels, reduction="sum") + 0.5 / c * weight.pow(2).sum()  # n * mean form
        loss.backward()
        return loss

    optimizer.step(closure)
    if optimizer.state[weight].get("n_iter", 0) >= max_iter:
        log.warning("probe fit with C=%g stopped at max_iter=%d before converging", c, max_iter)
    weight = weight.detach()
    return weight, bias.detach() - weight @ mean  # bias of the uncentred model


SMALL_FIT_ELEMENTS = 16_000_000  # CPU fits on fewer feature values (10k x 1024 and below) run on one thread


@contextlib.contextmanager
def _threads_for(features: torch.Tensor):
    """One intra-op thread for small CPU fits (the whole fit or C search, validation scoring
    included): with several threads the elementwise ops of each step (softmax, cross-entropy,
    their backward) mostly wait at barriers. On 2 busy cores (load 7-9) one loss+gradient
    evaluation of 8000 x 512 x 100 classes in float32 took 28 ms CPU / 58 ms wall on one thread,
    64 ms / 180 ms on two; 1000 x 64 was 2.5x slower on two. Larger fits keep torch's setting:
    their matrix products dominate and use the cores of an idle or bigger machine."""
    if features.device.type != "cpu" or features.numel() > SMALL_FIT_ELEMENTS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    c: float,
    config: ProbeConfig,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LinearProbe:
    """A `LinearProbe` fitted with inverse L2 strength `c` (standardising first if configured)."""
    x, y = _to_fit_tensors(features, labels, num_classes, config)
    mean = scale = None
    if config.standardize:
        mean = x.mean(dim=0)  # (D,)
        scale = x.std(dim=0, unbiased=False).clamp_min(1e-12)  # (D,)
        x = (x - mean) / scale  # (N, D)
    weight, bias = fit_logistic_regression(x, y, num_classes, c, config.max_iter, config.tolerance, init)
    return LinearProbe(weight=weight, bias=bias, c=c, mean=mean, scale=scale)


def best_row(rows: list[dict]) -> dict:
    """The search row with the best validation top-1; ties go to the lower validation loss."""
    return max(rows, key=lambda row: (row["val_top1"], -row["val_loss"]))


def search_c(evaluate: Callable[[float], dict], config: ProbeConfig) -> list[dict]:
    """CLIP's C search: the coarse grid, then a binary search around the best C (see module docstring).

    `evaluate(C)` fits with C and returns {"val_top1", "val_loss"}. Returns one row
    {"C", "val_top1", "val_loss", "stage": "coarse" | "refine"} per C tried, ascending C;
    the binary search stays within [c_min, c_max] and never repeats a C.
    """
    rows: list[dict] = []
    low, high = math.log10(config.c_min), math.log10(config.c_max)

    def visit(c: float, stage: str) -> None:
        exponent = math.log10(c)
        inside = low - 1e-9 <= exponent <= high + 1e-9
        if inside and not any(math.isclose(exponent, math.log10(row["C"]), abs_tol=1e-9) for row in rows):
            rows.append({"C": c, **evaluate(c), "stage": stage})

    for c in config.c_grid():
        visit(c, "coarse")
    for step in config.refine_steps():
        centre = math.log10(best_row(rows)["C"])
        visit(10 ** (centre - step), "refine")
        visit(10 ** (centre + step), "refine")
    return sorted(rows, key=lambda row: row["C"])


def select_and_fit(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    config: ProbeConfig,
    val_features: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
) -> ProbeFit:
    """Search C on a validation split (given or carved from train), then refit on train+val."""
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    if val_features is None:
        train_idx, val_idx = stratified_split(train_labels, config.val_fraction, config.seed)
        fit_x, fit_y = train_features[train_idx], train_labels[train_idx]
        val_x, val_y = train_features[val_idx], train_labels[val_idx]
    else:
        fit_x, fit_y = train_features, train_labels
        val_x, val_y = val_features, torch.as_tensor(val_labels, dtype=torch.long)
    solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}  # C -> (weight, bias) fitted on fit_x
    search_config = replace(config, dtype=config.search_dtype)
    progress = tqdm(total=config.c_steps + 2 * len(config.refine_steps()), desc="probe C search", unit="C", leave=False, disable=None)

    def evaluate(c: float) -> dict:
        nearest = min(solutions, key=lambda done: abs(math.log(done / c)), default=None)
        probe = fit_probe(fit_x, fit_y, num_classes, c, search_config, init=solutions.get(nearest))  # warm start
        solutions[c] = (probe.weight, probe.bias)
        val_logits = probe.logits(val_x)  # (V, C)
        val_top1 = classification_scores(val_logits, val_y)["top1"]
        val_loss = float(F.cross_entropy(val_logits, val_y.to(val_logits.device)))
        log.debug("probe C=%g: val top-1 %.4f, val loss %.4f", c, val_top1, val_loss)
        progress.update()
        return {"val_top1": val_top1, "val_loss": val_loss}

    with progress, _threads_for(fit_x):
        sweep = search_c(evaluate, config)
        best = best_row(sweep)
        all_x = torch.cat([fit_x.to(val_x.device), val_x])
        all_y = torch.cat([fit_y.to(val_y.device), val_y])
        final = fit_probe(all_x, all_y, num_classes, best["C"], config, init=solutions[best["C"]])
    log.info("probe: chose C=%g (val top-1 %.4f, %d fits), refitted on %d examples", best["C"], best["val_top1"], len(sweep), len(all_y))
    return ProbeFit(probe=final, c=best["C"], sweep=sweep)


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    val_features: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
) -> dict:
    """Full protocol: choose C, refit, score the test set -> {top1, [top5], mean_per_class_recall, n, C, sweep}."""
    config = config or ProbeConfig()
    fit = select_and_fit(train_features, train_labels, num_classes, config, val_features, val_labels)
    scores = classification_scores(fit.probe.logits(test_features), torch.as_tensor(test_labels))
    return {**scores, "C": fit.c, "sweep": fit.sweep}


def _to_fit_tensors(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: ProbeConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels checked and moved to the configured device/dtype."""
    if config.dtype not in DTYPES:
        raise UserError(f"probe dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"expected (N, D) features and N labels, got {tuple(features.shape)} and {len(labels)} labels")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be non-empty and lie in [0, {num_classes}); got {len(labels)} labels")
    device = torch.device(config.device)
    return features.to(device, DTYPES[config.dtype]), labels.to(device)
