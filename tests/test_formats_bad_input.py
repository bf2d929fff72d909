"""Bad input never kills a read: every reader skips and counts bad samples, good ones all come through.

Each test writes a good shapes-world fixture, breaks some samples in one way each (corrupt or
truncated image, missing file, empty caption, non-UTF-8 text, malformed JSON line, wrong
schema), and checks the exact skip counts and that the untouched samples are returned intact.
A bad FILE (missing, malformed, wrong top-level schema) raises one BadInputError naming it.
"""

from __future__ import annotations

import json

import pytest

from helpers.formats_helpers import (
    assert_same_records,
    assert_same_vqa,
    encode,
    shapes_records,
    shapes_vqa,
    truncated,
    write_coco_fixture,
    write_csv_fixture,
    write_folder_fixture,
    write_imagefolder_fixture,
    write_karpathy_fixture,
    write_nocaps_fixture,
    write_vqav2_fixture,
)
from vlbridge.data import formats
from vlbridge.data.records import ImageTextRecord, SkipCounter
from vlbridge.data.shapes import classification_records
from vlbridge.errors import BadInputError, UserError

NOT_UTF8 = b"a caption \xff\xfe broken\n"


@pytest.fixture(scope="module")
def records():
    return shapes_records(8, split="val")


def decoded(records, skips):
    """The records whose images decode (via iter_decoded), counting the others in `skips`."""
    return [record for record, _ in formats.iter_decoded(records, skips)]


def test_folder_bad_samples(tmp_path, records):
    root = tmp_path / "pairs"
    write_folder_fixture(records, root)
    ids = [r.id for r in records]
    (root / f"{ids[0]}.png").write_bytes(b"not an image at all")
    (root / f"{ids[1]}.png").write_bytes(truncated((root / f"{ids[1]}.png").read_bytes()))
    (root / f"{ids[2]}.txt").unlink()
    (root / f"{ids[3]}.png").unlink()
    (root / f"{ids[4]}.txt").write_text("\n  \n\n")
    (root / f"{ids[5]}.txt").write_bytes(NOT_UTF8)
    skips = SkipCounter()
    listed = formats.load_image_text(f"folder:{root}", skips)
    got = decoded(listed, skips)
    assert skips.as_dict() == {"undecodable image": 2, "missing caption file": 1, "missing image file": 1,
                               "empty caption": 1, "non-UTF-8 text": 1}
    assert_same_records(got, [ImageTextRecord(r.id, r.image, r.captions) for r in sorted(records[6:], key=lambda r: r.id)])


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(BadInputError, match=f"{tmp_path / 'nope'}.*no such directory"):
        formats.load_image_text(f"folder:{tmp_path / 'nope'}")


def test_csv_bad_rows(tmp_path, records):
    path = tmp_path / "d.csv"
    write_csv_fixture([records[0]], path)  # header + 6 rows of record 0
    (tmp_path / "imgs" / "broken.png").write_bytes(truncated(encode(records[1].image)))
    good = records[2:]
    write_csv_fixture(good, tmp_path / "good.csv")
    good_rows = (tmp_path / "good.csv").read_bytes().split(b"\r\n", 1)[1]
    bad_rows = (b"imgs/missing.png,a caption,m1,,,\r\n"  # missing image file
                b"imgs/broken.png,a caption,b1,,,\r\n"  # truncated image
                b"imgs/x.png,,e1,,,\r\n"  # empty caption
                b"imgs/x.png,caf\xe9 in latin-1,u1,,,\r\n"  # non-UTF-8
                b"imgs/x.png,too,many,fields,here,,,\r\n")  # wrong schema
    path.write_bytes(path.read_bytes() + bad_rows + good_rows)
    skips = SkipCounter()
    got = decoded(formats.load_image_text(f"csv:{path}", skips), skips)
    assert skips.as_dict() == {"missing image file": 1, "undecodable image": 1, "empty caption": 1,
                               "non-UTF-8 text": 1, "wrong schema": 1}
    assert_same_records(got, [records[0]] + good)


def test_csv_without_the_named_columns(tmp_path, records):
    write_csv_fixture(records[:1], tmp_path / "d.csv")
    with pytest.raises(BadInputError, match="d.csv: expected a caption column 'text'"):
        formats.load_image_text(f"csv:{tmp_path / 'd.csv'}?caption=text")
    (tmp_path / "e.csv").write_text("url;words\nx.png;hello\n")
    with pytest.raises(BadInputError, match="e.csv: expected a image column"):
        formats.load_image_text(f"csv:{tmp_path / 'e.csv'}")


def jsonl_fixture(records, root):
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for record in records:
        (root / f"{record.id}.png").write_bytes(encode(record.image))
        lines.append(json.dumps({"id": record.id, "image": f"{record.id}.png", "captions": record.captions,
                                 "label": record.label, "split": record.split, "domain": record.domain}).encode())
    return lines


def test_jsonl_bad_lines(tmp_path, records):
    root = tmp_path / "j"
    lines = jsonl_fixture(records, root)
    (root / f"{records[0].id}.png").write_bytes(b"\x89PNG garbage")
    (root / f"{records[1].id}.png").unlink()
    bad = [
        b'{"id": "x1", "image": "a.png", "captions": ["unterminated"',  # malformed JSON
        b'["a", "list"]',  # wrong schema: not an object
        b'{"id": "x2", "captions": ["no image key"]}',  # wrong schema: no image
        b'{"id": "x3", "image": "a.png", "captions": 7}',  # wrong schema: captions type
        b'{"id": "x4", "image": "a.png", "captions": ["", "  "]}',  # empty captions
        b'{"id": "x5", "image": "a.png", "caption": "caf\xe9"}',  # non-UTF-8
        b"",  # blank lines are ignored
    ]
    (root / "d.jsonl").write_bytes(b"\n".join(lines[:4] + bad + lines[4:]) + b"\n")
    skips = SkipCounter()
    got = decoded(formats.load_image_text(f"jsonl:{root / 'd.jsonl'}", skips), skips)
    assert skips.as_dict() == {"undecodable image": 1, "missing image file": 1, "malformed JSON": 1,
                               "wrong schema": 3, "empty caption": 1, "non-UTF-8 text": 1}
    assert_same_records(got, records[2:])


def test_vqa_jsonl_bad_lines(tmp_path):
    questions = shapes_vqa(1)
    (tmp_path / "i.png").write_bytes(encode(questions[0].image))
    good = [{"question_id": q.question_id, "image_id": q.image_id, "image": "i.png", "question": q.question,
             "answers": q.answers, "answer_type": q.answer_type, "split": q.split} for q in questions]
    bad = [{**good[0], "question_id": "b1", "answers": "yes"}, {**good[0], "question_id": "b2", "answers": ["", ""]},
           {**good[0], "question_id": "b3", "image": "gone.png"}, {"question_id": "b4"}]
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(line) for line in bad + good) + "\n{oops\n")
    skips = SkipCounter()
    got = formats.load_vqa(f"jsonl:{tmp_path / 'v.jsonl'}", skips)
    assert skips.as_dict() == {"wrong schema": 2, "question without answers": 1, "missing image file": 1, "malformed JSON": 1}
    assert [r.question_id for r in got] == [q.question_id for q in questions]


def test_coco_bad_entries(tmp_path, records):
    path, expected_pixels = write_coco_fixture(records, tmp_path / "coco")
    document = json.loads(path.read_text())
    images = document["images"]
    (tmp_path / "coco" / "val2014" / images[0]["file_name"]).unlink()  # missing image file
    (tmp_path / "coco" / "val2014" / images[1]["file_name"]).write_bytes(b"\xff\xd8 not a jpeg")  # corrupt
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != images[2]["id"]]  # no captions
    document["annotations"].append({"image_id": 12345, "id": 1, "caption": "orphan"})  # unknown image
    document["annotations"].append({"image_id": images[3]["id"], "id": 2, "caption": None})  # wrong schema
    document["images"].append({"id": 99})  # wrong schema: no file_name
    path.write_text(json.dumps(document))
    skips = SkipCounter()
    got = decoded(formats.load_image_text(f"coco:{path}?images={tmp_path / 'coco' / 'val2014'}", skips), skips)
    assert skips.as_dict() == {"missing image file": 1, "undecodable image": 1, "empty caption": 1,
                               "annotation of unknown image": 1, "wrong schema": 2}
    assert [r.id for r in got] == [str(image["id"]) for image in images[3:8]]
    assert [r.captions for r in got] == [r.captions for r in records[3:]]


@pytest.mark.parametrize("content, message", [
    (b'{"images": [], "annotations": [', "not valid JSON"),
    (b'{"images": []}', "expected a list under 'annotations', got no such key"),
    (b'[1, 2]', "expected a JSON object"),
    (b'{"images": "\xff"}', "expected UTF-8 JSON"),
])
def test_coco_bad_annotation_files(tmp_path, content, message):
    (tmp_path / "ann.json").write_bytes(content)
    with pytest.raises(BadInputError, match=f"COCO annotations file {tmp_path / 'ann.json'}: {message}"):
        formats.load_image_text(f"coco:{tmp_path / 'ann.json'}")


def test_coco_karpathy_bad_entries_and_split_without_karpathy(tmp_path, records):
    path, _ = write_coco_fixture(records[:4], tmp_path / "coco")
    karpathy = tmp_path / "dataset_coco.json"
    write_karpathy_fixture(records[:4], karpathy)
    document = json.loads(karpathy.read_text())
    del document["images"][1]["filename"]
    document["images"][2]["sentences"] = [{"raw": " "}]
    karpathy.write_text(json.dumps(document))
    skips = SkipCounter()
    got = formats.load_image_text(f"coco:{karpathy}?images={tmp_path / 'coco'}", skips)
    assert skips.as_dict() == {"wrong schema": 1, "empty caption": 1}
    assert [r.id for r in got] == [str(document["images"][i]["cocoid"]) for i in (0, 3)]
    (tmp_path / "captions_custom.json").write_text(path.read_text())
    with pytest.raises(UserError, match="split=test needs karpathy=FILE"):
        formats.load_image_text(f"coco:{tmp_path / 'captions_custom.json'}?images={tmp_path / 'coco' / 'val2014'}&split=test")
    with pytest.raises(UserError, match=r"has no records for split 'test'; splits present: \['val'\]"):
        formats.load_image_text(f"coco:{path}?images={tmp_path / 'coco' / 'val2014'}&split=test")


def test_nocaps_bad_entries(tmp_path, records):
    path, image_dir = write_nocaps_fixture(records, tmp_path / "nocaps")
    document = json.loads(path.read_text())
    document["images"][0]["domain"] = "far-domain"
    (image_dir / document["images"][1]["file_name"]).unlink()
    (image_dir / document["images"][2]["file_name"]).write_bytes(truncated(encode(records[2].image)))
    path.write_text(json.dumps(document))
    skips = SkipCounter()
    got = decoded(formats.load_image_text(f"nocaps:{path}?images={image_dir}", skips), skips)
    assert skips.as_dict() == {"wrong schema": 1, "missing image file": 1, "undecodable image": 1}
    expected = [ImageTextRecord(str(i), r.image, r.captions, split="val", domain=r.domain) for i, r in enumerate(records)]
    assert_same_records(got, expected[3:])
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(BadInputError, match="NoCaps file .*broken.json: not valid JSON"):
        formats.load_image_text(f"nocaps:{tmp_path / 'broken.json'}?images={image_dir}")
    with pytest.raises(BadInputError, match="image directory .*nowhere: expected a directory"):
        formats.load_image_text(f"nocaps:{path}?images={tmp_path / 'nowhere'}")


def test_vqav2_bad_entries(tmp_path):
    questions = shapes_vqa(3)
    q_path, a_path, image_dir, expected, expected_pixels = write_vqav2_fixture(questions, tmp_path / "vqa")
    annotations = json.loads(a_path.read_text())
    by_id = {a["question_id"]: a for a in annotations["annotations"]}
    ids = [int(r.question_id) for r in expected]
    annotations["annotations"] = [a for a in annotations["annotations"] if a["question_id"] != ids[0]]  # no annotation
    by_id[ids[1]]["answers"] = [{"answer_id": 1}]  # wrong schema
    by_id[ids[2]]["answers"] = [{"answer": ""}] * 10  # empty answers
    annotations["annotations"].append({"answers": []})  # wrong schema: no question id
    annotations["annotations"].append({"question_id": 5, "answer_type": "other", "answers": [{"answer": "x"}] * 10})
    a_path.write_text(json.dumps(annotations))
    question_doc = json.loads(q_path.read_text())
    question_doc["questions"].append({"image_id": "abc", "question": "what?", "question_id": 5})  # wrong schema: id
    question_doc["questions"].append({"image_id": 9, "question_id": 6})  # wrong schema: no question
    q_path.write_text(json.dumps(question_doc))
    first_image = expected[-1].image_id  # the last image's file goes missing: all its questions are skipped
    (image_dir / f"COCO_val2014_{int(first_image):012d}.jpg").unlink()
    skips = SkipCounter()
    got = formats.load_vqa(f"vqav2:{q_path}?annotations={a_path}&images={image_dir}", skips)
    lost_to_image = sum(1 for r in expected[3:] if r.image_id == first_image)
    assert skips.as_dict() == {"question without answers": 2, "wrong schema": 4, "missing image file": lost_to_image}
    assert_same_vqa(got, [r for r in expected[3:] if r.image_id != first_image], expected_pixels)
    q_path.write_bytes(b'{"questions": [\xff]}')
    with pytest.raises(BadInputError, match="VQAv2 questions file .*: expected UTF-8 JSON"):
        formats.load_vqa(f"vqav2:{q_path}?annotations={a_path}&images={image_dir}")


def test_imagefolder_bad_samples(tmp_path):
    source = classification_records(6, split="test", image_size=32)
    expected = write_imagefolder_fixture(source, tmp_path / "classes")
    (tmp_path / "classes" / expected[0].id).write_bytes(b"junk")
    (tmp_path / "classes" / "stray.png").write_bytes(encode(source[0].image))
    skips = SkipCounter()
    got = decoded(formats.load_classification(f"imagefolder:{tmp_path / 'classes'}", skips), skips)
    assert skips.as_dict() == {"wrong schema": 1, "undecodable image": 1}
    assert [r.id for r in got] == [r.id for r in expected[1:]]
    with pytest.raises(BadInputError, match="ImageFolder directory .*empty: expected class folders"):
        (tmp_path / "empty").mkdir()
        formats.load_classification(f"imagefolder:{tmp_path / 'empty'}")


def test_export_skips_and_counts_bad_images(tmp_path, records):
    broken = [ImageTextRecord("corrupt", b"\x89PNG\r\n\x1a\n garbage", ["a caption"]),
              ImageTextRecord("gone", tmp_path / "missing.png", ["a caption"]),
              ImageTextRecord("silent", encode(records[0].image), ["", " "])]
    summary = formats.export_records(broken + records, tmp_path / "out", "wds", progress=False)
    assert summary.written == len(records)
    assert summary.skips.as_dict() == {"undecodable image": 1, "missing image file": 1, "empty caption": 1}
    assert_same_records(list(formats.load_image_text(summary.read_back)), records)


def test_oversized_images_are_refused_from_the_header(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from vlbridge.data import records
    from vlbridge.data.records import BadImage, open_image

    path = tmp_path / "wide.png"
    Image.new("RGBA", (200, 100), (0, 0, 255, 0)).save(path)
    data = path.read_bytes()
    for ref in (path, str(path), data):
        with pytest.raises(BadImage, match="larger than 0.01 megapixels, not decoded"):
            open_image(ref, max_pixels=10_000)
        assert open_image(ref, max_pixels=20_000).size == (200, 100)  # at the limit: decoded
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # PIL's bomb error (> 2x its limit) is a BadImage too
    with pytest.raises(BadImage, match="not decoded"):
        open_image(io.BytesIO(data).getvalue(), max_pixels=None)
    assert records.MAX_IMAGE_PIXELS == 25_000_000  # the default guard
