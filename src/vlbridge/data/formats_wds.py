"""Webdataset tar shards (the img2dataset output format): streamed reading and sharded writing.

Reading, with the `webdataset` library:

    stream = wds_records("shards/{000000..000009}.tar")   # or a directory of *.tar files
    for record in stream: ...                              # ImageTextRecord, image = TarMember / bytes
    torch.utils.data.DataLoader(stream, batch_size=None, num_workers=4)   # shards dealt to workers

The stream is an `IterableDataset`; every `iter()` is a fresh pass over the shards. Shards are
split across DataLoader workers always, and across torch.distributed ranks (RANK/WORLD_SIZE)
only with `by_rank=True` (the CLIP trainer deals records to ranks itself, so by default every
rank sees every shard). A sample is one `__key__` with an image member (jpg / png / jpeg / webp)
and its text: `json` ({"captions": [...]} or {"caption": "..."}, optional id / label / split /
domain) or else `txt` (one caption). Samples without an image or caption, with non-UTF-8 text or
malformed JSON are skipped and counted in the `SkipCounter`; a truncated or corrupt shard is
counted once, the samples before the break are kept and the one being read is dropped (inside
DataLoader workers each worker counts its own). Missing local shard files raise one
`BadInputError` before streaming starts.

Local uncompressed shards are read lazily: the image member of a record is a `TarMember` (file,
offset, size) that `open_image` reads when the image is decoded, so a list of every record of a
CC3M-sized dataset holds ids and captions but no image bytes; text members are read as usual.
A member cut short by a truncated shard ends the shard as a break does (below). Remote or
compressed shards give the image bytes, as webdataset reads them.

Writing: `write_wds(records, OUT, encode, shard_size)` writes OUT/000000.tar, OUT/000001.tar...
with `webdataset.ShardWriter`; each sample holds `__key__` (the id made file-name safe),
the image (`png` / `jpg` / `webp`, original bytes kept), `txt` (first caption) and `json`
(id, all captions, label, split, domain), so `wds_records` gives the records back exactly.
"""

from __future__ import annotations

import functools
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import webdataset as wds

from vlbridge import jsontext
from vlbridge.data.formats_common import (
    BAD_JSON,
    BAD_SCHEMA,
    BAD_SHARD,
    MISSING_IMAGE,
    MISSING_TEXT,
    clean_captions,
    decode_text,
    optional_str,
    safe_name,
)
from vlbridge.data.records import ImageTextRecord, SkipCounter, TarMember
from vlbridge.errors import BadInputError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "png", "jpeg", "webp")  # sample members read as the image, first found wins
SHARD_NAME = "%06d.tar"  # ShardWriter file pattern inside the output directory
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://")  # shard URLs not checked on disk


def shard_urls(pattern: str) -> list[str]:
    """The shard list of a brace pattern or a directory; BadInputError naming missing local shards."""
    if Path(pattern).is_dir():
        urls = [str(path) for path in sorted(Path(pattern).glob("*.tar"))]
        if not urls:
            raise BadInputError(f"webdataset directory {pattern}: expected *.tar shards, found none")
        return urls
    try:
        urls = wds.shardlists.expand_urls(pattern)
    except ValueError as err:  # braceexpand's UnbalancedBracesError is a ValueError
        raise BadInputError(f"webdataset pattern {pattern}: not a valid brace pattern ({err}); "
                            "expected e.g. shards/{000000..000009}.tar") from err
    local = [url for url in urls if not url.startswith(REMOTE_PREFIXES)]
    missing = [url for url in local if not Path(url).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise BadInputError(f"webdataset pattern {pattern}: {len(missing)} of {len(urls)} shards missing: {shown}")
    return urls


class CountShardErrors:
    """webdataset exception handler: counts shards that cannot be opened and keeps going (picklable)."""

    def __init__(self, skips: SkipCounter):
        self.skips = skips  # where the errors are counted

    def __call__(self, error: Exception) -> bool:
        self.skips.skip(BAD_SHARD, _first_line(error))
        return True  # continue with the next shard


def _first_line(error: Exception) -> str:
    text = str(error)
    return text.splitlines()[0][:200] if text else type(error).__name__


def wds_records(pattern: str, skips: SkipCounter | None = None, by_rank: bool = False) -> wds.DataPipeline:
    """A re-iterable stream of ImageTextRecords from the shards of `pattern` (see the module docstring)."""
    urls = shard_urls(pattern)
    skips = skips if skips is not None else SkipCounter(f"wds:{pattern}")
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_node if by_rank else _every_shard,
        wds.split_by_worker,
        functools.partial(_shard_members, skips=skips),
        _group_members,
        functools.partial(_records_from_samples, skips=skips),
    )


def _every_shard(shards: Iterable[dict]) -> Iterator[dict]:
    """Node splitter that keeps every shard on every rank."""
    yield from shards


class _LastAnnounced:
    """tar_file_iterator's select_files hook: remembers the member whose data is being read."""

    def __init__(self):
        self.name = ""  # file name of the last member header read

    def __call__(self, name: str) -> bool:
        self.name = name
        return True  # read every member


def _shard_members(shards: Iterable[dict], skips: SkipCounter) -> Iterator[dict]:
    """{fname, data, __url__} per tar member, then {} at the end of each shard.

    A shard that breaks off (truncated or corrupt tar) is counted and ends with
    {"__broken__": url, "fname": the member being read}, so that the sample it belongs to
    is dropped instead of being passed on with some of its members missing.
    """
    for shard in _local_or_opened(shards, skips):
        if "members" in shard:  # a local uncompressed tar: images referenced, not read
            yield from _lazy_members(shard["url"], skips)
            continue
        url, announced = shard["url"], _LastAnnounced()
        try:
            for member in wds.tariterators.tar_file_iterator(shard["stream"], select_files=announced):
                yield {**member, "__url__": url}
            yield {}
        except Exception as error:  # tarfile.ReadError, EOFError, zlib errors, OSError ...
            skips.skip(BAD_SHARD, f"{url}: {_first_line(error)}")
            yield {"__broken__": url, "fname": announced.name}
        finally:
            shard["stream"].close()


def _local_or_opened(shards: Iterable[dict], skips: SkipCounter) -> Iterator[dict]:
    """{url, members: True} for local *.tar files, else webdataset's opened {url, stream}."""
    for shard in shards:
        url = shard["url"]
        if url.endswith(".tar") and not url.startswith(REMOTE_PREFIXES) and Path(url).is_file():
            yield {"url": url, "members": True}
        else:
            yield from wds.tariterators.url_opener([shard], handler=CountShardErrors(skips))


def _lazy_members(url: str, skips: SkipCounter) -> Iterator[dict]:
    """Like _shard_members for one local tar, with every image member a TarMember (headers read only)."""
    size, name = Path(url).stat().st_size, ""
    try:
        with tarfile.open(url, mode="r:") as tar:
            for info in tar:
                name = info.name
                if not info.isfile():
                    continue
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"unexpected end of data in {info.name}")
                ext = (wds.tariterators.base_plus_ext(info.name)[1] or "").lower()
                data = TarMember(url, info.offset_data, info.size) if ext in IMAGE_KEYS else tar.extractfile(info).read()
                yield {"fname": info.name, "data": data, "__url__": url}
            _check_tar_end(tar, url, size)
        yield {}
    except Exception as error:  # tarfile.ReadError, EOFError, OSError ...
        skips.skip(BAD_SHARD, f"{url}: {_first_line(error)}")
        yield {"__broken__": url, "fname": name}


def _check_tar_end(tar: tarfile.TarFile, url: str, size: int) -> None:
    """tarfile stops quietly at a header cut short: anything but zero padding after the last member is a break."""
    with open(url, "rb") as handle:
        handle.seek(tar.offset)
        rest = handle.read(size - tar.offset)
    if rest.strip(b"\0"):
        raise tarfile.ReadError("unexpected end of data (truncated header)")


def _group_members(members: Iterable[dict]) -> Iterator[dict]:
    """Consecutive members with the same key -> one sample {__key__, __url__, ext: bytes, ...}.

    At a shard break the sample in progress is kept only if the broken member starts a new key.
    """
    current: dict | None = None
    for member in members:
        if not member or "__broken__" in member:
            broken_key = wds.tariterators.base_plus_ext(member["fname"])[0] if member else None
            if current is not None and (not member or (broken_key and broken_key != current["__key__"])):
                yield current
            current = None
            continue
        key, ext = wds.tariterators.base_plus_ext(member["fname"])
        if key is None:
            continue
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": member["__url__"]}
        current[ext.lower()] = member["data"]
    if current is not None:
        yield current


def _records_from_samples(samples: Iterable[dict], skips: SkipCounter) -> Iterator[ImageTextRecord]:
    for sample in samples:
        record = sample_to_record(sample, skips)
        if record is not None:
            yield record
    if skips.total:
        log.info("%s", skips.summary())


def sample_to_record(sample: dict, skips: SkipCounter) -> ImageTextRecord | None:
    """The record of one webdataset sample, or None after counting why it is unusable."""
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '?')}:{key}"
    image = next((sample[name] for name in IMAGE_KEYS if name in sample), None)
    if image is None:
        skips.skip(MISSING_IMAGE, f"{where}: no {'/'.join(IMAGE_KEYS)} member")
        return None
    meta = _sample_meta(sample, skips, where)
    if meta is None:
        return None
    raw_captions = meta.get("captions", meta.get("caption"))
    if raw_captions is None and "txt" in sample:
        raw_captions = decode_text(sample["txt"], skips, where)
        if raw_captions is None:
            return None
    if raw_captions is None:
        skips.skip(MISSING_TEXT, f"{where}: no txt member and no captions in json")
        return None
    captions = clean_captions(raw_captions, skips, where)
    if captions is None:
        return None
    try:
        record_id = optional_str(meta, "id") or key
        extras = {name: optional_str(meta, name) for name in ("label", "split", "domain")}
    except ValueError as err:
        skips.skip(BAD_SCHEMA, f"{where}: {err}")
        return None
    return ImageTextRecord(record_id, image, captions, **extras)


def _sample_meta(sample: dict, skips: SkipCounter, where: str) -> dict | None:
    """The sample's json member as a dict ({} if absent), or None after counting a skip."""
    if "json" not in sample:
        return {}
    text = decode_text(sample["json"], skips, where)
    if text is None:
        return None
    try:
        meta = jsontext.loads(text)
    except json.JSONDecodeError as err:
        skips.skip(BAD_JSON, f"{where}: {err.msg}")
        return None
    if not isinstance(meta, dict):
        skips.skip(BAD_SCHEMA, f"{where}: json member must be an object, got {type(meta).__name__}")
        return None
    return meta


def write_wds(records: Iterable[ImageTextRecord], out: Path, encode, shard_size: int) -> Iterator[ImageTextRecord]:
    """Write records into OUT/000000.tar, ... (`shard_size` samples each); yields each record written."""
    if shard_size < 1:
        raise BadInputError(f"--shard-size must be at least 1 sample per shard, got {shard_size}")
    taken: set[str] = set()
    writer = wds.ShardWriter(str(out / SHARD_NAME), maxcount=shard_size, verbose=0, mtime=0.0)
    try:
        for record, data, ext in encode(records):
            meta = {"id": record.id, "captions": list(record.captions), "label": record.label,
                    "split": record.split, "domain": record.domain}
            writer.write({
                "__key__": safe_name(record.id, taken),
                ext: data,
                "txt": record.captions[0] if record.captions else "",
                "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
            })
            yield record
    finally:
        writer.close()


def written_pattern(out: Path) -> str:
    """The brace pattern that reads back every shard `write_wds` left in `out`."""
    shards = sorted(out.glob("*.tar"))
    if len(shards) == 1:
        return str(shards[0])
    return str(out / f"{{{shards[0].stem}..{shards[-1].stem}}}.tar")
