"""Stopping `vlbridge train clip` / `train limber` from outside, with real processes and real signals.

- SIGTERM (what a scheduler sends) and Ctrl-C (SIGINT) let the step in progress finish, save a
  checkpoint of it, print one line and exit 143 / 130; `--resume latest` then ends with weights
  bit-identical to an uninterrupted run (same machine, same thread count: one, as the tests run);
- a stopped LiMBeR run leaves no `model/` that could pass for a final model;
- kill -9 before the first checkpoint, then a resume: metrics.csv reads like one run (no duplicate rows).

The child runs `python -m vlbridge` on one thread (OMP_NUM_THREADS=1), like the in-process reference
runs under tests/conftest.py. The signal is sent once the child's metrics.csv shows a logged step, so
it lands mid-run at a step the test does not choose; the assertions hold for any step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.limber_train_helpers import make_tiny_encoder, make_tiny_lm
from safetensors.torch import load_file

from vlbridge.cli import main

CLIP_ARGS = ["model.arch=vl-micro-vit", "data.shapes_n=32", "data.shapes_image_size=32", "data.twemoji=false",
             "data.openclipart=false", "data.workers=0", "eval.n=52", "eval.every=0", "batch_size=8",
             "log_every=1", "device=cpu", "optim.warmup_steps=2"]
STEPS = 16  # long enough that the signal lands mid-run however slow the child starts


def child_env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(argv: list[str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("w")
    return subprocess.Popen([sys.executable, "-m", "vlbridge", "-q", *argv], env=child_env(), stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def logged_steps(run_dir: Path) -> list[str]:
    """The step column of metrics.csv (complete lines only: the child may be writing one)."""
    path = run_dir / "metrics.csv"
    lines = path.read_text().split("\n")[1:-1] if path.is_file() else []
    return [line.split(",")[0] for line in lines]


def signal_after_first_row(proc: subprocess.Popen, run_dir: Path, signum: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not logged_steps(run_dir):
        assert proc.poll() is None, "the run ended before it logged a step"
        assert time.monotonic() < deadline, "no step logged in time"
        time.sleep(0.01)
    proc.send_signal(signum)


def saved_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt"))


def assert_stopped_cleanly(proc: subprocess.Popen, log_path: Path, run_dir: Path, code: int, name: str) -> int:
    """The child exited `code` with one line naming the signal and the checkpoint; returns the saved step."""
    assert proc.wait(timeout=300) == code, log_path.read_text()
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("vlbridge: error:")]
    assert len(lines) == 1 and f"stopped by {name} after step" in lines[0] and "--resume latest" in lines[0], lines
    assert "Traceback" not in log_path.read_text()
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert 1 <= step < STEPS and saved_steps(run_dir)[-1] == step  # checkpoint_every=0: only the stop saved one
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{step:08d}.pt"
    return step


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_clip_run_saves_exits_and_resumes_bit_exactly(tmp_path, signum, code):
    argv = ["train", "clip", *CLIP_ARGS, f"steps={STEPS}", "checkpoint_every=0"]
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    proc = start([*argv, "--out", str(cut)], tmp_path / "cut.log")
    signal_after_first_row(proc, cut, signum)
    assert_stopped_cleanly(proc, tmp_path / "cut.log", cut, code, signal.Signals(signum).name)
    assert not (cut / "model.safetensors").exists()  # a stopped run writes no final model

    assert main([*argv, "--out", str(cut), "--resume", "latest"]) == 0
    assert main([*argv, "--out", str(straight)]) == 0
    assert_same_tensors(load_file(str(cut / "model.safetensors")), load_file(str(straight / "model.safetensors")))
    assert logged_steps(cut) == logged_steps(straight)  # one row per step (+ the final evaluation's row)


@pytest.fixture(scope="module")
def limber_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("limber_interrupt")
    return {"lm": str(make_tiny_lm(root / "lm")), "encoder": make_tiny_encoder(root / "encoder") + ":32px",
            "cache": str(root / "features")}


def limber_argv(assets, out: Path) -> list[str]:
    return ["train", "limber", "--encoder", assets["encoder"], "--lm", assets["lm"], "--data", "shapes",
            "--out", str(out), "--steps", str(STEPS), "batch_size=4", "data.n=16", "data.image_size=32",
            f"data.feature_cache={assets['cache']}", "log_every=1", "checkpoint_every=0", "dropout=0.2"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_limber_run_saves_no_model_and_resumes_bit_exactly(limber_assets, tmp_path, signum, code):
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    assert main(limber_argv(limber_assets, straight)) == 0  # also fills the feature cache the child reuses
    proc = start(limber_argv(limber_assets, cut), tmp_path / "cut.log")
    signal_after_first_row(proc, cut, signum)
    assert_stopped_cleanly(proc, tmp_path / "cut.log", cut, code, signal.Signals(signum).name)
    assert not (cut / "model").exists()  # only a finished run writes model/

    assert main([*limber_argv(limber_assets, cut), "--resume", "latest"]) == 0
    projector = "model/projector.safetensors"
    assert_same_tensors(load_file(str(cut / projector)), load_file(str(straight / projector)))
    assert logged_steps(cut) == [str(s) for s in range(1, STEPS + 1)]


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_leaves_no_duplicate_metric_rows(tmp_path):
    argv = ["train", "clip", *CLIP_ARGS, f"steps={STEPS}", "checkpoint_every=0", "--out", str(tmp_path / "run")]
    proc = start(argv, tmp_path / "run.log")
    signal_after_first_row(proc, tmp_path / "run", signal.SIGKILL)
    proc.wait(timeout=60)
    assert not saved_steps(tmp_path / "run") and logged_steps(tmp_path / "run")
    assert main([*argv, "--resume", "latest"]) == 0  # no checkpoint: starts again from step 0
    steps = logged_steps(tmp_path / "run")
    assert steps[:STEPS] == [str(s) for s in range(1, STEPS + 1)] and steps[STEPS:] == [str(STEPS)]  # + final eval row
