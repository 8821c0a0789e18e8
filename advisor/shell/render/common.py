"""What every report shares: the consoles, user text made safe, bars, tables that never cut ids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from advisor.shell.jsonout import print_json as print_json  # the commands call render.print_json

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def safe(text: object) -> str:
    """User text (a file, a path, the environment) made safe for rich: control characters
    removed and markup escaped, so ``[/x]`` or ``[link=...]`` prints as written."""
    from advisor.text import plain

    return escape(plain(str(text), keep_newlines=True))


def note(text: str) -> None:
    """One line on stderr saying what the command is doing (stdout stays the report)."""
    from advisor.text import plain

    err_console.print(f"note: {plain(text)}", markup=False, highlight=False, soft_wrap=True)


def bar(fraction: float, width: int = 24) -> str:
    """A text bar for a fraction in [0, 1] (over 1 is drawn full, in red by the caller)."""
    fraction = max(0.0, min(1.0, fraction))
    full = round(fraction * width)
    return "█" * full + "░" * (width - full)


_FOLD_FLOOR = 12


class Col(NamedTuple):
    """A table column: an ``ident`` column holds ids a user types, which are never cut."""

    header: str
    ident: bool = False
    justify: JustifyMethod = "left"
    style: str | None = None
    nowrap: bool = False  # short values (numbers with units) kept on one line


def print_table(
    columns: Sequence[Col],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    **table_options: Any,
) -> None:
    """Draw rows so that no id is ever truncated, at any width and when piped.

    Id columns never wrap and are as wide as their longest id; every other cell folds.
    When even the narrowest such table is wider than the console, each row is printed as
    a block instead (its first id, then one ``header: value`` line per other cell), with
    lines that the terminal may wrap but nothing crops.
    """
    from rich.measure import Measurement

    rows = [list(r) for r in rows]
    table = Table(title=title, title_justify="left", **table_options)
    for i, col in enumerate(columns):
        cells = [Text.from_markup(r[i]).plain for r in rows]
        if col.ident or col.nowrap:
            widest = max([len(col.header), *(cell_len(c) for c in cells)])
            table.add_column(
                col.header, justify=col.justify, style=col.style, no_wrap=True, min_width=widest
            )
            continue
        # NOTE: other columns may fold, but not below their longest word (up to a cap), so a
        # table never degrades into one letter per line: below that, the block layout is used.
        words = [w for c in [col.header, *cells] for w in c.split()]
        longest = min(_FOLD_FLOOR, max((cell_len(w) for w in words), default=1))
        table.add_column(
            col.header, justify=col.justify, style=col.style, overflow="fold", min_width=longest
        )
    for r in rows:
        table.add_row(*r)
    # NOTE: measured unconstrained: rich clamps a measurement to the width it is given.
    if Measurement.get(console, console.options.update_width(10**6), table).minimum <= (
        console.width
    ):
        console.print(table)
        return
    if title:
        console.print(f"[bold]{title}[/]", soft_wrap=True)
    for r in rows:
        head = r[0] if columns[0].ident else f"{columns[0].header}{r[0]}"
        console.print(head, soft_wrap=True, style=columns[0].style or "bold")
        for col, cell in zip(columns[1:], r[1:], strict=True):
            console.print(f"  {escape(col.header)}: {cell}", soft_wrap=True)
