"""CIDEr-D, BLEU-1..4 and ROUGE-L equal pycocoevalcap's per-image and corpus scores to 1e-9.

pycocoevalcap (the reference) is imported only here and in bench/, never in src/.
Corpora: random word salads over small vocabularies (many shared n-grams, repeated words,
empty and very long sentences) and shapes-world-like captions; raw (tokenize="none") captions
mixing words with every Unicode whitespace character, scored through `score_captions` and the
CLI, where each pycocoevalcap scorer splits the strings itself (Rouge on " ", Cider/Bleu on any
whitespace).
"""

import contextlib
import io
import json
import random
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbridge.cli import main
from vlbridge.errors import BadInputError
from vlbridge.evaluation.metrics.bleu import bleu
from vlbridge.evaluation.metrics.cider import build_index, cider_d
from vlbridge.evaluation.metrics.io import rouge_tokens, score_captions, score_nocaps, score_tokenized
from vlbridge.evaluation.metrics.ptb_tokenizer import ptb_tokenize
from vlbridge.evaluation.metrics.rouge import _lcs_dynamic, lcs_lengths, rouge_l

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

TOL = 1e-9
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
RELATIONS = ["above", "below", "left of", "right of", "next to"]
# Every character str.split() splits on: \t..\r, U+001C..U+001F, space, U+0085, U+00A0, U+1680,
# U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
NOT_WHITESPACE = "\u200b\u2060\ufeff\u180e"  # zero-width characters that look blank but are part of a token
RAW_WORDS = ["a", "dog", "red", "on", "the", "ball", "a\u200bdog", "\u2060", "\u200b", "\ufeffred", "x\u180ey"]


def random_corpus(seed: int, num_images: int, vocab: int, max_len: int, max_refs: int = 5):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, max_len)))

    gts = {f"img{i}": [sentence() for _ in range(rng.randint(1, max_refs))] for i in range(num_images)}
    res = {f"img{i}": [sentence()] for i in range(num_images)}
    return gts, res


def shapes_corpus(seed: int, num_images: int):
    rng = random.Random(seed)

    def caption():
        a, b = rng.sample(SHAPES, 2)
        ca, cb = rng.choice(COLOURS), rng.choice(COLOURS)
        style = rng.random()
        if style < 0.4:
            return f"a {ca} {a} {rng.choice(RELATIONS)} a {cb} {b}"
        if style < 0.7:
            return f"there is a {ca} {a} and a {cb} {b}"
        return f"{rng.choice(['one', 'two', 'three'])} {ca} shapes"

    gts = {str(i): [caption() for _ in range(rng.randint(3, 5))] for i in range(num_images)}
    res = {str(i): [caption()] for i in range(num_images)}
    return gts, res


def reference_scores(gts, res):
    """pycocoevalcap on whitespace-tokenized strings: {metric: (corpus, per-image array)}."""
    with contextlib.redirect_stdout(io.StringIO()):
        bleu_corpus, bleu_per = Bleu(4).compute_score(gts, res)
        cider_corpus, cider_per = Cider().compute_score(gts, res)
        rouge_corpus, rouge_per = Rouge().compute_score(gts, res)
    out = {f"BLEU-{n + 1}": (bleu_corpus[n], np.asarray(bleu_per[n])) for n in range(4)}
    out["CIDEr-D"] = (cider_corpus, np.asarray(cider_per))
    out["ROUGE-L"] = (rouge_corpus, np.asarray(rouge_per))
    return out


def our_scores(gts, res):
    refs = {k: [s.split() for s in v] for k, v in gts.items()}
    cands = {k: v[0].split() for k, v in res.items()}
    result = score_tokenized(refs, cands)
    return {name: (result["corpus"][name], np.array([result["per_id"][k][name] for k in gts])) for name in result["corpus"]}


def assert_equal_to_reference(gts, res):
    expected, ours = reference_scores(gts, res), our_scores(gts, res)
    for name, (corpus, per_image) in expected.items():
        assert ours[name][0] == pytest.approx(corpus, abs=TOL, rel=0), name
        np.testing.assert_allclose(ours[name][1], per_image, atol=TOL, rtol=0, err_msg=name)


@pytest.mark.parametrize(
    "seed,num_images,vocab,max_len",
    [(0, 30, 5, 12), (1, 50, 20, 15), (2, 7, 3, 8), (3, 40, 200, 20), (4, 25, 8, 90)],
)
def test_random_corpora_equal_pycocoevalcap(seed, num_images, vocab, max_len):
    gts, res = random_corpus(seed, num_images, vocab, max_len)
    if not any(s for refs in gts.values() for s in refs):
        pytest.skip("pycocoevalcap's CIDEr cannot score a corpus without any reference n-gram")
    assert_equal_to_reference(gts, res)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shapes_like_corpora_equal_pycocoevalcap(seed):
    gts, res = shapes_corpus(seed, 60)
    assert_equal_to_reference(gts, res)


def test_edge_cases_equal_pycocoevalcap():
    """Empty candidates/references, one-word sentences (no bigrams), duplicates, identical captions."""
    gts = {
        "a": ["a b c d", "a b c d"],
        "b": ["x", ""],
        "c": ["p q p q p q", "q p"],
        "d": ["only one reference here"],
        "e": ["a a a a a a a a a"],
    }
    res = {"a": ["a b c d"], "b": [""], "c": ["p"], "d": ["only one reference here"], "e": ["a a"]}
    assert_equal_to_reference(gts, res)


def test_single_image_cider_is_zero_like_reference():
    """With one image, ln(N) = 0 makes every tf-idf weight 0: pycocoevalcap reports 0."""
    gts, res = {"only": ["a dog runs", "a dog is running"]}, {"only": ["a dog runs"]}
    assert_equal_to_reference(gts, res)
    assert cider_d({"only": [s.split() for s in gts["only"]]}, {"only": res["only"][0].split()}).corpus == 0.0


def test_lcs_bit_parallel_matches_dynamic_programme():
    rng = np.random.default_rng(0)
    sentences = [rng.integers(0, 4, size=rng.integers(0, 100)) for _ in range(120)]
    words = np.concatenate(sentences)
    lengths = np.array([len(s) for s in sentences])
    starts = np.cumsum(lengths) - lengths
    first, second = rng.integers(0, 120, size=200), rng.integers(0, 120, size=200)
    got = lcs_lengths(words, starts, lengths, first, second)
    expected = [_lcs_dynamic(sentences[a], sentences[b]) for a, b in zip(first, second)]
    np.testing.assert_array_equal(got, expected)


def test_metrics_share_one_index():
    gts, res = shapes_corpus(5, 20)
    refs = {k: [s.split() for s in v] for k, v in gts.items()}
    cands = {k: v[0].split() for k, v in res.items()}
    index = build_index(refs, cands)
    assert cider_d(index=index).per_id == cider_d(refs, cands).per_id
    assert bleu(index=index)["BLEU-4"].per_id == bleu(refs, cands)["BLEU-4"].per_id
    assert rouge_l(index=index).per_id == rouge_l(refs, cands).per_id


def test_per_domain_scores_equal_scoring_each_domain_alone():
    gts, res = shapes_corpus(7, 30)
    domains = {k: ["in", "near", "out"][int(k) % 3] for k in gts}
    result = score_nocaps({k: v for k, v in gts.items()}, {k: v[0] for k, v in res.items()}, domains, tokenize="none")
    assert result["df_scope"] == "per-domain"
    assert list(result["by_domain"]) == ["in-domain", "near-domain", "out-domain", "entire"]
    for short, name in [("in", "in-domain"), ("near", "near-domain"), ("out", "out-domain")]:
        subset = [k for k in gts if domains[k] == short]
        expected = reference_scores({k: gts[k] for k in subset}, {k: res[k] for k in subset})
        for metric, (corpus, _) in expected.items():
            assert result["by_domain"][name][metric] == pytest.approx(corpus, abs=TOL, rel=0), (name, metric)
    entire = reference_scores(gts, res)
    assert result["by_domain"]["entire"]["CIDEr-D"] == pytest.approx(entire["CIDEr-D"][0], abs=TOL, rel=0)
    assert result["corpus"]["CIDEr-D"] == pytest.approx(entire["CIDEr-D"][0], abs=TOL, rel=0)


def test_score_captions_none_tokenization_is_whitespace_split():
    gts, res = shapes_corpus(9, 15)
    result = score_captions({k: v for k, v in gts.items()}, {k: v[0] for k, v in res.items()}, tokenize="none")
    expected = reference_scores(gts, res)
    assert result["corpus"]["CIDEr-D"] == pytest.approx(expected["CIDEr-D"][0], abs=TOL, rel=0)
    assert result["num_images"] == 15 and result["tokenize"] == "none"
    assert "by_domain" not in result


def reference_scores_raw(gts, res):
    """`reference_scores` on raw strings; without CIDEr-D where pycocoevalcap's Cider cannot score
    (no reference has a token: its max() over document frequencies fails)."""
    if any(s.split() for refs in gts.values() for s in refs):
        return reference_scores(gts, res)
    with contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(ValueError):
            Cider().compute_score(gts, res)
        bleu_corpus, bleu_per = Bleu(4).compute_score(gts, res)
        rouge_corpus, rouge_per = Rouge().compute_score(gts, res)
    out = {f"BLEU-{n + 1}": (bleu_corpus[n], np.asarray(bleu_per[n])) for n in range(4)}
    out["ROUGE-L"] = (rouge_corpus, np.asarray(rouge_per))
    return out


def assert_result_equals_reference(result, gts, res):
    """Corpus and per-image scores of a `score_captions` result equal pycocoevalcap's on the same strings."""
    expected = reference_scores_raw(gts, res)
    for name, (corpus, per_image) in expected.items():
        assert result["corpus"][name] == pytest.approx(corpus, abs=TOL, rel=0), name
        ours = np.array([result["per_id"][k][name] for k in gts])
        np.testing.assert_allclose(ours, per_image, atol=TOL, rtol=0, err_msg=name)
    if "CIDEr-D" not in expected:  # no reference n-gram anywhere: every tf-idf similarity is 0
        assert all(scores["CIDEr-D"] == 0.0 for scores in result["per_id"].values())


def test_whitespace_alphabet_is_what_str_split_splits_on():
    assert {"\t", " ", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000"} <= set(WHITESPACE)
    assert len(WHITESPACE) == 29 and not any(c.isspace() for c in NOT_WHITESPACE)


raw_gap = st.one_of(st.just(" "), st.just("  "), st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=3))
raw_caption = st.lists(st.one_of(st.sampled_from(RAW_WORDS), raw_gap), max_size=10).map("".join)
raw_corpus = st.lists(st.tuples(st.lists(raw_caption, min_size=1, max_size=4), raw_caption), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(corpus=raw_corpus)
def test_raw_captions_with_unicode_whitespace_equal_pycocoevalcap(corpus):
    """tokenize="none": every metric equals its pycocoevalcap scorer on the raw strings, per image,
    per corpus and per domain (empty, all-whitespace, tab- and U+3000-separated captions included)."""
    refs = {f"img{i}": group for i, (group, _) in enumerate(corpus)}
    cands = {f"img{i}": cand for i, (_, cand) in enumerate(corpus)}
    domains = {key: ["even", "odd"][i % 2] for i, key in enumerate(refs)}
    result = score_captions(refs, cands, tokenize="none", domains=domains)
    assert_result_equals_reference(result, refs, {k: [v] for k, v in cands.items()})
    for domain in ("even", "odd")[: len(refs)]:
        subset = [k for k in refs if domains[k] == domain]
        expected = reference_scores_raw({k: refs[k] for k in subset}, {k: [cands[k]] for k in subset})
        for name, (corpus_score, _) in expected.items():
            assert result["by_domain"][domain][name] == pytest.approx(corpus_score, abs=TOL, rel=0), (domain, name)


def raw_text_corpus(seed: int, num_images: int):
    """Captions whose gaps cycle through every whitespace character, plus empty and blank captions."""
    rng = random.Random(seed)
    gaps = iter(list(WHITESPACE) * 40)

    def caption():
        style = rng.random()
        if style < 0.08:
            return ""
        if style < 0.16:
            return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 3)))
        words = [rng.choice(RAW_WORDS + COLOURS + SHAPES) for _ in range(rng.randint(1, 9))]
        text = "".join(word + (" " if rng.random() < 0.5 else next(gaps)) for word in words)
        return text if rng.random() < 0.5 else next(gaps) + text.rstrip(" ")

    refs = {str(i): [caption() for _ in range(rng.randint(1, 5))] for i in range(num_images)}
    return refs, {str(i): caption() for i in range(num_images)}


def test_cli_scores_raw_text_file_like_pycocoevalcap(tmp_path, capsys):
    """`vlbridge score captions --tokenize none` on a UTF-8 file holding raw U+2028, U+0085, U+3000 ..."""
    refs, cands = raw_text_corpus(seed=11, num_images=60)
    assert {c for text in [*cands.values(), *sum(refs.values(), [])] for c in text} >= set(WHITESPACE)
    source, out = tmp_path / "raw.json", tmp_path / "scores.json"
    source.write_text(json.dumps({"refs": refs, "cands": cands}, ensure_ascii=False), encoding="utf-8")
    assert main(["score", "captions", str(source), "--tokenize", "none", "--out", str(out)]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["tokenize"] == "none" and result["num_images"] == 60
    assert_result_equals_reference(result, refs, {k: [v] for k, v in cands.items()})


def test_ptb_tokens_holding_no_break_spaces_equal_pycocoevalcap():
    """PTB joins "5 7/8" into one token "5\u00a07/8": Rouge keeps it whole, Cider and Bleu split it."""
    refs = {
        "1": ["A pipe 5 7/8 inches long.", "a 5 7/8 inch pipe"],
        "2": ["Cut 3 1/2 cups of flour", "three and a half cups"],
        "3": ["a dog runs", "A dog is running."],
    }
    cands = {"1": "a pipe 5 7/8 inches", "2": "3 1/2 cups", "3": "a dog"}
    assert "\u00a0" in ptb_tokenize(cands["1"])
    result = score_captions(refs, cands, tokenize="ptb")
    gts = {k: [ptb_tokenize(c) for c in v] for k, v in refs.items()}
    assert_result_equals_reference(result, gts, {k: [ptb_tokenize(v)] for k, v in cands.items()})


def test_rouge_keeps_the_shared_index_when_strings_are_single_spaced():
    """No second index on the usual path: single-space-joined strings (and "") split alike both ways."""
    texts = ["a red ball", "", "x"]
    assert rouge_tokens(texts, [t.split() for t in texts]) is None
    for odd in ["a  b", " a", "a ", "a\tb", "a\u3000b", " "]:
        assert rouge_tokens([odd], [odd.split()]) == [odd.split(" ")]


@pytest.mark.parametrize(
    "refs,cands,message",
    [
        ({"a": ["x"]}, {"a": "x", "b": "y"}, "no references"),
        ({"a": ["x"], "b": ["y"]}, {"a": "x"}, "no candidate"),
        ({"a": "x"}, {"a": "x"}, "must be a list"),
        ({"a": []}, {"a": "x"}, "empty list"),
        ({"a": ["x", 3]}, {"a": "x"}, "strings"),
        ({"a": ["x"]}, {"a": ["x"]}, "must be a string"),
        ({}, {}, "non-empty"),
    ],
)
def test_malformed_caption_inputs_raise_user_errors(refs, cands, message):
    with pytest.raises(BadInputError, match=message):
        score_captions(refs, cands, tokenize="none")


def test_unknown_tokenizer_and_domains_are_rejected():
    with pytest.raises(BadInputError, match="unknown tokenization"):
        score_captions({"a": ["x"]}, {"a": "x"}, tokenize="spacy")
    with pytest.raises(BadInputError, match="no domain"):
        score_captions({"a": ["x"], "b": ["y"]}, {"a": "x", "b": "y"}, domains={"a": "in"})
    with pytest.raises(BadInputError, match="unknown NoCaps domain"):
        score_nocaps({"a": ["x"]}, {"a": "x"}, {"a": "inside"})
