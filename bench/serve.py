"""Benchmark: `vlbridge serve` caption throughput and latency, micro-batching, and search latency / recall.

    .venv/bin/python bench/serve.py                       # models of the newest `make demo` study run
    .venv/bin/python bench/serve.py --cache DIR --preset quick
    .venv/bin/python bench/serve.py --model LIMBER --clip CLIP [--requests 64] [--out bench-serve.json]

Captions. The anchor is what a user does today: a loop of one-shot `vlbridge caption IMG --model M`
commands (each one starts Python and loads the LM again). Against it, the server (`vlbridge serve`
in a subprocess on a loopback port) answers POST /v1/caption requests, one image each, from an
asyncio client at concurrency 1, 8 and 32, twice: with micro-batching (--max-batch 16, a 5 ms window)
and without (--max-batch 1). Every process runs torch on one thread (OMP_NUM_THREADS=1, for the
server and the one-shot commands alike): on a 2-core machine shared with other jobs, two contended
OpenMP threads made one caption 4x slower and a batch of 8 nine times slower. Printed per setting: requests/s, p50 and p95 latency (seconds from
sending a request to its answer); then requests/s of the server over the one-shot loop, and of
batching over no batching. Greedy decoding, at most 30 new tokens, shapes-world test images.

Search. Synthetic unit vectors with the CLIP's width, clustered in a low-dimensional subspace like
real image embeddings (1,000 centres in 32 dimensions, lifted, plus noise), at 10k and 100k entries: one query at a time, p50 latency of exact
search (`SearchIndex.search_exact`: matmul + top-k) and of faiss HNSW and IVF-Flat as
`vlbridge index build` makes them, with their build time and recall@10 against exact.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CONCURRENCY = (1, 8, 32)  # client concurrency levels for captions
SEARCH_SIZES = (10_000, 100_000)  # index entries for the search benchmark
SEARCH_QUERIES = 200  # queries timed per index


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="LiMBeR folder (default: the newest study run's 'clip' projector)")
    parser.add_argument("--clip", help="CLIP folder (default: the newest study run's CLIP)")
    parser.add_argument("--preset", default="default", help="study preset to take the models from (default: default)")
    parser.add_argument("--cache", help="study cache (default: <VLBRIDGE_CACHE>/study)")
    parser.add_argument("--requests", type=int, default=64,
                        help="caption requests at c=32 (default 64; c=8 sends half, c=1 an eighth, at least 8)")
    parser.add_argument("--one-shot-runs", type=int, default=3, help="one-shot `vlbridge caption` calls timed (default 3)")
    parser.add_argument("--skip-captions", action="store_true", help="only the search benchmark")
    parser.add_argument("--search-dim", type=int, default=0,
                        help="embedding width for the search benchmark (default: the CLIP's; 512 without one)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    return parser.parse_args(argv)


def model_paths(args) -> tuple[str, str]:
    if args.model and args.clip:
        return args.model, args.clip
    from vlbridge.serve.demo import demo_paths

    paths = demo_paths(args.preset, args.cache)
    return str(paths.limber), str(paths.clip)


def images(count: int) -> list[bytes]:
    from vlbridge.data.shapes import image_text_records

    encoded = []
    for record in image_text_records(count, split="test", seed=11):
        buffer = io.BytesIO()
        record.image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def one_shot_loop(model: str, image: bytes, runs: int) -> list[float]:
    """Seconds of each `vlbridge caption IMG --model M` run (a new process every time)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.png"
        path.write_bytes(image)
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vlbridge", "-q", "caption", str(path), "--model", model],
                           check=True, capture_output=True, env=_env())
            seconds.append(time.perf_counter() - started)
    return seconds


def _env() -> dict:
    """The environment of every process started here: one torch / OpenMP thread (see the module docstring)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def start_server(model: str, clip: str, max_batch: int, port: int):
    command = [sys.executable, "-m", "vlbridge", "-q", "serve", "--model", model, "--clip", clip, "--port", str(port),
               "--max-batch", str(max_batch), "--batch-window-ms", "5"]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vlbridge serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("vlbridge serve did not get ready in 10 minutes")


async def caption_load(port: int, payloads: list[bytes], concurrency: int, count: int) -> dict:
    """`count` caption requests, at most `concurrency` in flight; requests/s and latency percentiles."""
    import httpx

    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as client:
        async def one(number: int):
            body = {"image": base64.b64encode(payloads[number % len(payloads)]).decode(), "max_new_tokens": 30}
            async with gate:
                started = time.perf_counter()
                response = await client.post("/v1/caption", json=body)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

        await one(0)  # warm-up, not counted
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": count, "requests_per_s": count / wall, "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def caption_benchmark(args) -> dict:
    model, clip = model_paths(args)
    payloads = images(16)
    results: dict = {"model": model, "clip": clip}
    one_shot = one_shot_loop(model, payloads[0], args.one_shot_runs)
    results["one_shot"] = {"runs": len(one_shot), "seconds_each": one_shot, "requests_per_s": 1 / statistics.mean(one_shot)}
    print(f"one-shot `vlbridge caption`: {statistics.mean(one_shot):.1f} s per caption ({len(one_shot)} runs)", flush=True)
    for name, max_batch in (("batched", 16), ("unbatched", 1)):
        port = free_port()
        process = start_server(model, clip, max_batch, port)
        try:
            for concurrency in CONCURRENCY:
                count = max(8, args.requests // {1: 8, 8: 2, 32: 1}[concurrency])
                figures = asyncio.run(caption_load(port, payloads, concurrency, count))
                results.setdefault(name, {})[str(concurrency)] = figures
                print(f"server {name:<9} c={concurrency:<2} {figures['requests_per_s']:6.2f} req/s  "
                      f"p50 {figures['p50_s']:6.2f} s  p95 {figures['p95_s']:6.2f} s  ({count} requests)", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    anchor = results["one_shot"]["requests_per_s"]
    for concurrency in CONCURRENCY:
        key = str(concurrency)
        batched, unbatched = results["batched"][key]["requests_per_s"], results["unbatched"][key]["requests_per_s"]
        print(f"c={concurrency:<2} server / one-shot loop: {batched / anchor:5.1f}x   batching gain: {batched / unbatched:4.2f}x")
    return results


def clustered_unit_vectors(count: int, dim: int, seed: int, latent: int = 32) -> np.ndarray:
    """Unit vectors shaped like image embeddings: 1,000 clusters in a `latent`-d subspace, lifted to `dim`, plus noise."""
    from vlbridge.api.search_index import unit_rows

    lift = np.random.default_rng(123).normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = np.random.default_rng(7).normal(size=(1000, latent)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, 1000, count)] + 0.5 * rng.normal(size=(count, latent)).astype(np.float32)
    return unit_rows(points @ lift + 0.15 * rng.normal(size=(count, dim)).astype(np.float32))


def search_benchmark(dim: int) -> dict:
    import torch

    from vlbridge.api.index_build import make_faiss_index

    results = {}
    for size in SEARCH_SIZES:
        embeddings = clustered_unit_vectors(size, dim, seed=size)
        queries = clustered_unit_vectors(SEARCH_QUERIES, dim, seed=size + 1)
        exact_scores = torch.from_numpy(queries) @ torch.from_numpy(embeddings).T
        truth = exact_scores.topk(10, dim=1).indices.numpy()
        exact_ms = _per_query_ms(lambda q: (torch.from_numpy(q) @ torch.from_numpy(embeddings).T).topk(10, dim=1), queries)
        entry = {"exact": {"p50_ms": exact_ms, "recall_at_10": 1.0}}
        for kind in ("hnsw", "ivf"):
            started = time.perf_counter()
            index, params = make_faiss_index(kind, embeddings)
            build_s = time.perf_counter() - started
            found = index.search(queries, 10)[1]
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
            entry[kind] = {"p50_ms": _per_query_ms(lambda q: index.search(q, 10), queries), "recall_at_10": recall,
                           "build_s": build_s, "params": params}
        results[str(size)] = entry
        line = "  ".join(f"{k} {v['p50_ms']:.2f} ms (recall {v['recall_at_10']:.3f})" for k, v in entry.items())
        print(f"search {size:>7,} x {dim}: {line}", flush=True)
    return results


def _per_query_ms(search, queries: np.ndarray) -> float:
    search(queries[:1])  # warm-up
    times = []
    for row in range(len(queries)):
        started = time.perf_counter()
        search(queries[row : row + 1])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f} (2-core machine)", flush=True)
    figures: dict = {"load_average": os.getloadavg()}
    dim = args.search_dim or 512
    if not args.skip_captions:
        from vlbridge.errors import UserError

        try:
            figures["captions"] = caption_benchmark(args)
        except UserError as err:  # no study run yet: the search half still runs
            print(f"captions skipped: {err}", flush=True)
        else:
            from vlbridge.api import ClipModel

            if not args.search_dim:
                dim = int(ClipModel.from_pretrained(figures["captions"]["clip"]).embed_texts(["a"]).shape[1])
    figures["search"] = search_benchmark(dim)
    figures["load_average_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
