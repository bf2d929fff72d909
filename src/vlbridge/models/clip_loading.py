"""Load a CLIP from local files as a `ClipBundle`, whatever format it was saved in.

    load_clip("runs/clip")                 -> a vlbridge run dir or checkpoint file (CLIP or LiT)
    load_clip("ViT-B-32.pt")               -> an OpenAI TorchScript / state-dict file (arch inferred)
    load_clip("open_clip.bin", arch="RN50") -> an open_clip state dict (arch names the config)
    load_clip("hf_clip_dir/")              -> a HF transformers CLIPModel directory

Nothing is ever downloaded: every loader reads local files only. Building and saving live in
`vlbridge.models.clip` (open_clip) and `vlbridge.models.lit` (locked text); this module sits
above both and dispatches on what it finds on disk.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from safetensors.torch import load_file

from vlbridge.checkpoint import find_checkpoint, load_checkpoint
from vlbridge.errors import UserError, one_line
from vlbridge.models.bundle import ClipBundle
from vlbridge.models.clip import (
    LIT_CONFIG_FILE,
    OPENCLIP_CONFIG_FILE,
    WEIGHTS_FILE,
    architecture_config,
    model_from_config,
    openclip_bundle,
)
from vlbridge.models.lit import lit_from_spec, load_lit_run

log = logging.getLogger(__name__)

SPEC_HELP = (
    "expected a vlbridge CLIP run dir or checkpoint file, an open_clip/OpenAI checkpoint file "
    "(.pt/.bin/.pth/.safetensors, with --arch for open_clip state dicts), or a HF CLIPModel directory"
)
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # OpenAI/TorchScript extras


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
        return load_lit_run(path, device)
    if (path / OPENCLIP_CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return _load_openclip_dir(path, device)
    if _is_hf_clip_dir(path):
        return load_hf_clip(path, device)
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
    state = load_checkpoint(path)
    spec = state.get("model_spec")
    if not isinstance(spec, dict) or "model" not in state:
        raise UserError(f"{path} is a checkpoint without a CLIP model ('model_spec' and 'model' entries); {SPEC_HELP}")
    name = f"vlbridge:{path}@step-{state['step']}"
    if spec.get("kind") == "lit":
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
