"""`vlbridge study`: run the whole encoder-comparison experiment and write its report."""

from __future__ import annotations

import argparse

GROUP = None

DESCRIPTION = """\
Answer the CLIP and LiMBeR papers' questions on the embedded data, with 95 % intervals, and write
report.md, report.html and results.json:
  1. the supervision ladder: one image backbone made four ways on the same images and steps:
     random init, self-supervised (SimCLR), class labels, contrastive captions (CLIP);
  2. CLIP table: zero-shot vs linear probes on every rung's features, clean and under shifts;
  3. LiMBeR: one linear projector per encoder into the frozen SmolLM2-135M; held-out caption
     likelihood (overall, category words, property words), generated captions (CIDEr-D, CLIP-S,
     RefCLIP-S, word recall) and few-shot VQA at 0/1/2/4 shots, open-ended and closed-set, with a
     blind baseline;
  4. findings C1-C5: effect, paired-bootstrap 95 % interval and a verdict computed from it.
Every stage is cached by the hash of its inputs: a rerun only redoes what changed (--force: all).
On a CPU the CPU presets build two independent stages at once, each in its own process with half
the cores (workers=2; workers=1 runs them one after another in this process).
Presets: quick (a smoke test, about 2 min on 2 CPU cores), default (`make demo`, 9-14 min),
full (3 seeds, larger samples, an independent CLIP-S scorer; 55 min measured), paper (real-scale
data and weights from the local paths in a config file; add --dry-run to validate the recipe on
tiny stand-ins of the same formats and architectures).
Under torchrun (torchrun --nproc_per_node N -m vlbridge study ...) the LiMBeR projectors train
over the N processes; every other stage runs on the first while the rest wait, and only the
first writes the cache, the manifest and the report."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="run the CLIP + LiMBeR study and write its report",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/study", help="report folder (default: runs/study)")
    parser.add_argument("--preset", default="default", choices=["quick", "default", "full", "paper"], help="size of the run")
    parser.add_argument("--config", help="YAML/JSON file with study settings (paper preset: the local paths)")
    parser.add_argument("--cache", help="stage cache folder (default: <VLBRIDGE_CACHE>/study)")
    parser.add_argument("--force", action="store_true", help="rerun every stage even when cached")
    parser.add_argument("--dry-run", action="store_true",
                        help="paper preset: run the recipe end to end on tiny stand-ins of its formats and models")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. ladder.train.steps=200")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlbridge.runtime import cleanup, init_distributed
    from vlbridge.study.config import load_study_config

    overrides = list(args.overrides) + ([f"cache_dir={args.cache}"] if args.cache else [])
    config = load_study_config("paper" if args.dry_run else args.preset, args.config, overrides)
    env = init_distributed(config.device)  # under torchrun: join the ranks (every rank runs the study)
    try:
        return run_in(args, config, overrides, env)
    finally:
        cleanup(env)


def run_in(args: argparse.Namespace, config, overrides: list[str], env) -> int:
    """The study (or the paper dry run) on this rank; rank 0 prints the findings."""
    from vlbridge.study.runner import run_study

    if args.dry_run:
        from vlbridge.study.paper import dry_run

        return dry_run(args.out, args.config, overrides, force=args.force, env=env)
    if args.preset == "paper":
        from vlbridge.study.paper import check_paths

        check_paths(config)
    results = run_study(config, args.out, force=args.force, env=env)
    if env.is_main:
        print_summary(results)
    return 0


def print_summary(results: dict) -> None:
    """The findings in plain text: one line per claim."""
    for finding in results.get("findings", []):
        if finding.get("effect") is None:
            print(f"{finding['id']}  not measured ({finding.get('note', '')})")
            continue
        low, high = finding["ci95"]
        print(f"{finding['id']}  {finding['verdict']:<13} effect {finding['effect']:+.3f} "
              f"[{low:+.3f}, {high:+.3f}] n={finding['n']}  {finding['claim']}")
