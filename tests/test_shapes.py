"""Tests of the procedural shapes world in memory: scenes, pictures, captions, VQA, domains, shifts.

Captions and questions are parsed back and checked against the scene with reference logic
written here (positions from raw x/y, counts by hand), not with the module's own helpers.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ImageOps

from vlbridge.data.shapes import (
    COLOURS,
    DOMAINS,
    HELD_OUT_COMBOS,
    SHAPES,
    SHIFTS,
    Scene,
    SceneObject,
    class_names,
    classification_records,
    image_text_records,
    render_scene,
    scene_at,
    vqa_records,
)
from vlbridge.data.shapes_render import BACKGROUND_RGB, COLOUR_RGB
from vlbridge.data.shapes_text import scene_captions
from vlbridge.errors import UserError

COLOUR_RE = "|".join(COLOURS)
SHAPE_RE = "|".join(SHAPES)
POSITION_RE = "top left|top right|bottom left|bottom right|top|bottom|left|right|centre"
MENTION = re.compile(
    rf"\b(?:(small|large) )?({COLOUR_RE}) ({SHAPE_RE})(?: (?:in|at|on) the ({POSITION_RE})\b)?"
)
RELATION = re.compile(
    rf"({COLOUR_RE}) ({SHAPE_RE}) (to the left of|to the right of|above|below) an? (?:(?:small|large) )?"
    rf"({COLOUR_RE}) ({SHAPE_RE})"
)
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
REFERENCE_CELLS = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "centre", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}  # fmt: skip


def reference_cell(obj: SceneObject) -> tuple[int, int]:
    """(row, column) of an object from its raw centre, thirds of the image."""
    third = lambda v: 0 if v < 1 / 3 else (1 if v < 2 / 3 else 2)  # noqa: E731
    return third(obj.y), third(obj.x)


def reference_position(obj: SceneObject) -> str:
    return REFERENCE_CELLS[reference_cell(obj)]


def scene_of(record_id: str, seed: int, max_objects: int = 3) -> Scene:
    split, domain, index = record_id.split("-")[:3]
    found_id, scene = scene_at(int(index), split, seed, domain, 1, max_objects)
    assert found_id == "-".join(record_id.split("-")[:3])
    return scene


def combos_in(text: str) -> set[tuple[str, str]]:
    return {(m.group(2), m.group(3)) for m in MENTION.finditer(text)}


# ---------------------------------------------------------------- vocabulary and domains


def test_vocabulary_and_held_out_combos():
    assert len(SHAPES) == 8 and len(COLOURS) == 8 and DOMAINS == ("in", "near", "out")
    assert len(set(HELD_OUT_COMBOS)) == 12
    assert {c for c, _ in HELD_OUT_COMBOS} == set(COLOURS)  # every colour word still seen elsewhere
    assert {s for _, s in HELD_OUT_COMBOS} == set(SHAPES)
    seen = class_names()
    assert len(seen) == 64 - 12 and len(class_names(include_held_out=True)) == 64
    assert not {f"{c} {s}" for c, s in HELD_OUT_COMBOS} & set(seen)
    assert set(SHIFTS) >= {"sketch", "noisy", "blur", "invert"}


def test_colours_are_distinct_from_each_other_and_from_backgrounds():
    colours = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=float)
    backgrounds = np.array(list(BACKGROUND_RGB.values()), dtype=float)
    pairwise = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(len(colours)) * 1e9
    assert pairwise.min() > 80
    assert np.linalg.norm(colours[:, None] - backgrounds[None], axis=-1).min() > 80
    assert backgrounds.min() >= 200  # all backgrounds are light


def test_train_never_contains_held_out_combos_anywhere():
    held = set(HELD_OUT_COMBOS)
    records = image_text_records(150, "train", seed=3)
    for record in records:
        scene = scene_of(record.id, 3)
        assert record.domain == "in" and not {o.combo for o in scene.objects} & held
        for caption in record.captions:
            assert not combos_in(caption) & held, caption
    for question in vqa_records(150, "train", seed=3):
        assert not combos_in(question.question) & held, question.question
    assert all(r.label not in {f"{c} {s}" for c, s in held} for r in classification_records(104, "train"))


@pytest.mark.parametrize("domain", DOMAINS)
def test_domains_follow_held_out_combos(domain):
    held = set(HELD_OUT_COMBOS)
    for record in image_text_records(40, "test", seed=5, domain=domain):
        scene = scene_of(record.id, 5)
        n_held = sum(o.combo in held for o in scene.objects)
        assert record.domain == domain
        if domain == "in":
            assert n_held == 0
        elif domain == "out":
            assert n_held == len(scene.objects)
        else:
            assert 0 < n_held < len(scene.objects)
    for question in vqa_records(20, "val", seed=5, domain="in"):
        assert not combos_in(question.question) & held  # distractors stay in the domain too


def test_val_without_domain_cycles_through_domains_and_train_rejects_other_domains():
    assert [r.domain for r in image_text_records(6, "val")] == ["in", "near", "out"] * 2
    with pytest.raises(UserError, match="in-domain only"):
        image_text_records(2, "train", domain="out")


def test_single_object_worlds_skip_the_near_domain():
    records = image_text_records(4, "val", max_objects=1)
    assert [r.domain for r in records] == ["in", "out", "in", "out"]
    assert all(r.label is not None for r in records)
    with pytest.raises(UserError, match="near-domain"):
        image_text_records(2, "val", domain="near", max_objects=1)


# ---------------------------------------------------------------- determinism


def _fingerprint(records):
    return [(r.id, r.captions, r.label, r.domain, r.image.tobytes()) for r in records]


def test_same_seed_same_records_and_different_seeds_differ():
    first = image_text_records(12, "val", seed=7)
    assert _fingerprint(first) == _fingerprint(image_text_records(12, "val", seed=7))
    other = image_text_records(12, "val", seed=8)
    differing = sum(a.image.tobytes() != b.image.tobytes() for a, b in zip(first, other))
    assert differing >= 11
    assert [r.captions for r in first] != [r.captions for r in other]
    questions = [(q.question_id, q.question, q.answers) for q in vqa_records(6, seed=7)]
    assert questions == [(q.question_id, q.question, q.answers) for q in vqa_records(6, seed=7)]


def test_index_independence_of_every_api():
    long_run, short_run = image_text_records(25, "test", seed=2), image_text_records(6, "test", seed=2)
    assert _fingerprint(long_run)[:6] == _fingerprint(short_run)
    short = vqa_records(3, "train", seed=2)
    long = vqa_records(9, "train", seed=2)
    assert [(q.question_id, q.answers) for q in short] == [(q.question_id, q.answers) for q in long[: len(short)]]
    assert _fingerprint(classification_records(30, seed=2))[:4] == _fingerprint(classification_records(4, seed=2))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), index=st.integers(0, 10**6), domain=st.sampled_from(DOMAINS))
def test_scene_at_is_a_pure_function_with_valid_layout(seed, index, domain):
    record_id, scene = scene_at(index, "test", seed, domain)
    assert (record_id, scene) == scene_at(index, "test", seed, domain)
    assert record_id == f"test-{domain}-{index:06d}"
    assert 1 <= len(scene.objects) <= 3
    cells = [reference_cell(o) for o in scene.objects]
    assert len(set(cells)) == len(cells)  # one object per grid cell: positions are unambiguous
    assert len({o.combo for o in scene.objects}) == len(scene.objects)
    assert scene.domain == domain


# ---------------------------------------------------------------- captions


def check_caption(caption: str, scene: Scene) -> None:
    by_combo = {o.combo: o for o in scene.objects}
    for mention in MENTION.finditer(caption):
        size, colour, shape, position = mention.groups()
        obj = by_combo.get((colour, shape))
        assert obj is not None, f"{caption!r} names a {colour} {shape} not in the scene"
        assert size in (None, obj.size), caption
        assert position in (None, reference_position(obj)), caption
    for relation in RELATION.finditer(caption):
        first, second = by_combo[relation.group(1, 2)], by_combo[relation.group(4, 5)]
        (row_a, col_a), (row_b, col_b) = reference_cell(first), reference_cell(second)
        expected = {"to the left of": col_a < col_b, "to the right of": col_a > col_b, "above": row_a < row_b,
                    "below": row_a > row_b}  # fmt: skip
        assert expected[relation.group(3)], caption
    for word, number in NUMBERS.items():
        if re.search(rf"\b{word} (shapes|objects)\b", caption):
            assert number == len(scene.objects), caption
        if re.search(rf"\band {word} other shapes?\b", caption):
            assert number == len(scene.objects) - 1, caption
    if scene.background in caption:
        assert f"{scene.background} background" in caption


@pytest.mark.parametrize("max_objects", [3, 5])
def test_captions_are_accurate_varied_and_name_every_object(max_objects):
    records = image_text_records(80, "val", seed=11, max_objects=max_objects)
    counts_seen = Counter()
    for record in records:
        scene = scene_of(record.id, 11, max_objects)
        counts_seen[len(scene.objects)] += 1
        assert len(set(record.captions)) >= 5
        for caption in record.captions:
            check_caption(caption, scene)
        mentioned = set().union(*(combos_in(c) for c in record.captions))
        assert mentioned == {o.combo for o in scene.objects}
        assert any(combos_in(c) == mentioned for c in record.captions)  # one caption names them all
    assert set(counts_seen) == set(range(1, max_objects + 1))


def test_captions_of_a_hand_made_scene():
    scene = Scene(
        (SceneObject("circle", "red", "small", 0.17, 0.5), SceneObject("star", "orange", "large", 0.83, 0.5)),
        background="white",
    )
    for seed in range(4):
        captions = scene_captions(scene, random.Random(seed))
        pair = {"a red circle and an orange star", "an orange star and a red circle"}
        assert len(captions) == 6
        assert {f"two {noun}: {both}" for noun in ("shapes", "objects") for both in pair} & set(captions)
        assert {"a small red circle to the left of a large orange star",
                "a large orange star to the right of a small red circle"} & set(captions)  # fmt: skip
        left, right = "a red circle on the left", "an orange star on the right"
        assert {f"there are two shapes: {left} and {right}", f"there are two shapes: {right} and {left}"} & set(captions)
        assert {"a red circle on the left and one other shape",
                "an orange star on the right and one other shape"} & set(captions)  # fmt: skip


# ---------------------------------------------------------------- VQA


def reference_answer(question: str, scene: Scene) -> tuple[str, str]:
    """(canonical answer, answer type) worked out from the question text and the raw scene."""
    objects = scene.objects
    if m := re.fullmatch(r"how many (shapes|objects) are there\?", question):
        return str(len(objects)), "count"
    if m := re.fullmatch(rf"how many ({COLOUR_RE}) shapes are there\?", question):
        return str(sum(o.colour == m.group(1) for o in objects)), "count"
    if m := re.fullmatch(rf"what colour is the ({SHAPE_RE})\?", question):
        (match,) = [o for o in objects if o.shape == m.group(1)]  # must be unambiguous
        return match.colour, "colour"
    if m := re.fullmatch(rf"what shape is the ({COLOUR_RE}) (object|one|thing)\?", question):
        (match,) = [o for o in objects if o.colour == m.group(1)]
        return match.shape, "shape"
    if m := re.fullmatch(rf"is there an? ({COLOUR_RE}) ({SHAPE_RE})\?", question):
        return ("yes" if (m.group(1), m.group(2)) in {o.combo for o in objects} else "no"), "yes/no"
    if m := re.fullmatch(rf"where is the (?:({COLOUR_RE}) )?({SHAPE_RE})\?", question):
        (match,) = [o for o in objects if o.shape == m.group(2) and m.group(1) in (None, o.colour)]
        return reference_position(match), "position"
    raise AssertionError(f"unexpected question {question!r}")


def test_vqa_answers_match_the_scene_and_look_human():
    questions = vqa_records(60, "test", seed=4)
    assert len({q.question_id for q in questions}) == len(questions)
    by_type = Counter()
    for question in questions:
        scene = scene_of(question.image_id, 4)
        canonical, answer_type = reference_answer(question.question, scene)
        by_type[(answer_type, canonical if answer_type == "yes/no" else "")] += 1
        assert question.answer_type == answer_type
        assert len(question.answers) == 10
        top, top_count = Counter(question.answers).most_common(1)[0]
        assert top == canonical and 7 <= top_count <= 9, question
        assert question.question_id.startswith(question.image_id + "-q")
    assert {t for t, _ in by_type} == {"colour", "shape", "count", "yes/no", "position"}
    assert by_type[("yes/no", "yes")] == by_type[("yes/no", "no")] == 60


def test_vqa_images_are_the_image_text_images():
    questions = vqa_records(4, "val", seed=9)
    images = {r.id: r.image.tobytes() for r in image_text_records(4, "val", seed=9)}
    assert {q.image_id for q in questions} == set(images)
    assert all(q.image.tobytes() == images[q.image_id] and q.split == "val" for q in questions)


# ---------------------------------------------------------------- labels and pictures


def test_labels_only_for_single_object_images():
    for record in image_text_records(60, "train", seed=1):
        scene = scene_of(record.id, 1)
        if len(scene.objects) == 1:
            assert record.label == f"{scene.objects[0].colour} {scene.objects[0].shape}"
        else:
            assert record.label is None


def test_classification_records_cycle_through_classes():
    names = class_names()
    records = classification_records(len(names) + 3, "test", seed=0)
    assert [r.label for r in records] == names + names[:3]
    assert all(r.domain == "in" for r in records)
    assert all(combos_in(c) == {tuple(r.label.split())} for r in records for c in r.captions)
    everything = classification_records(64, "val", include_held_out=True)
    assert [r.label for r in everything] == class_names(include_held_out=True)
    assert {r.domain for r in everything} == {"in", "out"}
    with pytest.raises(UserError, match="train split"):
        classification_records(3, "train", include_held_out=True)


def test_pictures_show_the_scene():
    for record in image_text_records(30, "val", seed=6, image_size=64):
        scene = scene_of(record.id, 6)
        pixels = np.asarray(record.image)
        assert record.image.size == (64, 64) and record.image.mode == "RGB"
        assert tuple(pixels[0, 0]) == BACKGROUND_RGB[scene.background]
        for obj in scene.objects:
            centre = pixels[int(obj.y * 64), int(obj.x * 64)]
            assert tuple(centre) == COLOUR_RGB[obj.colour], (record.id, obj)


def _ink(shape: str, size: str, x: float, y: float) -> np.ndarray:
    scene = Scene((SceneObject(shape, "black", size, x, y),), "white")
    return 255.0 - np.asarray(render_scene(scene, 64), dtype=float).mean(axis=-1)  # (64, 64)


@pytest.mark.parametrize("size", ["small", "large"])
def test_shapes_are_recognisable_at_64_px(size):
    """A nearest-template classifier names every shape drawn at jittered (sub-pixel) positions."""
    templates = {shape: _ink(shape, size, 0.5, 0.5) for shape in SHAPES}
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for dx, dy in rng.uniform(-0.01, 0.01, size=(25, 2)):  # the scene sampler's jitter range
            drawn = _ink(shape, size, 0.5 + dx, 0.5 + dy)
            nearest = min(SHAPES, key=lambda name: np.abs(drawn - templates[name]).sum())
            assert nearest == shape, (shape, size, dx, dy)
    small, large = _ink("circle", "small", 0.5, 0.5).sum(), _ink("circle", "large", 0.5, 0.5).sum()
    assert 1.8 < large / small < 3.0  # sizes are clearly different


@pytest.mark.parametrize("shift", SHIFTS)
def test_shifts_keep_size_and_scene_but_change_pixels(shift):
    clean = image_text_records(5, "test", seed=2, image_size=48)
    shifted = image_text_records(5, "test", seed=2, image_size=48, shift=shift)
    for a, b in zip(clean, shifted):
        assert b.image.size == (48, 48) and b.image.mode == "RGB"
        assert b.id == f"{a.id}-{shift}" and b.captions == a.captions and b.label == a.label
        difference = np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).max(axis=-1)
        assert (difference > 30).sum() >= 10  # visibly different, not a rounding change
        scene = scene_of(a.id, 2)
        assert render_scene(scene, 48, shift).tobytes() == b.image.tobytes()  # deterministic
        if shift == "invert":
            assert ImageOps.invert(a.image).tobytes() == b.image.tobytes()
        if shift == "sketch":  # outlines only: far fewer coloured pixels than the filled shapes
            background = np.array(BACKGROUND_RGB[scene.background])
            filled = (np.abs(np.asarray(a.image, dtype=int) - background).sum(-1) > 60).sum()
            outlined = (np.abs(np.asarray(b.image, dtype=int) - background).sum(-1) > 60).sum()
            assert outlined < 0.9 * filled


def test_image_size_is_configurable():
    (record,) = image_text_records(1, "train", image_size=96)
    assert record.image.size == (96, 96)


@pytest.mark.parametrize(
    "call",
    [
        lambda: image_text_records(-1),
        lambda: image_text_records(2, split="dev"),
        lambda: image_text_records(2, split="val", domain="far"),
        lambda: image_text_records(2, shift="rotate"),
        lambda: image_text_records(2, seed=-3),
        lambda: image_text_records(2, image_size=8),
        lambda: image_text_records(2, max_objects=9),
        lambda: vqa_records(2, split="val", domain="middle"),
        lambda: classification_records(2, shift="smear"),
    ],
)
def test_bad_arguments_raise_user_error(call):
    with pytest.raises(UserError):
        call()


def test_scene_rejects_unknown_vocabulary():
    with pytest.raises(ValueError, match="shape in"):
        Scene((SceneObject("blob", "red", "small", 0.5, 0.5),), "white")
    with pytest.raises(ValueError, match="background"):
        Scene((SceneObject("circle", "red", "small", 0.5, 0.5),), "mauve")


@pytest.mark.slow
def test_ten_thousand_images_in_well_under_twenty_seconds():
    import time

    started = time.process_time()  # CPU time of this (single-threaded) process: robust to a busy machine
    records = image_text_records(10_000, "train", seed=0)
    seconds = time.process_time() - started
    assert len(records) == 10_000 and seconds < 20, seconds
