"""CIDEr-D, BLEU-1..4 and ROUGE-L equal pycocoevalcap's per-image and corpus scores to 1e-9.

pycocoevalcap (the reference) is imported only here and in bench/, never in src/.
Corpora: random word salads over small vocabularies (many shared n-grams, repeated words,
empty and very long sentences) and shapes-world-like captions.
"""

import contextlib
import io
import random

import numpy as np
import pytest

from vlbridge.errors import BadInputError
from vlbridge.evaluation.metrics.bleu import bleu
from vlbridge.evaluation.metrics.cider import build_index, cider_d
from vlbridge.evaluation.metrics.io import score_captions, score_nocaps, score_tokenized
from vlbridge.evaluation.metrics.rouge import _lcs_dynamic, lcs_lengths, rouge_l

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

TOL = 1e-9
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
RELATIONS = ["above", "below", "left of", "right of", "next to"]


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
