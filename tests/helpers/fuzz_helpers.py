"""Helpers for tests/test_fuzz_commands.py: run the `vlbridge` CLI in-process on hostile input.

- `run_cli(capsys, argv, timeout)`: `vlbridge.cli.main(argv)` with stdout / stderr captured and a
  SIGALRM deadline; an exception escaping `main` (what a user would see as a traceback) or a run
  past the deadline (a hang) becomes a failed test that shows the argv.
- `assert_clear_error(result, *names)`: exit code != 0, no traceback, one error line that names
  one of `names` (the argument or file at fault).
- Hostile files: `deep_json`, `long_int_json`, `latin1_vqa_line`, `fifo`.
"""

from __future__ import annotations

import contextlib
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlbridge.cli import main

DEADLINE_S = 30  # a command on a bad input must fail within this (a hang otherwise)


@dataclass
class CliResult:
    """What one in-process CLI run left behind."""

    code: int  # exit code (argparse's SystemExit included)
    out: str  # captured stdout
    err: str  # captured stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if "error:" in line]


class Hang(Exception):
    """Raised by the SIGALRM handler when a command runs past its deadline."""


@contextlib.contextmanager
def deadline(seconds: int):
    def expire(_signum, _frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(capsys, argv: list[str], timeout: int = DEADLINE_S) -> CliResult:
    """Run `vlbridge ARGV` in this process; fail the test on a traceback or a hang."""
    argv = [str(arg) for arg in argv]
    capsys.readouterr()
    try:
        with deadline(timeout):
            code = main(argv)
    except SystemExit as exit_:  # argparse: usage + "error: argument ..."
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Hang as hang:
        pytest.fail(f"vlbridge {' '.join(a[:80] for a in argv)} hung: {hang}")
    except Exception:  # noqa: BLE001 - an escaped exception is what the test looks for
        pytest.fail(f"vlbridge {' '.join(a[:80] for a in argv)} raised a traceback:\n{traceback.format_exc()[-1500:]}")
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_clear_error(result: CliResult, *names: str) -> str:
    """The one error line of a failed run, after checking it names one of `names`."""
    assert result.code != 0, f"expected an error, got exit 0; stdout: {result.out[-300:]}"
    assert "Traceback" not in result.err
    assert len(result.error_lines) == 1, result.err[-600:]
    line = result.error_lines[0]
    assert any(name in line for name in names), f"error line names none of {names}: {line}"
    return line


def no_temporaries(folder: Path) -> list[Path]:
    """Leftover temporary files or folders (`*.tmp`) anywhere under `folder`."""
    return sorted(folder.rglob("*.tmp")) + sorted(folder.rglob(".*.tmp"))


def deep_json(path: Path, depth: int, opener: str = "[") -> Path:
    closer = {"[": "]", "{": "}"}[opener]
    body = '{"a":' * depth + "1" + "}" * depth if opener == "{" else opener * depth + closer * depth
    path.write_text(body, encoding="utf-8")
    return path


def long_int_json(path: Path, digits: int) -> Path:
    path.write_text('{"annotations": [{"image_id": ' + "7" * digits + ', "caption": "a"}], "images": []}', encoding="utf-8")
    return path


def fifo(path: Path) -> Path:
    """A named pipe at `path` (nothing ever writes to it: opening it for reading blocks forever)."""
    import os

    os.mkfifo(path)
    return path
