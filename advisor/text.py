"""User text is text: control characters out, and fallbacks for terminals that are not UTF-8.

A string from a file, a path or the environment can carry ESC sequences, carriage returns or
bidi overrides that would rewrite what the terminal shows; :func:`plain` removes them.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

# C0 and C1 controls (tab and newline handled apart), DEL, and the bidi embedding, override
# and isolate marks (which reorder what a terminal shows, CVE-2021-42574 "Trojan Source").
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")

# What the report's non-ASCII characters become on a terminal that cannot show them.
ASCII_FALLBACKS = {
    "×": "x",
    "—": "-",
    "–": "-",
    "…": "...",
    "≈": "~",
    "≤": "<=",
    "≥": ">=",
    "→": "->",
    "←": "<-",
    "µ": "u",
    "█": "#",
    "░": ".",
    "✓": "yes",
    "✗": "no",
    "·": ".",
    "²": "^2",
    "’": "'",
    "‘": "'",
    "“": '"',
    "”": '"',
    "±": "+/-",
    "√": "sqrt",
    "∞": "inf",
}
ERRORS = "optadvise-ascii"


def plain(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` without control characters; tabs become spaces, and newlines too unless
    ``keep_newlines``."""
    out = _CONTROLS.sub("", text)
    out = out.replace("\t", " ")
    return out if keep_newlines else out.replace("\n", " ")


def _fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    out = []
    for ch in bad:
        sub = ASCII_FALLBACKS.get(ch)
        if sub is None:
            # NOTE: an accented letter keeps its base letter (é -> e); anything else is "?".
            base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            sub = base or "?"
        out.append(sub)
    return "".join(out), exc.end


def register_fallbacks() -> str:
    """Register the ``optadvise-ascii`` encode error handler; return its name."""
    try:
        codecs.lookup_error(ERRORS)
    except LookupError:
        codecs.register_error(ERRORS, _fallback)
    return ERRORS
