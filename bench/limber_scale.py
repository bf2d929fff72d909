"""Scale test of the LiMBeR data path: peak memory must not grow with the dataset.

    .venv/bin/python bench/limber_scale.py [--n 2000] [--factor 10] [--steps 40] [--workdir DIR]

For N and factor x N shapes-world images (64 px) it runs, through the CLI, each in its own
process (peak RSS of that process from os.wait4's ru_maxrss):
1. `vlbridge data export --from shapes?... --format wds` (a webdataset of the images);
2. `vlbridge extract --encoder timm:test_resnet@W:grid --dataset wds:...` (features to the store);
3. `vlbridge train limber --data wds:... --steps S` (data.init_sample below N, see INIT_SAMPLE) with a tiny random Llama saved in the real HF
   format (tests/helpers) and `data.memory_limit_mb` below the store's size, so the features are
   streamed from the store (shard-and-buffer order).
and, as the anchor measured in the same run, step 3 at factor x N with `data.feature_mode=memory`
(every feature held, as before streaming existed).

Printed: peak RSS and throughput (images/s for extract, samples/s for training) at N and at
factor x N, and the ratio. Goal: peak RSS at 10 N <= 1.15 x peak RSS at N for extract and train.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from helpers.limber_train_helpers import make_tiny_encoder, make_tiny_lm  # noqa: E402

GOAL_RATIO = 1.15  # peak RSS at factor x N over peak RSS at N
# Streamed training sizes the projector's init from a seeded sample of data.init_sample features
# (8192 by default), a fixed cap: below it the sample grows with N. The bench sets it under N so
# that both sizes are past the cap and the ratio shows what still grows with the data.
INIT_SAMPLE = 256


def run_measured(args: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, wall seconds, stdout + stderr) of `python -m vlbridge ARGS` in its own process."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "vlbridge", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"vlbridge {' '.join(args[:2])} failed:\n{output[-3000:]}")
    return usage.ru_maxrss / 1024, seconds, output


def samples_per_second(output: str) -> float:
    found = re.search(r"\(([\d.]+) samples/s\)", output)
    return float(found.group(1)) if found else float("nan")


def one_size(n: int, work: Path, encoder: str, lm: str, steps: int, mode: str = "auto") -> dict:
    """Export, extract and train at n images; the figures of each stage."""
    data_dir = work / f"wds-{n}"
    spec = f"wds:{data_dir}"
    if not data_dir.exists():
        export_rss, export_s, _ = run_measured(["data", "export", "--from", f"shapes?n={n}&split=train&image_size=64",
                                               "--out", str(data_dir), "--format", "wds", "--shard-size", "1000"])
    else:
        export_rss, export_s = float("nan"), float("nan")
    cache = work / "features"
    extract_rss, extract_s, _ = run_measured(["extract", "--encoder", encoder, "--dataset", spec, "--cache", str(cache),
                                              "--chunk-size", "256", "--batch-size", "64", "--device", "cpu"])
    train_rss, _, output = run_measured([
        "train", "limber", "--encoder", encoder, "--lm", lm, "--data", spec, "--out", str(work / f"run-{n}-{mode}"),
        "--steps", str(steps), "--device", "cpu", "batch_size=16", "checkpoint_every=0", "log_every=10",
        f"data.feature_cache={cache}", "data.n=0", "data.feature_chunk_size=256", "data.shuffle_buffer_chunks=2",
        f"data.feature_mode={mode}", "data.memory_limit_mb=1", f"data.init_sample={INIT_SAMPLE}",
    ])
    mode_line = next((line for line in output.splitlines() if "LiMBeR data mode" in line), "")
    return {"n": n, "export_rss": export_rss, "export_s": export_s, "extract_rss": extract_rss,
            "extract_ips": n / extract_s, "train_rss": train_rss, "train_sps": samples_per_second(output),
            "mode": mode_line.split("LiMBeR data mode: ")[-1][:60]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images of the small dataset (default 2000)")
    parser.add_argument("--factor", type=int, default=10, help="the large dataset has factor x N images (default 10)")
    parser.add_argument("--steps", type=int, default=40, help="training steps at each size (default 40)")
    parser.add_argument("--workdir", help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        encoder = make_tiny_encoder(work / "encoder") + ":grid"
        lm = str(make_tiny_lm(work / "lm"))
        small = one_size(args.n, work, encoder, lm, args.steps)
        large = one_size(args.n * args.factor, work, encoder, lm, args.steps)
        held = one_size(args.n * args.factor, work, encoder, lm, args.steps, mode="memory")
    print(f"encoder test_resnet grid features at 64 px; tiny random Llama; batch 16, {args.steps} steps")
    print(f"{'':28}{'N=' + str(small['n']):>14}{'N=' + str(large['n']):>14}{'ratio':>8}")
    for key, label in [("export_rss", "export peak RSS (MiB)"), ("extract_rss", "extract peak RSS (MiB)"),
                       ("train_rss", "train peak RSS (MiB)"), ("extract_ips", "extract images/s"),
                       ("train_sps", "train samples/s")]:
        print(f"{label:28}{small[key]:>14.1f}{large[key]:>14.1f}{large[key] / small[key]:>8.3f}")
    print(f"train modes: N: {small['mode']} | {args.factor}N: {large['mode']}")
    print(f"anchor, {args.factor}N with every feature in memory ({held['mode']}): train peak RSS "
          f"{held['train_rss']:.1f} MiB ({held['train_rss'] / small['train_rss']:.3f} x N's), {held['train_sps']:.1f} samples/s")
    worst = max(large["extract_rss"] / small["extract_rss"], large["train_rss"] / small["train_rss"])
    print(f"goal: peak RSS at {args.factor}N <= {GOAL_RATIO} x at N: {'met' if worst <= GOAL_RATIO else 'NOT met'} "
          f"(worst ratio {worst:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
