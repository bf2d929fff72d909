"""`vlbridge extract`: encode a dataset once with an image encoder into the feature cache.

Builds the encoder from its spec (`vlbridge.models.registry.build_encoder`), reads the dataset's
records through the one resolver (`vlbridge.data.datasets.load_dataset`), and calls `FeatureStore.get_or_extract`; prints where the features went and how
many were computed, reused and skipped. Under `torchrun` every rank encodes its share of the
chunks. The cache entries are the ones `vlbridge train limber` reads (same dataset naming,
same default cache folder), so extracting ahead of training is never wasted. Features are never
loaded back (memory: one chunk, whatever the dataset's size); chunks already on disk are
checked against their checksums and recomputed when damaged. Each rank decodes and preprocesses
its images in `--workers` DataLoader worker processes while its encoder runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlbridge.errors import UserError

GROUP = None

DESCRIPTION = """\
Encode every image of a dataset split with an image encoder and keep the features on disk.
Features are keyed by the encoder (architecture + weights hash), its preprocessing, the
dataset, the split and the record ids: rerunning reuses them, any change recomputes them.
An interrupted extraction resumes from its finished chunks. Undecodable images are skipped
and counted.

Encoders: clip:PATH, clip-grid:PATH, timm:NAME@WEIGHTS, hf:DIR, efficientnet-lite0, ssl:DIR,
random:<spec>; append :grid for grid tokens, :<N>px for the input size of a convnet.
Datasets: any dataset spec - shapes (the procedural shapes world; --n images, default 2080
for train, 520 for val and test), twemoji, openclipart, fashion-mnist, animal-silhouettes,
jsonl:FILE, wds:PATTERN, coco:JSON?images=DIR, ... (options: split=, n=, first=, seed=).
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
    parser.add_argument("--split", default="train", help="split to encode (default: train; data without splits: all)")
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder (default: <VLBRIDGE_CACHE>/features)")
    parser.add_argument("--n", type=int, metavar="N", help="N records, a seeded subset (shapes: how many to draw; default: all / 2080)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (shapes world, embedded splits; default 0)")
    parser.add_argument("--image-size", type=int, default=64, metavar="PX", help="shapes-world image side (default 64)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="records per cache chunk / resume unit (default 1024)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes per rank that decode and preprocess images while the encoder runs "
                             "(default on a GPU: this rank's share of the CPU cores less one, at most 4; "
                             "on a CPU: 0, decode in the main process)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    parser.set_defaults(func=run)


def load_image_records(dataset: str, split: str, n: int | None = None, seed: int = 0, image_size: int = 64) -> list:
    """Records (with .id and .image) of dataset spec `dataset`, through the one resolver."""
    from vlbridge.data import datasets

    data = datasets.load_dataset(dataset, "image_text", split=split, n=n, seed=seed, image_size=image_size)
    return data.record_list()


def cache_dataset_name(dataset: str, seed: int, image_size: int) -> str:
    """The dataset name used in cache keys: the one `vlbridge train limber` uses (shapes carries
    its seed and image size, which change the images behind the same ids)."""
    from vlbridge.training.limber_data import dataset_cache_name

    return dataset_cache_name(dataset, seed, image_size)


MAX_DEFAULT_WORKERS = 4  # decoding workers per rank unless --workers says otherwise


def default_workers(world_size: int, device_type: str, cpus: int | None = None) -> int:
    """Decoding workers per rank: on a GPU, the cores this machine's ranks share, less one for each
    rank's own process, at most MAX_DEFAULT_WORKERS (0 when a rank has a single core). On a CPU 0:
    the encoder already uses the cores (docs/BENCHMARKS.md measured workers 3-13 % slower there)."""
    import os

    if device_type == "cpu":
        return 0
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))  # ranks on this machine
    return max(0, min(MAX_DEFAULT_WORKERS, cpus // max(1, local) - 1))


def run(args: argparse.Namespace) -> int:
    from vlbridge.data.features import FeatureStore, default_feature_root
    from vlbridge.io import check_writable_dir
    from vlbridge.models.registry import build_encoder
    from vlbridge.runtime import cleanup, init_distributed

    if args.batch_size < 1 or args.chunk_size < 1:
        raise UserError(f"--batch-size and --chunk-size must be >= 1, got {args.batch_size} and {args.chunk_size}")
    cache = check_writable_dir(Path(args.cache) if args.cache else default_feature_root(), "--cache")
    env = init_distributed(args.device)
    try:
        encoder = build_encoder(args.encoder, device=env.device)
        records = load_image_records(args.dataset, args.split, args.n, args.seed, args.image_size)
        workers = default_workers(env.world_size, env.device.type) if args.workers is None else args.workers
        store = FeatureStore(cache, chunk_size=args.chunk_size, workers=workers)
        name = cache_dataset_name(args.dataset, args.seed, args.image_size)
        result = store.extract(encoder, name, args.split, records, batch_size=args.batch_size, env=env, load=False)
    finally:
        cleanup(env)
    if env.is_main:
        stats = result.stats
        shape = "x".join(str(s) for s in result.stored.feature_shape) if result.stored.ids else "-"
        print(f"features of {encoder.encoder_id} ({shape} per image) for {args.dataset}/{args.split}: {stats.path}")
        print(f"{stats.total} images: {stats.computed} computed, {stats.reused} reused, {len(stats.skipped)} skipped (bad image)")
    return 0
