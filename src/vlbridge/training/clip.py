"""`train_clip`: contrastive image-text training of an open_clip CLIP (or a LiT model).

    cfg = load_config(ClipTrainConfig, "clip.yaml", ["optim.lr=1e-3"])
    result = train_clip(cfg, "runs/clip", resume="latest")

Runs as one process or under `torchrun` (DDP; gloo on CPU, nccl on GPU); `batch_size` is the
global batch, split evenly over ranks and then over `grad_accum_steps` micro-batches, and the
result does not depend on that split (see `loss.py`, `contrastive_step` below, `clip_data.py`).
The loop itself (resume, logging, checkpoints) is `training/loop.py`. The run dir gets:
config.yaml (the resolved config), checkpoints/ (every `checkpoint_every` steps, atomic, with
model/optimizer/scheduler/RNG/data state; `resume="latest"` continues exactly), metrics.csv +
tensorboard/ (loss, logit scale, lr, samples/s, zero-shot top-1), and at the end the final
weights that `vlbridge.models.clip_loading.load_clip(run_dir)` reads.

`contrastive_step` is the whole update for one global batch: forward, `ClipLoss`, backward, clipping,
AdamW step and the logit-scale clamp. Gradient accumulation follows open_clip: the features of
every micro-batch are first computed without gradient, then each micro-batch is run again with
gradient and scored against the cached features of the others, so the update equals the one of
a single big batch (same contrastive negatives), not a sum of small-batch losses.
`ZeroShotProbe` is the periodic evaluation during training: held-out shapes-world images,
class names x prompt templates -> averaged text embeddings -> top-1 accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from vlbridge.data.records import SkipCounter
from vlbridge.errors import UserError
from vlbridge.models.clip import DEFAULT_ARCH, architecture_config, model_from_config, openclip_tokenizer, save_openclip_run, train_transform
from vlbridge.runtime import DistEnv, all_reduce_mean, autocast, cleanup, gather_objects, init_distributed, unwrap_ddp
from vlbridge.training.clip_data import ClipDataConfig, PairDataset, PairMaker, StepSampler, StreamBatches, count_skips, load_source, map_style_batches
from vlbridge.training.loop import OnStep, TrainConfig, TrainResult, TrainTask, check_train_config, run_training
from vlbridge.training.loss import ClipLoss, scale_gradient
from vlbridge.training.metrics_log import RunLogger
from vlbridge.training.optim import OptimConfig, adamw, clip_gradients, param_groups, warmup_cosine

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the learned temperature at 100


@dataclass
class ClipModelConfig:
    """Which CLIP to train."""

    arch: str = DEFAULT_ARCH  # open_clip architecture (RN50, ViT-B-32, ...) or a vlbridge tiny config
    image_size: int | None = None  # override the architecture's input size (None: keep it)
    lit: bool = False  # LiT: train the image tower against a frozen pretrained sentence encoder
    lit_text_dir: str | None = None  # LiT text encoder dir (None: the embedded all-MiniLM-L6-v2)
    lit_context_length: int = 32  # tokens per caption for the LiT text encoder
    grad_checkpointing: bool = False  # recompute activations in backward (open_clip set_grad_checkpointing)
    channels_last: bool = True  # NHWC weights and images: ~1.35x faster convolutions on CPU (oneDNN)


@dataclass
class ClipLossConfig:
    """How the contrastive loss is spread over ranks (see training/loss.py)."""

    local_loss: bool = False  # each rank scores only its rows against all columns (needs gather_with_grad)
    gather_with_grad: bool = False  # all_gather with gradient (else gather without, local rows put back)


@dataclass
class ClipOptimConfig(OptimConfig):
    """AdamW with linear warmup and cosine decay (CLIP's betas and epsilon)."""

    lr: float = 4e-3  # peak learning rate (high: tiny model, big batch, 200 steps)
    weight_decay: float = 0.1  # AdamW decay on matrices (none on biases, gains, embeddings, logit scale)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.98  # AdamW second-moment decay (CLIP uses 0.98)
    eps: float = 1e-6  # AdamW epsilon (CLIP uses 1e-6)
    warmup_steps: int = 20  # linear warmup from 0
    min_lr_ratio: float = 0.0  # cosine decays to this fraction of lr
    grad_clip_norm: float | None = 1.0  # clip the global gradient norm (None: no clipping)
    fused: bool = True  # torch's fused AdamW kernel (CPU and GPU; ~5x faster step than the per-tensor loop)


@dataclass
class ClipEvalConfig:
    """Zero-shot check on held-out single-object shapes-world images during training."""

    every: int = 100  # steps between evaluations (0: only at the end)
    n: int = 520  # images (10 per seen colour-shape class)
    split: str = "val"  # shapes-world split the images come from (never train)
    seed: int = 1  # shapes-world seed of the evaluation images
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])  # prompts, "{}" = class name


@dataclass
class ClipTrainConfig(TrainConfig):
    """Everything `vlbridge train clip` needs; saved as run_dir/config.yaml."""

    RENAMED_KEYS: ClassVar[dict] = {"optim.accum_steps": "grad_accum_steps"}  # old name -> new name

    steps: int = 180  # optimizer steps in total (180 x 512 = 92k pairs: ~5 min on 2 CPU cores, ~80% zero-shot)
    batch_size: int = 512  # global batch: all ranks and micro-batches together (big batches = hard negatives)
    grad_accum_steps: int = 1  # micro-batches per step (open_clip feature-cached accumulation: same update)
    seed: int = 0  # model init, data order, captions and augmentation
    device: str = "auto"  # "auto" (this rank's GPU if any, else CPU), "cpu", "cuda", "cuda:1"...
    log_every: int = 10  # steps between metric rows
    checkpoint_every: int = 100  # steps between checkpoints (0: only the final one)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0: all)
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)  # optimizer and schedule
    model: ClipModelConfig = field(default_factory=ClipModelConfig)  # architecture
    data: ClipDataConfig = field(default_factory=ClipDataConfig)  # training pairs
    loss: ClipLossConfig = field(default_factory=ClipLossConfig)  # contrastive loss options
    eval: ClipEvalConfig = field(default_factory=ClipEvalConfig)  # periodic zero-shot check


@dataclass
class ClipTrainResult(TrainResult):
    """`TrainResult` plus what only CLIP training measures."""

    zeroshot_top1: float | None = None  # zero-shot top-1 on the held-out probe at the last evaluation
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable training samples by reason


def validate(cfg: ClipTrainConfig, world_size: int) -> None:
    """UserError for settings that cannot work, naming the key."""
    check_train_config(cfg)
    per_rank, rest = divmod(cfg.batch_size, world_size * cfg.grad_accum_steps)
    if rest or per_rank < 1:
        raise UserError(
            f"batch_size ({cfg.batch_size}) must be a positive multiple of world size ({world_size}) x "
            f"grad_accum_steps ({cfg.grad_accum_steps})"
        )
    if cfg.eval.split == "train":
        raise UserError("eval.split must be a held-out split (val or test), got train")
    if isinstance(cfg.data.workers, bool) or not isinstance(cfg.data.workers, int) or cfg.data.workers < 0:
        raise UserError(f"data.workers must be a whole number >= 0 (0: load in the training process), got {cfg.data.workers!r}")
    if not 0.0 < cfg.data.aug_scale_min <= 1.0:
        raise UserError(f"data.aug_scale_min must be in (0, 1], got {cfg.data.aug_scale_min}")


def build_model(cfg: ClipModelConfig, device: torch.device) -> tuple[torch.nn.Module, Callable, dict[str, Any]]:
    """(model in train mode, tokenizer, spec) for a fresh run."""
    if cfg.lit:
        from vlbridge.models.lit import build_lit

        model, tokenizer, spec = build_lit(cfg.arch, cfg.lit_text_dir, cfg.image_size, cfg.lit_context_length)
    else:
        model_cfg = architecture_config(cfg.arch, cfg.image_size)
        model = model_from_config(model_cfg)
        model.output_dict = True
        tokenizer, spec = openclip_tokenizer(model_cfg), {"kind": "open_clip", "arch": cfg.arch, "model_cfg": model_cfg}
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).train(), tokenizer, spec


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights to checkpoint (LiT leaves out its frozen text encoder)."""
    return model.trainable_state_dict() if hasattr(model, "trainable_state_dict") else model.state_dict()


def make_optimizer(model: torch.nn.Module, cfg: ClipOptimConfig, total_steps: int):
    """(AdamW over param_groups, warmup + cosine LambdaLR) as train_clip uses them."""
    optimizer = adamw(param_groups(model, cfg.weight_decay), cfg, fused=cfg.fused)
    return optimizer, warmup_cosine(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)


def make_probe(cfg: ClipTrainConfig, model: torch.nn.Module, tokenizer: Callable) -> "ZeroShotProbe":
    from vlbridge.data import shapes
    from vlbridge.models.clip import eval_transform

    records = shapes.classification_records(cfg.eval.n, split=cfg.eval.split, seed=cfg.eval.seed, image_size=cfg.data.shapes_image_size)
    return ZeroShotProbe([r.image for r in records], [r.label for r in records], shapes.class_names(),
                         cfg.eval.templates, eval_transform(model), tokenizer)


class ClipTask(TrainTask):
    """CLIP training as the shared loop drives it."""

    label = "train clip"
    resume_free_keys = ("grad_accum_steps", "data.workers", "eval.", "model.grad_checkpointing")

    def __init__(self, cfg: ClipTrainConfig, run_dir: Path, env: DistEnv):
        torch.manual_seed(cfg.seed)
        self.cfg, self.run_dir, self.env = cfg, run_dir, env
        self.model, self.tokenizer, self.spec = build_model(cfg.model, env.device)  # unwrapped model
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg.optim, cfg.steps)
        self.total_steps = cfg.steps
        self.data_state: dict[str, Any] = {}  # stream positions (map-style: empty)
        self.skips = SkipCounter("clip-train")
        self.zeroshot_top1: float | None = None

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        missing, unexpected = self.model.load_state_dict(saved["model"], strict=False)
        missing = [k for k in missing if not k.startswith("text_model.")]
        if missing or unexpected:
            raise UserError(f"checkpoint does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.data_state = saved.get("data", {})

    def begin(self, start_step: int) -> None:
        cfg, env = self.cfg, self.env
        self.batches, self.stream = self._batches(start_step)
        self.probe = make_probe(cfg, self.model, self.tokenizer) if env.is_main else None
        self.wrapped = self.model
        if env.distributed:
            device_ids = [env.device.index] if env.device.type == "cuda" else None
            self.wrapped = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.loss_fn = ClipLoss(cfg.loss.local_loss, cfg.loss.gather_with_grad, env.rank, env.world_size)

    def _batches(self, start_step: int):
        """Iterator over this rank's batches from `start_step` on, plus the stream (None if map-style)."""
        cfg, env = self.cfg, self.env
        transform = train_transform(self.model, cfg.data.aug_scale_min)
        make_pair = PairMaker(transform, self.tokenizer, cfg.seed, cfg.data.cache_side, cfg.data.max_image_pixels)
        source = load_source(cfg.data)
        if isinstance(source, list):
            sampler = StepSampler(start_step, cfg.steps, cfg.batch_size, env.rank, env.world_size)
            return map_style_batches(PairDataset(source, make_pair, cfg.seed), sampler, cfg.data.workers), None
        positions = self.data_state.get("stream_positions")
        if positions and len(positions) != env.world_size:
            raise UserError(f"checkpoint was written by {len(positions)} ranks; resume a streamed run with the same world size")
        stream = StreamBatches(source, make_pair, cfg.data, cfg.seed, cfg.batch_size // env.world_size, env.rank,
                               env.world_size, positions[env.rank] if positions else None)
        return iter(stream), stream

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, step: int) -> torch.Tensor:
        batch = next(self.batches)
        count_skips(batch, self.skips)
        loss = contrastive_step(self.wrapped, batch, self.loss_fn, self.optimizer, self.env.device, self.cfg.grad_accum_steps,
                         self.cfg.optim.grad_clip_norm, self.cfg.model.channels_last)
        self.scheduler.step()
        return all_reduce_mean(loss, self.env)

    def log_metrics(self) -> dict[str, float]:
        return {"logit_scale": float(self.model.logit_scale.detach().exp())}

    def after_step(self, done: int, logger: RunLogger) -> None:
        every = self.cfg.eval.every
        if self.probe is not None and ((every and done % every == 0) or done == self.total_steps):
            self.zeroshot_top1 = self.probe.accuracy(self.model, self.env.device)
            logger.log(done, {"zeroshot_top1": self.zeroshot_top1})

    def state_dict(self) -> dict[str, Any]:
        positions = gather_objects(self.stream.state(), self.env) if self.stream is not None else None  # collective
        return {
            "model": model_state(self.model), "model_spec": self.spec, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "data": {"stream_positions": positions} if positions else {},
            "world_size": self.env.world_size,
        }

    def finish(self, result: TrainResult) -> None:
        if self.spec["kind"] == "lit":
            from vlbridge.models.lit import save_lit_run

            save_lit_run(self.model, self.spec, self.run_dir)
        else:
            save_openclip_run(self.model, self.spec["model_cfg"], self.run_dir)
        log.info(self.skips.summary())


def train_clip(cfg: ClipTrainConfig, run_dir: str | Path, resume: str | None = None,
               on_step: OnStep | None = None) -> ClipTrainResult:
    """Train; returns the shared `TrainResult` plus the last zero-shot top-1 and the skipped samples.

    `resume`: "latest", a step number or a checkpoint path; "latest" with no checkpoint starts
    fresh. `on_step(step, loss)` is called after every completed step (tests use it to stop a run).
    """
    env = init_distributed(cfg.device)
    try:
        validate(cfg, env.world_size)
        task = ClipTask(cfg, Path(run_dir), env)
        result = run_training(task, cfg, run_dir, env, resume, on_step)
        return ClipTrainResult.extend(result, zeroshot_top1=task.zeroshot_top1, skipped=task.skips.as_dict())
    finally:
        cleanup(env)


# ------------------------------------------------------------------------------------ one step


def _features(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(images, texts)
    if isinstance(out, dict):
        return out
    image_features, text_features, logit_scale = out[:3]
    return {"image_features": image_features, "text_features": text_features, "logit_scale": logit_scale}


def _backward_accumulated(
    model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, loss_fn: ClipLoss, accum_steps: int, device
) -> torch.Tensor:
    """open_clip-style accumulation over `accum_steps` micro-batches; returns the loss."""
    image_chunks, text_chunks = images.chunk(accum_steps), texts.chunk(accum_steps)
    with torch.no_grad(), autocast(device):
        cached = [_features(model, i, t) for i, t in zip(image_chunks, text_chunks)]
    for j in range(accum_steps):
        syncs = j == accum_steps - 1 or not hasattr(model, "no_sync")
        with (contextlib.nullcontext() if syncs else model.no_sync()):
            with autocast(device):
                live = _features(model, image_chunks[j], text_chunks[j])
                image_features = torch.cat([c["image_features"] for c in cached[:j]] + [live["image_features"]] + [c["image_features"] for c in cached[j + 1 :]])  # (n, E)
                text_features = torch.cat([c["text_features"] for c in cached[:j]] + [live["text_features"]] + [c["text_features"] for c in cached[j + 1 :]])  # (n, E)
                # every pass sees the whole temperature: 1/accum of its gradient each
                logit_scale = scale_gradient(live["logit_scale"], 1.0 / accum_steps)
                loss = loss_fn(image_features, text_features, logit_scale)
            (loss * loss_fn.grad_scale).backward()
    return loss


def contrastive_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    loss_fn: ClipLoss,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    accum_steps: int = 1,
    grad_clip_norm: float | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """One optimizer update on this rank's share of a global batch; returns the (local) loss."""
    optimizer.zero_grad(set_to_none=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = batch["pixel_values"].to(device, non_blocking=True).contiguous(memory_format=memory_format)  # (n, 3, H, W)
    texts = batch["input_ids"].to(device, non_blocking=True)  # (n, L)
    if accum_steps == 1:
        with autocast(device):
            out = _features(model, images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        (loss * loss_fn.grad_scale).backward()
    else:
        loss = _backward_accumulated(model, images, texts, loss_fn, accum_steps, device)
    clip_gradients((p for p in model.parameters() if p.requires_grad), grad_clip_norm)
    optimizer.step()
    with torch.no_grad():
        unwrap_ddp(model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.detach()


class ZeroShotProbe:
    """Top-1 zero-shot accuracy of a CLIP on fixed, pre-processed labelled images."""

    def __init__(self, images: Sequence, labels: Sequence[str], class_names: Sequence[str], templates: Sequence[str],
                 preprocess: Callable, tokenizer: Callable):
        self.class_names = list(class_names)  # the C candidate classes
        self.pixel_values = torch.stack([preprocess(im) for im in images])  # (N, 3, H, W)
        self.targets = torch.tensor([self.class_names.index(label) for label in labels])  # (N,)
        prompts = [template.replace("{}", name) for name in self.class_names for template in templates]
        self.token_ids = tokenizer(prompts).long()  # (C*T, L)
        self.num_templates = len(templates)  # T

    @torch.no_grad()
    def accuracy(self, model: torch.nn.Module, device: torch.device, batch_size: int = 256) -> float:
        model = unwrap_ddp(model)
        was_training = model.training
        model.eval()
        try:
            with autocast(device):
                text = F.normalize(model.encode_text(self.token_ids.to(device)).float(), dim=-1)  # (C*T, E)
                classes = F.normalize(text.view(len(self.class_names), self.num_templates, -1).mean(1), dim=-1)  # (C, E)
                correct = 0
                for start in range(0, len(self.targets), batch_size):
                    pixels = self.pixel_values[start : start + batch_size].to(device)  # (b, 3, H, W)
                    image = F.normalize(model.encode_image(pixels).float(), dim=-1)  # (b, E)
                    predicted = (image @ classes.T).argmax(dim=-1).cpu()  # (b,)
                    correct += int((predicted == self.targets[start : start + batch_size]).sum())
        finally:
            model.train(was_training)
        return correct / max(1, len(self.targets))
