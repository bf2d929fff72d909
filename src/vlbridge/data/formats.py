"""Dataset formats: what the readers take (re-exported from the resolver) and `export_records`.

Reading goes through the one resolver, `vlbridge.data.datasets.load_dataset`; the spec grammar
(`folder:`, `csv:`, `jsonl:`, `wds:`, `coco:`, `nocaps:`, `vqav2:`, `imagefolder:`, `shapes`, the
embedded names, and the split= / n= / first= / seed= options) is documented in
`vlbridge.data.specs`. This module keeps the names most callers import:

    load_image_text(spec, skips)     -> list[ImageTextRecord] (wds: a re-iterable stream)
    load_vqa(spec, skips)            -> list[VQARecord]        (vqav2:, jsonl: of VQA lines, shapes)
    load_classification(spec, skips) -> list[ImageTextRecord] with .label set
    export_records(records, out, format) writes wds / jsonl / folder / csv that read back equal.

Bad samples are skipped and counted in `skips` (a `SkipCounter`; one is made and its summary
logged when none is given); a bad file or spec raises one `UserError`. Images stay lazy: use
`iter_decoded(records, skips)` to decode them with undecodable ones skipped and counted.
Readers live in formats_simple (folder, CSV, JSONL, ImageFolder), formats_coco (COCO,
NoCaps, VQAv2) and formats_wds (webdataset).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vlbridge.data import formats_simple, formats_wds
from vlbridge.data.datasets import load_classification, load_image_text, load_vqa
from vlbridge.data.export_formats import EXPORT_FORMATS
from vlbridge.data.formats_common import BAD_IMAGE, EMPTY_CAPTION, MISSING_IMAGE, NOT_UTF8, encoded_image, iter_decoded
from vlbridge.data.query_filter import FilterReport, filter_by_query_words
from vlbridge.data.records import BadImage, ImageTextRecord, SkipCounter
from vlbridge.data.specs import SCHEMES, DataSpec, parse_spec
from vlbridge.errors import UserError
from vlbridge.io import TMP_SUFFIX

__all__ = [
    "EXPORT_FORMATS", "SCHEMES", "DataSpec", "ExportSummary", "FilterReport", "export_records",
    "filter_by_query_words", "iter_decoded", "load_classification", "load_image_text", "load_vqa", "parse_spec",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ export
@dataclass
class ExportSummary:
    """What export_records wrote."""

    out: Path  # the output directory
    format: str  # one of EXPORT_FORMATS
    written: int  # records written
    read_back: str  # the spec that reads the export back
    skips: SkipCounter  # records left out (undecodable image, empty caption, ...)


def export_records(
    records: Iterable[ImageTextRecord],
    out: str | Path,
    format: str,
    shard_size: int = 1000,
    skips: SkipCounter | None = None,
    progress: bool = True,
) -> ExportSummary:
    """Write `records` as `format` under the new or empty directory `out`; images are validated.

    wds: OUT/000000.tar... (`shard_size` samples each); jsonl: OUT/captions.jsonl + OUT/images/;
    folder: OUT/<id>.<ext> + OUT/<id>.txt; csv: OUT/data.csv + OUT/images/.
    """
    if format not in EXPORT_FORMATS:
        raise UserError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    if format == "wds" and (not isinstance(shard_size, int) or shard_size < 1):
        raise UserError(f"shard size must be at least 1 sample per shard, got {shard_size!r}")
    out = _empty_out_dir(Path(out))
    skips = skips if skips is not None else SkipCounter("export")
    encode = _encoder(skips)
    with _staged_dir(out) as staging:  # `out` receives the export whole, or stays as it was
        if format == "wds":
            written_records = formats_wds.write_wds(records, staging, encode, shard_size)
        else:
            simple_writers = {"jsonl": formats_simple.write_jsonl, "folder": formats_simple.write_folder,
                              "csv": formats_simple.write_csv}
            written_records = simple_writers[format](records, staging, encode)
        bar = tqdm(written_records, desc=f"export {format}", unit="rec", disable=None if progress else True)
        written = sum(1 for _ in bar)
    return ExportSummary(out, format, written, read_back_spec(out, format), skips)


@contextlib.contextmanager
def _staged_dir(out: Path) -> Iterator[Path]:
    """A hidden folder beside the new or empty `out`, renamed onto it when the block succeeds and
    removed when it fails, so an export that stops half-way leaves no half-written output."""
    staging = out.with_name(f".{out.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    staging.mkdir()
    try:
        yield staging
        out.rmdir()  # empty: checked by _empty_out_dir
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        out.mkdir(exist_ok=True)
        raise


def read_back_spec(out: Path, format: str) -> str:
    """The spec that reads what export_records wrote to `out` as `format`."""
    if format == "wds":
        return f"wds:{formats_wds.written_pattern(out)}"
    specs = {"jsonl": f"jsonl:{out / 'captions.jsonl'}", "folder": f"folder:{out}", "csv": f"csv:{out / 'data.csv'}"}
    return specs[format]


def _empty_out_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not a directory" if not out.is_dir() else "is not empty"
        raise UserError(f"output {out} {what}; expected a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


Encoded = Iterator[tuple[ImageTextRecord, bytes, str]]  # (record, image bytes, file extension)


def _encoder(skips: SkipCounter) -> Callable[[Iterable[ImageTextRecord]], Encoded]:
    """records -> (record, image bytes, extension); captionless or undecodable records are counted."""

    def encode(records: Iterable[ImageTextRecord]) -> Encoded:
        for record in records:
            if not _utf8_text(record):  # a lone surrogate cannot be written as UTF-8 in any format
                skips.skip(NOT_UTF8, f"{record.id!r}: id or caption is not valid Unicode text (a lone surrogate)")
                continue
            captions = [caption.strip() for caption in record.captions if caption.strip()]
            if not captions:
                skips.skip(EMPTY_CAPTION, record.id)
                continue
            try:
                data, ext = encoded_image(record.image)
            except BadImage as err:
                missing = isinstance(err.__cause__, FileNotFoundError)
                skips.skip(MISSING_IMAGE if missing else BAD_IMAGE, f"{record.id}: {err}")
                continue
            yield (record if captions == record.captions else _with_captions(record, captions)), data, ext

    return encode


def _utf8_text(record: ImageTextRecord) -> bool:
    """Whether the record's id and captions encode as UTF-8 (no lone surrogates)."""
    try:
        for text in [str(record.id), *record.captions]:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _with_captions(record: ImageTextRecord, captions: list[str]) -> ImageTextRecord:
    return ImageTextRecord(record.id, record.image, captions, record.label, record.split, record.domain)
