"""Benchmark: images/s of feature extraction with image decoding in 0, 1 and 2 DataLoader workers.

    .venv/bin/python bench/extract_decode.py [--n 256] [--size 1024] [--encoder random:timm:test_resnet:64px]
                                             [--batch-size 32] [--workers 0 1 2] [--rounds 3] [--threads 1] [--wait-ms 0]

Writes N JPEG photos-like images (random smooth colour fields, SIZE x 3/4 SIZE pixels, quality 90)
into a temporary folder, then runs `extract_features` (the path `vlbridge extract` takes per chunk)
over them with each worker count in turn, rounds alternating so machine load hits every setting
alike. Printed: the median images/s of each setting and its ratio against workers=0 measured in
the same run, the rate of decoding alone (what workers can take off the encoding process) and
the load average (workers need idle cores: on a loaded machine they only add overhead). Every setting must give the same features as workers=0 (checked).

The default encoder is timm's tiny test_resnet at 64 px, randomly initialised: on a CPU it
stands in for a GPU encoder, whose cost per image is small next to decoding a large JPEG (the
case workers are for). With a real CPU encoder (--encoder random:efficientnet-lite0) the
encoder dominates and workers change little. `--wait-ms W` makes every encoder call also wait W
ms without using the CPU, as the encoding process does while a GPU computes: decoding in workers
can overlap that wait even when no core is idle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlbridge.data.features import decoded_windows, extract_features  # noqa: E402
from vlbridge.models.registry import build_encoder  # noqa: E402


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """N smooth random JPEGs (an upsampled 8x6 colour grid plus noise), SIZE x 3/4 SIZE pixels."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((size, size * 3 // 4), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size * 3 // 4, size, 3))  # (H, W, 3)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


class Waiting:
    """`encoder`, each call followed by a `seconds` sleep (a GPU's compute time, CPU left idle)."""

    def __init__(self, encoder, seconds: float):
        self.encoder, self.seconds = encoder, seconds
        self.preprocess, self.device = encoder.preprocess, encoder.device

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:  # (b, 3, H, W) -> the encoder's (b, ...)
        out = self.encoder(pixels)
        time.sleep(self.seconds)
        return out


def measure(encoder, paths: list[Path], batch_size: int, workers: int) -> tuple[float, torch.Tensor]:
    """(images/s, features) of one extraction of `paths`."""
    started = time.perf_counter()
    out = extract_features(encoder, paths, batch_size=batch_size, workers=workers)
    return len(paths) / (time.perf_counter() - started), out.features


def decode_only(encoder, paths: list[Path], batch_size: int) -> float:
    """images/s of opening + preprocessing alone, in this process (the share workers can take over)."""
    started = time.perf_counter()
    for _ in decoded_windows(encoder.preprocess, paths, batch_size):
        pass
    return len(paths) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images per extraction (default 256)")
    parser.add_argument("--size", type=int, default=1024, help="image width in pixels (height 3/4 of it; default 1024)")
    parser.add_argument("--encoder", default="random:timm:test_resnet:64px", help="encoder spec (default: random:timm:test_resnet:64px)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default 32)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts (default 0 1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every setting; the median is printed (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the encoding process (default 1)")
    parser.add_argument("--wait-ms", type=float, default=0.0, help="idle wait after each encoder call, a GPU stand-in (default 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = sorted(set([0, *args.workers]))
    encoder = build_encoder(args.encoder, device="cpu")
    if args.wait_ms > 0:
        encoder = Waiting(encoder, args.wait_ms / 1000)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.n, args.size)
        measure(encoder, paths[: args.batch_size], args.batch_size, 0)  # warm-up: first-call costs out of the rounds
        rates: dict[int, list[float]] = {w: [] for w in settings}
        decoding: list[float] = []
        reference = None
        load_before = os.getloadavg()[0]
        for _ in range(args.rounds):
            decoding.append(decode_only(encoder, paths, args.batch_size))
            for workers in settings:
                rate, features = measure(encoder, paths, args.batch_size, workers)
                reference = features if reference is None else reference
                if not torch.equal(features, reference):
                    raise SystemExit(f"workers={workers} gave different features than workers=0")
                rates[workers].append(rate)
    anchor = statistics.median(rates[0])
    print(f"extract_decode: {args.n} JPEGs {args.size}x{args.size * 3 // 4}, encoder {args.encoder}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s), wait {args.wait_ms:g} ms per call, median of {args.rounds} rounds, {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    print(f"  decoding alone:  {statistics.median(decoding):8.1f} images/s (open + preprocess, no encoder)")
    for workers in settings:
        rate = statistics.median(rates[workers])
        print(f"  workers={workers}: {rate:8.1f} images/s   ratio vs workers=0: {rate / anchor:.2f}")


if __name__ == "__main__":
    main()
