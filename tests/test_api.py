"""The Python API (vlbridge.api, vlbridge.load) against the functions it wraps, on tiny saved models.

Spec: `LimberModel.caption` equals `caption_images` on the encoder's pixels; `answer` equals the VQA
evaluation's prompt (`build_prompt` + `answer_prompts`) with the same shots; `ClipModel.classify` is the
zero-shot classifier scored by softmax(logit_scale * cosine); bad input is one clear UserError.
"""

from __future__ import annotations

import pytest
import torch

from helpers.serve_helpers import png_bytes
from vlbridge.errors import BadInputError, UserError


@pytest.fixture(scope="module")
def tiny(serve_models):
    return serve_models


@pytest.fixture(scope="module")
def limber(tiny):
    import vlbridge

    return vlbridge.load(tiny[0].limber)


@pytest.fixture(scope="module")
def clip(tiny):
    import vlbridge

    return vlbridge.load(tiny[0].clip)


def test_load_tells_limber_from_clip(tiny, limber, clip):
    from vlbridge.api import ClipModel, LimberModel

    assert isinstance(limber, LimberModel) and isinstance(clip, ClipModel)
    assert limber.name == "limber" and clip.name == "clip"


def test_caption_equals_caption_images_on_pixels(tiny, limber):
    from vlbridge.data.records import open_image
    from vlbridge.models.generation import GenerationConfig, caption_images

    _, paths = tiny
    model = limber.model
    pixels = torch.stack([model.encoder.preprocess(open_image(p)) for p in paths])
    expected = caption_images(model, {"pixel_values": pixels}, prompt="A picture of", config=GenerationConfig(max_new_tokens=8))
    assert limber.caption([str(p) for p in paths], max_new_tokens=8) == expected
    assert [limber.caption(p, max_new_tokens=8) for p in paths] == expected  # one at a time: same captions
    assert len(set(expected)) > 1  # the tiny model tells images apart


def test_caption_accepts_bytes_and_pil_and_a_prompt(tiny, limber):
    from PIL import Image

    path = tiny[1][0]
    by_path = limber.caption(path, prompt="Q:", max_new_tokens=6)
    assert limber.caption(path.read_bytes(), prompt="Q:", max_new_tokens=6) == by_path
    assert limber.caption(Image.open(path), prompt="Q:", max_new_tokens=6) == by_path


def test_answer_equals_the_vqa_evaluation_prompt(tiny, limber):
    from vlbridge.data.records import VQARecord
    from vlbridge.evaluation.vqa import FROZEN_TEMPLATE, answer_prompts, build_prompt
    from vlbridge.models.generation import GenerationConfig

    _, paths = tiny
    shots = [(paths[1], "how many shapes are there?", "two"), {"image": paths[2], "question": "is it red?", "answer": "yes"}]
    records = [VQARecord(f"s{i}", f"s{i}", p, q, [a]) for i, (p, q, a) in
               enumerate([shots[0], (paths[2], "is it red?", "yes")])]
    query = VQARecord("q", "q", paths[0], "what colour is the circle?", [])
    for template in (None, FROZEN_TEMPLATE):
        prompt = build_prompt(query, records, template=template or "Q: {question} A:")
        expected = answer_prompts(limber.model, [prompt], GenerationConfig(max_new_tokens=10), batch_size=1)[0]
        assert limber.answer(paths[0], "what colour is the circle?", shots=shots, template=template) == expected


def test_blind_answer_has_no_image(tiny, limber):
    from vlbridge.models.generation import GenerationConfig, answer_questions

    expected = answer_questions(limber.model, [["Q: what colour is the circle? A:"]], GenerationConfig(max_new_tokens=10))[0]
    assert limber.answer(None, "what colour is the circle?") == expected


def test_classify_is_softmax_of_scaled_cosine_to_the_zero_shot_classifier(tiny, clip):
    from vlbridge.data.records import open_image
    from vlbridge.evaluation.zero_shot import build_classifier

    _, paths = tiny
    labels, templates = ["circle", "square", "red star"], ["a photo of a {}.", "a drawing of a {}."]
    classifier = build_classifier(clip.bundle, labels, templates)
    embeddings = clip.bundle.embed_images([open_image(p) for p in paths[:2]])
    probabilities = (clip.logit_scale * embeddings @ classifier.T).softmax(dim=-1)
    ranked = clip.classify(paths[:2], labels, templates=templates)
    for row, result in zip(probabilities, ranked):
        assert [r["label"] for r in result] == [labels[i] for i in row.argsort(descending=True)]
        assert [r["score"] for r in result] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-6)
        assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)
    single = clip.classify(paths[0], labels, templates=templates)
    assert [r["label"] for r in single] == [r["label"] for r in ranked[0]]
    assert [r["score"] for r in single] == pytest.approx([r["score"] for r in ranked[0]], abs=1e-6)
    scale = float(clip.bundle.model.logit_scale.detach().exp())
    assert clip.logit_scale == pytest.approx(min(scale, 100.0))


def test_embeddings_are_the_bundles_unit_vectors(tiny, clip):
    from vlbridge.data.records import open_image

    _, paths = tiny
    assert torch.allclose(clip.embed_images(paths[:3]), clip.bundle.embed_images([open_image(p) for p in paths[:3]]))
    texts = ["a red circle", "two shapes"]
    vectors = clip.embed_texts(texts)
    assert torch.allclose(vectors, clip.bundle.embed_texts(texts))
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)


def test_save_pretrained_round_trip(tiny, limber, tmp_path):
    from vlbridge.api import LimberModel

    saved = limber.save_pretrained(tmp_path / "copy")
    again = LimberModel.from_pretrained(saved)
    path = tiny[1][0]
    assert again.caption(path, max_new_tokens=8) == limber.caption(path, max_new_tokens=8)


def test_bad_input_is_one_clear_error(tiny, limber, clip, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    cases = [
        (lambda: limber.caption(not_image), "expected a readable image"),
        (lambda: limber.caption(42), "file path, encoded bytes or a PIL image"),
        (lambda: limber.caption(png_bytes(), beams=3), "unknown decoding option 'beams'"),
        (lambda: limber.caption(png_bytes(), max_new_tokens=0), "max_new_tokens must be >= 1"),
        (lambda: limber.answer(png_bytes(), "  "), "question must be non-empty"),
        (lambda: limber.answer(png_bytes(), "what?", shots=[("x", "q")]), "shot 0 must be"),
        (lambda: limber.answer(png_bytes(), "what?", shots=[{"image": png_bytes(), "question": "q"}]), "missing answer"),
        (lambda: clip.classify(png_bytes(), []), "at least one candidate label"),
        (lambda: clip.classify(png_bytes(), ["a", "a"]), "'a' appears more than once"),
        (lambda: clip.classify(png_bytes(), ["a", ""]), "non-empty text"),
        (lambda: clip.classify(png_bytes(), "a, b"), "labels must be a list"),
        (lambda: clip.classify(png_bytes(), ["a"], templates=["no placeholder"]), "must contain {}"),
        (lambda: clip.embed_texts("one string"), "wrap it in a list"),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as caught:
            call()
        assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(BadInputError):
        limber.caption(not_image)


def test_load_rejects_what_is_no_model(tmp_path):
    import vlbridge

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no CLIP weights"):
        vlbridge.load(tmp_path / "empty")
