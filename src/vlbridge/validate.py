"""One place that checks the values users give: sizes, rates and output paths.

    check_size(name, value)               a whole number >= 1 (a batch size, a count, steps)
    check_non_negative(name, value)       a whole number >= 0 (workers, shots)
    check_positive_number(name, value)    a finite number > 0 (a learning rate, C, a temperature)
    check_finite(name, value)             a finite number (no NaN, no infinity)
    (--out / --cache: vlbridge.io.check_file_path / check_dir_path, not a folder / not a file, not under a file)
    check_device(preference)              a --device this machine has (cuda without a GPU refused)
    check_arguments(args)                 the above, applied to a parsed CLI namespace by argument name

Every check raises one `UserError` that names the argument and what was expected, so a bad value
fails before any work starts. This is a base layer: it imports nothing of vlbridge but `errors` and `io` (and
`runtime`, which imports torch, only inside `check_device`, so `--help` stays torch-free).
"""

from __future__ import annotations

import math
from pathlib import Path

from vlbridge.errors import UserError
from vlbridge.io import check_dir_path, check_file_path

MAX_COUNT = 100_000_000  # largest count a user may ask for (n=, --n, --steps): beyond it a run never ends

SIZE_ARGUMENTS = (  # CLI arguments (argparse dest) that are whole numbers >= 1 wherever they appear
    "batch_size", "shard_size", "chunk_size", "part_size", "n", "n_train", "n_images", "steps", "beams",
    "max_new_tokens", "k", "c_steps", "max_iter", "max_batch",
)
NON_NEGATIVE_ARGUMENTS = ("shots", "refine_per_decade", "batch_window_ms", "workers")  # whole numbers (or ms) >= 0
POSITIVE_NUMBER_ARGUMENTS = ("c_min", "c_max", "temperature", "max_request_mb")  # finite numbers > 0
FINITE_ARGUMENTS = ("length_penalty",)  # any finite number
FRACTION_ARGUMENTS = ("val_fraction",)  # numbers in (0, 1); --top-p / --top-m / --threads keep their own checks
OUTPUT_DIR_ARGUMENTS = ("cache", "feature_cache")  # folders vlbridge writes into; `out` is declared per command


def check_size(name: str, value: object, upper: int = MAX_COUNT) -> int:
    """`value` if it is a whole number from 1 to `upper`, else a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise UserError(f"{name} must be a whole number from 1 to {upper:,}, got {_short(value)}")
    return value


def check_non_negative(name: str, value: object) -> int | float:
    """`value` if it is a finite number >= 0, else a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a number >= 0, got {_short(value)}")
    return value


def check_positive_number(name: str, value: object) -> float:
    """`value` if it is a finite number > 0 (NaN and infinity refused), else a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {_short(value)}")
    return value


def check_finite(name: str, value: object) -> float:
    """`value` if it is a finite number, else a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {_short(value)}")
    return value


def check_fraction(name: str, value: object, include_one: bool = True) -> float:
    """`value` if it lies in (0, 1] ((0, 1) without `include_one`), else a UserError naming `name`."""
    check_finite(name, value)
    if not (0 < value < 1 or (include_one and value == 1)):
        upper = "1]" if include_one else "1)"
        raise UserError(f"{name} must be a number in (0, {upper}, got {_short(value)}")
    return value


def check_arguments(args: object) -> None:
    """Check every argument of a parsed CLI namespace whose name says what it holds (None = not given).

    A command declares how its `--out` is used with `parser.set_defaults(out_kind="file")` (or
    "dir"); without a declaration `--out` is a folder.
    """
    values = vars(args)
    checks = [(SIZE_ARGUMENTS, check_size), (NON_NEGATIVE_ARGUMENTS, check_non_negative),
              (POSITIVE_NUMBER_ARGUMENTS, check_positive_number), (FINITE_ARGUMENTS, check_finite)]
    for names, check in checks:
        for name in names:
            if values.get(name) is not None:
                check(_flag(name), values[name])
    if values.get("val_fraction") is not None:
        check_fraction("--val-fraction", values["val_fraction"], include_one=False)
    if values.get("c_min") is not None and values.get("c_max") is not None and values["c_min"] > values["c_max"]:
        raise UserError(f"--c-min ({values['c_min']:g}) must not exceed --c-max ({values['c_max']:g})")
    if isinstance(values.get("device"), str):
        check_device(values["device"])
    for name in OUTPUT_DIR_ARGUMENTS:
        if values.get(name):
            check_dir_path(values[name], _flag(name))
    if isinstance(values.get("out"), (str, Path)) and values["out"]:
        check_out = check_file_path if values.get("out_kind") == "file" else check_dir_path
        check_out(values["out"], "--out")


def check_device(preference: str) -> None:
    """UserError for a --device that names no device or a GPU this machine lacks (torch imported only here)."""
    from vlbridge.runtime import resolve_device

    resolve_device(preference)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
