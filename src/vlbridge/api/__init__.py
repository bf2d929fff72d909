"""The Python API: trained models and search indexes as objects that load once.

    import vlbridge
    model = vlbridge.load("runs/limber")      # LimberModel: .caption(images), .answer(image, question, shots=...)
    clip = vlbridge.load("runs/clip")         # ClipModel: .embed_images, .embed_texts, .classify(images, labels)
    index = vlbridge.api.SearchIndex.open("runs/index")   # .search(vectors, k)

The CLI, the server (`vlbridge serve`) and notebooks use these same objects. `load` tells the
two kinds apart on disk: a folder with limber.yaml (or model/limber.yaml) is a LiMBeR model;
anything else goes to `load_clip` (vlbridge CLIP runs, open_clip / OpenAI files, HF CLIP dirs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlbridge.api.clip import ClipModel
from vlbridge.api.models import LimberModel, is_limber_dir, read_image
from vlbridge.api.search_index import SearchIndex

__all__ = ["ClipModel", "LimberModel", "SearchIndex", "load", "read_image"]


def load(path: str | Path, device: str | torch.device = "cpu") -> LimberModel | ClipModel:
    """A LiMBeR model (folder with limber.yaml) or a CLIP (anything `load_clip` reads), loaded once."""
    if is_limber_dir(path):
        return LimberModel.from_pretrained(path, device=device)
    return ClipModel.from_pretrained(path, device=device)
