"""`train_tower`: one image tower trained with a non-contrastive objective, everything else as CLIP's.

    cfg = load_config(TowerTrainConfig, None, ["objective=labels"])
    result = train_tower(cfg, "runs/tower-labels", resume="latest")
    encoder = build_encoder("tower:runs/tower-labels")

The study's supervision ladder trains ONE backbone, the image tower (`model.visual`) of a CLIP
architecture (default `vl-tiny-rn`), four ways and compares its features:

    random    no training (`random:tower:DIR` or `build_tower`)
    simclr    self-supervised: two augmented views of an image must find each other (NT-Xent)
    labels    supervised: multi-label classification of the category nouns in the captions
    clip      contrastive on captions (`vlbridge.training.clip.train_clip`)

For the rungs to differ ONLY in the supervision, `TowerTask` is a `ClipTask` subclass that
keeps from CLIP training: the model init (`torch.manual_seed(seed)` then the whole CLIP build, so
the tower starts from exactly the weights a CLIP of the same seed starts from), the records
(`load_source(cfg.data)`), the augmentation (the same `PairMaker`, keyed by the same sample
positions), the order (`EpochOrder` / `StepSampler`), AdamW with the same parameter groups,
betas and warmup-cosine schedule, gradient clipping, steps, checkpoints and exact resume. What
differs is the loss and what it trains: `model.visual` plus a small head; the text tower and
the logit scale are frozen (`requires_grad=False`, left out of the optimizer, never run).

- objective "labels": the classes are the category nouns (`objects_text.word_class`, plurals
  singularised) found in the captions of all records, plus the records' `tags`; a record's
  target is the multi-hot vector of the classes in ALL its captions (all zeros if none: still
  a training sample). Head `Linear(embed_dim, C)`, loss `binary_cross_entropy_with_logits`
  (mean over samples and classes). Step s reads exactly CLIP's positions and crops.
- objective "simclr": compute parity with the other rungs. A step of `batch_size` B still
  pushes B images through the tower, but they are B/2 records seen twice: step s reads
  positions [s*B/2, (s+1)*B/2), the first view of position p is the very crop CLIP makes at p
  (key (p, attempt)), the second an independent crop of the same record (key (p, attempt, 1)).
  So per step simclr costs the tower the same forward/backward as labels and CLIP's image side,
  and walks the data half as fast. Head: MLP embed_dim -> embed_dim -> ReLU -> projection_dim;
  loss: NT-Xent over the 2 x B/2 views at `temperature` (under DDP the views of all ranks are
  gathered as in `ClipLoss`, so the negatives are the global batch). `grad_accum_steps` must be 1
  (NT-Xent negatives and batch-norm statistics span the batch).

The run folder gets config.yaml, checkpoints/, metrics.csv (loss, lr, samples/s; samples =
tower inputs = `batch_size` per step for both objectives) and, at the end, the tower
(`models.tower.save_tower`: tower.json + tower.safetensors) that the encoder spec `tower:DIR` reads.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlbridge.data.objects_text import CATEGORY_WORDS, word_class
from vlbridge.data.records import BadImage, ImageTextRecord
from vlbridge.errors import UserError
from vlbridge.models.clip import train_transform
from vlbridge.models.ssl import nt_xent_loss
from vlbridge.models.tower import save_tower
from vlbridge.runtime import DistEnv, all_reduce_mean, autocast, cleanup, init_distributed
from vlbridge.training.clip import ClipTask, ClipTrainConfig, make_optimizer, validate
from vlbridge.training.clip_data import (
    MAX_SUBSTITUTES,
    PairDataset,
    PairMaker,
    StepSampler,
    StreamBatches,
    count_skips,
    load_source,
    map_style_batches,
)
from vlbridge.training.loop import OnStep, TrainResult, run_training
from vlbridge.training.loss import ClipLoss
from vlbridge.training.metrics_log import RunLogger
from vlbridge.training.optim import clip_gradients

log = logging.getLogger(__name__)

OBJECTIVES = ("labels", "simclr")
HEAD_SEED_OFFSET = 7919  # the head is initialised from seed + this, outside the global RNG stream


@dataclass
class TowerTrainConfig(ClipTrainConfig):
    """`ClipTrainConfig` (same data, augmentation, init, optimizer, steps) plus the tower's objective."""

    objective: str = "labels"  # "labels" (multi-label category nouns of the captions) or "simclr" (two views, NT-Xent)
    temperature: float = 0.1  # SimCLR NT-Xent softmax temperature
    projection_dim: int = 64  # SimCLR MLP head output size


def validate_tower(cfg: TowerTrainConfig, world_size: int) -> None:
    """UserError for settings that cannot work, naming the key (CLIP's checks included)."""
    if cfg.objective not in OBJECTIVES:
        raise UserError(f"objective must be one of {', '.join(OBJECTIVES)}; got {cfg.objective!r}")
    if cfg.model.lit:
        raise UserError("model.lit=true cannot train a tower: the tower objectives use no text encoder; set model.lit=false")
    if cfg.objective == "simclr":
        if cfg.batch_size % 2:
            raise UserError(f"batch_size must be even for objective=simclr (B/2 images x 2 views), got {cfg.batch_size}")
        if (cfg.batch_size // 2) % world_size:
            raise UserError(f"batch_size/2 ({cfg.batch_size // 2} images) must be a multiple of world size ({world_size}) "
                            "for objective=simclr")
        if cfg.grad_accum_steps != 1:
            raise UserError("grad_accum_steps must be 1 for objective=simclr: NT-Xent negatives and batch-norm statistics "
                            f"span the whole batch; got {cfg.grad_accum_steps}")
        if cfg.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {cfg.temperature}")
        if cfg.projection_dim < 1:
            raise UserError(f"projection_dim must be >= 1, got {cfg.projection_dim}")
    validate(cfg, world_size)


# ------------------------------------------------------------------------------------ labels


def category_noun(word: str) -> str | None:
    """The singular category noun a caption word names ("dogs" -> "dog", "bus" -> "bus"), else None."""
    word = word.strip(".,:;!?").lower()
    if word_class(word) != "category":
        return None
    return word[:-1] if word.endswith("s") and word[:-1] in CATEGORY_WORDS else word


def record_classes(record: ImageTextRecord) -> set[str]:
    """Category nouns in any of the record's captions, plus its tags (singularised when they are nouns)."""
    nouns = {category_noun(word) for caption in record.captions for word in re.findall(r"[A-Za-z]+", caption)}
    tags = {category_noun(tag) or tag.strip().lower() for tag in record.tags}
    return {name for name in nouns | tags if name}


def label_classes(records: Sequence[ImageTextRecord]) -> list[str]:
    """The sorted class list: every category noun / tag of any record."""
    return sorted(set().union(*(record_classes(r) for r in records)))


def label_targets(records: Sequence[ImageTextRecord], classes: Sequence[str]) -> dict[str, torch.Tensor]:
    """record id -> multi-hot (C,) float target (records sharing an id: the union of their classes)."""
    index = {name: i for i, name in enumerate(classes)}
    targets: dict[str, torch.Tensor] = {}
    for record in records:
        target = targets.setdefault(record.id, torch.zeros(len(classes)))  # (C,)
        for name in record_classes(record):
            target[index[name]] = 1.0
    return targets


# ------------------------------------------------------------------------------------ simclr


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent on (N, P) projections of two views (row i of z1 and z2: the same image).

    Projections are L2-normalised here; each of the 2N views must pick its partner among the
    other 2N-1 by softmax(cosine / temperature); mean over the 2N anchors.
    """
    return nt_xent_loss(F.normalize(z1, dim=-1), F.normalize(z2, dim=-1), temperature)


class TwoViewDataset(PairDataset):
    """`PairDataset` whose item holds two crops of each position's record: all first views, then all second views."""

    def views(self, position: int, skipped: list) -> tuple[tuple, tuple]:
        """Two (pixels, token ids, record id) samples of the record at `position` (or its substitute)."""
        index = self.order(position)
        for attempt in range(MAX_SUBSTITUTES):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                first = (*self.make_pair(record, (position, attempt)), record.id)  # CLIP's own crop of `position`
                second = (*self.make_pair(record, (position, attempt, 1)), record.id)  # an independent crop
                return first, second
            except (BadImage, ValueError, OSError) as err:
                skipped.append((str(err).splitlines()[0][:120], record.id))
        raise UserError(f"{MAX_SUBSTITUTES} unusable records in a row near position {position}; check the dataset")

    def __getitem__(self, positions: list[int]) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        pairs = [self.views(p, skipped) for p in positions]
        return self.make_pair.collate([a for a, _ in pairs] + [b for _, b in pairs], skipped)  # pixel_values (2n, 3, H, W)


class TwoViewStream(StreamBatches):
    """`StreamBatches` with two crops per streamed record (`local_batch` records -> 2 x local_batch views)."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        records = self.mine()
        while True:
            firsts, seconds, skipped = [], [], []
            while len(firsts) < self.local_batch:
                record = next(records)
                key = (self.epoch, self.position)
                try:
                    first = (*self.make_pair(record, key), record.id)
                    second = (*self.make_pair(record, (*key, 1)), record.id)
                except (BadImage, ValueError, OSError) as err:
                    skipped.append((str(err).splitlines()[0][:120], record.id))
                    continue
                firsts.append(first)
                seconds.append(second)
            yield self.make_pair.collate(firsts + seconds, skipped)  # pixel_values (2n, 3, H, W)


# ------------------------------------------------------------------------------------ model


class TowerWithHead(nn.Module):
    """The CLIP's image tower (shared, not copied) followed by the objective's head."""

    def __init__(self, visual: nn.Module, head: nn.Module):
        super().__init__()
        self.visual = visual  # images (n, 3, H, W) -> (n, E)
        self.head = head  # (n, E) -> (n, C) logits or (n, P) projections

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(images))


def make_head(objective: str, embed_dim: int, num_classes: int, projection_dim: int, seed: int) -> nn.Module:
    """Linear(E, C) for labels, MLP E -> E -> ReLU -> P for simclr; initialised from its own seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + HEAD_SEED_OFFSET)
        if objective == "labels":
            return nn.Linear(embed_dim, num_classes)
        return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, projection_dim))


def freeze_text_side(model: nn.Module) -> None:
    """No gradient for anything but `model.visual` (text tower, logit scale)."""
    for name, param in model.named_parameters():
        if not name.startswith("visual."):
            param.requires_grad_(False)


# ------------------------------------------------------------------------------------ steps


def _images(batch: dict[str, Any], device: torch.device, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return batch["pixel_values"].to(device, non_blocking=True).contiguous(memory_format=memory_format)  # (n, 3, H, W)


def labels_step(net: nn.Module, batch: dict[str, Any], targets: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                device: torch.device, accum_steps: int = 1, grad_clip_norm: float | None = None,
                channels_last: bool = False) -> torch.Tensor:
    """One update with the mean multi-label BCE over this rank's batch (micro-batches: same mean); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    images = _images(batch, device, channels_last)  # (n, 3, H, W)
    target = torch.stack([targets[i] for i in batch["id"]]).to(device)  # (n, C)
    total = torch.zeros((), device=device)
    chunks = list(zip(images.chunk(accum_steps), target.chunk(accum_steps)))
    for j, (pixels, wanted) in enumerate(chunks):
        syncs = j == len(chunks) - 1 or not hasattr(net, "no_sync")
        with (contextlib.nullcontext() if syncs else net.no_sync()):
            with autocast(device):
                logits = net(pixels).float()  # (m, C)
            loss = F.binary_cross_entropy_with_logits(logits, wanted) / len(chunks)  # equal chunks: mean of means
            loss.backward()
        total += loss.detach()
    clip_gradients((p for p in net.parameters() if p.requires_grad), grad_clip_norm)
    optimizer.step()
    return total


def simclr_step(net: nn.Module, batch: dict[str, Any], gatherer: ClipLoss, temperature: float,
                optimizer: torch.optim.Optimizer, device: torch.device, grad_clip_norm: float | None = None,
                channels_last: bool = False) -> torch.Tensor:
    """One update with NT-Xent over the (global) batch of view pairs; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    views = _images(batch, device, channels_last)  # (2n, 3, H, W): n first views, then the n second views
    with autocast(device):
        projections = net(views).float()  # (2n, P)
    z1, z2 = projections.chunk(2)  # (n, P) each
    loss = nt_xent(gatherer.gather(z1), gatherer.gather(z2), temperature)  # over (W*n, P) pairs
    (loss * gatherer.grad_scale).backward()  # DDP averages: grad_scale makes it the global-batch gradient
    clip_gradients((p for p in net.parameters() if p.requires_grad), grad_clip_norm)
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------------------ task


class TowerTask(ClipTask):
    """CLIP training with the tower's objective: CLIP's init, data, optimizer and resume, another loss."""

    label = "train tower"

    def __init__(self, cfg: TowerTrainConfig, run_dir: Path, env: DistEnv):
        super().__init__(cfg, run_dir, env)  # seeded full CLIP build (self.model), as train_clip's
        self.source = load_source(cfg.data)  # loaded once: classes, targets and batches
        self.train_images = len(self.source) if isinstance(self.source, list) else None
        self.class_names: list[str] = []
        self.targets: dict[str, torch.Tensor] = {}
        if cfg.objective == "labels":
            self.class_names, self.targets = self._labels()
        embed_dim = self.spec["model_cfg"]["embed_dim"]
        self.head = make_head(cfg.objective, embed_dim, len(self.class_names), cfg.projection_dim, cfg.seed).to(env.device)
        freeze_text_side(self.model)
        self.net = TowerWithHead(self.model.visual, self.head).train()
        self.optimizer, self.scheduler = make_optimizer(self.net, cfg.optim, cfg.steps)  # CLIP's groups, tower + head only

    def _labels(self) -> tuple[list[str], dict[str, torch.Tensor]]:
        if not isinstance(self.source, list):
            raise UserError("labels objective needs a map-style source (a finite dataset spec), not a stream")
        classes = label_classes(self.source)
        if not classes:
            raise UserError("labels objective: no category noun or tag in any training caption; use objective=simclr")
        log.info("labels objective: %d classes over %d records", len(classes), len(self.source))
        return classes, label_targets(self.source, classes)

    def _batches(self, start_step: int):
        """CLIP's pipeline over the loaded source; simclr reads B/2 positions a step, two crops each."""
        cfg, env = self.cfg, self.env
        transform = train_transform(self.model, cfg.data.aug_scale_min)
        make_pair = PairMaker(transform, self.tokenizer, cfg.seed, cfg.data.cache_side, cfg.data.max_image_pixels)
        images_per_step = cfg.batch_size // 2 if cfg.objective == "simclr" else cfg.batch_size
        if isinstance(self.source, list):
            dataset_class = TwoViewDataset if cfg.objective == "simclr" else PairDataset
            sampler = StepSampler(start_step, cfg.steps, images_per_step, env.rank, env.world_size)
            return map_style_batches(dataset_class(self.source, make_pair, cfg.seed), sampler, cfg.data.workers), None
        positions = self.data_state.get("stream_positions")
        if positions and len(positions) != env.world_size:
            raise UserError(f"checkpoint was written by {len(positions)} ranks; resume a streamed run with the same world size")
        stream = TwoViewStream(self.source, make_pair, cfg.data, cfg.seed, images_per_step // env.world_size, env.rank,
                               env.world_size, positions[env.rank] if positions else None)
        return iter(stream), stream

    def begin(self, start_step: int) -> None:
        cfg, env = self.cfg, self.env
        self.batches, self.stream = self._batches(start_step)
        self.probe = None  # no zero-shot probe: the text side is not trained
        self.wrapped = self.net
        if env.distributed:
            device_ids = [env.device.index] if env.device.type == "cuda" else None
            self.wrapped = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=device_ids)
        self.loss_fn = ClipLoss(False, cfg.loss.gather_with_grad, env.rank, env.world_size)  # simclr's cross-rank gather

    def step(self, step: int) -> torch.Tensor:
        cfg, device = self.cfg, self.env.device
        batch = next(self.batches)
        count_skips(batch, self.skips)
        if cfg.objective == "labels":
            loss = labels_step(self.wrapped, batch, self.targets, self.optimizer, device, cfg.grad_accum_steps,
                               cfg.optim.grad_clip_norm, cfg.model.channels_last)
        else:
            loss = simclr_step(self.wrapped, batch, self.loss_fn, cfg.temperature, self.optimizer, device,
                               cfg.optim.grad_clip_norm, cfg.model.channels_last)
        self.scheduler.step()
        return all_reduce_mean(loss, self.env)

    def log_metrics(self) -> dict[str, float]:
        return {}

    def after_step(self, done: int, logger: RunLogger) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "head": self.head.state_dict(), "objective": self.cfg.objective}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if "head" not in saved:
            raise UserError("checkpoint is not a tower run's (no head weights); resume it with `train clip`")
        super().load_state_dict(saved)  # CLIP weights, optimizer, schedule, data position
        self.head.load_state_dict(saved["head"])

    def finish(self, result: TrainResult) -> None:
        cfg = self.cfg
        labels = {"classes": len(self.class_names), "class_names": self.class_names} if cfg.objective == "labels" else {}
        save_tower(self.model.visual, self.spec["model_cfg"], self.run_dir, objective=cfg.objective, arch=cfg.model.arch,
                   seed=cfg.seed, train_images=self.train_images, train_steps=cfg.steps, **labels)
        log.info(self.skips.summary())


def train_tower(cfg: TowerTrainConfig, run_dir: str | Path, resume: str | None = None,
                on_step: OnStep | None = None) -> TrainResult:
    """Train the image tower with `cfg.objective`; save it to `run_dir` for `tower:RUN_DIR`.

    `resume`: "latest", a step number or a checkpoint path, as in `train_clip`; `on_step(step,
    loss)` is called after every completed step.
    """
    env = init_distributed(cfg.device)
    try:
        validate_tower(cfg, env.world_size)
        task = TowerTask(cfg, Path(run_dir), env)
        return run_training(task, cfg, run_dir, env, resume, on_step)
    finally:
        cleanup(env)
