"""Tests for shared-demonstration few-shot VQA: demonstration lists, open answers equal to plain
greedy generation on the full prompt, closed-set ranking equal to brute-force sequence scoring."""

import re

import numpy as np
import pytest
import torch

from vlbridge.data.records import VQARecord
from vlbridge.errors import UserError
from vlbridge.evaluation import fewshot, vqa
from vlbridge.evaluation.fewshot import FewShotConfig, assign_sets, demo_lists, evaluate_fewshot
from vlbridge.evaluation.likelihood import continuation_losses

VOCABULARY = {"colour": ("red", "blue", "green"), "position": ("top", "top left", "left", "centre")}


def record(qid, image_id, question, answer, answer_type):
    return VQARecord(qid, image_id, f"/img/{image_id}.png", question, [answer] * 10, answer_type)


SUPPORT = [record(f"s{i}", f"simg{i // 2}", f"what colour is the circle {i}?", ["red", "blue"][i % 2], "colour")
           for i in range(30)]
QUERIES = [record(f"q{i}", f"qimg{i}", q, a, t) for i, (q, a, t) in enumerate([
    ("what colour is the circle?", "red", "colour"), ("where is the star?", "top left", "position"),
    ("what colour is the square?", "blue", "colour"), ("where is the circle?", "centre", "position"),
    ("how many shapes are there?", "2", "count"),
])]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny_model(request, tmp_path_factory):
    """A tiny LiMBeR whose LM has absolute (gpt2) or rotary (llama) positions and varied predictions."""
    from helpers.tiny_lm import save_tiny_lm

    from vlbridge.models.limber import Limber, LimberConfig

    lm_dir = save_tiny_lm(tmp_path_factory.mktemp("fewshot_lm"), request.param)
    torch.manual_seed(0)
    config = LimberConfig(encoder="", lm=str(lm_dir), num_prefix_tokens=2, pooled=True, feature_dim=8)
    model = Limber.build(config).eval()
    with torch.no_grad():
        model.projector.proj.weight.mul_(3.0)  # prefixes big enough to change the LM's answers
    return model


@pytest.fixture(scope="module")
def features():
    generator = torch.Generator().manual_seed(1)
    return {r.image_id: torch.randn(8, generator=generator) for r in SUPPORT + QUERIES}


def test_demo_lists_are_seeded_nested_free_of_repeats_and_avoid_the_query_image():
    config = FewShotConfig(demo_sets=3, seed=4)
    lists = demo_lists(SUPPORT, 4, config)
    assert len(lists) == 3 and all(len({d.image_id for d in demos}) == 4 for demos in lists)
    assert lists == demo_lists(SUPPORT, 4, config) != demo_lists(SUPPORT, 4, FewShotConfig(demo_sets=3, seed=5))
    assert demo_lists(SUPPORT, 0, config) == [[], [], []]
    clash = record("qx", lists[0][0].image_id, "what colour?", "red", "colour")
    assigned = assign_sets([clash] * 5, lists, seed=0)
    assert all(clash.image_id not in {d.image_id for d in lists[i]} for i in assigned)
    with pytest.raises(UserError, match="support pool has only"):
        demo_lists(SUPPORT[:4], 4, config)


def full_prompts(model, features, config, n_shots):
    """The plain prompt of each query with its assigned demonstrations, as evaluate_vqa builds it."""
    lists = demo_lists(SUPPORT, n_shots, config)
    assigned = assign_sets(QUERIES, lists, config.seed)
    prompts = [vqa.build_prompt(q, lists[s], features, config.blind, config.template) for q, s in zip(QUERIES, assigned)]
    return [vqa.model_segments(p) for p in prompts]


@pytest.mark.parametrize("blind", [False, True])
@pytest.mark.parametrize("n_shots", [0, 2])
@pytest.mark.parametrize("batch_size", [3, 64])  # 64: every question in one batch over all demonstration lists
def test_open_answers_equal_plain_greedy_generation_of_the_full_prompt(tiny_model, features, blind, n_shots, batch_size):
    from vlbridge.models.generation import GenerationConfig, answer_questions

    config = FewShotConfig(shots=(n_shots,), demo_sets=3, blind=blind, batch_size=batch_size, max_new_tokens=6,
                           vocabulary=VOCABULARY)
    result = evaluate_fewshot(tiny_model, QUERIES, SUPPORT, config, features)[str(n_shots)]
    expected = answer_questions(tiny_model, full_prompts(tiny_model, features, config, n_shots),
                                GenerationConfig(max_new_tokens=6))
    assert [r.open_answer for r in result] == [vqa.first_line(text) for text in expected]


def brute_force_scores(model, features, config, n_shots):
    """Candidate log-probabilities from scoring every full prompt + candidate sequence from scratch."""
    from vlbridge.models.limber import embed_prompt

    prompts = full_prompts(model, features, config, n_shots)
    scores = []
    for query, prompt in zip(QUERIES, prompts):
        if query.answer_type not in VOCABULARY:
            scores.append(None)
            continue
        candidate_set = fewshot.CandidateSet(model.lm, VOCABULARY[query.answer_type])
        context = embed_prompt(model.lm, model.embed_segments([prompt])[0])
        losses = continuation_losses(model.lm, [context] * len(candidate_set.answers), candidate_set.token_ids)
        scores.append([-float(x.sum()) for x in losses])
    return scores


@pytest.mark.parametrize("n_shots", [0, 1, 4])
@pytest.mark.parametrize("batch_size", [2, 64])
def test_closed_set_scores_equal_brute_force_scoring(tiny_model, features, n_shots, batch_size):
    config = FewShotConfig(shots=(n_shots,), demo_sets=2, batch_size=batch_size, vocabulary=VOCABULARY)
    expected = brute_force_scores(tiny_model, features, config, n_shots)
    lists = demo_lists(SUPPORT, n_shots, config)
    assigned = assign_sets(QUERIES, lists, config.seed)
    candidates = {kind: fewshot.CandidateSet(tiny_model.lm, answers) for kind, answers in VOCABULARY.items()}
    for set_index, demos in enumerate(lists):  # the evaluator's own path, one demonstration list at a time
        rows = [i for i, s in enumerate(assigned) if s == set_index]
        if not rows:
            continue
        demo = fewshot._embed(tiny_model, fewshot._segments(demos, features, config, solved=True), bos=True)
        suffixes = [fewshot._embed(tiny_model, fewshot._segments([QUERIES[i]], features, config, solved=False), bos=False)
                    for i in rows]
        with torch.no_grad():
            state = fewshot.prompt_state(tiny_model.lm, [demo], suffixes)
            got = fewshot.candidate_scores(tiny_model.lm, state, [candidates.get(QUERIES[i].answer_type) for i in rows])
            best = fewshot.best_candidates(tiny_model.lm, state, [candidates.get(QUERIES[i].answer_type) for i in rows],
                                           per_round=1)
        assert best == [None if s is None else int(np.argmax(s)) for s in got]  # the pruned search finds the argmax
        for i, scores in zip(rows, got):
            assert (scores is None) == (expected[i] is None)
            if scores is not None:
                assert scores == pytest.approx(expected[i], abs=1e-4)
    result = evaluate_fewshot(tiny_model, QUERIES, SUPPORT, config, features)[str(n_shots)]
    chosen = [None if s is None else VOCABULARY[q.answer_type][int(torch.tensor(s).argmax())] for q, s in zip(QUERIES, expected)]
    assert [r.closed_answer for r in result] == chosen
    count = [r for r in result if r.answer_type == "count"][0]
    assert count.closed_answer is None and count.closed_accuracy is None  # no vocabulary for that type


def test_prefix_ambiguous_candidates_are_scored_with_their_end(tiny_model):
    colours = fewshot.CandidateSet(tiny_model.lm, ["red", "blue"])
    positions = fewshot.CandidateSet(tiny_model.lm, ["top", "top left"])
    newline = tiny_model.lm.tokenize(["\n"])[0][-1]
    assert all(ids[-1] != newline for ids in colours.token_ids)
    assert all(ids[-1] == newline for ids in positions.token_ids)


def test_accuracies_use_the_official_metric(tiny_model, features):
    config = FewShotConfig(shots=(1,), demo_sets=2, vocabulary=VOCABULARY)
    rows = evaluate_fewshot(tiny_model, QUERIES, SUPPORT, config, features)["1"]
    from vlbridge.evaluation.metrics.vqa_accuracy import item_accuracy

    for query, row in zip(QUERIES, rows):
        assert row.open_accuracy == item_accuracy(row.open_answer, query.answers)
        if row.closed_answer is not None:
            assert row.closed_accuracy == item_accuracy(row.closed_answer, query.answers)


def test_prompt_positions_count_what_the_lm_reads(tiny_model, features):
    from vlbridge.models.limber import embed_prompt

    for blind in (False, True):
        prompt = vqa.build_prompt(QUERIES[1], SUPPORT[:4], features, blind, FewShotConfig().template)
        embedded = embed_prompt(tiny_model.lm, tiny_model.embed_segments([vqa.model_segments(prompt)])[0])
        assert vqa.prompt_positions(tiny_model, prompt) == embedded.shape[0]


def test_shots_that_overflow_the_context_are_dropped_oldest_first(tiny_model, features, monkeypatch, caplog):
    import vlbridge.models.generation as generation

    def build(query, shots):
        return vqa.build_prompt(query, shots, features, False, vqa.QUESTION_TEMPLATE)

    shots = SUPPORT[:4]
    room = vqa.prompt_positions(tiny_model, build(QUERIES[0], shots[1:])) + 5  # three shots and 5 new tokens fit
    monkeypatch.setattr(generation, "max_positions", lambda lm: room)
    prompt, dropped = vqa.fit_shots(tiny_model, QUERIES[0], shots, 5, build)
    assert dropped == 1 and prompt == build(QUERIES[0], shots[1:])
    assert vqa.fit_shots(tiny_model, QUERIES[0], shots, 6, build) == (build(QUERIES[0], shots[2:]), 2)  # one more token
    monkeypatch.setattr(generation, "max_positions", lambda lm: 3)  # not even the query fits: left as is
    assert vqa.fit_shots(tiny_model, QUERIES[0], shots, 5, build) == (build(QUERIES[0], []), 4)
    monkeypatch.setattr(generation, "max_positions", lambda lm: room)
    with caplog.at_level("WARNING"):
        result = vqa.evaluate_vqa(tiny_model, QUERIES[:1], SUPPORT, vqa.VQAEvalConfig(shots=(4,), template=vqa.QUESTION_TEMPLATE),
                                  generation.GenerationConfig(max_new_tokens=5), features)
    assert re.search(r"VQA 4-shot: [1-4] solved example\(s\) dropped from 1 prompt\(s\)", caplog.text) and "4" in result


def test_truncate_to_longest_answer_keeps_as_many_words_as_the_longest_human_answer():
    answers = ["red", "dark red", "red", "a dark red one"]
    assert fewshot.truncate_to_longest_answer("a dark red circle on the left", answers) == "a dark red circle"
    assert fewshot.truncate_to_longest_answer("  red  ", ["red"] * 10) == "red"
    assert fewshot.truncate_to_longest_answer("two red circles", ["2"] * 10) == "two"
    assert fewshot.truncate_to_longest_answer("yes", ["no", "yes"]) == "yes"
    assert fewshot.truncate_to_longest_answer("", ["no"]) == ""


def test_truncate_answers_cuts_open_answers_before_scoring(tiny_model, features):
    """LiMBeR's VQA answers follow MAGMA: stripped and cut to the longest human answer's word count
    (jmerullo/limber issue #2); every query here has a 1- or 2-word answer."""
    plain = evaluate_fewshot(tiny_model, QUERIES, SUPPORT, FewShotConfig(shots=(0, 1), max_new_tokens=6), features)
    cut = evaluate_fewshot(tiny_model, QUERIES, SUPPORT, FewShotConfig(shots=(0, 1), max_new_tokens=6,
                                                                        truncate_answers=True), features)
    from vlbridge.evaluation.metrics.vqa_accuracy import item_accuracy

    for shots in ("0", "1"):
        for query, full, short in zip(QUERIES, plain[shots], cut[shots]):
            words = len(query.answers[0].split())
            assert short.open_answer == " ".join(full.open_answer.split()[:words])
            assert short.open_accuracy == item_accuracy(short.open_answer, query.answers)
    assert any(len(r.open_answer.split()) > len(q.answers[0].split()) for s in plain.values() for q, r in zip(QUERIES, s))
