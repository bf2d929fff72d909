"""`vlbridge extract`: encode a dataset once with an image encoder into the feature cache.

Builds the encoder from its spec (`vlbridge.models.registry.build_encoder`), reads the dataset's
records, and calls `FeatureStore.get_or_extract`; prints where the features went and how
many were computed, reused and skipped. Under `torchrun` every rank encodes its share of the
chunks. The cache entries are the ones `vlbridge train limber` reads (same dataset naming,
same default cache folder), so extracting ahead of training is never wasted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlbridge.errors import UserError

GROUP = None

EMBEDDED = ("twemoji", "openclipart", "fashion-mnist", "animal-silhouettes")
DESCRIPTION = """\
Encode every image of a dataset split with an image encoder and keep the features on disk.
Features are keyed by the encoder (architecture + weights hash), its preprocessing, the
dataset, the split and the record ids: rerunning reuses them, any change recomputes them.
An interrupted extraction resumes from its finished chunks. Undecodable images are skipped
and counted.

Encoders: clip:PATH, clip-grid:PATH, timm:NAME@WEIGHTS, hf:DIR, efficientnet-lite0, ssl:DIR,
random:<spec>; append :grid for grid tokens, :<N>px for the input size of a convnet.
Datasets: shapes (the procedural shapes world, --n images), twemoji, openclipart,
fashion-mnist, animal-silhouettes, or a format spec read by vlbridge.data.formats.
"""
EPILOG = "example: vlbridge extract --encoder efficientnet-lite0:grid --dataset shapes --split train --n 2000"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="encode a dataset once into the feature cache",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--encoder", required=True, metavar="SPEC", help="image encoder spec (see above)")
    parser.add_argument("--dataset", required=True, metavar="DATASET", help="dataset name or format spec")
    parser.add_argument("--split", default="train", help="split to encode (default: train)")
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder (default: <VLBRIDGE_CACHE>/features)")
    parser.add_argument("--n", type=int, default=0, metavar="N", help="at most N records (shapes: how many to draw; default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (shapes world, embedded splits; default 0)")
    parser.add_argument("--image-size", type=int, default=64, metavar="PX", help="shapes-world image side (default 64)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="records per cache chunk / resume unit (default 1024)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    parser.set_defaults(func=run)


def load_image_records(dataset: str, split: str, n: int = 0, seed: int = 0, image_size: int = 64) -> list:
    """Records (with .id and .image) of a named dataset or format spec; at most `n` when n > 0."""
    if dataset == "shapes":
        from vlbridge.data.shapes import image_text_records

        records = image_text_records(n or 2000, split=split, seed=seed, image_size=image_size)
    elif dataset in EMBEDDED:
        records = _embedded_records(dataset, split, seed)
    else:
        records = _format_records(dataset, split)
    records = list(records)[:n] if n > 0 else list(records)
    if not records:
        raise UserError(f"dataset {dataset!r} has no records for split {split!r}")
    return records


def _embedded_records(dataset: str, split: str, seed: int) -> list:
    from vlbridge.data import embedded

    if dataset == "fashion-mnist":
        return embedded.fashion_mnist_records(split=split)
    readers = {
        "twemoji": embedded.twemoji_records,
        "openclipart": embedded.openclipart_records,
        "animal-silhouettes": embedded.animal_silhouette_records,
    }
    return readers[dataset](split=split, seed=seed)


def _format_records(spec: str, split: str) -> list:
    try:
        from vlbridge.data.formats import load_image_text
    except ImportError as err:
        raise UserError(
            f"unknown dataset {spec!r}: expected shapes, {', '.join(EMBEDDED)} or a format spec "
            f"(format specs need vlbridge.data.formats, not available here: {err})"
        ) from err
    records = list(load_image_text(spec))
    if any(getattr(record, "split", None) for record in records):
        records = [record for record in records if record.split == split]
    return records


def cache_dataset_name(dataset: str, seed: int, image_size: int) -> str:
    """The dataset name used in cache keys: the one `vlbridge train limber` uses (shapes carries
    its seed and image size, which change the images behind the same ids)."""
    from vlbridge.training.limber_data import dataset_cache_name

    return dataset_cache_name(dataset, seed, image_size)


def run(args: argparse.Namespace) -> int:
    from vlbridge.data.features import FeatureStore
    from vlbridge.models.registry import build_encoder
    from vlbridge.runtime import cleanup, init_distributed

    if args.batch_size < 1 or args.chunk_size < 1:
        raise UserError(f"--batch-size and --chunk-size must be >= 1, got {args.batch_size} and {args.chunk_size}")
    env = init_distributed(args.device)
    try:
        encoder = build_encoder(args.encoder, device=env.device)
        records = load_image_records(args.dataset, args.split, args.n, args.seed, args.image_size)
        store = FeatureStore(Path(args.cache) if args.cache else _default_cache(), chunk_size=args.chunk_size)
        name = cache_dataset_name(args.dataset, args.seed, args.image_size)
        result = store.extract(encoder, name, args.split, records, batch_size=args.batch_size, env=env)
    finally:
        cleanup(env)
    if env.is_main:
        stats = result.stats
        shape = "x".join(str(s) for s in next(iter(result.features.values())).shape) if result.features else "-"
        print(f"features of {encoder.encoder_id} ({shape} per image) for {args.dataset}/{args.split}: {stats.path}")
        print(f"{stats.total} images: {stats.computed} computed, {stats.reused} reused, {len(stats.skipped)} skipped (bad image)")
    return 0


def _default_cache() -> Path:
    from vlbridge.assets import cache_root

    return cache_root() / "features"
