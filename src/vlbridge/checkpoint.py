"""Atomic checkpoints that resume exactly: model/optimizer/scheduler state, step and RNG state.

Layout of a run directory:
    run_dir/checkpoints/step-00000100.pt   one file per saved step (torch.save of a dict)
    run_dir/checkpoints/latest             text file naming the newest checkpoint file
Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any moment leaves either the old or the new checkpoint, never a torn one (only a
`.*.tmp` file, which `remove_stale_checkpoint_temporaries` deletes when the next run starts).

`--resume latest` resolves through `load_latest_checkpoint(run_dir)`: the file `latest` names
if it loads; otherwise (the pointer is missing, unreadable, garbled, names a missing file or
one that does not load) the newest step-*.pt file that loads, with a warning; and when there
are checkpoint files but none loads, a UserError: a run must not start from step 0 and write
over them. `find_checkpoint(run_dir, "latest")` falls back the same way without loading.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlbridge.errors import UserError
from vlbridge.io import atomic_torch_save, atomic_write_bytes, remove_stale_temporaries

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
_STEP_FILE = re.compile(r"step-(\d+)\.pt")  # the name save_checkpoint gives a step's file


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the generators back to `state` (its tensors may have been loaded onto a GPU: they go back to the CPU)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep_checkpoints: int = 3) -> Path:
    """Save `state` (+ step, RNG state) as step-XXXXXXXX.pt, point `latest` at it, keep the newest `keep_checkpoints` (0: all)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    path = folder / f"step-{step:08d}.pt"
    atomic_torch_save(path, {**state, "step": step, "rng": capture_rng_state()})
    atomic_write_bytes(folder / LATEST, path.name.encode())
    if keep_checkpoints > 0:
        for old in sorted(folder.glob("step-*.pt"))[:-keep_checkpoints]:
            old.unlink(missing_ok=True)
    log.info("saved checkpoint %s", path)
    return path


def find_checkpoint(run_dir: str | Path, which: str = LATEST) -> Path | None:
    """Resolve `which` ('latest', a step number, or a file path) to a checkpoint file, or None.

    'latest' is the file the `latest` pointer names or, when the pointer cannot be used, the
    newest step-*.pt file (a warning says so); the file is not loaded here (see load_latest_checkpoint).
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    if which == LATEST:
        path, problem = _read_pointer(folder)
        if path is not None:
            return path
        newest = _step_files(folder)[:1]
        if newest:
            log.warning("%s %s: using %s, the newest checkpoint file", folder / LATEST, problem, newest[0].name)
            return newest[0]
        return None
    if which.isdigit():
        path = folder / f"step-{int(which):08d}.pt"
        return path if path.is_file() else None
    path = Path(which)
    if not path.is_file():
        raise UserError(f"checkpoint {which} does not exist")
    return path


def load_latest_checkpoint(run_dir: str | Path,
                           map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint of `run_dir` that loads; None when it has no checkpoint files.

    The file `latest` names comes first; if the pointer is missing, unreadable, garbled or names
    a file that is missing or does not load, the step-*.pt files are tried newest step first and
    a one-line warning names the one used. If there are checkpoint files but none loads, a
    UserError naming the folder: starting from step 0 would write over them.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    pointed, problem = _read_pointer(folder)
    broken: list[Path] = []
    if pointed is not None:
        try:
            return pointed, load_checkpoint(pointed, map_location)
        except UserError:
            broken.append(pointed)
            problem = f"names {pointed.name}, which cannot be loaded"
    for path in _step_files(folder):
        if path in broken:
            continue
        try:
            state = load_checkpoint(path, map_location)
        except UserError:
            broken.append(path)
            continue
        others = [p.name for p in broken if p != pointed]
        skipped = f" (skipped {', '.join(others)}: cannot be loaded)" if others else ""
        log.warning("%s %s: resuming from %s, the newest checkpoint that loads%s",
                    folder / LATEST, problem, path.name, skipped)
        return path, state
    if broken:
        raise UserError(
            f"no checkpoint in {folder} can be loaded ({', '.join(p.name for p in broken)}); refusing to start "
            f"from step 0 over them: move them away to start afresh, or resume from another checkpoint file"
        )
    if problem != "is missing":
        log.warning("%s %s and there is no checkpoint file: starting from step 0", folder / LATEST, problem)
    return None


def remove_stale_checkpoint_temporaries(run_dir: str | Path) -> int:
    """Delete the `.*.tmp` files a killed checkpoint write left in run_dir/checkpoints (logged); returns how many."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    removed = remove_stale_temporaries(folder) if folder.is_dir() else 0
    if removed:
        log.info("removed %d unfinished checkpoint file(s) (*.tmp) a killed run left in %s", removed, folder)
    return removed


def _read_pointer(folder: Path) -> tuple[Path | None, str]:
    """(the file `latest` names, "") or (None, why the pointer cannot be used: "is missing", "is empty", ...)."""
    pointer = folder / LATEST
    try:
        raw = pointer.read_bytes()
    except FileNotFoundError:
        return None, "is missing"
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "is garbled (not text)"
    if not name:
        return None, "is empty"
    if "\x00" in name or name in (".", "..") or Path(name).name != name:
        return None, f"is garbled (names {name[:60]!r}, not a file in {folder})"
    path = folder / name
    if not path.is_file():
        return None, f"names {name[:60]!r}, which does not exist"
    return path, ""


def _step_files(folder: Path) -> list[Path]:
    """The step-XXXXXXXX.pt files in `folder`, highest step first."""
    steps = []
    for path in folder.glob("step-*.pt"):
        match = _STEP_FILE.fullmatch(path.name)
        if match and path.is_file():
            steps.append((int(match.group(1)), path))
    return [path for _, path in sorted(steps, reverse=True)]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict; one clear error if the file is not a vlbridge checkpoint."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{path} is not a vlbridge checkpoint (no 'step' entry)")
    return state
