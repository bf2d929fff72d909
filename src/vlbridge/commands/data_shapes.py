"""`vlbridge data shapes`: write a seeded procedural shapes-world dataset to a directory.

Calls `vlbridge.data.shapes.write_dataset` and prints a one-line summary. The output
(images/*.png, captions.jsonl, vqa.jsonl, shapes.json) is byte-identical for the same
arguments, so a dataset can be re-made anywhere instead of being shipped.
"""

from __future__ import annotations

import argparse
import time

from vlbridge.data.shapes_scene import DOMAINS, HELD_OUT_COMBOS, SPLITS  # the world's vocabulary: no numpy / PIL
from vlbridge.errors import UserError

GROUP = "data"

DESCRIPTION = """\
Generate the procedural shapes world: 64x64 (or --image-size) RGB images with 1-3 coloured
shapes, each with 6 captions, VQA questions with 10 answers each, and a class label for
single-object images. Images of val/test cycle through the in / near / out domains; the
train split never contains the {n_held} held-out colour-shape combinations.

Writes DIR/images/<id>.png, DIR/captions.jsonl, DIR/vqa.jsonl and DIR/shapes.json.
The same --n, --seed, --image-size, --split-fractions and --max-objects always give
byte-identical files.
"""

EPILOG = "example: vlbridge data shapes --out data/shapes --n 10000 --seed 0 --split-fractions 0.8,0.1,0.1"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shapes",
        help="generate the procedural shapes world (images, captions, VQA, labels)",
        description=DESCRIPTION.format(n_held=len(HELD_OUT_COMBOS)),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--n", type=int, default=1000, metavar="N", help="images over all splits (default 1000)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="master seed (default 0)")
    parser.add_argument("--image-size", type=int, default=64, metavar="PX", help="image side in pixels (default 64)")
    parser.add_argument(
        "--split-fractions",
        default="0.8,0.1,0.1",
        metavar="F",
        help="train,val,test fractions summing to 1, e.g. 0.8,0.1,0.1 or train=0.9,test=0.1 (default 0.8,0.1,0.1)",
    )
    parser.add_argument("--max-objects", type=int, default=3, metavar="K", help="most shapes per image (default 3)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in DIR")
    parser.set_defaults(func=run)


def parse_split_fractions(text: str) -> dict[str, float]:
    """'0.8,0.1,0.1' or 'train=0.9,test=0.1' -> {split: fraction}; UserError if malformed."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        if parts and all("=" in part for part in parts):
            pairs = [part.split("=", 1) for part in parts]
            return {name.strip(): float(value) for name, value in pairs}
        if len(parts) != len(SPLITS):
            raise ValueError(f"expected {len(SPLITS)} numbers")
        return dict(zip(SPLITS, (float(part) for part in parts)))
    except ValueError as err:
        raise UserError(
            f"--split-fractions expects 3 numbers (train,val,test) like 0.8,0.1,0.1 or pairs like "
            f"train=0.9,test=0.1; got {text!r} ({err})"
        ) from err


def run(args: argparse.Namespace) -> int:
    from vlbridge.data.shapes import write_dataset

    fractions = parse_split_fractions(args.split_fractions)
    started = time.perf_counter()
    summary = write_dataset(
        args.out,
        args.n,
        seed=args.seed,
        image_size=args.image_size,
        splits=fractions,
        max_objects=args.max_objects,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - started
    splits = " / ".join(f"{name} {count}" for name, count in summary["splits"].items())
    domains = " / ".join(f"{name} {summary['domains'][name]}" for name in DOMAINS)
    print(
        f"wrote {summary['images']} images to {summary['out_dir']} ({splits}; domains {domains}; "
        f"{summary['single_object']} single-object) with {summary['captions']} captions and "
        f"{summary['questions']} questions in {seconds:.1f} s"
    )
    return 0
