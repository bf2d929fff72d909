"""Optimizer parameter groups and learning-rate schedules shared by CLIP and LiMBeR training.

- `param_groups(model, weight_decay)`: AdamW groups with no weight decay on biases, norm gains
  (every parameter with fewer than 2 dims) and the CLIP logit scale, as in CLIP/open_clip.
- `warmup_cosine(optimizer, warmup_steps, total_steps)`: linear warmup then cosine decay to
  `min_lr_ratio` of the base learning rate, as a LambdaLR (its state resumes exactly).
"""

from __future__ import annotations

import math

import torch

NO_DECAY_NAMES = ("logit_scale", "logit_bias", "positional_embedding", "class_embedding", "token_embedding")


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
