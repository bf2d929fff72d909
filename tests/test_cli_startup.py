"""The CLI starts light: `--help` pages and `vlbridge score captions` never import torch.

Each check runs `vlbridge.cli.main(argv)` in a fresh interpreter (a module imported once stays in
`sys.modules`, so only a new process shows what one command imports) and reports which heavy
packages ended up imported. Commands import model, data and training code inside the function
that runs them; what `--help` shows (choices, defaults) comes from torch-free modules.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from vlbridge.cli import build_parser

HEAVY = ("torch", "transformers", "open_clip", "timm", "PIL")

CHILD = """
import contextlib, io, json, sys
from vlbridge.cli import main
argv = json.loads(sys.argv[1])
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
heavy = [name for name in json.loads(sys.argv[2]) if name in sys.modules]
print(json.dumps({"code": code, "heavy": heavy, "out": out.getvalue(), "err": err.getvalue()}))
"""


def run_cli(argv: list[str]) -> dict:
    """{"code", "heavy", "out", "err"} of `vlbridge.cli.main(argv)` run in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every registered command and command group, e.g. ("caption",), ("eval",), ("eval", "probe")."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(command_paths(sub, (*prefix, name)))
    return paths


COMMANDS = command_paths(build_parser())


def test_every_command_is_checked():
    names = {path[0] for path in COMMANDS}
    assert {"caption", "vqa", "extract", "serve", "study", "eval", "train", "score", "data", "index"} <= names
    assert ("score", "captions") in COMMANDS and ("eval", "probe") in COMMANDS


def test_top_level_help_imports_no_torch():
    result = run_cli(["--help"])
    assert result["code"] == 0 and "COMMAND" in result["out"]
    assert result["heavy"] == []


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_help_imports_no_torch(path):
    result = run_cli([*path, "--help"])
    assert result["code"] == 0, result["err"]
    assert result["out"].startswith(f"usage: vlbridge {' '.join(path)}")
    assert result["heavy"] == []


@pytest.mark.parametrize("tokenize", ["ptb", "none"])
def test_score_captions_run_imports_no_torch(tmp_path, tokenize):
    refs = {
        "1": ["A red circle above a blue square.", "a circle over a square"],
        "2": ["Two green triangles.", "two triangles, both green"],
        "3": ["A yellow star next to a cross.", "a star and a cross"],
    }
    cands = {"1": "a red circle above a square", "2": "two green triangles", "3": "a star"}
    domains = {"1": "in", "2": "in", "3": "out"}
    source = tmp_path / "captions.json"
    source.write_text(json.dumps({"refs": refs, "cands": cands, "domains": domains}), encoding="utf-8")
    out = tmp_path / "scores.json"
    result = run_cli(["score", "captions", str(source), "--tokenize", tokenize, "--out", str(out)])
    assert result["code"] == 0, result["err"]
    assert "3 images" in result["out"] and "CIDEr-D" in result["out"]
    scores = json.loads(out.read_text(encoding="utf-8"))
    assert scores["num_images"] == 3 and scores["tokenize"] == tokenize and set(scores["by_domain"]) == {"in", "out", "entire"}
    assert result["heavy"] == []
