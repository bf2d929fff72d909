"""Fixture writers for the dataset-format tests: shapes-world records laid out in each real format.

Each writer builds the on-disk layout by hand (tarfile, csv, json, plain files), independently
of vlbridge's own writers, so a reader test checks the reader against the format itself and
not against our writer. `expected_*` gives what the reader must return for that fixture.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from vlbridge.data.records import ImageTextRecord, VQARecord, open_image
from vlbridge.data.shapes import image_text_records, vqa_records

IMAGE_SIZE = 32  # small images keep the tests fast


def shapes_records(n: int = 6, split: str = "val", seed: int = 0) -> list[ImageTextRecord]:
    """In-memory shapes-world records (val cycles through the in / near / out domains)."""
    return image_text_records(n, split=split, seed=seed, image_size=IMAGE_SIZE)


def shapes_vqa(n_images: int = 3, split: str = "val", seed: int = 0) -> list[VQARecord]:
    return vqa_records(n_images, split=split, seed=seed, image_size=IMAGE_SIZE)


def encode(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}))
    return buffer.getvalue()


def pixels(ref) -> np.ndarray:
    return np.asarray(open_image(ref))


def assert_same_records(got, expected, fields=("id", "captions", "label", "split", "domain"), expected_pixels=None):
    """Same records in the same order: equal `fields` and equal decoded pixels."""
    assert [r.id for r in got] == [r.id for r in expected]
    for got_record, want in zip(got, expected):
        for name in fields:
            assert getattr(got_record, name) == getattr(want, name), (want.id, name)
    expected_pixels = expected_pixels or {r.id: pixels(r.image) for r in expected}
    for got_record in got:
        assert np.array_equal(pixels(got_record.image), expected_pixels[got_record.id]), got_record.id


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


# ------------------------------------------------------------------------------------ simple formats
def write_folder_fixture(records, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for record in records:
        (root / f"{record.id}.png").write_bytes(encode(record.image))
        (root / f"{record.id}.txt").write_text("\n".join(record.captions) + "\n", encoding="utf-8")


def write_csv_fixture(records, path: Path, sep: str = ",", image_col: str = "filepath", caption_col: str = "caption",
                      with_meta: bool = True) -> None:
    """One row per caption, images in PATH's folder under imgs/; optional id/label/split/domain columns."""
    (path.parent / "imgs").mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=sep)
        writer.writerow([image_col, caption_col] + (["id", "label", "split", "domain"] if with_meta else []))
        for record in records:
            relative = f"imgs/{record.id}.png"
            (path.parent / relative).write_bytes(encode(record.image))
            for caption in record.captions:
                meta = [record.id, record.label or "", record.split or "", record.domain or ""] if with_meta else []
                writer.writerow([relative, caption] + meta)


def jsonl_line(record, relative: str) -> dict:
    return {"id": record.id, "image": relative, "captions": record.captions, "label": record.label,
            "split": record.split, "domain": record.domain}


def write_imagefolder_fixture(records, root: Path) -> list[ImageTextRecord]:
    """root/<label with '_' for ' '>/<id>.png; returns the expected records (caption = label)."""
    expected = []
    for record in records:
        folder = root / record.label.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{record.id}.png").write_bytes(encode(record.image))
        expected.append(ImageTextRecord(f"{folder.name}/{record.id}.png", record.image, [record.label], record.label, None))
    return sorted(expected, key=lambda r: r.id)


# ------------------------------------------------------------------------------------ webdataset
def tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds_fixture(records, root: Path, per_shard: int = 3, style: str = "json") -> list[Path]:
    """img2dataset-like shards root/00000.tar...: <key>.png + <key>.txt + <key>.json (style "json":
    json holds all captions and metadata; style "txt": only png + txt, one caption)."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(records), per_shard):
        path = root / f"{start // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for record in records[start : start + per_shard]:
                key = record.id
                tar_member(tar, f"{key}.png", encode(record.image))
                tar_member(tar, f"{key}.txt", record.captions[0].encode("utf-8"))
                if style == "json":
                    meta = {"key": key, "captions": record.captions, "label": record.label,
                            "split": record.split, "domain": record.domain, "status": "success"}
                    tar_member(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
        shards.append(path)
    return shards


# ------------------------------------------------------------------------------------ COCO family
def coco_id(index: int) -> int:
    return 391895 + 7 * index


def write_coco_fixture(records, root: Path, subtype: str = "val2014") -> tuple[Path, dict[str, np.ndarray]]:
    """root/annotations/captions_<subtype>.json + root/<subtype>/COCO_<subtype>_<id>.jpg (real JPEGs).

    Returns (annotations path, {str(coco id): expected pixels}).
    """
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / subtype).mkdir(parents=True, exist_ok=True)
    images, annotations, expected = [], [], {}
    for index, record in enumerate(records):
        image_id = coco_id(index)
        file_name = f"COCO_{subtype}_{image_id:012d}.jpg"
        data = encode(record.image, "JPEG")
        (root / subtype / file_name).write_bytes(data)
        expected[str(image_id)] = pixels(data)
        images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": IMAGE_SIZE,
                       "width": IMAGE_SIZE, "date_captured": "2013-11-14 16:28:13", "id": image_id})
        for caption in record.captions:
            annotations.append({"image_id": image_id, "id": 1000 + len(annotations), "caption": caption})
    document = {"info": {}, "licenses": [], "type": "captions", "images": images, "annotations": annotations}
    path = root / "annotations" / f"captions_{subtype}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path, expected


KARPATHY_CYCLE = ("train", "restval", "val", "test")  # split given to image i of the Karpathy fixture


def write_karpathy_fixture(records, path: Path, subtype: str = "val2014") -> None:
    """dataset_coco.json for the images of write_coco_fixture(records, ...)."""
    entries = []
    for index, record in enumerate(records):
        image_id = coco_id(index)
        entries.append({
            "filepath": subtype, "filename": f"COCO_{subtype}_{image_id:012d}.jpg", "imgid": index,
            "split": KARPATHY_CYCLE[index % len(KARPATHY_CYCLE)], "cocoid": image_id,
            "sentids": list(range(index * 10, index * 10 + len(record.captions))),
            "sentences": [{"tokens": c.split(), "raw": c, "imgid": index, "sentid": index * 10 + j}
                          for j, c in enumerate(record.captions)],
        })
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}), encoding="utf-8")


NOCAPS_NAMES = {"in": "in-domain", "near": "near-domain", "out": "out-domain"}


def write_nocaps_fixture(records, root: Path) -> tuple[Path, Path]:
    """root/nocaps_val_4500_captions.json + root/images/<open images id>.jpg; returns (json, image dir)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, record in enumerate(records):
        file_name = f"{index:016x}.jpg"
        (root / "images" / file_name).write_bytes(encode(record.image))  # PNG bytes under .jpg: lossless
        images.append({"id": index, "open_images_id": file_name[:-4], "file_name": file_name, "height": IMAGE_SIZE,
                       "width": IMAGE_SIZE, "coco_url": "", "domain": NOCAPS_NAMES[record.domain]})
        for caption in record.captions:
            annotations.append({"image_id": index, "id": len(annotations), "caption": caption})
    path = root / "nocaps_val_4500_captions.json"
    path.write_text(json.dumps({"licenses": [], "info": {}, "images": images, "annotations": annotations}), encoding="utf-8")
    return path, root / "images"


def write_vqav2_fixture(questions: list[VQARecord], root: Path, subtype: str = "val2014"):
    """v2_OpenEnded_mscoco_<subtype>_questions.json + v2_mscoco_<subtype>_annotations.json + images.

    Returns (questions path, annotations path, image dir, expected VQARecords, {image id: pixels}).
    """
    image_dir = root / subtype
    image_dir.mkdir(parents=True, exist_ok=True)
    image_numbers: dict[str, int] = {}
    question_entries, annotation_entries, expected, expected_pixels = [], [], [], {}
    for number, record in enumerate(questions):
        if record.image_id not in image_numbers:
            image_numbers[record.image_id] = 9 + 13 * len(image_numbers)
            data = encode(record.image, "JPEG")
            (image_dir / f"COCO_{subtype}_{image_numbers[record.image_id]:012d}.jpg").write_bytes(data)
            expected_pixels[str(image_numbers[record.image_id])] = pixels(data)
        image_id = image_numbers[record.image_id]
        question_id = image_id * 1000 + number
        question_entries.append({"image_id": image_id, "question": record.question, "question_id": question_id})
        annotation_entries.append({
            "question_type": "what", "multiple_choice_answer": record.answers[0], "image_id": image_id,
            "answer_type": record.answer_type, "question_id": question_id,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(record.answers)],
        })
        expected.append(VQARecord(str(question_id), str(image_id), None, record.question, list(record.answers),
                                  record.answer_type, subtype[:-4]))
    questions_path = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    questions_path.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                          "license": {}, "data_subtype": subtype, "questions": question_entries}))
    annotations_path = root / f"v2_mscoco_{subtype}_annotations.json"
    annotations_path.write_text(json.dumps({"info": {}, "license": {}, "data_subtype": subtype,
                                            "annotations": annotation_entries}))
    return questions_path, annotations_path, image_dir, expected, expected_pixels


def assert_same_vqa(got: list[VQARecord], expected: list[VQARecord], expected_pixels: dict[str, np.ndarray]) -> None:
    fields = ("question_id", "image_id", "question", "answers", "answer_type", "split")
    assert [tuple(getattr(r, f) for f in fields) for r in got] == [tuple(getattr(r, f) for f in fields) for r in expected]
    for record in got:
        assert np.array_equal(pixels(record.image), expected_pixels[record.image_id]), record.question_id
