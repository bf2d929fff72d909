"""Anchor for study timings: one training step of the study ladder's image tower on this machine.

    .venv/bin/python bench/tower_step.py [--batch 512] [--repeats 4]

Builds the default preset's ladder tower (`ladder.train.model`, random weights, channels-last as
the trainer uses it) and times forward + backward of a batch of random 64 px images, on all of
torch's threads and on one, after one warm-up step. The ladder repeats exactly this step, so
this figure, taken before or after a `make demo`, says how fast the machine was that day: a VM's
speed can move by a third within a day (docs/BENCHMARKS.md, "The study"). Prints seconds per
step for each thread count and their ratio, plus the load average.

It then runs the step as the study's side-by-side stages do (study/schedule.py): one forked
process per core, each on one thread, all at once, and prints their combined steps per second
against the anchor (one process on all threads, measured above in the same run): the reason the
CPU presets build two stages at a time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlbridge.study.clip_stages import ladder_recipe  # noqa: E402
from vlbridge.study.config import load_study_config  # noqa: E402
from vlbridge.training.clip import build_model  # noqa: E402


def seconds_per_step(tower: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Mean wall seconds of forward + backward over `repeats` steps, after one warm-up step."""
    tower(images).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        tower(images).sum().backward()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="images per step (default 512)")
    parser.add_argument("--repeats", type=int, default=4, help="timed steps per thread count (default 4)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit("--batch and --repeats must be >= 1")
    recipe = ladder_recipe(load_study_config("default"), seed=0)
    model, _, _ = build_model(recipe.model, torch.device("cpu"))
    tower = model.visual.to(memory_format=torch.channels_last)
    side = recipe.data.shapes_image_size
    images = torch.randn(args.batch, 3, side, side).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
    print(f"tower {recipe.model.arch}, batch {args.batch} x {side} px, load average {os.getloadavg()[0]:.2f}")
    threads = torch.get_num_threads()
    all_threads = seconds_per_step(tower, images, args.repeats)
    torch.set_num_threads(1)
    one_thread = seconds_per_step(tower, images, args.repeats)
    torch.set_num_threads(threads)
    print(f"{threads} threads: {all_threads:.3f} s/step | 1 thread: {one_thread:.3f} s/step | "
          f"ratio 1 thread / {threads}: {one_thread / all_threads:.2f}")
    workers = max(2, threads)
    seconds = side_by_side(tower, images, args.repeats, workers)  # each worker's s/step
    combined = sum(1.0 / s for s in seconds)  # steps per second of all workers together
    print(f"{workers} processes x 1 thread at once: {', '.join(f'{s:.3f}' for s in seconds)} s/step each, "
          f"{combined:.3f} steps/s together | throughput / anchor ({threads} threads, one process): "
          f"{combined * all_threads:.2f}")
    return 0


def side_by_side(tower: torch.nn.Module, images: torch.Tensor, repeats: int, workers: int) -> list[float]:
    """Seconds per step of each of `workers` forked 1-thread processes stepping at the same time."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(workers)
    results = context.Queue()

    def work() -> None:
        torch.set_num_threads(1)
        tower(images).sum().backward()  # warm-up, then all start together
        start.wait()
        began = time.perf_counter()
        for _ in range(repeats):
            tower(images).sum().backward()
        results.put((time.perf_counter() - began) / repeats)

    processes = [context.Process(target=work) for _ in range(workers)]
    for process in processes:
        process.start()
    seconds = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return seconds


if __name__ == "__main__":
    sys.exit(main())
