"""Every dataset reader round-trips a shapes-world fixture written in its real on-disk format.

The fixtures are laid out by `formats_helpers` (by hand, not with vlbridge's writers); the
readers must give back the same ids, captions, labels, splits, domains, answers and pixels.
Also: spec parsing, the embedded / shapes names, `iter_decoded`, and export -> read back.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.formats_helpers import (
    KARPATHY_CYCLE,
    assert_same_records,
    assert_same_vqa,
    coco_id,
    encode,
    jsonl_line,
    pixels,
    shapes_records,
    shapes_vqa,
    write_coco_fixture,
    write_csv_fixture,
    write_folder_fixture,
    write_imagefolder_fixture,
    write_karpathy_fixture,
    write_nocaps_fixture,
    write_vqav2_fixture,
    write_wds_fixture,
)
from vlbridge.data import formats
from vlbridge.data.records import ImageTextRecord, SkipCounter
from vlbridge.data.shapes import classification_records, image_text_records, vqa_records, write_dataset
from vlbridge.data.subsets import seeded_subset
from vlbridge.errors import UserError


@pytest.fixture(scope="module")
def records():
    # domains in / near / out; the last two are single objects with a class label
    return shapes_records(4, split="val") + classification_records(2, split="val", image_size=32)


def test_folder_round_trip(tmp_path, records):
    write_folder_fixture(records, tmp_path / "pairs")
    got = formats.load_image_text(f"folder:{tmp_path / 'pairs'}")
    expected = [ImageTextRecord(r.id, r.image, r.captions) for r in sorted(records, key=lambda r: r.id)]
    assert_same_records(got, expected)


def test_folder_ids_keep_subfolders(tmp_path, records):
    write_folder_fixture(records[:2], tmp_path / "pairs" / "part1")
    got = formats.load_image_text(f"folder:{tmp_path / 'pairs'}")
    assert sorted(r.id for r in got) == sorted(f"part1/{r.id}" for r in records[:2])


@pytest.mark.parametrize("sep, name, option", [(",", "data.csv", ""), ("\t", "data.tsv", ""), ("\t", "data.txt", "&sep=%5Ct")])
def test_csv_round_trip(tmp_path, records, sep, name, option):
    write_csv_fixture(records, tmp_path / name, sep=sep, image_col="path", caption_col="title")
    got = formats.load_image_text(f"csv:{tmp_path / name}?image=path&caption=title{option}")
    assert_same_records(got, records)


def test_csv_default_columns_group_rows_by_image_path(tmp_path, records):
    write_csv_fixture(records, tmp_path / "d.csv", with_meta=False)
    got = formats.load_image_text(f"csv:{tmp_path / 'd.csv'}")
    expected = [ImageTextRecord(f"imgs/{r.id}.png", r.image, r.captions) for r in records]
    assert_same_records(got, expected)


def test_jsonl_reads_the_shapes_world_captions_file(tmp_path):
    write_dataset(tmp_path / "ds", 12, seed=1, image_size=32, progress=False)
    got = formats.load_image_text(f"jsonl:{tmp_path / 'ds' / 'captions.jsonl'}")
    by_split = {s: image_text_records(n, s, seed=1, image_size=32) for s, n in {"train": 10, "val": 1, "test": 1}.items()}
    expected = by_split["train"] + by_split["val"] + by_split["test"]
    pngs = {r.id: pixels(tmp_path / "ds" / "images" / f"{r.id}.png") for r in expected}
    assert_same_records(got, expected, expected_pixels=pngs)
    # the PNGs on disk are the in-memory renderings of the API
    assert all(np.array_equal(pngs[r.id], pixels(r.image)) for r in expected[:3])


def test_jsonl_single_caption_key(tmp_path, records):
    lines = []
    for record in records:
        (tmp_path / f"{record.id}.png").write_bytes(encode(record.image))
        line = jsonl_line(record, f"{record.id}.png")
        del line["captions"]
        lines.append(json.dumps({**line, "caption": record.captions[0]}))
    (tmp_path / "one.jsonl").write_text("\n".join(lines) + "\n")
    got = formats.load_image_text(f"jsonl:{tmp_path / 'one.jsonl'}")
    assert [r.captions for r in got] == [[r.captions[0]] for r in records]


def test_vqa_jsonl_reads_the_shapes_world_vqa_file(tmp_path):
    write_dataset(tmp_path / "ds", 3, seed=2, image_size=32, splits=(1.0, 0.0, 0.0), progress=False)
    got = formats.load_vqa(f"jsonl:{tmp_path / 'ds' / 'vqa.jsonl'}")
    expected = vqa_records(3, "train", seed=2, image_size=32)
    fields = ("question_id", "image_id", "question", "answers", "answer_type", "split")
    assert [[getattr(r, f) for f in fields] for r in got] == [[getattr(r, f) for f in fields] for r in expected]
    for got_record, want in zip(got, expected):
        assert np.array_equal(pixels(got_record.image), pixels(want.image))


@pytest.mark.parametrize("style", ["json", "txt"])
def test_wds_round_trip(tmp_path, records, style):
    write_wds_fixture(records, tmp_path / "shards", per_shard=4, style=style)
    stream = formats.load_image_text("wds:" + str(tmp_path / "shards" / "{00000..00001}.tar"))
    assert not isinstance(stream, list)
    got = list(stream)
    if style == "json":
        assert_same_records(got, records)
    else:  # img2dataset without metadata: key = id, txt = the one caption
        expected = [ImageTextRecord(r.id, r.image, r.captions[:1]) for r in records]
        assert_same_records(got, expected)
    assert [r.id for r in stream] == [r.id for r in records]  # every iteration is a fresh pass


def test_coco_annotations_round_trip(tmp_path, records):
    path, expected_pixels = write_coco_fixture(records, tmp_path / "coco")
    got = formats.load_image_text(f"coco:{path}?images={tmp_path / 'coco' / 'val2014'}")
    expected = [ImageTextRecord(str(coco_id(i)), None, r.captions, split="val") for i, r in enumerate(records)]
    assert_same_records(got, expected, expected_pixels=expected_pixels)


def test_coco_karpathy_split_and_filter(tmp_path, records):
    path, expected_pixels = write_coco_fixture(records, tmp_path / "coco")
    write_karpathy_fixture(records, tmp_path / "dataset_coco.json")
    split_of = {"train": "train", "restval": "train", "val": "val", "test": "test"}
    expected = [ImageTextRecord(str(coco_id(i)), None, r.captions, split=split_of[KARPATHY_CYCLE[i % 4]])
                for i, r in enumerate(records)]
    images = tmp_path / "coco" / "val2014"
    got = formats.load_image_text(f"coco:{path}?images={images}&karpathy={tmp_path / 'dataset_coco.json'}")
    assert_same_records(got, expected, expected_pixels=expected_pixels)
    test_only = formats.load_image_text(f"coco:{path}?images={images}&karpathy={tmp_path / 'dataset_coco.json'}&split=test")
    assert_same_records(test_only, [r for r in expected if r.split == "test"], expected_pixels=expected_pixels)
    # Karpathy's file alone (images under DIR/<filepath>/<filename>)
    alone = formats.load_image_text(f"coco:{tmp_path / 'dataset_coco.json'}?images={tmp_path / 'coco'}")
    assert_same_records(alone, expected, expected_pixels=expected_pixels)


def test_nocaps_round_trip_maps_domains(tmp_path, records):
    path, image_dir = write_nocaps_fixture(records, tmp_path / "nocaps")
    got = formats.load_image_text(f"nocaps:{path}?images={image_dir}")
    expected = [ImageTextRecord(str(i), r.image, r.captions, split="val", domain=r.domain) for i, r in enumerate(records)]
    assert_same_records(got, expected)
    assert {r.domain for r in got} == {"in", "near", "out"}


def test_nocaps_test_image_list_gives_captionless_records(tmp_path, records):
    path, image_dir = write_nocaps_fixture(records, tmp_path / "nocaps")
    document = json.loads(path.read_text())
    del document["annotations"]
    path.write_text(json.dumps(document))
    got = formats.load_image_text(f"nocaps:{path}?images={image_dir}")
    assert [(r.id, r.captions, r.split, r.domain) for r in got] == [(str(i), [], "test", r.domain) for i, r in enumerate(records)]


def test_vqav2_round_trip(tmp_path):
    questions = shapes_vqa(3)
    q_path, a_path, image_dir, expected, expected_pixels = write_vqav2_fixture(questions, tmp_path / "vqa")
    got = formats.load_vqa(f"vqav2:{q_path}?annotations={a_path}&images={image_dir}")
    assert len(got) == len(questions) > 3
    assert_same_vqa(got, expected, expected_pixels)
    assert all(len(r.answers) == 10 for r in got)


def test_vqav2_without_annotations_gives_unanswered_questions(tmp_path):
    q_path, _, image_dir, expected, _ = write_vqav2_fixture(shapes_vqa(1), tmp_path / "vqa")
    got = formats.load_vqa(f"vqav2:{q_path}?images={image_dir}")
    assert [(r.question_id, r.question, r.answers) for r in got] == [(r.question_id, r.question, []) for r in expected]


def test_imagefolder_round_trip(tmp_path):
    source = classification_records(8, split="test", image_size=32)
    expected = write_imagefolder_fixture(source, tmp_path / "classes")
    pixels_by_id = {r.id: pixels(r.image) for r in expected}
    got = formats.load_classification(f"imagefolder:{tmp_path / 'classes'}")
    assert_same_records(got, expected, expected_pixels=pixels_by_id)
    assert {r.label for r in got} == {r.label for r in source}


def test_imagefolder_split_folders(tmp_path):
    train = classification_records(4, split="train", image_size=32)
    test = classification_records(4, split="test", image_size=32)
    write_imagefolder_fixture(train, tmp_path / "root" / "train")
    write_imagefolder_fixture(test, tmp_path / "root" / "test")
    got = formats.load_classification(f"imagefolder:{tmp_path / 'root'}?split=test")
    assert sorted(r.id for r in got) == sorted(f"test/{r.label.replace(' ', '_')}/{r.id}.png" for r in test)
    assert {r.split for r in got} == {"test"}
    both = formats.load_classification(f"imagefolder:{tmp_path / 'root'}")
    assert sorted(r.split for r in both) == ["test"] * 4 + ["train"] * 4


def test_shapes_specs_match_the_shapes_api():
    got = formats.load_image_text("shapes?n=4&split=test&seed=3&image_size=32")
    assert_same_records(got, image_text_records(4, "test", seed=3, image_size=32))
    vqa = formats.load_vqa("shapes?n=2&split=val&seed=1&image_size=32")
    assert [r.question_id for r in vqa] == [r.question_id for r in vqa_records(2, "val", seed=1, image_size=32)]
    labelled = formats.load_classification("shapes?n=5&split=val&image_size=32")
    assert [r.id for r in labelled] == [r.id for r in classification_records(5, "val", image_size=32)]


def test_classification_keeps_labelled_records_of_any_format(tmp_path, records):
    write_csv_fixture(records, tmp_path / "d.csv")
    skips = SkipCounter()
    got = formats.load_classification(f"csv:{tmp_path / 'd.csv'}", skips)
    assert [r.id for r in got] == [r.id for r in records if r.label]
    assert skips.as_dict() == {"no label": sum(1 for r in records if not r.label)}


def test_embedded_names_call_the_embedded_readers(monkeypatch):
    """first= goes to the reader (its first records); n= is a seeded subset of what it returns."""
    from vlbridge.data import embedded

    calls = []
    fake = [ImageTextRecord(f"e{i}", b"", ["x"], "cat", "train") for i in range(10)]
    for name in ("twemoji_records", "openclipart_records", "animal_silhouette_records"):
        monkeypatch.setattr(embedded, name, lambda split=None, seed=0, n=None, _name=name: calls.append((_name, split, seed, n)) or fake[:n])
    monkeypatch.setattr(embedded, "fashion_mnist_records", lambda split="test", n=None: calls.append(("fashion", split, n)) or fake[:n])
    assert formats.load_image_text("twemoji?split=train&seed=2&first=5") == fake[:5]
    assert formats.load_image_text("twemoji?split=train&seed=2&n=5") == seeded_subset(fake, 5, 2)
    formats.load_image_text("openclipart")
    formats.load_image_text("animal-silhouettes?split=test")
    assert formats.load_classification("fashion-mnist?split=test&first=3") == fake[:3]
    formats.load_image_text("fashion-mnist")
    assert calls == [("twemoji_records", "train", 2, 5), ("twemoji_records", "train", 2, None),
                     ("openclipart_records", None, 0, None), ("animal_silhouette_records", "test", 0, None),
                     ("fashion", "test", 3), ("fashion", "train", None), ("fashion", "test", None)]


@pytest.mark.parametrize("spec, message", [
    ("parquet:x.parquet", "expected one of folder:..."),
    ("nonsense", "unknown dataset spec"),
    ("csv:", "expected a path"),
    ("csv:a.csv?colour=red", "unknown option 'colour'"),
    ("shapes?n=many", "whole number"),
    ("shapes?n=0", "whole number >= 1"),
    ("twemoji?first=-2", "whole number >= 1"),
    ("twemoji?n=2&first=2", "not both"),
    ("shapes?first=3", "unknown option 'first'"),
])
def test_bad_specs_raise_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        formats.load_image_text(spec)


def test_vqa_and_caption_specs_are_not_interchangeable(tmp_path):
    with pytest.raises(UserError, match="VQA"):
        formats.load_image_text(f"vqav2:{tmp_path / 'q.json'}")
    with pytest.raises(UserError, match="no VQA questions"):
        formats.load_vqa(f"folder:{tmp_path}")


def test_parse_spec_options():
    parsed = formats.parse_spec("coco:/data/ann.json?images=/data/val2014&split=test")
    assert (parsed.scheme, parsed.target, parsed.options) == ("coco", "/data/ann.json", {"images": "/data/val2014", "split": "test"})
    assert formats.parse_spec("shapes").options == {}
    assert formats.parse_spec("csv:a+b.csv?image=my+col&caption=a%26b").options == {"image": "my+col", "caption": "a&b"}


@pytest.mark.parametrize("format", formats.EXPORT_FORMATS)
def test_export_then_read_back_round_trips(tmp_path, records, format):
    summary = formats.export_records(records, tmp_path / "out", format, shard_size=4, progress=False)
    assert summary.written == len(records) and summary.skips.total == 0
    back = list(formats.load_image_text(summary.read_back))
    if format == "folder":  # a folder keeps ids and captions only, in file-name order
        expected = [ImageTextRecord(r.id, r.image, r.captions) for r in sorted(records, key=lambda r: r.id)]
        assert_same_records(back, expected)
    else:
        assert_same_records(back, records)
    if format == "wds":
        assert len(list((tmp_path / "out").glob("*.tar"))) == 2


def test_export_keeps_original_jpeg_bytes(tmp_path, records):
    source, expected_pixels = write_coco_fixture(records[:2], tmp_path / "coco")
    got = formats.load_image_text(f"coco:{source}?images={tmp_path / 'coco' / 'val2014'}")
    summary = formats.export_records(got, tmp_path / "out", "jsonl", progress=False)
    written = sorted((tmp_path / "out" / "images").iterdir())
    assert [p.suffix for p in written] == [".jpg", ".jpg"]
    assert sorted(p.read_bytes() for p in written) == sorted(r.image.read_bytes() for r in got)
    assert_same_records(formats.load_image_text(summary.read_back), got, expected_pixels=expected_pixels)


def test_export_refuses_a_non_empty_directory(tmp_path, records):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        formats.export_records(records, tmp_path / "out", "jsonl")
    with pytest.raises(UserError, match="export format"):
        formats.export_records(records, tmp_path / "new", "parquet")
