"""LiMBeR training: fit the linear projector (optionally also the image encoder) on image-caption pairs.

    result = train_limber(LimberTrainConfig(encoder="timm:nf_resnet50@w.safetensors"), out_dir="runs/limber")

What a step does (the LiMBeR recipe): image features -> projector -> k prefix vectors, then
the frozen LM reads [prefix ; caption tokens + EOS] and the loss is the cross-entropy on the
caption tokens and EOS (labels -100 on the prefix and padding; `Limber.training_inputs`).
AdamW (paper: lr 8e-4, betas 0.9/0.95, no weight decay), linear warmup then cosine decay,
gradient clipping at 1.0, bf16 autocast on GPU and fp32 on CPU.

- Features come from the `FeatureStore` (the encoder runs once per image, ever); with
  `tune_encoder` the encoder is unfrozen instead, runs on pixels every step and gets its own
  learning rate (the paper's "NFRN50 Tuned" / "BEIT FT." rows). A tuned encoder stays in eval
  mode (BatchNorm statistics frozen, no dropout) while its weights train.
- Data order and caption choice are a pure function of (seed, step) (`limber_data.CaptionBatcher`),
  and the dropout RNG is re-seeded from (seed, step, rank) every step, so `resume="latest"`
  reproduces an uninterrupted run exactly.
- Under torchrun the trainable module (projector [+ encoder]) is wrapped in DDP; each rank
  takes its slice of the global batch. The loss is the token-mean over the *global* batch
  (each rank scales its token-sum by world_size / global token count before DDP averages the
  gradients), so W processes compute the same update as one process on the same batch.
- `grad_accum_steps` = A splits each rank's slice into A micro-batches, each run forward and
  backward in turn (DDP syncs only on the last), with every token-sum scaled by the same
  global token count: the same update as one unsplit step, with 1/A of the activation memory
  (dropout masks are drawn per micro-batch, so with dropout > 0 only their distribution matches).

Run directory:
    config.yaml                resolved LimberTrainConfig
    checkpoints/step-*.pt      resume state (projector [+ encoder], optimizer, schedule, RNG)
    model/                     `Limber.save` output (projector safetensors + LimberConfig),
                               plus encoder.safetensors when the encoder was tuned
    metrics.csv, tensorboard/    step, loss, learning rate (RunLogger)
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vlbridge.config import save_config, to_dict
from vlbridge.errors import UserError
from vlbridge.models.limber import TUNED_ENCODER_FILE
from vlbridge.training import limber_data
from vlbridge.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from vlbridge.runtime import DistEnv, all_reduce_sum, autocast, barrier, init_distributed
from vlbridge.training.metrics_log import RunLogger
from vlbridge.training.optim import param_groups, warmup_cosine
from vlbridge.training.projector_init import init_projector

log = logging.getLogger(__name__)

RESUME_FREE_KEYS = (  # config keys that may change when a run is resumed (they do not change the result)
    "log_every", "checkpoint_every", "keep_last", "device", "data.feature_cache", "data.extract_batch_size",
    "grad_accum_steps",
)


@dataclass
class LimberDataConfig:
    """Where the image-caption pairs come from."""

    dataset: str = "shapes"  # "shapes", "twemoji" or a vlbridge.data.formats spec
    split: str = "train"  # split to train on
    n: int = 2000  # shapes: images generated; others: at most this many records (0 = all)
    seed: int = 0  # shapes-world seed (which images)
    image_size: int = 64  # shapes-world image side in pixels
    max_caption_tokens: int = 32  # captions are truncated to this many tokens (before EOS)
    feature_cache: str = ""  # FeatureStore folder; "" = <VLBRIDGE_CACHE>/features
    extract_batch_size: int = 64  # images per encoder call when extracting features


@dataclass
class LimberOptimConfig:
    """AdamW + warmup/cosine schedule (LiMBeR paper values by default)."""

    lr: float = 8e-4  # projector peak learning rate (paper)
    beta1: float = 0.9  # AdamW beta1 (paper)
    beta2: float = 0.95  # AdamW beta2 (paper)
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.0  # paper: none
    warmup_steps: int = 50  # linear warmup from 0
    min_lr_ratio: float = 0.0  # cosine decays to this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm (paper); 0 disables
    encoder_lr: float = 1e-5  # peak learning rate of the encoder when tune_encoder is set


@dataclass
class LimberTrainConfig:
    """Everything `vlbridge train limber` needs; saved resolved as run_dir/config.yaml."""

    encoder: str = ""  # image encoder spec for vlbridge.models.registry.build_encoder (required)
    lm: str = ""  # frozen causal-LM directory; "" = the embedded SmolLM2-135M-Instruct
    lm_dtype: str = "float32"  # LM weight dtype: float32 | bfloat16 | float16 (compute: bf16 autocast on GPU)
    num_prefix_tokens: int = 4  # k prefix vectors for pooled features (grid features give N)
    dropout: float = 0.0  # dropout on the image features before the projector
    projector_init: str = "embedding-scale"  # embedding-scale | caption-ridge | default (see training/projector_init.py)
    ridge: float = 1e-2  # caption-ridge: L2 strength, relative to the mean feature variance
    prompt: str = "A picture of"  # captioning prompt stored with the model (not used in training)
    tune_encoder: bool = False  # also train the encoder, on pixels every step (no feature cache)
    batch_size: int = 16  # global batch (all processes together)
    grad_accum_steps: int = 1  # micro-batches per step on each process (same update, less memory)
    epochs: int = 3  # passes over the data (one caption sampled per image per epoch)
    max_steps: int = 0  # > 0: train exactly this many steps instead of `epochs`
    seed: int = 0  # projector init, data order, caption choice, dropout
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    log_every: int = 10  # steps between metric rows
    checkpoint_every: int = 200  # steps between resume checkpoints (and at the end)
    keep_last: int = 2  # resume checkpoints kept
    data: LimberDataConfig = field(default_factory=LimberDataConfig)  # training pairs
    optim: LimberOptimConfig = field(default_factory=LimberOptimConfig)  # optimiser and schedule


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_dir: Path  # the run directory
    model_dir: Path  # the saved Limber (load with load_trained_limber)
    steps: int  # optimizer steps done in total
    final_loss: float  # loss of the last step (global token mean)
    losses: list[tuple[int, float]]  # (step, loss) of every step run in this call
    samples_per_second: float  # training throughput of this call (all ranks)
    model: nn.Module | None = None  # the trained Limber, in eval mode (ready to caption)


class PrefixModule(nn.Module):
    """The trainable path: (tuned encoder on pixels |) cached features -> projector -> (B, P, H)."""

    def __init__(self, projector: nn.Module, encoder: nn.Module | None = None):
        super().__init__()
        self.projector = projector  # LinearProjector
        self.encoder = encoder  # set only when the encoder is tuned

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images) if self.encoder is not None else images  # (B, D) or (B, N, D)
        return self.projector(features)  # (B, P, H)


# ---------------------------------------------------------------------------- building


def build_limber(config: LimberTrainConfig, device: torch.device):
    """Encoder + fresh projector (seeded) + frozen LM, as a `Limber`."""
    from vlbridge.models.limber import DTYPES, Limber, LimberConfig
    from vlbridge.models.lm import FrozenLM, default_lm_path
    from vlbridge.models.registry import build_encoder

    if not config.encoder:
        raise UserError("no image encoder given: pass --encoder SPEC (e.g. timm:nf_resnet50@weights.safetensors)")
    lm_path = Path(config.lm) if config.lm else default_lm_path()
    encoder = build_encoder(config.encoder, device=str(device))
    if config.tune_encoder:
        encoder.unfreeze()
    if config.lm_dtype not in DTYPES:
        raise UserError(f"lm_dtype must be one of {', '.join(DTYPES)}, got {config.lm_dtype!r}")
    lm = FrozenLM.from_pretrained(lm_path, device=device, dtype=DTYPES[config.lm_dtype])
    limber_config = LimberConfig(
        encoder=config.encoder,
        lm=config.lm,  # "" stays "" (the embedded LM), so saved models stay portable
        num_prefix_tokens=config.num_prefix_tokens,
        pooled=encoder.pooled,
        dropout=config.dropout,
        prompt=config.prompt,
        lm_dtype=config.lm_dtype,
    )
    torch.manual_seed(config.seed)  # the projector's initial weights depend on the seed only
    return Limber.build(limber_config, device=device, encoder=encoder, lm=lm)


def default_feature_cache() -> Path:
    from vlbridge.assets import cache_root

    return cache_root() / "features"


# ---------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """Records, their caption token ids, and (unless tuning) their cached features."""

    records: list  # ImageTextRecord, in a fixed order
    caption_ids: list[list[list[int]]]  # per record, per caption: token ids (no EOS)
    features: torch.Tensor | None  # (N, D) / (N, T, D) on the device; None when the encoder is tuned


def prepare_data(config: LimberTrainConfig, model, env: DistEnv) -> TrainingData:
    """Load records, extract (or reuse) their features, tokenize every caption once."""
    data = config.data
    records = limber_data.load_caption_records(data.dataset, data.split, data.n, data.seed, data.image_size)
    features = None
    if config.tune_encoder:
        records = limber_data.keep_readable_images(records)
    else:
        from vlbridge.data.features import FeatureStore

        store = FeatureStore(Path(data.feature_cache) if data.feature_cache else default_feature_cache())
        name = limber_data.dataset_cache_name(data.dataset, data.seed, data.image_size)
        by_id = store.get_or_extract(model.encoder, name, data.split, records, batch_size=data.extract_batch_size, env=env)
        records, features = limber_data.stack_features(records, by_id)
        features = features.to(env.device)  # (N, D) or (N, T, D)
    caption_ids = limber_data.tokenize_captions(model.lm.tokenize, records, data.max_caption_tokens)
    log.info("LiMBeR training data: %d images, %d captions", len(records), sum(len(c) for c in caption_ids))
    return TrainingData(records=records, caption_ids=caption_ids, features=features)


# ---------------------------------------------------------------------------- optimisation


def build_optimizer(config: LimberTrainConfig, trainable: PrefixModule) -> torch.optim.Optimizer:
    """AdamW: projector at `lr` (no decay on its bias), tuned encoder at `encoder_lr`."""
    optim = config.optim
    groups = [{**g, "lr": optim.lr} for g in param_groups(trainable.projector, optim.weight_decay)]
    if trainable.encoder is not None:
        groups += [{**g, "lr": optim.encoder_lr} for g in param_groups(trainable.encoder, optim.weight_decay)]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token CE over positions whose label is not -100, number of such positions).

    Position t predicts label t+1: the labels are shifted left (with -100 at the end) instead of
    slicing the logits, which would copy the (B, T, V) tensor forward and backward.
    """
    labels = labels.to(logits.device)
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)  # (B, T)
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (B*T, V), a view
    loss_sum = F.cross_entropy(flat_logits.float(), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss_sum, (targets != -100).sum()


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the dropout RNG at `step` on `rank` (independent of anything that ran before)."""
    return (seed * 1_000_003 + step * 4099 + rank) % (2**63)


def split_batch(batch: dict, parts: int) -> list[dict]:
    """`batch` cut into at most `parts` contiguous, non-empty micro-batches (sizes differ by <= 1)."""
    size = len(batch["input_ids"])
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    return [{key: value[start:end] for key, value in batch.items()}
            for start, end in zip(bounds, bounds[1:]) if end > start]


def micro_loss_sum(model, trainable: nn.Module, batch: dict) -> torch.Tensor:
    """Sum of caption-token cross-entropies of one (micro-)batch (graph kept for backward)."""
    images = batch["image_features"] if "image_features" in batch else batch["pixel_values"]
    with autocast(model.device):
        prefix = trainable(images)  # (b, P, H)
        inputs = model.training_inputs(prefix, batch["input_ids"])
        output = model.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"])
    return token_loss_sum(output.logits, inputs["labels"])[0]


def train_step(model, trainable: nn.Module, batch: dict, optimizer, scheduler, config: LimberTrainConfig, env: DistEnv) -> float:
    """One optimizer step on this rank's part of the global batch; returns the global token-mean loss.

    The rank's part runs as `config.grad_accum_steps` micro-batches (see the module docstring).
    """
    count = torch.tensor(sum(len(ids) for ids in model.caption_targets(batch["input_ids"])), device=env.device)
    global_count = all_reduce_sum(count, env).clamp_min(1)
    micro_batches = split_batch(batch, config.grad_accum_steps)
    loss_total = torch.zeros((), device=env.device)
    for index, micro in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(trainable, "no_sync") else trainable.no_sync():
            loss_sum = micro_loss_sum(model, trainable, micro)
            (loss_sum * env.world_size / global_count).backward()  # DDP averages -> global token mean
        loss_total += loss_sum.detach()
    params = [p for p in trainable.parameters() if p.requires_grad]
    if config.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(all_reduce_sum(loss_total, env) / global_count)


# ---------------------------------------------------------------------------- checkpoints


def check_resume_config(saved: dict, current: LimberTrainConfig) -> None:
    """A resumed run must train the same thing: every key but RESUME_FREE_KEYS must match."""
    before, now = _flatten(saved), _flatten(to_dict(current))
    changed = sorted(k for k in set(before) | set(now) if k not in RESUME_FREE_KEYS and before.get(k) != now.get(k))
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


def save_model(model, trainable: PrefixModule, run_dir: Path) -> Path:
    """Write the deployable model (projector + config; tuned encoder weights too)."""
    from vlbridge.io import atomic_save_safetensors

    model_dir = run_dir / "model"
    model.save(model_dir)
    if trainable.encoder is not None:
        atomic_save_safetensors(model_dir / TUNED_ENCODER_FILE, trainable.encoder.state_dict())
    return model_dir


def resume_state(run_dir: Path, resume: str | None, config: LimberTrainConfig, trainable, optimizer, scheduler) -> int:
    """Load the resume checkpoint (if asked and present) into the training objects; return its step."""
    if not resume:
        return 0
    path = find_checkpoint(run_dir, resume)
    if path is None:
        if resume == "latest":
            log.info("no checkpoint in %s yet: starting from step 0", run_dir)
            return 0
        raise UserError(f"no checkpoint {resume!r} in {run_dir}")
    state = load_checkpoint(path)
    check_resume_config(state.get("config", {}), config)
    trainable.load_state_dict(state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("resumed from %s (step %d)", path, state["step"])
    return int(state["step"])


def checkpoint_state(config, trainable, optimizer, scheduler) -> dict:
    return {
        "config": to_dict(config),
        "trainable": trainable.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


# ---------------------------------------------------------------------------- the loop


def train_limber(
    config: LimberTrainConfig,
    out_dir: str | Path,
    resume: str | None = None,
    env: DistEnv | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the projector (and the encoder if `config.tune_encoder`); see the module docstring.

    `resume`: None (fresh run), "latest", a step number or a checkpoint path. `on_step(step, loss)`
    is called after every optimizer step (1-based step), e.g. to stop a run in a test.
    """
    env = env or init_distributed(config.device)
    run = setup_run(config, Path(out_dir), resume, env)
    started = time.perf_counter()
    losses = run_steps(run, config, Path(out_dir), env, on_step)
    elapsed = max(time.perf_counter() - started, 1e-9)
    return TrainResult(
        run_dir=Path(out_dir),
        model_dir=Path(out_dir) / "model",
        steps=run.total_steps,
        final_loss=losses[-1][1] if losses else float("nan"),
        losses=losses,
        samples_per_second=len(losses) * config.batch_size / elapsed,
        model=run.model.eval(),
    )


@dataclass
class TrainingRun:
    """Everything the step loop needs, built (and resumed) by `setup_run`."""

    model: nn.Module  # the Limber being trained
    data: TrainingData  # records, caption ids, cached features
    trainable: PrefixModule  # projector (+ tuned encoder)
    step_module: nn.Module  # `trainable`, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batcher: limber_data.CaptionBatcher  # (seed, step) -> this rank's samples
    total_steps: int  # steps of the whole run
    start_step: int  # steps already done (resume)


def setup_run(config: LimberTrainConfig, run_dir: Path, resume: str | None, env: DistEnv) -> TrainingRun:
    """Build model, data, optimizer and schedule; restore them from a checkpoint when resuming."""
    if config.grad_accum_steps < 1:
        raise UserError(f"grad_accum_steps must be >= 1, got {config.grad_accum_steps}")
    model = build_limber(config, env.device)
    data = prepare_data(config, model, env)
    init_projector(model, data.features, data.caption_ids, config)
    trainable = PrefixModule(model.projector, model.encoder if config.tune_encoder else None)
    model.projector.train(True)  # feature dropout (when configured) is on while training
    if model.encoder is not None:
        model.encoder.eval()  # a tuned encoder trains in eval mode (module docstring)
    optimizer = build_optimizer(config, trainable)
    batcher = limber_data.CaptionBatcher(
        [len(c) for c in data.caption_ids], config.batch_size, config.seed, env.rank, env.world_size
    )
    total_steps = config.max_steps or config.epochs * batcher.steps_per_epoch
    if total_steps < 1:
        raise UserError(f"nothing to train: epochs={config.epochs}, max_steps={config.max_steps}")
    warmup = min(config.optim.warmup_steps, total_steps)
    scheduler = warmup_cosine(optimizer, warmup, total_steps, config.optim.min_lr_ratio)
    start = resume_state(run_dir, resume, config, trainable, optimizer, scheduler)
    if env.is_main:
        save_config(config, run_dir / "config.yaml")
    return TrainingRun(model, data, trainable, _wrap_ddp(trainable, env), optimizer, scheduler, batcher, total_steps, start)


def run_steps(run: TrainingRun, config: LimberTrainConfig, run_dir: Path, env: DistEnv, on_step=None) -> list[tuple[int, float]]:
    """Steps start_step..total_steps with logging and checkpoints; returns (step, loss) of each."""
    preprocess = run.model.encoder.preprocess if config.tune_encoder else None
    logger = RunLogger(run_dir, is_main=env.is_main, resume_step=run.start_step)  # drops rows after the resume step
    bar = tqdm(total=run.total_steps, initial=run.start_step, desc="train limber", disable=not env.is_main, dynamic_ncols=True)
    losses: list[tuple[int, float]] = []
    for step in range(run.start_step, run.total_steps):
        torch.manual_seed(step_seed(config.seed, step, env.rank))
        samples = run.batcher.samples(step)
        batch = limber_data.make_batch(samples, run.data.records, run.data.caption_ids, run.data.features, preprocess, env.device)
        lr = run.optimizer.param_groups[0]["lr"]  # the projector's learning rate at this step
        loss = train_step(run.model, run.step_module, batch, run.optimizer, run.scheduler, config, env)
        if not math.isfinite(loss):
            raise UserError(f"the training loss became {loss} at step {step + 1}; try a lower optim.lr")
        done = step + 1
        losses.append((done, loss))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if done % config.log_every == 0 or done == run.total_steps:
            logger.log(done, {"loss": loss, "lr": lr})
        if done % config.checkpoint_every == 0 or done == run.total_steps:
            _save_all(run_dir, done, config, run, env)
        if on_step is not None:
            on_step(done, loss)
    bar.close()
    logger.close()
    return losses


def _save_all(run_dir: Path, step: int, config: LimberTrainConfig, run: TrainingRun, env: DistEnv) -> None:
    if env.is_main:
        state = checkpoint_state(config, run.trainable, run.optimizer, run.scheduler)
        save_checkpoint(run_dir, step, state, keep_last=config.keep_last)
        save_model(run.model, run.trainable, run_dir)
    barrier(env)


def _wrap_ddp(trainable: PrefixModule, env: DistEnv) -> nn.Module:
    if not env.distributed:
        return trainable
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(trainable, device_ids=device_ids)
