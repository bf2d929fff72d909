"""`train_tower`: label targets, NT-Xent, CLIP's init and data at step 0, runs that `tower:DIR` loads,
a frozen text side, exact resume and config errors (micro ResNet tower on 32 px shapes, CPU)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from helpers.clip_fixtures import run_processes
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from vlbridge.checkpoint import find_checkpoint, load_checkpoint
from vlbridge.config import from_dict, merge, to_dict
from vlbridge.data.records import ImageTextRecord
from vlbridge.errors import UserError
from vlbridge.models.clip import architecture_config, model_from_config
from vlbridge.models.registry import build_encoder
from vlbridge.models.tower import read_tower_config
from vlbridge.runtime import DistEnv
from vlbridge.training.clip import ClipTask, ClipTrainConfig
from vlbridge.training.tower import TowerTask, TowerTrainConfig, label_classes, label_targets, labels_step, nt_xent, train_tower

ARCH = "vl-micro-rn"  # ModifiedResNet with batch norm, like the study's vl-tiny-rn, at 32 px
EMBED_DIM = 32  # vl-micro-rn's embed_dim
TINY = {
    "model": {"arch": ARCH},
    "data": {"shapes_n": 24, "shapes_image_size": 32, "twemoji": False, "openclipart": False, "workers": 0},
    "optim": {"warmup_steps": 1, "lr": 1e-3},
    "steps": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "device": "cpu",
}


def tower_config(**overrides) -> TowerTrainConfig:
    return merge(merge(TowerTrainConfig(), TINY), overrides)


def clip_config(**overrides) -> ClipTrainConfig:
    return merge(merge(ClipTrainConfig(), TINY), overrides)


def record(rid: str, captions: list[str], tags: list[str] = ()) -> ImageTextRecord:
    return ImageTextRecord(rid, Image.new("RGB", (8, 8)), list(captions), tags=list(tags))


# ------------------------------------------------------------------------------------ labels


def test_label_classes_are_singular_nouns_and_tags_with_multi_hot_targets():
    records = [
        record("a", ["two dogs and a red circle", "a small dog."]),
        record("b", ["a bus on a white background"], tags=["Cats"]),
        record("c", ["an empty picture"]),
        record("d", ["Stars!"], tags=["kite"]),
    ]
    classes = label_classes(records)
    assert classes == ["bus", "cat", "circle", "dog", "kite", "star"]
    targets = label_targets(records, classes)
    assert targets["a"].tolist() == [0, 0, 1, 1, 0, 0]
    assert targets["b"].tolist() == [1, 1, 0, 0, 0, 0]  # "bus" stays "bus"; the tag "Cats" -> "cat"
    assert targets["c"].tolist() == [0] * 6  # no noun: all zeros, still a sample
    assert targets["d"].tolist() == [0, 0, 0, 0, 1, 1]


def test_labels_step_micro_batches_give_the_same_update():
    targets = {"a": torch.tensor([1.0, 0.0, 1.0]), "b": torch.tensor([0.0, 0.0, 0.0])}
    batch = {"pixel_values": torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1)), "id": ["a", "b", "b", "a"]}
    updated = []
    for accum_steps in (1, 2):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        loss = labels_step(net, batch, targets, optimizer, torch.device("cpu"), accum_steps)
        updated.append((loss, [p.detach().clone() for p in net.parameters()]))
    (loss_one, params_one), (loss_two, params_two) = updated
    assert torch.allclose(loss_one, loss_two, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params_one, params_two))


# ------------------------------------------------------------------------------------ NT-Xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2N, P)
    n = z1.shape[0]
    losses = []
    for i in range(2 * n):
        others = [j for j in range(2 * n) if j != i]
        logits = torch.stack([z[i] @ z[j] / temperature for j in others])  # (2N-1,)
        partner = others.index((i + n) % (2 * n))
        losses.append(-torch.log_softmax(logits, dim=0)[partner])
    return torch.stack(losses).mean()


def test_nt_xent_matches_an_explicit_loop_and_ignores_view_order():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    loss = nt_xent(z1, z2, 0.3)
    assert torch.allclose(loss, reference_nt_xent(z1, z2, 0.3), atol=1e-6)
    assert torch.allclose(loss, nt_xent(z2, z1, 0.3), atol=1e-6)
    assert nt_xent(z1, z1 + 1e-3, 0.1) < nt_xent(z1, z2, 0.1)  # matching views: lower loss


# ------------------------------------------------------------------------------------ step 0 = CLIP


def test_step_zero_tower_and_batches_are_clips(tmp_path):
    clip = ClipTask(clip_config(), tmp_path / "clip", DistEnv())
    clip_batch = next(clip._batches(0)[0])
    for objective in ("labels", "simclr"):
        tower = TowerTask(tower_config(objective=objective), tmp_path / objective, DistEnv())
        clip_state, tower_state = clip.model.visual.state_dict(), tower.model.visual.state_dict()
        assert clip_state.keys() == tower_state.keys()
        assert all(torch.equal(clip_state[k], tower_state[k]) for k in clip_state)
        assert not any(p.requires_grad for name, p in tower.model.named_parameters() if not name.startswith("visual."))
        batch = next(tower._batches(0)[0])
        assert batch["pixel_values"].shape == clip_batch["pixel_values"].shape  # same tower inputs per step
        if objective == "labels":
            assert torch.equal(batch["pixel_values"], clip_batch["pixel_values"]) and batch["id"] == clip_batch["id"]
        else:  # 4 records x 2 views: the first view is CLIP's crop, the second another crop of the same record
            first, second = batch["pixel_values"].chunk(2)
            assert torch.equal(first, clip_batch["pixel_values"][:4]) and not torch.equal(first, second)
            assert batch["id"][:4] == batch["id"][4:] == clip_batch["id"][:4]


def test_simclr_streams_two_views_per_record(tmp_path):
    task = TowerTask(tower_config(objective="simclr"), tmp_path, DistEnv())
    records = list(task.source)
    task.source = lambda: iter(records)  # a streamed source
    batches, stream = task._batches(0)
    batch = next(batches)
    assert stream is not None and batch["pixel_values"].shape == (8, 3, 32, 32)
    assert batch["id"][:4] == batch["id"][4:] and not torch.equal(*batch["pixel_values"].chunk(2))


# ------------------------------------------------------------------------------------ runs


def initial_clip_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return model_from_config(architecture_config(ARCH)).state_dict()


@pytest.mark.parametrize("objective", ["labels", "simclr"])
def test_a_run_trains_only_the_tower_and_saves_what_tower_dir_loads(tmp_path, objective):
    result = train_tower(tower_config(objective=objective), tmp_path)
    assert result.steps == 3 and all(math.isfinite(loss) for _, loss in result.losses)
    with (tmp_path / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["loss"]]
    assert len(rows) == 3 and all(row["lr"] for row in rows)
    config = read_tower_config(tmp_path)
    assert config["objective"] == objective and config["train_images"] == 24 and config["train_steps"] == 3
    if objective == "labels":
        assert config["classes"] == len(config["class_names"]) > 0
    encoder = build_encoder(f"tower:{tmp_path}")
    features = encoder(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, EMBED_DIM) and encoder.feature_dim == EMBED_DIM
    trained, initial = load_checkpoint(find_checkpoint(tmp_path))["model"], initial_clip_state()
    text_keys = [k for k in initial if not k.startswith("visual.")]
    assert text_keys and all(torch.equal(trained[k], initial[k]) for k in text_keys)  # text side untouched
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if k.startswith("visual."))


class Interrupt(Exception):
    """Stands in for a kill between steps."""


def stop_at(step: int):
    def on_step(done: int, loss: float) -> None:
        if done == step:
            raise Interrupt
    return on_step


@pytest.mark.parametrize("objective", ["labels", "simclr"])
def test_resume_continues_exactly(tmp_path, objective):
    cfg = tower_config(objective=objective, steps=4, checkpoint_every=2)
    straight = train_tower(cfg, tmp_path / "straight")
    with pytest.raises(Interrupt):
        train_tower(cfg, tmp_path / "resumed", on_step=stop_at(2))
    resumed = train_tower(cfg, tmp_path / "resumed", resume="latest")
    assert resumed.start_step == 2 and [s for s, _ in resumed.losses] == [3, 4]
    assert resumed.losses == straight.losses[2:]
    a, b = load_file(str(tmp_path / "straight" / "tower.safetensors")), load_file(str(tmp_path / "resumed" / "tower.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ddp_worker(rank, world_size, cfg_dict, run_dir):
    train_tower(from_dict(TowerTrainConfig, cfg_dict), run_dir)


@pytest.mark.parametrize("change", [
    {"objective": "labels", "grad_accum_steps": 2},  # 2 ranks x 2 micro-batches x 2 samples
    {"objective": "simclr"},  # 2 ranks x 2 records x 2 views; views gathered without gradient
    {"objective": "simclr", "loss": {"gather_with_grad": True}},
])
def test_two_processes_equal_one_process(tmp_path, change):
    """A micro ViT (no batch norm, whose statistics would be per rank): DDP gives the single-process update."""
    single = tower_config(model={"arch": "vl-micro-vit"}, objective=change["objective"])
    train_tower(single, tmp_path / "one")
    run_processes(_ddp_worker, 2, to_dict(merge(single, change)), str(tmp_path / "two"))
    a, b = load_file(str(tmp_path / "one" / "tower.safetensors")), load_file(str(tmp_path / "two" / "tower.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("overrides, message", [
    ({"objective": "nope"}, "objective must be one of labels, simclr; got 'nope'"),
    ({"objective": "simclr", "batch_size": 7}, "batch_size must be even for objective=simclr"),
    ({"objective": "simclr", "grad_accum_steps": 2}, "grad_accum_steps must be 1 for objective=simclr"),
    ({"model": {"lit": True}}, "model.lit=true cannot train a tower"),
])
def test_bad_configs_are_one_line_user_errors(tmp_path, overrides, message):
    with pytest.raises(UserError) as caught:
        train_tower(tower_config(**overrides), tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
