"""CLIP's dataset recipe, scaled down: keep only (image, text) pairs that mention a "query word".

CLIP built its 400M pairs by searching for text that contains one of 500k queries (frequent
Wikipedia words, bigrams, article titles, WordNet synsets). Here the queries are the corpus's
own `top_m` most frequent words:

1. `count_words`: every caption is lower-cased and split into alphabetic tokens (letters only,
   Unicode-aware); tokens in the stop-word list are not counted. Counts are occurrences
   over all captions of all records.
2. `top_query_words`: the `top_m` most frequent words, ties broken alphabetically, so the
   result never depends on record order.
3. `select_pairs`: a record keeps the captions that contain a query word (each caption is one
   pair with the image); a record with none is dropped.

    report = filter_by_query_words(records, top_m=100)
    report.kept, report.dropped, report.query_words, report.kept_pairs, report.dropped_pairs
    for record in report: ...   # iterates over the kept records

`vlbridge data filter` runs it from the command line (in two streaming passes for shards).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from vlbridge.data.records import ImageTextRecord
from vlbridge.errors import UserError

STOPWORDS = frozenset(  # function words that would otherwise top every count
    "a an the and or but of in on at to for from by with without into onto over under as is are was were be "
    "been being it its this that these those there here some any his her their our your my s t".split()
)
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script); digits and punctuation split words


@dataclass
class FilterReport:
    """Outcome of the query-word filter; iterating over it yields the kept records."""

    kept: list[ImageTextRecord]  # records with at least one matching caption (only those captions)
    dropped: list[ImageTextRecord]  # records with no matching caption (unchanged)
    query_words: list[str]  # the top-m words, most frequent first
    word_counts: dict[str, int] = field(default_factory=dict)  # corpus count of each query word
    kept_pairs: int = 0  # (image, caption) pairs kept
    dropped_pairs: int = 0  # (image, caption) pairs dropped

    def __iter__(self):
        return iter(self.kept)


def caption_words(text: str) -> list[str]:
    """Lower-cased alphabetic tokens of `text`: "A Red-Star, 2x!" -> ["a", "red", "star", "x"]."""
    return _WORD.findall(text.lower())


def count_words(records: Iterable[ImageTextRecord], stopwords: Iterable[str] = STOPWORDS) -> Counter[str]:
    """Occurrences of every non-stop word over all captions of `records`."""
    stop = frozenset(word.lower() for word in stopwords)
    counts: Counter[str] = Counter()
    for record in records:
        for caption in record.captions:
            counts.update(word for word in caption_words(caption) if word not in stop)
    return counts


def top_query_words(counts: Counter[str], top_m: int) -> list[str]:
    """The `top_m` most frequent words, ties broken alphabetically (all words if fewer)."""
    if not isinstance(top_m, int) or isinstance(top_m, bool) or top_m < 1:
        raise UserError(f"top_m must be a positive number of query words, got {top_m!r}")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[:top_m]]


def select_pairs(record: ImageTextRecord, query_words: set[str] | frozenset[str]) -> ImageTextRecord | None:
    """`record` with only its captions that contain a query word, or None if none does."""
    matching = [caption for caption in record.captions if not query_words.isdisjoint(caption_words(caption))]
    if not matching:
        return None
    return record if len(matching) == len(record.captions) else dataclasses.replace(record, captions=matching)


def filter_by_query_words(
    records: Iterable[ImageTextRecord], top_m: int, stopwords: Iterable[str] = STOPWORDS
) -> FilterReport:
    """Count words, take the `top_m` most frequent as queries, keep the pairs that contain one."""
    records = list(records)
    counts = count_words(records, stopwords)
    words = top_query_words(counts, top_m)
    query_set = frozenset(words)
    report = FilterReport([], [], words, {word: counts[word] for word in words})
    for record in records:
        selected = select_pairs(record, query_set)
        if selected is None:
            report.dropped.append(record)
            report.dropped_pairs += len(record.captions)
        else:
            report.kept.append(selected)
            report.kept_pairs += len(selected.captions)
            report.dropped_pairs += len(record.captions) - len(selected.captions)
    return report
