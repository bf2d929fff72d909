"""`vlbridge train limber`: train a LiMBeR projector between a frozen image encoder and a frozen LM.

    vlbridge train limber --encoder timm:nf_resnet50@w.safetensors --data shapes --out runs/limber
    vlbridge train limber ... --resume latest            # continue an interrupted run exactly
    vlbridge train limber ... --tune-encoder optim.encoder_lr=1e-5
    torchrun --nproc_per_node 2 -m vlbridge train limber ...   # DDP (gloo on CPU, nccl on GPU)

Options map onto `vlbridge.training.limber.LimberTrainConfig`; a --config file and
trailing key=value overrides set any other field. Prints where the model went and the last loss.
"""

from __future__ import annotations

import argparse

GROUP = "train"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "limber",
        help="train a LiMBeR projector (frozen image encoder -> linear map -> frozen LM)",
        description=(
            "Train the linear projector that maps frozen image features into the input space of a frozen "
            "causal LM, on image-caption pairs (features are extracted once and cached). With --tune-encoder "
            "the encoder is trained too, on pixels every step. The run directory gets config.yaml, resume "
            "checkpoints and model/ (load it with `vlbridge caption --model RUN_DIR/model`)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: vlbridge train limber --encoder efficientnet-lite0 --data shapes --out runs/limber data.n=2000",
    )
    parser.add_argument("--encoder", help="image encoder spec, e.g. clip:PATH, timm:NAME@FILE, efficientnet-lite0, random:SPEC")
    parser.add_argument("--lm", help="frozen causal-LM directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--data", help="training data: shapes, twemoji or a format spec (default: shapes)")
    parser.add_argument("--out", required=True, help="run directory (config, checkpoints, model/, metrics.csv)")
    parser.add_argument("--config", help="YAML/JSON file with LimberTrainConfig fields")
    parser.add_argument("--resume", help="resume from a checkpoint of --out: 'latest', a step number or a file")
    parser.add_argument("--tune-encoder", action="store_true", help="also train the image encoder (on pixels, no cache)")
    parser.add_argument("--steps", type=int, help="train exactly this many steps, at least 1 (default: size the run by epochs)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=8e-4 batch_size=32; grad_accum_steps=4 runs each step "
                             "as 4 micro-batches (same update, less memory)")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """LimberTrainConfig from --config, then the options, then key=value overrides (last wins)."""
    from vlbridge.config import load_config, merge, parse_overrides
    from vlbridge.errors import UserError
    from vlbridge.training.limber import LimberTrainConfig

    options: dict = {}
    if args.encoder:
        options["encoder"] = args.encoder
    if args.lm:
        options["lm"] = args.lm
    if args.data:
        options["data"] = {"dataset": args.data}
    if args.tune_encoder:
        options["tune_encoder"] = True
    if args.steps is not None:
        if args.steps < 1:  # steps=0 in a config means "size the run by epochs": not what --steps 0 asks for
            raise UserError(f"--steps must be at least 1 (leave it out to train for `epochs` passes), got {args.steps}")
        options["steps"] = args.steps
    if args.device:
        options["device"] = args.device
    config = merge(load_config(LimberTrainConfig, args.config), options)
    return merge(config, parse_overrides(args.overrides))


def run(args: argparse.Namespace) -> int:
    from vlbridge.errors import UserError
    from vlbridge.io import check_writable_dir
    from vlbridge.runtime import cleanup, init_distributed
    from vlbridge.training.limber import train_limber

    check_writable_dir(args.out, "--out")  # before the LM and the features are loaded
    config = build_config(args)
    if not config.encoder:
        raise UserError("no image encoder given: pass --encoder SPEC (e.g. efficientnet-lite0 or timm:NAME@FILE)")
    env = init_distributed(config.device)
    try:
        result = train_limber(config, args.out, resume=args.resume, env=env)
    finally:
        cleanup(env)
    if env.is_main:
        print(
            f"trained {result.steps} steps, final loss {result.final_loss:.4f} "
            f"({result.samples_per_second:.1f} samples/s); model saved to {result.model_dir}"
        )
    return 0
