"""The `recommend` report: the ranked table, the first pick's reasons, why-not, suggestions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape

from advisor.shell.render import common
from advisor.shell.render.common import Col, bar, print_table, safe
from advisor.units import format_bytes, format_count, format_seconds

if TYPE_CHECKING:
    from advisor.plan import Recommendation, RecommendReport


def _to_target(rel: float | None) -> str:
    return "-" if rel is None else f"×{rel:.2g}"


def _render_steps(r: Any) -> None:
    """The time-to-target line: the published step range and the measured proxy beside it."""
    band = r.steps_vs_adamw
    if band is None:
        return
    source = getattr(r.steps_source, "value", r.steps_source)
    text = (
        f"to target: time to AdamW's loss relative to the same layout with AdamW; #1 needs "
        f"{band.central:.3g}× AdamW's steps ({band.low:.3g}–{band.high:.3g}, {source}"
        + (", extrapolated" if r.steps_extrapolated else "")
        + ")"
    )
    if r.steps_proxy is not None:
        text += f"; measured-proxy {r.steps_proxy:.3g}× on this device"
    common.console.print(f"[dim]{text}[/]")


def render_recommend(report: RecommendReport, *, explain: bool = False) -> None:
    """The ranked table, the first pick's reasons and memory, why-not, and suggestions."""
    _render_header(report)
    if not report.recommendations:
        common.console.print(
            f"\n[bold red]Nothing fits.[/] {report.candidates_considered} configurations "
            "considered; what would fit:"
        )
        for s in report.suggestions:
            common.console.print(f"  • [bold]{safe(s.change)}[/]: {safe(s.detail)}")
    else:
        wide = common.console.width >= 100
        _render_table(report, wide=wide)
        _render_row_notes(report, wide=wide)
        best = report.recommendations[0]
        _render_steps(best)
        from advisor.shell.render.wholerun import render_whole_run

        render_whole_run(report)
        _render_best(best)
    _render_why_not_and_advice(report)
    if explain:
        _render_explain(report)
    _render_search_footer(report)


def _render_header(report: RecommendReport) -> None:
    """The workload line, the hardware line, the cost note and the offload host."""
    hw, wl = report.hardware, report.workload
    common.console.print(
        f"[bold]{safe(wl.model)}[/] ({format_count(wl.parameters)} parameters), {wl.task}, "
        + (
            f"{wl.image_size} px images, global batch {wl.global_batch} images"
            if wl.image_size
            else f"seq {wl.seq_len}, global batch {wl.global_batch}"
        )
        + f" ({wl.global_batch_source}), "
        f"{wl.world_size} device(s), objective {wl.objective}"
        + (", differentially private" if wl.privacy == "dp" else "")
    )
    nodes = f" × {hw.nodes} nodes" if hw.nodes > 1 else ""
    devices = f"{hw.gpus_per_node} × " if hw.gpus_per_node > 1 else ""
    common.console.print(
        f"on {devices}{safe(hw.name)}{nodes} ({safe(hw.source)}): "
        f"{format_bytes(hw.device_memory_bytes)} per "
        f"device, {format_bytes(hw.usable_memory_bytes)} usable "
        f"({hw.safety_margin:.0%} safety margin)"
    )
    common.console.print(f"[dim]{safe(report.cost_note)}[/]")
    if hw.host_source:
        common.console.print(
            f"[dim]host for offload: {format_bytes(hw.host_memory_bytes)} RAM"
            + (f", {format_bytes(hw.nvme_bytes)} NVMe" if hw.nvme_bytes else "")
            + f" per device ({escape(hw.host_source)})[/]"
        )


def _render_table(report: RecommendReport, *, wide: bool) -> None:
    """The ranked table, one row per recommendation (`free` only on a wide console)."""
    from rich import box

    images = report.workload.image_size is not None
    cnn = images and report.workload.seq_len == 1  # a CNN has no attention kernel
    columns = [
        Col("#", justify="right", nowrap=True),
        Col("optimizer", ident=True),
        Col("precision", ident=True),
        *(() if cnn else (Col("attn", ident=True),)),
        Col("batch", justify="right", nowrap=True),
        Col("savers, layout"),
        Col("peak", justify="right", nowrap=True),
        *((Col("free", justify="right", nowrap=True),) if wide else ()),
        Col("step", justify="right", nowrap=True),
        Col("to target", justify="right", nowrap=True),
        Col("images/s" if images else "tokens/s", justify="right", nowrap=True),
    ]
    rows = []
    for r in report.recommendations:
        rows.append(
            [
                str(r.rank),
                r.optimizer,
                r.precision,
                *(() if cnn else (r.attention,)),
                f"{r.micro_batch}×{r.grad_accumulation}",
                ", ".join(_savers(r)) or "-",
                format_bytes(r.peak_memory_bytes),
                *((format_bytes(r.headroom_bytes),) if wide else ()),
                format_seconds(r.step_time_s),
                _to_target(r.time_to_target_rel),
                _rate(r.images_per_s if images and r.images_per_s is not None else r.tokens_per_s),
            ]
        )
    print_table(columns, rows, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 10 else f"{per_s:.2g}"


def _savers(r: Recommendation) -> list[str]:
    """The short names of a row's memory savers, plus its layout when it is sharded."""
    savers = [
        _SHORT.get(t, t)
        for t in r.techniques
        if t not in (r.optimizer, r.precision) and not t.endswith("attention")
    ]
    savers = [x for x in savers if x]
    if (
        r.tensor_parallel > 1
        or r.pipeline_parallel > 1
        or r.expert_parallel > 1
        or r.context_parallel > 1
    ):
        # The layout names the sharding too ("tp2 pp2 dp8 fsdp").
        sharded = {"zero-1", "zero-2", "zero-3", "fsdp", "hsdp"}
        savers = [x for x in savers if x not in sharded] + [r.layout]
    return savers


def _render_row_notes(report: RecommendReport, *, wide: bool) -> None:
    """Under the table: each row's alternatives and batch notes, the legend, the trade."""
    sources = sorted({r.cost_source for r in report.recommendations})
    for r in report.recommendations:
        if r.also:
            common.console.print(f"[dim]  #{r.rank} also: {escape('; '.join(r.also))}[/]")
        if r.global_batch_note:
            common.console.print(f"[dim]  #{r.rank}: {escape(r.global_batch_note)}[/]")
    common.console.print(
        f"[dim]costs: {', '.join(sources)}; batch: micro-batch × accumulation; "
        "peak: per-device memory" + ("; free: what it leaves" if wide else "") + "[/]"
    )
    if report.trade:
        common.console.print(f"[bold]trade:[/] {escape(report.trade)}")


def _render_best(best: Recommendation) -> None:
    """Why #1: the rules behind the first pick, then its memory breakdown as bars."""
    common.console.print(
        f"\n[bold]Why #1[/] ({best.optimizer}, {best.precision}, {best.attention}):"
    )
    if not best.reasons:
        common.console.print("  ranked first on cost; no rule prefers or avoids its techniques")
    for reason in best.reasons:
        common.console.print(
            f"  • [cyan]{reason.rule}[/] {reason.effect}: "
            f"{escape(_first_sentence(reason.rationale))}"
        )
        if reason.sources:
            common.console.print(f"    [dim]{escape('; '.join(reason.sources))}[/]")
    if best.moe_overlap_reason:
        common.console.print(f"  • MoE all-to-all overlap {escape(best.moe_overlap_reason)}")
    common.console.print(
        f"\n[bold]Memory of #1[/] per device ({format_bytes(best.peak_memory_bytes)}):"
    )
    total = max(best.peak_memory_bytes, 1)
    for name, value in best.memory_breakdown.items():
        if value:
            common.console.print(
                f"  {name:<22} {bar(value / total)} {format_bytes(value):>10}", markup=False
            )
    if best.memory_breakdown.get("cuda_context"):
        common.console.print(
            f"  torch: max_memory_allocated {format_bytes(best.allocated_memory_bytes)}, "
            f"max_memory_reserved {format_bytes(best.reserved_memory_bytes)}",
            markup=False,
        )


def _render_why_not_and_advice(report: RecommendReport) -> None:
    """Why not (options the rules turned down) and advice (rules that only advise)."""
    if report.why_not:
        common.console.print("\n[bold]Why not[/]")
        for w in report.why_not:
            common.console.print(f"  • {safe(w.option)}: {safe(w.verdict)}")
    if report.advice:
        common.console.print("\n[bold]Advice[/]")
        for a in report.advice:
            common.console.print(f"  • {safe(a.effect)} [dim]({safe(a.rule)})[/]")


def _render_explain(report: RecommendReport) -> None:
    """`--explain`: every rule that fired, with its rationale and sources, then the facts."""
    common.console.print(f"\n[bold]Every rule that fired[/] ({len(report.fired_rules)})")
    for fired in report.fired_rules:
        common.console.print(f"  • [cyan]{safe(fired.rule)}[/] {safe(fired.effect)}")
        common.console.print(f"    {safe(fired.rationale)}")
        if fired.sources:
            common.console.print(f"    [dim]{safe('; '.join(fired.sources))}[/]")
    common.console.print(
        "\n[bold]Facts[/] " + ", ".join(f"{k}={_fact(v)}" for k, v in report.facts.items())
    )


def _render_search_footer(report: RecommendReport) -> None:
    """The search statistics and the count of configurations considered and rejected."""
    rejected = sum(report.rejected_counts.values())
    if report.search is not None:
        st = report.search
        common.console.print(
            f"\n[dim]plan space {st.plans_considered:,} plans: {st.plans_evaluated} evaluated, "
            f"{st.plans_pruned:,} pruned as dominated, equivalent or bounded out "
            f"({st.ladders_bounded} core-layout ladders cut by their bound); "
            f"{st.rows_collapsed} equivalent plans folded into rows[/]"
        )
        for note in st.notes:
            common.console.print(f"[dim]{escape(note)}[/]")
    common.console.print(
        f"[dim]{report.candidates_considered} configurations considered, {rejected} rejected "
        f"({', '.join(f'{k}: {v}' for k, v in report.rejected_counts.items())}); "
        "--json --show-rejected lists them all with reasons[/]"
    )


_SHORT = {
    "activation-checkpointing-full": "ckpt-full",
    "activation-checkpointing-selective": "ckpt-selective",
    "activation-checkpointing-selective-op": "ckpt-sel-op",
    "activation-checkpointing-selective-layer": "ckpt-sel-layer",
    "cpu-offload-optimizer": "offload-optim",
    "cpu-offload-params": "offload-params",
    "gradient-accumulation": "grad-accum",
    "fused-cross-entropy": "fused-CE",
    "fused-backward-step": "step-in-backward",
    "activation-offload": "act-offload",
    "optimizer-states-8bit": "8-bit states",
    "nvme-offload": "nvme",
    "hybrid-shard": "hsdp",
    # The layout says these: "tp8 pp16 dp1".
    "tensor-parallel": "",
    "sequence-parallel": "",
    "pipeline-parallel": "",
    "expert-parallel": "",
    "context-parallel": "",
    "ulysses-context-parallel": "",
}


# Abbreviations whose full stop ends no sentence ("(e.g. Volta and Turing)" cut after "e.g."
# left a rule's rationale mid-sentence).
_ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.", "al.", "approx.", "Fig.", "Eq.", "Sec.", "No.")


def _first_sentence(text: str) -> str:
    """The first sentence: up to the first ". " outside parentheses that follows no
    abbreviation (the whole text when there is none)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(depth - 1, 0)
        elif (
            ch == "."
            and depth == 0
            and text[i + 1 : i + 2] == " "
            and not text[: i + 1].endswith(_ABBREVIATIONS)
        ):
            return text[: i + 1]
    return text


def _fact(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
