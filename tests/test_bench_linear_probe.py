"""bench/linear_probe.py on real features: the cached features of an encoder, seeded train draws, the whole test split.

The benchmark is a script (bench/ is not a package); it is loaded from its file. A tiny random
timm encoder on a small shapes world stands in for EfficientNet on Fashion-MNIST.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from vlbridge.data.datasets import load_dataset
from vlbridge.evaluation.features_io import eval_store, labelled_features
from vlbridge.models.registry import build_encoder

BENCH = Path(__file__).resolve().parents[1] / "bench" / "linear_probe.py"
ENCODER = "random:timm:test_resnet"
DATASET = "shapes?n=260"  # 260 train and 260 test images (different ones), 52 classes


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_linear_probe", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def real(bench, cache):
    return bench.load_real_features(ENCODER, DATASET, cache)


def test_real_features_are_the_feature_cache_rows_with_their_labels(real, tmp_path):
    encoder = build_encoder(ENCODER)
    for split, x, y in [("train", real.x, real.y), ("test", real.x_test, real.y_test)]:
        data = load_dataset(DATASET, "classification", split=split)
        direct = labelled_features(eval_store(tmp_path, 64), encoder, data, 64)
        np.testing.assert_array_equal(x, direct.features.numpy())
        np.testing.assert_array_equal(y, direct.labels.numpy())
    assert real.num_classes == len(data.classnames) and not np.array_equal(real.x, real.x_test)


def test_real_draws_are_seeded_subsets_of_train_and_the_whole_test_split(bench, real):
    x, y, x_test, y_test = bench.real_draw(real, 20, None, seed=3)
    again = bench.real_draw(real, 20, None, seed=3)
    other = bench.real_draw(real, 20, None, seed=4)
    assert x.shape == (20, real.x.shape[1]) and len(np.unique(x, axis=0)) == 20
    rows = [int(np.flatnonzero((real.x == row).all(axis=1))[0]) for row in x]  # each drawn row is a train row
    np.testing.assert_array_equal(y, real.y[rows])
    np.testing.assert_array_equal(x, again[0])
    assert not np.array_equal(x, other[0])
    np.testing.assert_array_equal(x_test, real.x_test)
    np.testing.assert_array_equal(y_test, real.y_test)
    assert len(bench.real_draw(real, 20, 5, seed=3)[3]) == 5


def test_real_run_prints_one_row_per_draw_and_a_summary(bench, cache, real, capsys):
    assert bench.main(["--encoder", ENCODER, "--dataset", DATASET, "--cache", cache, "--sizes", "200", "--repeats", "2",
                       "--max-iter", "30"]) == 0
    out = capsys.readouterr().out
    assert "features: random:timm:test_resnet" in out
    assert sum(line.startswith("   200 x") for line in out.splitlines()) == 2
    assert "over 2 draws: top-1 vl - sk" in out


@pytest.mark.parametrize("argv, message", [
    (["--encoder", ENCODER], "--encoder and --dataset go together"),
    (["--encoder", ENCODER, "--dataset", DATASET, "--sizes", "24x8x2"], "--sizes wants N[,N...]"),
    (["--sizes", "24"], "--sizes wants NxDxK"),
    (["--test", "0"], "--test wants a positive number"),
])
def test_bad_arguments_are_one_line_errors(bench, argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        bench.main(argv)


def test_a_size_beyond_the_train_split_is_refused(bench, cache, real):
    with pytest.raises(SystemExit, match="the train split has 260"):
        bench.main(["--encoder", ENCODER, "--dataset", DATASET, "--cache", cache, "--sizes", "261", "--skip-sklearn"])
