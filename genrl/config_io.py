"""YAML and command-line text onto dataclasses: the generic half of genrl.config.

`fill` builds a dataclass from a dict, checking every key, type, choice and range against the
fields (an error names the dotted key, the value and what is allowed); overrides are
`dotted.key=value` with a YAML value. A number's range is an interval declared with its field
(`Range`, in the field's metadata or a function parameter's `Annotated` type); NaN is never a
value, and inf only where the interval closes on it ("(0, inf]"). YAML with a key twice is
refused, naming the key and its line. Nothing here knows genrl's sections.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
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


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number may take, as an interval: "[1, inf)", "(0, 1]", "[0, 2**63)". A bracket
    includes its end, a parenthesis excludes it; "inf]" is the one way to allow inf. NaN is never inside."""

    text: str
    note: str = ""  # said after what is allowed, e.g. what the value means
    bounds: tuple = dataclasses.field(init=False, repr=False, compare=False)  # (low, high, low_closed, high_closed)

    def __post_init__(self):
        match = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^\s\])]+)\s*([\])])", self.text)
        if match is None:
            raise ValueError(f"a range looks like '[0, 1)' or '(0, inf]', got {self.text!r}")
        opening, low, high, closing = match.groups()
        object.__setattr__(self, "bounds", (_number(low), _number(high), opening == "[", closing == "]"))

    def __contains__(self, value: float) -> bool:
        low, high, low_closed, high_closed = self.bounds
        if math.isnan(value):
            return False
        return (low < value or (low_closed and value == low)) and (value < high or (high_closed and value == high))

    def expected(self, tp: Any, value: Any = None) -> str:
        """What is allowed, in words: "an integer >= 1", "a positive float", "a float in (0, 1]", then the note."""
        return self._words(tp, value) + (f" ({self.note})" if self.note else "")

    def _words(self, tp: Any, value: Any) -> str:
        low, high, low_closed, _ = self.bounds
        integer = tp is int or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float not in typing.get_args(tp))
        kind = "integer" if integer else "float"
        finite = "finite " if isinstance(value, float) and not math.isfinite(value) and math.inf not in self else ""
        if high == math.inf:
            inf = "" if math.inf not in self else ", or inf"
            if low == 0 and not low_closed:
                return f"a positive {finite}{kind}{inf}"
            return f"a{'n' if integer and not finite else ''} {finite}{kind} {'>=' if low_closed else '>'} {low:g}{inf}"
        return f"a{'n' if integer else ''} {kind} in {self.text}"  # a bounded interval says it is finite


def _number(text: str) -> float:
    if "**" in text:  # 2**63: an integer bound written as it reads
        base, exponent = text.split("**")
        return int(base) ** int(exponent)
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def check_number(path: str, value: Any, tp: Any, allowed: Range | None) -> None:
    """A number (or each number of a list) inside `allowed`; without a range, at least not NaN or inf."""
    if isinstance(value, (list, tuple)):
        item_tp = next(iter(typing.get_args(tp)), float)
        for item in value:
            if _is_number(item) and (item not in allowed if allowed else not math.isfinite(item)):
                expected = allowed.expected(item_tp, item) if allowed else "a finite number"
                raise ConfigError(f"{path}={value!r} is not allowed: every element must be {expected}")
    elif _is_number(value) and (value not in allowed if allowed else not math.isfinite(value)):
        expected = allowed.expected(tp, value) if allowed else "a finite number"
        raise ConfigError(f"{path}={value!r} is not allowed: expected {expected}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        check_number(path, value, tp, fields[key].metadata.get("range"))
        setattr(obj, key, value)
    return obj


def check_options(fn: Any, options: dict, key: str, skip: int = 0) -> None:
    """The options a function (a grouping strategy, say) is called with: names it takes, and, where its
    parameters are annotated, their types and `Annotated[..., Range(...)]` ranges; errors name `key`."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = sorted(set(options) - {p.name for p in params})
        if unknown:
            raise ConfigError(f"{key} has unknown option(s) {unknown}; allowed: {sorted(p.name for p in params) or 'none'}")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation that does not resolve: check the names only
        hints = {}
    for name, value in options.items():
        if name not in hints:
            continue
        tp, allowed = hints[name], None
        if typing.get_origin(tp) is typing.Annotated:
            tp, *extras = typing.get_args(tp)
            allowed = next((extra for extra in extras if isinstance(extra, Range)), None)
        # YAML has no tuples: a list is taken for a parameter annotated with one
        if not _matches(value, tp) and not (isinstance(value, list) and _matches(tuple(value), tp)):
            raise ConfigError(f"{key}.{name}={value!r} has the wrong type: expected {_type_name(tp)}")
        check_number(f"{key}.{name}", value, tp, allowed)


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [dotted.key=value ...]` of the command line -> (CONFIG or None, the overrides)."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.updates=5` -> (['train', 'updates'], 5); the value is parsed as YAML, except that a flow
    mapping written without the space YAML wants after a colon, `{size:2}`, reads as `{size: 2}`."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = safe_load(raw, f"override {text!r}") if raw != "" else None
        if _has_glued_key(value):  # YAML reads {size:2} as the key 'size:2' with no value
            value = safe_load(_FLOW_KEY.sub(r"\1: ", raw), f"override {text!r}")
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse value {raw!r}: {err}") from None
    return key.split("."), value


_FLOW_KEY = re.compile(r"([{,]\s*[\w.-]+):(?=\S)")  # a key of a flow mapping, glued to its value


def _has_glued_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any((isinstance(k, str) and ":" in k and v is None) or _has_glued_key(v) for k, v in value.items())
    return isinstance(value, list) and any(_has_glued_key(v) for v in value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a mapping that holds a key twice (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges on purpose; a non-scalar key is yaml's own error
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.source}: key {key!r} is given twice in one mapping (lines {seen[key]} "
                                  f"and {line}); YAML would keep only the last: remove one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def safe_load(text: str, source: str) -> Any:
    """yaml.safe_load, but a key given twice in one mapping is an error naming `source`, the key and its lines."""
    loader = _UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
        data = safe_load(path.read_text(), f"config file {str(path)!r}")
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
            allowed = f.metadata.get("range")
            help_text = f.metadata.get("help", "") + (f" (range {allowed.text})" if allowed else "")
            rows.append((f"{prefix}{f.name}", repr(default), help_text))
    return rows
