"""Atomic file writes: every file vlbridge writes appears whole or not at all.

    with atomic_open(path, "w") as handle:        # text or binary ("wb"); temp file, then rename
        handle.write(...)
    atomic_write_text(path, text)                  # one string
    atomic_write_bytes(path, data)                 # one bytes object
    atomic_write_json(path, obj)                   # json.dumps(obj, indent=2)
    atomic_torch_save(path, obj)                   # torch.save
    atomic_save_safetensors(path, tensors, metadata)  # safetensors file
    with atomic_path(path) as tmp: writer(tmp)     # any library that wants a file name
    with atomic_dir(folder) as tmp: write files in tmp  # a whole folder, swapped in by rename
    check_dir_path(out, "--out") / check_file_path(out, "--out")  # the right kind of path (nothing created)
    check_writable_dir(run_dir, "--out")           # before any work: a folder this process can write in
    check_writable_file(out_json, "--out")         # before any work: a file path whose folder is writable

The data goes to a new temporary file beside `path` (`.<name>.<random>.tmp`, created with the
process umask like a plain `open`), is flushed and fsynced, then renamed onto `path`; an error
or a kill before the rename leaves the old file (or none) and removes the temporary one (a kill
-9 can leave it: `remove_stale_temporaries` clears those). A full disk, a read-only file system
or a missing permission becomes one `UserError` naming the path, also where the writing library
hides the errno (torch.save's "unexpected pos", safetensors' "os error 28").

Commands that write check their output location with `check_writable_dir` / `check_writable_file`
before loading models or computing anything: they create and delete a probe file there, which
finds a read-only mount, a missing permission (also for root on a read-only file system) or a
path under a file, and report it in one line.

This is the base layer: it imports nothing of vlbridge but `errors`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vlbridge.errors import UserError

TMP_SUFFIX = ".tmp"  # suffix of every temporary file written here
_WRITE_ERRORS = {  # errno -> what the user is told
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


_NO_SPACE_MARKERS = ("no space left on device", "os error 28", "unexpected pos")  # how torch / safetensors word a full disk
_LOW_SPACE_BYTES = 1 << 20  # free bytes under which a writer's unexplained failure counts as a full disk


def temporary_name(path: Path) -> Path:
    """A fresh hidden temporary file name in `path`'s folder."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path (already created, empty); renamed onto `path` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        if err.errno in _WRITE_ERRORS:
            raise _as_user_error(err, path) from err
        raise
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = not isinstance(err, OSError) and _reports_full_disk(err, tmp.parent)  # before the unlink frees space
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _WRITE_ERRORS:
            raise _as_user_error(err, path) from err
        if full:
            raise UserError(f"cannot write {path}: {_WRITE_ERRORS[errno.ENOSPC]}") from err
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str = "utf-8", newline: str | None = None) -> Iterator[IO]:
    """open() for writing, atomically: the file appears at `path` only when the block ends without error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        text = mode == "w"
        with open(tmp, mode, encoding=encoding if text else None, newline=newline if text else None) as handle:
            yield handle


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, **dumps_kwargs: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of `tensors` (made contiguous, moved to CPU) with string `metadata`."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new empty temporary folder beside `path`; when the block succeeds it replaces `path` whole.

    A kill inside the block leaves `path` as it was (plus a `.NAME.*.tmp` folder that the next
    atomic_dir of the same path deletes); a kill between the two renames of the swap leaves no
    `path` and the previous content in a `.NAME.*.tmp` folder: never a mix of old and new files.
    """
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    with write_errors_as_user_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = temporary_name(path)
        staging.mkdir()
    try:
        yield staging
        with write_errors_as_user_errors(path):
            old = temporary_name(path)
            if path.exists():
                os.replace(path, old)
            os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files a killed writer left in `folder` (not recursive); returns how many."""
    removed = 0
    for leftover in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def write_errors_as_user_errors(path: str | Path) -> Iterator[None]:
    """Around a plain (non-atomic) write of `path`: a full disk or a missing permission becomes one UserError."""
    try:
        yield
    except OSError as err:
        if err.errno in _WRITE_ERRORS:
            raise _as_user_error(err, Path(path)) from err
        raise


def check_dir_path(folder: str | Path, option: str = "--out") -> Path:
    """`folder` if it is a folder or can become one: not a file, no file among its parents (nothing created)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file; expected a folder")
    _check_not_under_a_file(folder, option, "a folder")
    return folder


def check_file_path(path: str | Path, option: str = "--out") -> Path:
    """`path` if a file can be created there: not a folder, no file among its parents (nothing created)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; expected a file name")
    _check_not_under_a_file(path, option, "a file name")
    return path


def _check_not_under_a_file(path: Path, option: str, expected: str) -> None:
    blocking = next((parent for parent in path.absolute().parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{option} {path} lies under a file ({blocking}); expected {expected}")


def check_writable_dir(folder: str | Path, option: str = "--out") -> Path:
    """Create `folder` if needed and prove a file can be written in it; UserError naming `option` if not."""
    folder = check_dir_path(folder, option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / "write-check")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as err:
        reason = _WRITE_ERRORS.get(err.errno, err.strerror or str(err))
        raise UserError(f"{option} {folder} is not writable: {reason}") from err
    return folder


def check_writable_file(path: str | Path, option: str = "--out") -> Path:
    """`path` can be (re)written: not a folder, and its folder is writable (created if needed)."""
    path = check_file_path(path, option)
    check_writable_dir(path.parent, option)
    return path


def _reports_full_disk(err: BaseException, folder: Path) -> bool:
    """Whether a writer's non-OSError failure means the disk is full (its text says so, or hardly any space is left)."""
    text = str(err).lower()
    if not any(marker in text for marker in _NO_SPACE_MARKERS):
        return False
    if "unexpected pos" not in text:
        return True
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _LOW_SPACE_BYTES


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_user_error(err: OSError, path: Path) -> UserError:
    """The one-line UserError for an errno of _WRITE_ERRORS (space, permissions)."""
    return UserError(f"cannot write {path}: {_WRITE_ERRORS[err.errno]}")
