"""CIDEr-D, equal to pycocoevalcap's `Cider` to 1e-9, plus the n-gram index BLEU and ROUGE-L share.

Inputs are already tokenized: `refs = {image_id: [[tok, ...], ...]}` (one or more references
per image) and `cands = {image_id: [tok, ...]}` (one candidate per image). Use
`vlbridge.evaluation.metrics.io.score_captions` to go from raw strings (with PTB tokenization)
to all metrics at once.

`NgramIndex` turns the corpus into integer arrays once: every word gets an id, every 1..4-gram
gets an id per order, and each sentence's n-gram counts are rows of flat arrays sorted by
(sentence, n-gram). CIDEr-D and BLEU are then a handful of numpy joins and `bincount`s,
which is what makes them ~50x faster than the pure-Python reference.

CIDEr-D as pycocoevalcap computes it (cider_scorer.py), including its quirks:
- document frequency df(g) = number of images whose *reference set* contains n-gram g
  (candidates never count); weights w = count * (ln N - ln max(1, df)), N = number of images,
  so with a single image every weight is 0 and CIDEr-D is 0;
- per reference and order n: sum over the candidate's n-grams of min(w_cand, w_ref) * w_ref,
  divided by |w_cand| * |w_ref| (the unclipped norms) unless one of them is 0;
- Gaussian length penalty exp(-delta^2 / (2 sigma^2)), sigma = 6, where "length" is the
  number of *bigrams* of a sentence (max(words - 1, 0)): pycocoevalcap counts term
  frequencies of n == 1 in its 0-based order index;
- image score = mean over the 4 orders, summed over references / number of references, x10;
  corpus score = mean of the image scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from vlbridge.errors import BadInputError

MAX_ORDER = 4  # n-grams of order 1..4, as pycocoevalcap's Cider and Bleu
CIDER_SIGMA = 6.0  # standard deviation of the Gaussian length penalty (pycocoevalcap default)


@dataclass
class CorpusScore:
    """A corpus-level score and the per-image scores it is the mean (or aggregate) of."""

    corpus: float  # the number reported for the whole corpus
    per_id: dict[str, float] = field(default_factory=dict)  # image id -> that image's score


@dataclass
class NgramTable:
    """Counts of the n-grams of one order in a set of sentences, one row per (n-gram, sentence).

    Rows are sorted by n-gram id, then sentence index; since reference sentences are grouped by
    image, the image index is non-decreasing within an n-gram too.
    """

    gram: np.ndarray  # (K,) int64 n-gram id (0..num_grams-1 within this order), ascending
    sentence: np.ndarray  # (K,) int64 sentence index, ascending within an n-gram
    count: np.ndarray  # (K,) int64 occurrences of the n-gram in the sentence


@dataclass
class SentenceIndex:
    """A tokenized caption corpus as word ids: all ROUGE-L needs, and the base of `NgramIndex`.

    Sentences are numbered references first (grouped by image, in image order), then one
    candidate per image; `words[sentence_start[s] : sentence_start[s] + sentence_length[s]]`
    are the word ids of sentence s.
    """

    ids: list[str]  # image ids, in the order of `refs`
    ref_image: np.ndarray  # (R,) image index of each reference sentence (non-decreasing)
    words: np.ndarray  # (T,) word ids of all sentences, concatenated
    sentence_start: np.ndarray  # (R + N,) offset of each sentence in `words`
    sentence_length: np.ndarray  # (R + N,) number of words of each sentence
    vocab_size: int  # number of distinct words (ids are 0..vocab_size-1)

    @property
    def num_images(self) -> int:
        return len(self.ids)

    @property
    def num_refs(self) -> int:
        return len(self.ref_image)

    @property
    def ref_length(self) -> np.ndarray:
        return self.sentence_length[: self.num_refs]  # (R,)

    @property
    def cand_length(self) -> np.ndarray:
        return self.sentence_length[self.num_refs :]  # (N,)

    @property
    def refs_per_image(self) -> np.ndarray:
        return np.bincount(self.ref_image, minlength=self.num_images)  # (N,)


@dataclass
class NgramIndex(SentenceIndex):
    """A `SentenceIndex` plus the 1..4-gram count tables CIDEr-D and BLEU work on."""

    ref_grams: list[NgramTable]  # one table per order 1..4 over the reference sentences
    cand_grams: list[NgramTable]  # one table per order 1..4 over the candidates (sentence = image)
    num_grams: list[int]  # distinct n-grams of each order 1..4 (references and candidates)


def check_tokenized(refs: dict, cands: dict) -> None:
    """Raise BadInputError unless refs/cands are {id: [[tok]]} / {id: [tok]} over the same ids.

    Token types (str) are checked on the vocabulary in `build_index`, which is much cheaper.
    """
    if not isinstance(refs, dict) or not isinstance(cands, dict):
        raise BadInputError(f"refs and cands must be dicts keyed by image id, got {type(refs).__name__} and {type(cands).__name__}")
    missing_refs = [k for k in cands if k not in refs]
    if missing_refs:
        raise BadInputError(f"{len(missing_refs)} candidate(s) have no references, e.g. id {missing_refs[0]!r}")
    missing_cands = [k for k in refs if k not in cands]
    if missing_cands:
        raise BadInputError(f"{len(missing_cands)} image(s) have references but no candidate, e.g. id {missing_cands[0]!r}")
    if not refs:
        raise BadInputError("no images to score: refs and cands are empty")
    for key, sentences in refs.items():
        if not isinstance(sentences, (list, tuple)) or not sentences:
            raise BadInputError(f"references of id {key!r} must be a non-empty list of token lists, got {sentences!r:.80}")
        for sentence in sentences:
            if not isinstance(sentence, (list, tuple)):
                raise BadInputError(f"each reference of id {key!r} must be a list of tokens, got {sentence!r:.80}")
    for key, sentence in cands.items():
        if not isinstance(sentence, (list, tuple)):
            raise BadInputError(f"the candidate of id {key!r} must be a list of tokens, got {sentence!r:.80}")


def build_index(refs: dict[str, list[list[str]]], cands: dict[str, list[str]]) -> NgramIndex:
    """Intern words and 1..4-grams of a tokenized corpus (see module docstring); validates inputs."""
    sentences = index_sentences(refs, cands)
    ref_grams, cand_grams, num_grams = _ngram_tables(
        sentences.words, sentences.sentence_length, sentences.sentence_start, sentences.num_refs, max(sentences.vocab_size, 1)
    )
    return NgramIndex(**vars(sentences), ref_grams=ref_grams, cand_grams=cand_grams, num_grams=num_grams)


def index_sentences(refs: dict[str, list[list[str]]], cands: dict[str, list[str]]) -> SentenceIndex:
    """Intern the words of a tokenized corpus (no n-grams); validates inputs."""
    check_tokenized(refs, cands)
    ids = list(refs)
    sentences = list(chain.from_iterable(refs[key] for key in ids))
    ref_image = np.repeat(np.arange(len(ids), dtype=np.int64), [len(refs[key]) for key in ids])  # (R,)
    sentences += [cands[key] for key in ids]
    flat = list(chain.from_iterable(sentences))
    try:
        vocab = {token: i for i, token in enumerate(dict.fromkeys(flat))}
    except TypeError as err:
        raise BadInputError(f"tokens must be strings: {err}") from err
    bad = next((token for token in vocab if not isinstance(token, str)), None)
    if bad is not None:
        raise BadInputError(f"tokens must be strings, got {type(bad).__name__} {bad!r:.40}")
    words = np.fromiter(map(vocab.__getitem__, flat), np.int64, len(flat))  # (T,)
    lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))  # (S,)
    starts = np.cumsum(lengths) - lengths  # (S,)
    return SentenceIndex(ids, ref_image, words, starts, lengths, len(vocab))


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Indices where a run of equal (key_1, key_2, ...) rows begins, for rows sorted by those keys."""
    if len(keys[0]) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(len(keys[0]), dtype=bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _ngram_tables(words: np.ndarray, lengths: np.ndarray, starts: np.ndarray, num_refs: int, vocab_size: int):
    """Per order: (gram, sentence, count) tables of references and candidates, and the n-gram count.

    An n-gram is identified by (id of its (n-1)-gram prefix, last word); one sort per order both
    assigns compact ids and groups equal n-grams of a sentence together.
    """
    sentence = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (T,) sentence of each position
    at = np.arange(len(words), dtype=np.int64)  # start positions of the current order's n-grams
    remaining = lengths[sentence] - (at - starts[sentence])  # (T,) words from each start to the sentence end
    key, prefix_count = words, vocab_size
    ref_tables, cand_tables, num_grams = [], [], []
    for order in range(1, MAX_ORDER + 1):
        if order > 1:
            keep = remaining >= order  # an n-gram of this order starts here
            at, sentence, remaining, previous = at[keep], sentence[keep], remaining[keep], gram[keep]
            key = previous * vocab_size + words[at + order - 1]  # (K,) (prefix id, last word)
        sort, sorted_key = _sort_by_key_then_position(key, prefix_count * vocab_size)
        sorted_sentence = sentence[sort]  # (K,) ascending within equal keys
        new_gram = np.empty(len(key), dtype=bool)
        new_gram[:1] = True
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=new_gram[1:])
        sorted_gram = np.cumsum(new_gram) - 1  # (K,) compact ids, ascending
        gram = np.empty_like(sorted_gram)
        gram[sort] = sorted_gram  # ids in position order, the prefixes of the next order
        rows = run_starts(sorted_gram, sorted_sentence)
        count = np.diff(rows, append=len(key))
        table_gram, table_sentence = sorted_gram[rows], sorted_sentence[rows]
        is_ref = table_sentence < num_refs
        ref_tables.append(NgramTable(table_gram[is_ref], table_sentence[is_ref], count[is_ref]))
        cand_tables.append(NgramTable(table_gram[~is_ref], table_sentence[~is_ref] - num_refs, count[~is_ref]))
        prefix_count = int(sorted_gram[-1]) + 1 if len(key) else 1
        num_grams.append(prefix_count)
    return ref_tables, cand_tables, num_grams


def _sort_by_key_then_position(key: np.ndarray, key_bound: int) -> tuple[np.ndarray, np.ndarray]:
    """(permutation, sorted keys) ordering by key, ties in input (= position = sentence) order.

    Packs (key, index) into one int64 and uses np.sort, ~4x faster than argsort, when it fits.
    """
    index_bits = max(int(len(key)).bit_length(), 1)
    if key_bound.bit_length() + index_bits <= 62:
        packed = np.sort((key << index_bits) | np.arange(len(key), dtype=np.int64))
        return packed & ((1 << index_bits) - 1), packed >> index_bits
    sort = np.argsort(key, kind="stable")
    return sort, key[sort]


def lookup(table_keys: np.ndarray, query_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `query_keys` in the sorted unique `table_keys`, and which queries were found."""
    position = np.searchsorted(table_keys, query_keys)  # (Q,)
    position = np.minimum(position, max(len(table_keys) - 1, 0))
    found = table_keys[position] == query_keys if len(table_keys) else np.zeros(len(query_keys), bool)
    return position, found


def cider_d(
    refs: dict[str, list[list[str]]] | None = None,
    cands: dict[str, list[str]] | None = None,
    *,
    index: NgramIndex | None = None,
    sigma: float = CIDER_SIGMA,
) -> CorpusScore:
    """CIDEr-D of tokenized candidates against references, exactly as pycocoevalcap's Cider.

    Pass either `refs` and `cands` or a prebuilt `index` (from `build_index`).
    Returns the corpus score (mean of image scores) and the per-image scores (x10 scale).
    """
    index = index if index is not None else build_index(refs, cands)
    num_images = index.num_images
    log_num_images = np.log(float(num_images))
    similarity = np.zeros((len(index.ref_image), MAX_ORDER))  # (R, 4)
    for order in range(MAX_ORDER):
        similarity[:, order] = _order_similarity(index, order, log_num_images)
    delta = _bigram_count(index.cand_length)[index.ref_image] - _bigram_count(index.ref_length)  # (R,)
    similarity *= (np.e ** (-(delta.astype(np.float64) ** 2) / (2 * sigma**2)))[:, None]
    per_image = np.zeros((num_images, MAX_ORDER))  # (N, 4) summed over references
    for order in range(MAX_ORDER):
        per_image[:, order] = np.bincount(index.ref_image, similarity[:, order], minlength=num_images)
    scores = per_image.mean(axis=1) / index.refs_per_image * 10.0  # (N,)
    return CorpusScore(corpus=float(np.mean(scores)), per_id=dict(zip(index.ids, scores.tolist())))


def _bigram_count(lengths: np.ndarray) -> np.ndarray:
    """pycocoevalcap's CIDEr "length": the number of bigrams, max(words - 1, 0)."""
    return np.maximum(lengths - 1, 0)


def _order_similarity(index: NgramIndex, order: int, log_num_images: float) -> np.ndarray:
    """(R,) clipped tf-idf cosine between each reference and its image's candidate, one order."""
    refs, cands = index.ref_grams[order], index.cand_grams[order]
    num_grams, num_refs, num_images = index.num_grams[order], index.num_refs, index.num_images
    ref_image = index.ref_image[refs.sentence]  # (K,) non-decreasing within each n-gram
    first_in_image = run_starts(refs.gram, ref_image)  # one row per distinct (n-gram, image)
    doc_freq = np.bincount(refs.gram[first_in_image], minlength=num_grams).astype(np.float64)  # (G,)
    idf = log_num_images - np.log(np.maximum(1.0, doc_freq))  # (G,)
    ref_weight = refs.count * idf[refs.gram]  # (K,)
    cand_weight = cands.count * idf[cands.gram]  # (C,)
    ref_norm = np.sqrt(np.bincount(refs.sentence, ref_weight**2, minlength=num_refs))  # (R,)
    cand_norm = np.sqrt(np.bincount(cands.sentence, cand_weight**2, minlength=num_images))  # (N,)
    cand_keys = cands.gram * num_images + cands.sentence  # ascending: rows sorted by (gram, image)
    position, found = lookup(cand_keys, refs.gram * num_images + ref_image)
    matched_cand = cand_weight[position[found]]
    clipped = np.minimum(matched_cand, ref_weight[found]) * ref_weight[found]
    dot = np.bincount(refs.sentence[found], clipped, minlength=num_refs).astype(np.float64)  # (R,)
    norm_product = cand_norm[index.ref_image] * ref_norm  # (R,)
    nonzero = norm_product != 0
    dot[nonzero] /= norm_product[nonzero]
    return dot
