"""Safe YAML loading that remembers the line of every mapping, for ``file:line`` reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from advisor.datacache import cached_by_content, yaml_sources


class LineDict(dict[str, Any]):
    """A mapping from YAML that knows the 1-based line it started on."""

    line: int = 0


class LineList(list[Any]):
    """A sequence from YAML that knows the 1-based line it started on."""

    line: int = 0


# NOTE: libyaml's parser (CSafeLoader) is ~10x faster than the pure-Python one and keeps the
# node marks we read lines from; fall back when PyYAML was built without it.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_Base):  # type: ignore[misc]
    """A safe loader that builds LineDict/LineList: still data only, never code."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@cached_by_content("yaml", yaml_sources)
def load_yaml(path: Path) -> Any:
    """Load one YAML document with line-aware containers (cached by content, see datacache).

    Raises:
        yaml.YAMLError: when the text is not YAML (the caller reports it with the file name).
        OSError: when the file cannot be read.
    """
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)


def line_of(data: Any, loc: tuple[int | str, ...] = ()) -> int:
    """Return the line of the deepest container on the path ``loc`` inside ``data``.

    Used to turn a pydantic error location into the line a human should look at.
    """
    line = getattr(data, "line", 0)
    node = data
    for key in loc:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            # NOTE: pydantic locations also hold union tags ("all", "fact"); skip what the
            # data does not have and keep walking.
            continue
        line = getattr(node, "line", line)
    return line


def yaml_error_line(exc: yaml.YAMLError) -> int:
    """The 1-based line a YAML syntax error points at (0 when unknown)."""
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else 0
