"""The self-supervised image encoder (the role BEiT plays in LiMBeR): model, checkpoint format.

The backbone is a small timm ResNet created with `pretrained=False` (we never hand-write its
blocks): the resnet18 family cut to one BasicBlock per stage with widths 32-64-128-256 and
output stride 16 (1.2 M parameters). A 64 px shapes-world image gives a 256-d pooled feature
and a 4x4 grid. For training,
`SimCLRModel` adds the SimCLR projection head (Linear-BN-ReLU-Linear) that NT-Xent is computed
on; the head is thrown away afterwards, as in SimCLR (features before the head transfer better).
Training lives in `vlbridge.training.ssl`.

Checkpoint = a folder:
    DIR/model.safetensors   backbone weights (no head)
    DIR/config.json         {"format": "vlbridge-ssl-v1", "model": SSLModelConfig fields, "training": {...}}
written weights first and config last, each atomically, so a folder with config.json is complete.
`vlbridge.models.registry.build_encoder("ssl:DIR")` loads it through `load_backbone`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlbridge.config import from_dict
from vlbridge.errors import UserError
from vlbridge.models.encoders import RANDOM_INIT_SEED

SSL_FORMAT = "vlbridge-ssl-v1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class SSLModelConfig:
    """Architecture and input pipeline of the self-supervised backbone."""

    timm_name: str = "resnet18"  # timm architecture family (created with pretrained=False, no classifier)
    # extra timm.create_model arguments: one block per stage, half-width stages and stem (resnet18
    # is 2-2-2-2 blocks of 64-128-256-512) for CPU speed, and output stride 16 so a 64 px image
    # keeps a 4x4 grid instead of 2x2
    timm_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32, "output_stride": 16}
    )
    image_size: int = 64  # input side in pixels (the shapes world's native size)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # RGB normalisation mean (0..1 scale)
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # RGB normalisation std
    projection_hidden: int = 512  # hidden width of the SimCLR projection head
    projection_dim: int = 128  # output width of the projection head (the NT-Xent space)


def create_backbone(config: SSLModelConfig, seed: int = RANDOM_INIT_SEED) -> torch.nn.Module:
    """The timm backbone of `config`, initialised from `seed` (no classifier: num_classes=0)."""
    import timm

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.timm_kwargs.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return timm.create_model(config.timm_name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"cannot build timm:{config.timm_name} with {config.timm_kwargs}: {err}") from err


class SimCLRModel(torch.nn.Module):
    """Backbone + projection head; forward gives L2-normalised projections for NT-Xent."""

    def __init__(self, config: SSLModelConfig, seed: int = RANDOM_INIT_SEED):
        super().__init__()
        self.backbone = create_backbone(config, seed)
        width = self.backbone.num_features
        self.head = torch.nn.Sequential(
            torch.nn.Linear(width, config.projection_hidden),
            torch.nn.BatchNorm1d(config.projection_hidden),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(config.projection_hidden, config.projection_dim),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.backbone(pixel_values)  # (B, D) pooled, pre-classifier
        return F.normalize(self.head(features), dim=-1)  # (B, projection_dim)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view must pick its partner among the other 2B-1 views.

    z1, z2: (B, P) L2-normalised projections of two augmentations of the same B images.
    Mean over all 2B anchors of -log softmax(sim / t)[partner], self-similarity excluded.
    """
    batch = z1.shape[0]
    z = torch.cat([z1, z2])  # (2B, P)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)]).to(z.device)  # (2B,)
    return F.cross_entropy(logits, partner)


def save_checkpoint(directory: Path, backbone: torch.nn.Module, config: SSLModelConfig, training: dict) -> Path:
    """Write DIR/model.safetensors then DIR/config.json (atomic each); returns DIR."""
    from vlbridge.io import atomic_save_safetensors, atomic_write_json

    directory = Path(directory)
    atomic_save_safetensors(directory / WEIGHTS_FILE, backbone.state_dict(), metadata={"format": SSL_FORMAT})
    meta = {"format": SSL_FORMAT, "model": asdict(config), "training": training}
    atomic_write_json(directory / CONFIG_FILE, meta, sort_keys=True)
    return directory


def read_config(directory: Path) -> tuple[SSLModelConfig, dict]:
    """(model config, training info) of a checkpoint folder; UserError if it is not one."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"ssl:{directory} is not a self-supervised checkpoint (no {CONFIG_FILE}); make one with `vlbridge train ssl --out DIR`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from err
    if meta.get("format") != SSL_FORMAT:
        raise UserError(f"{path} has format {meta.get('format')!r}, expected {SSL_FORMAT!r}")
    return from_dict(SSLModelConfig, meta["model"]), meta.get("training", {})


def load_backbone(directory: Path, random_init: bool = False) -> tuple[torch.nn.Module, SSLModelConfig]:
    """The trained backbone of a checkpoint folder (eval mode), or with random_init the same
    architecture from the fixed seed."""
    from safetensors.torch import load_file

    config, _ = read_config(directory)
    backbone = create_backbone(config)
    if not random_init:
        weights = Path(directory) / WEIGHTS_FILE
        if not weights.is_file():
            raise UserError(f"ssl:{directory} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
        backbone.load_state_dict(load_file(str(weights)), strict=True)
    return backbone.eval(), config
