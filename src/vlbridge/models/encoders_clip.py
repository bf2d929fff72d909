"""CLIP image towers as `ImageEncoder`s: pooled CLIP embedding or the grid under it.

Built from a `ClipBundle` (whatever `vlbridge.models.clip_loading.load_clip` loaded: a vlbridge run,
an open_clip / OpenAI checkpoint, a HF CLIPModel directory) by `vlbridge.models.registry` for the
specs "clip:PATH" (pooled) and "clip-grid:PATH" (grid), preprocessing the bundle's; or from a bare
image tower (`vlbridge.models.tower`, spec "tower:DIR") with its own eval transform.

What the features are:
- pooled: the CLIP image embedding `encode_image(x)` (after attention pooling / the ViT
  projection), NOT L2-normalised; D = the CLIP embed_dim.
- grid, open_clip ModifiedResNet: the final feature map before attention pooling (output of
  layer4), h*w tokens of width 32*width (LiMBeR's RN50x16 grid: 12x12 of 3072 at 384 px).
- grid, open_clip VisionTransformer: the patch tokens of the last block *after* `ln_post`
  (the LayerNorm CLIP applies before its projection; open_clip returns the same tokens with
  `output_tokens=True`), class token dropped, no projection: (H/ps)*(W/ps) tokens of the
  transformer width. We keep ln_post so the tokens are on the scale of the pooled feature.
- grid, open_clip timm tower: the trunk's `forward_features`, prefix tokens dropped.
- grid, HF CLIP vision model (inside a HF-backed bundle): `last_hidden_state` without CLS,
  as for `hf:` directories (no post-layernorm).
"""

from __future__ import annotations

import torch

from vlbridge.errors import UserError
from vlbridge.models.bundle import ClipBundle
from vlbridge.models.encoders import ImageEncoder, reinitialize_, tokens_from_map


class ClipImageEncoder(ImageEncoder):
    """The image side of a CLIP; `grid=True` gives tokens instead of the pooled embedding."""

    def __init__(self, bundle: ClipBundle | None, grid: bool = False, random_init: bool = False, *,
                 tower: torch.nn.Module | None = None, preprocess=None, kind: str = "clip"):
        """From a bundle (spec "clip:"), or from a bare open_clip image `tower` and its `preprocess` ("tower:")."""
        if bundle is not None:
            tower, family = _image_tower(bundle.model)
            preprocess = bundle.preprocess
        else:
            family = "timm" if hasattr(tower, "trunk") else "open_clip"
        name = ("random:" if random_init else "") + f"{kind}:{type(tower).__name__}" + (":grid" if grid else "")
        super().__init__(name, pooled=not grid, preprocess=preprocess)
        self.tower = tower
        self.family = family  # "open_clip" | "timm" | "hf": how to get the grid
        if random_init:
            reinitialize_(self.tower)
        if grid and family == "hf":
            self.hf_vision = _find_hf_vision(self.tower)
        self._finalize()

    def fingerprint_modules(self) -> list[torch.nn.Module]:
        return [self.tower]

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            if self.family == "hf":
                return self.tower.encode_image(pixel_values)  # (B, E)
            return self.tower(pixel_values)  # (B, E)
        return self._grid(pixel_values)

    def _grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = self.tower
        if self.family == "hf":
            hidden = self.hf_vision(pixel_values=pixel_values).last_hidden_state  # (B, 1+N, W)
            return hidden[:, 1:]  # (B, N, W)
        if self.family == "timm":
            trunk = tower.trunk
            tokens = trunk.forward_features(pixel_values)
            if tokens.ndim == 4:
                return tokens_from_map(tokens, channels_last=getattr(trunk, "output_fmt", "NCHW") == "NHWC")
            return tokens[:, getattr(trunk, "num_prefix_tokens", 0) :]  # (B, N, W)
        if _is_vit(tower):
            out = tower.forward_intermediates(
                pixel_values, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
            )
            return out["image_intermediates"][-1]  # (B, N, W): last block, ln_post, no class token
        out = tower.forward_intermediates(pixel_values, indices=1, intermediates_only=True)
        return tokens_from_map(out["image_intermediates"][-1])  # (B, h*w, 32*width): layer4 output


def _image_tower(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module that encodes images, and its family (how its grid is reached)."""
    visual = getattr(model, "visual", None)
    if isinstance(visual, torch.nn.Module):
        if hasattr(visual, "trunk"):
            return visual, "timm"
        if hasattr(visual, "forward_intermediates"):
            return visual, "open_clip"
        raise UserError(f"CLIP image tower {type(visual).__name__} is not supported (expected open_clip ModifiedResNet/ViT)")
    if hasattr(model, "encode_image"):
        return model, "hf"
    raise UserError(f"{type(model).__name__} is not a CLIP model: it has neither .visual nor .encode_image")


def _is_vit(tower: torch.nn.Module) -> bool:
    return hasattr(tower, "class_embedding") and hasattr(tower, "ln_post")


def _find_hf_vision(model: torch.nn.Module) -> torch.nn.Module:
    """The HF CLIP vision transformer inside a HF-backed bundle (for its last_hidden_state)."""
    for module in model.modules():
        if type(module).__name__ in ("CLIPVisionTransformer", "CLIPVisionModel"):
            return module
    raise UserError(f"no HF CLIP vision transformer found inside {type(model).__name__}; grid features unavailable")
