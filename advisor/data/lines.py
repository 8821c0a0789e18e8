"""YAML containers that remember their line: what the loader builds and the data cache stores."""

from __future__ import annotations

from typing import Any


class LineDict(dict[str, Any]):
    """A mapping from YAML that knows the 1-based line it started on."""

    line: int = 0


class LineList(list[Any]):
    """A sequence from YAML that knows the 1-based line it started on."""

    line: int = 0
