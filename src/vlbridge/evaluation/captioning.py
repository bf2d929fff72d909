"""Captioning protocol for LiMBeR: caption held-out images, then score against their references.

    result = evaluate_captioning(model, records, features=cached)   # records: ImageTextRecord
    result["CIDEr-D"], result["by_domain"]["out"]["CIDEr-D"], result["samples"][0]["caption"]

- Each image is captioned from `<image prefix> "A picture of"` (the LiMBeR prompt; configurable)
  with `vlbridge.models.generation.caption_images`, in batches; the caption is the first line
  of the generation, stripped. Images come as cached features (`features`: id -> (D,) or
  (N, D), e.g. from the FeatureStore) or, without them, are encoded by the model's encoder.
- Scores: CIDEr-D (x10 scale of the COCO tools), BLEU-1..4 and ROUGE-L from
  `vlbridge.evaluation.metrics.score_captions` against every reference caption of the
  record, with PTB tokenization by default. When every record carries a `domain`
  (NoCaps-style in/near/out), `by_domain` holds the scores of each domain and of "entire"
  (all images), CIDEr-D document frequencies computed within each domain as the NoCaps
  evaluation does (`df_scope` says so).
- Optional CLIP-S / RefCLIP-S (Hessel et al. 2021) with a CLIP scorer (a `ClipBundle`).
- Under torchrun every rank captions its slice of the records; captions are gathered and
  every rank returns the same scores.
Unreadable images (and, with cached features, images that have none: the FeatureStore skips
undecodable ones) are skipped, counted and left out of the scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from vlbridge.data.records import BadImage, ImageTextRecord, SkipCounter, open_image
from vlbridge.errors import UserError
from vlbridge.runtime import DistEnv, gather_objects

log = logging.getLogger(__name__)

CORPUS_METRICS = ("CIDEr-D", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L")  # copied to the top level


@dataclass
class CaptionEvalConfig:
    """How held-out images are captioned and scored."""

    prompt: str = "A picture of"  # text after the image prefix (LiMBeR paper)
    batch_size: int = 16  # images captioned together
    tokenize: str = "ptb"  # "ptb" (COCO tools' tokenization) or "none" (raw strings, split as each pycocoevalcap scorer splits)


def image_batch(model, records: Sequence[ImageTextRecord], features: dict[str, torch.Tensor] | None, skips: SkipCounter):
    """(batch dict, records kept): cached `image_features` rows or encoder `pixel_values`."""
    if features is not None:
        kept = [r for r in records if r.id in features]
        for record in records:
            if record.id not in features:
                skips.skip("no cached features (unreadable image?)", record.id)
        if not kept:
            return None, []
        stacked = torch.stack([features[r.id] for r in kept])  # (B, D) or (B, N, D)
        return {"image_features": stacked.to(model.device), "id": [r.id for r in kept]}, kept
    if model.encoder is None:
        raise UserError("this LiMBeR model has no image encoder; pass cached features to caption it")
    pixels, kept = [], []
    for record in records:
        try:
            pixels.append(model.encoder.preprocess(open_image(record.image)))  # (3, H, W)
        except BadImage as err:
            skips.skip(str(err).split(":")[0], record.id)
            continue
        kept.append(record)
    if not kept:
        return None, []
    return {"pixel_values": torch.stack(pixels).to(model.device), "id": [r.id for r in kept]}, kept


def generate_captions(
    model,
    records: Sequence[ImageTextRecord],
    config: CaptionEvalConfig | None = None,
    generation=None,
    features: dict[str, torch.Tensor] | None = None,
    env: DistEnv | None = None,
) -> dict[str, str]:
    """id -> generated caption (stripped) for every readable image; gathered across ranks."""
    from vlbridge.models.generation import caption_images

    config = config or CaptionEvalConfig()
    env = env or DistEnv()
    mine = list(records)[env.rank :: env.world_size]
    skips = SkipCounter("captioning")
    captions: dict[str, str] = {}
    starts = range(0, len(mine), config.batch_size)
    for start in tqdm(starts, desc="captioning", disable=not env.is_main or len(starts) < 2, leave=False):
        batch, kept = image_batch(model, mine[start : start + config.batch_size], features, skips)
        if not kept:
            continue
        texts = caption_images(model, batch, prompt=config.prompt, config=generation)
        captions.update({record.id: text.strip() for record, text in zip(kept, texts, strict=True)})
    if skips.total:
        log.warning(skips.summary())
    merged: dict[str, str] = {}
    for part in gather_objects(captions, env):
        merged.update(part)
    return merged


def score_generated(
    records: Sequence[ImageTextRecord], captions: dict[str, str], tokenize: str = "ptb"
) -> dict:
    """CIDEr-D / BLEU / ROUGE-L of `captions` against the records' references (+ by domain)."""
    from vlbridge.evaluation.metrics.io import score_captions

    scored = [r for r in records if r.id in captions]
    if not scored:
        raise UserError("no captions to score (every image was unreadable?)")
    refs = {r.id: list(r.captions) for r in scored}
    cands = {r.id: captions[r.id] for r in scored}
    domains = {r.id: r.domain for r in scored} if all(r.domain for r in scored) else None
    scores = score_captions(refs, cands, tokenize=tokenize, domains=domains)
    result = {name: scores["corpus"][name] for name in CORPUS_METRICS if name in scores["corpus"]}
    if "by_domain" in scores:
        result["by_domain"] = {
            domain: {name: metrics[name] for name in CORPUS_METRICS if name in metrics}
            for domain, metrics in scores["by_domain"].items()
        }
        result["df_scope"] = scores.get("df_scope", "per-domain")
    return result


def evaluate_captioning(
    model,
    records: Sequence[ImageTextRecord],
    config: CaptionEvalConfig | None = None,
    generation=None,
    features: dict[str, torch.Tensor] | None = None,
    clip_scorer=None,
    env: DistEnv | None = None,
) -> dict:
    """Caption `records` and score them: {"CIDEr-D", "BLEU-4", "ROUGE-L", ["CLIP-S", "RefCLIP-S"], "by_domain", "samples"}."""
    config = config or CaptionEvalConfig()
    if not records:
        raise UserError("no images to caption")
    without_refs = [r.id for r in records if not any(c.strip() for c in r.captions)]
    if without_refs:
        raise UserError(f"{len(without_refs)} evaluation images have no reference captions (first: {without_refs[0]!r})")
    captions = generate_captions(model, records, config, generation, features, env)
    result = score_generated(records, captions, config.tokenize)
    if clip_scorer is not None:
        result.update(clip_scores(clip_scorer, [r for r in records if r.id in captions], captions))
    result["n_images"] = len(captions)
    result["samples"] = [{"id": r.id, "caption": captions[r.id], "refs": list(r.captions)} for r in records if r.id in captions]
    log.info("captioning: CIDEr-D %.4f on %d images", result.get("CIDEr-D", float("nan")), len(captions))
    return result


def clip_scores(scorer, records: Sequence[ImageTextRecord], captions: dict[str, str]) -> dict:
    """CLIP-S and RefCLIP-S of the captions, embedded with `scorer` (a ClipBundle)."""
    from vlbridge.evaluation.metrics.clip_score import clip_score

    scores = clip_score(
        scorer,
        [r.image for r in records],
        [captions[r.id] for r in records],
        [list(r.captions) for r in records],
        ids=[r.id for r in records],
    )
    return {"CLIP-S": scores["CLIP-S"], "RefCLIP-S": scores["RefCLIP-S"], "clip_scorer": scores["scorer"]}
