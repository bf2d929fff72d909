"""`vlbridge study`: run the whole encoder-comparison experiment and write its report."""

from __future__ import annotations

import argparse

GROUP = None

DESCRIPTION = """\
Reproduce the two experiments end to end and write report.md, report.html and results.json:
  1. train a CLIP on the embedded image-text data (shapes world + Twemoji + openclipart);
  2. CLIP table: zero-shot vs linear probes (CLIP and EfficientNet-Lite0 features) and robustness;
  3. LiMBeR table: one linear projector per encoder (CLIP, ImageNet-supervised, self-supervised,
     random init) into a frozen SmolLM2-135M; captioning (CIDEr-D, CLIP-S, RefCLIP-S by domain)
     and few-shot VQA at 0/1/2/4 shots with a blind baseline.
Every stage is cached by the hash of its inputs: a rerun only redoes what changed (--force: all).
Presets: quick (about 3 min on 2 CPU cores), default (about 10-15 min), paper (real-scale data and
weights from the local paths in a config file; add --dry-run to validate the recipe on tiny
stand-ins of the same formats and architectures)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="run the CLIP + LiMBeR study and write its report",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/study", help="report folder (default: runs/study)")
    parser.add_argument("--preset", default="default", choices=["quick", "default", "paper"], help="size of the run")
    parser.add_argument("--config", help="YAML/JSON file with study settings (paper preset: the local paths)")
    parser.add_argument("--cache", help="stage cache folder (default: <VLBRIDGE_CACHE>/study)")
    parser.add_argument("--force", action="store_true", help="rerun every stage even when cached")
    parser.add_argument("--dry-run", action="store_true",
                        help="paper preset: run the recipe end to end on tiny stand-ins of its formats and models")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. clip.steps=200")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlbridge.study.config import load_study_config
    from vlbridge.study.runner import run_study

    overrides = list(args.overrides) + ([f"cache_dir={args.cache}"] if args.cache else [])
    if args.dry_run:
        from vlbridge.study.paper import dry_run

        return dry_run(args.out, args.config, overrides, force=args.force)
    config = load_study_config(args.preset, args.config, overrides)
    if args.preset == "paper":
        from vlbridge.study.paper import check_paths

        check_paths(config)
    results = run_study(config, args.out, force=args.force)
    print_summary(results)
    return 0


def print_summary(results: dict) -> None:
    """A short plain-text digest of the main numbers."""
    zero_shot = results.get("clip", {}).get("zero_shot", {})
    for dataset, scores in zero_shot.items():
        probe = results["clip"].get("linear_probe", {}).get(dataset, {}).get("by_features", {})
        probes = ", ".join(f"probe[{k}] {100 * v:.1f}%" for k, v in probe.items())
        print(f"CLIP {dataset:<20} zero-shot {100 * scores['top1']:.1f}%  {probes}")
    for encoder, scores in results.get("captioning", {}).items():
        vqa = results.get("vqa", {}).get(encoder, {})
        shots = " ".join(f"{n}:{100 * acc:.1f}" for n, acc in vqa.items())
        print(f"LiMBeR {encoder:<18} CIDEr-D {scores['CIDEr-D']:.3f}  CLIP-S {scores.get('CLIP-S') or 0:.3f}  VQA {shots}")
    blind = results.get("vqa", {}).get("blind")
    if blind:
        print(f"LiMBeR {'blind':<18} VQA " + " ".join(f"{n}:{100 * acc:.1f}" for n, acc in blind.items()))
