"""The probe report, a hardware profile and the profile lists (`probe`, `profiles list`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from advisor.shell.render import common
from advisor.shell.render.common import Col, print_table, safe
from advisor.units import format_bytes, format_count

if TYPE_CHECKING:
    from advisor.hardware.profiles import (
        CpuInfo,
        GpuInfo,
        HardwareProfile,
        MemoryInfo,
        ProbeReport,
        SoftwareInfo,
    )


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
    _render_cpu(report.cpu)
    common.console.print()
    _render_memory(report.memory)
    common.console.print()
    _render_gpus(report.gpus)
    common.console.print()
    _render_software(report.software)
    for w in report.warnings:
        common.err_console.print(f"[yellow]warning:[/] {safe(w)}")
    common.console.print(f"[dim]probed in {report.seconds:.2f} s[/]")


def _render_cpu(cpu: CpuInfo) -> None:
    """The CPU table: cores, ISA, torch's view, measured GEMM rate, fast 16-bit paths."""
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
    common.console.print(_kv_table("CPU", rows))
    if cpu.gemm_gflops and not cpu.fast_bf16:
        common.console.print(
            "  [yellow]bf16 is slow on this CPU: train in fp32 here "
            "(16-bit paths are steered away)[/]"
        )


def _render_memory(mem: MemoryInfo) -> None:
    """The host memory table: total, available, the effective limit and the cgroup."""
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
    common.console.print(_kv_table("Memory", rows))


def _render_gpus(gpus: list[GpuInfo]) -> None:
    """The GPU table, one row per device, or a line saying there is none."""
    if not gpus:
        common.console.print("[bold]GPUs[/]  none found: training runs on the CPU.")
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
        for g in gpus:
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
                _power(g.power_limit_w, g.power_draw_w, g.idle_power_w),
                f"gen{g.pcie_generation} x{g.pcie_width}" if g.pcie_generation else "-",
                str(g.nvlink_links) if g.nvlink_links is not None else "-",
                _yes(g.bf16),
                _yes(g.tf32),
                _yes(g.fp8),
                _yes(g.flash_attention_2),
            )
        common.console.print(table)


def _render_software(sw: SoftwareInfo) -> None:
    """The software table: python, torch, CUDA / cuDNN, the SDPA backends."""
    backends = "; ".join(f"{dev}: {', '.join(b) or 'none'}" for dev, b in sw.sdpa_backends.items())
    rows = [
        ("python", sw.python),
        ("torch", f"{sw.torch_version or 'not installed'} ({sw.torch_build or '-'} build)"),
        ("CUDA / cuDNN", f"{sw.cuda_version or '-'} / {sw.cudnn_version or '-'}"),
        ("SDPA backends", backends or "not probed"),
    ]
    common.console.print(_kv_table("Software", rows))


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
    common.console.print(_kv_table("Hardware profile", rows))


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


def _power(limit: float | None, draw: float | None, idle: float | None) -> str:
    """The power limit, with the draw when probed ("idle" when the GPU ran no kernel)."""
    text = f"{limit:.0f} W" if limit else "-"
    if draw is not None:
        text += f" ({draw:.0f} W {'idle' if idle is not None else 'now'})"
    return text
