"""Tests for the objects world: seeded scenes of shapes and Twemoji things, truthful captions and
questions, category / property word classes, labels and rendering."""

import numpy as np
import pytest

from vlbridge.data import objects
from vlbridge.data.objects_scene import THINGS, Thing
from vlbridge.data.objects_text import ANSWER_VOCABULARY, CATEGORY_WORDS, PROPERTY_WORDS, word_class
from vlbridge.data.shapes_scene import HELD_OUT_COMBOS, SceneObject
from vlbridge.errors import UserError

pytestmark = pytest.mark.assets  # the things are drawn from the embedded Twemoji asset


def test_image_i_is_a_pure_function_of_its_key():
    first = objects.image_text_records(6, "train", seed=3)
    again = objects.image_text_records(3, "train", seed=3)
    for a, b in zip(first, again):
        assert a.id == b.id and a.captions == b.captions and a.tags == b.tags
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    other = objects.image_text_records(3, "train", seed=4)
    assert [r.captions for r in other] != [r.captions for r in first[:3]]
    assert objects.image_text_records(3, "test", seed=3)[0].id == "objects-test-000000"


def test_scenes_mix_things_and_seen_shapes_only():
    kinds = {"thing": 0, "shape": 0}
    for index in range(300):
        _, scene = objects.scene_at(index, "test", seed=0)
        assert 1 <= len(scene.objects) <= 3
        assert len({(o.row, o.column) for o in scene.objects}) == len(scene.objects)  # one object a cell
        for obj in scene.objects:
            kinds["thing" if isinstance(obj, Thing) else "shape"] += 1
            if isinstance(obj, SceneObject):
                assert (obj.colour, obj.shape) not in HELD_OUT_COMBOS
    assert 0.4 < kinds["thing"] / sum(kinds.values()) < 0.6


def test_captions_name_every_thing_by_category_and_never_give_it_a_colour():
    for record in objects.image_text_records(40, "val", seed=1):
        _, scene = objects.scene_at(int(record.id.rsplit("-", 1)[1]), "val", seed=1)
        assert record.tags == sorted(set(scene.nouns))
        assert len(record.captions) == 6 == len(set(record.captions))
        for thing in scene.things:
            assert any(thing.name in caption.split() for caption in record.captions)
            for caption in record.captions:
                words = caption.replace(",", "").split()
                for position, word in enumerate(words):
                    if word == thing.name and position:
                        assert words[position - 1] not in PROPERTY_WORDS - {"small", "large"}


def test_questions_are_answerable_from_the_scene():
    for record in objects.vqa_records(30, "test", seed=2):
        _, scene = objects.scene_at(int(record.image_id.rsplit("-", 1)[1]), "test", seed=2)
        canonical = max(set(record.answers), key=record.answers.count)
        assert record.answer_type in ANSWER_VOCABULARY and canonical in ANSWER_VOCABULARY[record.answer_type]
        if record.answer_type == "object":
            position = record.question.removeprefix("what object is ").rstrip("?")
            (thing,) = [t for t in scene.things if position.endswith(t.position)]
            assert canonical == thing.name
        elif record.answer_type == "count":
            assert canonical == str(len(scene.objects))
        elif record.answer_type == "colour":
            shape = record.question.removeprefix("what colour is the ").rstrip("?")
            (obj,) = [s for s in scene.shapes if s.shape == shape]
            assert canonical == obj.colour
        elif record.answer_type == "yes/no":
            named = record.question.removeprefix("is there ").rstrip("?").split(" ", 1)[1]
            names = {t.name if isinstance(t, Thing) else f"{t.colour} {t.shape}" for t in scene.objects}
            present = named in names
            assert canonical == ("yes" if present else "no")


def test_word_classes():
    assert word_class("dog") == word_class("Circle,") == word_class("dogs") == "category"
    assert word_class("red") == word_class("small") == word_class("left.") == "property"
    assert word_class("a") is None and word_class("background") is None
    assert set(THINGS) <= CATEGORY_WORDS


def test_classification_records_cycle_through_the_classes():
    records = objects.classification_records(30, "test", seed=0, classes="things")
    assert [r.label for r in records[:24]] == list(THINGS) and records[24].label == THINGS[0]
    shapes = objects.classification_records(5, "test", classes="shapes")
    assert shapes[0].label == objects.object_classes("shapes")[0] and " " in shapes[0].label
    with pytest.raises(UserError, match="classes must be one of"):
        objects.classification_records(3, classes="animals")


def test_rendering_draws_things_and_every_shift():
    record = objects.classification_records(1, "test", classes="things")[0]
    clean = np.asarray(record.image, dtype=float)
    assert clean.shape == (64, 64, 3) and clean.std() > 10  # the picture is there
    for shift in objects.SHIFTS:
        shifted = objects.classification_records(1, "test", classes="things", shift=shift)[0]
        assert shifted.id.endswith(shift) and np.abs(np.asarray(shifted.image, dtype=float) - clean).mean() > 1


def test_bad_requests_are_user_errors():
    with pytest.raises(UserError):
        objects.image_text_records(-1)
    with pytest.raises(UserError):
        objects.image_text_records(2, split="dev")
    with pytest.raises(UserError, match="thing_fraction"):
        objects.image_text_records(2, thing_fraction=1.5)
