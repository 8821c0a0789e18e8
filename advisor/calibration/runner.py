"""Run a calibration: real layer, attention, optimizer and roofline timings on one device.

The orchestration: which optimizers to time, the progress and the budget, the order of the
measurements (:mod:`advisor.calibration.device`, :mod:`advisor.calibration.layers`,
:mod:`advisor.calibration.optimizer_timing`), and the cache entry they make.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from advisor import notes as user_notes
from advisor.calibration import cache as cal_cache
from advisor.calibration.device import (
    Budget,
    GemmResult,
    check_device,
    copy_bandwidth,
    faster_fit,
    faster_layer,
    faster_step,
    pinned_threads,
    thread_speedup,
    time_gemm,
    time_gemm_shapes,
)
from advisor.calibration.layers import time_attention, time_layers
from advisor.calibration.optimizer_timing import QUICK_MAX_LAYER_PARAMS, time_optimizer
from advisor.calibration.optimizers import OPTIMIZERS, QUICK, missing_packages, skip_notes
from advisor.calibration.timing import CpuShare, synchronizer
from advisor.cost import layer_shape
from advisor.cost.data import (
    DISTURBED_SHARE,
    AttentionFit,
    CalibrationCache,
    GemmTiming,
    LayerShape,
    LayerTiming,
    OptimizerTiming,
    ShapeResults,
)
from advisor.errors import UserError
from advisor.hardware.fast16 import load_average
from advisor.model.spec import ModelSpec
from advisor.torchload import import_torch

__all__ = [
    "GEMM_TOKENS",
    "QUICK_DEFAULT_BUDGET_S",
    "QUICK_MAX_LAYER_PARAMS",
    "Progress",
    "run_calibration",
    "time_gemm_shapes",
]

Progress = Callable[[str, float], None]
_SEQ_LENS = {"quick": [128, 256, 512, 1024], "full": [256, 512, 1024, 2048, 4096]}
# Token counts (GEMM rows) at which a GPU calibration times the block's GEMMs: efficiency
# saturates in the token count, so a geometric sweep spans the regimes.
GEMM_TOKENS = {"quick": [512, 2048, 8192], "full": [256, 1024, 4096, 16384]}
# Quick mode stops after this many seconds unless --budget says otherwise.
QUICK_DEFAULT_BUDGET_S = 120.0


@dataclass
class _Run:
    """One run's device, clock, budget and progress, and the warnings it collects."""

    torch: Any
    device: str
    sync: Any
    mode: str
    budget: Budget
    tick: Callable[[str], None]
    warnings: list[str]


@dataclass
class _Measured:
    """What the run measured on the device, in the order it was measured."""

    copy_gb_s: float
    gemm: dict[str, float]
    measured: GemmResult
    dtypes: list[str]
    layers: list[LayerTiming]
    notes: list[str]
    attention: list[AttentionFit]
    timings: list[OptimizerTiming]
    threads: int
    speedup: float
    gemms: list[GemmTiming] = field(default_factory=list)
    collectives: dict[str, float] = field(default_factory=dict)
    ranks: int = 0
    allreduce: float | None = None


def run_calibration(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    mode: str = "quick",
    budget_s: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
    optimizers: tuple[str, ...] | None = None,
    seq_lens: list[int] | None = None,
    say: Callable[[str], None] | None = None,
) -> CalibrationCache:
    """Measure this device for ``spec``'s layer shape and update the device's cache.

    Args:
        spec: the target model (its true widths are timed).
        device: cpu, cuda:N or mps.
        mode: quick (a representative subset, about a minute at most) or full.
        budget_s: stop after this many seconds and keep partial results.
        force: measure again even when the cache holds this shape.
        progress: called with (what is being measured, fraction done).
        optimizers: override the optimizer ids to time (tests use a few).
        seq_lens: override the attention sequence lengths.
        say: shows one line to the user at once (default: advisor.notes, shown at the end);
            the optimizers a missing optional package keeps from being timed are said
            through it before anything is measured.

    Returns:
        The device's cache (also written to disk, atomically).

    Raises:
        UserError: for an unknown mode or an unavailable device.
        KeyboardInterrupt: passed on after leaving the previous cache untouched.
    """
    if mode not in ("quick", "full"):
        raise UserError(f"invalid calibration mode {mode!r}", "use --quick or --full")
    torch = import_torch()
    check_device(torch, device)
    gpu_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else ""
    fp = cal_cache.device_fingerprint(device, gpu_name=gpu_name)
    old, warning = cal_cache.load_cache(fp)
    shape = layer_shape(spec)
    if old is not None and not force and not old.partial:
        cached = old.results_for(shape)
        if cached is not None:
            return old
    ids, skip_lines = _optimizers_to_time(optimizers, mode, device, say)
    report: Progress = progress or (lambda label, fraction: None)
    if budget_s is None and mode == "quick":
        budget_s = QUICK_DEFAULT_BUDGET_S
    budget = Budget(budget_s)
    share = CpuShare()
    load = load_average()
    started = time.perf_counter()
    sync = synchronizer(torch, device)
    warnings = ([warning] if warning else []) + skip_lines
    lens = seq_lens or _SEQ_LENS[mode]
    steps = (
        3 + 2 + len(ids) + (1 if mode == "full" else 0) + (2 if device.startswith("cuda") else 0)
    )
    run = _Run(torch, device, sync, mode, budget, _ticker(report, steps), warnings)
    m = _measure(run, spec, shape, ids, lens)
    report("done", 1.0)
    other = share.other_share()
    loads = [x for x in (load, load_average()) if x is not None]
    if other is not None and other > DISTURBED_SHARE:
        warnings.append(
            f"other processes used {other:.0%} of the CPU while measuring: timings may be slow;"
            " run again on a quiet machine (--force)"
        )
    new = CalibrationCache(
        fingerprint=fp,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        mode=mode,
        partial=budget.exhausted,
        seconds=round(time.perf_counter() - started, 2),
        fast_bf16=m.measured.fast_bf16,
        gemm_gflops=m.gemm,
        copy_gb_s=m.copy_gb_s,
        allreduce_gb_s=m.allreduce,
        collectives=m.collectives,
        collective_ranks=m.ranks if m.collectives else 0,
        other_cpu_share=other,
        gemm_vs_fp32=m.measured.vs_fp32,
        thread_speedup=round(m.speedup, 3) if m.threads > 1 else None,
        disturbance=m.measured.disturbance,
        load_per_cpu=max(loads) if loads else None,
        shapes=[_shape_results(shape, m)],
        warnings=warnings,
    )
    return cal_cache.save_merged(old, new)


def _optimizers_to_time(
    optimizers: tuple[str, ...] | None,
    mode: str,
    device: str,
    say: Callable[[str], None] | None,
) -> tuple[tuple[str, ...], list[str]]:
    """The optimizer ids to time, and the lines said about those left out."""
    # --- Optional packages (issue 25) ---------------------------------------------------
    # The optimizers whose package is not installed (pytorch-optimizer) are said in one line
    # per package before anything is measured, and left out of the run: never built, so
    # never reported one by one as unsupported afterwards. The line stays in the cache's
    # warnings, so `calibrate show` says why they have no timing.
    ids = optimizers or (QUICK if mode == "quick" else tuple(OPTIMIZERS))
    skip_lines = skip_notes(ids, device)
    not_timed = {oid for oids in missing_packages(ids, device).values() for oid in oids}
    ids = tuple(oid for oid in ids if oid not in not_timed)
    for line in skip_lines:
        if say is not None:
            say(line)
        else:
            user_notes.post(line)
    # -------------------------------------------------------------------------------------
    return ids, skip_lines


def _ticker(report: Progress, steps: int) -> Callable[[str], None]:
    """A progress step: reports ``label`` at the fraction of the steps done so far."""
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        report(label, done / steps)
        done += 1

    return tick


def _measure(
    run: _Run, spec: ModelSpec, shape: LayerShape, ids: tuple[str, ...], lens: list[int]
) -> _Measured:
    """Every measurement of the run, in order: the one-thread core, scaled by the threads'
    speed-up, then the GPU's GEMM shapes and collectives and (full mode) the all-reduce."""
    torch, device, sync, budget, warnings = (
        run.torch,
        run.device,
        run.sync,
        run.budget,
        run.warnings,
    )
    run.tick("memory bandwidth")
    copy_gb_s = copy_bandwidth(torch, device, sync)
    # NOTE: on the CPU everything compared is timed on one thread, then scaled by the measured
    # speed-up of the threads training uses: two OpenMP threads on two shared cores stall at
    # their barriers whenever another process holds a core (a 768-wide block measured 0.5 s
    # for 64 tokens, with an IQR as large), while one thread is only time-sliced, alike for
    # every variant. The ranking rests on the one-thread ratios; the speed-up sets the
    # absolute times, and a busy machine can only make it smaller (times then err long).
    threads = int(torch.get_num_threads()) if device == "cpu" else 1
    speedup = thread_speedup(torch, shape, threads) if threads > 1 else 1.0
    with pinned_threads(torch, 1 if threads > 1 else None):
        run.tick("GEMM throughput per dtype")
        measured = time_gemm(torch, device, sync, shape)
        gemm, fast_bf16 = measured.gflops, measured.fast_bf16
        warnings.extend(measured.notes)
        # Every dtype that may be fast gets its block and attention timed, interleaved with the
        # others: pricing one dtype from a measured block and another from a bare GEMM compares
        # unlike things (a busy machine once made amp-fp16 look cheaper than bf16 that way).
        dtypes = (
            ["fp32"]
            + (["bf16"] if fast_bf16 is not False else [])
            + (["fp16"] if measured.fast_fp16 is not False else [])
        )
        if fast_bf16 is False and device == "cpu":
            warnings.append(
                f"bf16 GEMM runs at {gemm.get('bf16', 0):.3g} GFLOP/s"
                f" vs fp32 {gemm.get('fp32', 0):.3g}:"
                " bf16 paths were not timed on this CPU"
            )
        run.tick("layer forward+backward")
        layers, notes = time_layers(torch, device, sync, shape, dtypes, run.mode, budget)
        run.tick(f"attention {', '.join(dtypes)}")
        attention = (
            time_attention(torch, device, sync, shape, dtypes, lens, budget) if budget.ok() else []
        )
        run.tick("attention done")
        timings = _time_optimizers(run, spec, shape, ids)
    m = _Measured(
        copy_gb_s, gemm, measured, dtypes, layers, notes, attention, timings, threads, speedup
    )
    _scale_to_threads(m)
    _measure_gpu(run, spec, m)
    _measure_allreduce(run, m)
    return m


def _time_optimizers(
    run: _Run, spec: ModelSpec, shape: LayerShape, ids: tuple[str, ...]
) -> list[OptimizerTiming]:
    timings: list[OptimizerTiming] = []
    for oid in ids:
        run.tick(f"optimizer {oid}")
        if not run.budget.ok():
            timings.append(OptimizerTiming(optimizer=oid, status="skipped", detail="budget spent"))
            continue
        timings.extend(
            time_optimizer(run.torch, run.device, run.sync, spec, shape, oid, run.budget, run.mode)
        )
    return timings


def _scale_to_threads(m: _Measured) -> None:
    """One-thread timings made the threads' times (see the NOTE in :func:`_measure`)."""
    speedup, threads = m.speedup, m.threads
    if speedup != 1.0:
        m.gemm = {k: round(v * speedup, 2) for k, v in m.gemm.items()}
        m.layers = [faster_layer(lt, speedup) for lt in m.layers]
        m.attention = [faster_fit(a, speedup) for a in m.attention]
        m.timings = [faster_step(t, speedup) for t in m.timings]
        m.notes.append(
            f"timed on 1 thread, scaled by the measured {threads}-thread speed-up {speedup:.2f}"
        )


def _measure_gpu(run: _Run, spec: ModelSpec, m: _Measured) -> None:
    """A GPU's GEMMs at the model's layer shapes and its NCCL collectives."""
    torch, device, budget = run.torch, run.device, run.budget
    if device.startswith("cuda") and budget.ok():
        run.tick("GEMMs at the model's layer shapes")
        for dtype in [d for d in m.dtypes if d != "fp32"] or m.dtypes:
            found, note = time_gemm_shapes(
                torch, device, run.sync, spec, dtype, GEMM_TOKENS[run.mode], budget
            )
            m.gemms.extend(found)
            if note:
                m.notes.append(note)
        m.ranks = int(torch.cuda.device_count())
        if budget.ok():
            run.tick(f"NCCL collectives between {m.ranks} local GPU(s)")
            from advisor.calibration.allreduce import measure_collectives

            m.collectives, why = measure_collectives(device, m.ranks)
            if why:
                run.warnings.append(why)


def _measure_allreduce(run: _Run, m: _Measured) -> None:
    if run.mode == "full" and run.budget.ok():
        run.tick("all-reduce bandwidth (2 local processes)")
        from advisor.calibration.allreduce import measure_allreduce

        m.allreduce, why = measure_allreduce(run.device)
        if why:
            run.warnings.append(why)


def _shape_results(shape: LayerShape, m: _Measured) -> ShapeResults:
    matmul = {k: v / 1000 for k, v in m.gemm.items()}
    return ShapeResults(
        shape=shape,
        layers=m.layers,
        attention=m.attention,
        optimizers=m.timings,
        matmul_tflops=matmul,
        gemms=m.gemms,
        notes=m.notes,
    )
