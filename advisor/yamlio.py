"""Safe YAML loading that remembers the line of every mapping, for ``file:line`` reports."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from advisor.datacache import cached_by_content, yaml_sources

# NOTE: PyYAML is imported on first parse, not with this module: with the data cache warm
# (the usual run) no YAML is parsed, and importing it costs ~25 ms of every start-up.


class YamlError(Exception):
    """A document that is not valid YAML: PyYAML's message and the 1-based line it points at
    (0 when unknown). Raised instead of ``yaml.YAMLError`` so that callers can catch it
    without importing PyYAML."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


class LineDict(dict[str, Any]):
    """A mapping from YAML that knows the 1-based line it started on."""

    line: int = 0


class LineList(list[Any]):
    """A sequence from YAML that knows the 1-based line it started on."""

    line: int = 0


@functools.cache
def _loaders() -> tuple[Any, Any]:
    """(the line-aware safe loader, the plain safe loader), built on first use."""
    import yaml

    # NOTE: libyaml's parser (CSafeLoader) is ~10x faster than the pure-Python one and keeps
    # the node marks we read lines from; fall back when PyYAML was built without it.
    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _LineLoader(base):  # type: ignore[misc,valid-type]
        """A safe loader that builds LineDict/LineList: still data only, never code."""

    def construct_mapping(loader: Any, node: Any) -> LineDict:
        loader.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            result[key] = loader.construct_object(value_node, deep=True)
        return result

    def construct_sequence(loader: Any, node: Any) -> LineList:
        result = LineList(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        return result

    _LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    _LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_sequence)
    return _LineLoader, base


def _parse(text: str, line_aware: bool) -> Any:
    import yaml

    loader = _loaders()[0 if line_aware else 1]
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise YamlError(str(exc), mark.line + 1 if mark is not None else 0) from exc


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader (plain dicts and lists: data only, never code).

    Raises:
        YamlError: when the text is not YAML.
    """
    return _parse(text, line_aware=False)


@cached_by_content("yaml", yaml_sources)
def load_yaml(path: Path) -> Any:
    """Load one YAML document with line-aware containers (cached by content, see datacache).

    Raises:
        YamlError: when the text is not YAML (the caller reports it with the file name).
        OSError: when the file cannot be read.
    """
    return _parse(path.read_text(encoding="utf-8"), line_aware=True)


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


def yaml_error_line(exc: YamlError) -> int:
    """The 1-based line a YAML syntax error points at (0 when unknown)."""
    return exc.line
