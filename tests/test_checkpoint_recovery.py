"""A broken `checkpoints/latest` pointer or broken checkpoint files: `resume="latest"` resumes from the
newest checkpoint that loads (never from step 0 over existing checkpoints), refuses to start when
none loads, and a run clears the temporary files a killed checkpoint write left."""

import dataclasses
import logging

import pytest
import torch

from vlbridge.checkpoint import find_checkpoint, load_latest_checkpoint
from vlbridge.errors import UserError
from vlbridge.runtime import DistEnv
from vlbridge.training.loop import TrainConfig, TrainTask, run_training
from vlbridge.training.optim import OptimConfig, adamw, param_groups


class Stop(Exception):
    """Stands in for a kill between steps."""


class TinyTask(TrainTask):
    """A 3 -> 1 least-squares fit with noise from the global RNG (so an exact resume must restore it)."""

    label = "tiny"

    def __init__(self, config: TrainConfig):
        torch.manual_seed(config.seed)
        self.config, self.total_steps = config, config.steps
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = adamw(param_groups(self.model, config.optim.weight_decay), config.optim)
        self.inputs = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))  # (N, 3)
        self.targets = self.inputs @ torch.tensor([[1.0], [-2.0], [0.5]])  # (N, 1)

    def load_state_dict(self, saved):
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])

    def learning_rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def step(self, step):
        noisy = self.inputs + 0.01 * torch.randn(self.inputs.shape)
        loss = ((self.model(noisy) - self.targets) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}


def tiny_config(**changes) -> TrainConfig:
    config = TrainConfig(steps=6, batch_size=16, log_every=1, checkpoint_every=2, keep_checkpoints=0, device="cpu",
                         optim=OptimConfig(lr=0.05, warmup_steps=0))
    return dataclasses.replace(config, **changes)


def train(run_dir, resume=None, stop_after=None):
    """Run TinyTask in `run_dir`; returns (result or None if stopped, steps this call ran)."""
    ran = []

    def on_step(step, loss):
        ran.append(step)
        if step == stop_after:
            raise Stop

    task = TinyTask(tiny_config())
    try:
        return run_training(task, task.config, run_dir, DistEnv(), resume=resume, on_step=on_step), ran
    except Stop:
        return None, ran


@pytest.fixture
def interrupted(tmp_path):
    """A run stopped after step 5: checkpoints of steps 2 and 4, `latest` naming step 4."""
    _, ran = train(tmp_path, stop_after=5)
    assert ran == [1, 2, 3, 4, 5]
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("step-*.pt")) == ["step-00000002.pt", "step-00000004.pt"]
    assert (folder / "latest").read_text() == "step-00000004.pt"
    return tmp_path


def snapshot(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "checkpoints").glob("step-*.pt"))}


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


POINTER_DAMAGE = {
    "garbage bytes": lambda folder: (folder / "latest").write_bytes(b"\xff\xfe\x00\x9c garbage \x81"),
    "empty": lambda folder: (folder / "latest").write_bytes(b""),
    "missing file": lambda folder: (folder / "latest").write_text("step-00000008.pt"),
    "not a file name": lambda folder: (folder / "latest").write_text("../config.yaml"),
    "deleted": lambda folder: (folder / "latest").unlink(),
}


@pytest.mark.parametrize("damage", POINTER_DAMAGE)
def test_a_broken_pointer_resumes_from_the_newest_checkpoint_and_overwrites_nothing(interrupted, damage, caplog):
    folder = interrupted / "checkpoints"
    POINTER_DAMAGE[damage](folder)
    before = snapshot(interrupted)
    with caplog.at_level(logging.WARNING, logger="vlbridge.checkpoint"):
        _, ran = train(interrupted, resume="latest", stop_after=5)
    assert ran == [5]  # resumed at step 4, not 0
    assert snapshot(interrupted) == before  # nothing written over
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step-00000004.pt" in warnings[0] and "\n" not in warnings[0]
    assert find_checkpoint(interrupted, "latest").name == "step-00000004.pt"  # the same fallback, without loading


def test_a_pointer_to_a_truncated_file_resumes_from_the_previous_one(interrupted, caplog):
    truncate(interrupted / "checkpoints" / "step-00000004.pt")
    before = snapshot(interrupted)
    with caplog.at_level(logging.WARNING, logger="vlbridge.checkpoint"):
        _, ran = train(interrupted, resume="latest", stop_after=3)
    assert ran == [3] and snapshot(interrupted) == before
    assert any("step-00000004.pt, which cannot be loaded" in r.getMessage() and "resuming from step-00000002.pt"
               in r.getMessage() for r in caplog.records)


def test_the_fallback_skips_broken_files_and_the_resumed_run_is_exact(tmp_path):
    straight, _ = train(tmp_path / "straight")
    run_dir = tmp_path / "cut"
    train(run_dir, stop_after=5)
    (run_dir / "checkpoints" / "step-00000006.pt").write_bytes(b"torn")  # newer than the pointer's, and broken
    (run_dir / "checkpoints" / "latest").write_bytes(b"\x00\x01")
    path, state = load_latest_checkpoint(run_dir)
    assert path.name == "step-00000004.pt" and state["step"] == 4
    result, _ = train(run_dir, resume="latest")
    assert result.start_step == 4 and result.losses == straight.losses[4:]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000006.pt"  # the run repaired it
    assert load_latest_checkpoint(run_dir)[1]["step"] == 6


def test_when_no_checkpoint_loads_the_run_refuses_to_start(interrupted):
    folder = interrupted / "checkpoints"
    truncate(folder / "step-00000004.pt")
    (folder / "step-00000002.pt").write_bytes(b"not a checkpoint")
    (folder / "latest").write_bytes(b"\xff")
    before = snapshot(interrupted)
    with pytest.raises(UserError, match="no checkpoint in .*checkpoints can be loaded") as caught:
        train(interrupted, resume="latest")
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)
    assert snapshot(interrupted) == before
    (folder / "latest").write_text("step-00000004.pt")  # a sound pointer to a broken file: the same refusal
    with pytest.raises(UserError, match="can be loaded"):
        train(interrupted, resume="latest")
    assert snapshot(interrupted) == before


def test_a_broken_pointer_without_checkpoint_files_starts_afresh(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "latest").write_bytes(b"\xff\xfe")
    assert find_checkpoint(tmp_path, "latest") is None
    with caplog.at_level(logging.WARNING, logger="vlbridge.checkpoint"):
        result, _ = train(tmp_path, resume="latest")
    assert result.start_step == 0 and result.steps == 6
    assert any("starting from step 0" in r.getMessage() for r in caplog.records)
    assert find_checkpoint(tmp_path / "nothing", "latest") is None
    assert load_latest_checkpoint(tmp_path / "nothing") is None


def test_a_sound_pointer_is_used_without_a_warning(interrupted, caplog):
    with caplog.at_level(logging.WARNING, logger="vlbridge.checkpoint"):
        _, ran = train(interrupted, resume="latest", stop_after=5)
    assert ran == [5] and not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("resume", [None, "latest"])
def test_a_run_removes_the_temporary_files_a_killed_checkpoint_write_left(interrupted, resume, caplog):
    folder = interrupted / "checkpoints"
    stale = [folder / ".step-00000006.pt.1a2b3c4d.tmp", folder / ".latest.5e6f7a8b.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.INFO, logger="vlbridge.checkpoint"):
        train(interrupted, resume=resume, stop_after=1 if resume is None else 5)
    assert not any(path.exists() for path in stale) and not list(folder.glob("*.tmp"))
    assert any("removed 2 unfinished checkpoint file(s)" in r.getMessage() for r in caplog.records)
    assert (folder / "step-00000004.pt").is_file()
