"""Atomic file writes: every file vlbridge writes appears whole or not at all.

    with atomic_open(path, "w") as handle:        # text or binary ("wb"); temp file, then rename
        handle.write(...)
    atomic_write_text(path, text)                  # one string
    atomic_write_bytes(path, data)                 # one bytes object
    atomic_write_json(path, obj)                   # json.dumps(obj, indent=2)
    atomic_torch_save(path, obj)                   # torch.save
    atomic_save_safetensors(path, tensors, metadata)  # safetensors file
    with atomic_path(path) as tmp: writer(tmp)     # any library that wants a file name

The data goes to a new temporary file beside `path` (`.<name>.<random>.tmp`, created with the
process umask like a plain `open`), is flushed and fsynced, then renamed onto `path`; an error
or a kill before the rename leaves the old file (or none) and removes the temporary one (a kill
-9 can leave it: `remove_stale_temporaries` clears those). A full disk, a read-only file system
or a missing permission becomes one `UserError` naming the path.

This is the base layer: it imports nothing of vlbridge but `errors`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
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
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _WRITE_ERRORS:
            raise _as_user_error(err, path) from err
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


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files a killed writer left in `folder` (not recursive); returns how many."""
    removed = 0
    for leftover in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_user_error(err: OSError, path: Path) -> UserError:
    """The one-line UserError for an errno of _WRITE_ERRORS (space, permissions)."""
    return UserError(f"cannot write {path}: {_WRITE_ERRORS[err.errno]}")
