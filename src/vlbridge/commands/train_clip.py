"""`vlbridge train clip`: contrastive image-text training (CLIP, or LiT with --set model.lit=true).

    vlbridge train clip --out runs/clip                       # tiny CLIP on the embedded default
    vlbridge train clip --config clip.yaml --out runs/clip steps=2000 optim.lr=5e-4
    vlbridge train clip --out runs/clip --resume latest       # continue an interrupted run
    torchrun --nproc_per_node 2 -m vlbridge train clip --out runs/clip

Builds a `ClipTrainConfig` (defaults < --config file < key=value overrides), runs
`vlbridge.training.clip.train_clip` and prints a one-line summary on rank 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from vlbridge.errors import UserError

GROUP = "train"

DESCRIPTION = """\
Train a CLIP (open_clip architecture, default the tiny vl-tiny-rn) with the symmetric
contrastive loss, or a LiT model (model.lit=true: frozen all-MiniLM-L6-v2 text side).

Data (data.source): "embedded" = shapes world (train split) + Twemoji + openclipart, or any
dataset spec vlbridge.data.formats reads (folders, CSV, JSONL, webdataset shards...).
Settings come from the defaults, then --config FILE (YAML/JSON), then key=value overrides,
e.g. steps=2000 batch_size=256 optim.lr=5e-4 model.arch=RN50 data.source=shards/{0..9}.tar.
The resolved config is saved as RUN_DIR/config.yaml; checkpoints go to RUN_DIR/checkpoints/,
metrics to RUN_DIR/metrics.csv and RUN_DIR/tensorboard/, the final model to RUN_DIR
(readable by `vlbridge eval ... RUN_DIR`). Run under torchrun for several processes (DDP).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "clip",
        help="train a CLIP / LiT model with the contrastive loss",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML/JSON file with ClipTrainConfig keys (optional)")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory (created if needed)")
    parser.add_argument(
        "--resume", metavar="WHICH",
        help="continue from a checkpoint: 'latest' (starts fresh if there is none), a step number or a file",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=5e-4 steps=1000")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlbridge.config import load_config
    from vlbridge.io import check_writable_dir
    from vlbridge.training.clip import ClipTrainConfig, train_clip

    check_writable_dir(args.out, "--out")
    config_path = resume_config_path(args)
    if config_path is not None and not Path(config_path).is_file():
        raise UserError(f"config file {config_path} does not exist")
    cfg = load_config(ClipTrainConfig, config_path, args.overrides)
    result = train_clip(cfg, args.out, resume=args.resume)
    if _is_main():
        top1 = result.zeroshot_top1
        print(
            f"trained {result.steps} steps in {result.seconds:.0f} s: loss {result.final_loss:.4f}, "
            f"zero-shot top-1 {'n/a' if top1 is None else f'{100 * top1:.1f}%'}, "
            f"{result.samples_per_second:.0f} samples/s; model in {args.out}"
        )
        summary = dataclasses.asdict(result)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return 0


def resume_config_path(args: argparse.Namespace) -> Path | None:
    """The config file to read: --config, else (when resuming) the run's own config.yaml.

    A run killed before it saved config.yaml left no record of its settings. Resuming it with
    nothing on the command line would silently train the defaults, so that is refused; given
    --config or key=value settings, the run starts (or resumes) with exactly those.
    """
    saved = args.out / "config.yaml"
    if args.config is not None or not args.resume:
        return args.config
    if saved.is_file():
        return saved  # resuming without --config: continue with the run's own settings
    if not args.overrides:
        raise UserError(
            f"cannot resume {args.out}: it has no config.yaml (the run stopped before saving its settings), so "
            f"its settings are unknown; repeat the original command's --config and key=value settings"
        )
    return None


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0
