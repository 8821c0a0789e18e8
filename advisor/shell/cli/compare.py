"""`optadvise recommend --hardware a,b,c`: hardware options for the same job, ranked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from advisor.errors import EXIT_NOTHING_FITS, UserError

if TYPE_CHECKING:
    from advisor.app.wholerun import RunOptions
    from advisor.model.spec import ModelSpec


def compare_hardware(
    hardware: str,
    *,
    spec: ModelSpec,
    options: RunOptions,
    sort: str | None,
    emit: str | None,
    json_out: bool,
    request_flags: dict[str, Any],
    rules: list[Path] | None,
) -> None:
    """Plan the job on each listed profile and print the ranking (exit 3 when none fits)."""
    from advisor.app import compare

    if emit is not None:
        raise UserError(
            "--emit writes one plan, and --hardware a,b,c compares several",
            "pick one profile with --hardware NAME to emit its plan",
        )
    names = compare.parse_hardware_list(hardware)
    report = compare.compare_hardware(
        names, spec=spec, options=options, flags=request_flags, sort=sort, rules_dirs=rules
    )
    if json_out:
        from advisor.shell.jsonout import print_json

        print_json(report)
    else:
        from advisor.shell.render.wholerun import render_compare

        render_compare(report)
    if not report.fits:
        raise typer.Exit(EXIT_NOTHING_FITS)
