"""Tests for the shared training infrastructure: checkpoints, RNG state, optimizer groups, schedules,
the shared loop (logging, checkpoints, exact resume, config check with old key names) and the one
config vocabulary every trainer speaks."""

import dataclasses
import random
import re
import typing

import numpy as np
import pytest
import torch
import yaml

from vlbridge.config import from_dict, load_config, merge, parse_overrides, to_dict
from vlbridge.errors import UserError
from vlbridge.checkpoint import find_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from vlbridge.runtime import DistEnv, all_reduce_mean, autocast, gather_objects, init_distributed
from vlbridge.training.loop import TrainConfig, TrainResult, TrainTask, check_resume_config, run_training
from vlbridge.training.optim import OptimConfig, adamw, clip_gradients, param_groups, warmup_cosine


def test_checkpoint_latest_pointer_and_pruning(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, keep_checkpoints=2)
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    assert files == ["step-00000003.pt", "step-00000004.pt"]
    latest = find_checkpoint(tmp_path, "latest")
    assert latest.name == "step-00000004.pt"
    assert torch.equal(load_checkpoint(latest)["model"]["w"], torch.full((2,), 4.0))
    assert find_checkpoint(tmp_path, "3").name == "step-00000003.pt"
    assert find_checkpoint(tmp_path / "empty", "latest") is None
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_rng_state_round_trip(tmp_path):
    path = save_checkpoint(tmp_path, 1, {})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_bad_checkpoint_file_is_user_error(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    torch.save({"no": "step"}, bad)
    with pytest.raises(UserError, match="not a vlbridge checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(UserError, match="does not exist"):
        find_checkpoint(tmp_path, str(tmp_path / "missing.pt"))


def test_param_groups_exclude_biases_gains_and_logit_scale():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model.logit_scale = torch.nn.Parameter(torch.ones([]))
    frozen = torch.nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model.add_module("frozen", frozen)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 4  # linear bias, LN weight + bias, logit scale


def test_warmup_cosine_shape():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0)  # cosine starts at the peak
    assert lrs[6] == pytest.approx(0.1)  # ends at min_lr_ratio
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_single_process_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = init_distributed("cpu")
    assert env == DistEnv() and env.is_main and not env.distributed
    value = torch.tensor([1.0, 3.0])
    assert torch.equal(all_reduce_mean(value, env), value)
    assert gather_objects({"a": 1}, env) == [{"a": 1}]
    with autocast(torch.device("cpu")):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


# ------------------------------------------------------------------ the shared loop


class Interrupt(Exception):
    """Stands in for a kill between steps."""


class LineTask(TrainTask):
    """A least-squares line fit with input noise from the global RNG (so a resume must restore it)."""

    label = "line"

    def __init__(self, config: TrainConfig):
        torch.manual_seed(config.seed)
        self.config = config
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = adamw(param_groups(self.model, config.optim.weight_decay), config.optim)
        self.scheduler = warmup_cosine(self.optimizer, config.optim.warmup_steps, config.steps)
        self.total_steps = config.steps
        self.inputs = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))  # (N, 3)
        self.targets = self.inputs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3  # (N, 1)
        self.finished = None

    def load_state_dict(self, saved):
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])

    def learning_rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def step(self, step):
        rows = torch.arange(step * self.config.batch_size, (step + 1) * self.config.batch_size) % len(self.inputs)
        noisy = self.inputs[rows] + 0.01 * torch.randn(len(rows), 3)  # (b, 3)
        loss = ((self.model(noisy) - self.targets[rows]) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        clip_gradients(self.model.parameters(), self.config.optim.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def log_metrics(self):
        return {"weight_norm": float(self.model.weight.detach().norm())}

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def finish(self, result):
        self.finished = result


def line_config(**changes) -> TrainConfig:
    config = TrainConfig(steps=6, batch_size=4, log_every=2, checkpoint_every=2, keep_checkpoints=2, device="cpu",
                         optim=OptimConfig(lr=0.1, warmup_steps=1))
    return dataclasses.replace(config, **changes)


def test_the_loop_logs_checkpoints_and_returns_the_shared_result(tmp_path):
    task = LineTask(line_config())
    result = run_training(task, task.config, tmp_path, DistEnv())
    assert isinstance(result, TrainResult) and task.finished is result
    assert (result.run_dir, result.steps, result.start_step) == (tmp_path, 6, 0)
    assert [s for s, _ in result.losses] == [1, 2, 3, 4, 5, 6] and result.final_loss == result.losses[-1][1]
    assert result.losses[-1][1] < result.losses[0][1] and result.samples_per_second > 0 and result.seconds > 0
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,samples_per_s,weight_norm" and [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]
    assert float(rows[1].split(",")[1]) == result.losses[1][1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")) == ["step-00000004.pt", "step-00000006.pt"]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == 0.1
    assert load_checkpoint(find_checkpoint(tmp_path))["config"]["steps"] == 6
    only_final = LineTask(line_config(checkpoint_every=0, keep_checkpoints=0))
    run_training(only_final, only_final.config, tmp_path / "final", DistEnv())
    assert [p.name for p in (tmp_path / "final" / "checkpoints").glob("step-*.pt")] == ["step-00000006.pt"]


def test_the_loop_resumes_exactly_and_checks_the_config(tmp_path):
    straight = LineTask(line_config())
    full = run_training(straight, straight.config, tmp_path / "full", DistEnv())

    def stop_at_5(step, loss):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        cut = LineTask(line_config())
        run_training(cut, cut.config, tmp_path / "cut", DistEnv(), on_step=stop_at_5)
    resumed = LineTask(line_config(log_every=1))  # a free key may change
    result = run_training(resumed, resumed.config, tmp_path / "cut", DistEnv(), resume="latest")
    assert result.start_step == 4 and result.losses == full.losses[4:]  # from the step-4 checkpoint, RNG restored
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "5", "6"]  # the cut run's rows after step 4 dropped
    changed = LineTask(line_config(optim=OptimConfig(lr=0.2, warmup_steps=1)))
    with pytest.raises(UserError, match="cannot resume: the config differs from the checkpoint's .optim.lr: checkpoint 0.1, now 0.2"):
        run_training(changed, changed.config, tmp_path / "cut", DistEnv(), resume="latest")
    with pytest.raises(UserError, match="no checkpoint '3'"):
        run_training(LineTask(line_config()), line_config(), tmp_path / "cut", DistEnv(), resume="3")
    fresh = LineTask(line_config())
    assert run_training(fresh, fresh.config, tmp_path / "new", DistEnv(), resume="latest").start_step == 0


def test_a_non_finite_loss_stops_the_loop(tmp_path, monkeypatch):
    task = LineTask(line_config())
    monkeypatch.setattr(task, "step", lambda step: torch.tensor(float("inf")))
    with pytest.raises(UserError, match="the training loss became inf at step 1; try a lower optim.lr"):
        run_training(task, task.config, tmp_path, DistEnv())


def test_check_resume_config_maps_old_key_names():
    from vlbridge.training.limber import LimberTrainConfig

    current = LimberTrainConfig(steps=5, encoder="e")
    saved = to_dict(current)  # as an older version wrote it
    saved["max_steps"], saved["keep_last"] = saved.pop("steps"), saved.pop("keep_checkpoints")
    saved["optim"]["grad_clip"] = saved["optim"].pop("grad_clip_norm")
    check_resume_config(saved, current)
    saved["optim"]["grad_clip"] = 0  # old spelling of "no clipping"
    with pytest.raises(UserError, match="optim.grad_clip_norm: checkpoint None, now 1.0"):
        check_resume_config(saved, current)
    saved["optim"]["grad_clip"], saved["max_steps"] = 1.0, 6
    with pytest.raises(UserError, match=r"\(steps: checkpoint 6, now 5\)"):
        check_resume_config(saved, current)


# ------------------------------------------------------------------ one vocabulary for every trainer


def trainer_configs():
    from vlbridge.training.clip import ClipTrainConfig
    from vlbridge.training.limber import LimberTrainConfig
    from vlbridge.training.ssl import SSLTrainConfig

    return [ClipTrainConfig, LimberTrainConfig, SSLTrainConfig]


SHARED_OVERRIDES = ["steps=7", "batch_size=4", "grad_accum_steps=2", "seed=3", "device=cpu", "log_every=5",
                    "checkpoint_every=0", "keep_checkpoints=1", "optim.lr=0.25", "optim.weight_decay=0.5",
                    "optim.beta1=0.8", "optim.beta2=0.9", "optim.eps=1e-3", "optim.warmup_steps=2",
                    "optim.min_lr_ratio=0.1", "optim.grad_clip_norm=null"]


def test_every_trainer_config_speaks_the_shared_vocabulary():
    shared = typing.get_type_hints(TrainConfig)
    optim_hints = typing.get_type_hints(OptimConfig)
    for cls in trainer_configs():
        assert issubclass(cls, TrainConfig)
        hints = typing.get_type_hints(cls)
        assert {name: hints[name] for name in shared if name != "optim"} == {k: v for k, v in shared.items() if k != "optim"}
        assert issubclass(hints["optim"], OptimConfig)
        assert {name: typing.get_type_hints(hints["optim"])[name] for name in optim_hints} == optim_hints
        config = load_config(cls, None, SHARED_OVERRIDES)
        assert (config.steps, config.batch_size, config.grad_accum_steps, config.seed, config.device) == (7, 4, 2, 3, "cpu")
        assert (config.log_every, config.checkpoint_every, config.keep_checkpoints) == (5, 0, 1)
        optim = config.optim
        assert (optim.lr, optim.weight_decay, optim.beta1, optim.beta2, optim.eps) == (0.25, 0.5, 0.8, 0.9, 1e-3)
        assert (optim.warmup_steps, optim.min_lr_ratio, optim.grad_clip_norm) == (2, 0.1, None)


@pytest.mark.parametrize("override, message", [
    ("log_every=0", "log_every must be >= 1, got 0"),
    ("keep_checkpoints=-1", "keep_checkpoints must be >= 0, got -1"),
    ("checkpoint_every=-2", "checkpoint_every must be >= 0, got -2"),
    ("grad_accum_steps=0", "grad_accum_steps must be >= 1, got 0"),
    ("steps=-1", "steps must be >= "),
    ("optim.grad_clip_norm=0", "optim.grad_clip_norm must be > 0, or null for no clipping; got 0.0"),
])
def test_settings_that_mean_nothing_are_the_same_error_in_every_trainer(tmp_path, override, message):
    from vlbridge.training.clip import train_clip
    from vlbridge.training.limber import train_limber
    from vlbridge.training.ssl import train_ssl

    for cls, train in zip(trainer_configs(), (train_clip, train_limber, train_ssl)):
        config = load_config(cls, None, ["device=cpu", "encoder=x"] if cls.__name__.startswith("Limber") else ["device=cpu"])
        with pytest.raises(UserError, match=re.escape(message)):
            train(merge(config, parse_overrides([override])), tmp_path / cls.__name__)


def test_old_trainer_key_names_still_load():
    clip, limber, ssl = trainer_configs()
    assert from_dict(clip, {"optim": {"accum_steps": 4}}).grad_accum_steps == 4
    old_limber = from_dict(limber, {"max_steps": 9, "keep_last": 3, "optim": {"grad_clip": 0}})
    assert (old_limber.steps, old_limber.keep_checkpoints, old_limber.optim.grad_clip_norm) == (9, 3, None)
    old_ssl = from_dict(ssl, {"lr": 0.5, "weight_decay": 0.2, "warmup_steps": 3, "grad_clip": 2.0})
    assert (old_ssl.optim.lr, old_ssl.optim.weight_decay, old_ssl.optim.warmup_steps, old_ssl.optim.grad_clip_norm) == (
        0.5, 0.2, 3, 2.0)
    with pytest.raises(UserError, match="both given"):
        from_dict(ssl, {"lr": 0.5, "optim": {"lr": 0.1}})
