"""Pieces of the CLIP training loop: one optimizer step, and a small zero-shot probe.

`contrastive_step` is the whole update for one global batch: forward, `ClipLoss`, backward,
clipping, AdamW step and the logit-scale clamp. Gradient accumulation follows open_clip: the
features of every micro-batch are first computed without gradient, then each micro-batch is run
again with gradient and scored against the cached features of the others, so the update equals
the one of a single big batch (same contrastive negatives), not a sum of small-batch losses.

`ZeroShotProbe` is the periodic evaluation during training: held-out shapes-world images,
class names x prompt templates -> averaged text embeddings -> top-1 accuracy.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from vlbridge.runtime import autocast, unwrap_ddp
from vlbridge.training.loss import ClipLoss, scale_gradient

MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the learned temperature at 100


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
    params = [p for p in model.parameters() if p.requires_grad]
    if grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(params, grad_clip_norm, norm_type=2.0)
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
