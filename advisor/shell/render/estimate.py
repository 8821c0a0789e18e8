"""The `estimate` report: the memory breakdown, phases, verdict and step time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from advisor.config import MoeDispatcher, ParallelLayout
from advisor.shell.render import common
from advisor.shell.render.common import bar, safe
from advisor.units import format_bytes, format_count, format_seconds

if TYPE_CHECKING:
    from advisor.app.estimate import EstimateReport


def render_estimate(report: EstimateReport) -> None:
    """The memory breakdown with a bar per component, the phases and the verdict."""
    _render_header(report)
    _render_table(report)
    _render_verdict(report)
    _render_step_and_notes(report)


def _moe_layout(p: ParallelLayout) -> str:
    """The MoE parts of the layout line: expert tensor parallelism where it differs from
    TP, a dispatcher other than all-to-all, a capacity factor."""
    parts = []
    if p.expert_parallel > 1 and p.expert_tp != p.tensor_parallel:
        parts.append(f"ETP {p.expert_tp}")
    if p.expert_parallel > 1 and p.moe_dispatcher is not MoeDispatcher.ALLTOALL:
        parts.append(f"{p.moe_dispatcher.value} dispatcher")
    if p.capacity_factor is not None:
        padded = ", padded" if p.pad_to_capacity else ""
        parts.append(f"capacity factor {p.capacity_factor:g}{padded}")
    return "".join(f", {x}" for x in parts)


def _render_header(report: EstimateReport) -> None:
    """The configuration line and the kernel stack."""
    c = report.config
    # A CNN (one image per "token") has no attention to name.
    cnn = report.image_size is not None and c.batch.seq_len == 1
    layout = ""
    if (
        c.layout.tensor_parallel > 1
        or c.layout.pipeline_parallel > 1
        or c.layout.expert_parallel > 1
    ):
        layout = (
            f", TP {c.layout.tensor_parallel} × PP {c.layout.pipeline_parallel}"
            + (f" (×{c.layout.virtual_stages} interleaved)" if c.layout.virtual_stages > 1 else "")
            + (f", EP {c.layout.expert_parallel}" if c.layout.expert_parallel > 1 else "")
            + _moe_layout(c.layout)
        )
    if c.layout.context_parallel > 1:
        layout += (
            f", CP {c.layout.context_parallel} ({c.layout.context_parallel_kind.value}: "
            f"{c.batch.seq_len // c.layout.context_parallel} tokens per rank)"
        )
    savers = [
        name
        for name, on in (
            ("fused loss", c.kernels.fused_loss),
            ("optimizer in backward", c.savers.optimizer_in_backward),
            ("activation offload", c.savers.activation_offload),
        )
        if on
    ]
    common.console.print(
        f"[bold]{safe(report.model)}[/] ({format_count(report.parameters)} parameters, "
        f"{format_count(report.trainable_parameters)} trainable) — {c.task.value}, {c.optimizer}, "
        f"{c.precision.value}, "
        + ("" if cnn else f"{c.kernels.attention.value} attention, ")
        + f"checkpointing {c.savers.checkpointing.value}, "
        + (
            f"micro-batch {c.batch.micro_batch} images of {report.image_size} px"
            + (f" ({c.batch.seq_len} tokens each)" if c.batch.seq_len > 1 else "")
            if report.image_size
            else f"micro-batch {c.batch.micro_batch} × {c.batch.seq_len} tokens"
        )
        + (f" × {c.batch.grad_accumulation} accumulation" if c.batch.grad_accumulation > 1 else "")
        + f", {c.layout.data_parallel} data-parallel device(s){layout}, "
        f"sharding {c.layout.sharding.value}, offload {c.savers.offload.value}"
        + (f", {', '.join(savers)}" if savers else ""),
        markup=True,
    )
    stack_note = " (the default; --stack fused for FlashAttention + fused kernels)"
    common.console.print(
        f"kernel stack: [bold]{report.stack.value}[/]"
        + (stack_note if report.stack.value == "hf" else "")
    )


def _render_table(report: EstimateReport) -> None:
    """The breakdown table (bytes, what is alive at the peak, a bar), then the phases line."""
    peak = next((p for p in report.phases if p.name == report.peak_phase), None)
    rows = [(k, v) for k, v in report.breakdown.items() if k != "overhead"]
    rows += [(f"overhead: {k}", v) for k, v in report.overhead_breakdown.items()]
    table = Table(title_justify="left")
    # NOTE: on a narrow terminal rich shrinks every column: the component names are ids
    # (the JSON's keys) and keep their width; the bar gives way first.
    names = [name for name, value in rows if value] + ["peak per device"]
    table.add_column("component", no_wrap=True, min_width=max(len(n) for n in names))
    table.add_column("bytes", justify="right", no_wrap=True, min_width=10)
    table.add_column("at peak", justify="right", no_wrap=True, min_width=10)
    table.add_column("", no_wrap=True, max_width=24)
    total = max(report.total_bytes, 1)
    for name, value in rows:
        if value == 0:
            continue
        key = name.removeprefix("overhead: ")
        alive = peak.components.get(key, 0) if peak else value
        if key in report.overhead_breakdown and peak is not None:
            alive = value
        table.add_row(
            name,
            format_bytes(value),
            format_bytes(alive) if alive else "—",
            bar(alive / total),
        )
    table.add_row(
        "[bold]peak per device[/]",
        "",
        f"[bold]{format_bytes(report.total_bytes)}[/]",
        f"in {report.peak_phase}",
    )
    if report.host_bytes:
        table.add_row("host (offloaded)", format_bytes(report.host_bytes), "", "")
    if report.nvme_bytes:
        table.add_row("NVMe (offloaded)", format_bytes(report.nvme_bytes), "", "")
    common.console.print(table)
    common.console.print(
        "phases: " + " · ".join(f"{p.name} {format_bytes(p.total_bytes)}" for p in report.phases),
        markup=False,
    )
    if report.device == "cuda":
        common.console.print(
            f"torch: max_memory_allocated {format_bytes(report.allocated_bytes)}, "
            f"max_memory_reserved {format_bytes(report.reserved_bytes)}",
            markup=False,
        )


def _render_verdict(report: EstimateReport) -> None:
    """Fits or not on the device, the savers that would change it, and host RAM."""
    if report.device_memory_bytes is not None:
        verdict = "[green]fits[/]" if report.fits else "[red]does not fit[/]"
        common.console.print(
            f"{verdict} on {report.hardware or report.device_name}: "
            f"{format_bytes(report.total_bytes)} of {format_bytes(report.device_memory_bytes)}"
        )
    for case in report.recompute_range:
        verdict = "fits" if case.fits else "does not fit" if case.fits is False else "no device"
        step = "" if case.step_seconds is None else f", step {format_seconds(case.step_seconds)}"
        common.console.print(
            f"--checkpointing {case.checkpointing.value}: {format_bytes(case.total_bytes)}"
            f" ({verdict}{step})",
            markup=False,
        )
    for alt in report.alternatives:
        verdict = "fits" if alt.fits else "does not fit"
        common.console.print(
            f"with {alt.change} this {verdict}: {format_bytes(alt.total_bytes)} "
            f"(−{format_bytes(alt.saved_bytes)})",
            markup=False,
        )
    if report.host_fits is False:
        common.console.print(
            "[red]offloaded states exceed host RAM[/] "
            f"({format_bytes(report.host_memory_bytes or 0)})"
        )


def _render_step_and_notes(report: EstimateReport) -> None:
    """The step time with its components, then the notes."""
    if report.step_time is not None:
        st = report.step_time
        seconds = {
            k: float(v["seconds"]) if isinstance(v, dict) else float(v)
            for k, v in st.components.items()
        }
        parts = ", ".join(
            f"{k} {format_seconds(v)}"
            for k, v in seconds.items()
            if v or report.image_size is None  # an image model has no LM head or attention
        )
        rate = f", {report.images_per_s:,.0f} images/s" if report.images_per_s else ""
        common.console.print(f"step time {format_seconds(st.seconds)} ({st.source}){rate}: {parts}")
    for note in report.notes:
        common.console.print(f"[dim]note: {safe(note)}[/]")
