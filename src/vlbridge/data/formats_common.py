"""Helpers shared by the dataset-format readers and writers (`vlbridge.data.formats*`).

- Skip reasons: the fixed words every reader passes to `SkipCounter.skip`, so counts from
  different formats add up ("missing image file", "empty caption", "malformed JSON", ...).
- Whole-file checks: `require_file` / `require_dir` / `read_json_file` raise one
  `BadInputError` naming the file and what was wrong (a bad FILE given on the command line).
- Per-sample checks: `clean_captions`, `decode_text`, `existing_image` return None after
  counting a skip, so a reader's loop stays `if value is None: continue`.
- `iter_decoded(records, skips)`: (record, RGB PIL image) for every record whose image
  decodes; the others are skipped and counted. Images stay lazy until a consumer calls it.
- `encoded_image(ref)`: the bytes and file extension to store an image with (original
  PNG / JPEG / WebP bytes are kept; anything else is re-encoded as PNG), validated by decoding.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from vlbridge import jsontext
from vlbridge.data.records import BadImage, ImageRef, SkipCounter, TarMember, open_image, to_rgb
from vlbridge.errors import BadInputError

# Skip reasons (the keys of SkipCounter.by_reason).
MISSING_IMAGE = "missing image file"
BAD_IMAGE = "undecodable image"
MISSING_TEXT = "missing caption file"
EMPTY_CAPTION = "empty caption"
NOT_UTF8 = "non-UTF-8 text"
BAD_JSON = "malformed JSON"
BAD_SCHEMA = "wrong schema"
BAD_SHARD = "unreadable shard data"
UNKNOWN_IMAGE = "annotation of unknown image"
NO_ANSWERS = "question without answers"
NO_LABEL = "no label"
SAME_STEM = "image with the same name as another"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")  # files read as images
KEPT_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}  # stored as-is by writers


def require_file(path: str | Path, what: str) -> Path:
    """`path` as a Path if it is an existing file, else BadInputError naming it."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{what} {path}: expected a file, got a directory")
    if not path.is_file():
        raise BadInputError(f"{what} {path}: no such file")
    return path


def require_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path if it is an existing directory, else BadInputError naming it."""
    path = Path(path)
    if not path.is_dir():
        got = "a file" if path.exists() else "no such directory"
        raise BadInputError(f"{what} {path}: expected a directory, got {got}")
    return path


def read_json_file(path: str | Path, what: str) -> object:
    """Parse the JSON file `path`; BadInputError naming it if it is missing, not UTF-8 or not JSON."""
    path = require_file(path, what)
    try:
        return jsontext.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise BadInputError(f"{what} {path}: expected UTF-8 JSON, got undecodable bytes at {err.start}") from err
    except json.JSONDecodeError as err:
        raise BadInputError(f"{what} {path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err


def require_keys(document: object, keys: tuple[str, ...], path: Path, what: str) -> dict:
    """`document` if it is a JSON object holding list values under `keys`, else BadInputError."""
    if not isinstance(document, dict):
        raise BadInputError(f"{what} {path}: expected a JSON object with {list(keys)}, got a {type(document).__name__}")
    for key in keys:
        if not isinstance(document.get(key), list):
            got = "no such key" if key not in document else type(document[key]).__name__
            raise BadInputError(f"{what} {path}: expected a list under {key!r}, got {got} (keys: {sorted(document)[:8]})")
    return document


def decode_text(data: bytes, skips: SkipCounter, where: str) -> str | None:
    """`data` as UTF-8 text (a leading BOM dropped), or None after counting NOT_UTF8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        skips.skip(NOT_UTF8, where)
        return None


def clean_captions(raw: object, skips: SkipCounter, where: str) -> list[str] | None:
    """Stripped non-empty captions from a str or list of str; None after counting a skip.

    Wrong types count BAD_SCHEMA; no non-empty caption counts EMPTY_CAPTION.
    """
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(caption, str) for caption in raw):
        skips.skip(BAD_SCHEMA, f"{where}: captions must be a string or a list of strings, got {raw!r:.60}")
        return None
    captions = [caption.strip() for caption in raw if caption.strip()]
    if not captions:
        skips.skip(EMPTY_CAPTION, where)
        return None
    return captions


def existing_image(path: Path, skips: SkipCounter, where: str) -> Path | None:
    """`path` if the image file exists, else None after counting MISSING_IMAGE."""
    if path.is_file():
        return path
    skips.skip(MISSING_IMAGE, f"{where}: {path}")
    return None


def optional_str(entry: dict, key: str) -> str | None:
    """entry[key] as a string (numbers converted), None if absent or null; ValueError for other types."""
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{key} must be a string, got {type(value).__name__}")


def record_key(record) -> str:
    """The id a record is reported under (ImageTextRecord.id or VQARecord.question_id)."""
    return str(getattr(record, "id", None) or getattr(record, "question_id", "?"))


def iter_decoded(records: Iterable, skips: SkipCounter | None = None) -> Iterator[tuple[object, Image.Image]]:
    """(record, RGB image) for each record whose image decodes; the others are counted in `skips`."""
    skips = skips if skips is not None else SkipCounter("images")
    for record in records:
        try:
            yield record, open_image(record.image)
        except BadImage as err:
            missing = isinstance(err.__cause__, FileNotFoundError)
            skips.skip(MISSING_IMAGE if missing else BAD_IMAGE, f"{record_key(record)}: {err}")


def encoded_image(ref: ImageRef) -> tuple[bytes, str]:
    """(bytes, extension) to store `ref` with; raises BadImage if it does not decode.

    PNG / JPEG / WebP files and bytes are kept byte for byte (no re-compression);
    other formats and in-memory images are written as PNG of their RGB pixels.
    """
    if isinstance(ref, Image.Image):
        return _png_bytes(to_rgb(ref)), "png"
    if isinstance(ref, (bytes, bytearray)):
        data = bytes(ref)
    elif isinstance(ref, TarMember):
        data = ref.read_bytes()  # a lazily read shard member: its bytes, kept as they are
    else:
        try:
            data = Path(ref).read_bytes()
        except FileNotFoundError as err:
            raise BadImage(f"missing image file {ref}") from err
        except OSError as err:
            raise BadImage(f"cannot read image file {ref}: {err}") from err
    image = open_image(data)  # validates: raises BadImage for corrupt or truncated data
    source_format = Image.open(io.BytesIO(data)).format
    if source_format in KEPT_FORMATS:
        return data, KEPT_FORMATS[source_format]
    return _png_bytes(image), "png"


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


_UNSAFE = re.compile(r"[^\w\-]+")  # \w is Unicode-aware: non-ASCII letters and digits stay in file names


def safe_name(record_id: str, taken: set[str], keep_slashes: bool = False) -> str:
    """A file-name-safe, unique version of `record_id` (added to `taken`).

    Characters other than letters and digits (any script), '_' and '-' become '_'; with `keep_slashes`
    the '/'-separated parts are kept as sub-folders ('.'/'..' parts dropped).
    """
    parts = record_id.split("/") if keep_slashes else [record_id]
    cleaned = [_UNSAFE.sub("_", part).strip("_") for part in parts if part not in ("", ".", "..")]
    name = "/".join(part for part in cleaned if part) or "sample"
    unique, number = name, 1
    while unique.lower() in taken:
        number += 1
        unique = f"{name}_{number}"
    taken.add(unique.lower())
    return unique
