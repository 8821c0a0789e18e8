"""Notes for the user from deep inside a command (a cache that could not be used or written).

The code that meets the problem posts one line here and carries on; the shell prints the
pending notes on stderr when the command ends (``note: ...``), each once.
"""

from __future__ import annotations

_pending: list[str] = []


def post(text: str) -> None:
    """Queue one line for the user (a repeat of a queued line is dropped)."""
    if text not in _pending:
        _pending.append(text)


def take() -> list[str]:
    """The queued lines, oldest first; the queue is emptied."""
    out = list(_pending)
    _pending.clear()
    return out
