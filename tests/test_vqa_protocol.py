"""Tests for the few-shot VQA protocol: shot choice, prompt layout, blind baseline, answer extraction."""

import pytest
import torch

from vlbridge.data.records import VQARecord
from vlbridge.errors import UserError
from vlbridge.evaluation import vqa
from vlbridge.evaluation.vqa import ImageSegment, TextSegment


def record(qid, image_id, question="what colour is it?", answers=None, answer_type="colour"):
    return VQARecord(
        question_id=qid,
        image_id=image_id,
        image=f"/img/{image_id}.png",
        question=question,
        answers=answers or ["red"] * 10,
        answer_type=answer_type,
    )


SUPPORT = [record(f"s{i}", f"img{i // 2}", question=f"q{i}?", answers=[f"a{i}"] * 10) for i in range(40)]


def test_majority_answer_and_ties():
    assert vqa.majority_answer(["2", "two", "2 ", "2", "two"]) == "2"
    assert vqa.majority_answer(["yes", "no", "no", "yes"]) == "yes"  # tie -> first seen
    with pytest.raises(UserError, match="no answers"):
        vqa.majority_answer([])


def test_first_line_is_the_answer():
    assert vqa.first_line(" red\nQ: what shape? A: circle") == "red"
    assert vqa.first_line("  two shapes  ") == "two shapes"
    assert vqa.first_line("\nred") == ""
    assert vqa.first_line("") == ""


def test_shot_choice_is_seeded_per_question_and_reproducible():
    query = record("q1", "imgX")
    shots = vqa.choose_shots(query, SUPPORT, 4, seed=0)
    assert [s.question_id for s in shots] == [s.question_id for s in vqa.choose_shots(query, SUPPORT, 4, seed=0)]
    assert [s.question_id for s in shots] != [s.question_id for s in vqa.choose_shots(query, SUPPORT, 4, seed=1)]
    other = vqa.choose_shots(record("q2", "imgX"), SUPPORT, 4, seed=0)
    assert [s.question_id for s in other] != [s.question_id for s in shots]
    # fewer shots are a prefix of more shots (only the count differs between settings)
    for n in (0, 1, 2):
        assert vqa.choose_shots(query, SUPPORT, n, seed=0) == shots[:n]
    # reference: the documented rule, written out directly
    order = vqa.shot_rng(0, "q1").permutation(len(SUPPORT))
    expected, used = [], {"imgX"}
    for index in order:
        if SUPPORT[index].image_id not in used:
            expected.append(SUPPORT[index].question_id)
            used.add(SUPPORT[index].image_id)
    assert [s.question_id for s in shots] == expected[:4]


def test_shots_never_show_the_query_image_and_use_distinct_images():
    for i in range(20):
        query = SUPPORT[i]  # the query itself is in the support split
        shots = vqa.choose_shots(query, SUPPORT, 4, seed=i)
        images = [s.image_id for s in shots]
        assert query.image_id not in images
        assert len(set(images)) == 4


def test_too_small_support_is_a_user_error():
    with pytest.raises(UserError, match="only 1 usable images"):
        vqa.choose_shots(record("q", "img0"), SUPPORT[:4], 2, seed=0)


def test_prompt_layout_is_exact():
    query = record("q", "imgQ", question=" what shape is the red object? ")
    shots = [
        record("a", "imgA", question="how many shapes are there?", answers=["2"] * 7 + ["two"] * 3),
        record("b", "imgB", question="is there a blue square?", answers=["yes"] * 6 + ["no"] * 4),
    ]
    prompt = vqa.build_prompt(query, shots)
    assert prompt == [
        ImageSegment("imgA"),
        TextSegment("Q: how many shapes are there? A: 2\n"),
        ImageSegment("imgB"),
        TextSegment("Q: is there a blue square? A: yes\n"),
        ImageSegment("imgQ"),
        TextSegment("Q: what shape is the red object? A:"),
    ]
    assert prompt[0].image == "/img/imgA.png"
    assert vqa.build_prompt(query, []) == [ImageSegment("imgQ"), TextSegment("Q: what shape is the red object? A:")]


def test_template_words_the_query_and_every_solved_example():
    query = record("q", "imgQ", question="what shape is the red object?")
    shot = record("a", "imgA", question="how many shapes are there?", answers=["2"] * 10)
    prompt = vqa.build_prompt(query, [shot], template=vqa.FROZEN_TEMPLATE)
    assert prompt == [
        ImageSegment("imgA"),
        TextSegment("Question: how many shapes are there? Answer: 2\n"),
        ImageSegment("imgQ"),
        TextSegment("Question: what shape is the red object? Answer:"),
    ]


@pytest.mark.parametrize("template", ["Q: A:", "{question} {question}", "Q: {question} {answer}", "Q: {question} }"])
def test_a_template_without_exactly_one_question_field_is_a_user_error(template):
    with pytest.raises(UserError, match="exactly one"):
        vqa.build_prompt(record("q", "imgQ"), [], template=template)


def test_blind_prompt_has_the_same_text_and_no_image():
    query = record("q", "imgQ")
    shots = vqa.choose_shots(query, SUPPORT, 4, seed=0)
    seeing = vqa.build_prompt(query, shots)
    blind = vqa.build_prompt(query, shots, blind=True)
    assert not any(isinstance(s, ImageSegment) for s in blind)
    assert blind == [s for s in seeing if isinstance(s, TextSegment)]


def test_cached_features_ride_along_and_missing_ones_are_an_error():
    query, shot = record("q", "imgQ"), record("a", "imgA")
    features = {"imgQ": torch.ones(3), "imgA": torch.zeros(3)}
    prompt = vqa.build_prompt(query, [shot], features)
    assert torch.equal(prompt[0].features, torch.zeros(3)) and torch.equal(prompt[2].features, torch.ones(3))
    with pytest.raises(UserError, match="no cached features for image 'imgA'"):
        vqa.build_prompt(query, [shot], {"imgQ": torch.ones(3)})


# ---------------------------------------------------------------------------- with a tiny LiMBeR model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from helpers.limber_train_helpers import make_tiny_lm

    from vlbridge.models.limber import Limber, LimberConfig

    lm_dir = make_tiny_lm(tmp_path_factory.mktemp("vqa_lm"))
    torch.manual_seed(0)
    config = LimberConfig(encoder="", lm=str(lm_dir), num_prefix_tokens=2, pooled=True, feature_dim=8)
    return Limber.build(config).eval()


def test_prompt_embeddings_follow_the_segments_exactly(tiny_model):
    model, lm = tiny_model, tiny_model.lm
    features = {"imgA": torch.randn(8), "imgQ": torch.randn(8)}
    query = record("q", "imgQ", question="what shape is it?")
    shot = record("a", "imgA", question="how many shapes are there?", answers=["2"] * 10)
    prompt = vqa.build_prompt(query, [shot], features)
    with torch.no_grad():
        (row,) = model.embed_segments([vqa.model_segments(prompt)])
        from vlbridge.models.limber import build_prompt_embeds

        embeds, mask = build_prompt_embeds(lm, [row])
        prefix = model.image_prefix({"image_features": torch.stack([features["imgA"], features["imgQ"]])})  # (2, 2, H)
        shot_ids = lm.tokenize(["Q: how many shapes are there? A: 2\n"])[0]
        query_ids = lm.tokenize(["Q: what shape is it? A:"])[0]
        expected = torch.cat([prefix[0], lm.embed(torch.tensor(shot_ids)), prefix[1], lm.embed(torch.tensor(query_ids))])
    assert embeds.shape == (1, 2 + len(shot_ids) + 2 + len(query_ids), lm.hidden_size)
    torch.testing.assert_close(embeds[0], expected, rtol=0, atol=0)
    assert mask.sum() == embeds.shape[1]


def test_blind_prompt_embeds_only_the_text_tokens(tiny_model):
    lm = tiny_model.lm
    query = record("q", "imgQ", question="what shape is it?")
    shot = record("a", "imgA", question="how many shapes are there?", answers=["2"] * 10)
    blind = vqa.build_prompt(query, [shot], blind=True)
    with torch.no_grad():
        (row,) = tiny_model.embed_segments([vqa.model_segments(blind)])
        from vlbridge.models.limber import build_prompt_embeds

        embeds, _ = build_prompt_embeds(lm, [row])
        ids = lm.tokenize(["Q: how many shapes are there? A: 2\nQ: what shape is it? A:"])[0]
        expected = lm.embed(torch.tensor(ids))
    assert all(isinstance(segment, str) for segment in row)  # no image prefix at all
    torch.testing.assert_close(embeds[0], expected, rtol=0, atol=0)


def test_evaluate_vqa_takes_first_lines_and_scores_officially(tiny_model, monkeypatch):
    import vlbridge.models.generation as generation

    seen_prompts = []

    def fake_answers(model, prompts, config):
        seen_prompts.extend(prompts)
        # the model "answers" red for every prompt, then keeps talking on the next line
        return [" red\nQ: and then? A: blue" for _ in prompts]

    monkeypatch.setattr(generation, "answer_questions", fake_answers)
    queries = [record("q1", "imgQ1", answers=["red"] * 10), record("q2", "imgQ2", answers=["blue"] * 10, answer_type="shape")]
    features = {r.image_id: torch.randn(8) for r in queries + SUPPORT}
    config = vqa.VQAEvalConfig(shots=(0, 2), seed=0, batch_size=1)
    result = vqa.evaluate_vqa(tiny_model, queries, SUPPORT, config, features=features)
    assert result["0"] == result["2"] == 0.5
    assert result["by_answer_type"]["0"] == {"colour": 1.0, "shape": 0.0}
    assert [s["prediction"] for s in result["samples"]["2"]] == ["red", "red"]
    # 2-shot prompts: image, text, image, text, image, text (features stand in for the images)
    two_shot = seen_prompts[2]
    assert [type(s).__name__ for s in two_shot] == ["Tensor", "str", "Tensor", "str", "Tensor", "str"]
    assert torch.equal(two_shot[4], features["imgQ1"])
    # an image the feature store could not read: its question and support items are left out
    del features["imgQ2"], features["img0"]
    seen_prompts.clear()
    result = vqa.evaluate_vqa(tiny_model, queries, SUPPORT, config, features=features)
    assert [s["question_id"] for s in result["samples"]["2"]] == ["q1"] and result["0"] == 1.0
    # (a shot showing img0 would have raised "no cached features for image 'img0'")
    assert len(seen_prompts) == 2 and all(len(p) == 6 for p in seen_prompts[1:])
    # the config's template words every prompt
    seen_prompts.clear()
    vqa.evaluate_vqa(tiny_model, queries, SUPPORT, dataclasses_replace(config, template=vqa.FROZEN_TEMPLATE), features=features)
    assert seen_prompts[0] == [features["imgQ1"], "Question: what colour is it? Answer:"]
    assert seen_prompts[1][1].startswith("Question: ") and " Answer: " in seen_prompts[1][1]


def test_evaluate_vqa_runs_real_generation_blind_and_seeing(tiny_model):
    queries = [record(f"q{i}", f"imgQ{i}", answers=["red"] * 10) for i in range(3)]
    features = {r.image_id: torch.randn(8) for r in queries + SUPPORT}
    from vlbridge.models.generation import GenerationConfig

    config, short = vqa.VQAEvalConfig(shots=(0, 1), batch_size=2), GenerationConfig(max_new_tokens=4)
    seeing = vqa.evaluate_vqa(tiny_model, queries, SUPPORT, config, short, features=features)
    blind = vqa.evaluate_vqa(tiny_model, queries, SUPPORT, dataclasses_replace(config, blind=True), short, features)
    for result in (seeing, blind):
        assert set(result) >= {"0", "1", "by_answer_type", "samples"}
        for shots in ("0", "1"):
            predictions = [s["prediction"] for s in result["samples"][shots]]
            assert all("\n" not in p and p == p.strip() for p in predictions)
            assert 0.0 <= result[shots] <= 1.0


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)
