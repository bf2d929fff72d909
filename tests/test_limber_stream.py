"""LiMBeR training with features streamed from the store (bounded memory):

- the shard-and-buffer order visits every record once per epoch, is a pure function of
  (seed, step), and reads every store chunk once per epoch through the bounded ChunkCache;
- `feature_mode: auto` holds small stores in memory and streams large ones, and says so in the log;
- a streamed run interrupted and resumed equals the uninterrupted run (data position checked);
- `torchrun --nproc_per_node 2` (gloo, CPU) over a webdataset streamed from the store trains the
  same projector as one process with the same global batch.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port
from helpers.limber_train_helpers import make_tiny_encoder, make_tiny_lm, tiny_records
from safetensors.torch import load_file

from vlbridge.data.formats import export_records
from vlbridge.errors import UserError
from vlbridge.training import limber_data
from vlbridge.training.limber import LimberDataConfig, LimberOptimConfig, LimberTrainConfig, train_limber

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("limber_stream")
    return {"lm": str(make_tiny_lm(root / "lm")), "encoder": make_tiny_encoder(root / "encoder") + ":32px",
            "cache": str(root / "features")}


def stream_config(assets, **changes) -> LimberTrainConfig:
    data = LimberDataConfig(n=24, image_size=32, feature_cache=assets["cache"], feature_mode="stream",
                            feature_chunk_size=5, shuffle_buffer_chunks=2)
    config = LimberTrainConfig(encoder=assets["encoder"], lm=assets["lm"], batch_size=4, steps=8, checkpoint_every=3,
                               log_every=1, dropout=0.2, data=data, optim=LimberOptimConfig(warmup_steps=2, lr=5e-3))
    return dataclasses.replace(config, **changes)


class FakeStored:
    """StoredFeatures stand-in: chunk c holds rows whose value is their row number."""

    def __init__(self, chunk_rows):
        self.chunk_rows, self.feature_shape, self.reads = chunk_rows, (2,), []
        self.bounds = np.cumsum([0, *chunk_rows])

    def read_chunk(self, chunk):
        self.reads.append(chunk)
        rows = torch.arange(self.bounds[chunk], self.bounds[chunk + 1], dtype=torch.float32)
        return rows[:, None].repeat(1, 2)


def test_shard_buffer_order_is_a_seeded_permutation_read_chunk_by_chunk():
    stored = FakeStored([5, 5, 5, 5, 5, 5])
    rows = np.arange(30)[::-1].copy()  # record i lives in row 29 - i
    stream = limber_data.ChunkedFeatures(stored, rows, capacity=4)
    batcher = limber_data.CaptionBatcher([1] * 30, 4, seed=3)
    batcher.use_chunk_order(stream.groups(), buffer_chunks=2)
    for epoch in range(2):
        order, _ = batcher.epoch_plan(epoch)
        assert sorted(order.tolist()) == list(range(30))  # every record once
        windows = [set(stream.chunk_of_records[order[i : i + 10]].tolist()) for i in range(0, 30, 10)]
        assert all(len(w) == 2 for w in windows)  # a window spans exactly its 2 chunks
        assert order[:10].tolist() != sorted(order[:10].tolist())  # shuffled inside the window
    stored.reads.clear()
    for step in range(batcher.steps_per_epoch):
        samples = batcher.samples(step)
        got = stream.rows(samples.record_indices)  # (4, 2)
        assert got[:, 0].tolist() == [29 - i for i in samples.record_indices]
    assert sorted(stored.reads) == [0, 1, 2, 3, 4, 5]  # each chunk read once in the epoch
    again = limber_data.CaptionBatcher([1] * 30, 4, seed=3)
    again.use_chunk_order(stream.groups(), buffer_chunks=2)
    assert again.samples(9) == batcher.samples(9) and again.position(9) == batcher.position(9)


def test_auto_mode_holds_small_stores_and_streams_large_ones(assets, tmp_path, caplog):
    base = stream_config(assets, steps=2, checkpoint_every=0, dropout=0.0)
    with caplog.at_level(logging.INFO):
        memory = train_limber(dataclasses.replace(base, data=dataclasses.replace(base.data, feature_mode="auto")),
                              tmp_path / "memory")
    assert "LiMBeR data mode: memory" in caplog.text
    caplog.clear()
    tiny_limit = dataclasses.replace(base.data, feature_mode="auto", memory_limit_mb=1e-4)
    with caplog.at_level(logging.INFO):
        streamed = train_limber(dataclasses.replace(base, data=tiny_limit), tmp_path / "stream")
    assert "LiMBeR data mode: stream" in caplog.text and "at most 4 chunks" in caplog.text
    assert np.isfinite(memory.final_loss) and np.isfinite(streamed.final_loss)


def test_streamed_run_resumed_equals_uninterrupted(assets, tmp_path):
    config = stream_config(assets)
    straight = train_limber(config, tmp_path / "straight")

    def stop_at_5(step, _loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_limber(config, tmp_path / "resumed", on_step=stop_at_5)
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "step-00000003.pt", weights_only=False)
    assert saved["data"]["order"] == "shard-buffer" and saved["data"]["batch_in_epoch"] == 3
    resumed = train_limber(config, tmp_path / "resumed", resume="latest")
    assert [s for s, _ in resumed.losses] == [4, 5, 6, 7, 8]  # crosses into epoch 2 (6 batches per epoch)
    assert resumed.losses == straight.losses[3:]
    for key, value in straight.model.projector.state_dict().items():
        assert torch.equal(resumed.model.projector.state_dict()[key], value)
    in_memory = dataclasses.replace(config, data=dataclasses.replace(config.data, feature_mode="memory"))
    with pytest.raises(UserError, match="cannot resume: the checkpoint's data position"):  # another order
        train_limber(in_memory, tmp_path / "resumed", resume="6")


def run_cli(args: list[str], nproc: int = 0) -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port())] if nproc else [sys.executable]
    done = subprocess.run([*launcher, "-m", "vlbridge", *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_over_a_stream_equal_one_process(assets, tmp_path):
    wds = export_records(tiny_records(20, image_size=32), tmp_path / "wds", "wds", shard_size=6, progress=False).read_back
    common = ["train", "limber", "--encoder", assets["encoder"], "--lm", assets["lm"], "--data", wds, "--steps", "5",
              "--device", "cpu", "batch_size=4", "optim.warmup_steps=1", "optim.lr=5e-3", "projector_init=default",
              f"data.feature_cache={tmp_path / 'features'}", "data.feature_mode=stream", "data.feature_chunk_size=4",
              "data.shuffle_buffer_chunks=2", "checkpoint_every=0"]
    run_cli([*common, "--out", str(tmp_path / "one")])
    run_cli([*common, "--out", str(tmp_path / "two")], nproc=2)
    one = load_file(str(tmp_path / "one" / "model" / "projector.safetensors"))
    two = load_file(str(tmp_path / "two" / "model" / "projector.safetensors"))
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6)
    losses = {name: [(row["step"], float(row["loss"])) for row in csv.DictReader(open(tmp_path / name / "metrics.csv"))]
              for name in ("one", "two")}
    assert [s for s, _ in losses["two"]] == [s for s, _ in losses["one"]]
    assert [loss for _, loss in losses["two"]] == pytest.approx([loss for _, loss in losses["one"]], rel=1e-5)
