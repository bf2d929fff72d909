"""Content-hashed stage cache for the study: a stage reruns only when its inputs change.

Each stage's output lives in `cache_root/<stage>/<key>/` where `key` is a hash of everything
the stage depends on (its config section, the keys of the stages it reads, the vlbridge
version). A stage is done when its folder holds `DONE`; the folder is built under a temporary
name and renamed into place, so a killed run never leaves a half-finished stage that looks done.

Several processes may share one cache (two `vlbridge study` runs on one folder): a stage is
built while holding an exclusive lock on `cache_root/<stage>/.<key>.lock` (`fcntl.flock`, so
the kernel drops it when its holder dies). A second process asking for the same stage waits
for the lock, then finds `DONE` and reuses the stage instead of building it again. Each build
writes to its own temporary folder `.<key>.<pid>-<random>.tmp`, so two builders never share
one and a killed builder's leftovers are never renamed into place: whoever takes the lock next
deletes them (while the lock is held no one else builds that stage, so every other temporary
folder of that key belongs to a builder that died). The lock files stay (tiny, hidden):
removing one while another process waits on it would let two builders in.

Under torchrun (`run(..., env=)`) only rank 0 touches locks, `DONE` and the rename; the other
ranks receive rank 0's decision and temporary folder, so no two ranks write one file and no rank
waits on a lock another rank of the same job holds. The cache folder must be one all ranks see
(one machine, or a shared file system).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vlbridge import __version__

if TYPE_CHECKING:
    from vlbridge.runtime import DistEnv

try:
    import fcntl
except ImportError:  # not a POSIX system: no locking (one study per cache folder at a time)
    fcntl = None

log = logging.getLogger(__name__)

DONE = "DONE"
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock


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
    reused: bool  # True when served from the cache (also when another process built it while this one waited)
    seconds: float  # wall time spent building in this run (0 when reused)


class StageCache:
    """Runs stages at most once per content key, also across processes sharing `root`."""

    def __init__(self, root: str | Path, force: bool = False):
        self.root = Path(root)  # cache root folder
        self.force = force  # recompute every stage even when cached

    def path(self, name: str, key: str) -> Path:
        """The folder stage (name, key) lives in once built."""
        return self.root / name / key

    def is_done(self, name: str, key: str) -> bool:
        """True when (name, key) is built and `run` would reuse it (never under `force`)."""
        return not self.force and _identity(self.path(name, key) / DONE) is not None

    def run(self, name: str, key: str, build: Callable[[Path], None], env: DistEnv | None = None,
            group=None) -> StageResult:
        """Return the cached output of (name, key), calling build(tmp_dir) first if needed.

        With `force`, the stage is rebuilt unless another process finished building it while
        this call waited for the lock (then that fresh build is reused).

        With `env` (a torchrun world), every rank calls this and `build` runs on every rank (a
        DDP training that writes from rank 0): rank 0 alone takes the lock, decides whether to
        build and makes the temporary folder, whose path every rank receives (`group`: the
        collectives' process group); rank 0 installs the folder once every rank's build returned.
        """
        ranks = env is not None and env.distributed  # every rank of a torchrun world builds
        main = not ranks or env.is_main
        final = self.path(name, key)
        with self._claim(name, key) if main else contextlib.nullcontext() as tmp:
            tmp = _from_rank0(tmp, env, group) if ranks else tmp
            if tmp is None:
                return StageResult(name, key, final, reused=True, seconds=0.0)
            start = time.perf_counter()
            try:
                build(tmp)
                _wait_for_ranks(env, group, ranks)  # every rank's part of the build is written
                if main:
                    (tmp / DONE).write_text(key)
                    _install(tmp, final)
            except BaseException:
                if main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
        _wait_for_ranks(env, group, ranks)  # the stage is in place before any rank reads it
        return StageResult(name, key, final, reused=False, seconds=time.perf_counter() - start)

    @contextlib.contextmanager
    def _claim(self, name: str, key: str) -> Iterator[Path | None]:
        """With the stage's lock held: a fresh temporary folder to build (name, key) in, or None when
        the stage is done (and not forced, or rebuilt by another process while this one waited)."""
        folder = self.root / name
        final = folder / key
        done_before = _identity(final / DONE)
        if done_before is not None and not self.force:
            log.info("stage %s: reusing cached result %s", name, final)
            yield None
            return
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder / f".{key}.lock", name):
            done_now = _identity(final / DONE)
            if done_now is not None and (not self.force or done_now != done_before):
                log.info("stage %s: another process built it while this one waited; reusing %s", name, final)
                yield None
                return
            _remove_leftovers(folder, key)
            tmp = folder / f".{key}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
            tmp.mkdir()
            yield tmp


def _from_rank0(value, env: DistEnv, group):
    """Rank 0's `value` on every rank (torch is imported only by runs under torchrun)."""
    from vlbridge.runtime import broadcast_object

    return broadcast_object(value, env, group)


def _wait_for_ranks(env: DistEnv | None, group, ranks: bool) -> None:
    if ranks:
        from vlbridge.runtime import barrier

        barrier(env, group)


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of `path`, None when it is not a file: tells a rebuilt DONE from the one seen earlier."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


@contextlib.contextmanager
def _exclusive(lock_path: Path, name: str) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created if missing) for the block; wait for it if taken."""
    if fcntl is None:
        yield
        return
    with open(lock_path, "a+b") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("stage %s: another process is building it; waiting for %s", name, lock_path)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in _NO_LOCKING:
                raise
            log.warning("stage %s: %s cannot be locked (%s); building without a lock: "
                        "run one study at a time on this cache folder", name, lock_path, err.strerror)
        yield  # closing the file releases the lock


def _remove_leftovers(folder: Path, key: str) -> None:
    """Delete temporary folders of `key` that builders which died left (called with the lock held)."""
    stem = glob.escape(f".{key}")
    for pattern in (f"{stem}.tmp", f"{stem}.*.tmp", f"{stem}.*.old"):
        for leftover in folder.glob(pattern):
            log.info("removing %s, left by a build that did not finish", leftover)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` to `final`; an existing `final` (forced rebuild) is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
