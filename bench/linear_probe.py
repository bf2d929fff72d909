"""Benchmark: vlbridge's linear probe vs scikit-learn's LogisticRegression(solver="lbfgs").

Both sides run CLIP's protocol on the same seeded synthetic features: `search_c` (the coarse
C sweep, then the binary search around the best C) scored on the same stratified validation
split, then a refit on train+val with the chosen C, then top-1 on held-out test samples.
scikit-learn fits each C from scratch (as a user calling LogisticRegression(C=...).fit does);
vlbridge warm-starts along the search. Both stop at the same tolerance on the mean-form
gradient and the same max_iter (the ProbeConfig defaults unless given). Prints one row per
size, the fit times (wall and CPU seconds, including the search), the test accuracies and the
speed ratio. Goal: >= 5x at test accuracy within 0.5 points. The two searches may choose
different C values where the validation split cannot tell them apart and the weakly
regularised fits stop before converging (at max_iter, or, in scikit-learn, when the loss
stops falling by more than 64 machine epsilons); so untimed columns refit
scikit-learn at vlbridge's chosen C: the solvers agree when these accuracies do.

Features, synthetic by default: K Gaussian class means in a rank-64 subspace (norm --separation)
plus a shared offset and unit isotropic noise, like frozen image features (one shared mean
direction, class structure in few directions); test samples come from the same distribution.
Such classes separate cleanly, and scikit-learn's search picks a nearly unregularised probe
(C >= 4e4), where the solvers' stopping rules decide the accuracy (see docs/BENCHMARKS.md).

Real features with --encoder SPEC --dataset SPEC (e.g. efficientnet-lite0:96px on
fashion-mnist): the encoder's pooled features of the dataset's train and test splits, through
vlbridge's feature cache (--cache; `vlbridge extract` fills the same cache). --sizes then lists
train sample counts (D and K come from the data); each draw takes a seeded random subset of
the train split, and the test split (or a seeded --test subset of it) is the held-out set.

With --repeats R each size is drawn R times (feature seeds seed .. seed+R-1; the validation split
follows the seed) and a summary line gives the mean top-1 difference (vlbridge minus scikit-learn)
with its 95 % t-interval over the R draws and the geometric-mean speed-ups: one draw's difference
is mostly which side's search happened to pick the better C on a small validation split.

    python bench/linear_probe.py [--sizes 1000x512x10,10000x512x100] [--test 2000] [--repeats R]
        [--search-dtype float32|float64] [--dtype float32|float64] [--tolerance T] [--max-iter N] [--skip-sklearn]
    python bench/linear_probe.py --encoder efficientnet-lite0:96px --dataset fashion-mnist --sizes 1000,10000,50000
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from vlbridge.evaluation.linear_probe import ProbeConfig, best_row, fit_probe, search_c, select_and_fit, stratified_split

DEFAULT_SIZES = "1000x512x10,10000x512x100"  # samples x dims x classes; finishes in a few minutes on 2 cores
DEFAULT_REAL_SIZES = "1000,10000"  # train samples drawn from a real dataset's train split
DEFAULT_SYNTHETIC_TEST = 2000  # held-out synthetic samples per draw
CLASS_RANK = 64  # dimension of the subspace the class means span
# scikit-learn's lbfgs keeps float32 input in float32 and then stops on its relative-loss test
# (64 machine epsilons) at float32 precision: on 1000 x 512 x 10 at C=10 it ends 0.5 % above the
# optimum objective (max gradient 8e-6 against the 1e-7 asked for) and scores validation splits
# differently from the converged fit. Fed float64, it converges; so the reference gets float64.
SKLEARN_DTYPE = "float64"


def make_features(num_samples: int, dim: int, num_classes: int, separation: float, seed: int):
    """(features (N, D) float32, labels (N,) int64): Gaussian classes around a shared offset."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((CLASS_RANK, dim)) / np.sqrt(CLASS_RANK)  # (r, D)
    means = separation * rng.standard_normal((num_classes, CLASS_RANK)) @ basis / np.sqrt(dim)  # (K, D) norm ~ separation
    offset = rng.standard_normal(dim)  # (D,) shared by every class
    labels = rng.integers(0, num_classes, num_samples)  # (N,)
    features = offset + means[labels] + rng.standard_normal((num_samples, dim))  # (N, D)
    return features.astype(np.float32), labels


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, value


class CappedFits(logging.Handler):
    """Counts vlbridge's "stopped at max_iter" warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += "max_iter" in record.getMessage()


def run_vlbridge(x, y, x_test, y_test, num_classes, config):
    """(test top-1, chosen C, number of fits in the search, fits stopped at max_iter) of select_and_fit."""
    capped = CappedFits()
    logging.getLogger("vlbridge.evaluation.linear_probe").addHandler(capped)
    try:
        fit = select_and_fit(torch.from_numpy(x), torch.from_numpy(y), num_classes, config)
    finally:
        logging.getLogger("vlbridge.evaluation.linear_probe").removeHandler(capped)
    top1 = float((fit.probe.predict(torch.from_numpy(x_test)).numpy() == y_test).mean())
    return top1, fit.c, len(fit.sweep), capped.count


def sklearn_model(c, config):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="lbfgs", tol=config.tolerance, max_iter=config.max_iter)


def sklearn_top1_at(c, x, y, x_test, y_test, config):
    """Test top-1 of scikit-learn fitted on all of x (as float64) at a given C (the solver check)."""
    x, x_test = x.astype(np.float64), x_test.astype(np.float64)  # see SKLEARN_DTYPE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float((sklearn_model(c, config).fit(x, y).predict(x_test) == y_test).mean())


def objective_and_gradient(coef, intercept, x, y, c) -> tuple[float, float]:
    """(mean-form objective, its largest |gradient|) at (coef, intercept), in float64 (autograd).

    The objective is linear_probe's module docstring's; the tolerance both solvers are given
    applies to that gradient, so a fit far above it stopped for another reason (scikit-learn's
    lbfgs also stops when the loss falls by less than 64 machine epsilons).
    """
    weight = torch.tensor(np.asarray(coef), dtype=torch.float64, requires_grad=True)  # (K, D)
    bias = torch.tensor(np.asarray(intercept), dtype=torch.float64, requires_grad=True)  # (K,)
    logits = torch.as_tensor(x, dtype=torch.float64) @ weight.T + bias  # (N, K)
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y)) + weight.pow(2).sum() / (2 * c * len(y))
    loss.backward()
    return float(loss.detach()), max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))


UNCONVERGED = 10.0  # a fit whose final gradient exceeds this many tolerances counts as stopped early


def run_sklearn(x, y, x_test, y_test, num_classes, config):
    """The same protocol with LogisticRegression(solver="lbfgs") as the fitter, cold starts, on float64 features.

    Returns (test top-1, chosen C, the search's [(C, fitted model)], the final fitted model);
    `stopped_early` checks the search's fits outside the timed call.
    """
    from sklearn.metrics import log_loss

    x, x_test = x.astype(np.float64), x_test.astype(np.float64)  # see SKLEARN_DTYPE
    x_fit, y_fit, x_val, y_val = sklearn_fit_val(x, y, config)
    fitted_models = []

    def evaluate(c):
        fitted = sklearn_model(c, config).fit(x_fit, y_fit)
        fitted_models.append((c, fitted))
        loss = log_loss(y_val, fitted.predict_proba(x_val), labels=fitted.classes_)
        return {"val_top1": float((fitted.predict(x_val) == y_val).mean()), "val_loss": loss}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter, as vlbridge logs it
        sweep = search_c(evaluate, config)
        chosen = best_row(sweep)["C"]
        final = sklearn_model(chosen, config).fit(np.concatenate([x_fit, x_val]), np.concatenate([y_fit, y_val]))
    return float((final.predict(x_test) == y_test).mean()), chosen, fitted_models, final


def sklearn_fit_val(x, y, config):
    """(x_fit, y_fit, x_val, y_val): the stratified validation split both sides search C on."""
    train_idx, val_idx = (idx.numpy() for idx in stratified_split(torch.from_numpy(y), config.val_fraction, config.seed))
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def stopped_early(fitted_models, x, y, config) -> int:
    """How many of the search's scikit-learn fits end with a gradient above UNCONVERGED tolerances."""
    x_fit, y_fit, _, _ = sklearn_fit_val(x.astype(np.float64), y, config)
    return sum(objective_and_gradient(m.coef_, m.intercept_, x_fit, y_fit, c)[1] > UNCONVERGED * config.tolerance
               for c, m in fitted_models)


def at_reference_c(c, sk_final, x, y, x_test, y_test, num_classes, config):
    """Both solvers at scikit-learn's chosen C on all of x: (vlbridge top-1, objective vl, objective sk, |grad| sk)."""
    probe = fit_probe(torch.from_numpy(x), torch.from_numpy(y), num_classes, c, config)
    top1 = float((probe.predict(torch.from_numpy(x_test)).numpy() == y_test).mean())
    sk_objective, sk_gradient = objective_and_gradient(sk_final.coef_, sk_final.intercept_, x, y, c)
    return top1, objective_and_gradient(probe.weight, probe.bias, x, y, c)[0], sk_objective, sk_gradient


def summary(rows: list[tuple[float, float, float, float]]) -> str:
    """One line over repeats of a size: rows of (top-1 vl, top-1 sk, wall speed-up, CPU speed-up)."""
    from scipy import stats

    gaps = 100 * np.array([vl - sk for vl, sk, _, _ in rows])  # points
    half = stats.t.ppf(0.975, len(gaps) - 1) * gaps.std(ddof=1) / np.sqrt(len(gaps))
    wall = float(np.exp(np.mean(np.log([r[2] for r in rows]))))
    cpu = float(np.exp(np.mean(np.log([r[3] for r in rows]))))
    return (f"  over {len(rows)} draws: top-1 vl - sk {gaps.mean():+.2f} points, 95 % CI [{gaps.mean() - half:+.2f}, "
            f"{gaps.mean() + half:+.2f}] (per draw: {', '.join(f'{g:+.2f}' for g in gaps)}); "
            f"speed-up geometric mean {wall:.1f}x wall ({cpu:.1f}x CPU)")


def parse_sizes(text: str, real: bool) -> list[tuple[int, ...]]:
    """[(N, D, K), ...] for synthetic features, [(N,), ...] (train samples) for real ones."""
    parts, want = (1, "N[,N...] (train samples)") if real else (3, "NxDxK[,NxDxK...] (samples x dims x classes)")
    try:
        sizes = [tuple(int(part) for part in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != parts or min(size) < 2 for size in sizes):
        raise SystemExit(f"--sizes wants {want}, got {text!r}")
    return sizes


@dataclass
class RealFeatures:
    """An encoder's pooled features of a labelled dataset's train and test splits."""

    name: str  # "encoder on dataset", for the header
    x: np.ndarray  # (N_train, D) float32 train features
    y: np.ndarray  # (N_train,) int64 class indices
    x_test: np.ndarray  # (N_test, D) float32
    y_test: np.ndarray  # (N_test,) int64
    num_classes: int  # classes of the dataset (shared by both splits)


def load_real_features(encoder_spec: str, dataset_spec: str, cache: str | None, batch_size: int = 64) -> RealFeatures:
    """Features of `dataset_spec`'s train and test splits under `encoder_spec`, from (or into) the feature cache."""
    from vlbridge.data.datasets import load_dataset
    from vlbridge.data.features import default_feature_root
    from vlbridge.evaluation.features_io import eval_store, labelled_features
    from vlbridge.models.registry import build_encoder

    encoder = build_encoder(encoder_spec)
    store = eval_store(cache or default_feature_root(), batch_size)
    splits = {split: load_dataset(dataset_spec, "classification", split=split) for split in ("train", "test")}
    train, test = (labelled_features(store, encoder, data, batch_size) for data in splits.values())
    return RealFeatures(f"{encoder.encoder_id} on {splits['train'].name}", train.features.numpy(), train.labels.numpy(),
                        test.features.numpy(), test.labels.numpy(), len(splits["train"].classnames))


def feature_draws(args, sizes: list[tuple[int, ...]], real: RealFeatures | None):
    """(size label, seed, x, y, x_test, y_test, num_classes) for every size (parse_sizes') and draw the arguments ask for."""
    seeds = range(args.seed, args.seed + args.repeats)
    if real is None:
        for num_samples, dim, num_classes in sizes:
            for seed in seeds:
                x, y = make_features(num_samples + args.test, dim, num_classes, args.separation, seed)
                yield (f"{num_samples:>6} x {dim:>4} x {num_classes:>3}", seed,
                       x[:num_samples], y[:num_samples], x[num_samples:], y[num_samples:], num_classes)
        return
    for (num_samples,) in sizes:
        if num_samples > len(real.y):
            raise SystemExit(f"--sizes asks for {num_samples} train samples; the train split has {len(real.y)}")
        for seed in seeds:
            yield (f"{num_samples:>6} x {real.x.shape[1]:>4} x {real.num_classes:>3}", seed,
                   *real_draw(real, num_samples, args.test, seed), real.num_classes)


def real_draw(real: RealFeatures, num_samples: int, test: int | None, seed: int):
    """(x, y, x_test, y_test): a seeded subset of num_samples train rows; the test split, or a seeded subset of `test` rows."""
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.permutation(len(real.y))[:num_samples])
    test_rows = np.arange(len(real.y_test)) if test is None else np.sort(rng.permutation(len(real.y_test))[:test])
    return real.x[train_rows], real.y[train_rows], real.x_test[test_rows], real.y_test[test_rows]


def main(argv: list[str] | None = None) -> int:
    defaults = ProbeConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help=f"train samples x dims x classes, comma-separated (default {DEFAULT_SIZES}); "
                        f"with --encoder, train sample counts (default {DEFAULT_REAL_SIZES})")
    parser.add_argument("--test", type=int, help=f"held-out test samples per draw (default {DEFAULT_SYNTHETIC_TEST}; "
                        "with --encoder, the whole test split)")
    parser.add_argument("--encoder", help="probe this image encoder's features (any `vlbridge extract` encoder spec) instead of synthetic ones")
    parser.add_argument("--dataset", help="with --encoder: the labelled dataset with train and test splits (e.g. fashion-mnist)")
    parser.add_argument("--cache", help="with --encoder: the feature cache folder (default <VLBRIDGE_CACHE>/features)")
    parser.add_argument("--separation", type=float, default=4.0, help="norm of the class means vs unit noise (default 4)")
    parser.add_argument("--search-dtype", default=defaults.search_dtype, choices=["float32", "float64"], help=f"vlbridge's dtype along the C search (default {defaults.search_dtype})")
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "float64"], help=f"vlbridge's dtype of the final refit (default {defaults.dtype})")
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance, help=f"both sides' gradient tolerance (default {defaults.tolerance:g})")
    parser.add_argument("--max-iter", type=int, default=defaults.max_iter, help=f"both sides' L-BFGS iterations per fit (default {defaults.max_iter})")
    parser.add_argument("--skip-sklearn", action="store_true", help="time vlbridge alone (profiling)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the features and the validation split (default 0)")
    parser.add_argument("--repeats", type=int, default=1, help="draws per size, seeds seed..seed+R-1, with a summary line (default 1)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats wants a positive number of draws, got {args.repeats}")
    if (args.encoder is None) != (args.dataset is None):
        raise SystemExit("--encoder and --dataset go together (real features), or neither (synthetic ones)")
    if args.test is not None and args.test < 1:
        raise SystemExit(f"--test wants a positive number of samples, got {args.test}")
    if args.encoder is None and args.test is None:
        args.test = DEFAULT_SYNTHETIC_TEST
    config = replace(defaults, dtype=args.dtype, search_dtype=args.search_dtype, tolerance=args.tolerance,
                     max_iter=args.max_iter, seed=args.seed)
    print(f"protocol: C in [{config.c_min:g}, {config.c_max:g}], {config.c_steps} coarse points, binary search to "
          f"1/{config.refine_per_decade} decade; tolerance {config.tolerance:g}, max_iter {config.max_iter}, vlbridge search {config.search_dtype}, refit {config.dtype}")
    real = None
    sizes = parse_sizes(args.sizes or (DEFAULT_SIZES if args.encoder is None else DEFAULT_REAL_SIZES),
                        real=args.encoder is not None)  # a bad --sizes fails before any features load
    if args.encoder is not None:
        real = load_real_features(args.encoder, args.dataset, args.cache)
        print(f"features: {real.name}, train {real.x.shape[0]} x {real.x.shape[1]}, test {real.x_test.shape[0]}, {real.num_classes} classes")
    print(f"threads: torch {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    header = (f"{'N x D x K':>18} | {'fits (capped/early)':>19} | {'vlbridge s (CPU)':>16} | {'sklearn s (CPU)':>16} | "
              f"{'speed-up (CPU)':>15} | {'top-1 vl / sk':>15} | {'chosen C vl / sk':>17} | {'sk at vl C':>10} | "
              f"{'at sk C: top-1 vl':>17} | {'objective vl / sk':>21} | {'sk |grad|':>9}")
    print(header + "\n" + "-" * len(header))
    rows_by_size: dict[str, list] = {}
    for size, seed, *draw in feature_draws(args, sizes, real):
        if (row := bench_draw(size, *draw, args.skip_sklearn, replace(config, seed=seed))) is not None:
            rows_by_size.setdefault(size, []).append(row)
            if len(rows_by_size[size]) == args.repeats > 1:
                print(summary(rows_by_size[size]), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


def bench_draw(size: str, x, y, x_test, y_test, num_classes: int, skip_sklearn: bool, config: ProbeConfig):
    """Print one row for one draw of one size; return (top-1 vl, top-1 sk, wall, CPU speed-ups), or None alone."""
    ours_wall, ours_cpu, ours = timed(run_vlbridge, x, y, x_test, y_test, num_classes, config)
    if skip_sklearn:
        print(f"{size} | {ours[2]:>3} ({ours[3]:>2}) | {ours_wall:7.1f} ({ours_cpu:6.1f}) | top-1 {100 * ours[0]:.2f}, C {ours[1]:.3g}", flush=True)
        return None
    ref_wall, ref_cpu, ref = timed(run_sklearn, x, y, x_test, y_test, num_classes, config)
    early = stopped_early(ref[2], x, y, config)  # untimed
    same_c = sklearn_top1_at(ours[1], x, y, x_test, y_test, config)
    at_ref = at_reference_c(ref[1], ref[3], x, y, x_test, y_test, num_classes, config)
    print(f"{size} | {ours[2]:>3} ({ours[3]:>2}) / {len(ref[2]):>3} ({early:>2}) | {ours_wall:7.1f} ({ours_cpu:6.1f}) | "
          f"{ref_wall:7.1f} ({ref_cpu:6.1f}) | {ref_wall / ours_wall:5.1f}x ({ref_cpu / ours_cpu:5.1f}x) | "
          f"{100 * ours[0]:6.2f} / {100 * ref[0]:6.2f} | {ours[1]:7.3g} / {ref[1]:7.3g} | {100 * same_c:10.2f} | "
          f"{100 * at_ref[0]:17.2f} | {at_ref[1]:9.4g} / {at_ref[2]:9.4g} | {at_ref[3]:9.2g}", flush=True)
    return ours[0], ref[0], ref_wall / ours_wall, ref_cpu / ours_cpu


if __name__ == "__main__":
    sys.exit(main())
