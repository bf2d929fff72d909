"""LiMBeR training: fit the linear projector (optionally also the image encoder) on image-caption pairs.

    result = train_limber(LimberTrainConfig(encoder="timm:nf_resnet50@w.safetensors"), out_dir="runs/limber")

What a step does (the LiMBeR recipe): image features -> projector -> k prefix vectors, then
the frozen LM reads [prefix ; caption tokens + EOS] and the loss is the cross-entropy on the
caption tokens and EOS: exactly `Limber.forward`, which the step calls (its `loss_sum` and
`num_tokens`). AdamW (paper: lr 8e-4, betas 0.9/0.95, no weight decay), linear warmup then
cosine decay, gradient clipping at 1.0, bf16 autocast on GPU and fp32 on CPU. The loop itself
(resume, logging, checkpoints, throughput) is `training/loop.py`.

- Length: `steps` optimizer steps, or with `steps: 0` (the default) `epochs` passes over the
  data (one caption sampled per image per epoch; the last incomplete batch of an epoch dropped).
- Features come from the `FeatureStore` (the encoder runs once per image, ever); with
  `tune_encoder` the encoder is unfrozen instead, runs on pixels every step and gets its own
  learning rate (the paper's "NFRN50 Tuned" / "BEIT FT." rows). A tuned encoder stays in eval
  mode (BatchNorm statistics frozen, no dropout) while its weights train.
- Data order and caption choice are a pure function of (seed, step) (`limber_data.CaptionBatcher`),
  and the dropout RNG is re-seeded from (seed, step, rank) every step, so `resume="latest"`
  reproduces an uninterrupted run exactly.
- Under torchrun the whole `Limber` is wrapped in DDP with every parameter and buffer that
  does not train (the frozen LM, a frozen encoder) left out of DDP's care, so only the projector
  [+ tuned encoder] is broadcast and all-reduced; each rank takes its slice of the global batch.
  The loss is the token-mean over the *global* batch (each rank scales its token-sum by
  world_size / global token count before DDP averages the gradients), so W processes compute
  the same update as one process on the same batch.
- `grad_accum_steps` = A splits each rank's slice into A micro-batches, each run forward and
  backward in turn (DDP syncs only on the last), with every token-sum scaled by the same
  global token count: the same update as one unsplit step, with 1/A of the activation memory
  (dropout masks are drawn per micro-batch, so with dropout > 0 only their distribution matches).

Run directory:
    config.yaml                resolved LimberTrainConfig
    checkpoints/step-*.pt      resume state (projector [+ encoder], optimizer, schedule, RNG)
    model/                     `Limber.save` output (projector safetensors + LimberConfig),
                               plus encoder.safetensors when the encoder was tuned; written
                               once, when the run finishes, and swapped in whole (a killed
                               run has checkpoints but no model/, or the previous final one)
    metrics.csv, tensorboard/  step, loss, learning rate, samples/s (RunLogger)
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vlbridge.errors import UserError
from vlbridge.models.limber import TUNED_ENCODER_FILE, Limber
from vlbridge.runtime import DistEnv, all_reduce_sum, init_distributed, unwrap_ddp
from vlbridge.training import limber_data
from vlbridge.training.loop import OnStep, TrainConfig, TrainResult, TrainTask, check_train_config, run_training
from vlbridge.training.optim import OLD_GRAD_CLIP, OptimConfig, adamw, clip_gradients, param_groups, warmup_cosine
from vlbridge.training.projector_init import init_projector

log = logging.getLogger(__name__)


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
class LimberOptimConfig(OptimConfig):
    """AdamW + warmup/cosine schedule (LiMBeR paper values by default)."""

    RENAMED_KEYS: ClassVar[dict] = {"grad_clip": OLD_GRAD_CLIP}  # old name -> new name (0 -> None)

    lr: float = 8e-4  # projector peak learning rate (paper)
    weight_decay: float = 0.0  # paper: none
    beta1: float = 0.9  # AdamW beta1 (paper)
    beta2: float = 0.95  # AdamW beta2 (paper)
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 50  # linear warmup from 0 (at most the run's length)
    min_lr_ratio: float = 0.0  # cosine decays to this fraction of the peak
    grad_clip_norm: float | None = 1.0  # max global gradient norm (paper); None: no clipping
    encoder_lr: float = 1e-5  # peak learning rate of the encoder when tune_encoder is set


@dataclass
class LimberTrainConfig(TrainConfig):
    """Everything `vlbridge train limber` needs; saved resolved as run_dir/config.yaml."""

    RENAMED_KEYS: ClassVar[dict] = {"max_steps": "steps", "keep_last": "keep_checkpoints"}  # old name -> new name

    steps: int = 0  # optimizer steps; 0: as many as `epochs` passes over the data take
    batch_size: int = 16  # global batch (all processes together)
    grad_accum_steps: int = 1  # micro-batches per step on each process (same update, less memory)
    seed: int = 0  # projector init, data order, caption choice, dropout
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    log_every: int = 10  # steps between metric rows
    checkpoint_every: int = 200  # steps between resume checkpoints (0: only the final one)
    keep_checkpoints: int = 2  # newest resume checkpoints kept (0: all)
    optim: LimberOptimConfig = field(default_factory=LimberOptimConfig)  # optimiser and schedule
    epochs: int = 3  # with steps = 0: passes over the data (one caption sampled per image per epoch)
    encoder: str = ""  # image encoder spec for vlbridge.models.registry.build_encoder (required)
    lm: str = ""  # frozen causal-LM directory; "" = the embedded SmolLM2-135M-Instruct
    lm_dtype: str = "float32"  # LM weight dtype: float32 | bfloat16 | float16 (compute: bf16 autocast on GPU)
    num_prefix_tokens: int = 4  # k prefix vectors for pooled features (grid features give N)
    dropout: float = 0.0  # dropout on the image features before the projector
    projector_init: str = "embedding-scale"  # embedding-scale | caption-ridge | default (see training/projector_init.py)
    ridge: float = 1e-2  # caption-ridge: L2 strength, relative to the mean feature variance
    ridge_candidates: list[float] = field(default_factory=list)  # caption-ridge: >= 2 values: choose on held-out 20 %
    feature_scale: str = "none"  # none | unit-norm: multiply features by 1 / their mean norm (fixed; see projector.py)
    prompt: str = "A picture of"  # captioning prompt stored with the model (not used in training)
    tune_encoder: bool = False  # also train the encoder, on pixels every step (no feature cache)
    data: LimberDataConfig = field(default_factory=LimberDataConfig)  # training pairs


@dataclass
class LimberTrainResult(TrainResult):
    """`TrainResult` plus the trained model and where it was saved."""

    model_dir: Path | None = None  # the saved Limber (load with load_trained_limber)
    model: nn.Module | None = None  # the trained Limber, in eval mode (ready to caption)
    init_report: dict = field(default_factory=dict)  # how the projector started (projector_init.init_projector)


def validate(config: LimberTrainConfig) -> None:
    """UserError for settings that mean nothing, naming the key."""
    check_train_config(config, min_steps=0)
    if config.steps == 0 and config.epochs < 1:
        raise UserError(f"nothing to train: steps is 0 (size the run by epochs) and epochs is {config.epochs}")


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


FEATURE_SCALES = ("none", "unit-norm")


def scale_features(model: Limber, data: TrainingData, feature_scale: str) -> None:
    """`unit-norm`: set the projector's fixed input scale to 1 / mean feature norm of the training data.

    Adam moves each weight by about lr per step whatever the gradient's size, so a feature of norm
    60 moves the prefix 100x further per step than one of norm 0.6; the fixed scale makes the
    same lr mean the same step for every encoder. (A resumed run gets the same scale: same data.)
    """
    if feature_scale not in FEATURE_SCALES:
        raise UserError(f"feature_scale must be one of {', '.join(FEATURE_SCALES)}, got {feature_scale!r}")
    if feature_scale == "none" or data.features is None:
        return
    norms = data.features.float().norm(dim=-1)  # (N,) or (N, T)
    scale = 1.0 / float(norms.mean().clamp_min(1e-12))
    model.projector.input_scale = scale
    model.config.input_scale = scale
    log.info("feature scale: features multiplied by %.4g (mean norm %.4g)", scale, 1.0 / scale)


# ---------------------------------------------------------------------------- optimisation


def build_optimizer(config: LimberTrainConfig, model: Limber) -> torch.optim.Optimizer:
    """AdamW: projector at `lr` (no decay on its bias), tuned encoder at `encoder_lr`."""
    optim = config.optim
    groups = [{**g, "lr": optim.lr} for g in param_groups(model.projector, optim.weight_decay)]
    if config.tune_encoder:
        groups += [{**g, "lr": optim.encoder_lr} for g in param_groups(model.encoder, optim.weight_decay)]
    return adamw(groups, optim)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the dropout RNG at `step` on `rank` (independent of anything that ran before)."""
    return (seed * 1_000_003 + step * 4099 + rank) % (2**63)


def split_batch(batch: dict, parts: int) -> list[dict]:
    """`batch` cut into at most `parts` contiguous, non-empty micro-batches (sizes differ by <= 1)."""
    size = len(batch["input_ids"])
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    return [{key: value[start:end] for key, value in batch.items()}
            for start, end in zip(bounds, bounds[1:]) if end > start]


def train_step(model: nn.Module, batch: dict, optimizer, scheduler, config: LimberTrainConfig, env: DistEnv) -> torch.Tensor:
    """One optimizer step on this rank's part of the global batch; returns the global token-mean loss.

    `model` is the Limber, or its DDP wrapper. The rank's part runs as `config.grad_accum_steps`
    micro-batches through `Limber.forward` (see the module docstring).
    """
    limber = unwrap_ddp(model)
    count = torch.tensor(sum(len(ids) for ids in limber.caption_targets(batch["input_ids"])), device=env.device)
    global_count = all_reduce_sum(count, env).clamp_min(1)
    micro_batches = split_batch(batch, config.grad_accum_steps)
    loss_total = torch.zeros((), device=env.device)
    for index, micro in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            output = model(pixel_values=micro.get("pixel_values"), image_features=micro.get("image_features"),
                           input_ids=micro["input_ids"])
            (output.loss_sum * env.world_size / global_count).backward()  # DDP averages -> global token mean
        loss_total += output.loss_sum.detach()
    clip_gradients(limber.trainable_parameters(), config.optim.grad_clip_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return all_reduce_sum(loss_total, env) / global_count


def wrap_ddp(model: Limber, env: DistEnv) -> nn.Module:
    """`model` in DDP (under torchrun), caring only for what trains: frozen weights and all buffers left out."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    buffers = [name for name, _ in model.named_buffers()]  # BatchNorm statistics of an eval-mode encoder never change
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen + buffers)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


# ---------------------------------------------------------------------------- the task


class LimberTask(TrainTask):
    """LiMBeR training as the shared loop drives it."""

    label = "train limber"
    resume_free_keys = ("data.feature_cache", "data.extract_batch_size", "grad_accum_steps")

    def __init__(self, config: LimberTrainConfig, run_dir: Path, env: DistEnv):
        self.config, self.run_dir, self.env = config, run_dir, env
        self.model = build_limber(config, env.device)
        self.data = prepare_data(config, self.model, env)
        scale_features(self.model, self.data, config.feature_scale)
        self.init_report = init_projector(self.model, self.data.features, self.data.caption_ids, config)
        self.init_report["input_scale"] = self.model.projector.input_scale
        self.model.projector.train(True)  # feature dropout (when configured) is on while training
        if self.model.encoder is not None:
            self.model.encoder.eval()  # a tuned encoder trains in eval mode (module docstring)
        modules = {"projector": self.model.projector, **({"encoder": self.model.encoder} if config.tune_encoder else {})}
        self.checkpointed = nn.ModuleDict(modules)  # what a checkpoint holds ("projector.*", "encoder.*")
        self.optimizer = build_optimizer(config, self.model)
        self.batcher = limber_data.CaptionBatcher(
            [len(c) for c in self.data.caption_ids], config.batch_size, config.seed, env.rank, env.world_size
        )
        self.total_steps = config.steps or config.epochs * self.batcher.steps_per_epoch
        if self.total_steps < 1:
            raise UserError(f"nothing to train: {len(self.data.records)} records give no full batch of {config.batch_size}")
        warmup = min(config.optim.warmup_steps, self.total_steps)
        self.scheduler = warmup_cosine(self.optimizer, warmup, self.total_steps, config.optim.min_lr_ratio)
        self.preprocess = self.model.encoder.preprocess if config.tune_encoder else None

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.checkpointed.load_state_dict(saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])

    def begin(self, start_step: int) -> None:
        self.wrapped = wrap_ddp(self.model, self.env)

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]  # the projector's

    def step(self, step: int) -> torch.Tensor:
        torch.manual_seed(step_seed(self.config.seed, step, self.env.rank))
        samples = self.batcher.samples(step)
        data = self.data
        batch = limber_data.make_batch(samples, data.records, data.caption_ids, data.features, self.preprocess, self.env.device)
        return train_step(self.wrapped, batch, self.optimizer, self.scheduler, self.config, self.env)

    def state_dict(self) -> dict[str, Any]:
        return {"trainable": self.checkpointed.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def finish(self, result: TrainResult) -> None:
        save_model(self.model, self.config.tune_encoder, self.run_dir)


def save_model(model: Limber, tuned_encoder: bool, run_dir: Path) -> Path:
    """Write the deployable model (projector + config; tuned encoder weights too) as run_dir/model, whole.

    Only a finished run writes it (checkpoints hold the state of an unfinished one), and it
    appears by one rename, so a `model/` folder is always a complete, final model.
    """
    from vlbridge.io import atomic_dir, atomic_save_safetensors

    model_dir = run_dir / "model"
    with atomic_dir(model_dir) as staging:
        model.save(staging)
        if tuned_encoder:
            atomic_save_safetensors(staging / TUNED_ENCODER_FILE, model.encoder.state_dict())
    return model_dir


def train_limber(
    config: LimberTrainConfig,
    out_dir: str | Path,
    resume: str | None = None,
    env: DistEnv | None = None,
    on_step: OnStep | None = None,
) -> LimberTrainResult:
    """Train the projector (and the encoder if `config.tune_encoder`); see the module docstring.

    `resume`: None (fresh run), "latest", a step number or a checkpoint path. `on_step(step, loss)`
    is called after every optimizer step (1-based step), e.g. to stop a run in a test.
    """
    validate(config)
    env = env or init_distributed(config.device)
    task = LimberTask(config, Path(out_dir), env)
    result = run_training(task, config, out_dir, env, resume, on_step)
    return LimberTrainResult.extend(result, model_dir=Path(out_dir) / "model", model=task.model.eval(),
                                    init_report=task.init_report)


def initial_projector(config: LimberTrainConfig, out_dir: str | Path) -> LimberTrainResult:
    """The projector as `projector_init` starts it, saved untrained (the closed-form-only ablation)."""
    validate(config)
    env = init_distributed(config.device)
    task = LimberTask(config, Path(out_dir), env)
    model_dir = save_model(task.model, False, Path(out_dir))
    return LimberTrainResult(run_dir=Path(out_dir), steps=0, start_step=0, final_loss=float("nan"), losses=[],
                             samples_per_second=0.0, seconds=0.0, model_dir=model_dir, model=task.model.eval(),
                             init_report=task.init_report)
