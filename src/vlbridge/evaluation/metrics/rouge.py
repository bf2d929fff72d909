"""ROUGE-L (beta = 1.2), equal to pycocoevalcap's `Rouge` (corpus and per-image scores) to 1e-9.

Per image, with LCS the longest common subsequence of candidate and reference tokens:
P = max over references of LCS / len(candidate), R = max over references of LCS / len(reference)
(the two maxima may come from different references), and
ROUGE-L = (1 + beta^2) P R / (R + beta^2 P), or 0 when P or R is 0. Corpus = mean over images.

pycocoevalcap splits each sentence with `str.split(" ")` (only U+0020 separates tokens, so
"a\tb" is one token and "a  b" or " a" hold an empty token ""), unlike its Cider and Bleu,
which use `str.split()`. Token lists here are whatever the caller split: `io.score_captions`
passes `str.split(" ")` tokens of the scored strings whenever they differ from the whitespace
tokens CIDEr-D and BLEU use, which makes ROUGE-L exact on raw text. An empty token list counts
as one empty token, as `"".split(" ") == [""]` (an empty candidate against an empty reference
scores 1, against anything else 0).

LCS lengths of all (candidate, reference) pairs are computed at once with the bit-parallel
algorithm of Hyyro (2004) on uint64 words (the shorter sentence of a pair, up to 64 tokens, is
the bit vector); pairs where both sentences exceed 64 tokens use the plain dynamic programme.
"""

from __future__ import annotations

import numpy as np

from vlbridge.evaluation.metrics.cider import CorpusScore, SentenceIndex, index_sentences

ROUGE_BETA = 1.2  # weight of recall vs precision (pycocoevalcap's value)
BITS = 64  # sentence length the bit-parallel LCS handles in one uint64 word
PAIR_CHUNK = 8192  # (candidate, reference) pairs per vectorised LCS batch; bounds memory


def rouge_l(
    refs: dict[str, list[list[str]]] | None = None,
    cands: dict[str, list[str]] | None = None,
    *,
    index: SentenceIndex | None = None,
    beta: float = ROUGE_BETA,
) -> CorpusScore:
    """ROUGE-L of tokenized candidates against references, exactly as pycocoevalcap's Rouge.

    Pass either `refs` and `cands` or a prebuilt index (`index_sentences`, or the `build_index`
    CIDEr-D and BLEU share); equal to pycocoevalcap on the strings " ".join(tokens) when no
    token contains U+0020.
    """
    index = index if index is not None else index_sentences(refs, cands)
    words, starts, lengths = _with_empty_token(index)
    cand_sentence = index.num_refs + index.ref_image  # (R,) sentence index of each reference's candidate
    ref_sentence = np.arange(index.num_refs)  # (R,)
    lcs = lcs_lengths(words, starts, lengths, cand_sentence, ref_sentence).astype(np.float64)  # (R,)
    precision_each = lcs / lengths[cand_sentence]  # (R,)
    recall_each = lcs / lengths[ref_sentence]  # (R,)
    first_ref = np.flatnonzero(np.r_[True, index.ref_image[1:] != index.ref_image[:-1]])  # refs grouped by image
    precision = np.maximum.reduceat(precision_each, first_ref)  # (N,)
    recall = np.maximum.reduceat(recall_each, first_ref)  # (N,)
    scores = np.zeros(index.num_images)
    both = (precision != 0) & (recall != 0)
    p, r = precision[both], recall[both]
    scores[both] = ((1 + beta**2) * p * r) / (r + beta**2 * p)
    return CorpusScore(corpus=float(np.mean(scores)), per_id=dict(zip(index.ids, scores.tolist())))


def _with_empty_token(index: SentenceIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Word ids, starts and lengths where each empty sentence is one empty token (id -1)."""
    words = np.append(index.words, -1)  # (T + 1,) the last entry is the empty token
    empty = index.sentence_length == 0
    starts = np.where(empty, len(words) - 1, index.sentence_start)
    lengths = np.where(empty, 1, index.sentence_length)
    return words, starts, lengths


def lcs_lengths(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(P,) LCS length of sentence pairs (first[p], second[p]); sentence s is words[starts[s]:][:lengths[s]]."""
    len_first, len_second = lengths[first], lengths[second]  # (P,)
    swap = len_second < len_first  # the bit side is the shorter sentence
    bit_side = np.where(swap, second, first)  # (P,)
    scan_side = np.where(swap, first, second)  # (P,)
    result = np.zeros(len(first), dtype=np.int64)
    short = np.flatnonzero(lengths[bit_side] <= BITS)
    short = short[np.argsort(lengths[scan_side][short], kind="stable")]  # similar scan lengths per chunk
    for begin in range(0, len(short), PAIR_CHUNK):
        chunk = short[begin : begin + PAIR_CHUNK]
        width = next(w for w in (8, 16, 32, 64) if w >= lengths[bit_side[chunk]].max())  # bits per word
        bits = _padded(words, starts[bit_side[chunk]], lengths[bit_side[chunk]], width, pad=-2)  # (P, width)
        scan_width = int(lengths[scan_side[chunk]].max())
        scan = _padded(words, starts[scan_side[chunk]], lengths[scan_side[chunk]], scan_width, pad=-3)  # (P, Ls)
        result[chunk] = _lcs_bit_parallel(bits, lengths[bit_side[chunk]], scan)
    for p in np.flatnonzero(lengths[bit_side] > BITS):
        a, b = first[p], second[p]
        result[p] = _lcs_dynamic(words[starts[a] : starts[a] + lengths[a]], words[starts[b] : starts[b] + lengths[b]])
    return result


def _padded(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, pad: int) -> np.ndarray:
    """(P, width) word ids of P sentences, right-padded with `pad` (distinct pads never match)."""
    column = np.arange(width)[None, :]  # (1, W)
    inside = column < lengths[:, None]  # (P, W)
    gather = np.minimum(starts[:, None] + column, len(words) - 1)  # (P, W)
    return np.where(inside, words[gather], pad)


def _lcs_bit_parallel(bits: np.ndarray, bit_length: np.ndarray, scan: np.ndarray) -> np.ndarray:
    """(P,) LCS lengths by Hyyro's bit-vector recurrence; `bits` holds <= 64 tokens per row (8/16/32/64 wide)."""
    all_ones = np.iinfo(np.uint64).max
    word_type = f"<u{bits.shape[1] // 8}"  # packbits gives width/8 bytes per row
    state = np.full(len(bits), all_ones, dtype=np.uint64)  # (P,) V: zeros mark LCS positions
    for j in range(scan.shape[1]):
        equal = bits == scan[:, j : j + 1]  # (P, width) where token j of the scan side occurs
        match = np.packbits(equal, axis=1, bitorder="little").view(word_type)[:, 0].astype(np.uint64)  # bit i = position i
        common = state & match
        state = (state + common) | (state - common)  # uint64 wrap-around is part of the algorithm
    shift = np.minimum(bit_length, BITS - 1).astype(np.uint64)
    low_mask = np.where(bit_length >= BITS, all_ones, (np.uint64(1) << shift) - np.uint64(1)).astype(np.uint64)
    return bit_length - np.bitwise_count(state & low_mask).astype(np.int64)


def _lcs_dynamic(first: np.ndarray, second: np.ndarray) -> int:
    """LCS length by the textbook O(len1 * len2) programme, one row at a time."""
    previous = [0] * (len(second) + 1)
    for token in first.tolist():
        current = [0]
        for j, other in enumerate(second.tolist()):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
