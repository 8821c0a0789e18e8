"""Fitted efficiencies: the share of a device's peak each kind of work reaches, and the peaks.

A GPU profile carries its generation's fitted ``efficiency:`` block (benchmarks/gpu_fit.py
fits them to public measurements, each with its source); the CPU, which has none, gets the
measured defaults below. Also here: which attention kernel really runs, and the dtype a
precision recipe multiplies in, since both pick the efficiency and the peak.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from advisor.config import Attention, Precision, Stack
from advisor.hardware.profiles import (
    AttentionEfficiency,
    DeviceKind,
    Fitted,
    Generation,
    GpuEfficiency,
    HardwareProfile,
)

# The CPU has no fitted GPU block: these are shares of the synthetic datasheet's whole-CPU
# peak (usable cores x clock x 64 or 32 FLOPs/cycle; 10 GB/s per core) that the one-thread
# calibrations and benchmarks reach, measured by benchmarks/cpu_efficiency.py on the
# project's 2-core AVX-512 machine (benchmarks/results/cpu_efficiency.json, 2026-12-07, load
# ~6): fp32 GEMM 144-149 GFLOP/s on one thread at m = 256-2048 (flat in m and the widths,
# hence the small m0, n0) = 0.45 of the 2-core 333 GFLOP/s peak (constant 0.45); a 1 GiB
# copy 13.1 GB/s = 0.66 of 2 x 10 GB/s (constant 0.8); SDPA fp32 S=2048 d=64 causal
# fwd+bwd, flash 83 ms = 0.27 of the peak at the FLOPs the model counts (constant 0.35),
# math 366 ms = 0.13 beside its score traffic (constant 0.18); the memory-efficient backend
# does not run on a CPU (its 0.3 is never measured here).
_MEASURED = "benchmarks/results/cpu_efficiency.json (benchmarks/cpu_efficiency.py)"
CPU_EFFICIENCY = GpuEfficiency(
    generation=Generation.CPU,
    gemm_max=Fitted(value=0.45, source=_MEASURED),
    gemm_m0=Fitted(value=16.0, source=_MEASURED),
    gemm_n0=Fitted(value=16.0, source=_MEASURED),
    bandwidth=Fitted(value=0.8, source=_MEASURED),
    comm_intra=Fitted(
        value=0.75,
        source="assumed gloo bus-bandwidth share (not measured by benchmarks/cpu_efficiency.py;"
        " a CPU calibration measures gloo's all-reduce itself)",
    ),
    comm_inter=Fitted(
        value=0.75,
        source="assumed gloo bus-bandwidth share (not measured by benchmarks/cpu_efficiency.py;"
        " a CPU calibration measures gloo's all-reduce itself)",
    ),
    overlap=Fitted(value=0.01, source="gloo collectives do not overlap compute on a CPU"),
    attention={
        "fa2": AttentionEfficiency(max=0.35, s0=0, s0_causal=0, d0=0, source=_MEASURED),
        "mem-efficient": AttentionEfficiency(
            max=0.3,
            s0=0,
            s0_causal=0,
            d0=0,
            source="assumed between flash and math: SDPA's memory-efficient backend does not "
            "run on a CPU (benchmarks/results/cpu_efficiency.json)",
        ),
        "eager": AttentionEfficiency(max=0.18, s0=0, s0_causal=0, d0=0, source=_MEASURED),
    },
    gpus_per_node=1,
)


class AttentionKernel(str, Enum):
    """The attention implementation that really runs (kernel, not SDPA flag)."""

    FA2 = "fa2"
    FA3 = "fa3"
    CUDNN = "cudnn"
    MEM_EFFICIENT = "mem-efficient"
    EAGER = "eager"


class KernelChoice(Protocol):
    """What picks the attention kernel: a configuration's kernels, or one micro-batch's fields."""

    @property
    def attention(self) -> Attention: ...

    @property
    def stack(self) -> Stack: ...


def compute_dtype(precision: Precision) -> str:
    """The dtype the matrix multiplies of a precision mode run in."""
    return {
        Precision.FP32: "fp32",
        Precision.TF32: "tf32",
        Precision.AMP_FP16: "fp16",
        Precision.FP16_MIXED: "fp16",
        Precision.FP16: "fp16",
        Precision.AMP_BF16: "bf16",
        Precision.BF16_MIXED: "bf16",
        Precision.BF16: "bf16",
        Precision.FP8_MIXED: "fp8",
    }[precision]


def efficiency_for(hw: HardwareProfile) -> GpuEfficiency:
    """The fitted efficiencies of a profile (the CPU's measured defaults for a CPU).

    Raises:
        UserError: for a GPU profile without an ``efficiency:`` block.
    """
    if hw.kind is DeviceKind.CPU:
        return hw.efficiency or CPU_EFFICIENCY
    return hw.gpu_efficiency()


def gemm_efficiency(eff: GpuEfficiency, m: float, n: float, k: float) -> float:
    """Share of the dense peak a GEMM of (m x k) @ (k x n) reaches.

    A saturating function of each dimension: few tokens (m) or thin layers (n, k) leave
    tensor cores idle (tile quantisation, memory-bound loads), large shapes approach the
    generation's ``gemm_max``. Fitted per generation (benchmarks/gpu_fit.py).
    """
    m0, n0 = eff.gemm_m0.value, eff.gemm_n0.value
    return eff.gemm_max.value * (m / (m + m0)) * (n / (n + n0)) * (k / (k + n0))


def attention_efficiency(
    eff: GpuEfficiency,
    kernel: AttentionKernel,
    s: int,
    d: int,
    causal: bool,
    backward: bool = False,
) -> float:
    """Share of the dense peak an attention kernel reaches at sequence ``s``, head dimension
    ``d`` (FlashAttention-2/3 papers' kernel TFLOP/s, fitted): its forward+backward pass, or
    where the entry has a backward curve (``split_attention``), its forward pass, or with
    ``backward`` its backward pass."""
    entry = attention_entry(eff, kernel)
    if backward and entry.bwd_max is not None:
        peak, s0, s0c, d0 = entry.bwd_max, entry.bwd_s0, entry.bwd_s0_causal, entry.bwd_d0
    else:
        peak, s0, s0c, d0 = entry.max, entry.s0, entry.s0_causal, entry.d0
    half = (s0c if causal else s0) or 0.0
    scale = (d / (d + d0)) / (128 / (128 + d0)) if d0 else 1.0
    return min(peak * s / (s + half) * scale, 0.95)


def attention_entry(eff: GpuEfficiency, kernel: AttentionKernel) -> AttentionEfficiency:
    """The attention curve a profile carries for ``kernel`` (FA2's where it has none)."""
    table = eff.attention
    entry = table.get(kernel.value)
    if entry is None:
        entry = table.get(AttentionKernel.FA2.value) or next(iter(table.values()))
    return entry


def split_attention(eff: GpuEfficiency, kernel: AttentionKernel) -> bool:
    """Whether ``kernel``'s curve prices the forward and backward passes apart."""
    return attention_entry(eff, kernel).bwd_max is not None


def attention_kernel(config: KernelChoice, hw: HardwareProfile | None) -> AttentionKernel:
    """The kernel ``config.attention`` runs as on ``hw``.

    SDPA's flash backend is FlashAttention-2 on every CUDA generation (PyTorch ships FA2);
    the fused stack runs FlashAttention-3 on Hopper (torchtitan, Megatron/TE via cuDNN's
    fused attention, Shah et al. 2024) and cuDNN's fused attention on Blackwell. Volta/Turing
    have no FA2 kernel: SDPA falls back to memory-efficient attention there.
    """
    if config.attention is Attention.EAGER:
        return AttentionKernel.EAGER
    if config.attention is Attention.MEM_EFFICIENT:
        return AttentionKernel.MEM_EFFICIENT
    if hw is not None and hw.kind is DeviceKind.CUDA and 0 < hw.cc < 8.0:
        return AttentionKernel.MEM_EFFICIENT
    if hw is not None and hw.cc >= 10.0 and config.stack is Stack.FUSED:
        # FA3 is written for sm90 only; on Blackwell the fused stacks run cuDNN's attention.
        return AttentionKernel.CUDNN
    if hw is not None and hw.cc >= 9.0 and config.stack is Stack.FUSED:
        return AttentionKernel.FA3
    return AttentionKernel.FA2


def peak_flops(hw: HardwareProfile, dtype: str) -> float:
    """The dense peak FLOP/s of ``dtype`` on ``hw`` (1% of fp32 where it has no such path)."""
    p = hw.peak_tflops
    value = {
        "fp32": p.fp32,
        "tf32": p.tf32 or p.fp32,
        "fp16": p.fp16,
        "bf16": p.bf16,
        "fp8": p.fp8 or p.bf16 or p.fp16,
    }.get(dtype)
    return (value or p.fp32 / 100) * 1e12
