"""CLIP models: build open_clip architectures by name, their transforms and tokenizer, and save runs.

Architectures come from open_clip (ModifiedResNet / ViT image towers, causal text transformer);
vlbridge only adds small CPU-sized configs, registered from `model_configs/*.json` with
open_clip's `add_model_config` (see `list_architectures()`):
    vl-tiny-rn   ModifiedResNet (width 16, attention pooling) + 2-layer text transformer, 64 px,
                 embed 64, context 32: the default of `vlbridge train clip` (~80-90% zero-shot on
                 the shapes world after ~100k pairs)
    vl-tiny-vit  ViT (patch 8, width 64, 4 layers) + the same text tower
    vl-micro-rn / vl-micro-vit   32 px, one layer each side: smoke tests only

    create_clip("vl-tiny-rn")             -> randomly initialised CLIP + eval transform + tokenizer
    save_openclip_run(model, cfg, run_dir) -> model.safetensors + open_clip_config.json

A vlbridge run dir holds `open_clip_config.json` ({"model_cfg", "preprocess_cfg"}, open_clip's
own local-dir format, so `open_clip.create_model("local-dir:RUN")` reads it too) +
`model.safetensors`; LiT runs hold `lit_config.json` instead (see `vlbridge.models.lit`).
Loading any CLIP from disk (run dirs, checkpoints, open_clip / OpenAI files, HF directories)
lives in `vlbridge.models.clip_loading`.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from vlbridge.errors import UserError
from vlbridge.io import atomic_save_safetensors, atomic_write_text
from vlbridge.models.bundle import ClipBundle

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("model_configs")  # vlbridge's tiny open_clip configs
DEFAULT_ARCH = "vl-tiny-rn"  # the tiny CLIP that `vlbridge train clip` builds by default
WEIGHTS_FILE = "model.safetensors"  # final weights in a run dir
OPENCLIP_CONFIG_FILE = "open_clip_config.json"  # {"model_cfg", "preprocess_cfg"} of an open_clip run
LIT_CONFIG_FILE = "lit_config.json"  # written by vlbridge.models.lit for locked-text runs
_registered = False


def register_model_configs() -> None:
    """Add vlbridge's `model_configs/*.json` to open_clip's registry (once per process)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def list_architectures() -> list[str]:
    """Every architecture name `create_clip` accepts (open_clip's built-ins + vlbridge's tiny ones)."""
    register_model_configs()
    return open_clip.list_models()


def architecture_config(arch: str, image_size: int | None = None) -> dict[str, Any]:
    """The open_clip model config dict of `arch` (a copy), with the image size overridden if given."""
    register_model_configs()
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        tiny = ", ".join(name for name in list_architectures() if name.startswith("vl-"))
        raise UserError(f"unknown CLIP architecture {arch!r}; expected an open_clip name (RN50, ViT-B-32, ...) or {tiny}")
    if image_size is not None:
        model_cfg["vision_cfg"]["image_size"] = image_size
    return model_cfg


def model_from_config(model_cfg: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build an open_clip CLIP / CustomTextCLIP (random init) from a model config dict."""
    cfg = copy.deepcopy(model_cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False  # never download tower weights
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = model_class(**cfg)
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), {"size": model.visual.image_size})
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg)
    return model.to(device)


def eval_transform(model: torch.nn.Module):
    """open_clip's inference transform for `model` (resize, centre crop, normalise)."""
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(model))
    return image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)


def train_transform(model: torch.nn.Module, scale_min: float = 0.9, color_jitter: float | None = None):
    """open_clip's training transform: RandomResizedCrop(scale=(scale_min, 1)) (+ colour jitter), normalise.

    No horizontal flip: captions talk about left and right.
    """
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(model))
    aug = open_clip.AugmentationCfg(scale=(scale_min, 1.0))
    if color_jitter:
        aug.color_jitter = (color_jitter, color_jitter, color_jitter, 0.0)
        aug.color_jitter_prob = 0.8
    return image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=True, aug_cfg=aug)


def openclip_tokenizer(model_cfg: dict[str, Any]):
    """open_clip's BPE tokenizer (vocab ships inside the package) at the text tower's context length."""
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        raise UserError(f"text tower needs the HF tokenizer {text_cfg['hf_tokenizer_name']!r}, which vlbridge cannot fetch offline")
    return open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))


def openclip_bundle(model: torch.nn.Module, model_cfg: dict[str, Any], name: str, device) -> ClipBundle:
    """Wrap an open_clip model (eval mode) with its eval transform and tokenizer."""
    return ClipBundle(model.eval(), eval_transform(model), openclip_tokenizer(model_cfg), name, torch.device(device))


def create_clip(name: str = DEFAULT_ARCH, image_size: int | None = None, device: str | torch.device = "cpu") -> ClipBundle:
    """A randomly initialised open_clip CLIP `name` with its eval transform and tokenizer."""
    model_cfg = architecture_config(name, image_size)
    model = model_from_config(model_cfg, device)
    return openclip_bundle(model, model_cfg, f"open_clip:{name}(random)", device)


# ------------------------------------------------------------------------------------ saving


def save_openclip_run(model: torch.nn.Module, model_cfg: dict[str, Any], run_dir: str | Path) -> Path:
    """Write `model.safetensors` + `open_clip_config.json` into `run_dir` (both atomically)."""
    run_dir = Path(run_dir)
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(model))
    atomic_save_safetensors(run_dir / WEIGHTS_FILE, model.state_dict())
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    atomic_write_text(run_dir / OPENCLIP_CONFIG_FILE, json.dumps(config, indent=2, default=list))
    return run_dir / WEIGHTS_FILE
