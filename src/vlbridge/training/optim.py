"""The optimiser every trainer uses: its config, AdamW parameter groups, schedule and clipping.

- `OptimConfig`: the shared `optim.*` vocabulary (lr, weight_decay, beta1, beta2, eps,
  warmup_steps, min_lr_ratio, grad_clip_norm); each trainer subclasses it with its own defaults
  (and adds its own extras: CLIP's fused kernel, LiMBeR's encoder_lr).
- `param_groups(model, weight_decay)`: AdamW groups with no weight decay on biases, norm gains
  (every parameter with fewer than 2 dims) and the CLIP logit scale, as in CLIP/open_clip.
- `adamw(groups, config)`: torch's AdamW with the config's betas and epsilon.
- `warmup_cosine(optimizer, warmup_steps, total_steps)`: linear warmup then cosine decay to
  `min_lr_ratio` of the base learning rate, as a LambdaLR (its state resumes exactly).
- `clip_gradients(params, grad_clip_norm)`: global-norm clipping, None = off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from vlbridge.config import Renamed
from vlbridge.errors import UserError
from vlbridge.validate import check_finite, check_non_negative, check_positive_number

NO_DECAY_NAMES = ("logit_scale", "logit_bias", "positional_embedding", "class_embedding", "token_embedding")


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay: the `optim` section of every trainer's config."""

    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # AdamW decay on matrices and kernels (none on biases, gains, embeddings, logit scale)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.999  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 0  # linear warmup from 0 over this many steps
    min_lr_ratio: float = 0.0  # cosine decays to this fraction of lr
    grad_clip_norm: float | None = 1.0  # clip the global gradient norm to this (None: no clipping)


def old_grad_clip(value: Any) -> Any:
    """Value of a renamed `grad_clip` key: it disabled clipping with 0, `grad_clip_norm` does with None."""
    return None if value == 0 else value


OLD_GRAD_CLIP = Renamed("grad_clip_norm", old_grad_clip)  # RENAMED_KEYS entry for the old `grad_clip`


def check_optim_config(config: OptimConfig, where: str = "optim.") -> None:
    """UserError for optimiser settings that mean nothing, naming the key (NaN and infinity included)."""
    check_positive_number(f"{where}lr", config.lr)
    check_positive_number(f"{where}eps", config.eps)
    check_non_negative(f"{where}weight_decay", config.weight_decay)
    for name in ("beta1", "beta2"):
        if not check_non_negative(f"{where}{name}", getattr(config, name)) < 1:
            raise UserError(f"{where}{name} must be in [0, 1), got {getattr(config, name)}")
    if not 0 <= check_finite(f"{where}min_lr_ratio", config.min_lr_ratio) <= 1:
        raise UserError(f"{where}min_lr_ratio must be in [0, 1], got {config.min_lr_ratio}")
    if config.grad_clip_norm is not None and config.grad_clip_norm <= 0:
        raise UserError(f"{where}grad_clip_norm must be > 0, or null for no clipping; got {config.grad_clip_norm}")
    if config.warmup_steps < 0:
        raise UserError(f"{where}warmup_steps must be >= 0, got {config.warmup_steps}")


def wants_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Decay matrices and conv kernels only; never biases, gains, embeddings or the temperature."""
    if param.ndim < 2:
        return False
    return not any(key in name for key in NO_DECAY_NAMES)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay / no decay) over the trainable parameters of `model`."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if wants_weight_decay(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def adamw(groups: list[dict], config: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over `groups` at config.lr (a group's own "lr" wins), betas and eps from `config`."""
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, fused=fused or None)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over `warmup_steps`, then cosine decay to `min_lr_ratio`·lr at `total_steps`."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(params: Iterable[torch.Tensor], grad_clip_norm: float | None) -> None:
    """Scale the gradients of `params` so their global L2 norm is at most `grad_clip_norm` (None: leave them)."""
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(params), grad_clip_norm, norm_type=2.0)
