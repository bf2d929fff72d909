"""Image towers on their own: the open_clip vision tower of a CLIP architecture, saved and loaded
without a text side, whatever objective trained it.

The study's supervision ladder trains one backbone four ways (random init, self-supervised,
class labels, caption contrast) and reads every rung's features from the same layer. The
backbone is the image tower of a CLIP architecture (`vl-tiny-rn`: open_clip's ModifiedResNet
with attention pooling); its output — the CLIP image embedding for the contrastive rung — is the
feature for every rung. A tower run folder holds:

    tower.json          {"format": "vlbridge-tower-v1", "arch", "model_cfg", "preprocess_cfg", "objective", ...}
    tower.safetensors   the vision tower's weights

and is read by the encoder spec `tower:DIR` (`random:tower:DIR` re-initialises it).
`build_tower(arch, seed)` makes the tower exactly as a CLIP of `arch` built after
`torch.manual_seed(seed)` makes its image side, so a CLIP and a labels-trained tower that share
a seed start from the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from vlbridge.errors import UserError
from vlbridge.io import atomic_save_safetensors, atomic_write_json
from vlbridge.models.clip import architecture_config, eval_transform

TOWER_FORMAT = "vlbridge-tower-v1"
TOWER_CONFIG = "tower.json"
TOWER_WEIGHTS = "tower.safetensors"


def tower_from_config(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """The open_clip image tower of a CLIP model config (random init from the current RNG state)."""
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    tower = open_clip.model._build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu, None)
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), {"size": tower.image_size})
    open_clip.set_model_preprocess_cfg(tower, preprocess_cfg)
    return tower


def build_tower(arch: str, seed: int, image_size: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(tower, model config): `arch`'s image tower initialised as a CLIP of `arch` seeded with `seed` is."""
    model_cfg = architecture_config(arch, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tower_from_config(model_cfg), model_cfg


def save_tower(tower: torch.nn.Module, model_cfg: dict[str, Any], folder: str | Path, objective: str, **info: Any) -> Path:
    """Write tower.safetensors then tower.json (each atomically) into `folder`; returns the folder."""
    folder = Path(folder)
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(tower))
    atomic_save_safetensors(folder / TOWER_WEIGHTS, tower.state_dict(), metadata={"format": TOWER_FORMAT})
    config = {"format": TOWER_FORMAT, "model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "objective": objective,
              **info}
    atomic_write_json(folder / TOWER_CONFIG, config, default=list)
    return folder


def read_tower_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / TOWER_CONFIG
    if not path.is_file():
        raise UserError(f"{folder} is not an image-tower run: expected {TOWER_CONFIG} and {TOWER_WEIGHTS} in it")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != TOWER_FORMAT:
        raise UserError(f"{path} is not a {TOWER_FORMAT} file")
    return config


def load_tower(folder: str | Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(tower in eval mode, its eval transform, tower.json) of a tower run folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_tower_config(folder)
    tower = tower_from_config(config["model_cfg"])
    open_clip.set_model_preprocess_cfg(tower, merge_preprocess_dict(PreprocessCfg(), config.get("preprocess_cfg", {})))
    try:
        state = load_file(str(Path(folder) / TOWER_WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise UserError(f"cannot read {Path(folder) / TOWER_WEIGHTS}: {err}") from err
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{folder}: weights do not fit the tower ({len(missing)} missing, {len(unexpected)} unexpected)")
    return tower.eval(), eval_transform(tower), config
