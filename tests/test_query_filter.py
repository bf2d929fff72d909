"""CLIP's query-word filter: counts, deterministic top-m, pair selection, against a plain reference."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbridge.data.query_filter import (
    STOPWORDS,
    FilterReport,
    caption_words,
    count_words,
    filter_by_query_words,
    top_query_words,
)
from vlbridge.data.records import ImageTextRecord
from vlbridge.data.shapes import image_text_records
from vlbridge.errors import UserError


def reference_filter(records, top_m, stopwords=STOPWORDS):
    """The recipe written out plainly, for ASCII captions: (query words, kept {id: captions}, dropped ids)."""
    counts: dict[str, int] = {}
    for record in records:
        for caption in record.captions:
            for token in re.split(r"[^a-z]+", caption.lower()):
                if token and token not in stopwords:
                    counts[token] = counts.get(token, 0) + 1
    ranked = sorted(counts, key=lambda word: (-counts[word], word))
    queries = ranked[:top_m]
    kept, dropped = {}, []
    for record in records:
        matching = [c for c in record.captions if any(q in re.split(r"[^a-z]+", c.lower()) for q in queries)]
        if matching:
            kept[record.id] = matching
        else:
            dropped.append(record.id)
    return queries, kept, dropped


def text_records(captions_per_record: list[list[str]]) -> list[ImageTextRecord]:
    return [ImageTextRecord(f"r{i}", b"", captions) for i, captions in enumerate(captions_per_record)]


@pytest.mark.parametrize("top_m", [1, 3, 10, 1000])
def test_matches_the_reference_on_the_shapes_world(top_m):
    records = image_text_records(40, "val", seed=4, image_size=16)
    report = filter_by_query_words(records, top_m)
    queries, kept, dropped = reference_filter(records, top_m)
    assert report.query_words == queries
    assert {r.id: r.captions for r in report.kept} == kept
    assert [r.id for r in report.dropped] == dropped
    assert report.kept_pairs == sum(len(c) for c in kept.values())
    assert report.kept_pairs + report.dropped_pairs == sum(len(r.captions) for r in records)
    assert list(report) == report.kept


def test_caption_words():
    assert caption_words("A Red-Star, 2x bigger!") == ["a", "red", "star", "x", "bigger"]
    assert caption_words("café crème_brûlée") == ["café", "crème", "brûlée"]


def test_stopwords_are_not_counted_and_can_be_replaced():
    records = text_records([["the cat and the dog"], ["the cat"]])
    assert count_words(records) == Counter({"cat": 2, "dog": 1})
    assert count_words(records, stopwords=["cat"]) == Counter({"the": 3, "and": 1, "dog": 1})
    assert filter_by_query_words(records, 1, stopwords=[]).query_words == ["the"]


def test_ties_break_alphabetically_whatever_the_order():
    captions = [["zebra mango"], ["apple zebra"], ["mango apple"], ["kiwi"], ["zebra"]]
    expected = ["zebra", "apple", "mango"]  # zebra 3; apple, mango 2 each; kiwi 1
    for seed in range(5):
        shuffled = captions[:]
        random.Random(seed).shuffle(shuffled)
        report = filter_by_query_words(text_records(shuffled), 3)
        assert report.query_words == expected
        assert report.word_counts == {"zebra": 3, "apple": 2, "mango": 2}
    assert top_query_words(Counter({"b": 1, "a": 1, "c": 1}), 2) == ["a", "b"]


def test_pairs_not_records_are_selected():
    records = text_records([["a red circle", "something else entirely"], ["nothing here"], ["red red red"]])
    report = filter_by_query_words(records, 1)
    assert report.query_words == ["red"]
    assert [(r.id, r.captions) for r in report.kept] == [("r0", ["a red circle"]), ("r2", ["red red red"])]
    assert [r.id for r in report.dropped] == ["r1"]
    assert (report.kept_pairs, report.dropped_pairs) == (2, 2)
    assert records[0].captions == ["a red circle", "something else entirely"]  # input left unchanged


@pytest.mark.parametrize("bad", [0, -1, 2.5, None, True])
def test_top_m_must_be_a_positive_int(bad):
    with pytest.raises(UserError, match="top_m must be a positive number"):
        filter_by_query_words(text_records([["x"]]), bad)


def test_empty_corpus_keeps_nothing():
    report = filter_by_query_words([], 5)
    assert report == FilterReport([], [], [], {}, 0, 0)


words = st.sampled_from(["red", "blue", "circle", "square", "the", "a", "big", "dog", "zebra", "of"])
captions = st.lists(words, min_size=0, max_size=6).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(corpus=st.lists(st.lists(captions, min_size=1, max_size=3), min_size=0, max_size=12), top_m=st.integers(1, 12))
def test_property_agrees_with_reference(corpus, top_m):
    records = text_records(corpus)
    report = filter_by_query_words(records, top_m)
    queries, kept, dropped = reference_filter(records, top_m)
    assert report.query_words == queries
    assert {r.id: r.captions for r in report.kept} == kept
    assert [r.id for r in report.dropped] == dropped
