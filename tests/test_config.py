"""Tests for vlbridge.config: file + override loading, type checks, atomic save, renamed keys."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from vlbridge.config import Renamed, from_dict, load_config, merge, parse_overrides, rename_keys, save_config, to_dict
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


# ------------------------------------------------------------------ renamed keys


@dataclass
class NewOptim:
    lr: float = 1e-3  # learning rate
    clip: float | None = 1.0  # clipping norm (None: off)
    RENAMED_KEYS: ClassVar[dict] = {"max_norm": Renamed("clip", lambda v: None if v == 0 else v)}


@dataclass
class NewRun:
    steps: int = 10  # optimizer steps
    accum: int = 1  # micro-batches
    keep: int = 2  # checkpoints kept
    optim: NewOptim = field(default_factory=NewOptim)  # optimizer settings
    RENAMED_KEYS: ClassVar[dict] = {"keep_last": "keep", "optim.accum_steps": "accum", "learning_rate": "optim.lr"}


@dataclass
class Outer:
    run: NewRun = field(default_factory=NewRun)  # a config nested in another one
    name: str = "x"  # a plain field


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which renames were already warned about in this process."""
    monkeypatch.setattr("vlbridge.config._warned_renames", set())


def rename_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_old_keys_land_in_the_new_ones_with_one_warning_each(fresh_warnings, caplog):
    old = {"keep_last": 5, "optim": {"accum_steps": 3, "max_norm": 0}, "learning_rate": 0.5}
    config = from_dict(NewRun, old)
    assert (config.keep, config.accum, config.optim.lr, config.optim.clip) == (5, 3, 0.5, None)  # 0 meant "off"
    assert old == {"keep_last": 5, "optim": {"accum_steps": 3, "max_norm": 0}, "learning_rate": 0.5}  # input untouched
    assert from_dict(NewRun, {"optim": {"max_norm": 2.0}}).optim.clip == 2.0
    from_dict(NewRun, old)  # the same keys again: no new warnings
    assert sorted(rename_warnings(caplog)) == [
        "config key keep_last is deprecated: it is now keep",
        "config key learning_rate is deprecated: it is now optim.lr",
        "config key optim.accum_steps is deprecated: it is now accum",
        "config key optim.max_norm is deprecated: it is now optim.clip",
    ]


def test_old_keys_work_in_files_overrides_and_nested_sections(fresh_warnings, tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  keep_last: 4\n  optim:\n    accum_steps: 2\n")
    config = load_config(Outer, path, ["run.optim.max_norm=0.5", "run.learning_rate=0.25"])
    assert (config.run.keep, config.run.accum, config.run.optim.clip, config.run.optim.lr) == (4, 2, 0.5, 0.25)
    assert "config key run.optim.accum_steps is deprecated: it is now run.accum" in rename_warnings(caplog)
    merged = merge(NewRun(), {"keep_last": 9})  # merge: the old key overrides the new key's current value
    assert merged.keep == 9
    assert merge(merged, {"keep": 1}).keep == 1


def test_old_and_new_name_together_is_a_user_error(fresh_warnings):
    with pytest.raises(UserError, match=r"config keys keep_last \(the old name\) and keep are both given; keep only keep"):
        from_dict(NewRun, {"keep_last": 1, "keep": 2})
    with pytest.raises(UserError, match=r"config keys optim.accum_steps \(the old name\) and accum are both given"):
        load_config(NewRun, None, ["optim.accum_steps=2", "accum=2"])
    with pytest.raises(UserError, match=r"config keys run.optim.max_norm \(the old name\) and run.optim.clip are both given"):
        load_config(Outer, None, ["run.optim.max_norm=1", "run.optim.clip=1"])


def test_rename_keys_maps_a_saved_config_silently(fresh_warnings, caplog):
    saved = {"run": {"steps": 3, "keep_last": 1, "optim": {"lr": 0.1, "max_norm": 0, "accum_steps": 4}}, "name": "y"}
    renamed = rename_keys(Outer, saved, warn=False)
    assert renamed == {"run": {"steps": 3, "keep": 1, "accum": 4, "optim": {"lr": 0.1, "clip": None}}, "name": "y"}
    assert rename_warnings(caplog) == []
