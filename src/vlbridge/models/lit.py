"""Locked-text tuning (LiT): a trainable open_clip image tower against a frozen sentence encoder.

The text side is a pretrained HF encoder (by default the embedded all-MiniLM-L6-v2, found with
`vlbridge.assets.minilm_dir()`; any directory AutoModel/AutoTokenizer read offline works) whose
token states are mean-pooled over the attention mask and L2-normalised exactly as
sentence-transformers does for that model; a trainable linear map takes the sentence embedding
to the CLIP embedding size. The image tower is any open_clip vision config (by architecture name).

    model, tokenizer, spec = build_lit("vl-tiny-vit")  # spec = what to save to rebuild it
    bundle = create_lit("vl-tiny-vit")            # ClipBundle (eval transform + padded tokenizer)

`LockedTextCLIP` offers encode_image / encode_text / logit_scale like open_clip's CLIP, and its
forward returns open_clip's output dict, so the CLIP training loop and loss take it unchanged.
Run dirs hold `lit_config.json` (the spec) + `model.safetensors` (trainable weights only: the
frozen text encoder is reloaded from its directory).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vlbridge.errors import UserError, one_line
from vlbridge.io import atomic_save_safetensors, atomic_write_text
from vlbridge.models.bundle import ClipBundle
from vlbridge.models.clip import LIT_CONFIG_FILE, WEIGHTS_FILE, architecture_config, eval_transform

DEFAULT_CONTEXT_LENGTH = 32  # tokens per caption given to the frozen text encoder
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature


class LockedTextCLIP(nn.Module):
    """Trainable image tower + frozen sentence encoder + trainable text projection."""

    def __init__(self, visual: nn.Module, text_model: nn.Module, embed_dim: int, pad_token_id: int):
        super().__init__()
        self.visual = visual  # open_clip vision tower: (B, 3, H, W) -> (B, embed_dim)
        self.text_model = text_model.eval().requires_grad_(False)  # frozen HF encoder
        self.pad_token_id = pad_token_id  # id the tokenizer pads with; masked out of the mean
        self.text_projection = nn.Linear(text_model.config.hidden_size, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))  # log of the temperature
        self.output_dict = True  # forward returns open_clip's dict

    def train(self, mode: bool = True) -> "LockedTextCLIP":
        super().train(mode)
        self.text_model.eval()  # frozen: dropout stays off
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)  # (B, E)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def sentence_embedding(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) padded ids -> (B, H) mean-pooled, L2-normalised sentence embedding (frozen)."""
        attention_mask = (input_ids != self.pad_token_id).long()  # (B, L)
        states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        weights = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, H)
        return F.normalize(pooled, p=2, dim=1)

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text_projection(self.sentence_embedding(input_ids))  # (B, E)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> dict[str, Any]:
        return {
            "image_features": self.encode_image(image, normalize=True) if image is not None else None,
            "text_features": self.encode_text(text, normalize=True) if text is not None else None,
            "logit_scale": self.logit_scale.exp(),
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen text encoder (what a LiT run saves)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text_model.")}


class PaddedTokenizer:
    """texts -> (B, context_length) LongTensor padded with the tokenizer's pad id."""

    def __init__(self, tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.tokenizer = tokenizer  # HF tokenizer of the frozen text encoder
        self.context_length = context_length  # fixed length, so batches from any source stack

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"].long()


def resolve_text_dir(text_dir: str | Path | None) -> Path:
    """The frozen text encoder's directory: `text_dir`, or the embedded all-MiniLM-L6-v2."""
    if text_dir is None:
        from vlbridge.assets import minilm_dir

        return minilm_dir()
    path = Path(text_dir).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"LiT text encoder directory {path} has no config.json (expected a HF model saved with save_pretrained)")
    return path


def load_text_encoder(text_dir: str | Path | None):
    """(frozen HF AutoModel, AutoTokenizer) from a local directory; never downloads."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_text_dir(text_dir)
    try:
        text_model = AutoModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the LiT text encoder from {path}: {one_line(err)}") from err
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer in {path} has no pad token; LiT needs one to mask padding")
    return text_model, tokenizer


def build_lit(
    arch: str,
    text_dir: str | Path | None = None,
    image_size: int | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    device: str | torch.device = "cpu",
) -> tuple[LockedTextCLIP, PaddedTokenizer, dict[str, Any]]:
    """A new LiT model (random image tower + projection), its tokenizer, and the spec that rebuilds it."""
    model_cfg = architecture_config(arch, image_size)
    spec = {
        "kind": "lit",
        "arch": arch,
        "embed_dim": model_cfg["embed_dim"],
        "vision_cfg": model_cfg["vision_cfg"],
        "quick_gelu": model_cfg.get("quick_gelu", False),
        "text_dir": None if text_dir is None else str(Path(text_dir).expanduser().resolve()),
        "context_length": context_length,
    }
    model, tokenizer = _model_from_spec(spec)
    return model.to(device), tokenizer, spec


def _model_from_spec(spec: dict[str, Any]):
    text_model, tokenizer = load_text_encoder(spec["text_dir"])
    # open_clip's own vision-tower builder (the same call its CLIP class makes)
    visual = open_clip.model._build_vision_tower(spec["embed_dim"], spec["vision_cfg"], spec["quick_gelu"], None)
    open_clip.set_model_preprocess_cfg(visual, {"size": visual.image_size, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD})
    model = LockedTextCLIP(visual, text_model, spec["embed_dim"], tokenizer.pad_token_id)
    return model, PaddedTokenizer(tokenizer, spec["context_length"])


def create_lit(arch: str, text_dir: str | Path | None = None, image_size: int | None = None, device="cpu") -> ClipBundle:
    """A new LiT model as a ClipBundle."""
    model, tokenizer, _ = build_lit(arch, text_dir, image_size, device=device)
    return ClipBundle(model.eval(), eval_transform(model), tokenizer, f"lit:{arch}(random)", torch.device(device))


def lit_from_spec(spec: dict[str, Any], state: dict[str, torch.Tensor], name: str, device) -> ClipBundle:
    """Rebuild a LiT model from its spec and trainable weights (checkpoint or run dir)."""
    model, tokenizer = _model_from_spec(spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text_model.")]
    if missing or unexpected:
        raise UserError(f"LiT weights for {name} do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model = model.to(device).eval()
    return ClipBundle(model, eval_transform(model), tokenizer, name, torch.device(device))


def save_lit_run(model: LockedTextCLIP, spec: dict[str, Any], run_dir: str | Path) -> Path:
    """Write `model.safetensors` (trainable weights) + `lit_config.json` into `run_dir`."""
    run_dir = Path(run_dir)
    atomic_save_safetensors(run_dir / WEIGHTS_FILE, model.trainable_state_dict())
    atomic_write_text(run_dir / LIT_CONFIG_FILE, json.dumps(spec, indent=2))
    return run_dir / WEIGHTS_FILE


def load_lit_run(run_dir: str | Path, device="cpu") -> ClipBundle:
    """A LiT run dir written by `save_lit_run`."""
    run_dir = Path(run_dir)
    spec = json.loads((run_dir / LIT_CONFIG_FILE).read_text(encoding="utf-8"))
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"LiT run {run_dir} has {LIT_CONFIG_FILE} but no {WEIGHTS_FILE}")
    return lit_from_spec(spec, load_file(str(run_dir / WEIGHTS_FILE)), f"vlbridge-lit:{run_dir}", device)
