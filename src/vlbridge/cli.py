"""The `vlbridge` command line: builds the argparse tree from `vlbridge.commands`, configures
logging, runs the chosen command and turns user errors into one clear line.

Printing of results happens in the command modules; library code only logs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from vlbridge import __version__
from vlbridge.errors import UserError
from vlbridge.validate import check_arguments

log = logging.getLogger(__name__)

GROUP_HELP = {
    "data": "make, convert and filter datasets (shapes world, webdataset export, query-word filter)",
    "train": "train a CLIP or a LiMBeR projector",
    "eval": "evaluate a CLIP: zero-shot, linear probe, retrieval, robustness",
    "score": "score captions (CIDEr-D, BLEU, ROUGE-L, CLIP-S) and VQA answers",
    "index": "build, grow and query a CLIP search index over a dataset (served by `vlbridge serve --index`)",
}


def _command_modules():
    import vlbridge.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"vlbridge.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    """The full parser: top-level commands plus one sub-parser per command group."""
    parser = argparse.ArgumentParser(
        prog="vlbridge",
        description="CLIP and LiMBeR: train, evaluate and compare vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"vlbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for module in _command_modules():
        group = getattr(module, "GROUP", None)
        if group is None:
            module.register(top)
            continue
        if group not in groups:
            group_parser = top.add_parser(group, help=GROUP_HELP.get(group, ""), description=GROUP_HELP.get(group))
            groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            group_parser.set_defaults(func=_group_help(group_parser))
        module.register(groups[group])
    return parser


def _group_help(group_parser: argparse.ArgumentParser):
    def show(_args) -> int:
        group_parser.print_help()
        return 2

    return show


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        check_arguments(args)  # sizes, rates and output paths, before any work starts
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"vlbridge: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # TrainingInterrupted: 128 + the signal number
    except FileNotFoundError as err:
        print(f"vlbridge: error: file not found: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlbridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
