"""Typed configs from dicts, YAML and ``--set a.b=c`` overrides, validated strictly.

Every config in the project is a dataclass. An unknown key is an error that names the valid
keys (a misspelled option must never be silently ignored), and values are checked against
the field's annotated type.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from .errors import ConfigError

C = TypeVar("C")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    """Check/convert ``value`` to the annotated type ``tp`` (a small, explicit subset of typing)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # X | None: X's own message says what is wrong
            raise ConfigError(errors[0].replace(": expected ", ": expected null or ", 1))
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {_type_name(tp)}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            value = [value] if origin is list else value
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}: expected a sequence, got {value!r}")
        items = list(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {items!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
        elem = args[0] if args else Any
        out = [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        number = _number(value, where)
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        number = _number(value, where, "an integer")
        if not number.is_integer():  # also false for nan and inf
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _number(value: Any, where: str, expected: str = "a number") -> float:
    """A number from a number or from any text Python's ``float()`` reads.

    YAML 1.1 (PyYAML) reads ``1e-3`` and ``1E5`` as strings (its floats need a dot and a signed
    exponent), and ``--set`` values are parsed as YAML: without this, the usual way of writing a
    learning rate would be refused.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_keys(data: dict[str, Any], names: set[str], where: str) -> None:
    """An unknown key is an error naming it (with its path) and every valid key."""
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(sorted(names))}"
        )


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys raise a ConfigError listing valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    _check_keys(data, {f.name for f in dataclasses.fields(cls) if f.init}, where)
    hints = _hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict[str, Any]:
    """Plain dict (tuples → lists) suitable for YAML/JSON."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def merge(cfg: C, updates: dict[str, Any], where: str = "") -> C:
    """Return a copy of dataclass ``cfg`` with nested ``updates`` applied (validated)."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{where or type(cfg).__name__}: expected a mapping, got {updates!r}")
    _check_keys(updates, {f.name for f in dataclasses.fields(cfg)}, where)
    hints = _hints(type(cfg))
    changes = {}
    for k, v in updates.items():
        key = f"{where}.{k}" if where else k
        cur = getattr(cfg, k)
        if dataclasses.is_dataclass(cur) and isinstance(v, dict):
            changes[k] = merge(cur, v, key)
        elif isinstance(cur, dict) and isinstance(v, dict) and cur and all(
            dataclasses.is_dataclass(x) for x in cur.values()
        ):
            new = dict(cur)
            for sub, subv in v.items():
                if sub in new and isinstance(subv, dict):
                    new[sub] = merge(new[sub], subv, f"{key}.{sub}")
                else:
                    new[sub] = _coerce({sub: subv}, hints[k], key)[sub]
            changes[k] = new
        else:
            changes[k] = _coerce(v, hints[k], key)
    return dataclasses.replace(cfg, **changes)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "model.neck.fusion=sum"]`` → nested dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data
