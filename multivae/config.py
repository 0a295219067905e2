"""Strict dataclass configs: built from plain dicts (YAML, JSON, checkpoints), unknown keys rejected.

`from_dict(Cls, data, where="file.yaml:section")` checks every key and type once, at the edge, and
raises `UserError` naming the place, the key path and the value. Code inside works on typed objects.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from multivae.errors import UserError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, where: str) -> Any:
    origin = get_origin(tp)
    bad = UserError(f"{where}: {path} must be {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp) and type(value) is type(next(a for a in get_args(tp) if a == value)):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _convert(value, arg, path, where)
            except UserError:
                continue
        raise bad
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = get_args(tp)
        items = [_convert(v, item_tp, f"{path}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise bad
        return from_dict(tp, value, where=where, prefix=path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config field type {tp!r} at {path}")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: {prefix or 'top level'} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise UserError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], path, where)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise UserError(f"{where}: {prefix or 'config'}: {exc}") from None
    except ValueError as exc:  # __post_init__ validation
        raise UserError(f"{where}: {prefix + ': ' if prefix else ''}{exc}") from None
    return obj


def to_dict(obj: Any) -> dict:
    """Plain dict (lists for tuples) suitable for YAML/JSON/checkpoints."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


def replace(obj: T, where: str = "override", **changes: Any) -> T:
    """`dataclasses.replace` with the same checks as `from_dict`."""
    merged = {**dataclasses.asdict(obj), **changes}
    return from_dict(type(obj), merged, where=where)


__all__ = ["from_dict", "to_dict", "replace"]
_ = typing
