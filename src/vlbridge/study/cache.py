"""Content-hashed stage cache for the study: a stage reruns only when its inputs change.

Each stage's output lives in `cache_root/<stage>/<key>/` where `key` is a hash of everything
the stage depends on (its config section, the keys of the stages it reads, the vlbridge
version). A stage is done when its folder holds `DONE`; the folder is built under a temporary
name and renamed into place, so a killed run never leaves a half-finished stage that looks done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlbridge import __version__

log = logging.getLogger(__name__)

DONE = "DONE"


def content_key(*parts: Any) -> str:
    """Stable 16-hex-digit hash of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class StageResult:
    """Where a stage's output lives and whether this run computed it."""

    name: str  # stage name, e.g. "clip"
    key: str  # content hash of the stage's inputs
    path: Path  # folder holding the stage's outputs
    reused: bool  # True when served from the cache
    seconds: float  # wall time spent in this run (≈0 when reused)


class StageCache:
    """Runs stages at most once per content key."""

    def __init__(self, root: str | Path, force: bool = False):
        self.root = Path(root)  # cache root folder
        self.force = force  # recompute every stage even when cached

    def run(self, name: str, key: str, build: Callable[[Path], None]) -> StageResult:
        """Return the cached output of (name, key), calling build(tmp_dir) first if needed."""
        final = self.root / name / key
        if (final / DONE).is_file() and not self.force:
            log.info("stage %s: reusing cached result %s", name, final)
            return StageResult(name, key, final, reused=True, seconds=0.0)
        tmp = self.root / name / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        build(tmp)
        (tmp / DONE).write_text(key)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return StageResult(name, key, final, reused=False, seconds=time.perf_counter() - start)
