"""`ClipBundle`: a CLIP model together with its image preprocessing and tokenizer.

Everything that consumes a CLIP (zero-shot, probes, retrieval, CLIP-S scoring, the LiMBeR
CLIP encoder) takes a bundle, whatever the CLIP came from: a vlbridge checkpoint, an
open_clip/OpenAI checkpoint file, a HF CLIPModel directory, or a LiT model. The model must
offer `encode_image(pixel_values) -> (B, E)` and `encode_text(token_ids) -> (B, E)`;
`tokenizer(list[str])` returns exactly what `encode_text` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from vlbridge.data.features import extract_features
from vlbridge.data.records import ImageRef
from vlbridge.errors import BadInputError


@dataclass
class ClipBundle:
    """A CLIP ready to embed images and texts."""

    model: torch.nn.Module  # has encode_image / encode_text (and usually logit_scale)
    preprocess: Callable[[Image.Image], torch.Tensor]  # PIL RGB -> (3, H, W) eval transform
    tokenizer: Callable[[Sequence[str]], torch.Tensor]  # texts -> what encode_text accepts
    name: str  # human-readable identity, shown in outputs (e.g. "vlbridge:runs/clip@step-500")
    device: torch.device = torch.device("cpu")  # where the model lives

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageRef], batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """(N, E) image embeddings (L2-normalised by default), in eval mode and fp32, returned on CPU.

        Runs `vlbridge.data.features.extract_features` with `encode_image`; an image that does not
        decode is a BadInputError (the rows must match the images given).
        """
        self.model.eval()
        out = extract_features(self, images, batch_size=batch_size, mixed_precision=False, forward=self.model.encode_image)
        if out.skipped:
            position, reason = next(iter(out.skipped.items()))
            raise BadInputError(f"image {position} of {len(images)}: {reason}")
        embeddings = out.features if len(out.features) else torch.zeros(0, 0)
        return F.normalize(embeddings, dim=-1) if normalize and len(embeddings) else embeddings

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
        """(N, E) text embeddings (L2-normalised by default), computed in eval mode, returned on CPU."""
        self.model.eval()
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            chunks.append(self.model.encode_text(tokens).float().cpu())
        embeddings = torch.cat(chunks) if chunks else torch.zeros(0, 0)
        return F.normalize(embeddings, dim=-1) if normalize and len(embeddings) else embeddings
