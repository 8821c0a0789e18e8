"""JSON output of the commands: pydantic models (or lists and dicts of them) on stdout.

Kept apart from advisor.shell.render so that ``--json`` never loads the terminal renderer (rich).
"""

from __future__ import annotations

import errno
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import BaseModel


def print_json(
    model: BaseModel | list[BaseModel] | dict[str, object], exclude: dict[str, object] | None = None
) -> None:
    """Print a pydantic model (or a list or dict of them) as JSON on stdout; ``exclude`` (a
    pydantic exclude mapping) leaves fields out of a model."""
    from pydantic import BaseModel

    if isinstance(model, BaseModel):
        text = model.model_dump_json(indent=2, exclude=exclude)  # type: ignore[arg-type]
    elif isinstance(model, list):
        text = json.dumps([m.model_dump(mode="json") for m in model], indent=2)
    else:
        text = json.dumps(model, indent=2, default=_default)
    _write_whole(text + "\n")


def _write_whole(text: str) -> None:
    """Write ``text`` to stdout whole, or raise.

    NOTE: when a pipe's reader leaves during one large write (``--json | head -1``), Python's
    buffered writer returns the short count without an error and drops the rest, so the
    command would exit 0; writing the rest meets the EPIPE (the CLI's quiet exit, 141).
    """
    stream = sys.stdout
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text-only stream (a test's StringIO)
        stream.write(text)
        return
    stream.flush()
    view = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while view:
        n = raw.write(view)
        if not n:
            raise OSError(errno.EIO, "standard output took no bytes")
        view = view[n:]
    raw.flush()


def _default(obj: object) -> object:
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
