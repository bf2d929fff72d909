"""Left-padded prompt batches during decoding: position ids and the attention mask as they grow."""

from __future__ import annotations

import torch


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded prompt: 0.. over real tokens, 0 on padding (as HF generate)."""
    mask = attention_mask.long()
    return (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)  # (B, L)


def unpadded_as_none(mask: torch.Tensor) -> torch.Tensor | None:
    """None when no row is padded (as HF generate does: the model then uses its causal fast path)."""
    return None if bool(mask.eq(1).all()) else mask


def grow_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The attention mask one generated position longer (None stays None)."""
    return None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
