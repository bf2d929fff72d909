"""Benchmark: vlbridge's caption metrics vs pycocoevalcap on 5,000 images x 5 references.

Scores the same whitespace-tokenized corpus with pycocoevalcap's Cider, Bleu(4) and Rouge and
with vlbridge's CIDEr-D, BLEU-1..4 and ROUGE-L, checks that every corpus and per-image score
agrees to 1e-9, and prints the wall-clock times and the speed ratio (goal: >= 20x).
Optionally (--raw) also times `score_captions(..., tokenize="none")` on the same strings and on a
copy whose spaces are partly tabs, double spaces, U+3000 and U+00A0 (ROUGE-L then needs its own
index: pycocoevalcap's Rouge splits on " " only), checked against pycocoevalcap on those strings;
(--ptb) also times the Python PTB tokenizer against the Java one on the same captions.

    python bench/metrics.py [--images 5000] [--refs 5] [--repeat 3] [--raw] [--ptb]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import time

import numpy as np

from vlbridge.evaluation.metrics.io import score_captions, score_tokenized

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "heart", "diamond", "oval", "arrow"]
OBJECTS = ["dog", "cat", "man", "woman", "bus", "train", "pizza", "table", "bike", "kite", "boat", "horse", "plate"]
PLACES = ["street", "kitchen", "beach", "park", "field", "room", "table", "road", "grass", "snow"]
VERBS = ["sitting", "standing", "riding", "holding", "looking at", "next to", "playing with", "eating", "near"]


def make_corpus(num_images: int, refs_per_image: int, seed: int = 0):
    """COCO-length (8-16 words) captions from a mixed shapes/everyday vocabulary."""
    rng = random.Random(seed)

    def caption():
        words = ["a", rng.choice(COLOURS), rng.choice(OBJECTS + SHAPES), rng.choice(VERBS), "a", rng.choice(OBJECTS + SHAPES)]
        words += ["on", "the", rng.choice(PLACES)]
        words += [rng.choice(COLOURS + OBJECTS + PLACES + ["with", "and", "the", "a", "of", "in"]) for _ in range(rng.randint(0, 7))]
        return " ".join(words)

    gts = {str(i): [caption() for _ in range(refs_per_image)] for i in range(num_images)}
    res = {str(i): [caption()] for i in range(num_images)}
    return gts, res


def run_reference(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    with contextlib.redirect_stdout(io.StringIO()):
        cider = Cider().compute_score(gts, res)
        bleu = Bleu(4).compute_score(gts, res)
        rouge = Rouge().compute_score(gts, res)
    scores = {"CIDEr-D": (cider[0], np.asarray(cider[1])), "ROUGE-L": (rouge[0], np.asarray(rouge[1]))}
    scores.update({f"BLEU-{n + 1}": (bleu[0][n], np.asarray(bleu[1][n])) for n in range(4)})
    return scores


def run_ours(gts, res):
    """What a user runs: split the strings, then score (the conversion for checking is not timed)."""
    refs = {k: [s.split() for s in v] for k, v in gts.items()}
    cands = {k: v[0].split() for k, v in res.items()}
    return score_tokenized(refs, cands)


def run_raw(gts, res):
    """What `vlbridge score captions --tokenize none` runs on the strings."""
    return score_captions(dict(gts), {k: v[0] for k, v in res.items()}, tokenize="none")


def roughen(gts, res, seed: int = 1):
    """The same captions with about a third of the spaces replaced by other whitespace."""
    rng = random.Random(seed)
    gaps = [" ", " ", " ", " ", " ", "  ", "\t", "\u3000", "\u00a0"]

    def rough(caption):
        return "".join(rng.choice(gaps) if c == " " else c for c in caption) + rng.choice(["", "", " "])

    return {k: [rough(c) for c in v] for k, v in gts.items()}, {k: [rough(v[0])] for k, v in res.items()}


def bench_raw(gts, res, reference, reference_cpu: float, repeat: int) -> None:
    plain_wall, plain_cpu, plain = timed(run_raw, gts, res, repeat=repeat)
    check_agreement(reference, as_arrays(plain, list(gts)))
    print(f"score_captions(tokenize='none'), single-spaced: {plain_wall:7.3f} s wall, {plain_cpu:7.3f} s CPU "
          f"({reference_cpu / plain_cpu:.1f}x CPU)")
    rough_gts, rough_res = roughen(gts, res)
    rough_reference_wall, rough_reference_cpu, rough_reference = timed(run_reference, rough_gts, rough_res)
    rough_wall, rough_cpu, rough = timed(run_raw, rough_gts, rough_res, repeat=repeat)
    worst = check_agreement(rough_reference, as_arrays(rough, list(gts)))
    print(f"mixed whitespace: pycocoevalcap {rough_reference_wall:7.3f} s wall, {rough_reference_cpu:7.3f} s CPU; "
          f"vlbridge {rough_wall:7.3f} s wall, {rough_cpu:7.3f} s CPU; agree to {worst:.2e}; "
          f"{rough_reference_cpu / rough_cpu:.1f}x CPU")


def as_arrays(result, ids):
    return {name: (result["corpus"][name], np.array([result["per_id"][k][name] for k in ids])) for name in result["corpus"]}


def check_agreement(reference, ours) -> float:
    worst = 0.0
    for name, (corpus, per_image) in reference.items():
        worst = max(worst, abs(ours[name][0] - corpus), float(np.max(np.abs(ours[name][1] - per_image))))
    if worst > 1e-9:
        raise SystemExit(f"scores disagree with pycocoevalcap: max abs difference {worst:.3g}")
    return worst


def timed(fn, *args, repeat: int = 1):
    """(best wall seconds, best CPU seconds of this process, result) over `repeat` runs.

    CPU time is what the ratio uses: it is stable when other jobs share the machine.
    """
    best_wall, best_cpu, value = float("inf"), float("inf"), None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, value


def bench_ptb(gts, res) -> None:
    from vlbridge.evaluation.metrics.ptb_tokenizer import ptb_tokenize

    captions = [c.capitalize() + "." for refs in gts.values() for c in refs] + [v[0] for v in res.values()]
    ours, ours_cpu, _ = timed(lambda: [ptb_tokenize(c) for c in captions])
    print(f"PTB tokenizer (python): {len(captions)} captions in {ours:.2f} s wall, {ours_cpu:.2f} s CPU")
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        java, _, _ = timed(lambda: PTBTokenizer().tokenize({str(i): [{"caption": c}] for i, c in enumerate(captions)}))
        print(f"PTB tokenizer (java, pycocoevalcap): {java:.2f} s wall (JVM start included)")
    except (ImportError, OSError) as err:
        print(f"PTB tokenizer (java): not run ({err})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="number of images (default 5000)")
    parser.add_argument("--refs", type=int, default=5, help="references per image (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours; the best counts (default 3)")
    parser.add_argument("--raw", action="store_true", help="also time score_captions(tokenize='none') on raw strings")
    parser.add_argument("--ptb", action="store_true", help="also time the PTB tokenizers")
    args = parser.parse_args(argv)
    gts, res = make_corpus(args.images, args.refs)
    print(f"corpus: {args.images} images x {args.refs} references, whitespace-tokenized")
    reference_wall, reference_cpu, reference = timed(run_reference, gts, res)
    ours_wall, ours_cpu, ours = timed(run_ours, gts, res, repeat=args.repeat)
    worst = check_agreement(reference, as_arrays(ours, list(gts)))
    print(f"pycocoevalcap Cider+Bleu(4)+Rouge:  {reference_wall:7.3f} s wall, {reference_cpu:7.3f} s CPU")
    print(f"vlbridge CIDEr-D+BLEU-1..4+ROUGE-L: {ours_wall:7.3f} s wall, {ours_cpu:7.3f} s CPU (best of {args.repeat})")
    print(f"all corpus and per-image scores agree (max abs difference {worst:.2e})")
    print(f"speed ratio: {reference_cpu / ours_cpu:.1f}x CPU time, {reference_wall / ours_wall:.1f}x wall (goal >= 20x)")
    if args.raw:
        bench_raw(gts, res, reference, reference_cpu, args.repeat)
    if args.ptb:
        bench_ptb(gts, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
