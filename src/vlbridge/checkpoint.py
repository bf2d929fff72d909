"""Atomic checkpoints that resume exactly: model/optimizer/scheduler state, step and RNG state.

Layout of a run directory:
    run_dir/checkpoints/step-00000100.pt   one file per saved step (torch.save of a dict)
    run_dir/checkpoints/latest             text file naming the newest checkpoint file
Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any moment leaves either the old or the new checkpoint, never a torn one.
`--resume latest` resolves through `find_checkpoint(run_dir, "latest")`.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlbridge.errors import UserError
from vlbridge.io import atomic_torch_save, atomic_write_bytes

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"


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
    """Resolve `which` ('latest', a step number, or a file path) to a checkpoint file, or None."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if which == LATEST:
        pointer = folder / LATEST
        if not pointer.is_file():
            return None
        path = folder / pointer.read_text().strip()
        return path if path.is_file() else None
    if which.isdigit():
        path = folder / f"step-{int(which):08d}.pt"
        return path if path.is_file() else None
    path = Path(which)
    if not path.is_file():
        raise UserError(f"checkpoint {which} does not exist")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict; one clear error if the file is not a vlbridge checkpoint."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{path} is not a vlbridge checkpoint (no 'step' entry)")
    return state
