"""`vlbridge caption`: caption images with a trained LiMBeR model.

    vlbridge caption photo.png --model runs/limber/model
    vlbridge caption a.png b.png --model CKPT --strategy beam --beams 5
    vlbridge caption *.png --model CKPT --strategy sample --top-p 0.9 --temperature 0.7

The prompt after the image prefix is the checkpoint's (`A picture of` by default) unless
--prompt is given. With one image the caption alone is printed; with several, one line per
image: `IMAGE<TAB>caption`, in the order given.
"""

from __future__ import annotations

import argparse
import logging

from vlbridge.errors import BadInputError
from vlbridge.lines import field

GROUP = None
log = logging.getLogger(__name__)


def add_generation_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """Decoding options shared by `caption` and `vqa`."""
    from vlbridge.models.generation_strategies import STRATEGIES  # torch-free, for --help

    group = parser.add_argument_group("decoding")
    group.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="decoding strategy (default greedy)")
    group.add_argument("--beams", type=int, default=3, metavar="N", help="beam width for --strategy beam (default 3)")
    group.add_argument("--length-penalty", type=float, default=1.0, help="beam length penalty (default 1.0)")
    group.add_argument("--top-p", type=float, default=0.9, metavar="P", help="nucleus mass for --strategy sample (default 0.9)")
    group.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default 1.0)")
    group.add_argument("--seed", type=int, default=0, help="seed for sampling (and VQA shot choice); default 0")
    group.add_argument(
        "--max-new-tokens", type=int, default=max_new_tokens, metavar="N", help=f"most tokens to generate (default {max_new_tokens})"
    )
    parser.add_argument("--model", required=True, metavar="CKPT", help="LiMBeR model: a `train limber` run dir or its model/ folder")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")


def generation_config(args):
    from vlbridge.models.generation import GenerationConfig

    config = GenerationConfig(
        strategy=args.strategy,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.beams,
        length_penalty=args.length_penalty,
        top_p=args.top_p,
        temperature=args.temperature,
        seed=args.seed,
    )
    config.validate()
    return config


def load_model(args, with_encoder: bool = True):
    """The checkpoint named by --model on the --device (a run dir or its model/; tuned encoder weights included)."""
    from vlbridge.runtime import resolve_device
    from vlbridge.models.limber import load_trained_limber

    return load_trained_limber(args.model, device=resolve_device(args.device), with_encoder=with_encoder)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption images with a trained LiMBeR model",
        description=(
            "Caption each IMAGE with a LiMBeR model: the frozen image encoder's features go through the "
            "trained projector into the frozen LM, followed by the prompt; the generated text up to the "
            "first newline is the caption. One image: prints the caption; several: IMAGE<TAB>caption lines."
        ),
        epilog="Example: vlbridge caption photo.png --model runs/limber/model --strategy beam --beams 3",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (png, jpg, ...)")
    parser.add_argument("--prompt", default=None, help="text after the image prefix (default: the checkpoint's, 'A picture of')")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images captioned together (default 8)")
    add_generation_options(parser, max_new_tokens=30)
    parser.set_defaults(func=run)


def read_images(paths: list[str]):
    """Open every image first, so a bad file stops the command before any model work."""
    from vlbridge.data.records import BadImage, open_image

    images = []
    for path in paths:
        try:
            images.append(open_image(path))
        except BadImage as err:
            raise BadInputError(f"{err}; expected a readable image file") from err
    return images


def run(args) -> int:
    from tqdm.auto import tqdm

    from vlbridge.api import LimberModel

    if args.batch_size < 1:
        raise BadInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    config = generation_config(args)
    images = read_images(args.images)
    model = load_model(args)
    if model.encoder is None:
        raise BadInputError(f"checkpoint {args.model} names no image encoder, so it cannot caption image files")
    limber = LimberModel(model, name=str(args.model))  # the Python API the server and notebooks use too
    captions: list[str] = []
    starts = range(0, len(images), args.batch_size)
    for start in tqdm(starts, desc="caption", disable=len(starts) < 2, leave=False):
        captions.extend(limber.caption(images[start : start + args.batch_size], prompt=args.prompt, config=config))
    if len(args.images) == 1:
        print(captions[0])
    else:
        for path, caption in zip(args.images, captions):
            print(f"{field(path)}\t{field(caption)}")  # one line per image, whatever the file name holds
    return 0
