"""timm, HF transformers and self-supervised image towers as `ImageEncoder`s.

Built by `vlbridge.models.registry` for the specs "timm:NAME@WEIGHTS_FILE", "hf:DIR" and "ssl:DIR"
(each with an optional ":grid"). Nothing is downloaded: timm models are created with
`pretrained=False` and filled from a local safetensors / torch state-dict file; HF models
load from a local `save_pretrained` directory (`local_files_only=True`).

What the features are:
- timm pooled: `forward_head(forward_features(x), pre_logits=True)` - the pooled,
  pre-classifier feature (global average for ResNets/NF-ResNets, CLS or mean for ViT/BEiT).
- timm grid: `forward_features(x)`: a (B, C, h, w) map becomes h*w tokens; ViT/BEiT token
  sequences lose their `num_prefix_tokens` (CLS / register / distillation tokens).
- timm preprocessing: `resolve_data_config(model=...)` + `create_transform(...)`, i.e. the
  architecture's own eval transform (size, crop_pct, interpolation, mean/std).
- HF (BeitModel, CLIPVisionModel, or any AutoModel vision backbone): pooled = `pooler_output`;
  grid = `last_hidden_state` without the prefix (CLS) tokens. Preprocessing = the directory's
  image processor (preprocessor_config.json). A full CLIPModel directory gives its vision tower.
- ssl: the vlbridge self-supervised backbone (a timm model, `vlbridge.models.ssl`), treated as
  a timm tower with the resize + normalisation stored in its checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from vlbridge.errors import UserError
from vlbridge.models.encoders import RANDOM_INIT_SEED, ImageEncoder, eval_transform, tokens_from_map

log = logging.getLogger(__name__)


class TimmImageEncoder(ImageEncoder):
    """A timm model (classifier removed) as an image encoder."""

    def __init__(self, model: torch.nn.Module, grid: bool, name: str, preprocess: Callable[[Image.Image], torch.Tensor]):
        super().__init__(name + (":grid" if grid else ""), pooled=not grid, preprocess=preprocess)
        self.model = model
        self._finalize()

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(pixel_values)
        if self.pooled:
            return self.model.forward_head(features, pre_logits=True)  # (B, D)
        if features.ndim == 4:
            channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
            return tokens_from_map(features, channels_last)  # (B, h*w, C)
        return features[:, getattr(self.model, "num_prefix_tokens", 0) :]  # (B, N, D)


class HFImageEncoder(ImageEncoder):
    """A HF vision model (BeitModel, CLIPVisionModel, ...) as an image encoder."""

    def __init__(self, model: torch.nn.Module, processor, grid: bool, name: str):
        super().__init__(name + (":grid" if grid else ""), pooled=not grid, preprocess=HFImageProcessorTransform(processor))
        self.model = model
        self._finalize()

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.pooled:
            if getattr(out, "pooler_output", None) is None:
                raise UserError(f"{self.name}: this HF model has no pooler output; use the :grid spec")
            return out.pooler_output.flatten(1)  # (B, D)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:
            return tokens_from_map(hidden)  # (B, h*w, C) for convolutional backbones
        patch = _patch_size(self.model.config)
        n_patches = (pixel_values.shape[2] // patch[0]) * (pixel_values.shape[3] // patch[1])
        return hidden[:, hidden.shape[1] - n_patches :]  # (B, N, D): prefix (CLS) tokens dropped


class HFImageProcessorTransform:
    """PIL RGB -> (3, H, W) float tensor through a HF image processor (picklable)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0].float()

    def __repr__(self) -> str:
        return f"HFImageProcessor({type(self.processor).__name__}, {self.processor.to_json_string()})"


# ------------------------------------------------------------------------------------- builders
def build_timm_encoder(
    name: str, weights: Path | None, grid: bool = False, image_size: int | None = None, random_init: bool = False
) -> TimmImageEncoder:
    """timm architecture `name` with weights from a local file (or seeded random init)."""
    import timm
    import timm.data

    if weights is None and not random_init:
        raise UserError(
            f"timm:{name} needs a local weights file: timm:{name}@WEIGHTS.safetensors "
            f"(nothing is downloaded); use random:timm:{name} for a randomly initialised one"
        )
    model = _create_timm(name)
    if image_size and hasattr(model, "patch_embed"):
        raise UserError(f"timm:{name} has a fixed input size; drop the :{image_size}px option")
    if weights is not None:
        load_timm_weights(model, Path(weights))
    data_config = timm.data.resolve_data_config(model=model)
    if image_size:
        data_config["input_size"] = (3, image_size, image_size)
    preprocess = timm.data.create_transform(**data_config, is_training=False)
    prefix = "random:" if random_init else ""
    return TimmImageEncoder(model, grid, f"{prefix}timm:{name}", preprocess)


def _create_timm(name: str, **kwargs) -> torch.nn.Module:
    """timm.create_model(name, pretrained=False, num_classes=0) under the fixed init seed."""
    import timm

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(f"unknown timm architecture {name!r} (see timm.list_models())") from err
        raise


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file (plain, or under 'state_dict'/'model')."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad file
        raise UserError(f"cannot read weights file {path}: {str(err).splitlines()[0]}") from err
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_timm_weights(model: torch.nn.Module, path: Path) -> None:
    """Load `path` into a headless timm model; the file's classifier weights are ignored."""
    state = read_state_dict(path)
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not any(k.startswith(f"{h}.") for h in heads)]
    if result.missing_keys or unexpected:
        raise UserError(
            f"weights file {path} does not fit timm:{model.pretrained_cfg.get('architecture', '?')}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )


def build_hf_encoder(directory: Path, grid: bool = False, random_init: bool = False) -> HFImageEncoder:
    """A HF vision model directory (save_pretrained) with its image processor."""
    from transformers import AutoImageProcessor

    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(f"hf:{directory} is not a HF model directory (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type", "?")
    model = _load_hf_model(directory, model_type, random_init)
    try:
        processor = AutoImageProcessor.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"hf:{directory} has no usable image processor (preprocessor_config.json): {err}") from err
    prefix = "random:" if random_init else ""
    return HFImageEncoder(model, processor, grid, f"{prefix}hf:{model.config.model_type}")


def _load_hf_model(directory: Path, model_type: str, random_init: bool) -> torch.nn.Module:
    import transformers as tf

    classes = {"beit": tf.BeitModel, "clip_vision_model": tf.CLIPVisionModel, "clip": tf.CLIPVisionModel}
    model_class = classes.get(model_type, tf.AutoModel)
    try:
        if random_init:
            config = tf.AutoConfig.from_pretrained(str(directory), local_files_only=True)
            config = config.vision_config if model_type == "clip" else config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = model_class(config) if model_class is not tf.AutoModel else tf.AutoModel.from_config(config)
        else:
            model = model_class.from_pretrained(str(directory), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load HF model from {directory}: {str(err).splitlines()[0]}") from err
    return model.float()


def _patch_size(config) -> tuple[int, int]:
    patch = getattr(config, "patch_size", None)
    if patch is None:
        raise UserError(f"HF model type {config.model_type} has no patch_size; cannot drop prefix tokens")
    return (patch, patch) if isinstance(patch, int) else tuple(patch)


def build_ssl_encoder(directory: Path, grid: bool = False, random_init: bool = False) -> TimmImageEncoder:
    """The vlbridge self-supervised backbone saved by `vlbridge train ssl --out DIR`."""
    from vlbridge.models.ssl import load_backbone

    backbone, config = load_backbone(Path(directory), random_init=random_init)
    preprocess = eval_transform(config.image_size, config.mean, config.std)
    prefix = "random:" if random_init else ""
    return TimmImageEncoder(backbone, grid, f"{prefix}ssl:{config.timm_name}", preprocess)
