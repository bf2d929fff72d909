"""Tests for the shared training infrastructure: checkpoints, RNG state, optimizer groups, schedules."""

import random

import numpy as np
import pytest
import torch

from vlbridge.errors import UserError
from vlbridge.checkpoint import find_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from vlbridge.runtime import DistEnv, all_reduce_mean, autocast, gather_objects, init_distributed
from vlbridge.training.optim import param_groups, warmup_cosine


def test_checkpoint_latest_pointer_and_pruning(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, keep_last=2)
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
