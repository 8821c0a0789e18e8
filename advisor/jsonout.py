"""JSON output of the commands: pydantic models (or lists and dicts of them) on stdout.

Kept apart from advisor.render so that ``--json`` never loads the terminal renderer (rich).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import BaseModel


def print_json(model: BaseModel | list[BaseModel] | dict[str, object]) -> None:
    """Print a pydantic model (or a list or dict of them) as JSON on stdout."""
    from pydantic import BaseModel

    if isinstance(model, BaseModel):
        text = model.model_dump_json(indent=2)
    elif isinstance(model, list):
        text = json.dumps([m.model_dump(mode="json") for m in model], indent=2)
    else:
        text = json.dumps(model, indent=2, default=_default)
    sys.stdout.write(text + "\n")


def _default(obj: object) -> object:
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
