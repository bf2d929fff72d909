"""The one resolver: spec grammar (every scheme and name, old spellings, options, errors) and the
selection rules (split, n=, first=, seed=, class lists) of `vlbridge.data.datasets.load_dataset`."""

from __future__ import annotations

import json

import pytest
from helpers.eval_helpers import save_tiny_run
from helpers.formats_helpers import assert_same_records, jsonl_line, shapes_records, write_csv_fixture, write_wds_fixture

from vlbridge.cli import main
from vlbridge.data import datasets, shapes
from vlbridge.data.datasets import SHAPES_DEFAULT_N, RecordStream, load_dataset
from vlbridge.data.records import ImageTextRecord
from vlbridge.data.specs import NAMED, SCHEMES, DataSpec, parse_spec, with_request
from vlbridge.data.subsets import seeded_subset
from vlbridge.errors import UserError


# ------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize("spec, scheme, target, options", [
    ("folder:/d", "folder", "/d", {}),
    ("csv:a+b.csv?image=my+col&caption=a%26b&sep=tab", "csv", "a+b.csv", {"image": "my+col", "caption": "a&b", "sep": "tab"}),
    ("jsonl:x.jsonl?split=test&n=3&seed=2", "jsonl", "x.jsonl", {"split": "test", "n": "3", "seed": "2"}),
    ("wds:s/{000..009}.tar?by_rank=1&first=5", "wds", "s/{000..009}.tar", {"by_rank": "1", "first": "5"}),
    ("coco:a.json?images=/i&karpathy=k.json&split=test", "coco", "a.json", {"images": "/i", "karpathy": "k.json", "split": "test"}),
    ("nocaps:n.json?images=/i", "nocaps", "n.json", {"images": "/i"}),
    ("vqav2:q.json?annotations=a.json&images=/i&subtype=val2014", "vqav2", "q.json",
     {"annotations": "a.json", "images": "/i", "subtype": "val2014"}),
    ("imagefolder:/d", "imagefolder", "/d", {}),
    ("shapes", "shapes", "", {}),
    ("shapes?shift=blur&domain=out&image_size=32&max_objects=2&n=4", "shapes", "",
     {"shift": "blur", "domain": "out", "image_size": "32", "max_objects": "2", "n": "4"}),
    ("shapes-shift:sketch", "shapes", "", {"shift": "sketch"}),
    ("shapes-shift:noisy?n=3&seed=1", "shapes", "", {"shift": "noisy", "n": "3", "seed": "1"}),
    ("twemoji?split=test&first=3", "twemoji", "", {"split": "test", "first": "3"}),
    ("openclipart?n=10&seed=4", "openclipart", "", {"n": "10", "seed": "4"}),
    ("animal-silhouettes", "animal-silhouettes", "", {}),
    ("fashion-mnist?split=train", "fashion-mnist", "", {"split": "train"}),
])
def test_every_scheme_and_name_parses(spec, scheme, target, options):
    parsed = parse_spec(spec)
    assert (parsed.scheme, parsed.target, parsed.options) == (scheme, target, options)
    assert parse_spec(parsed.text()) == parsed  # written back, it reads the same


def test_the_tables_cover_every_documented_scheme_and_name():
    assert set(SCHEMES) == {"folder", "csv", "jsonl", "wds", "coco", "nocaps", "vqav2", "imagefolder"}
    assert set(NAMED) == {"shapes", "objects", "twemoji", "openclipart", "animal-silhouettes", "fashion-mnist"}


def test_text_is_canonical_and_quotes_what_the_parser_splits_on():
    assert parse_spec("shapes?split=test&n=5").text() == parse_spec("shapes?n=5&split=test").text() == "shapes?n=5&split=test"
    spec = DataSpec("csv", "a b.csv", {"caption": "x&y=z", "image": "p%q"})
    assert parse_spec(spec.text()) == spec
    assert parse_spec("shapes-shift:blur").text() == "shapes?shift=blur"


@pytest.mark.parametrize("spec, message", [
    ("", "expected a dataset spec"),
    ("cifar10", "unknown dataset spec 'cifar10'"),
    ("parquet:x.parquet", "expected one of folder:..."),
    ("csv:", "expected a path after 'csv:'"),
    ("shapes:blur", r"takes no path.*did you mean shapes\?shift=blur"),
    ("twemoji:x", "'twemoji' takes no path"),
    ("shapes-shift:", "expected a shift after 'shapes-shift:'"),
    ("shapes-shift:blur?shift=noisy", "names two shifts"),
    ("csv:a.csv?colour=red", "unknown option 'colour'"),
    ("imagefolder:/d?images=/x", "unknown option 'images'"),
    ("twemoji?shift=blur", "unknown option 'shift'"),
    ("shapes?first=3", "unknown option 'first'"),
    ("shapes?n=many", "whole number"),
    ("jsonl:x?n=0", r"whole number >= 1, got 0"),
    ("jsonl:x?first=-1", r"whole number >= 1, got -1"),
    ("twemoji?n=2&first=2", "not both"),
])
def test_bad_specs_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=message) as error:
        parse_spec(spec)
    assert "\n" not in str(error.value)


def test_caller_values_fill_in_what_the_spec_leaves_out():
    parsed = parse_spec("shapes?n=7")
    assert with_request(parsed, split="test", n=100, seed=3, image_size=32).options == {
        "n": "7", "split": "test", "seed": "3", "image_size": "32"}  # the spec's n= wins
    assert with_request(parse_spec("jsonl:x?first=2"), n=5).options == {"first": "2"}  # never n= and first= together
    assert with_request(parse_spec("jsonl:x"), image_size=32).options == {}  # image_size: generated data only
    assert with_request(parse_spec("twemoji?split=test"), split="test").options == {"split": "test"}
    with pytest.raises(UserError, match="fixes split=test, but split 'train' is read here"):
        with_request(parse_spec("twemoji?split=test"), split="train")
    for bad in (0, -3):
        with pytest.raises(UserError, match=f"n is a number of records and must be a whole number >= 1, got {bad}"):
            with_request(parse_spec("shapes"), n=bad)


# ------------------------------------------------------------------------------------ shapes world
def test_shapes_defaults_live_in_one_place_and_appear_in_the_name():
    assert SHAPES_DEFAULT_N == {"train": 2080, "val": 520, "test": 520}  # 40 / 10 / 10 per seen class
    data = load_dataset("shapes?split=val", "classification")
    assert len(data.records) == 520 and data.split == "val"
    assert data.name == "shapes?image_size=64&n=520&seed=0&split=val"
    train = load_dataset("shapes?image_size=16")
    assert train.split == "train" and len(train.records) == 2080
    assert load_dataset("shapes", seed=1, n=2).name != load_dataset("shapes", seed=2, n=2).name  # same ids, other images


def test_shapes_views_equal_the_shapes_api():
    got = load_dataset("shapes?domain=out&max_objects=2&shift=invert", split="test", n=4, seed=3, image_size=32)
    assert_same_records(got.records, shapes.image_text_records(4, "test", 3, "out", 32, "invert", max_objects=2))
    vqa = load_dataset("shapes?n=2&split=val&seed=1&image_size=32", "vqa").records
    assert [r.question_id for r in vqa] == [r.question_id for r in shapes.vqa_records(2, "val", seed=1, image_size=32)]
    labelled = load_dataset("shapes-shift:blur?n=5&image_size=32", "classification", split="train")
    assert_same_records(labelled.records, shapes.classification_records(5, "train", shift="blur", image_size=32))
    assert labelled.classnames == shapes.class_names()


@pytest.mark.parametrize("spec, task, message", [
    ("shapes?split=dev", "image_text", "'shapes' has splits train, val, test; got split='dev'"),
    ("shapes?shift=rain", "image_text", "shift= expects one of sketch, noisy, blur, invert; got 'rain'"),
    ("shapes?domain=out", "classification", "domain= and max_objects= do not apply"),
    ("shapes?shift=blur", "vqa", "unshifted images; drop shift="),
    ("twemoji?split=val", "image_text", "'twemoji' has splits train, test; got split='val'"),
    ("fashion-mnist?split=val", "classification", "'fashion-mnist' has splits train, test; got split='val'"),
    ("openclipart?split=dev", "image_text", "'openclipart' has splits train, test; got split='dev'"),
    ("animal-silhouettes?split=validation", "image_text", "'animal-silhouettes' has splits train, test"),
    ("fashion-mnist", "vqa", "has no VQA questions"),
    ("folder:/nowhere", "vqa", "has no VQA questions"),
    ("vqav2:/q.json", "image_text", "holds VQA questions, not captions"),
])
def test_wrong_split_option_or_task_is_a_user_error(spec, task, message):
    with pytest.raises(UserError, match=message) as error:
        load_dataset(spec, task)
    assert "\n" not in str(error.value)


def test_a_count_below_one_is_the_same_user_error_at_every_entry_point():
    from vlbridge.commands.extract import load_image_records
    from vlbridge.training import limber_data

    message = r"(n|first)=? is a number of records and must be a whole number >= 1, got (0|-1)"
    attempts = [
        lambda: load_dataset("jsonl:x.jsonl?n=0"),
        lambda: load_dataset("shapes", n=0),
        lambda: load_dataset("twemoji?first=-1"),
        lambda: load_image_records("shapes", "train", n=0),
        lambda: limber_data.load_caption_records("jsonl:x.jsonl?n=-1", "train"),
    ]
    for attempt in attempts:
        with pytest.raises(UserError, match=message):
            attempt()
    with pytest.raises(UserError, match="data.n is a number of records"):  # the config's 0 means "all"
        limber_data.load_caption_records("shapes", "train", n=-1)


# ------------------------------------------------------------------------------------ stored data
@pytest.fixture
def jsonl_file(tmp_path):
    """shapes records in a jsonl: 4 train (labelled or not), 3 test, each with its split."""
    train = shapes.image_text_records(4, "train", image_size=16)
    test = shapes.classification_records(3, "test", image_size=16)
    (tmp_path / "images").mkdir()
    lines = []
    for record in train + test:
        record.image.save(tmp_path / "images" / f"{record.id}.png")
        lines.append(json.dumps(jsonl_line(record, f"images/{record.id}.png")))
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, train, test


def test_split_n_first_and_seed_on_stored_records(jsonl_file):
    path, train, test = jsonl_file
    assert [r.id for r in load_dataset(f"jsonl:{path}").records] == [r.id for r in train + test]
    assert [r.id for r in load_dataset(f"jsonl:{path}", split="test").records] == [r.id for r in test]
    assert [r.id for r in load_dataset(f"jsonl:{path}?first=2", split="train").records] == [r.id for r in train[:2]]
    subset = load_dataset(f"jsonl:{path}?n=3&seed=5").records
    assert [r.id for r in subset] == [r.id for r in seeded_subset(train + test, 3, 5)]
    assert [r.id for r in load_dataset(f"jsonl:{path}?n=50").records] == [r.id for r in train + test]  # n >= size: all
    with pytest.raises(UserError, match=r"no records for split 'val'; splits present: \['test', 'train'\]"):
        load_dataset(f"jsonl:{path}", split="val")


def test_class_list_comes_from_every_split_before_n(jsonl_file, caplog):
    path, train, test = jsonl_file
    labelled_train = [r for r in train if r.label]
    data = load_dataset(f"jsonl:{path}?n=2", "classification", split="test")
    assert data.classnames == sorted({r.label for r in labelled_train + test})
    assert len(data.records) == 2 and data.labels().tolist() == [data.classnames.index(r.label) for r in data.records]
    assert "no label" in caplog.text  # unlabelled multi-object records were skipped and counted


def test_records_without_splits_keep_all_unless_the_spec_asks_for_one(tmp_path):
    records = [ImageTextRecord(r.id, r.image, r.captions) for r in shapes_records(3)]
    write_csv_fixture(records, tmp_path / "d.csv", with_meta=False)
    assert len(load_dataset(f"csv:{tmp_path / 'd.csv'}", split="train").records) == 3  # a caller's default split
    with pytest.raises(UserError, match="split=train: its records carry no split"):
        load_dataset(f"csv:{tmp_path / 'd.csv'}?split=train")


def test_streams_stay_streams_under_split_and_first_and_become_lists_under_n(tmp_path):
    records = shapes_records(5, split="val") + shapes_records(2, split="test")
    write_wds_fixture(records, tmp_path / "shards", per_shard=3)
    pattern = f"wds:{tmp_path / 'shards'}"
    stream = load_dataset(f"{pattern}?first=4", split="val").records
    assert isinstance(stream, RecordStream)
    assert [r.id for r in stream] == [r.id for r in records[:4]] == [r.id for r in stream]  # re-iterable
    assert [r.id for r in load_dataset(pattern, split="test").records] == [r.id for r in records[5:]]
    subset = load_dataset(f"{pattern}?n=3&seed=1").records
    assert isinstance(subset, list) and [r.id for r in subset] == [r.id for r in seeded_subset(records, 3, 1)]
    with pytest.raises(UserError, match="has no records for split 'train'"):
        load_dataset(pattern, split="train").record_list()


# ------------------------------------------------------------------------------------ embedded sets
@pytest.fixture
def fake_embedded(monkeypatch):
    """Stand-in readers: 10 records per reader, labels by category, hash-split like the real ones."""
    from vlbridge.data import embedded

    every = [ImageTextRecord(f"e{i}", b"", [f"caption {i}"], ("cat", "dog", "owl", None)[i % 4], ("train", "test")[i % 2])
             for i in range(10)]

    def reader(split=None, seed=0, n=None):
        chosen = [r for r in every if split is None or r.split == split]
        return chosen if n is None else chosen[:n]

    for name in ("twemoji_records", "openclipart_records", "animal_silhouette_records"):
        monkeypatch.setattr(embedded, name, reader)
    monkeypatch.setattr(embedded, "fashion_mnist_records", lambda split, n=None: reader(split, n=n))
    return every


def test_embedded_n_is_a_seeded_subset_and_first_the_stored_order(fake_embedded):
    train = [r for r in fake_embedded if r.split == "train"]
    assert load_dataset("twemoji?first=2", split="train").records == train[:2]
    assert load_dataset("twemoji?n=2&seed=3", split="train").records == seeded_subset(train, 2, 3)
    assert load_dataset("fashion-mnist").records == train + [r for r in fake_embedded if r.split == "test"]


def test_embedded_class_lists(fake_embedded):
    test = load_dataset("openclipart", "classification", split="test")
    assert test.classnames == ["cat", "dog", "owl"]  # every label of the dataset, whichever split is read
    assert all(r.label and r.split == "test" for r in test.records)
    fixed = load_dataset("animal-silhouettes", "classification", split="test")
    assert fixed.classnames[:3] == ["bear", "bird", "cat"] and len(fixed.classnames) == 10


# ------------------------------------------------------------------------------------ one resolver
def test_every_former_entry_point_goes_through_the_resolver(monkeypatch, tmp_path):
    from vlbridge.commands.extract import load_image_records
    from vlbridge.data import formats
    from vlbridge.study import clip_stages, limber_stages
    from vlbridge.study.config import load_study_config
    from vlbridge.training import clip_data, limber_data

    seen = []
    real = datasets.load_dataset

    def spy(spec, task="image_text", **request):
        seen.append((spec, task))
        return real(spec, task, **request)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    formats.load_image_text("shapes?n=1")
    formats.load_vqa("shapes?n=1")
    formats.load_classification("shapes?n=1")
    limber_data.load_caption_records("shapes", "train", n=2)
    clip_data.load_source(clip_data.ClipDataConfig(source="shapes?n=2"))
    clip_data.load_source(clip_data.ClipDataConfig(shapes_n=2, twemoji=False, openclipart=False))
    load_image_records("shapes", "val", n=2)
    clip_stages.labelled_split("shapes?shift=blur", "test", 2, 0)
    config = load_study_config("quick")
    config.limber.caption_sets = {"shapes": "shapes?split=test&n=2"}
    limber_stages.caption_records(config)
    config.limber.vqa_queries, config.limber.vqa_support = "shapes?split=test&n=2", "shapes?split=train&n=8"
    limber_stages.vqa_sets(config)
    run = save_tiny_run(tmp_path / "clip")
    for command in ("zeroshot", "retrieval"):
        assert main(["eval", command, "--model", str(run), "--dataset", "shapes-shift:blur", "--n", "2",
                     "--device", "cpu", "--cache", str(tmp_path / "features")]) == 0
    assert seen == [
        ("shapes?n=1", "image_text"), ("shapes?n=1", "vqa"), ("shapes?n=1", "classification"),
        ("shapes", "image_text"), ("shapes?n=2", "image_text"), ("shapes?max_objects=2", "image_text"),
        ("shapes", "image_text"), ("shapes?shift=blur", "classification"), ("shapes?split=test&n=2", "image_text"),
        ("shapes?split=test&n=2", "vqa"), ("shapes?split=train&n=8", "vqa"),
        ("shapes-shift:blur", "classification"), ("shapes-shift:blur", "image_text"),
    ]
