"""Sizes, counts, bytes and times: parsing what users type and formatting what we print."""

from __future__ import annotations

import math
import re

from advisor.errors import UserError

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BYTE_SUFFIX = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": KIB,
    "MIB": MIB,
    "GIB": GIB,
    "TIB": TIB,
}
# NOTE: at most 30 digits on either side of the point: enough for any count, size or length
# a user means, and it keeps float() finite and int() under Python's 4300-digit limit, so a
# pasted run of digits is "invalid", never an OverflowError.
_NUMBER = r"(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})"


def parse_count(text: str, what: str = "model size") -> int:
    """Parse a parameter count such as ``7B``, ``1.3B``, ``125M``, ``1T`` or ``350000``.

    Args:
        text: the count as the user typed it; ``B`` means billion, ``T`` trillion.
        what: what the count is, for the error message.

    Returns:
        The count as an integer.

    Raises:
        UserError: when the text is not a positive count.
    """
    m = re.fullmatch(_NUMBER + r"\s*([KMBGT]?)", text.strip().upper())
    if not m:
        raise UserError(
            f"invalid {what} {text!r}",
            "use a number with an optional suffix K, M, B or T, e.g. 125M, 1.3B, 7B, 1T",
        )
    value = float(m.group(1)) * _COUNT_SUFFIX[m.group(2)]
    if value < 1:
        raise UserError(f"invalid {what} {text!r}: must be positive", "e.g. 125M, 7B, 70B")
    return round(value)


def parse_bytes(text: str, what: str = "memory size") -> int:
    """Parse a memory size such as ``24GB``, ``80GiB``, ``512MiB`` or ``16G``.

    A bare ``G``/``M``/``K``/``T`` suffix is read as binary (GiB...), the way GPU
    memory is marketed (an "80GB" H100 has 80 GiB).

    Raises:
        UserError: when the text is not a positive size.
    """
    t = text.strip().upper().replace(" ", "")
    m = re.fullmatch(_NUMBER + r"([KMGT]?I?B?)", t)
    if not m or not m.group(2):
        raise UserError(
            f"invalid {what} {text!r}",
            "use a number with a unit, e.g. 24GB, 80GiB, 512MiB",
        )
    unit = m.group(2)
    if unit in ("K", "M", "G", "T"):
        unit = unit + "IB"
    if unit not in _BYTE_SUFFIX:
        raise UserError(f"invalid {what} {text!r}: unknown unit", "use B, KB, MB, GB, GiB, ...")
    value = float(m.group(1)) * _BYTE_SUFFIX[unit]
    if value <= 0:
        raise UserError(f"invalid {what} {text!r}: must be positive", "e.g. 24GB")
    if value < 1:
        # NOTE: 0.1B would round to 0 bytes ("none") where a size was meant.
        raise UserError(f"invalid {what} {text!r}: less than one byte", "e.g. 24GB")
    return round(value)


def parse_length(text: str, what: str = "sequence length") -> int:
    """Parse a token count such as ``4096``, ``4k`` or ``32K`` (k = 1024 tokens)."""
    m = re.fullmatch(r"(\d{1,30})\s*([kK]?)", text.strip())
    if not m:
        raise UserError(f"invalid {what} {text!r}", "use a positive integer, e.g. 2048 or 4k")
    value = int(m.group(1)) * (1024 if m.group(2) else 1)
    if value <= 0:
        raise UserError(f"invalid {what} {text!r}: must be positive", "e.g. 2048")
    return value


def format_bytes(n: float) -> str:
    """Format bytes in binary units: ``13.5 GiB``."""
    if n < 0:
        return "-" + format_bytes(-n)
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_count(n: float) -> str:
    """Format a parameter count: ``6.74B``, ``125M``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return str(int(n))


def format_seconds(s: float) -> str:
    """Format a duration: ``412 µs``, ``3.2 ms``, ``1.25 s``, ``2.1 min``."""
    if math.isnan(s) or math.isinf(s):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
