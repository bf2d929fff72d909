"""Dataclass configs: load from YAML/JSON, apply `key.sub=value` overrides, save resolved.

Every training or evaluation command has a dataclass config (defaults commented in the
class). `load_config(Cls, path, overrides)` builds one from an optional file plus
command-line overrides such as `optim.lr=3e-4 data.batch_size=64`; values are parsed as
YAML scalars and type-checked against the field types. `save_config` writes the resolved
config next to checkpoints so every run can be reproduced.

Renamed keys keep working: a dataclass lists its old key names in a class attribute
`RENAMED_KEYS = {"keep_last": "keep_checkpoints", "optim.accum_steps": "grad_accum_steps"}`
(dotted paths relative to that dataclass, so a key may move between sections; a `Renamed`
value also converts the old value). `from_dict` and `merge` move an old key to its new place
with a one-line deprecation warning (once per key and process); giving the old and the new
name together is a UserError. `rename_keys` does the same for a whole nested mapping, e.g. the
config saved in an old checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from vlbridge.errors import UserError
from vlbridge.io import atomic_write_text

log = logging.getLogger(__name__)

T = TypeVar("T")

_warned_renames: set[tuple[str, str]] = set()  # (dataclass, old key) pairs already warned about


@dataclasses.dataclass(frozen=True)
class Renamed:
    """Where an old config key went (dotted, relative to its dataclass) and how its value maps there."""

    new: str  # the key's new name, e.g. "grad_clip_norm" or "optim.lr"
    convert: Callable[[Any], Any] | None = None  # old value -> new value (None: unchanged)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file holding a mapping; one clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"config file {path} is not valid YAML/JSON: {err}".splitlines()[0]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a (possibly partial) nested mapping, checking keys and types."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    data = _rename_level(cls, data, where, warn=True)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config key {where}{unknown[0]!r}; known keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**kwargs)


def merge(base: T, data: dict[str, Any], where: str = "") -> T:
    """Return a copy of dataclass `base` with the (nested) values of `data` applied."""
    current = to_dict(base)
    _deep_update(current, rename_keys(type(base), data, where))
    return from_dict(type(base), current, where)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, then the file at `path` (if any), then `key=value` overrides."""
    config = cls()
    if path is not None:
        config = merge(config, read_mapping(path))
    return merge(config, parse_overrides(overrides))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (JSON-serialisable; Paths become strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def rename_keys(cls: type, data: dict[str, Any], where: str = "", warn: bool = True) -> dict[str, Any]:
    """A copy of `data` with the old key names of `cls` and of its nested dataclass fields moved to the new ones.

    `warn=False` renames silently (configs saved by older runs, where the user typed nothing).
    """
    if not isinstance(data, dict):
        return data
    data = _rename_level(cls, data, where, warn)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        child = _dataclass_in(hints[f.name])
        if child is not None and isinstance(data.get(f.name), dict):
            data = {**data, f.name: rename_keys(child, data[f.name], f"{where}{f.name}.", warn)}
    return data


def _rename_level(cls: type, data: dict[str, Any], where: str, warn: bool) -> dict[str, Any]:
    """`data` with the `RENAMED_KEYS` of `cls` itself applied (a copy when anything moved)."""
    renames = getattr(cls, "RENAMED_KEYS", None) or {}
    if not isinstance(data, dict) or not any(_has_path(data, old) for old in renames):
        return data
    data = copy.deepcopy(data)
    for old, target in renames.items():
        target = target if isinstance(target, Renamed) else Renamed(target)
        if not _has_path(data, old):
            continue
        if _has_path(data, target.new):
            raise UserError(
                f"config keys {where}{old} (the old name) and {where}{target.new} are both given; keep only {where}{target.new}"
            )
        value = _pop_path(data, old)
        if warn and (cls.__qualname__, old) not in _warned_renames:
            _warned_renames.add((cls.__qualname__, old))
            log.warning("config key %s%s is deprecated: it is now %s%s", where, old, where, target.new)
        _set_path(data, target.new, target.convert(value) if target.convert else value, where)
    return data


def _has_path(data: dict[str, Any], dotted: str) -> bool:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.get(part) if isinstance(data, dict) else None
    return isinstance(data, dict) and last in data


def _pop_path(data: dict[str, Any], dotted: str) -> Any:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[part]
    return data.pop(last)


def _set_path(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise UserError(f"config key {where}{part} must be a mapping, got {data!r}")
    data[last] = value


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (also inside `X | None`), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"config key {where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"config key {where} must be a mapping, got {value!r}")
        return from_dict(hint, value, f"{where}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and isinstance(value, hint):
        if hint is int and isinstance(value, bool):
            raise UserError(f"config key {where} must be an int, got {value!r}")
        return value
    raise UserError(f"config key {where} must be {getattr(hint, '__name__', hint)}, got {value!r}")
