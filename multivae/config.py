"""Strict dataclass configs: built from plain dicts (YAML, JSON, checkpoints), unknown keys rejected.

`from_dict(Cls, data, where="file.yaml:section")` checks every key and type once, at the edge, and
raises `UserError` naming the place, the key path and the value. Code inside works on typed objects.
Non-finite floats (nan, inf) are refused for every field, and integers must fit in 64 bits.

Numeric domains live next to each dataclass, in its `__post_init__`, as one table for `check_domains`
(`{"lr": "> 0", "dropout": "in [0, 1)", "seed": "in [0, 2**32)"}`), so the CLIs, the YAML spaces and the
Python API share one check and one message: `lr must be finite and > 0, got inf`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any, Callable, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from multivae.errors import UserError, short_repr

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


INT64_RANGE = (-2**63, 2**63)


def _convert(value: Any, tp: Any, path: str, where: str) -> Any:
    origin = get_origin(tp)
    if isinstance(value, float) and not math.isfinite(value):   # no field of ours has a use for nan or inf
        raise UserError(f"{where}: {path} must be finite, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_RANGE[0] <= value < INT64_RANGE[1]:
        raise UserError(f"{where}: {path} must fit in 64 bits, got {short_repr(value)}")
    bad = UserError(f"{where}: {path} must be {_type_name(tp)}, got {short_repr(value)}")
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
        raise UserError(f"{where}: {prefix or 'top level'} must be a mapping, got {short_repr(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise UserError(f"{where}: unknown key {short_repr(key)} (allowed: {', '.join(sorted(fields))})")
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


# --- numeric domains --------------------------------------------------------------------------------

_BOUND = r"-?\d+(?:\.\d*)?(?:e-?\d+)?(?:\*\*\d+)?"
_COMPARISON = re.compile(rf"^(>=|>|<=|<) ({_BOUND})$")
_INTERVAL = re.compile(rf"^in ([\[(])({_BOUND}), ({_BOUND})([\])])$")


def _number(text: str) -> float:
    base, _, power = text.partition("**")
    return float(base) ** int(power) if power else float(base)


@functools.lru_cache(maxsize=None)
def _rule(rule: str) -> Callable[[float], bool]:
    """The test of `rule`: "finite", ">= 1", "> 0", "<= 1", "< 1", or an interval "in [0, 1)", "in (0, 0.5)"."""
    if rule == "finite":
        return lambda v: True
    if m := _COMPARISON.match(rule):
        op, bound = m.group(1), _number(m.group(2))
        return {">=": lambda v: v >= bound, ">": lambda v: v > bound, "<=": lambda v: v <= bound, "<": lambda v: v < bound}[op]
    if m := _INTERVAL.match(rule):
        lo_closed, lo, hi, hi_closed = m.group(1) == "[", _number(m.group(2)), _number(m.group(3)), m.group(4) == "]"
        return lambda v: (v >= lo if lo_closed else v > lo) and (v <= hi if hi_closed else v < hi)
    raise ValueError(f"not a domain rule: {rule!r}")


def check_domains(obj: Any, domains: Mapping[str, str]) -> None:
    """Raise ValueError `<field> must be <rule>, got <value>` for the first field of `obj` outside its domain.

    None passes (an optional field left to its default); a tuple or list is checked item by item; a float
    must also be finite. Called from `__post_init__`, so a config built in Python is checked as one built by
    `from_dict` (which turns the ValueError into a UserError naming the file or flag)."""
    for name, rule in domains.items():
        value = getattr(obj, name)
        items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
        test = _rule(rule)
        for i, v in items:
            label = name if i is None else f"{name}[{i}]"
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{label} must be a number {rule}, got {short_repr(v)}")
            if not math.isfinite(v):
                raise ValueError(f"{label} must be finite{'' if rule == 'finite' else ' and ' + rule}, got {v!r}")
            if not test(v):
                raise ValueError(f"{label} must be {rule}, got {short_repr(v)}")


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,4})$")


def check_device_name(device: Any) -> None:
    """The devices we run on, spelled as torch spells them: auto, cpu, cuda or cuda:N (whether CUDA is there
    is checked where the device is used, `multivae.training.resolve_device`)."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {short_repr(device)}")


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


__all__ = ["check_device_name", "check_domains", "from_dict", "to_dict", "replace"]
_ = typing
