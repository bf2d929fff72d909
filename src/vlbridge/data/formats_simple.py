"""Plain on-disk dataset formats: image-text folder, CSV/TSV, JSONL, ImageFolder; and their writers.

Readers (all return lists of shared records with lazily referenced image paths; bad samples
are skipped and counted in a `SkipCounter`, a bad file raises one `BadInputError`):

    read_folder(DIR)           DIR/**/<stem>.<png|jpg|...> + DIR/**/<stem>.txt (one caption a line);
                               id = the stem's path relative to DIR ("a/b" for DIR/a/b.png)
    read_csv(FILE, image=, caption=, sep=)
                               one row per (image, caption); rows of the same id (or image path)
                               are joined into one record; optional id/label/split/domain columns;
                               image paths are relative to FILE's folder
    read_jsonl(FILE)           {"id", "image", "captions" | "caption", "label"?, "split"?, "domain"?}
                               per line (the shapes world's captions.jsonl is one)
    read_vqa_jsonl(FILE)       {"question_id", "image_id", "image", "question", "answers", ...}
                               per line (the shapes world's vqa.jsonl)
    read_imagefolder(DIR)      DIR/<class>/<image> (or DIR/<train|val|test>/<class>/<image>);
                               label = class folder name with '_' as ' ', caption = [label],
                               id = the image's path relative to DIR

Writers (`write_folder`, `write_csv`, `write_jsonl`) lay records out so that the matching
reader gives them back: same ids, captions, label/split/domain (folder: ids and captions only)
and pixels. They are called by `vlbridge.data.formats.export_records`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlbridge import jsontext
from vlbridge.data.formats_common import (
    BAD_JSON,
    BAD_SCHEMA,
    IMAGE_SUFFIXES,
    MISSING_IMAGE,
    MISSING_TEXT,
    NO_ANSWERS,
    NOT_UTF8,
    SAME_STEM,
    clean_captions,
    decode_text,
    existing_image,
    optional_str,
    require_dir,
    require_file,
    safe_name,
)
from vlbridge.data.records import ImageTextRecord, SkipCounter, VQARecord
from vlbridge.errors import BadInputError

log = logging.getLogger(__name__)

CSV_IMAGE_COLUMNS = ("filepath", "image", "file", "path", "filename")  # tried in order when image= is not given
CSV_CAPTION_COLUMNS = ("caption", "title", "text", "captions")  # tried in order when caption= is not given
SPLIT_FOLDERS = ("train", "val", "test")  # ImageFolder split sub-folders


# ------------------------------------------------------------------------------------ folder
def read_folder(root: str | Path, skips: SkipCounter) -> list[ImageTextRecord]:
    """Records of every image under `root` with a same-stem .txt (one caption per line)."""
    root = require_dir(root, "image-text folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    images = _images_by_stem([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES], skips)
    texts = {p.with_suffix(""): p for p in files if p.suffix == ".txt"}
    records = []
    for stem in sorted(set(images) | set(texts)):
        record_id = stem.relative_to(root).as_posix()
        if stem not in images:
            skips.skip(MISSING_IMAGE, f"{texts[stem]} has no image next to it")
            continue
        if stem not in texts:
            skips.skip(MISSING_TEXT, f"{images[stem]} has no {stem.name}.txt")
            continue
        text = decode_text(texts[stem].read_bytes(), skips, str(texts[stem]))
        captions = None if text is None else clean_captions(text.splitlines(), skips, str(texts[stem]))
        if captions is not None:
            records.append(ImageTextRecord(record_id, images[stem], captions))
    if not images and not texts:
        raise BadInputError(f"image-text folder {root}: expected images with same-name .txt captions, found none")
    return records


def _images_by_stem(image_files: list[Path], skips: SkipCounter) -> dict[Path, Path]:
    """stem -> image file; when several images share a stem (a.png, a.jpg) one .txt cannot caption both:
    the last in sorted order is kept and each other one is counted, never dropped silently."""
    images: dict[Path, Path] = {}
    for path in image_files:
        stem = path.with_suffix("")
        if stem in images:
            skips.skip(SAME_STEM, f"{images[stem]} left out: {path.name} has the same name and {stem.name}.txt captions one image")
        images[stem] = path
    return images


def write_folder(records: Iterable[ImageTextRecord], out: Path, encode) -> Iterator[ImageTextRecord]:
    """Write OUT/<id>.<ext> + OUT/<id>.txt per record; yields each record written."""
    taken: set[str] = set()
    for record, data, ext in encode(records):
        name = _safe_path(record.id, taken)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.{ext}").write_bytes(data)
        (out / f"{name}.txt").write_text("\n".join(_one_line(c) for c in record.captions) + "\n", encoding="utf-8")
        yield record


# ------------------------------------------------------------------------------------ CSV
def read_csv(
    path: str | Path, skips: SkipCounter, image: str | None = None, caption: str | None = None, sep: str | None = None
) -> list[ImageTextRecord]:
    """Records from a CSV/TSV of (image path, caption) rows; see the module docstring."""
    path = require_file(path, "CSV file")
    sep = sep or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep)
    columns = _csv_header(reader, path)
    image_column = _pick_column(columns, image, CSV_IMAGE_COLUMNS, "image", path)
    caption_column = _pick_column(columns, caption, CSV_CAPTION_COLUMNS, "caption", path)
    grouped: dict[str, ImageTextRecord] = {}
    for row_number, row in enumerate(_csv_rows(reader, skips, path), start=1):
        where = f"{path} row {row_number}"
        if row is None:  # counted by _csv_rows
            continue
        if None in row or None in row.values():
            skips.skip(BAD_SCHEMA, f"{where}: expected {len(columns)} fields separated by {sep!r}")
            continue
        if any(_has_surrogates(value) for value in row.values()):
            skips.skip(NOT_UTF8, where)
            continue
        _add_csv_row(grouped, row, image_column, caption_column, path.parent, skips, where)
    return list(grouped.values())


def _add_csv_row(grouped, row, image_column, caption_column, base: Path, skips, where) -> None:
    image_text = row[image_column].strip()
    if not image_text:
        skips.skip(BAD_SCHEMA, f"{where}: empty {image_column!r}")
        return
    record_id = (row.get("id") or "").strip() or image_text
    captions = clean_captions(row[caption_column], skips, where)
    if record_id in grouped:  # another caption of an image already read
        if grouped[record_id].image != base / image_text:  # one id, two images: merging would mislabel one
            skips.skip(BAD_SCHEMA, f"{where}: id {record_id!r} already names image {grouped[record_id].image}, not {image_text}")
            return
        grouped[record_id].captions.extend(captions or [])
        return
    image_path = existing_image(base / image_text, skips, where) if captions else None
    if image_path is not None:
        extras = {key: (row.get(key) or "").strip() or None for key in ("label", "split", "domain")}
        grouped[record_id] = ImageTextRecord(record_id, image_path, captions, **extras)


def _csv_header(reader: csv.DictReader, path: Path) -> list[str]:
    """The header row; BadInputError for a header the csv module cannot read or one naming a column twice."""
    try:
        columns = reader.fieldnames or []
    except csv.Error as err:
        raise BadInputError(f"CSV file {path}: unreadable header row ({err})") from err
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise BadInputError(f"CSV file {path}: the header names column {repeated[0]!r} twice; expected unique column names")
    return columns


def _csv_rows(reader: csv.DictReader, skips, path: Path):
    """The reader's rows; a row the csv module refuses (a field over its size limit, a NUL byte) is counted
    as BAD_SCHEMA and yielded as None, so row numbers stay right and the rows after it still read."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            skips.skip(BAD_SCHEMA, f"{path} line {reader.line_num}: {err}")
            yield None


def _pick_column(columns: list[str], wanted: str | None, defaults: tuple[str, ...], role: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise BadInputError(f"CSV file {path}: expected a {role} column {wanted!r}, got columns {columns}")
        return wanted
    for name in defaults:
        if name in columns:
            return name
    raise BadInputError(
        f"CSV file {path}: expected a {role} column (one of {list(defaults)}, or name it with ?{role}=COLUMN), "
        f"got columns {columns} (wrong separator? use ?sep=\\t for tabs)"
    )


def _has_surrogates(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def write_csv(records: Iterable[ImageTextRecord], out: Path, encode) -> Iterator[ImageTextRecord]:
    """Write OUT/images/<id>.<ext> and OUT/data.csv with one row per caption."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    with open(out / "data.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "filepath", "caption", "label", "split", "domain"])
        for record, data, ext in encode(records):
            relative = f"images/{_safe_path(record.id, taken)}.{ext}"
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_bytes(data)
            for caption in record.captions:
                meta = [record.label or "", record.split or "", record.domain or ""]
                writer.writerow([record.id, relative, _one_line(caption), *meta])
            yield record


# ------------------------------------------------------------------------------------ JSONL
def _jsonl_objects(path: Path, skips: SkipCounter) -> Iterator[tuple[str, dict]]:
    """(where, object) of each good line; undecodable / malformed / non-object lines are counted."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            text = decode_text(raw, skips, where)
            if text is None or not text.strip():
                continue
            try:
                entry = jsontext.loads(text)
            except json.JSONDecodeError as err:
                skips.skip(BAD_JSON, f"{where}: {err.msg}")
                continue
            if not isinstance(entry, dict):
                skips.skip(BAD_SCHEMA, f"{where}: expected a JSON object, got {type(entry).__name__}")
                continue
            yield where, entry


def read_jsonl(path: str | Path, skips: SkipCounter) -> list[ImageTextRecord]:
    """Records from a JSON-lines file (image paths relative to the file); see the module docstring."""
    path = require_file(path, "JSONL file")
    records = []
    for where, entry in _jsonl_objects(path, skips):
        try:
            image_text = entry["image"]
            if not isinstance(image_text, str) or not image_text:
                raise ValueError(f"image must be a path string, got {image_text!r:.40}")
            record_id = optional_str(entry, "id") or image_text
            extras = {key: optional_str(entry, key) for key in ("label", "split", "domain")}
        except (KeyError, ValueError) as err:
            skips.skip(BAD_SCHEMA, f"{where}: {err}")
            continue
        captions = clean_captions(entry.get("captions", entry.get("caption")), skips, where)
        image_path = existing_image(path.parent / image_text, skips, where) if captions else None
        if image_path is not None:
            records.append(ImageTextRecord(record_id, image_path, captions, **extras))
    return records


def read_vqa_jsonl(path: str | Path, skips: SkipCounter) -> list[VQARecord]:
    """VQA records from a JSON-lines file like the shapes world's vqa.jsonl."""
    path = require_file(path, "VQA JSONL file")
    records = []
    for where, entry in _jsonl_objects(path, skips):
        try:
            fields = {key: optional_str(entry, key) for key in ("question_id", "image_id", "image", "question")}
            missing = [key for key, value in fields.items() if not value]
            if missing:
                raise ValueError(f"missing {missing}")
            answers = entry.get("answers")
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                raise ValueError(f"answers must be a list of strings, got {answers!r:.40}")
            extras = {key: optional_str(entry, key) for key in ("answer_type", "split")}
        except ValueError as err:
            skips.skip(BAD_SCHEMA, f"{where}: {err}")
            continue
        if not any(answer.strip() for answer in answers):
            skips.skip(NO_ANSWERS, where)
            continue
        image_path = existing_image(path.parent / fields.pop("image"), skips, where)
        if image_path is not None:
            records.append(VQARecord(image=image_path, answers=answers, **fields, **extras))
    return records


def write_jsonl(records: Iterable[ImageTextRecord], out: Path, encode) -> Iterator[ImageTextRecord]:
    """Write OUT/images/<id>.<ext> and OUT/captions.jsonl (the shapes world's layout)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    with open(out / "captions.jsonl", "w", encoding="utf-8", newline="\n") as handle:
        for record, data, ext in encode(records):
            relative = f"images/{_safe_path(record.id, taken)}.{ext}"
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_bytes(data)
            line = {"id": record.id, "image": relative, "captions": list(record.captions),
                    "label": record.label, "split": record.split, "domain": record.domain}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            yield record


# ------------------------------------------------------------------------------------ ImageFolder
def read_imagefolder(root: str | Path, skips: SkipCounter, split: str | None = None) -> list[ImageTextRecord]:
    """Labelled records of DIR/<class>/<image>, or of DIR/<split>/<class>/<image> when split folders exist."""
    root = require_dir(root, "ImageFolder directory")
    subfolders = sorted(d.name for d in root.iterdir() if d.is_dir())
    if subfolders and set(subfolders) <= set(SPLIT_FOLDERS):
        chosen = [split] if split else subfolders
        if split and split not in subfolders:
            raise BadInputError(f"ImageFolder directory {root}: expected a {split!r} folder, got {subfolders}")
        records = [r for name in chosen for r in _class_folders(root / name, root, name, skips)]
    else:
        records = _class_folders(root, root, split, skips)
    if not records:
        raise BadInputError(
            f"ImageFolder directory {root}: expected class folders holding images ({', '.join(IMAGE_SUFFIXES)}), found none"
        )
    return records


def _class_folders(folder: Path, root: Path, split: str | None, skips: SkipCounter) -> list[ImageTextRecord]:
    records = []
    for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
        label = class_dir.name.replace("_", " ")
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                record_id = path.relative_to(root).as_posix()
                records.append(ImageTextRecord(record_id, path, [label], label, split))
    for stray in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        skips.skip(BAD_SCHEMA, f"{stray}: image outside a class folder")
    return records


# ------------------------------------------------------------------------------------ shared
def _safe_path(record_id: str, taken: set[str]) -> str:
    """A unique relative file path (no extension) for `record_id`; '/' parts become sub-folders."""
    return safe_name(record_id, taken, keep_slashes=True)


def _one_line(caption: str) -> str:
    """Captions are stored one per line: inner line breaks become spaces."""
    return " ".join(caption.split())
