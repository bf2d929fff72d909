"""`train_clip`: contrastive image-text training of an open_clip CLIP (or a LiT model).

    cfg = load_config(ClipTrainConfig, "clip.yaml", ["optim.lr=1e-3"])
    summary = train_clip(cfg, "runs/clip", resume="latest")

Runs as one process or under `torchrun` (DDP; gloo on CPU, nccl on GPU); `batch_size` is the
global batch, split evenly over ranks and then over `optim.accum_steps` micro-batches, and the
result does not depend on that split (see `loss.py`, `loop_utils.py`, `clip_data.py`).
The run dir gets: config.yaml (the resolved config), checkpoints/ (every `checkpoint_every`
steps, atomic, with model/optimizer/scheduler/RNG/data state; `resume="latest"` continues
exactly), metrics.csv + tensorboard/ (loss, logit scale, lr, samples/s, zero-shot top-1), and
at the end the final weights that `vlbridge.models.clip_loading.load_clip(run_dir)` reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from vlbridge.config import save_config, to_dict
from vlbridge.data.records import SkipCounter
from vlbridge.errors import UserError
from vlbridge.models.clip import DEFAULT_ARCH, architecture_config, model_from_config, openclip_tokenizer, save_openclip_run, train_transform
from vlbridge import checkpoint as ckpt
from vlbridge.training.clip_data import ClipDataConfig, PairDataset, PairMaker, StepSampler, StreamBatches, count_skips, load_source, map_style_batches
from vlbridge.runtime import DistEnv, all_reduce_mean, barrier, cleanup, gather_objects, init_distributed
from vlbridge.training.loop_utils import ZeroShotProbe, contrastive_step
from vlbridge.training.loss import ClipLoss
from vlbridge.training.metrics_log import RunLogger
from vlbridge.training.optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)


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
class ClipOptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = 4e-3  # peak learning rate (high: tiny model, big batch, 200 steps)
    weight_decay: float = 0.1  # AdamW decay on matrices (none on biases, gains, embeddings, logit scale)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.98  # AdamW second-moment decay (CLIP uses 0.98)
    eps: float = 1e-6  # AdamW epsilon (CLIP uses 1e-6)
    warmup_steps: int = 20  # linear warmup from 0
    min_lr_ratio: float = 0.0  # cosine decays to this fraction of lr
    grad_clip_norm: float | None = 1.0  # clip the global gradient norm (None: no clipping)
    accum_steps: int = 1  # micro-batches per step (open_clip feature-cached accumulation)
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
class ClipTrainConfig:
    """Everything `vlbridge train clip` needs; saved as run_dir/config.yaml."""

    model: ClipModelConfig = field(default_factory=ClipModelConfig)  # architecture
    data: ClipDataConfig = field(default_factory=ClipDataConfig)  # training pairs
    loss: ClipLossConfig = field(default_factory=ClipLossConfig)  # contrastive loss options
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)  # optimizer and schedule
    eval: ClipEvalConfig = field(default_factory=ClipEvalConfig)  # periodic zero-shot check
    steps: int = 180  # optimizer steps in total (180 x 512 = 92k pairs: ~5 min on 2 CPU cores, ~80% zero-shot)
    batch_size: int = 512  # global batch: all ranks and micro-batches together (big batches = hard negatives)
    seed: int = 0  # model init, data order, captions and augmentation
    device: str = "auto"  # "auto" (this rank's GPU if any, else CPU), "cpu", "cuda", "cuda:1"...
    log_every: int = 10  # steps between metric rows
    checkpoint_every: int = 100  # steps between checkpoints (0: only the final one)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk


@dataclass
class TrainState:
    """What the loop carries besides the config."""

    model: torch.nn.Module  # unwrapped model
    tokenizer: Callable  # texts -> ids
    spec: dict[str, Any]  # rebuilds the model (saved in checkpoints)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0  # optimizer steps done
    data_state: dict[str, Any] = field(default_factory=dict)  # stream positions (map-style: empty)


def validate(cfg: ClipTrainConfig, world_size: int) -> None:
    """UserError for settings that cannot work, naming the key."""
    per_rank, rest = divmod(cfg.batch_size, world_size * cfg.optim.accum_steps)
    if cfg.optim.accum_steps < 1 or rest or per_rank < 1:
        raise UserError(
            f"batch_size ({cfg.batch_size}) must be a positive multiple of world size ({world_size}) x "
            f"optim.accum_steps ({cfg.optim.accum_steps})"
        )
    if cfg.steps < 1:
        raise UserError(f"steps must be at least 1, got {cfg.steps}")
    if cfg.eval.split == "train":
        raise UserError("eval.split must be a held-out split (val or test), got train")
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


def make_batches(cfg: ClipTrainConfig, state: TrainState, env: DistEnv):
    """Iterator over this rank's batches from state.step on, plus the stream (None if map-style)."""
    transform = train_transform(state.model, cfg.data.aug_scale_min)
    make_pair = PairMaker(transform, state.tokenizer, cfg.seed, cfg.data.cache_side, cfg.data.max_image_pixels)
    source = load_source(cfg.data)
    local_batch = cfg.batch_size // env.world_size
    if isinstance(source, list):
        sampler = StepSampler(state.step, cfg.steps, cfg.batch_size, env.rank, env.world_size)
        return map_style_batches(PairDataset(source, make_pair, cfg.seed), sampler, cfg.data.workers), None
    positions = state.data_state.get("stream_positions")
    if positions and len(positions) != env.world_size:
        raise UserError(f"checkpoint was written by {len(positions)} ranks; resume a streamed run with the same world size")
    stream = StreamBatches(source, make_pair, cfg.data, cfg.seed, local_batch, env.rank, env.world_size,
                           positions[env.rank] if positions else None)
    return iter(stream), stream


def make_probe(cfg: ClipTrainConfig, model: torch.nn.Module, tokenizer: Callable) -> ZeroShotProbe:
    from vlbridge.data import shapes
    from vlbridge.models.clip import eval_transform

    records = shapes.classification_records(cfg.eval.n, split=cfg.eval.split, seed=cfg.eval.seed, image_size=cfg.data.shapes_image_size)
    return ZeroShotProbe([r.image for r in records], [r.label for r in records], shapes.class_names(),
                         cfg.eval.templates, eval_transform(model), tokenizer)


def make_optimizer(model: torch.nn.Module, cfg: ClipOptimConfig, total_steps: int):
    """(AdamW over param_groups, warmup + cosine LambdaLR) as train_clip uses them."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=cfg.fused or None
    )
    return optimizer, warmup_cosine(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)


def new_state(cfg: ClipTrainConfig, env: DistEnv) -> TrainState:
    torch.manual_seed(cfg.seed)
    model, tokenizer, spec = build_model(cfg.model, env.device)
    optimizer, scheduler = make_optimizer(model, cfg.optim, cfg.steps)
    return TrainState(model, tokenizer, spec, optimizer, scheduler)


def restore(state: TrainState, path: Path, env: DistEnv) -> None:
    saved = ckpt.load_checkpoint(path, map_location=env.device)
    missing, unexpected = state.model.load_state_dict(saved["model"], strict=False)
    missing = [k for k in missing if not k.startswith("text_model.")]
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.step, state.data_state = int(saved["step"]), saved.get("data", {})
    ckpt.restore_rng_state(saved["rng"])
    log.info("resumed from %s at step %d", path, state.step)


def save(cfg: ClipTrainConfig, state: TrainState, run_dir: Path, env: DistEnv, stream) -> None:
    positions = gather_objects(stream.state(), env) if stream is not None else None  # collective: every rank
    if env.is_main:
        payload = {
            "model": model_state(state.model), "model_spec": state.spec, "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(), "data": {"stream_positions": positions} if positions else {},
            "config": to_dict(cfg), "world_size": env.world_size,
        }
        ckpt.save_checkpoint(run_dir, state.step, payload, keep_last=cfg.keep_checkpoints)
    barrier(env)


def save_final(state: TrainState, run_dir: Path) -> Path:
    if state.spec["kind"] == "lit":
        from vlbridge.models.lit import save_lit_run

        return save_lit_run(state.model, state.spec, run_dir)
    return save_openclip_run(state.model, state.spec["model_cfg"], run_dir)


def train_clip(
    cfg: ClipTrainConfig,
    run_dir: str | Path,
    resume: str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train; returns a summary (final loss, zero-shot top-1, samples/s, seconds, skipped samples).

    `resume`: "latest", a step number or a checkpoint path; "latest" with no checkpoint starts
    fresh. `on_step(step)` is called after every completed step (tests use it to stop a run).
    """
    env = init_distributed(cfg.device)
    try:
        validate(cfg, env.world_size)
        return _train(cfg, Path(run_dir), resume, on_step, env)
    finally:
        cleanup(env)


def _train(cfg: ClipTrainConfig, run_dir: Path, resume: str | None, on_step, env: DistEnv) -> dict[str, Any]:
    state = new_state(cfg, env)
    checkpoint = ckpt.find_checkpoint(run_dir, resume) if resume else None
    if resume and checkpoint is None:
        if resume != ckpt.LATEST:
            raise UserError(f"no checkpoint {resume!r} in {run_dir / ckpt.CHECKPOINT_DIR}")
        log.info("no checkpoint in %s yet: starting from step 0", run_dir)
    if checkpoint is not None:
        restore(state, checkpoint, env)
    if env.is_main:
        save_config(cfg, run_dir / "config.yaml")
    batches, stream = make_batches(cfg, state, env)
    probe = make_probe(cfg, state.model, state.tokenizer) if env.is_main else None
    wrapped = state.model
    if env.distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=device_ids)
    loss_fn = ClipLoss(cfg.loss.local_loss, cfg.loss.gather_with_grad, env.rank, env.world_size)
    logger = RunLogger(run_dir, env.is_main, resume_step=state.step if checkpoint else None)
    summary = _loop(cfg, state, wrapped, batches, stream, loss_fn, probe, logger, run_dir, env, on_step)
    logger.close()
    return summary


def _loop(cfg, state: TrainState, wrapped, batches, stream, loss_fn, probe, logger, run_dir, env, on_step) -> dict[str, Any]:
    skips = SkipCounter("clip-train")
    summary: dict[str, Any] = {"start_step": state.step}
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train clip", disable=True if not env.is_main else None)
    started, window_seconds, window_steps = time.perf_counter(), 0.0, 0  # window: training time since last log
    while state.step < cfg.steps:
        step_start = time.perf_counter()
        batch = next(batches)
        count_skips(batch, skips)
        loss = contrastive_step(wrapped, batch, loss_fn, state.optimizer, env.device, cfg.optim.accum_steps,
                                cfg.optim.grad_clip_norm, cfg.model.channels_last)
        lr = state.optimizer.param_groups[0]["lr"]
        state.scheduler.step()
        state.step += 1
        window_steps, window_seconds = window_steps + 1, window_seconds + time.perf_counter() - step_start
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            loss_value = float(all_reduce_mean(loss, env))
            rate = window_steps * cfg.batch_size / window_seconds
            metrics = {"loss": loss_value, "logit_scale": float(state.model.logit_scale.detach().exp()), "lr": lr, "samples_per_s": rate}
            logger.log(state.step, metrics)
            bar.set_postfix(loss=f"{loss_value:.3f}", samples_s=f"{rate:.0f}")
            summary.update(loss=loss_value, samples_per_s=rate)
            window_seconds, window_steps = 0.0, 0
        if probe is not None and ((cfg.eval.every and state.step % cfg.eval.every == 0) or state.step == cfg.steps):
            summary["zeroshot_top1"] = probe.accuracy(state.model, env.device)
            logger.log(state.step, {"zeroshot_top1": summary["zeroshot_top1"]})
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            save(cfg, state, run_dir, env, stream)
        if on_step is not None:
            on_step(state.step)
    bar.close()
    if env.is_main:
        save_final(state, run_dir)
        log.info(skips.summary())
    summary.update(steps=state.step, seconds=time.perf_counter() - started, skipped=skips.as_dict(), run_dir=str(run_dir))
    return summary
