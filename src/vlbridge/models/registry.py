"""Encoder registry: one spec string -> a ready, frozen `ImageEncoder` (with its preprocessing).

Spec strings are what configs, the CLI (`--encoder`) and saved LiMBeR checkpoints store:

    clip:PATH               CLIP image embedding of `vlbridge.models.clip_loading.load_clip(PATH)`
    clip:ARCH@PATH          same, telling load_clip the open_clip architecture of a bare checkpoint
    clip-grid:PATH          CLIP grid tokens (ModifiedResNet final map / ViT patch tokens)
    timm:NAME@WEIGHTS_FILE  timm architecture NAME filled from a local .safetensors/.pth state dict
    hf:DIR                  HF BeitModel / CLIPVisionModel / AutoModel directory (pooler output)
    efficientnet-lite0      the embedded ImageNet-supervised EfficientNet-Lite0 (vlbridge.assets)
    ssl:DIR                 the self-supervised encoder trained by `vlbridge train ssl --out DIR`
    tower:DIR               an image tower run (`vlbridge.models.tower`: the study's supervision ladder)
    random:<spec>           the same architecture, randomly initialised with a fixed seed

Modifiers may follow any spec: ":grid" (grid tokens instead of pooled features) and ":<N>px"
(input size, for size-agnostic convnets: timm CNNs, EfficientNet-Lite0 in multiples of 32),
e.g. "efficientnet-lite0:grid:128px" or "random:timm:resnet10t:grid". Nothing is ever
downloaded. Unknown kinds raise `UserError` listing the known ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vlbridge.errors import UserError
from vlbridge.models.encoders import ImageEncoder

KNOWN_SPECS = (
    "clip:PATH",
    "clip-grid:PATH",
    "timm:NAME@WEIGHTS_FILE",
    "hf:DIR",
    "efficientnet-lite0",
    "ssl:DIR",
    "tower:DIR",
    "random:<spec>",
)
KINDS = ("clip", "clip-grid", "timm", "hf", "efficientnet-lite0", "ssl", "tower")
_SIZE_MODIFIER = re.compile(r"^(\d+)px$")


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec string."""

    kind: str  # one of KINDS, "clip-grid" folded into kind "clip" with grid=True
    target: str  # path / architecture name after "kind:" ("" for efficientnet-lite0)
    grid: bool = False  # grid tokens instead of pooled features
    image_size: int | None = None  # input side from a ":<N>px" modifier (None: the encoder's default)
    random_init: bool = False  # "random:" prefix: same architecture, seeded random weights
    text: str = ""  # the spec as given


def parse_encoder_spec(spec: str) -> EncoderSpec:
    """Split a spec string into its parts; UserError for unknown kinds or a missing target."""
    text = spec.strip()
    rest = text
    random_init = rest.startswith("random:")
    if random_init:
        rest = rest[len("random:") :]
    grid, image_size = False, None
    while ":" in rest:
        head, last = rest.rsplit(":", 1)
        size = _SIZE_MODIFIER.match(last)
        if last in ("grid", "pooled"):
            grid = grid or last == "grid"
        elif size:
            image_size = int(size.group(1))
        else:
            break
        rest = head
    kind, _, target = rest.partition(":")
    if kind not in KINDS:
        raise UserError(f"unknown encoder {spec!r}: expected one of {', '.join(KNOWN_SPECS)} (optionally + ':grid')")
    if kind != "efficientnet-lite0" and not target:
        raise UserError(f"encoder spec {spec!r} needs a target after '{kind}:' (e.g. {kind}:PATH)")
    if kind == "clip-grid":
        kind, grid = "clip", True
    return EncoderSpec(kind, target, grid, image_size, random_init, text)


def build_encoder(spec: str, device: str | torch.device = "cpu") -> ImageEncoder:
    """Build the frozen encoder `spec` names (on CPU, identified, then moved to `device`)."""
    parsed = parse_encoder_spec(spec)
    if parsed.image_size and parsed.kind in ("clip", "hf", "ssl", "tower"):
        raise UserError(f"{parsed.kind} encoders take their input size from their preprocessing; drop ':{parsed.image_size}px'")
    encoder = _BUILDERS[parsed.kind](parsed)
    encoder.spec = parsed.text
    return encoder.to(torch.device(device))


def _build_clip(spec: EncoderSpec) -> ImageEncoder:
    from vlbridge.models.clip_loading import load_clip
    from vlbridge.models.encoders_clip import ClipImageEncoder

    arch, path = None, spec.target
    if "@" in path and not Path(path).exists():
        arch, path = path.split("@", 1)
    bundle = load_clip(path, device="cpu", arch=arch)
    return ClipImageEncoder(bundle, grid=spec.grid, random_init=spec.random_init)


def _build_timm(spec: EncoderSpec) -> ImageEncoder:
    from vlbridge.models.encoders_timm_hf import build_timm_encoder

    name, _, weights = spec.target.partition("@")
    if spec.random_init:
        weights = ""  # random: the same architecture, never the file's weights
    return build_timm_encoder(name, Path(weights) if weights else None, spec.grid, spec.image_size, spec.random_init)


def _build_hf(spec: EncoderSpec) -> ImageEncoder:
    from vlbridge.models.encoders_timm_hf import build_hf_encoder

    return build_hf_encoder(Path(spec.target), spec.grid, spec.random_init)


def _build_efficientnet(spec: EncoderSpec) -> ImageEncoder:
    from vlbridge.models.encoders import build_efficientnet_lite0

    if spec.target:
        raise UserError(f"efficientnet-lite0 takes no target, got {spec.text!r} (modifiers: :grid, :<N>px)")
    return build_efficientnet_lite0(spec.grid, spec.image_size or 224, spec.random_init)


def _build_ssl(spec: EncoderSpec) -> ImageEncoder:
    from vlbridge.models.encoders_timm_hf import build_ssl_encoder

    return build_ssl_encoder(Path(spec.target), spec.grid, spec.random_init)


def _build_tower(spec: EncoderSpec) -> ImageEncoder:
    from vlbridge.models.encoders_clip import ClipImageEncoder
    from vlbridge.models.tower import load_tower

    tower, preprocess, _ = load_tower(spec.target)
    return ClipImageEncoder(None, spec.grid, spec.random_init, tower=tower, preprocess=preprocess, kind="tower")


_BUILDERS = {
    "clip": _build_clip,
    "timm": _build_timm,
    "hf": _build_hf,
    "efficientnet-lite0": _build_efficientnet,
    "ssl": _build_ssl,
    "tower": _build_tower,
}
