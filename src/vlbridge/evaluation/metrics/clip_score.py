"""CLIP-S and RefCLIP-S (Hessel et al. 2021), as the reference code jmhessel/clipscore computes them.

- Candidates and references are embedded as "A photo depicts " + caption.
- Image and text features are L2-normalised (x / sqrt(sum x^2), the reference's numpy path).
- CLIP-S per image = w * max(cos(image, candidate), 0) with w = 2.5; corpus = mean.
- RefCLIP-S per image = harmonic mean of that CLIP-S (already scaled by w) and
  max_j cos(candidate, reference_j); corpus = mean. Like the reference code, the text-text
  side is neither scaled by w nor clipped at 0 (the paper writes max(., 0); for real CLIP text
  embeddings the maximum cosine is positive, so the two agree). Where both sides are 0 the
  reference divides 0 by 0 and gets NaN; here that item scores 0.

`clip_s_from_embeddings` is the pure formula on (N, D) arrays (numpy or torch).
`clip_score` embeds images and captions with a CLIP "scorer" (a `ClipBundle`, or anything with
`encode_image(pixel_values)`, `encode_text(token_ids)`, `preprocess` (PIL -> tensor),
`tokenizer` (list[str] -> tensor) and `name`) in batches and applies the formula; its output
names the scorer, because CLIP-S values are only comparable under the same CLIP.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vlbridge.data.features import extract_features
from vlbridge.data.records import ImageRef
from vlbridge.errors import BadInputError

log = logging.getLogger(__name__)

CLIP_S_WEIGHT = 2.5  # w in CLIP-S = w * max(cos, 0) (Hessel et al.)
CLIP_S_PREFIX = "A photo depicts "  # prompt prefix of candidates and references (Hessel et al.)


def _as_numpy(features: Any, what: str) -> np.ndarray:
    """(N, D) float64 array from numpy / torch / nested lists, or a BadInputError."""
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise BadInputError(f"{what} must be a 2-d (N, D) array, got shape {array.shape}")
    norms = np.sqrt(np.sum(array**2, axis=1))
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise BadInputError(f"{what} contains {int(np.sum(norms == 0))} zero and {int(np.sum(~np.isfinite(norms)))} non-finite vectors")
    return array / norms[:, None]


def clip_s_from_embeddings(
    image_features: Any,
    candidate_features: Any,
    reference_features: Sequence[Any] | None = None,
    ids: Sequence[str] | None = None,
    weight: float = CLIP_S_WEIGHT,
) -> dict[str, Any]:
    """CLIP-S (and RefCLIP-S when reference features are given) from embeddings.

    image_features, candidate_features: (N, D); reference_features: N arrays of shape (k_i, D).
    Returns {"CLIP-S": mean, "RefCLIP-S": mean or None, "per_id": {id: {"CLIP-S", "RefCLIP-S"}}}.
    """
    images = _as_numpy(image_features, "image features")  # (N, D) unit rows
    candidates = _as_numpy(candidate_features, "candidate features")  # (N, D)
    if images.shape != candidates.shape:
        raise BadInputError(f"image features {images.shape} and candidate features {candidates.shape} must have the same shape")
    ids = [str(i) for i in range(len(images))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(images):
        raise BadInputError(f"got {len(ids)} ids for {len(images)} images")
    clip_s = weight * np.clip(np.sum(images * candidates, axis=1), 0, None)  # (N,)
    per_id = {key: {"CLIP-S": float(value)} for key, value in zip(ids, clip_s)}
    result: dict[str, Any] = {"CLIP-S": float(np.mean(clip_s)), "RefCLIP-S": None, "per_id": per_id}
    if reference_features is None:
        return result
    if len(reference_features) != len(images):
        raise BadInputError(f"got reference features for {len(reference_features)} items, expected {len(images)}")
    text_sim = np.zeros(len(ids))  # (N,) best cosine between each candidate and its references
    for i, (key, refs) in enumerate(zip(ids, reference_features)):
        refs = _as_numpy(refs, f"reference features of id {key!r}")  # (k_i, D)
        if len(refs) == 0:
            raise BadInputError(f"id {key!r} has no reference features for RefCLIP-S")
        text_sim[i] = np.max(refs @ candidates[i])
    denominator = clip_s + text_sim
    safe = np.where(denominator == 0, 1.0, denominator)
    ref_clip_s = np.where(denominator == 0, 0.0, 2 * clip_s * text_sim / safe)  # (N,) harmonic mean
    for key, value in zip(ids, ref_clip_s):
        per_id[key]["RefCLIP-S"] = float(value)
    result["RefCLIP-S"] = float(np.mean(ref_clip_s))
    return result


def clip_score(
    scorer: Any,
    images: Sequence[ImageRef],
    candidates: Sequence[str],
    references: Sequence[Sequence[str]] | None = None,
    ids: Sequence[str] | None = None,
    batch_size: int = 64,
    prefix: str = CLIP_S_PREFIX,
) -> dict[str, Any]:
    """Embed images and captions with `scorer` (see module docstring) and compute CLIP-S / RefCLIP-S."""
    if len(images) != len(candidates):
        raise BadInputError(f"got {len(images)} images but {len(candidates)} candidate captions")
    if references is not None and len(references) != len(candidates):
        raise BadInputError(f"got references for {len(references)} items, expected {len(candidates)}")
    ids = [str(i) for i in range(len(images))] if ids is None else [str(i) for i in ids]
    if references is not None:
        empty = [key for key, refs in zip(ids, references) if not refs]
        if empty:
            raise BadInputError(f"{len(empty)} item(s) have no references for RefCLIP-S, e.g. id {empty[0]!r}")
    image_features = embed_images(scorer, images, ids, batch_size)  # (N, D)
    candidate_features = embed_texts(scorer, [prefix + c for c in candidates], batch_size)  # (N, D)
    reference_features = None
    if references is not None:
        flat = [prefix + r for refs in references for r in refs]
        flat_features = embed_texts(scorer, flat, batch_size)  # (sum k_i, D)
        bounds = np.cumsum([0] + [len(refs) for refs in references])
        reference_features = [flat_features[bounds[i] : bounds[i + 1]] for i in range(len(references))]
    result = clip_s_from_embeddings(image_features, candidate_features, reference_features, ids)
    return {"scorer": str(getattr(scorer, "name", type(scorer).__name__)), "prefix": prefix, "weight": CLIP_S_WEIGHT, "num_images": len(ids), **result}


def _encoder_and_device(scorer: Any) -> tuple[Any, torch.device]:
    encoder = getattr(scorer, "model", scorer)  # a ClipBundle wraps the model; a bare scorer is the model
    device = torch.device(getattr(scorer, "device", "cpu"))
    return encoder, device


def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def embed_images(scorer: Any, images: Sequence[ImageRef], ids: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(N, D) raw (unnormalised) image features, computed in batches by the one pixel path
    (`vlbridge.data.features.extract_features`); an image that does not decode is a BadInputError."""
    encoder, device = _encoder_and_device(scorer)
    if hasattr(encoder, "eval"):
        encoder.eval()
    pixels_of = SimpleNamespace(preprocess=scorer.preprocess, device=device)  # what extract_features reads
    with tqdm(total=len(images), desc="CLIP-S images", unit="img", disable=not sys.stderr.isatty()) as bar:
        out = extract_features(pixels_of, images, ids, batch_size, forward=encoder.encode_image, bar=bar)
    if out.skipped:
        key, reason = next(iter(out.skipped.items()))
        raise BadInputError(f"image of id {key!r}: {reason}")
    return out.features.numpy().astype(np.float64)


@torch.no_grad()
def embed_texts(scorer: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(N, D) raw (unnormalised) text features, computed in batches."""
    encoder, device = _encoder_and_device(scorer)
    if hasattr(encoder, "eval"):
        encoder.eval()
    chunks = []
    show = sys.stderr.isatty()
    for start in tqdm(range(0, len(texts), batch_size), desc="CLIP-S texts", disable=not show):
        tokens = scorer.tokenizer(list(texts[start : start + batch_size])).to(device)
        with _autocast(device):
            chunks.append(encoder.encode_text(tokens).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float64)
