"""`LinearProjector`: the only trained part of LiMBeR, one linear map into the LM's input space.

Pooled features (B, D) become k soft-prompt vectors: Linear(D, k*H), reshaped to (B, k, H).
Grid features (B, N, D) map token by token: Linear(D, H) on each of the N tokens -> (B, N, H).
Nothing else is trainable (no LayerNorm, no bias tricks); an optional dropout on the projected
prefix vectors is the one regulariser (where the LiMBeR code applies image_embed_dropout_prob:
after the linear map, image_prefix.py in github.com/jmerullo/limber). `input_scale` is a fixed
number the features are multiplied by first (set once from the training features by
`feature_scale: unit-norm`): the map stays one linear map, but Adam's steps then move every
encoder's prefix by comparable amounts. `vlbridge.models.limber` puts the output in front of
the caption embeddings.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearProjector(nn.Module):
    """Image features -> LM input embeddings (the LiMBeR "P")."""

    def __init__(
        self,
        feature_dim: int,
        hidden_size: int,
        num_prefix_tokens: int = 4,
        pooled: bool = True,
        dropout: float = 0.0,
        input_scale: float = 1.0,
    ):
        super().__init__()
        if feature_dim <= 0 or hidden_size <= 0:
            raise ValueError(f"projector needs positive sizes, got feature_dim={feature_dim}, hidden_size={hidden_size}")
        if pooled and num_prefix_tokens <= 0:
            raise ValueError(f"a pooled projector needs num_prefix_tokens >= 1, got {num_prefix_tokens}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not input_scale > 0.0:
            raise ValueError(f"input_scale must be > 0, got {input_scale}")
        self.feature_dim = feature_dim  # D: size of one image feature vector
        self.hidden_size = hidden_size  # H: the LM's embedding size
        self.num_prefix_tokens = num_prefix_tokens  # k (pooled only; grid gives N tokens)
        self.pooled = pooled  # True: (B, D) input; False: (B, N, D) input
        self.input_scale = float(input_scale)  # features are multiplied by this first (fixed, not trained)
        self.dropout = nn.Dropout(dropout)
        out_features = num_prefix_tokens * hidden_size if pooled else hidden_size
        self.proj = nn.Linear(feature_dim, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, k, H) when pooled; (B, N, D) -> (B, N, H) otherwise."""
        expected_dims = 2 if self.pooled else 3
        if features.dim() != expected_dims or features.shape[-1] != self.feature_dim:
            layout = "(B, D)" if self.pooled else "(B, N, D)"
            raise ValueError(
                f"projector expects {layout} features with D={self.feature_dim}, got shape {tuple(features.shape)}"
            )
        features = features.to(self.proj.weight.dtype)
        if self.input_scale != 1.0:
            features = features * self.input_scale
        projected = self.dropout(self.proj(features))  # (B, k*H) or (B, N, H); dropout on the prefix, as LiMBeR
        if self.pooled:
            return projected.view(features.shape[0], self.num_prefix_tokens, self.hidden_size)  # (B, k, H)
        return projected  # (B, N, H)

    def extra_repr(self) -> str:
        return f"pooled={self.pooled}, num_prefix_tokens={self.num_prefix_tokens}"
