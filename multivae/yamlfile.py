"""YAML read strictly, in one place: a safe loader that refuses duplicate keys (a key written twice in one
mapping; a merge key's `<<: *base` keys may be overridden), errors as one line with file, line and column. Search spaces (`tuning.space`) and config files (`multivae.train --config`) read through it.

Bounded, so that no document can exhaust the stack or the memory: at most `MAX_BYTES` of text, nesting at most
`MAX_DEPTH` levels deep, and at most `MAX_NODES` values once every alias is expanded (a "billion laughs"
document is a few lines of anchors whose expansion has 10^9 values: it is refused before it is built).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from multivae.errors import UserError, one_line, short_repr

MAX_BYTES = 1 << 20       # a search space or a config is a few kB
MAX_DEPTH = 64            # nesting of mappings and lists (ours need 4)
MAX_NODES = 100_000       # values after alias expansion


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load keeps the last, silently) and
    documents nested deeper than MAX_DEPTH or larger than MAX_NODES values with aliases expanded."""

    _depth = 0

    def compose_node(self, parent, index):   # recursive in PyYAML: bound it before Python's stack is
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        _check_expanded_size(node)
        return super().construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values of the document with every alias expanded (memoized per node, so the count is cheap
    even when the expansion is astronomically large), and refuse more than MAX_NODES or a recursive alias."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:   # iterative post-order: no recursion on deep documents either
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not children_done:
            if key in in_progress:
                raise yaml.constructor.ConstructorError(None, None, "found a recursive alias (an anchor used inside itself)",
                                                        node.start_mark)
            in_progress.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        in_progress.discard(key)
        sizes[key] = 1 + sum(sizes[id(c)] for c in children)
        if sizes[key] > MAX_NODES:
            raise yaml.constructor.ConstructorError(None, None, f"more than {MAX_NODES:,} values once its aliases are "
                                                    "expanded (nested anchors?)", node.start_mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # The keys written in this mapping, before the merge keys (`<<: *base`) are flattened in: a key given here
    # overrides a merged one (YAML's merge rule), and only a key written twice here is a duplicate.
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue   # an unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"found duplicate key {short_repr(key)}", key_node.start_mark)
    if sum(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value) > 1:
        raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                "found duplicate merge key '<<' (merge several with <<: [*a, *b])", node.start_mark)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str, label: str) -> Any:
    if len(text) > MAX_BYTES:
        raise UserError(f"{label}: {len(text):,} characters, larger than a YAML file here may be ({MAX_BYTES:,})")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{label}: invalid YAML{where}: {one_line(exc.problem or exc.context or exc)[:200]}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{label}: invalid YAML: {one_line(exc)[:200]}") from None
    except RecursionError:   # a safety net: MAX_DEPTH keeps PyYAML well inside the stack
        raise UserError(f"{label}: invalid YAML: nested too deeply") from None


def load_yaml_file(path: str | Path, label: str | None = None) -> Any:
    """The parsed YAML document of `path`; a missing, unreadable or malformed file is one `UserError` line."""
    label = label or str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)   # never more: a huge file is refused without reading it all
        if len(data) > MAX_BYTES:
            raise UserError(f"{label}: larger than a YAML file here may be ({MAX_BYTES:,} bytes)")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{label}: cannot read it ({getattr(exc, 'strerror', None) or one_line(exc)[:200]})") from None
    return load_yaml_text(text, label)


__all__ = ["load_yaml_file", "load_yaml_text"]
