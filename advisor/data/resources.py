"""Where the shipped rule base and profiles live: inside the wheel, or at the repository top."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # advisor/


def data_dir(name: str) -> Path:
    """Return the shipped ``rules`` or ``profiles`` folder.

    An installed wheel carries them as ``advisor/_data/<name>``; a source checkout
    (or an editable install) has them beside the package at the repository top.
    """
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped data folder {name!r} not found next to {_PACKAGE}")


def rules_dir() -> Path:
    """The shipped rule base."""
    return data_dir("rules")


def profiles_dir() -> Path:
    """The shipped hardware and model profiles."""
    return data_dir("profiles")
