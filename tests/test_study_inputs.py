"""Tests for what the study reads: the `objects` dataset spec, composite CLIP sources, the held-out ridge
choice of the closed-form projector start, and the VQA question selection per answer type."""

import pytest
import torch

from vlbridge.data.datasets import load_dataset
from vlbridge.data.objects_scene import THINGS
from vlbridge.data.shapes_scene import SHAPES
from vlbridge.errors import UserError
from vlbridge.training.clip_data import ClipDataConfig, load_source
from vlbridge.training.projector_init import caption_ridge, caption_targets, choose_ridge

pytestmark = pytest.mark.assets  # the objects world draws Twemoji things


def test_objects_spec_reads_every_task_with_its_options():
    data = load_dataset("objects?max_objects=2&things=1", "image_text", split="test", n=6)
    assert len(data.records) == 6 and data.name.startswith("objects?") and "things=1" in data.name
    assert all(r.tags and set(r.tags) <= set(THINGS) for r in data.records)  # things=1: things only
    shapes_only = load_dataset("objects?things=0", "image_text", split="test", n=4).records
    assert all(r.tags and set(r.tags) <= set(SHAPES) for r in shapes_only)  # things=0: shapes only
    questions = load_dataset("objects?max_objects=2", "vqa", split="test", n=3).records
    assert {q.answer_type for q in questions} <= {"count", "yes/no", "object", "colour", "position"}
    labelled = load_dataset("objects?classes=things", "classification", split="test", n=48)
    assert len(labelled.classnames) == 24 and {r.label for r in labelled.records} == set(labelled.classnames)
    assert load_dataset("objects?classes=things&shift=sketch", "classification", split="test", n=2).records[0].id.endswith("-sketch")


@pytest.mark.parametrize("spec, task, message", [
    ("objects?things=1.5", "image_text", "between 0 and 1"),
    ("objects?things=lots", "image_text", "between 0 and 1"),
    ("objects?classes=things", "image_text", "classes= chooses"),
    ("objects?max_objects=2", "classification", "do not apply"),
    ("objects?split=dev", "image_text", "has splits"),
    ("objects?shift=blur", "vqa", "unshifted"),
])
def test_objects_spec_refuses_what_does_not_apply_in_one_line(spec, task, message):
    with pytest.raises(UserError, match=message) as err:
        load_dataset(spec, task, n=2)
    assert "\n" not in str(err.value)


def test_composite_source_joins_specs_in_order():
    records = load_source(ClipDataConfig(source="shapes?n=3 + objects?n=2&things=1"))
    assert len(records) == 5 and [r.id.startswith("objects-") for r in records] == [False] * 3 + [True] * 2


def test_choose_ridge_picks_the_least_held_out_error_and_reports_every_candidate():
    generator = torch.Generator().manual_seed(0)
    vocab, hidden, k, n, dim = 50, 8, 2, 60, 6
    words = torch.randn(vocab, hidden, generator=generator)
    features = torch.randn(n, dim, generator=generator)
    ids = [[[int(i) % vocab, (int(i) * 7) % vocab]] for i in (features[:, 0] * 10).round().abs()]
    best, scores = choose_ridge(features, ids, words, k, [1e-4, 1.0, 1e4], seed=3)
    assert set(scores) == {"0.0001", "1.0", "10000.0"} and best == min((1e-4, 1.0, 1e4), key=lambda c: scores[str(c)])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3)).tolist()
    held, fit = order[:12], order[12:]
    weight, bias = caption_ridge(features[fit], [ids[i] for i in fit], words, k, 1.0)
    targets = caption_targets([ids[i] for i in held], words, k).double()
    predicted = features[held].double() @ weight.double().T + bias.double()
    expected = float(((targets - predicted) ** 2).sum() / ((targets - targets.mean(0)) ** 2).sum())
    assert scores["1.0"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(UserError, match="> 0"):
        choose_ridge(features, ids, words, k, [0.0, 1.0], seed=0)
