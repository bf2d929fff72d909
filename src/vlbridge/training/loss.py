"""`ClipLoss`: CLIP's symmetric InfoNCE over the N x N image-text logits, across ranks.

The loss lives outside the model (as in open_clip): the model gives L2-normalised image and
text features and the temperature exp(logit_scale); this module gathers features from every
rank, builds the logits and averages image->text and text->image cross-entropies.

Distributed options (world_size > 1):
- `gather_with_grad=False` (default): features are gathered without gradient and this rank's
  own features are put back in place, so every rank computes the full global loss but gets
  gradient only through its own samples. DDP averages gradients over ranks, so the backward
  pass must use `loss * grad_scale` (= world_size) to give the global-batch gradient; the
  temperature, which every rank sees whole, gets its gradient divided by world_size to match.
- `gather_with_grad=True`: torch.distributed.nn.functional.all_gather carries gradient back to
  the owning rank (summed over ranks), which already yields the global-batch gradient.
- `local_loss=True` (needs gather_with_grad): each rank scores only its own rows against all
  gathered columns, with labels offset by rank * local_batch; cheaper (N/W x N logits) and the
  mean over ranks equals the global loss.
In every mode the mean of the per-rank loss values equals the single-process loss on the
same global batch, and `loss * grad_scale` gives the same gradient after DDP averaging.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlbridge.errors import UserError


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by `factor` backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_gradient(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """`tensor` unchanged, but its gradient is multiplied by `factor` (exact identity when factor == 1)."""
    return tensor if factor == 1.0 else _ScaleGradient.apply(tensor, factor)


class ClipLoss(nn.Module):
    """Symmetric contrastive loss with features gathered across `world_size` ranks."""

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__()
        if local_loss and not gather_with_grad and world_size > 1:
            raise UserError(
                "loss.local_loss=true needs loss.gather_with_grad=true: without gradient through the gather, "
                "other ranks' rows never reach this rank's features and the gradient is wrong"
            )
        self.local_loss = local_loss  # each rank scores only its own rows (rank-offset labels)
        self.gather_with_grad = gather_with_grad  # all_gather that back-propagates to the owner
        self.rank = rank  # this process's rank
        self.world_size = world_size  # number of ranks whose features are gathered

    @property
    def grad_scale(self) -> float:
        """Multiply the loss by this before backward so DDP's gradient mean is the global gradient."""
        return float(self.world_size) if self.world_size > 1 and not self.gather_with_grad else 1.0

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        """(n, E) local -> (W*n, E) in rank order; local rows keep their gradient."""
        if self.world_size == 1:
            return features
        if self.gather_with_grad:
            return torch.cat(torch.distributed.nn.functional.all_gather(features), dim=0)  # (W*n, E)
        parts = [torch.empty_like(features) for _ in range(self.world_size)]
        dist.all_gather(parts, features.detach().contiguous())
        parts[self.rank] = features  # put the local, differentiable rows back
        return torch.cat(parts, dim=0)  # (W*n, E)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor):
        """(logits_per_image, logits_per_text, labels) for this rank's share of the loss."""
        all_images = self.gather(image_features)  # (N, E), N = W*n
        all_texts = self.gather(text_features)  # (N, E)
        if self.local_loss and self.world_size > 1:
            logits_per_image = logit_scale * image_features @ all_texts.T  # (n, N)
            logits_per_text = logit_scale * text_features @ all_images.T  # (n, N)
            offset = self.rank * image_features.shape[0]
        else:
            logits_per_image = logit_scale * all_images @ all_texts.T  # (N, N)
            logits_per_text = logits_per_image.T  # (N, N)
            offset = 0
        labels = torch.arange(logits_per_image.shape[0], device=image_features.device) + offset  # (rows,)
        return logits_per_image, logits_per_text, labels

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """Mean of image->text and text->image cross-entropy; `logit_scale` is the multiplier exp(s)."""
        if image_features.shape != text_features.shape:
            raise ValueError(f"image and text features must have the same shape, got {tuple(image_features.shape)} and {tuple(text_features.shape)}")
        logit_scale = scale_gradient(logit_scale, 1.0 / self.grad_scale)  # undo grad_scale for the shared temperature
        logits_per_image, logits_per_text, labels = self.logits(image_features, text_features, logit_scale)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
