"""What a calibration measured (`calibrate`, `calibrate show`, `--convergence`); its progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from advisor.shell.render import common
from advisor.shell.render.common import Col, print_table, safe
from advisor.units import format_count, format_seconds

if TYPE_CHECKING:
    from advisor.cost.data import CalibrationCache, ShapeResults


def render_convergence(cache: Any) -> None:
    """`calibrate --convergence`: each optimizer's steps to AdamW's loss on the proxy."""
    common.console.print(
        f"[bold]convergence proxy[/] ({cache.family}, {format_count(cache.proxy_params)} "
        f"parameters, {cache.steps} steps of {cache.batch_tokens} tokens) on {cache.device}"
    )
    common.console.print(f"[dim]corpus: {cache.corpus}[/]")
    target = "-" if cache.target_loss is None else f"{cache.target_loss:.4f}"
    common.console.print(f"target: AdamW's best final held-out loss {target}")
    table = Table(box=None, pad_edge=False)
    for col in ("optimizer", "best lr", "final loss", "steps to target", "vs AdamW", "s/step"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for r in cache.results:
        best = next((x for x in r.runs if x.lr == r.best_lr), None)
        final = "-" if best is None or best.final_loss is None else f"{best.final_loss:.4f}"
        if r.ratio is None:
            ratio = r.status if r.status != "ok" else "-"
        else:
            ratio = f"{r.ratio:.2f}" if r.reached else f"≥ {r.ratio:.2f} (not reached)"
        table.add_row(
            r.optimizer,
            "-" if r.best_lr is None else f"{r.best_lr:g}",
            final,
            "-" if r.steps_to_target is None else f"{r.steps_to_target:.0f}",
            ratio,
            "-" if r.seconds_per_step is None else f"{r.seconds_per_step * 1000:.0f} ms",
        )
    common.console.print(table)
    partial = (
        ", partial (budget or Ctrl-C): raise --budget for the whole sweep" if cache.partial else ""
    )
    common.console.print(
        f"[dim]{cache.seconds:.0f} s of a {cache.budget_s:.0f} s budget{partial}[/]"
    )
    for w in cache.warnings:
        common.console.print(f"[yellow]warning:[/] {safe(w)}")


@contextmanager
def calibration_progress(enabled: bool = True) -> Iterator[Callable[[str, float], None] | None]:
    """A progress bar on stderr for calibration; yields the callback (label, fraction done).

    The bar appears on the first call, so commands that never calibrate show nothing.
    """
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    state: dict[str, Any] = {}

    def update(label: str, fraction: float) -> None:
        if "bar" not in state:
            bar_ = Progress(
                TextColumn("[bold]calibrating[/]"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=common.err_console,
                transient=True,
            )
            bar_.start()
            state["bar"] = bar_
            state["task"] = bar_.add_task(label, total=1.0)
        state["bar"].update(
            state["task"], completed=max(0.0, min(1.0, fraction)), description=label
        )

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()


def render_calibration(cache: CalibrationCache, spec_key: str | None = None) -> None:
    """What a calibration measured: device, roofline, layers, attention fits, optimizers."""
    _render_calibration_header(cache)
    for shape in cache.shapes:
        if spec_key is not None and shape.shape.key() != spec_key:
            continue
        _render_shape(shape)
    for w in cache.warnings:
        common.err_console.print(f"[yellow]warning:[/] {safe(w)}")


def _render_calibration_header(cache: CalibrationCache) -> None:
    """The device and torch fingerprint, then the roofline: GEMM, copy and all-reduce rates."""
    fp = cache.fingerprint
    state = "[yellow]partial[/]" if cache.partial else "complete"
    common.console.print(
        f"[bold]{fp.device_name}[/] ({fp.device}), torch {fp.torch_version} ({fp.torch_build}), "
        f"{fp.threads} threads — {cache.mode} calibration, {state}, {cache.seconds:.1f} s, "
        f"{cache.created_at}"
    )
    gemm = ", ".join(f"{k} {v:g}" for k, v in cache.gemm_gflops.items())
    common.console.print(
        f"GEMM GFLOP/s: {gemm}; copy {cache.copy_gb_s or 0:g} GB/s; all-reduce "
        + (f"{cache.allreduce_gb_s:g} GB/s" if cache.allreduce_gb_s else "not measured (--full)")
    )


def _render_shape(shape: ShapeResults) -> None:
    """One layer shape: the block timings, the attention fits, the optimizer steps, notes."""
    common.console.print(f"\n[bold]layer shape {shape.shape.key()}[/]")
    for lt in shape.layers:
        scale = f", widths x{lt.width_scale:.2f}" if lt.width_scale < 1 else ""
        common.console.print(
            f"  block fwd+bwd {lt.dtype}: {format_seconds(lt.timing.median_s)} "
            f"(IQR {format_seconds(lt.timing.iqr_s)}) for {lt.tokens} tokens "
            f"= {lt.seconds_per_token * 1e6:.1f} µs/token{scale}"
        )
    _render_attention_fits(shape)
    _render_optimizer_steps(shape)
    for note in shape.notes:
        common.console.print(f"[dim]note: {escape(note)}[/]")


def _render_attention_fits(shape: ShapeResults) -> None:
    """The attention fits per backend and dtype (a failed fit shows why)."""
    attention_rows = []
    for f in shape.attention:
        if f.failed:
            attention_rows.append(
                [f.backend, f.dtype, "-", f"[dim]{escape(f.failed[:40])}[/]", "", "", ""]
            )
            continue
        attention_rows.append(
            [
                f.backend,
                f.dtype,
                ",".join(map(str, f.seq_lens)),
                f"{f.a:.3g}",
                f"{f.b:.3g}",
                f"{f.c:.3g}",
                f"{f.max_rel_residual:.1%}",
            ]
        )
    print_table(
        [
            Col("backend", ident=True),
            Col("dtype", ident=True),
            Col("seq lens"),
            Col("a (s/token²)"),
            Col("b"),
            Col("c"),
            Col("max resid."),
        ],
        attention_rows,
        title="attention fwd+bwd per layer and sample: a·s² + b·s + c",
    )


def _render_optimizer_steps(shape: ShapeResults) -> None:
    """The optimizer step on one layer: steady median and IQR, first step, ns per parameter."""
    optimizer_rows = []
    for o in shape.optimizers:
        per = o.per_step_s
        optimizer_rows.append(
            [
                o.optimizer,
                o.variant,
                format_seconds(o.steady.median_s) if o.steady else "-",
                format_seconds(o.steady.iqr_s) if o.steady else "-",
                format_seconds(o.first_step_s) if o.first_step_s else "-",
                str(o.interval or "-"),
                f"{per / o.layer_parameters * 1e9:.2f}" if per and o.layer_parameters else "-",
                o.status if o.status == "ok" else f"{o.status}: {escape(o.detail[:50])}",
            ]
        )
    print_table(
        [
            Col("optimizer", ident=True),
            Col("variant", ident=True),
            Col("median", nowrap=True),
            Col("IQR", nowrap=True),
            Col("first step", nowrap=True),
            Col("interval"),
            Col("ns/param"),
            Col("status"),
        ],
        optimizer_rows,
        title="optimizer step on one layer",
    )
