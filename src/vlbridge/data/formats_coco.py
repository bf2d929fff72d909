"""Readers for the COCO-family annotation files: COCO captions (+ Karpathy split), NoCaps, VQAv2.

    read_coco(JSON, images=DIR, karpathy=FILE, split=S)
        JSON is either COCO's captions_<split>2014.json ({"images": [{id, file_name}],
        "annotations": [{image_id, caption}]}) or Karpathy's dataset_coco.json ({"images":
        [{filepath, filename, cocoid, split, sentences: [{raw}]}]}). With karpathy=FILE the
        Karpathy split of each COCO image is used; "restval" counts as "train" (the usual
        113k/5k/5k split). Without it, the split comes from a "<split>2014"-style file name.
        Image paths: DIR/file_name, or DIR/filepath/filename for Karpathy entries
        (DIR defaults to JSON's folder). id = the COCO image id.
    read_nocaps(JSON, images=DIR)
        NoCaps val/test JSON: "images" with domain "in-domain" / "near-domain" / "out-domain"
        (-> "in" / "near" / "out") and "annotations" captions. A file without "annotations"
        (the test image list) gives captionless records of split "test".
    read_vqav2(QUESTIONS, annotations=FILE, images=DIR)
        VQAv2 questions JSON + annotations JSON (10 answers per question). The image of a
        question is DIR/COCO_<subtype>_<image_id:012d>.jpg, subtype from the questions
        file's "data_subtype" (e.g. "val2014"). Without annotations (test-dev) answers are empty.

Bad entries (unknown image ids, missing image files, empty captions, wrong types) are skipped
and counted; a missing or malformed JSON file raises one `BadInputError` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlbridge.data.formats_common import (
    BAD_SCHEMA,
    EMPTY_CAPTION,
    MISSING_IMAGE,
    NO_ANSWERS,
    UNKNOWN_IMAGE,
    existing_image,
    read_json_file,
    require_dir,
    require_keys,
)
from vlbridge.data.records import ImageTextRecord, SkipCounter, VQARecord
from vlbridge.errors import BadInputError, UserError

NOCAPS_DOMAINS = {"in-domain": "in", "near-domain": "near", "out-domain": "out"}  # NoCaps -> record domain
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}  # Karpathy -> record split
_SPLIT_IN_NAME = re.compile(r"(train|val|test)20\d\d")  # "captions_val2014.json" -> "val"


def _image_dir(images: str | Path | None, json_path: Path) -> Path:
    return json_path.parent if images is None else require_dir(images, "image directory")


# ------------------------------------------------------------------------------------ COCO
def read_coco(
    path: str | Path,
    skips: SkipCounter,
    images: str | Path | None = None,
    karpathy: str | Path | None = None,
    split: str | None = None,
) -> list[ImageTextRecord]:
    """COCO caption records (see the module docstring), optionally of one split only."""
    path = Path(path)
    document = read_json_file(path, "COCO annotations file")
    image_dir = _image_dir(images, path)
    if _is_karpathy(document):
        records = _karpathy_records(document, path, image_dir, skips)
    else:
        require_keys(document, ("images", "annotations"), path, "COCO annotations file")
        splits = _karpathy_splits(Path(karpathy)) if karpathy else None
        records = _coco_records(document, path, image_dir, splits, skips)
    if split is not None:
        if all(record.split is None for record in records):
            raise UserError(f"COCO annotations file {path}: split={split} needs karpathy=FILE (no split known)")
        present = sorted({record.split for record in records if record.split})
        records = [record for record in records if record.split == split]
        if not records:
            raise UserError(f"COCO annotations file {path}: no images of split {split!r}; splits present: {present}")
    return records


def _is_karpathy(document: object) -> bool:
    entries = document.get("images") if isinstance(document, dict) else None
    return isinstance(entries, list) and bool(entries) and isinstance(entries[0], dict) and "sentences" in entries[0]


def _karpathy_splits(path: Path) -> dict[str, str]:
    """{COCO image id: split} from Karpathy's dataset_coco.json."""
    document = read_json_file(path, "Karpathy split file")
    if not _is_karpathy(document):
        raise BadInputError(f"Karpathy split file {path}: expected {{'images': [{{'cocoid', 'split', 'sentences', ...}}]}}")
    splits = {}
    for entry in document["images"]:
        if isinstance(entry, dict) and "cocoid" in entry and entry.get("split") in KARPATHY_SPLITS:
            splits[str(entry["cocoid"])] = KARPATHY_SPLITS[entry["split"]]
    return splits


def _karpathy_records(document: dict, path: Path, image_dir: Path, skips: SkipCounter) -> list[ImageTextRecord]:
    records = []
    for number, entry in enumerate(document["images"]):
        where = f"{path}: images[{number}]"
        try:
            record_id = str(entry.get("cocoid", entry.get("imgid", Path(entry["filename"]).stem)))
            sentences = [sentence["raw"] for sentence in entry["sentences"]]
            relative = Path(entry.get("filepath") or "") / entry["filename"]
            split = KARPATHY_SPLITS.get(entry.get("split"), entry.get("split"))
        except (KeyError, TypeError, AttributeError) as err:
            skips.skip(BAD_SCHEMA, f"{where}: {err!r}")
            continue
        captions = _captions(sentences, skips, where)
        image = _first_existing([image_dir / relative, image_dir / relative.name], skips, where) if captions else None
        if image is not None:
            records.append(ImageTextRecord(record_id, image, captions, split=split))
    return records


def _coco_records(document, path: Path, image_dir: Path, splits: dict | None, skips) -> list[ImageTextRecord]:
    entries = _images_by_id(document, path, skips)
    captions = _captions_by_image(document, path, entries, skips)
    match = _SPLIT_IN_NAME.search(path.name)
    name_split = match.group(1) if match else None
    records = []
    for image_id, entry in entries.items():
        where = f"{path}: image {image_id}"
        if not captions.get(image_id):
            skips.skip(EMPTY_CAPTION, where)
            continue
        image = existing_image(image_dir / entry["file_name"], skips, where)
        if image is not None:
            split = splits.get(image_id) if splits is not None else name_split
            records.append(ImageTextRecord(image_id, image, captions[image_id], split=split))
    return records


def _images_by_id(document: dict, path: Path, skips: SkipCounter) -> dict[str, dict]:
    """{str(id): image entry} of entries with an id and a file_name; the others are counted."""
    entries = {}
    for number, entry in enumerate(document["images"]):
        if isinstance(entry, dict) and "id" in entry and isinstance(entry.get("file_name"), str):
            entries[str(entry["id"])] = entry
        else:
            skips.skip(BAD_SCHEMA, f"{path}: images[{number}] needs id and file_name")
    return entries


def _captions_by_image(document: dict, path: Path, entries: dict, skips: SkipCounter) -> dict[str, list[str]]:
    """{image id: captions in annotation order}; bad or orphan annotations are counted."""
    captions: dict[str, list[str]] = {}
    for number, annotation in enumerate(document["annotations"]):
        where = f"{path}: annotations[{number}]"
        usable = isinstance(annotation, dict) and isinstance(annotation.get("caption"), str) and "image_id" in annotation
        if not usable:
            skips.skip(BAD_SCHEMA, f"{where} needs image_id and a caption string")
            continue
        image_id = str(annotation["image_id"])
        if image_id not in entries:
            skips.skip(UNKNOWN_IMAGE, f"{where}: image_id {image_id}")
            continue
        if annotation["caption"].strip():
            captions.setdefault(image_id, []).append(annotation["caption"].strip())
    return captions


def _captions(raw: list, skips: SkipCounter, where: str) -> list[str] | None:
    if not all(isinstance(caption, str) for caption in raw):
        skips.skip(BAD_SCHEMA, f"{where}: captions must be strings")
        return None
    captions = [caption.strip() for caption in raw if caption.strip()]
    if not captions:
        skips.skip(EMPTY_CAPTION, where)
    return captions or None


def _first_existing(candidates: list[Path], skips: SkipCounter, where: str) -> Path | None:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return existing_image(candidates[0], skips, where)


# ------------------------------------------------------------------------------------ NoCaps
def read_nocaps(path: str | Path, skips: SkipCounter, images: str | Path | None = None) -> list[ImageTextRecord]:
    """NoCaps records with domain "in" / "near" / "out" (see the module docstring)."""
    path = Path(path)
    document = read_json_file(path, "NoCaps file")
    has_captions = isinstance(document, dict) and "annotations" in document
    require_keys(document, ("images", "annotations") if has_captions else ("images",), path, "NoCaps file")
    image_dir = _image_dir(images, path)
    entries = _images_by_id(document, path, skips)
    captions = _captions_by_image(document, path, entries, skips) if has_captions else {}
    records = []
    for image_id, entry in entries.items():
        where = f"{path}: image {image_id}"
        domain = NOCAPS_DOMAINS.get(entry.get("domain"))
        if domain is None:
            skips.skip(BAD_SCHEMA, f"{where}: domain must be one of {list(NOCAPS_DOMAINS)}, got {entry.get('domain')!r}")
            continue
        if has_captions and not captions.get(image_id):
            skips.skip(EMPTY_CAPTION, where)
            continue
        image = existing_image(image_dir / entry["file_name"], skips, where)
        if image is not None:
            split = "val" if has_captions else "test"
            records.append(ImageTextRecord(image_id, image, captions.get(image_id, []), split=split, domain=domain))
    return records


# ------------------------------------------------------------------------------------ VQAv2
def read_vqav2(
    path: str | Path,
    skips: SkipCounter,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    subtype: str | None = None,
) -> list[VQARecord]:
    """VQAv2 records (see the module docstring); `subtype` overrides the file's data_subtype."""
    path = Path(path)
    document = require_keys(read_json_file(path, "VQAv2 questions file"), ("questions",), path, "VQAv2 questions file")
    subtype = subtype or document.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise BadInputError(f"VQAv2 questions file {path}: expected a data_subtype like 'val2014' (or pass subtype=...)")
    answers = _answers_by_question(Path(annotations), skips) if annotations else None
    image_dir = _image_dir(images, path)
    split = re.sub(r"\d+$", "", subtype)
    checked: dict[str, Path | None] = {}
    records = []
    for number, entry in enumerate(document["questions"]):
        where = f"{path}: questions[{number}]"
        usable = isinstance(entry, dict) and isinstance(entry.get("question"), str)
        usable = usable and {"question_id", "image_id"} <= set(entry)
        if not usable:
            skips.skip(BAD_SCHEMA, f"{where} needs question_id, image_id and a question string")
            continue
        question_id, image_id = str(entry["question_id"]), str(entry["image_id"])
        annotation = answers.get(question_id, NO_ANSWERS) if answers is not None else (None, [])
        if isinstance(annotation, str):
            skips.skip(annotation, f"{where}: question {question_id} has no usable annotation")
            continue
        image = _vqa_image(image_dir, subtype, entry["image_id"], checked)
        if image is None:
            skips.skip(MISSING_IMAGE if image_id in checked else BAD_SCHEMA, f"{where}: image {image_id} not in {image_dir}")
            continue
        answer_type, answer_list = annotation
        records.append(VQARecord(question_id, image_id, image, entry["question"], answer_list, answer_type, split))
    return records


def _vqa_image(image_dir: Path, subtype: str, image_id: object, checked: dict[str, Path | None]) -> Path | None:
    """DIR/COCO_<subtype>_<id:012d>.jpg if it exists (looked up once per image), else None.

    An id that is not an integer is not recorded in `checked` (the caller counts BAD_SCHEMA).
    """
    key = str(image_id)
    if key not in checked:
        try:
            path = image_dir / f"COCO_{subtype}_{int(image_id):012d}.jpg"
        except (TypeError, ValueError):
            return None
        checked[key] = path if path.is_file() else None
    return checked[key]


def _answers_by_question(path: Path, skips: SkipCounter) -> dict[str, tuple[str | None, list[str]] | str]:
    """{question id: (answer_type, the human answers)} from a VQAv2 annotations file.

    A bad annotation maps its question id to the skip reason instead, so the question is
    counted once when it is read; annotations without a question id are counted here.
    """
    what = "VQAv2 annotations file"
    document = require_keys(read_json_file(path, what), ("annotations",), path, what)
    by_question: dict[str, tuple[str | None, list[str]] | str] = {}
    for number, annotation in enumerate(document["annotations"]):
        if not isinstance(annotation, dict) or "question_id" not in annotation:
            skips.skip(BAD_SCHEMA, f"{path}: annotations[{number}] has no question_id")
            continue
        question_id = str(annotation["question_id"])
        try:
            answers = [item["answer"] for item in annotation["answers"]]
            if not all(isinstance(answer, str) for answer in answers):
                raise TypeError("answers must be strings")
        except (KeyError, TypeError):
            by_question[question_id] = BAD_SCHEMA
            continue
        if not any(answer.strip() for answer in answers):
            by_question[question_id] = NO_ANSWERS
            continue
        by_question[question_id] = (annotation.get("answer_type"), answers)
    return by_question
