"""CLIP models: build open_clip architectures by name and load CLIPs from disk as `ClipBundle`s.

Architectures come from open_clip (ModifiedResNet / ViT image towers, causal text transformer);
vlbridge only adds small CPU-sized configs, registered from `model_configs/*.json` with
open_clip's `add_model_config` (see `list_architectures()`):
    vl-tiny-rn   ModifiedResNet (width 16, attention pooling) + 2-layer text transformer, 64 px,
                 embed 64, context 32: the default of `vlbridge train clip` (~80-90% zero-shot on
                 the shapes world after ~100k pairs)
    vl-tiny-vit  ViT (patch 8, width 64, 4 layers) + the same text tower
    vl-micro-rn / vl-micro-vit   32 px, one layer each side: smoke tests only

    create_clip("vl-tiny-rn")             -> randomly initialised CLIP + eval transform + tokenizer
    load_clip("runs/clip")                 -> a vlbridge run dir or checkpoint file (CLIP or LiT)
    load_clip("ViT-B-32.pt")               -> an OpenAI TorchScript / state-dict file (arch inferred)
    load_clip("open_clip.bin", arch="RN50") -> an open_clip state dict (arch names the config)
    load_clip("hf_clip_dir/")              -> a HF transformers CLIPModel directory

Nothing is ever downloaded: every loader reads local files only. A vlbridge run dir holds
`open_clip_config.json` ({"model_cfg", "preprocess_cfg"}, open_clip's own local-dir format, so
`open_clip.create_model("local-dir:RUN")` reads it too) + `model.safetensors`; LiT runs hold
`lit_config.json` instead (see `vlbridge.models.lit`).
"""

from __future__ import annotations

import copy
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Sequence

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from safetensors.torch import load_file, save_file

from vlbridge.errors import UserError
from vlbridge.models.bundle import ClipBundle

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("model_configs")  # vlbridge's tiny open_clip configs
DEFAULT_ARCH = "vl-tiny-rn"  # the tiny CLIP that `vlbridge train clip` builds by default
WEIGHTS_FILE = "model.safetensors"  # final weights in a run dir
OPENCLIP_CONFIG_FILE = "open_clip_config.json"  # {"model_cfg", "preprocess_cfg"} of an open_clip run
LIT_CONFIG_FILE = "lit_config.json"  # written by vlbridge.models.lit for locked-text runs
SPEC_HELP = (
    "expected a vlbridge CLIP run dir or checkpoint file, an open_clip/OpenAI checkpoint file "
    "(.pt/.bin/.pth/.safetensors, with --arch for open_clip state dicts), or a HF CLIPModel directory"
)

NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # OpenAI/TorchScript extras

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
    run_dir.mkdir(parents=True, exist_ok=True)
    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(model))
    atomic_save_safetensors(model.state_dict(), run_dir / WEIGHTS_FILE)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    atomic_write_text(run_dir / OPENCLIP_CONFIG_FILE, json.dumps(config, indent=2, default=list))
    return run_dir / WEIGHTS_FILE


def atomic_save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------ loading


def load_clip(spec: str | Path, device: str | torch.device = "cpu", arch: str | None = None) -> ClipBundle:
    """Load a CLIP from a local path (see the module docstring for what `spec` may be)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"CLIP {spec!s} does not exist; {SPEC_HELP}")
    if path.is_dir():
        return _load_dir(path, device, arch)
    return _load_file(path, device, arch)


def _load_dir(path: Path, device, arch: str | None) -> ClipBundle:
    if (path / LIT_CONFIG_FILE).is_file():
        from vlbridge.models.lit import load_lit_run

        return load_lit_run(path, device)
    if (path / OPENCLIP_CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return _load_openclip_dir(path, device)
    if _is_hf_clip_dir(path):
        return load_hf_clip(path, device)
    from vlbridge.training.checkpoint import find_checkpoint

    checkpoint = find_checkpoint(path, "latest")
    if checkpoint is not None:
        return _load_file(checkpoint, device, arch)
    raise UserError(f"directory {path} holds no CLIP weights ({WEIGHTS_FILE}, checkpoints/ or a HF config.json); {SPEC_HELP}")


def _is_hf_clip_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "clip"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _load_openclip_dir(path: Path, device) -> ClipBundle:
    config = json.loads((path / OPENCLIP_CONFIG_FILE).read_text(encoding="utf-8"))
    model = model_from_config(config["model_cfg"])
    open_clip.set_model_preprocess_cfg(model, merge_preprocess_dict(PreprocessCfg(), config.get("preprocess_cfg", {})))
    _load_state_strict(model, load_file(str(path / WEIGHTS_FILE)), path / WEIGHTS_FILE)
    return openclip_bundle(model.to(device), config["model_cfg"], f"vlbridge:{path}", device)


def _load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"weights in {where} do not fit the model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _load_file(path: Path, device, arch: str | None) -> ClipBundle:
    if path.suffix == ".safetensors":
        return _load_openclip_state_file(path, device, arch)
    if _is_torchscript(path):
        return _load_openclip_state_file(path, device, arch)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain state dict: maybe a vlbridge checkpoint (pickled RNG state)
        payload = None
    if payload is None or (isinstance(payload, dict) and "model_spec" in payload):
        return _load_vlbridge_checkpoint(path, device)
    if not isinstance(payload, dict):
        raise UserError(f"{path} holds a {type(payload).__name__}, not a state dict; {SPEC_HELP}")
    return _load_openclip_state_file(path, device, arch)


def _load_vlbridge_checkpoint(path: Path, device) -> ClipBundle:
    from vlbridge.training.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    spec = state.get("model_spec")
    if not isinstance(spec, dict) or "model" not in state:
        raise UserError(f"{path} is a checkpoint without a CLIP model ('model_spec' and 'model' entries); {SPEC_HELP}")
    name = f"vlbridge:{path}@step-{state['step']}"
    if spec.get("kind") == "lit":
        from vlbridge.models.lit import lit_from_spec

        return lit_from_spec(spec, state["model"], name, device)
    model = model_from_config(spec["model_cfg"])
    _load_state_strict(model, state["model"], path)
    return openclip_bundle(model.to(device), spec["model_cfg"], name, device)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """State dict of a TorchScript archive or a torch/safetensors file (open_clip's reader)."""
    if _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = open_clip.factory.load_state_dict(str(path))  # unwraps "state_dict", strips "module."
    return {k: v for k, v in state.items() if k not in NOT_WEIGHTS}


def _load_openclip_state_file(path: Path, device, arch: str | None) -> ClipBundle:
    if arch is None:
        return _load_openai_file(path, device)
    model_cfg = architecture_config(arch)
    model = model_from_config(model_cfg)
    try:
        if _is_torchscript(path):
            model.load_state_dict(_read_state_dict(path), strict=True)
        else:
            open_clip.load_checkpoint(model, str(path), strict=True)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit architecture {arch!r}: {one_line(err)}") from err
    return openclip_bundle(model.to(device), model_cfg, f"open_clip:{arch}@{path}", device)


def _load_openai_file(path: Path, device) -> ClipBundle:
    """OpenAI-format CLIP (TorchScript archive or state dict): open_clip infers the architecture.

    open_clip's builder assumes OpenAI conventions (QuickGELU, 64-d attention heads) and rounds
    weights through fp16; the exact fp32 values are loaded again afterwards.
    """
    try:
        state = _read_state_dict(path)
        model = open_clip.model.build_model_from_openai_state_dict(dict(state), cast_dtype=torch.float32)
        model.float().load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, AttributeError, TypeError, IndexError, ValueError) as err:
        raise UserError(
            f"cannot infer a CLIP architecture from {path} ({type(err).__name__}: {one_line(err)}); "
            "pass the open_clip architecture name (--arch) for open_clip state dicts"
        ) from err
    open_clip.set_model_preprocess_cfg(model, merge_preprocess_dict(PreprocessCfg(), {"size": model.visual.image_size}))
    model_cfg = {"text_cfg": {"context_length": model.context_length}}
    return openclip_bundle(model.to(device), model_cfg, f"openai:{path}", device)


# ------------------------------------------------------------------------------------ HF CLIPModel


class HFClipModel(torch.nn.Module):
    """A transformers `CLIPModel` behind open_clip's interface (encode_image / encode_text / logit_scale)."""

    def __init__(self, hf_model: torch.nn.Module):
        super().__init__()
        self.hf_model = hf_model  # transformers CLIPModel
        self.eos_token_id = hf_model.config.text_config.eos_token_id  # ends every tokenized caption

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.hf_model.logit_scale

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E) = CLIPModel.get_image_features."""
        return _pooled(self.hf_model.get_image_features(pixel_values=pixel_values))

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded ids -> (B, E) = CLIPModel.get_text_features with the tokenizer's mask.

        The mask covers every position up to the first end-of-text token (the pad id may equal it).
        """
        is_eos = (input_ids == self.eos_token_id).long()  # (B, L)
        seen_before = torch.cumsum(is_eos, dim=1) - is_eos  # (B, L) end tokens strictly before
        attention_mask = (seen_before == 0).long()  # (B, L)
        return _pooled(self.hf_model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _pooled(output) -> torch.Tensor:
    """transformers >= 5 returns a ModelOutput whose pooler_output holds the projected features."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFClipTokenizer:
    """texts -> (B, L) LongTensor padded to the text tower's length, as CLIPModel takes them."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer  # transformers CLIP tokenizer loaded from the model dir
        self.context_length = context_length  # max_position_embeddings of the text tower

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"].long()


class HFImagePreprocess:
    """PIL RGB -> (3, H, W) with the directory's CLIP image processor (resize, crop, normalise)."""

    def __init__(self, processor):
        self.processor = processor  # transformers CLIPImageProcessor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_hf_clip(path: str | Path, device: str | torch.device = "cpu") -> ClipBundle:
    """A HF `CLIPModel` directory (config.json + weights + tokenizer + preprocessor_config.json)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    path = Path(path)
    try:
        hf_model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load HF CLIPModel directory {path}: {one_line(err)}") from err
    model = HFClipModel(hf_model).to(device).eval()
    context_length = hf_model.config.text_config.max_position_embeddings
    return ClipBundle(model, HFImagePreprocess(processor), HFClipTokenizer(tokenizer, context_length), f"hf:{path}", torch.device(device))
