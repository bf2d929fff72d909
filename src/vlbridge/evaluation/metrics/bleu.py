"""BLEU-1..4, equal to pycocoevalcap's `Bleu(4)` (corpus and per-image scores) to 1e-9.

Inputs are tokenized like `cider.cider_d`'s (`refs = {id: [[tok]]}`, `cands = {id: [tok]}`), or
a prebuilt `NgramIndex` so CIDEr-D and BLEU share one pass over the corpus.

What pycocoevalcap's bleu_scorer.py does, reproduced here with numpy:
- clipped counts: each candidate n-gram counts at most as often as in the reference of that
  image where it is most frequent;
- effective reference length "closest": the reference length nearest the candidate length,
  ties going to the shorter reference;
- corpus BLEU-n = (prod_{k<=n} (correct_k + 1e-15) / (guess_k + 1e-9))^(1/n), summing
  correct/guess counts over images, times the brevity penalty exp(1 - r/c) when
  c/r < 1 with ratio = (c + 1e-15) / (r + 1e-9);
- per-image BLEU-n: the same formula on that image's own counts and lengths.
"""

from __future__ import annotations

import numpy as np

from vlbridge.evaluation.metrics.cider import MAX_ORDER, CorpusScore, NgramIndex, build_index, lookup, run_starts

BLEU_SMALL = 1e-9  # added to denominators (pycocoevalcap's `small`)
BLEU_TINY = 1e-15  # added to numerators (pycocoevalcap's `tiny`)


def bleu(
    refs: dict[str, list[list[str]]] | None = None,
    cands: dict[str, list[str]] | None = None,
    *,
    index: NgramIndex | None = None,
) -> dict[str, CorpusScore]:
    """{"BLEU-1": CorpusScore, ..., "BLEU-4": CorpusScore} exactly as pycocoevalcap's Bleu(4)."""
    index = index if index is not None else build_index(refs, cands)
    correct = np.stack([_clipped_matches(index, order) for order in range(MAX_ORDER)], axis=1)  # (N, 4)
    test_length = index.cand_length.astype(np.int64)  # (N,)
    guess = np.maximum(0, test_length[:, None] - np.arange(MAX_ORDER)[None, :])  # (N, 4) = max(0, c - n + 1)
    ref_length = _closest_ref_length(index)  # (N,)
    per_image = _bleu_from_counts(correct, guess, test_length, ref_length)  # (N, 4)
    corpus = _bleu_from_counts(
        correct.sum(axis=0, keepdims=True), guess.sum(axis=0, keepdims=True),
        test_length.sum(keepdims=True), ref_length.sum(keepdims=True),
    )[0]  # (4,)
    return {
        f"BLEU-{n + 1}": CorpusScore(corpus=float(corpus[n]), per_id=dict(zip(index.ids, per_image[:, n].tolist())))
        for n in range(MAX_ORDER)
    }


def _bleu_from_counts(correct: np.ndarray, guess: np.ndarray, test_length: np.ndarray, ref_length: np.ndarray) -> np.ndarray:
    """(M, 4) cumulative BLEU-1..4 for M rows of match counts, as bleu_scorer.compute_score."""
    precision = (correct.astype(np.float64) + BLEU_TINY) / (guess.astype(np.float64) + BLEU_SMALL)  # (M, 4)
    running = np.cumprod(precision, axis=1)  # (M, 4) product over orders 1..n
    scores = running ** (1.0 / np.arange(1, MAX_ORDER + 1))[None, :]  # (M, 4)
    ratio = (test_length + BLEU_TINY) / (ref_length + BLEU_SMALL)  # (M,)
    short = ratio < 1
    scores[short] *= np.exp(1 - 1 / ratio[short])[:, None]
    return scores


def _clipped_matches(index: NgramIndex, order: int) -> np.ndarray:
    """(N,) sum over each candidate's n-grams of min(count, max count in one reference)."""
    refs, cands = index.ref_grams[order], index.cand_grams[order]
    num_images = index.num_images
    keys = refs.gram * num_images + index.ref_image[refs.sentence]  # (K,) (gram, image), non-decreasing
    starts = run_starts(keys)
    max_count = np.maximum.reduceat(refs.count, starts) if len(keys) else np.zeros(0, np.int64)
    position, found = lookup(keys[starts], cands.gram * num_images + cands.sentence)
    clipped = np.minimum(cands.count[found], max_count[position[found]])
    return np.bincount(cands.sentence[found], clipped, minlength=num_images)


def _closest_ref_length(index: NgramIndex) -> np.ndarray:
    """(N,) per image the reference length closest to the candidate's, ties to the shorter one."""
    lengths = index.ref_length  # (R,)
    distance = np.abs(lengths - index.cand_length[index.ref_image])  # (R,)
    scale = int(lengths.max(initial=0)) + 1
    key = distance * scale + lengths  # orders by (distance, length)
    starts = np.flatnonzero(np.r_[True, index.ref_image[1:] != index.ref_image[:-1]])  # refs are grouped by image
    return np.minimum.reduceat(key, starts) % scale
