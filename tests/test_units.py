"""Size, byte and length parsing; formatting."""

from __future__ import annotations

import pytest

from advisor.errors import UserError
from advisor.units import (
    format_bytes,
    format_count,
    format_seconds,
    parse_bytes,
    parse_count,
    parse_length,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7B", 7_000_000_000),
        ("1.3B", 1_300_000_000),
        ("125M", 125_000_000),
        ("70b", 70_000_000_000),
        ("1T", 10**12),
        ("350000", 350_000),
        (" 13B ", 13_000_000_000),
        ("0.5B", 500_000_000),
    ],
)
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["7Q", "-3B", "0", "B", "", "7 billion", "1e9", "0.0000000001"])
def test_parse_count_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(UserError) as info:
        parse_count(text)
    assert info.value.hint


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("24GB", 24 * 10**9),
        ("80GiB", 80 * 2**30),
        ("16G", 16 * 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5TB", 1_500_000_000_000),
        ("100B", 100),
    ],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["24", "24XB", "-1GB", "0GB", "GB"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(UserError):
        parse_bytes(text)


def test_parse_length() -> None:
    assert parse_length("4k") == 4096 and parse_length("2048") == 2048
    for bad in ("-5", "0", "4.5k", "long"):
        with pytest.raises(UserError):
            parse_length(bad)


def test_formatting() -> None:
    assert format_bytes(80 * 2**30) == "80.0 GiB"
    assert format_bytes(512) == "512 B"
    assert format_count(6_738_415_616) == "6.74B" and format_count(124_439_808) == "124M"
    assert format_seconds(0.0123) == "12.3 ms" and format_seconds(3.5) == "3.50 s"
