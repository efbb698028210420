"""Strict parsing of external dicts into frozen dataclasses.

The dataclass *is* the schema: unknown keys, wrong types and values outside a ``Literal`` are
rejected with an error naming the key and the allowed values. Used for run configs, method
hyperparameters and search spaces alike.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import ConfigError


def subkey(where: str, key: str) -> str:
    """Where a key of ``where`` is: ``file.yaml: key`` under a file (the file and the key
    apart, as every other message names them), ``where.key`` under a key."""
    return f"{where}: {key}" if where.endswith((".yaml", ".yml", ".json")) else f"{where}.{key}"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints widen to float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"{value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}", where)
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{value!r} is not a valid {_type_name(tp)}", where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", where)
        args = get_args(tp)
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", where)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"expected an integer, got {value!r}", where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", where)
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def parse_dataclass(cls: type, data: dict | None, where: str) -> Any:
    """Build ``cls`` from ``data`` strictly; missing keys take the dataclass defaults."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {data!r}", where)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(fields))}", subkey(where, unknown[0])
        )
    kwargs = {k: coerce(v, hints[k], subkey(where, k)) for k, v in data.items()}
    missing = [
        k for k, f in fields.items()
        if k not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required key {missing[0]!r}", where)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise ConfigError(str(e), where) from None
    return obj


def field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def to_dict(obj: Any) -> dict:
    """A plain, YAML-safe dict of a dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
