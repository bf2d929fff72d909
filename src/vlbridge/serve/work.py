"""The model calls the server's micro-batchers make, on the model's worker thread.

Each factory returns `run_batch(items, group) -> results` for `MicroBatcher`:
- generate: items are (prompt segments, GenerationConfig) sharing one config (the group);
  one `LimberModel.generate` call encodes every image of the batch and decodes every prompt.
- embed_images / embed_texts: items are PIL images / strings; one CLIP call each; results are
  (E,) unit vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from vlbridge.api import ClipModel, LimberModel
from vlbridge.models.generation import GenerationConfig


def config_key(config: GenerationConfig) -> tuple:
    """Hashable identity of decoding options: requests with equal keys share a generate call."""
    return dataclasses.astuple(config)


def generate_batch(limber: LimberModel) -> Callable:
    def run(items: list, group) -> list[str]:
        config = items[0][1]
        return limber.generate([segments for segments, _ in items], config)

    return run


def embed_images_batch(clip: ClipModel) -> Callable:
    def run(items: list, group) -> list:
        return list(clip.embed_images(items).unbind(0))

    return run


def embed_texts_batch(clip: ClipModel) -> Callable:
    def run(items: list, group) -> list:
        return list(clip.embed_texts(items).unbind(0))

    return run
