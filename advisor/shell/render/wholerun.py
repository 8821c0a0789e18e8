"""The whole run under a recommend report (wall time, GPU-hours, energy, cost, the verdict
and its remedies), and the hardware comparison of `recommend --hardware a,b,c`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from advisor.cost.run import RunEstimate, format_duration
from advisor.shell.render import common
from advisor.shell.render.common import safe

if TYPE_CHECKING:
    from advisor.app.compare import CompareReport
    from advisor.plan import RecommendReport


def money(usd: float) -> str:
    """Dollars: cents below $100, whole dollars above."""
    return f"${usd:,.2f}" if usd < 100 else f"${usd:,.0f}"


def run_line(run: RunEstimate) -> str:
    """One run in a line: time, steps, GPU-hours, energy, cost."""
    energy = f"{run.energy_kwh:,.1f} kWh" if run.energy_kwh is not None else "energy unknown"
    cost = money(run.cost_usd) if run.cost_usd is not None else "no price"
    return (
        f"{format_duration(run.wall_seconds)} ({run.steps:,} steps), "
        f"{run.gpu_hours:,.1f} GPU-h, {energy}, {cost}"
    )


def render_whole_run(report: RecommendReport) -> None:
    """The pick's run against the bound and, when impractical, what to do instead."""
    whole = report.whole_run
    if whole is None or not report.recommendations:
        return
    pick = report.recommendations[0].run
    style = "bold" if whole.practical else "bold red"
    common.console.print(f"\n[{style}]Whole run[/]: {safe(whole.verdict)}")
    if whole.budget.default:
        common.console.print(f"  [dim]{safe(whole.budget.source)}[/]")
    elif pick is not None:
        common.console.print(f"  #1: {safe(run_line(pick))}")
        common.console.print(f"  [dim]energy: {safe(pick.energy_basis)}[/]")
        common.console.print(f"  [dim]price: {safe(pick.price_source)}[/]")
    if whole.remedies:
        common.console.print("  what would make it practical:")
    for r in whole.remedies:
        mark = "" if r.run.practical else " (still over the bound)"
        common.console.print(
            f"  • [bold]{safe(r.change)}[/] ({safe(r.command)}): {safe(r.plan)}: "
            f"{safe(run_line(r.run))}{mark}"
        )
    if not whole.practical and not whole.remedies:
        common.console.print("  no smaller model, adapter or profile makes it practical")


def render_compare(report: CompareReport) -> None:
    """The hardware options ranked, each with its best plan and its run."""
    b = report.budget
    common.console.print(
        f"{safe(report.model)}, {safe(report.task)}: {b.tokens:,} tokens "
        f"({safe(b.source)}); ranked by {report.sort} to finish"
    )
    cols = [
        common.Col("#", justify="right"),
        common.Col("hardware", ident=True),
        common.Col("best plan"),
        common.Col("tok/s", justify="right"),
        common.Col("wall time", justify="right"),
        common.Col("GPU-h", justify="right"),
        common.Col("kWh", justify="right"),
        common.Col("$/GPU-h", justify="right"),
        common.Col("cost", justify="right"),
    ]
    rows = []
    for o in report.options:
        if o.run is None:
            name = f"{o.devices} x {o.hardware}"
            rows.append([str(o.rank), name, safe(o.note), "-", "-", "-", "-", "-", "-"])
            continue
        r = o.run
        rows.append(
            [
                str(o.rank),
                f"{o.devices} x {o.hardware}",
                safe(o.plan),
                f"{o.tokens_per_s:,.0f}",
                format_duration(r.wall_seconds) + ("" if r.practical else " !"),
                f"{r.gpu_hours:,.1f}",
                f"{r.energy_kwh:,.1f}" if r.energy_kwh is not None else "-",
                f"{r.usd_per_gpu_hour:.2f}" if r.usd_per_gpu_hour is not None else "-",
                money(r.cost_usd) if r.cost_usd is not None else "-",
            ]
        )
    common.print_table(cols, rows)
    if any(o.run is not None and not o.run.practical for o in report.options):
        common.console.print(f"[dim]! longer than --max-days ({b.max_days:g} days)[/]")
    common.console.print(f"[dim]energy: {safe(report.energy_note)}[/]")
    for o in report.options:
        if o.run is not None and o.run.usd_per_gpu_hour is not None:
            common.console.print(f"[dim]{safe(o.hardware)}: {safe(o.run.price_source)}[/]")


def render_estimate_run(run: RunEstimate) -> None:
    """The estimated configuration's whole run under the user's budget."""
    style = "bold" if run.practical else "bold red"
    word = "" if run.practical else f" (impractical: over {run.max_days:g} days, --max-days)"
    common.console.print(f"\n[{style}]Whole run[/] of {run.tokens:,} tokens{word}:")
    common.console.print(f"  {safe(run_line(run))}")
    common.console.print(f"  [dim]energy: {safe(run.energy_basis)}[/]")
    common.console.print(f"  [dim]price: {safe(run.price_source)}[/]")
