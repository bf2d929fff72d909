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
- Features come from the `FeatureStore` (the encoder runs once per image, ever), held in memory
  when they take at most `data.memory_limit_mb` (or `feature_mode: memory`), else streamed from
  the store one chunk at a time (`feature_mode: stream`) in a seeded shard-and-buffer order
  (`limber_data.ChunkedFeatures`); the run log names the mode and its memory bound. The data
  position is saved with every checkpoint and checked on resume. With
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
- `lm_activation_checkpointing` recomputes the frozen LM's layer activations in the backward
  pass (same gradients, less memory: GPT-J-6B figures in docs/BENCHMARKS.md); `lm_device_map`
  ("auto") spreads an LM too large for one device over the visible devices with accelerate.
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

import numpy as np
import torch
from torch import nn

from vlbridge.errors import UserError
from vlbridge.validate import check_positive_number
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
    n: int = 0  # records: 0 = all of a dataset on disk, WORLD_DEFAULT_N images of a generated world (shapes, objects)
    seed: int = 0  # shapes-world seed (which images)
    image_size: int = 64  # shapes-world image side in pixels
    max_caption_tokens: int = 32  # captions are truncated to this many tokens (before EOS)
    feature_cache: str = ""  # FeatureStore folder; "" = <VLBRIDGE_CACHE>/features
    extract_batch_size: int = 64  # images per encoder call when extracting features
    feature_mode: str = "auto"  # auto | memory | stream: hold all features, or stream them from the store
    memory_limit_mb: float = 1024.0  # auto: in memory when the features (float32) take at most this, else streamed
    feature_chunk_size: int = 1024  # records per feature-store chunk (a new store only; the unit of streaming)
    shuffle_buffer_chunks: int = 8  # stream: chunks whose records are shuffled together (2x this held in memory)
    init_sample: int = 8192  # stream: features (seeded sample) that size the projector's init and feature scale


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
    lm_activation_checkpointing: bool = False  # recompute the frozen LM's layer activations in backward (less memory)
    lm_device_map: str = ""  # "": the whole LM on `device`; "auto" / "balanced": accelerate spreads it over devices
    num_prefix_tokens: int = 4  # k prefix vectors for pooled features (grid features give N)
    dropout: float = 0.0  # dropout on the projected prefix vectors (after the linear map, as LiMBeR)
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
    check_positive_number("optim.encoder_lr", config.optim.encoder_lr)


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
    lm = FrozenLM.from_pretrained(lm_path, device=device, dtype=DTYPES[config.lm_dtype],
                                  device_map=config.lm_device_map or None)
    if config.lm_activation_checkpointing:
        lm.enable_activation_checkpointing()
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
    caption_ids: limber_data.CaptionTokens  # per record, per caption: token ids (no EOS), packed
    features: torch.Tensor | None  # (N, D) / (N, T, D) on the device in memory mode; None when streamed or tuned
    stream: limber_data.ChunkedFeatures | None = None  # the features read from the store in stream mode
    mode: str = "pixels"  # "memory", "stream" or "pixels" (tuned encoder: images decoded every step)

    def feature_rows(self):
        """What make_batch reads features from: the tensor or the stream."""
        return self.stream if self.stream is not None else self.features


FEATURE_MODES = ("auto", "memory", "stream")


def prepare_data(config: LimberTrainConfig, model, env: DistEnv) -> TrainingData:
    """Load records, extract (or reuse) their features, tokenize every caption once."""
    data = config.data
    records = limber_data.load_caption_records(data.dataset, data.split, data.n, data.seed, data.image_size)
    if config.tune_encoder:
        records = limber_data.keep_readable_images(records)
        caption_ids = limber_data.tokenize_captions(model.lm.tokenize, records, data.max_caption_tokens)
        log.info("LiMBeR data mode: pixels (tuned encoder; images decoded every step, never held)")
        return _log_sizes(TrainingData(records=records, caption_ids=caption_ids, features=None))
    from vlbridge.data.features import FeatureStore

    if data.feature_mode not in FEATURE_MODES:
        raise UserError(f"data.feature_mode must be one of {', '.join(FEATURE_MODES)}, got {data.feature_mode!r}")
    root = Path(data.feature_cache) if data.feature_cache else default_feature_cache()
    store = FeatureStore(root, chunk_size=data.feature_chunk_size)
    name = limber_data.dataset_cache_name(data.dataset, data.seed, data.image_size)
    stored = store.extract(model.encoder, name, data.split, records, batch_size=data.extract_batch_size, env=env,
                           load=False).stored
    records, rows = limber_data.rows_of_records(records, stored.ids)
    caption_ids = limber_data.tokenize_captions(model.lm.tokenize, records, data.max_caption_tokens)
    size_mb = stored.nbytes_float32 / 2**20
    in_memory = data.feature_mode == "memory" or (data.feature_mode == "auto" and size_mb <= data.memory_limit_mb)
    if in_memory:
        features = stored.read_all()[torch.from_numpy(rows)].to(env.device)  # (N, D) or (N, T, D)
        log.info("LiMBeR data mode: memory (%d features, %.1f MB float32, limit %.0f MB)", len(rows), size_mb,
                 data.memory_limit_mb)
        return _log_sizes(TrainingData(records, caption_ids, features, mode="memory"))
    stream = limber_data.ChunkedFeatures(stored, rows, capacity=2 * data.shuffle_buffer_chunks)
    chunk_mb = max(stored.chunk_rows, default=0) * stored.nbytes_float32 / max(1, len(stored.ids)) / 2**20
    log.info("LiMBeR data mode: stream from %s (%d features, %.1f MB float32 > limit %.0f MB; shuffle buffer %d "
             "chunks of <= %d; at most %d chunks = %.1f MB held)", stored.folder, len(rows), size_mb,
             data.memory_limit_mb, data.shuffle_buffer_chunks, max(stored.chunk_rows, default=0),
             stream.cache.capacity, stream.cache.capacity * chunk_mb)
    return _log_sizes(TrainingData(records, caption_ids, None, stream=stream, mode="stream"))


def _log_sizes(data: TrainingData) -> TrainingData:
    log.info("LiMBeR training data: %d images, %d captions", len(data.records), data.caption_ids.num_captions)
    return data


FEATURE_SCALES = ("none", "unit-norm")


def init_features(data: TrainingData, sample: int, seed: int) -> tuple[torch.Tensor | None, list]:
    """Features (+ their caption ids) that size the projector's init: all in memory, a seeded sample when streamed."""
    if data.stream is None:
        return data.features, data.caption_ids
    count = min(sample, len(data.stream))
    chosen = np.sort(np.random.default_rng([seed, 7]).choice(len(data.stream), size=count, replace=False))
    log.info("projector init and feature scale from a seeded sample of %d of %d streamed features", count, len(data.stream))
    return data.stream.rows(chosen.tolist()), [data.caption_ids[i] for i in chosen]


def scale_features(model: Limber, features: torch.Tensor | None, feature_scale: str) -> None:
    """`unit-norm`: set the projector's fixed input scale to 1 / mean feature norm of the training data.

    Adam moves each weight by about lr per step whatever the gradient's size, so a feature of norm
    60 moves the prefix 100x further per step than one of norm 0.6; the fixed scale makes the
    same lr mean the same step for every encoder. (A resumed run gets the same scale: same data.)
    """
    if feature_scale not in FEATURE_SCALES:
        raise UserError(f"feature_scale must be one of {', '.join(FEATURE_SCALES)}, got {feature_scale!r}")
    if feature_scale == "none" or features is None:
        return
    norms = features.float().norm(dim=-1)  # (N,) or (N, T)
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
    resume_free_keys = ("data.feature_cache", "data.extract_batch_size", "grad_accum_steps", "data.feature_mode",
                        "data.memory_limit_mb", "data.init_sample", "data.feature_chunk_size",
                        "data.shuffle_buffer_chunks", "lm_activation_checkpointing",
                        "lm_device_map")  # data order changes are caught by the data position; the rest computes the same

    def __init__(self, config: LimberTrainConfig, run_dir: Path, env: DistEnv):
        self.config, self.run_dir, self.env = config, run_dir, env
        self.model = build_limber(config, env.device)
        self.data = prepare_data(config, self.model, env)
        sized_by, sized_captions = init_features(self.data, config.data.init_sample, config.seed)
        scale_features(self.model, sized_by, config.feature_scale)
        self.init_report = init_projector(self.model, sized_by, sized_captions, config)
        self.init_report["input_scale"] = self.model.projector.input_scale
        self.model.projector.train(True)  # prefix dropout (when configured) is on while training
        if self.model.encoder is not None:
            self.model.encoder.eval()  # a tuned encoder trains in eval mode (module docstring)
        modules = {"projector": self.model.projector, **({"encoder": self.model.encoder} if config.tune_encoder else {})}
        self.checkpointed = nn.ModuleDict(modules)  # what a checkpoint holds ("projector.*", "encoder.*")
        self.optimizer = build_optimizer(config, self.model)
        self.batcher = limber_data.CaptionBatcher(
            self.data.caption_ids.counts(), config.batch_size, config.seed, env.rank, env.world_size
        )
        if self.data.stream is not None:
            self.batcher.use_chunk_order(self.data.stream.groups(), config.data.shuffle_buffer_chunks)
        self.total_steps = config.steps or config.epochs * self.batcher.steps_per_epoch
        if self.total_steps < 1:
            raise UserError(f"nothing to train: {len(self.data.records)} records give no full batch of {config.batch_size}")
        warmup = min(config.optim.warmup_steps, self.total_steps)
        self.scheduler = warmup_cosine(self.optimizer, warmup, self.total_steps, config.optim.min_lr_ratio)
        self.preprocess = self.model.encoder.preprocess if config.tune_encoder else None

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        check_data_position(saved.get("data"), self.batcher.position(int(saved["step"])))
        self.checkpointed.load_state_dict(saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])

    def begin(self, start_step: int) -> None:
        self.wrapped = wrap_ddp(self.model, self.env)
        self.next_step = start_step  # the step the data position points at (saved in checkpoints)

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]  # the projector's

    def step(self, step: int) -> torch.Tensor:
        torch.manual_seed(step_seed(self.config.seed, step, self.env.rank))
        samples = self.batcher.samples(step)
        data = self.data
        batch = limber_data.make_batch(samples, data.records, data.caption_ids, data.feature_rows(), self.preprocess,
                                       self.env.device)
        self.next_step = step + 1
        return train_step(self.wrapped, batch, self.optimizer, self.scheduler, self.config, self.env)

    def state_dict(self) -> dict[str, Any]:
        return {"trainable": self.checkpointed.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "data": self.batcher.position(self.next_step)}

    def finish(self, result: TrainResult) -> None:
        save_model(self.model, self.config.tune_encoder, self.run_dir)


def check_data_position(saved: dict | None, now: dict) -> None:
    """UserError when a checkpoint's data position is not where this run's data order puts that step."""
    if saved is None:  # checkpoints written before positions were saved: the order is a function of the step
        return
    if saved != now:
        raise UserError(f"cannot resume: the checkpoint's data position {saved} differs from this run's {now} "
                        "(different records, store chunks or shuffle settings)")
    log.info("data position restored: epoch %d, batch %d of the epoch (%s order)", now["epoch"], now["batch_in_epoch"],
             now["order"])


MODEL_DIR = "model"  # the finished, deployable model inside a run folder (save_model writes it)


def save_model(model: Limber, tuned_encoder: bool, run_dir: Path) -> Path:
    """Write the deployable model (projector + config; tuned encoder weights too) as run_dir/model, whole.

    Only a finished run writes it (checkpoints hold the state of an unfinished one), and it
    appears by one rename, so a `model/` folder is always a complete, final model.
    """
    from vlbridge.io import atomic_dir, atomic_save_safetensors

    model_dir = run_dir / MODEL_DIR
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
    return LimberTrainResult.extend(result, model_dir=Path(out_dir) / MODEL_DIR, model=task.model.eval(),
                                    init_report=task.init_report)


def initial_projector(config: LimberTrainConfig, out_dir: str | Path, env: DistEnv | None = None) -> LimberTrainResult:
    """The projector as `projector_init` starts it, saved untrained by rank 0 (the closed-form-only ablation)."""
    validate(config)
    env = env or init_distributed(config.device)
    task = LimberTask(config, Path(out_dir), env)
    model_dir = Path(out_dir) / MODEL_DIR
    if env.is_main:
        save_model(task.model, False, Path(out_dir))
    return LimberTrainResult(run_dir=Path(out_dir), steps=0, start_step=0, final_loss=float("nan"), losses=[],
                             samples_per_second=0.0, seconds=0.0, model_dir=model_dir, model=task.model.eval(),
                             init_report=task.init_report)
