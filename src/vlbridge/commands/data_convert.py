"""`vlbridge data export` and `vlbridge data filter`: convert datasets, and build a CLIP-style
query-word-filtered training set.

Both read any dataset spec (`vlbridge.data.specs`: folders, CSV, JSONL, webdataset shards, COCO,
NoCaps, ImageFolder, shapes, embedded datasets) through `vlbridge.data.datasets` and write wds / jsonl / folder / csv with
`formats.export_records`. Bad samples are skipped; their count is printed at the end.
`filter` keeps the pairs whose caption holds one of the corpus's M most frequent words
(`vlbridge.data.query_filter`) and also writes OUT/query_words.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from vlbridge.data.export_formats import EXPORT_FORMATS  # torch-free, for --help; readers and writers load in run_*

if TYPE_CHECKING:
    from vlbridge.data.records import ImageTextRecord

GROUP = "data"

SPEC_HELP = """\
dataset specs (--from):
  folder:DIR                 image + same-name .txt (one caption per line)
  csv:FILE[?image=col&caption=col&sep=\\t]
  jsonl:FILE                 {"id", "image", "captions"|"caption", "label", "split", "domain"} lines
  wds:PATTERN                webdataset shards, e.g. wds:shards/{000000..000009}.tar, or a directory
  coco:JSON[?images=DIR&karpathy=FILE&split=test]
  nocaps:JSON?images=DIR     imagefolder:DIR
  shapes[?shift=..&domain=..&image_size=..&max_objects=..]   (shapes-shift:<shift> = shapes?shift=<shift>)
  twemoji  openclipart  fashion-mnist  animal-silhouettes
every spec also takes split=S, n=N (a seeded subset; shapes: images drawn, default 2080 train,
520 val / test), first=N (the first records as stored) and seed=S
"""

EXPORT_DESCRIPTION = """\
Read a dataset and write it in another format. Reading the output back gives the same ids,
captions, labels, splits, domains and pixels (an image-text folder keeps ids and captions only).
Images are decoded once to check them; PNG / JPEG / WebP files are copied byte for byte.
Undecodable images, empty captions and other bad samples are skipped and counted.

  wds     OUT/000000.tar, ... (--shard-size samples each): png|jpg|webp, txt, json per sample
  jsonl   OUT/captions.jsonl + OUT/images/
  folder  OUT/<id>.<ext> + OUT/<id>.txt
  csv     OUT/data.csv (id, filepath, caption, label, split, domain; one row per caption) + OUT/images/
"""

FILTER_DESCRIPTION = """\
CLIP's dataset recipe: count lower-cased alphabetic words (a small stop-word list left out)
over all captions, take the --top-m most frequent as query words (ties alphabetical), and keep
the (image, caption) pairs whose caption contains one. Images with no such caption are dropped.
Writes the kept pairs in --format and OUT/query_words.json (the words, their counts, and the
kept / dropped counts). Webdataset sources are streamed twice (count, then select).
"""

SHOWN_WORDS = 30  # query words printed; all of them go to query_words.json


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="convert a dataset to webdataset shards, JSONL, an image-text folder or CSV",
        description=EXPORT_DESCRIPTION,
        epilog=SPEC_HELP + "\nexample: vlbridge data export --from jsonl:data/shapes/captions.jsonl --format wds "
        "--out shards --shard-size 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_io_arguments(export, format_required=True)
    export.set_defaults(func=run_export)
    filtering = subparsers.add_parser(
        "filter",
        help="keep pairs whose caption holds one of the M most frequent words (CLIP's query recipe)",
        description=FILTER_DESCRIPTION,
        epilog=SPEC_HELP + "\nexample: vlbridge data filter --from wds:shards --top-m 200 --out filtered --format wds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_io_arguments(filtering, format_required=False)
    filtering.add_argument("--top-m", type=int, required=True, metavar="M", help="number of query words")
    filtering.set_defaults(func=run_filter)


def _add_io_arguments(parser: argparse.ArgumentParser, format_required: bool) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="SPEC", help="dataset to read (see below)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    parser.add_argument(
        "--format", choices=EXPORT_FORMATS, required=format_required, default=None if format_required else "jsonl",
        help="output format" + ("" if format_required else " (default: jsonl)"),
    )
    parser.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per wds shard (default 1000)")


def run_export(args: argparse.Namespace) -> int:
    from vlbridge.data.formats import export_records, load_image_text
    from vlbridge.data.records import SkipCounter

    skips = SkipCounter("export")
    records = load_image_text(args.source, skips)
    summary = export_records(records, args.out, args.format, args.shard_size, skips)
    print(f"exported {summary.written} records to {summary.out} as {summary.format}; read back with {summary.read_back}")
    print(skips.summary())
    return 0


def run_filter(args: argparse.Namespace) -> int:
    from vlbridge.data.formats import export_records, load_image_text
    from vlbridge.data.query_filter import count_words, filter_by_query_words, top_query_words
    from vlbridge.data.records import SkipCounter

    skips = SkipCounter("filter")
    source = load_image_text(args.source, skips)
    tally = {"kept": 0, "dropped": 0, "kept_pairs": 0, "dropped_pairs": 0}
    if isinstance(source, list):
        report = filter_by_query_words(source, args.top_m)
        words, counts, kept = report.query_words, report.word_counts, report.kept
        tally.update(kept=len(report.kept), dropped=len(report.dropped), kept_pairs=report.kept_pairs,
                     dropped_pairs=report.dropped_pairs)
    else:  # a stream: one pass to count words, a second to select
        all_counts = count_words(load_image_text(args.source, SkipCounter("filter (counting pass)")))
        words = top_query_words(all_counts, args.top_m)
        counts = {word: all_counts[word] for word in words}
        kept = _select_stream(source, frozenset(words), tally)
    summary = export_records(kept, args.out, args.format, args.shard_size, skips)
    (summary.out / "query_words.json").write_text(json.dumps(
        {"source": args.source, "top_m": args.top_m, **tally,
         "query_words": [{"word": word, "count": counts[word]} for word in words]}, indent=2) + "\n", encoding="utf-8")
    total = tally["kept"] + tally["dropped"]
    print(f"kept {tally['kept']} of {total} records ({tally['kept_pairs']} pairs kept, {tally['dropped_pairs']} "
          f"dropped) whose captions contain one of {len(words)} query words")
    shown = ", ".join(f"{word} ({counts[word]})" for word in words[:SHOWN_WORDS])
    more = f", ... ({len(words) - SHOWN_WORDS} more)" if len(words) > SHOWN_WORDS else ""
    print(f"query words: {shown}{more}")
    print(f"wrote {summary.written} records to {summary.out} as {summary.format} (query_words.json beside them); "
          f"read back with {summary.read_back}")
    print(skips.summary())
    return 0


def _select_stream(
    records: Iterable[ImageTextRecord], query_words: frozenset[str], tally: dict[str, int]
) -> Iterator[ImageTextRecord]:
    """The matching pairs of a stream, counting kept / dropped records and pairs in `tally`."""
    from vlbridge.data.query_filter import select_pairs

    for record in records:
        selected = select_pairs(record, query_words)
        if selected is None:
            tally["dropped"] += 1
            tally["dropped_pairs"] += len(record.captions)
            continue
        tally["kept"] += 1
        tally["kept_pairs"] += len(selected.captions)
        tally["dropped_pairs"] += len(record.captions) - len(selected.captions)
        yield selected
