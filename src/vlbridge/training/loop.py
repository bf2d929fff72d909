"""The training loop the CLIP, LiMBeR and SSL trainers share, with their common config and result.

    task = ClipTask(config, run_dir, env)               # a trainer: model, data, optimiser
    result = run_training(task, config, run_dir, env, resume="latest", on_step=None)

A trainer describes itself as a `TrainTask` (how one optimizer step runs, what a checkpoint
holds, what it writes at the end); `run_training` does the rest, the same way for all three:

- resume: `resume` is None (fresh), "latest" (the newest checkpoint; a fresh start if there is
  none; past a broken `latest` pointer, the newest checkpoint file that loads, and a UserError
  rather than a fresh start when none does), a step number or a checkpoint file. The
  checkpoint's config must match the current one except for the task's `resume_free_keys`
  (renamed keys are mapped first, so runs saved before a rename still resume); model,
  optimiser, schedule, data position and RNG state are restored, so the resumed run continues
  exactly;
- temporary checkpoint files (`.*.tmp`) a killed run left are deleted (rank 0, logged);
- the resolved config is written to run_dir/config.yaml (rank 0);
- steps run from the start step to `task.total_steps` with a tqdm bar on rank 0; every step's
  loss (the mean over the global batch) is recorded, and a non-finite loss stops the run. Loss
  values stay on the device until a row is logged, a checkpoint is written or `on_step` needs
  one, so a GPU is not synchronised every step;
- every `log_every` steps and at the end, RunLogger gets loss, learning rate, samples/s of the
  window since the last row, and the task's own metrics (metrics.csv + TensorBoard);
- every `checkpoint_every` steps (0: never in between) and at the end, a checkpoint goes to
  run_dir/checkpoints via `vlbridge.checkpoint` (atomic; `keep_checkpoints` newest kept, 0 = all);
- `on_step(step, loss)` runs after every completed step (tests stop runs with it);
- SIGTERM or Ctrl-C (SIGINT) lets the step in progress finish, saves a checkpoint of it (if
  that step had none) and raises `TrainingInterrupted` (exit code 143 / 130 in the CLI), without
  writing the final model; `--resume latest` continues exactly (`training/stop_signals.py`).

`TrainConfig` holds the vocabulary every trainer config shares (`steps`, `batch_size`,
`grad_accum_steps`, `seed`, `device`, `log_every`, `checkpoint_every`, `keep_checkpoints`,
`optim.*`); `TrainResult` is what every trainer returns (subclassed for trainer extras).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from vlbridge.checkpoint import (CHECKPOINT_DIR, LATEST, find_checkpoint, load_checkpoint, load_latest_checkpoint,
                                 remove_stale_checkpoint_temporaries, restore_rng_state, save_checkpoint)
from vlbridge.config import rename_keys, save_config, to_dict
from vlbridge.errors import UserError
from vlbridge.runtime import DistEnv, barrier
from vlbridge.training.metrics_log import RunLogger
from vlbridge.training.optim import OptimConfig, check_optim_config
from vlbridge.training.stop_signals import StopSignals

log = logging.getLogger(__name__)

OnStep = Callable[[int, float], None]  # (steps done, loss of that step)
LOOP_FREE_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "device")  # change nothing a step computes


@dataclass
class TrainConfig:
    """The settings every trainer shares, with one name and one meaning (trainers subclass it)."""

    steps: int = 100  # optimizer steps in total
    batch_size: int = 32  # global batch: samples per optimizer step, all processes and micro-batches together
    grad_accum_steps: int = 1  # micro-batches per step on each process (same update, less memory)
    seed: int = 0  # model init, data order, augmentation, dropout
    device: str = "auto"  # "auto" (this rank's GPU if any, else CPU), "cpu", "cuda", "cuda:1", ...
    log_every: int = 10  # steps between metric rows (the last step always gets one)
    checkpoint_every: int = 100  # steps between resume checkpoints (0: only the final one)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0: all)
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and schedule


@dataclass
class TrainResult:
    """What a training call produced (trainers subclass it for their extras)."""

    run_dir: Path  # the run directory
    steps: int  # optimizer steps done in total (including those before a resume)
    start_step: int  # step this call started from (0 unless it resumed)
    final_loss: float  # loss of the last step this call ran (global-batch mean); nan if it ran none
    losses: list[tuple[int, float]]  # (step, loss) of every step this call ran
    samples_per_second: float  # throughput of this call's steps, all processes (checkpoints and evaluation excluded)
    seconds: float  # wall time of this call's loop (steps, logging, evaluation, checkpoints)

    @classmethod
    def extend(cls, base: "TrainResult", **extras: Any):
        """`base`'s fields plus a subclass's extra ones."""
        return cls(**{f.name: getattr(base, f.name) for f in fields(TrainResult)}, **extras)


class TrainTask:
    """One trainer as `run_training` drives it; subclasses fill in the steps."""

    label = "train"  # progress-bar label
    total_steps = 0  # the run's last step
    resume_free_keys: tuple[str, ...] = ()  # config keys (or "section." prefixes) a resume may change

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore model, optimiser, schedule and data position from a checkpoint dict."""
        raise NotImplementedError

    def begin(self, start_step: int) -> None:
        """Called once, after any resume, before the first step (data iterators, DDP wrapping)."""

    def learning_rate(self) -> float:
        """The learning rate the next step uses (logged)."""
        raise NotImplementedError

    def step(self, step: int) -> torch.Tensor:
        """Run optimizer step `step` (0-based); return its loss, averaged over the global batch, on every rank."""
        raise NotImplementedError

    def log_metrics(self) -> dict[str, float]:
        """Extra metrics for a log row (e.g. CLIP's temperature)."""
        return {}

    def after_step(self, done: int, logger: RunLogger) -> None:
        """After step `done` (1-based) was logged, before its checkpoint: periodic evaluation."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds besides config, step and RNG state (called on every rank)."""
        raise NotImplementedError

    def on_checkpoint(self, step: int) -> None:
        """After rank 0 wrote the checkpoint of `step` (e.g. also write the deployable model)."""

    def finish(self, result: TrainResult) -> None:
        """On rank 0 after the last step: write the final model."""


def check_train_config(config: TrainConfig, min_steps: int = 1) -> None:
    """UserError for shared settings that mean nothing, naming the key."""
    at_least = {"steps": min_steps, "batch_size": 1, "grad_accum_steps": 1, "log_every": 1,
                "checkpoint_every": 0, "keep_checkpoints": 0}
    for name, low in at_least.items():
        value = getattr(config, name)
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    check_optim_config(config.optim)


def check_resume_config(saved: dict[str, Any], current: Any, free_keys: tuple[str, ...] = ()) -> None:
    """A resumed run must train the same thing: every key but the free ones must match the checkpoint's.

    The checkpoint's config may use old key names; they are mapped to the current ones first.
    """
    before = _flatten(rename_keys(type(current), saved, warn=False))
    now = _flatten(to_dict(current))
    free = LOOP_FREE_KEYS + tuple(free_keys)

    def is_free(key: str) -> bool:
        return any(key == f or (f.endswith(".") and key.startswith(f)) for f in free)

    changed = sorted(k for k in set(before) | set(now) if not is_free(k) and before.get(k) != now.get(k))
    if changed:
        details = "; ".join(f"{k}: checkpoint {before.get(k)!r}, now {now.get(k)!r}" for k in changed)
        raise UserError(f"cannot resume: the config differs from the checkpoint's ({details})")


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def restore(task: TrainTask, config: TrainConfig, run_dir: Path, resume: str | None, env: DistEnv) -> int:
    """Load the checkpoint `resume` names into `task` (config checked, RNG restored); return its step."""
    if not resume:
        return 0
    if resume == LATEST:
        found = load_latest_checkpoint(run_dir, map_location=env.device)  # falls back past a broken pointer
        if found is None:
            log.info("no checkpoint in %s yet: starting from step 0", run_dir)
            return 0
        path, saved = found
    else:
        path = find_checkpoint(run_dir, resume)
        if path is None:
            raise UserError(f"no checkpoint {resume!r} in {run_dir / CHECKPOINT_DIR}")
        saved = load_checkpoint(path, map_location=env.device)
    check_resume_config(saved.get("config", {}), config, task.resume_free_keys)
    task.load_state_dict(saved)
    restore_rng_state(saved["rng"])
    log.info("resumed from %s at step %d", path, saved["step"])
    return int(saved["step"])


def run_training(task: TrainTask, config: TrainConfig, run_dir: str | Path, env: DistEnv,
                 resume: str | None = None, on_step: OnStep | None = None) -> TrainResult:
    """Resume (if asked), run the remaining steps with logging and checkpoints, finish; see the module docstring."""
    run_dir = Path(run_dir)
    if env.is_main:
        remove_stale_checkpoint_temporaries(run_dir)
    start = restore(task, config, run_dir, resume, env)
    if env.is_main:
        save_config(config, run_dir / "config.yaml")
    task.begin(start)
    logger = RunLogger(run_dir, env.is_main, resume_step=start)  # rows after `start` from an earlier try go
    try:
        with StopSignals() as stop:
            result = _run_steps(task, config, run_dir, env, start, logger, on_step, stop)
    finally:
        logger.close()
    if env.is_main:
        task.finish(result)
    barrier(env)
    return result


def _run_steps(task: TrainTask, config: TrainConfig, run_dir: Path, env: DistEnv, start: int,
               logger: RunLogger, on_step: OnStep | None, stop: StopSignals) -> TrainResult:
    losses: list[tuple[int, float]] = []
    pending: list[tuple[int, torch.Tensor]] = []  # losses still on the device: read in one go, no sync per step
    bar = tqdm(total=task.total_steps, initial=start, desc=task.label, disable=None if env.is_main else True)
    clock = _Throughput(config.batch_size)
    began = time.perf_counter()
    for step in range(start, task.total_steps):
        lr = task.learning_rate()
        with clock:
            pending.append((step + 1, task.step(step).detach()))
        done = step + 1
        bar.update(1)
        logs = done % config.log_every == 0 or done == task.total_steps
        saves = (config.checkpoint_every and done % config.checkpoint_every == 0) or done == task.total_steps
        if logs or saves or on_step is not None:
            losses += _read_losses(pending)
            pending = []
        if logs:
            logger.log(done, {"loss": losses[-1][1], "lr": lr, "samples_per_s": clock.window_rate(), **task.log_metrics()})
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
        task.after_step(done, logger)
        if saves:
            _checkpoint(task, config, run_dir, done, env)
        if on_step is not None:
            on_step(done, losses[-1][1])
        if stop.requested(env):
            bar.close()
            if not saves:
                losses += _read_losses(pending)
                _checkpoint(task, config, run_dir, done, env)
            raise stop.interrupted(done, run_dir / CHECKPOINT_DIR / f"step-{done:08d}.pt")
    bar.close()
    return TrainResult(
        run_dir=run_dir, steps=start + len(losses), start_step=start,
        final_loss=losses[-1][1] if losses else float("nan"), losses=losses,
        samples_per_second=clock.overall_rate(), seconds=time.perf_counter() - began,
    )


def _read_losses(pending: list[tuple[int, torch.Tensor]]) -> list[tuple[int, float]]:
    """(step, loss) as floats (one device read); UserError at the first loss that is not finite."""
    values = torch.stack([loss.float() for _, loss in pending]).tolist() if pending else []
    for (step, _), value in zip(pending, values):
        if not math.isfinite(value):
            raise UserError(f"the training loss became {value} at step {step}; try a lower optim.lr")
    return [(step, value) for (step, _), value in zip(pending, values)]


class _Throughput:
    """Times the steps (`with clock:` around each): samples/s since the last window read, and overall."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size  # samples per step
        self.steps = self.window_steps = 0
        self.seconds = self.window_seconds = 0.0

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self.started
        self.steps, self.seconds = self.steps + 1, self.seconds + elapsed
        self.window_steps, self.window_seconds = self.window_steps + 1, self.window_seconds + elapsed

    def window_rate(self) -> float:
        rate = self.window_steps * self.batch_size / max(self.window_seconds, 1e-9)
        self.window_steps, self.window_seconds = 0, 0.0
        return rate

    def overall_rate(self) -> float:
        return self.steps * self.batch_size / max(self.seconds, 1e-9) if self.steps else 0.0


def _checkpoint(task: TrainTask, config: TrainConfig, run_dir: Path, step: int, env: DistEnv) -> None:
    state = task.state_dict()  # may be collective (CLIP gathers stream positions): every rank calls it
    if env.is_main:
        save_checkpoint(run_dir, step, {**state, "config": to_dict(config)}, keep_checkpoints=config.keep_checkpoints)
        task.on_checkpoint(step)
    barrier(env)
