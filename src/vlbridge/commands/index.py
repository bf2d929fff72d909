"""`vlbridge index`: build, grow, describe and query a CLIP search index over any dataset spec.

    vlbridge index build --clip runs/clip --from folder:photos --out runs/index
    vlbridge index add runs/index --from folder:photos          # only images not indexed yet
    vlbridge index info runs/index
    vlbridge index search runs/index "a red circle" -k 5

The index folder layout, the resumable build and the choice of exact / faiss search are
described in `vlbridge.api.search_index` and `vlbridge.api.index_build`; `vlbridge serve
--index DIR` serves it.
"""

from __future__ import annotations

import argparse

GROUP = "index"

KIND_HELP = "search kind: auto (exact below 50k images, faiss HNSW below 2M, IVF above), exact, hnsw, ivf"


def register(subparsers) -> None:
    build = subparsers.add_parser(
        "build", help="embed a dataset with a CLIP into a new search index",
        description="Embed every image of --from (any dataset spec: folder:, csv:, jsonl:, wds:, coco:, shapes, "
                    "twemoji, ...) with the CLIP's image tower and write a search index to --out. Resumable: "
                    "rerun the same command after an interruption.",
        epilog="Example: vlbridge index build --clip runs/clip --from folder:photos --out runs/index",
    )
    build.add_argument("--clip", required=True, help="the CLIP (a run dir or any file `load_clip` reads)")
    build.add_argument("--out", required=True, help="index folder (new, empty, or an unfinished build to resume)")
    _common(build)
    build.set_defaults(func=run_build)

    add = subparsers.add_parser("add", help="add the new images of a dataset to an index",
                                description="Embed the images of --from that the index does not hold yet and append them.")
    add.add_argument("index", help="index folder")
    _common(add)
    add.set_defaults(func=run_add)

    info = subparsers.add_parser("info", help="what an index holds")
    info.add_argument("index", help="index folder")
    info.set_defaults(func=run_info)

    search = subparsers.add_parser("search", help="the images of an index that best match a text")
    search.add_argument("index", help="index folder")
    search.add_argument("query", help="text to search for, e.g. 'a red circle'")
    search.add_argument("-k", type=int, default=5, help="results (default 5)")
    search.add_argument("--exact", action="store_true", help="exact search even when the index has a faiss index")
    search.set_defaults(func=run_search)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="SPEC", help="dataset spec, e.g. folder:photos")
    parser.add_argument("--kind", default=None, choices=["auto", "exact", "hnsw", "ivf"], help=KIND_HELP + " (default auto)")
    parser.add_argument("--part-size", type=int, default=50_000, metavar="N", help="records per part file (default 50000)")
    parser.add_argument("--feature-cache", metavar="DIR", help="feature cache folder (default: .features inside the index)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per encoder call (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto, ... (default cpu)")


def _print_report(report) -> None:
    skipped = sum(report.skipped.values())
    print(f"index {report.root}: {report.added} images added, {report.already} already there, {skipped} skipped; "
          f"{report.count} images, {report.kind} search")


def run_build(args) -> int:
    from vlbridge.api import ClipModel
    from vlbridge.api.index_build import build_index
    from vlbridge.runtime import resolve_device

    clip = ClipModel.from_pretrained(args.clip, device=resolve_device(args.device))
    _print_report(build_index(clip, args.source, args.out, args.kind or "auto", args.part_size, args.feature_cache,
                              args.batch_size))
    return 0


def run_add(args) -> int:
    from vlbridge.api import ClipModel, SearchIndex
    from vlbridge.api.index_build import add_to_index
    from vlbridge.runtime import resolve_device

    clip = ClipModel.from_pretrained(SearchIndex.open(args.index, use_faiss=False).info["clip"], device=resolve_device(args.device))
    _print_report(add_to_index(args.index, args.source, clip, args.kind, args.part_size, args.feature_cache, args.batch_size))
    return 0


def run_info(args) -> int:
    from vlbridge.api import SearchIndex

    index = SearchIndex.open(args.index)
    info = index.info
    print(f"{index.root}: {len(index)} images, {index.dim}-d, {index.kind} search {info.get('faiss') or ''}".rstrip())
    print(f"CLIP {info['clip']} ({info['encoder_id']})")
    for number, part in enumerate(info["parts"]):
        print(f"part {number}: {part['n']} images from {part['source']}")
    return 0


def run_search(args) -> int:
    from vlbridge.api import ClipModel, SearchIndex
    from vlbridge.lines import field

    index = SearchIndex.open(args.index)
    clip = ClipModel.from_pretrained(index.info["clip"])
    for hit in index.search(clip.embed_texts([args.query]), args.k, exact=args.exact)[0]:
        entry = index.entry(hit.id)
        print(f"{field(hit.id)}\t{hit.score:.4f}\t{field(entry['path'])}\t{field(entry['caption'])}")
    return 0
