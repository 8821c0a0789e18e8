"""Safe YAML loading that remembers the line of every mapping, for ``file:line`` reports."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from advisor.data import safeio
from advisor.data.cache import cached_by_content, yaml_sources
from advisor.data.lines import LineDict as LineDict
from advisor.data.lines import LineList as LineList

# NOTE: the largest shipped file (taxonomy.yaml) is ~150 KB and 6,433 nodes; these bounds
# (about 13x and 30x that) only stop hostile files: a FIFO or device, a multi-GB file, or an
# "alias bomb" whose few anchors expand into billions of nodes (1.2 KB took 73 s and 5.9 GB).
MAX_YAML_BYTES = 2 * 1024**2
MAX_YAML_NODES = 200_000

# NOTE: PyYAML is imported on first parse, not with this module: with the data cache warm
# (the usual run) no YAML is parsed, and importing it costs ~25 ms of every start-up.


class YamlError(Exception):
    """A document that is not valid YAML: PyYAML's message and the 1-based line it points at
    (0 when unknown). Raised instead of ``yaml.YAMLError`` so that callers can catch it
    without importing PyYAML."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


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
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found an unhashable key (a {type(key).__name__})",
                    key_node.start_mark,
                ) from None
            result[key] = loader.construct_object(value_node, deep=True)
        return result

    def construct_sequence(loader: Any, node: Any) -> LineList:
        result = LineList(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        return result

    _LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    _LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_sequence)
    return _LineLoader, base


def _expanded_size(root: Any) -> int:
    """How many nodes the document has once every alias is expanded (aliases share their
    anchor's node object, so this counts without expanding). Stops past the bound.

    Raises:
        YamlError: for more than :data:`MAX_YAML_NODES` nodes, or an alias inside its own
            anchor (a recursive structure).
    """
    import yaml

    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[Any] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if done:
            open_.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_NODES + 1)
            if sizes[key] > MAX_YAML_NODES:
                line = node.start_mark.line + 1
                raise YamlError(
                    f"the document expands to more than {MAX_YAML_NODES:,} nodes (aliases "
                    "of aliases?); a data file this large is refused",
                    line,
                )
            continue
        if key in sizes:
            continue
        if key in open_:
            raise YamlError(
                "an alias refers to its own anchor (a recursive structure)",
                node.start_mark.line + 1,
            )
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes.get(id(root), 0)


def _yaml_message(exc: Exception) -> str:
    """PyYAML's error in one line: what it was doing and what it found, with the line and
    column (the marks' ``in "<unicode string>"`` left out)."""
    problem = getattr(exc, "problem", None)
    if not problem:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{context + ': ' if context else ''}{problem}{where}".split())


def _parse(text: str, line_aware: bool) -> Any:
    import yaml

    loader = _loaders()[0 if line_aware else 1](text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise YamlError(_yaml_message(exc), mark.line + 1 if mark is not None else 0) from exc
    except RecursionError:
        raise YamlError("nested too deeply") from None
    finally:
        loader.dispose()


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader (plain dicts and lists: data only, never code).

    Raises:
        YamlError: when the text is not YAML.
    """
    return _parse(text, line_aware=False)


@cached_by_content("yaml", yaml_sources)
def load_yaml(path: Path) -> Any:
    """Load one YAML document with line-aware containers (cached by content, see datacache).

    The file is opened once and checked as opened (a regular file of at most
    :data:`MAX_YAML_BYTES`, UTF-8), and its aliases are bounded before it is built.

    Raises:
        YamlError: when the text is not YAML, or aliases expand it past the bound (the
            caller reports it with the file name).
        OSError: when the file cannot be read, is not a regular file, is too large or is not
            UTF-8 (``strerror`` says which).
    """
    return _parse(safeio.read_text_bounded(path, MAX_YAML_BYTES), line_aware=True)


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
