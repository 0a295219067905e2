"""A search space's YAML, read strictly: found by name or path, every section checked key by key, each failure one line.

The file is read by `multivae.yamlfile` (a safe loader that refuses duplicate keys, merge keys `<<: *base`
overridable, errors with line and column); this module finds the file (`locate`: a name in search_spaces/ or
a path), names it as a user would type it (`display`), and holds the checks every section shares
(`Parser`: mappings with only the allowed keys, numbers, integers, required keys), each failure one
`UserError` line naming the file, the key path and the value.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Any, Mapping, NoReturn

from multivae.errors import UserError
from tuning.trial_config import SET_BY_TRIAL, SPACE_FIELDS, takes_text

SPACES_DIR = Path(importlib.util.find_spec("search_spaces").origin).resolve().parent   # shipped with the package


def available_spaces() -> list[str]:
    """The names `load_space` finds in search_spaces/."""
    return sorted(p.relative_to(SPACES_DIR).with_suffix("").as_posix() for p in SPACES_DIR.rglob("*.yaml"))


def locate(arg: str) -> tuple[Path, str]:
    """(file, name) of a space given by name (a file in search_spaces/) or by path to a .yaml file."""
    path = Path(arg).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"{arg}: no such search space file")
        return path.resolve(), path.stem
    named = (SPACES_DIR / f"{arg}.yaml").resolve()
    if named.is_relative_to(SPACES_DIR) and named.is_file():
        return named, arg
    if path.is_file():
        return path.resolve(), path.stem
    raise UserError(f"unknown search space {arg!r}: not a file, and not a name in {display(SPACES_DIR)}/ "
                    f"(available: {', '.join(available_spaces()) or 'none'})")


def display(path: str | Path) -> str:
    """`path` relative to the working directory when it is below it (as a user would type it)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


class Parser:
    """The checks every section shares; each failure one line naming the file (`label`), key path and value."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, message: str) -> NoReturn:
        raise UserError(f"{self.label}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict:
        """A mapping (null: empty) with only `allowed` keys."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{path} must be a mapping, got {value!r}")
        for key in value:
            if key not in allowed:
                self.fail(f"unknown key {join_key(path, key)!r} (allowed: {', '.join(allowed)})")
        return dict(value)

    def trial_fields(self, value: Any, section: str) -> dict:
        """`fixed` and `params`: a mapping (null: empty) keyed by ModelConfig and TrainConfig fields."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{section} must be a mapping, got {value!r}")
        for key in value:
            if key in SET_BY_TRIAL:
                self.fail(f"{section}.{key} cannot be set in a search space: the trial sets it from {SET_BY_TRIAL[key]}")
            if key not in SPACE_FIELDS:
                self.fail(f"unknown key '{section}.{key}': not a ModelConfig or TrainConfig field (allowed: {', '.join(SPACE_FIELDS)})")
        return dict(value)

    def number(self, value: Any, path: str) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{path} must be a number, got {value!r}{yaml_hint(value)}")
        return value

    def integer(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{path} must be an integer, got {value!r}{yaml_hint(value)}")
        return value

    def required(self, spec: Mapping, key: str, path: str, what: str) -> Any:
        if key not in spec:
            self.fail(f"{path}.{key} is required for {what}")
        return spec[key]

    def no_number_text(self, name: str, value: Any, path: str) -> None:
        """`1e-4` is text in YAML 1.1: say so where the field takes no text."""
        if isinstance(value, str) and yaml_hint(value) and not takes_text(name):
            self.fail(f"{path} must be a number, got {value!r}{yaml_hint(value)}")


_NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def yaml_hint(value: Any) -> str:
    """PyYAML follows YAML 1.1, where `1e-4` (no dot) is text: say so when a number was meant."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        return " (YAML reads a number like 1e-4 as text: write 1.0e-4)"
    return ""


def join_key(path: str, key: Any) -> str:
    """The key path `path.key` (`key` alone at the top level)."""
    return f"{path}.{key}" if path else str(key)


__all__ = ["SPACES_DIR", "Parser", "available_spaces", "display", "join_key", "locate", "yaml_hint"]
