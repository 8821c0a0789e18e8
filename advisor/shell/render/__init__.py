"""Rich tables, trees, bars and JSON: how reports look. No decisions are made here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from advisor.shell.jsonout import print_json as print_json  # the commands call render.print_json
from advisor.units import format_bytes, format_count, format_seconds

if TYPE_CHECKING:
    # NOTE: only for annotations: importing the report models here would make every
    # command pay for building every model class at start-up (see benchmarks/startup.py).

    from advisor.app.estimate import EstimateReport
    from advisor.cost.data import CalibrationCache
    from advisor.hardware.profiles import HardwareProfile, ProbeReport
    from advisor.plan import RecommendReport
    from advisor.rules.checks import CheckReport
    from advisor.rules.ruleset import LocatedRule
    from advisor.rules.taxonomy import Taxonomy, Technique

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


def _yes(flag: bool | None) -> str:
    return "[green]yes[/]" if flag else "[dim]no[/]"


def _kv_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


def render_probe(report: ProbeReport) -> None:
    """Draw the probe report as tables."""
    cpu, mem, sw = report.cpu, report.memory, report.software
    isa = ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in cpu.features.items())
    cores = f"{cpu.physical_cores or '?'} physical / {cpu.logical_cores} logical"
    cores += f", {cpu.usable_cores} usable"
    if cpu.cgroup_cpu_limit:
        cores += f", cgroup quota {cpu.cgroup_cpu_limit:g}"
    gemm = ", ".join(f"{k} {v:g}" for k, v in cpu.gemm_gflops.items())
    rows = [
        ("model", safe(cpu.model)),
        ("cores", cores),
        ("ISA", isa),
        ("torch capability", str(cpu.torch_capability or "n/a")),
        ("torch threads", str(cpu.torch_threads or "n/a")),
        ("GEMM GFLOP/s", gemm or "not measured (--no-torch)"),
        (
            "fast bf16 / fp16",
            f"{_yes(cpu.fast_bf16)} / {_yes(cpu.fast_fp16)} ({cpu.fast_16bit_source})",
        ),
    ]
    console.print(_kv_table("CPU", rows))
    if cpu.gemm_gflops and not cpu.fast_bf16:
        console.print(
            "  [yellow]bf16 is slow on this CPU: train in fp32 here "
            "(16-bit paths are steered away)[/]"
        )
    console.print()
    limit = format_bytes(mem.effective_limit_bytes)
    rows = [
        ("total", format_bytes(mem.total_bytes)),
        ("available", format_bytes(mem.effective_available_bytes)),
        ("effective limit", f"{limit} — {mem.limit_source}"),
        (
            "cgroup",
            f"{mem.cgroup_version or 'none found'}, limit "
            + (format_bytes(mem.cgroup_limit_bytes) if mem.cgroup_limit_bytes else "unlimited"),
        ),
    ]
    console.print(_kv_table("Memory", rows))
    console.print()
    if not report.gpus:
        console.print("[bold]GPUs[/]  none found: training runs on the CPU.")
    else:
        table = Table(title="GPUs", title_justify="left")
        for col in (
            "#",
            "name",
            "memory (free/total)",
            "cc",
            "driver / CUDA",
            "power",
            "PCIe",
            "NVLink",
            "bf16",
            "tf32",
            "fp8",
            "FA-2",
        ):
            table.add_column(col)
        for g in report.gpus:
            memory = (
                f"{format_bytes(g.memory_free_bytes or 0)} / {format_bytes(g.memory_total_bytes)}"
                if g.memory_total_bytes
                else "?"
            )
            table.add_row(
                str(g.index),
                safe(g.name),
                memory,
                g.compute_capability or "-",
                f"{g.driver_version or '-'} / {g.cuda_driver_version or '-'}",
                f"{g.power_limit_w:.0f} W" if g.power_limit_w else "-",
                f"gen{g.pcie_generation} x{g.pcie_width}" if g.pcie_generation else "-",
                str(g.nvlink_links) if g.nvlink_links is not None else "-",
                _yes(g.bf16),
                _yes(g.tf32),
                _yes(g.fp8),
                _yes(g.flash_attention_2),
            )
        console.print(table)
    console.print()
    backends = "; ".join(f"{dev}: {', '.join(b) or 'none'}" for dev, b in sw.sdpa_backends.items())
    rows = [
        ("python", sw.python),
        ("torch", f"{sw.torch_version or 'not installed'} ({sw.torch_build or '-'} build)"),
        ("CUDA / cuDNN", f"{sw.cuda_version or '-'} / {sw.cudnn_version or '-'}"),
        ("SDPA backends", backends or "not probed"),
    ]
    console.print(_kv_table("Software", rows))
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/] {safe(w)}")
    console.print(f"[dim]probed in {report.seconds:.2f} s[/]")


def render_hardware_profile(p: HardwareProfile) -> None:
    """Draw one datasheet profile."""
    tf = p.peak_tflops
    peaks = ", ".join(
        f"{k} {v:g}"
        for k, v in (
            ("fp32", tf.fp32),
            ("tf32", tf.tf32),
            ("fp16", tf.fp16),
            ("bf16", tf.bf16),
            ("fp8", tf.fp8),
            ("mxfp8", tf.mxfp8),
            ("fp6", tf.fp6),
            ("fp4", tf.fp4),
        )
        if v
    )
    rows = [
        ("profile", f"{p.id} (datasheet, --hardware)"),
        ("name", safe(p.name)),
        ("kind", p.kind.value),
        ("memory", f"{p.memory_gib:g} GiB at {p.memory_bandwidth_gb_s:g} GB/s"),
        ("dense TFLOP/s", peaks),
        ("compute capability", p.compute_capability or "-"),
        (
            "interconnect",
            p.intra_node.name + f" {p.intra_node.bandwidth_gb_s:g} GB/s" if p.intra_node else "-",
        ),
        ("sources", "\n".join(p.sources)),
    ]
    if p.intra_node is not None:
        said = f"{p.link_domain()} GPUs at the intra-node link (tensor parallelism inside)"
        rows.insert(-1, ("scale-up domain", said))
    if p.efficiency is not None and p.efficiency.carried_over():
        rows.insert(-1, ("efficiencies", p.efficiency.carried_over()))
    console.print(_kv_table("Hardware profile", rows))


def render_profiles(
    hardware: list[HardwareProfile], models: list[tuple[str, str, str, int]]
) -> None:
    """Draw the hardware and model profile lists."""
    print_table(
        [
            Col("id", ident=True),
            Col("name"),
            Col("memory"),
            Col("bandwidth"),
            Col("bf16 TFLOP/s"),
            Col("fp8"),
            Col("cc"),
        ],
        [
            [
                p.id,
                escape(p.name),
                f"{p.memory_gib:g} GiB",
                f"{p.memory_bandwidth_gb_s:g} GB/s",
                f"{p.peak_tflops.bf16:g}" if p.peak_tflops.bf16 else "-",
                f"{p.peak_tflops.fp8:g}" if p.peak_tflops.fp8 else "-",
                p.compute_capability or "-",
            ]
            for p in hardware
        ],
        title="Hardware profiles (--hardware)",
    )
    if models:
        print_table(
            [Col("id", ident=True), Col("name"), Col("arch"), Col("parameters")],
            [
                [ident, escape(name), arch, format_count(params)]
                for ident, name, arch, params in models
            ],
            title="Model profiles (--model)",
        )


# --- taxonomy and rules --------------------------------------------------------------------


def render_taxonomy(taxonomy: Taxonomy) -> None:
    """Draw the taxonomy as a tree: category, then order for optimizers."""
    from rich.tree import Tree

    from advisor.rules.taxonomy import Category, Order

    # NOTE: a tree leaf wraps inside its indentation, which would split a long id on a
    # narrow console; there, the same groups are printed flat, one technique per line.
    deepest = 4 * 3 + max((len(t.id) for t in taxonomy.techniques), default=0) + 1
    if console.width < deepest:
        console.print(f"taxonomy ({len(taxonomy.techniques)} techniques)", soft_wrap=True)
        for category in Category:
            groups = (
                [(f"{category.value}/{o.value}-order", taxonomy.optimizers(o)) for o in Order]
                if category is Category.OPTIMIZER
                else [(category.value, taxonomy.by_category(category))]
            )
            for label, members in groups:
                if members:
                    console.print(f"[bold]{label}[/] ({len(members)})", soft_wrap=True)
                    for tech in members:
                        console.print(f"  {_leaf(tech)}", soft_wrap=True)
        return
    root = Tree(f"[bold]taxonomy[/] ({len(taxonomy.techniques)} techniques)")
    for category in Category:
        members = taxonomy.by_category(category)
        if not members:
            continue
        branch = root.add(f"[bold]{category.value}[/] ({len(members)})")
        if category is Category.OPTIMIZER:
            for order in Order:
                opts = taxonomy.optimizers(order)
                sub = branch.add(f"[bold]{order.value}-order[/] ({len(opts)})")
                for t in opts:
                    sub.add(_leaf(t))
        else:
            for t in members:
                branch.add(_leaf(t))
    console.print(root)


def _leaf(t: Technique) -> str:
    refs = "; ".join(f"{r.authors} {r.year}" for r in t.references)
    return f"[cyan]{t.id}[/]  {t.name} [dim]({refs})[/]"


def render_rules_list(rules: list[LocatedRule]) -> None:
    """One line per rule: id, what it does, where."""
    wide = console.width >= 160
    columns = [Col("id", ident=True, style="cyan"), Col("title")]
    if wide:
        columns += [Col("actions"), Col("file", style="dim")]
    rows = []
    for lr in rules:
        cells = [lr.rule.id, safe(lr.rule.title)]
        if wide:
            cells.append(
                "; ".join(
                    f"{a.verb} {', '.join(a.techniques)}" if a.techniques else "advise"
                    for a in lr.rule.then
                )
            )
            cells.append(f"{safe(Path(lr.file).name)}:{lr.line}")
        rows.append(cells)
    print_table(columns, rows, title=f"Rules ({len(rules)})")
    if not wide:
        console.print(
            "[dim]`optadvise rules show ID` for a rule's condition, actions and sources[/]"
        )


def render_rule(lr: LocatedRule) -> None:
    """One rule in full: condition, actions, rationale, sources."""
    from advisor.rules.conditions import describe

    r = lr.rule
    console.print(f"[bold cyan]{r.id}[/]  {safe(r.title)}")
    console.print(f"[dim]{safe(_shown_path(lr.file))}:{lr.line}[/]")
    console.print(f"[bold]when[/]   {escape(describe(r.when))}")
    for a in r.then:
        if a.verb == "advise":
            console.print(f"[bold]advise[/] {safe(a.advise or '')}")
        else:
            weight = f" (weight {a.weight:g})" if a.weight is not None else ""
            console.print(f"[bold]{a.verb}[/] {', '.join(a.techniques)}{weight}")
    console.print(f"[bold]why[/]    {safe(' '.join(r.rationale.split()))}")
    for src in r.sources:
        console.print(
            f"[bold]source[/] {safe(src.cite())}" + (f" <{safe(src.url)}>" if src.url else "")
        )


def _shown_path(file: str) -> str:
    """A shipped rule file relative to the repository or package (stable across checkouts)."""
    from advisor.data.resources import rules_dir

    base = rules_dir()
    path = Path(file)
    try:
        return str(Path("rules") / path.resolve().relative_to(base.resolve()))
    except ValueError:
        return file


def render_check(report: CheckReport) -> None:
    """The rules check report: every defect with file and line, then a summary."""
    for d in report.defects:
        console.print(safe(d), soft_wrap=True)
        if d.scenario:
            facts = ", ".join(f"{k}={v}" for k, v in d.scenario.items())
            console.print(f"    scenario: {facts}", markup=False, style="dim", soft_wrap=True)
    status = "[green]consistent[/]" if report.ok else f"[red]{len(report.defects)} defect(s)[/]"
    console.print(
        f"{status}: {report.rules_checked} rules in {len(report.rule_files)} files, "
        f"{report.techniques_checked} techniques, {report.facts_declared} facts, "
        f"{report.scenarios_explored} partial scenarios explored in {report.seconds:.2f} s"
    )


def render_estimate(report: EstimateReport) -> None:
    """The memory breakdown with a bar per component, the phases and the verdict."""
    c = report.config
    layout = ""
    if c.tensor_parallel > 1 or c.pipeline_parallel > 1 or c.expert_parallel > 1:
        layout = (
            f", TP {c.tensor_parallel} × PP {c.pipeline_parallel}"
            + (f" (×{c.virtual_stages} interleaved)" if c.virtual_stages > 1 else "")
            + (f", EP {c.expert_parallel}" if c.expert_parallel > 1 else "")
        )
    savers = [
        name
        for name, on in (
            ("fused loss", c.fused_loss),
            ("optimizer in backward", c.optimizer_in_backward),
            ("activation offload", c.activation_offload),
        )
        if on
    ]
    console.print(
        f"[bold]{safe(report.model)}[/] ({format_count(report.parameters)} parameters, "
        f"{format_count(report.trainable_parameters)} trainable) — {c.task.value}, {c.optimizer}, "
        f"{c.precision.value}, {c.attention.value} attention, "
        f"checkpointing {c.checkpointing.value}, "
        f"micro-batch {c.micro_batch} × {c.seq_len} tokens"
        + (f" × {c.grad_accumulation} accumulation" if c.grad_accumulation > 1 else "")
        + f", {c.gpus} data-parallel device(s){layout}, "
        f"sharding {c.sharding.value}, offload {c.offload.value}"
        + (f", {', '.join(savers)}" if savers else ""),
        markup=True,
    )
    stack_note = " (the default; --stack fused for FlashAttention + fused kernels)"
    console.print(
        f"kernel stack: [bold]{report.stack.value}[/]"
        + (stack_note if report.stack.value == "hf" else "")
    )
    peak = next((p for p in report.phases if p.name == report.peak_phase), None)
    table = Table(title_justify="left")
    table.add_column("component", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True, min_width=10)
    table.add_column("at peak", justify="right", no_wrap=True, min_width=10)
    table.add_column("", no_wrap=True, max_width=24)
    total = max(report.total_bytes, 1)
    rows = [(k, v) for k, v in report.breakdown.items() if k != "overhead"]
    rows += [(f"overhead: {k}", v) for k, v in report.overhead_breakdown.items()]
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
    console.print(table)
    console.print(
        "phases: " + " · ".join(f"{p.name} {format_bytes(p.total_bytes)}" for p in report.phases),
        markup=False,
    )
    if report.device_memory_bytes is not None:
        verdict = "[green]fits[/]" if report.fits else "[red]does not fit[/]"
        console.print(
            f"{verdict} on {report.hardware or report.device_name}: "
            f"{format_bytes(report.total_bytes)} of {format_bytes(report.device_memory_bytes)}"
        )
    for alt in report.alternatives:
        verdict = "fits" if alt.fits else "does not fit"
        console.print(
            f"with {alt.change} this {verdict}: {format_bytes(alt.total_bytes)} "
            f"(−{format_bytes(alt.saved_bytes)})",
            markup=False,
        )
    if report.host_fits is False:
        console.print(
            "[red]offloaded states exceed host RAM[/] "
            f"({format_bytes(report.host_memory_bytes or 0)})"
        )
    if report.step_time is not None:
        st = report.step_time
        parts = ", ".join(
            f"{k} {format_seconds(float(v['seconds']) if isinstance(v, dict) else float(v))}"
            for k, v in st.components.items()
        )
        console.print(f"step time {format_seconds(st.seconds)} ({st.source}): {parts}")
    for note in report.notes:
        console.print(f"[dim]note: {safe(note)}[/]")


# --- recommend ----------------------------------------------------------------------------


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
    console.print(f"[dim]{text}[/]")


def render_recommend(report: RecommendReport, *, explain: bool = False) -> None:
    """The ranked table, the first pick's reasons and memory, why-not, and suggestions."""
    hw, wl = report.hardware, report.workload
    console.print(
        f"[bold]{safe(wl.model)}[/] ({format_count(wl.parameters)} parameters), {wl.task}, "
        f"seq {wl.seq_len}, global batch {wl.global_batch} ({wl.global_batch_source}), "
        f"{wl.world_size} device(s), objective {wl.objective}"
        + (", differentially private" if wl.privacy == "dp" else "")
    )
    nodes = f" × {hw.nodes} nodes" if hw.nodes > 1 else ""
    devices = f"{hw.gpus_per_node} × " if hw.gpus_per_node > 1 else ""
    console.print(
        f"on {devices}{safe(hw.name)}{nodes} ({safe(hw.source)}): "
        f"{format_bytes(hw.device_memory_bytes)} per "
        f"device, {format_bytes(hw.usable_memory_bytes)} usable "
        f"({hw.safety_margin:.0%} safety margin)"
    )
    console.print(f"[dim]{safe(report.cost_note)}[/]")
    if hw.host_source:
        console.print(
            f"[dim]host for offload: {format_bytes(hw.host_memory_bytes)} RAM"
            + (f", {format_bytes(hw.nvme_bytes)} NVMe" if hw.nvme_bytes else "")
            + f" per device ({escape(hw.host_source)})[/]"
        )
    if not report.recommendations:
        console.print(
            f"\n[bold red]Nothing fits.[/] {report.candidates_considered} configurations "
            "considered; what would fit:"
        )
        for s in report.suggestions:
            console.print(f"  • [bold]{safe(s.change)}[/]: {safe(s.detail)}")
    else:
        from rich import box

        wide = console.width >= 100
        columns = [
            Col("#", justify="right", nowrap=True),
            Col("optimizer", ident=True),
            Col("precision", ident=True),
            Col("attn", ident=True),
            Col("batch", justify="right", nowrap=True),
            Col("savers, layout"),
            Col("peak", justify="right", nowrap=True),
            *((Col("free", justify="right", nowrap=True),) if wide else ()),
            Col("step", justify="right", nowrap=True),
            Col("to target", justify="right", nowrap=True),
            Col("tokens/s", justify="right", nowrap=True),
        ]
        rows = []
        for r in report.recommendations:
            savers = [
                _SHORT.get(t, t)
                for t in r.techniques
                if t not in (r.optimizer, r.precision) and not t.endswith("attention")
            ]
            savers = [x for x in savers if x]
            if r.tensor_parallel > 1 or r.pipeline_parallel > 1 or r.expert_parallel > 1:
                # The layout names the sharding too ("tp2 pp2 dp8 fsdp").
                sharded = {"zero-1", "zero-2", "zero-3", "fsdp", "hsdp"}
                savers = [x for x in savers if x not in sharded] + [r.layout]
            rows.append(
                [
                    str(r.rank),
                    r.optimizer,
                    r.precision,
                    r.attention,
                    f"{r.micro_batch}×{r.grad_accumulation}",
                    ", ".join(savers) or "-",
                    format_bytes(r.peak_memory_bytes),
                    *((format_bytes(r.headroom_bytes),) if wide else ()),
                    format_seconds(r.step_time_s),
                    _to_target(r.time_to_target_rel),
                    f"{r.tokens_per_s:,.0f}" if r.tokens_per_s >= 10 else f"{r.tokens_per_s:.2g}",
                ]
            )
        print_table(columns, rows, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        sources = sorted({r.cost_source for r in report.recommendations})
        for r in report.recommendations:
            if r.also:
                console.print(f"[dim]  #{r.rank} also: {escape('; '.join(r.also))}[/]")
            if r.global_batch_note:
                console.print(f"[dim]  #{r.rank}: {escape(r.global_batch_note)}[/]")
        console.print(
            f"[dim]costs: {', '.join(sources)}; batch: micro-batch × accumulation; "
            "peak: per-device memory" + ("; free: what it leaves" if wide else "") + "[/]"
        )
        if report.trade:
            console.print(f"[bold]trade:[/] {escape(report.trade)}")
        best = report.recommendations[0]
        _render_steps(best)
        console.print(f"\n[bold]Why #1[/] ({best.optimizer}, {best.precision}, {best.attention}):")
        if not best.reasons:
            console.print("  ranked first on cost; no rule prefers or avoids its techniques")
        for reason in best.reasons:
            console.print(
                f"  • [cyan]{reason.rule}[/] {reason.effect}: "
                f"{escape(_first_sentence(reason.rationale))}"
            )
            if reason.sources:
                console.print(f"    [dim]{escape('; '.join(reason.sources))}[/]")
        console.print(
            f"\n[bold]Memory of #1[/] per device ({format_bytes(best.peak_memory_bytes)}):"
        )
        total = max(best.peak_memory_bytes, 1)
        for name, value in best.memory_breakdown.items():
            if value:
                console.print(
                    f"  {name:<22} {bar(value / total)} {format_bytes(value):>10}", markup=False
                )
    if report.why_not:
        console.print("\n[bold]Why not[/]")
        for w in report.why_not:
            console.print(f"  • {safe(w.option)}: {safe(w.verdict)}")
    if report.advice:
        console.print("\n[bold]Advice[/]")
        for a in report.advice:
            console.print(f"  • {safe(a.effect)} [dim]({safe(a.rule)})[/]")
    if explain:
        console.print(f"\n[bold]Every rule that fired[/] ({len(report.fired_rules)})")
        for fired in report.fired_rules:
            console.print(f"  • [cyan]{safe(fired.rule)}[/] {safe(fired.effect)}")
            console.print(f"    {safe(fired.rationale)}")
            if fired.sources:
                console.print(f"    [dim]{safe('; '.join(fired.sources))}[/]")
        console.print(
            "\n[bold]Facts[/] " + ", ".join(f"{k}={_fact(v)}" for k, v in report.facts.items())
        )
    rejected = sum(report.rejected_counts.values())
    if report.search is not None:
        st = report.search
        console.print(
            f"\n[dim]plan space {st.plans_considered:,} plans: {st.plans_evaluated} evaluated, "
            f"{st.plans_pruned:,} pruned as dominated, equivalent or bounded out "
            f"({st.ladders_bounded} core-layout ladders cut by their bound); "
            f"{st.rows_collapsed} equivalent plans folded into rows[/]"
        )
        for note in st.notes:
            console.print(f"[dim]{escape(note)}[/]")
    console.print(
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
}


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def _fact(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def render_convergence(cache: Any) -> None:
    """`calibrate --convergence`: each optimizer's steps to AdamW's loss on the proxy."""
    console.print(
        f"[bold]convergence proxy[/] ({cache.family}, {format_count(cache.proxy_params)} "
        f"parameters, {cache.steps} steps of {cache.batch_tokens} tokens) on {cache.device}"
    )
    console.print(f"[dim]corpus: {cache.corpus}[/]")
    target = "-" if cache.target_loss is None else f"{cache.target_loss:.4f}"
    console.print(f"target: AdamW's best final held-out loss {target}")
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
    console.print(table)
    partial = (
        ", partial (budget or Ctrl-C): raise --budget for the whole sweep" if cache.partial else ""
    )
    console.print(f"[dim]{cache.seconds:.0f} s of a {cache.budget_s:.0f} s budget{partial}[/]")
    for w in cache.warnings:
        console.print(f"[yellow]warning:[/] {safe(w)}")


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
                console=err_console,
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
    fp = cache.fingerprint
    state = "[yellow]partial[/]" if cache.partial else "complete"
    console.print(
        f"[bold]{fp.device_name}[/] ({fp.device}), torch {fp.torch_version} ({fp.torch_build}), "
        f"{fp.threads} threads — {cache.mode} calibration, {state}, {cache.seconds:.1f} s, "
        f"{cache.created_at}"
    )
    gemm = ", ".join(f"{k} {v:g}" for k, v in cache.gemm_gflops.items())
    console.print(
        f"GEMM GFLOP/s: {gemm}; copy {cache.copy_gb_s or 0:g} GB/s; all-reduce "
        + (f"{cache.allreduce_gb_s:g} GB/s" if cache.allreduce_gb_s else "not measured (--full)")
    )
    for shape in cache.shapes:
        if spec_key is not None and shape.shape.key() != spec_key:
            continue
        console.print(f"\n[bold]layer shape {shape.shape.key()}[/]")
        for lt in shape.layers:
            scale = f", widths x{lt.width_scale:.2f}" if lt.width_scale < 1 else ""
            console.print(
                f"  block fwd+bwd {lt.dtype}: {format_seconds(lt.timing.median_s)} "
                f"(IQR {format_seconds(lt.timing.iqr_s)}) for {lt.tokens} tokens "
                f"= {lt.seconds_per_token * 1e6:.1f} µs/token{scale}"
            )
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
        for note in shape.notes:
            console.print(f"[dim]note: {escape(note)}[/]")
    for w in cache.warnings:
        err_console.print(f"[yellow]warning:[/] {safe(w)}")
