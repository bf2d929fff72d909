"""Dataclass configs: load from YAML/JSON, apply `key.sub=value` overrides, save resolved.

Every training or evaluation command has a dataclass config (defaults commented in the
class). `load_config(Cls, path, overrides)` builds one from an optional file plus
command-line overrides such as `optim.lr=3e-4 data.batch_size=64`; values are parsed as
YAML scalars and type-checked against the field types. `save_config` writes the resolved
config next to checkpoints so every run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlbridge.errors import UserError
from vlbridge.io import atomic_write_text

T = TypeVar("T")


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
    _deep_update(current, data)
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
