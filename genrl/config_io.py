"""YAML and command-line text onto dataclasses: the generic half of genrl.config.

`fill` builds a dataclass from a dict, checking every key, type and choice against the
fields (an error names the dotted key, the value and what is allowed); overrides are
`dotted.key=value` with a YAML value. Nothing here knows genrl's sections.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from genrl.errors import ConfigError

CONFIGS_DIR = Path(__file__).parent / "configs"  # the bundled configs, loadable by name


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, tp)


def _float_or_none(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def fill(cls: type, data: Any, prefix: str, base: Any | None = None) -> Any:
    """Build dataclass `cls` from a dict, starting from `base` (an instance) or the defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    obj = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}; allowed keys here: {', '.join(sorted(fields))}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            setattr(obj, key, fill(tp, value, f"{path}.", getattr(obj, key)))
            continue
        if isinstance(value, str) and _matches(1.0, tp) and not _matches(value, tp):
            value = _float_or_none(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        if not _matches(value, tp):
            raise ConfigError(f"{path}={value!r} has the wrong type: expected {_type_name(tp)}")
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{path}={value!r} is not allowed: choose one of {', '.join(map(str, choices))}")
        if tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and isinstance(value, int)
                           and float in typing.get_args(tp)):
            value = float(value)
        setattr(obj, key, value)
    return obj


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [dotted.key=value ...]` of the command line -> (CONFIG or None, the overrides)."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.updates=5` -> (['train', 'updates'], 5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse value {raw!r}: {err}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        bundled = CONFIGS_DIR / f"{path}"
        bundled_yaml = bundled.with_suffix(".yaml")
        if bundled_yaml.is_file():
            path = bundled_yaml
        else:
            raise ConfigError(f"config file {str(path)!r} not found (nor a bundled config of that name in {bundled.parent})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    return data


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, for `genrl train --help-config` and the README."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
        elif f.name != "algorithms":
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
