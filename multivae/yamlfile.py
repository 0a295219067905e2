"""YAML read strictly, in one place: a safe loader that refuses duplicate keys, errors as one line with file,
line and column. Search spaces (`tuning.space`) and config files (`multivae.train --config`) read through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from multivae.errors import UserError, one_line


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load keeps the last, silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue   # an unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"found duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str, label: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{label}: invalid YAML{where}: {one_line(exc.problem or exc.context or exc)}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{label}: invalid YAML: {one_line(exc)}") from None


def load_yaml_file(path: str | Path, label: str | None = None) -> Any:
    """The parsed YAML document of `path`; a missing, unreadable or malformed file is one `UserError` line."""
    label = label or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{label}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    return load_yaml_text(text, label)


__all__ = ["load_yaml_file", "load_yaml_text"]
