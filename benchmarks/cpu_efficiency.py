"""What the CPU's efficiency constants rest on, measured on this machine.

The cost model prices a CPU with no fitted ``efficiency:`` block from
``advisor.cost.efficiency.CPU_EFFICIENCY`` (GEMM, memory-bandwidth and attention shares of the
peak), the optimizer step's foreach/fused traffic ratio (``advisor.cost.optimizer``), and the
local CPU's synthetic datasheet from ``advisor.hardware.target.cpu_profile_from_probe`` (peak =
cores x clock x 32 or 64 fp32 FLOPs per cycle; 10 GB/s of memory bandwidth per core). This
benchmark measures each of those figures here and writes them beside the constants:

- fp32 GEMM GFLOP/s at layer-like shapes, as a share of one core's peak (the code's formula,
  clock from /proc/cpuinfo's "cpu MHz"), beside the model's ``gemm_efficiency`` there; the
  constants are shares of the whole CPU's peak (all usable cores) while calibrations and the
  measurement benchmarks run one thread, so ``measured_vs_constant`` divides by the cores;
- the memory bandwidth of a 1 GiB copy (bytes read + written, as the calibration counts),
  beside the 10 GB/s per core the synthetic datasheet assumes;
- SDPA fp32 forward + backward at S=2048, d=64, causal, per backend (flash, math; the
  memory-efficient backend where it runs), as the share of the peak the cost model would
  need to predict the measured time (the FLOPs it counts: 3.5x the forward for fused kernels
  with the masked half skipped, 3x for eager plus its score traffic at the measured bandwidth);
- AdamW's step, foreach against fused, at 25M and 100M parameters (ns per parameter);
- bf16 against fp32 GEMMs with oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``): what a CPU
  without AVX512-BF16/AMX does with a bf16 matrix multiply.

Habits of ``advisor.hardware.fast16``: one thread (two OpenMP threads on shared cores stall
whenever another process holds one), cells timed in interleaved rounds so that contention hits
them alike, the fastest of a few calls per cell (another process only adds time), medians
over rounds, in the thread's CPU time (what a quiet core takes; the wall medians are kept
too). The load average before and after is recorded, never hidden. About 1-2 minutes.

    python -m benchmarks.cpu_efficiency --out benchmarks/results/cpu_efficiency.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advisor.cost.efficiency import CPU_EFFICIENCY, AttentionKernel, gemm_efficiency
from advisor.cost.optimizer import FOREACH_TRAFFIC
from advisor.hardware.fast16 import read_cpuinfo

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "cpu_efficiency.json"
# (m, n, k): tokens x (out, in) of a block's projections, small to 7B-like widths.
GEMM_SHAPES = [(512, 1024, 1024), (2048, 2048, 2048), (2048, 5632, 2048), (256, 4096, 4096)]
# The CPU attention figures' setting (the constants' comment): fp32, S=2048, d=64.
SEQ, HEAD_DIM, HEADS = 2048, 64, 4
COPY_BYTES = 1 << 30  # well past any last-level cache
ADAMW_SIZES = (25_000_000, 100_000_000)
# advisor.hardware.target._CPU_GB_S_PER_CORE: the synthetic datasheet's bandwidth per core.
NOMINAL_GB_S_PER_CORE = 10.0
# advisor.cost.compute: eager attention's score traffic (bytes per score element, fwd+bwd).
EAGER_SCORE_BYTES = 60.0


def clock_ghz() -> float:
    """/proc/cpuinfo's "cpu MHz", as the recommender reads it for the analytic CPU peak."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except (OSError, ValueError):
        pass
    return 2.5  # cpu_profile_from_probe's default


def interleaved(
    cells: dict[str, Callable[[], object]], rounds: int, calls: int
) -> dict[str, tuple[float, float]]:
    """(CPU, wall) seconds of each cell: the median over ``rounds`` of the fastest of ``calls``
    calls, cells in rotating order.

    NOTE: timed in this thread's CPU time (``time.thread_time``), the wall time a quiet core
    would take: with one intra-op thread torch runs every kernel here in the calling thread,
    and on a shared machine the wall clock also counts the time slices other processes take
    (the load average is recorded beside the figures, and the wall medians).
    """
    names = list(cells)
    times: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            best, best_wall = float("inf"), float("inf")
            for _ in range(calls):
                t0, w0 = time.thread_time(), time.perf_counter()
                cells[name]()
                best = min(best, time.thread_time() - t0)
                best_wall = min(best_wall, time.perf_counter() - w0)
            times[name].append(best)
            walls[name].append(best_wall)
    return {n: (statistics.median(times[n]), statistics.median(walls[n])) for n in names}


def measure_gemms(torch: Any, peak: float, rounds: int) -> list[dict[str, Any]]:
    cells = {}
    for m, n, k in GEMM_SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up: oneDNN's first call builds its kernel
        cells[f"{m}x{n}x{k}"] = lambda a=a, b=b: a @ b
    medians = interleaved(cells, rounds, calls=2)
    out = []
    for m, n, k in GEMM_SHAPES:
        cpu_s, wall_s = medians[f"{m}x{n}x{k}"]
        gflops = 2 * m * n * k / cpu_s / 1e9
        out.append(
            {
                "m": m,
                "n": n,
                "k": k,
                "gflop_s": round(gflops, 1),
                "gflop_s_wall": round(2 * m * n * k / wall_s / 1e9, 1),
                "share_of_peak": round(gflops / peak, 3),
                "model_share": round(gemm_efficiency(CPU_EFFICIENCY, m, n, k), 3),
            }
        )
    return out


def measure_copy(torch: Any, rounds: int) -> tuple[float, float]:
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    cpu_s, wall_s = interleaved({"copy": lambda: dst.copy_(src)}, rounds, calls=2)["copy"]
    return 2 * COPY_BYTES / cpu_s / 1e9, 2 * COPY_BYTES / wall_s / 1e9


def _attention_flops(kernel: AttentionKernel) -> float:
    """The forward + backward FLOPs advisor.cost.compute.attention counts (batch 1)."""
    eager = kernel is AttentionKernel.EAGER
    fwd = 4 * SEQ * SEQ * HEADS * HEAD_DIM * (1.0 if eager else 0.5)
    return fwd * (3.0 if eager else 3.5)


def measure_attention(torch: Any, peak: float, copy_gb_s: float, rounds: int) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "fa2": (SDPBackend.FLASH_ATTENTION, AttentionKernel.FA2),
        "mem-efficient": (SDPBackend.EFFICIENT_ATTENTION, AttentionKernel.MEM_EFFICIENT),
        "eager": (SDPBackend.MATH, AttentionKernel.EAGER),
    }
    q = torch.randn(1, HEADS, SEQ, HEAD_DIM, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True)
    v = torch.randn_like(q, requires_grad=True)
    cells, out = {}, {}
    for name, (backend, _kernel) in backends.items():

        def run(backend: Any = backend) -> None:
            with sdpa_kernel([backend]):
                o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.sum().backward()

        try:
            run()
        except RuntimeError as exc:
            out[name] = {"status": "unavailable", "detail": str(exc).splitlines()[0][:160]}
            continue
        cells[name] = run
    medians = interleaved(cells, rounds, calls=1)
    for name, (seconds, wall_s) in medians.items():
        kernel = backends[name][1]
        compute_s = seconds
        if kernel is AttentionKernel.EAGER:
            # What the model adds at memory bandwidth; the share prices the rest.
            compute_s -= EAGER_SCORE_BYTES * HEADS * SEQ * SEQ / (copy_gb_s * 1e9)
        flops = _attention_flops(kernel)
        out[name] = {
            "status": "ok",
            "ms": round(seconds * 1e3, 1),
            "ms_wall": round(wall_s * 1e3, 1),
            "model_flops_g": round(flops / 1e9, 2),
            "share_of_peak": round(flops / max(compute_s, 1e-9) / (peak * 1e9), 3),
        }
    return out


def measure_adamw(torch: Any, rounds: int) -> list[dict[str, Any]]:
    out = []
    for size in ADAMW_SIZES:
        params = [torch.nn.Parameter(torch.randn(1_000_000)) for _ in range(size // 1_000_000)]
        for p in params:
            p.grad = torch.randn_like(p)
        opts = {
            variant: torch.optim.AdamW(params, lr=1e-4, **{variant: True})
            for variant in ("foreach", "fused")
        }
        for opt in opts.values():
            opt.step()  # states allocated outside the timing
        medians = interleaved({v: o.step for v, o in opts.items()}, rounds, calls=1)
        out.append(
            {
                "parameters": size,
                "ns_per_param": {v: round(s[0] / size * 1e9, 3) for v, s in medians.items()},
                "ns_per_param_wall": {v: round(s[1] / size * 1e9, 3) for v, s in medians.items()},
                "foreach_over_fused": round(medians["foreach"][0] / medians["fused"][0], 2),
            }
        )
        del opts, params
    return out


_AVX2_GEMM = """
import json, time, torch
torch.set_num_threads(1)
out = {}
for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    a, b = torch.randn(512, 512, dtype=dtype), torch.randn(512, 512, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time(); a @ b; best = min(best, time.thread_time() - t0)
    out[name] = 2 * 512**3 / best / 1e9
print(json.dumps(out))
"""


def measure_bf16_without_fast_path() -> dict[str, Any]:
    """fp32 and bf16 GEMM GFLOP/s with oneDNN limited to AVX2 (no AVX512-BF16, no AMX)."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _AVX2_GEMM], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {"status": "failed", "detail": proc.stderr.strip().splitlines()[-1:]}
    got = json.loads(proc.stdout)
    return {
        "gflop_s": {k: round(v, 2) for k, v in got.items()},
        "fp32_over_bf16": round(got["fp32"] / got["bf16"], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, flags = read_cpuinfo()
    ghz = clock_ghz()
    lanes = 64 if "avx512f" in flags else 32
    peak = ghz * lanes  # GFLOP/s of one core, cpu_profile_from_probe's formula
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    gemms = measure_gemms(torch, peak, ns.rounds)
    copy, copy_wall = measure_copy(torch, ns.rounds)
    attention = measure_attention(torch, peak, copy, ns.rounds)
    adamw = measure_adamw(torch, max(3, ns.rounds - 2))
    avx2 = measure_bf16_without_fast_path()
    att = CPU_EFFICIENCY.attention
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.cpu_efficiency",
        "cpu": model,
        "machine": platform.machine(),
        "isa": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "logical_cpus": os.cpu_count(),
        "threads": 1,
        "timing": "median over interleaved rounds of the fastest call, in thread CPU time "
        "(wall-clock figures beside)",
        "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_fp32_gflop_s_one_core": round(peak, 1),
        "peak_formula": f"{ghz:g} GHz (cpu MHz) x {lanes} fp32 FLOP/cycle",
        "gemm_fp32": gemms,
        "copy_gb_s_one_thread": round(copy, 1),
        "copy_gb_s_one_thread_wall": round(copy_wall, 1),
        "nominal_gb_s_per_core": NOMINAL_GB_S_PER_CORE,
        "attention_fp32": {"seq": SEQ, "head_dim": HEAD_DIM, "heads": HEADS, **attention},
        "adamw": adamw,
        "bf16_gemm_with_onednn_at_avx2": avx2,
        "constants": {
            "gemm_max": CPU_EFFICIENCY.gemm_max.value,
            "bandwidth": CPU_EFFICIENCY.bandwidth.value,
            "attention": {k: v.max for k, v in att.items()},
            "foreach_traffic": FOREACH_TRAFFIC,
        },
        # NOTE: the constants multiply the synthetic datasheet's whole-CPU figures (peak and
        # bandwidth x usable cores) while calibrations and the measurement benchmarks run one
        # thread: the comparable figure is the one-thread rate over the whole CPU's.
        "usable_cores": cores,
        "measured_vs_constant": {
            "gemm_max": round(max(g["share_of_peak"] for g in gemms) / cores, 3),
            "bandwidth": round(copy / (NOMINAL_GB_S_PER_CORE * cores), 2),
            "attention": {
                k: round(v["share_of_peak"] / cores, 3)
                for k, v in attention.items()
                if v.get("status") == "ok"
            },
            "foreach_traffic": [a["foreach_over_fused"] for a in adamw],
            "shares_are_of": f"{cores} cores x {peak:.1f} GFLOP/s and {cores} x "
            f"{NOMINAL_GB_S_PER_CORE:g} GB/s, one thread measured",
        },
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record["measured_vs_constant"], indent=1))
    print(f"wrote {ns.out} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
