"""Tests for `scripts/install-assets.sh` (run by `make setup`) with a fake `npm` and a temporary cache.

The Debian and PyPI assets are whatever this machine has; the test only needs Twemoji to be the
missing one, so it points the cache at a temporary folder and pre-creates a converted SmolLM2
there (the real conversion is covered in test_assets_smollm2.py). Marked `assets`: it relies on the
other assets being installed so that the script has nothing else to do.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlbridge import assets

from test_assets import _fake_npm, _tiny_twemoji_tgz

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-assets.sh"

pytestmark = pytest.mark.assets


def _prepare_world(tmp_path):
    others = [name for name in assets.REGISTRY if name != "twemoji"]
    missing = [name for name in others if assets.get_asset(name).locate() is None]
    if missing:
        pytest.skip(assets.get_asset(missing[0]).missing_message())
    cache = tmp_path / "cache"
    converted = cache / "assets" / assets.SMOLLM2_DIRNAME
    converted.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (converted / name).write_text("{}")
    return cache


def _run(tmp_path, cache, npm_bin):
    env = {**os.environ, assets.CACHE_ENV: str(cache), "PATH": f"{npm_bin}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(SCRIPT), sys.executable], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_script_installs_missing_twemoji_then_is_idempotent(tmp_path):
    cache = _prepare_world(tmp_path)
    (tmp_path / "src").mkdir()
    _fake_npm(tmp_path / "bin", _tiny_twemoji_tgz(tmp_path / "src"))
    first = _run(tmp_path, cache, tmp_path / "bin")
    assert first.returncode == 0, first.stderr
    assert "missing before install: twemoji" in first.stdout
    assert "npm pack --silent emoji-datasource-twitter@16.0.0" in first.stdout
    assert (cache / "assets" / "twemoji" / "emoji.json").is_file()
    assert "WARNING" not in first.stderr and "is missing" not in first.stderr
    table = [line.split()[:2] for line in first.stdout.splitlines() if line.split()[:1] and line.split()[0] in assets.REGISTRY]
    assert table == [[name, "present"] for name in assets.REGISTRY]

    second = _run(tmp_path, cache, tmp_path / "no-npm-needed")
    assert second.returncode == 0 and "all assets present" in second.stdout


def test_script_warns_with_install_command_and_exits_zero_when_npm_fails(tmp_path, monkeypatch):
    cache = _prepare_world(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "npm").write_text("#!/bin/sh\necho 'npm ERR! network unreachable' >&2\nexit 1\n")
    (tmp_path / "bin" / "npm").chmod(0o755)
    result = _run(tmp_path, cache, tmp_path / "bin")
    assert result.returncode == 0
    monkeypatch.setenv(assets.CACHE_ENV, str(cache))  # the message names this cache
    message = assets.get_asset("twemoji").missing_message()
    assert f"WARNING: npm failed: {message}" in result.stderr
    assert f"warning: {message}" in result.stderr  # the table's line, same text
    assert "assets still missing: twemoji" in result.stderr
    assert list((cache / "assets").iterdir()) == [cache / "assets" / assets.SMOLLM2_DIRNAME]  # no debris
