"""Tests for vlbridge.config: file + override loading, type checks, atomic save."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from vlbridge.config import load_config, parse_overrides, save_config, to_dict
from vlbridge.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-3  # learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas


@dataclass
class Run:
    name: str = "run"  # run name
    steps: int = 10  # optimizer steps
    out: Path | None = None  # output folder
    optim: Optim = field(default_factory=Optim)  # optimizer settings


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.5\n")
    config = load_config(Run, path, ["optim.lr=3e-4", "name=x", "out=/tmp/o"])
    assert config.steps == 20
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.optim.betas == [0.9, 0.95]
    assert config.name == "x" and config.out == Path("/tmp/o")


def test_json_file_and_int_to_float(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"optim": {"lr": 1}}')
    assert load_config(Run, path).optim.lr == 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [(["nosuch=1"], "unknown config key 'nosuch'"), (["steps=abc"], "steps must be int"),
     (["optim.lr=[1]"], "optim.lr must be float"), (["steps"], "key=value"), (["steps=true"], "must be an int")],
)
def test_bad_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        load_config(Run, None, overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(Run, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Run, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(Run, scalar)


def test_save_round_trip(tmp_path):
    config = load_config(Run, None, ["steps=7", "out=/x"])
    save_config(config, tmp_path / "r" / "config.yaml")
    assert not list((tmp_path / "r").glob("*.tmp"))
    again = load_config(Run, tmp_path / "r" / "config.yaml")
    assert to_dict(again) == to_dict(config)
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["out"] == "/x"


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=2.5"]) == {"a": {"b": 1, "c": "x"}, "d": 2.5}
