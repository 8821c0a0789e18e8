"""The device itself: the run's time budget, the device check, thread pinning and the
measured thread speed-up, GEMM throughput per dtype, copy bandwidth and the sweep of a
block's GEMM shapes (what the cost model prices ``measured`` GEMMs from).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from advisor.calibration.timing import is_out_of_memory, measure
from advisor.cost import block_gemms
from advisor.cost.data import (
    AttentionFit,
    GemmTiming,
    LayerShape,
    LayerTiming,
    OptimizerTiming,
    Timing,
)
from advisor.errors import UserError
from advisor.hardware.fast16 import Spread, check_gemms, decide, time_rounds
from advisor.model.spec import ModelSpec

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
REPEATS = 5
# Interleaved rounds of the one-thread against all-threads GEMM (each side's fastest kept).
_SPEEDUP_ROUNDS = 7


class Budget:
    """Stops the run cleanly when its time is spent; what was measured is kept."""

    def __init__(self, seconds: float | None) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds
        self.exhausted = False

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.perf_counter() - self.start)

    def ok(self) -> bool:
        if self.left() <= 0:
            self.exhausted = True
        return not self.exhausted


@contextlib.contextmanager
def pinned_threads(torch: Any, n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged)."""
    before = int(torch.get_num_threads())
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_speedup(torch: Any, shape: LayerShape, threads: int) -> float:
    """How much faster a layer-shaped fp32 GEMM runs on ``threads`` threads than on one.

    Interleaved rounds, each side's fastest call: another process can only slow a call, so
    the fastest is the nearest to an undisturbed one. Clamped to 1..threads.
    """
    m, k, n = 256, min(shape.hidden, 4096), min(shape.intermediate, 8192)
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = {1: math.inf, threads: math.inf}
    with pinned_threads(torch, None):
        for r in range(_SPEEDUP_ROUNDS):
            for t in (1, threads) if r % 2 == 0 else (threads, 1):
                torch.set_num_threads(t)
                torch.mm(a, b)  # the first call at a thread count sets up its pool
                t0 = time.perf_counter()
                torch.mm(a, b)
                best[t] = min(best[t], time.perf_counter() - t0)
    return max(1.0, min(float(threads), best[1] / max(best[threads], 1e-12)))


def _faster(t: Timing, factor: float) -> Timing:
    return t.model_copy(update={"median_s": t.median_s / factor, "iqr_s": t.iqr_s / factor})


def faster_layer(lt: LayerTiming, factor: float) -> LayerTiming:
    return lt.model_copy(
        update={
            "timing": _faster(lt.timing, factor),
            "forward": _faster(lt.forward, factor) if lt.forward is not None else None,
        }
    )


def faster_fit(fit: AttentionFit, factor: float) -> AttentionFit:
    return fit.model_copy(
        update={
            "a": fit.a / factor,
            "b": fit.b / factor,
            "c": fit.c / factor,
            "seconds": [x / factor for x in fit.seconds],
        }
    )


def faster_step(t: OptimizerTiming, factor: float) -> OptimizerTiming:
    def div(x: float | None) -> float | None:
        return None if x is None else x / factor

    return t.model_copy(
        update={
            "steady": _faster(t.steady, factor) if t.steady is not None else None,
            "first_step_s": div(t.first_step_s),
            "refresh_s": div(t.refresh_s),
            "amortised_s": div(t.amortised_s),
        }
    )


def check_device(torch: Any, device: str) -> None:
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device {device} is not available: no CUDA GPU here", "use --device cpu"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(
                f"device {device} does not exist", f"{torch.cuda.device_count()} GPU(s) found"
            )
        return
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device mps is not available", "use --device cpu")
        return
    raise UserError(f"invalid --device {device!r}", "use cpu, cuda:N or mps")


@dataclass
class GemmResult:
    gflops: dict[str, float]
    fast_bf16: bool | None  # None: undecided, the target keeps its own answer
    fast_fp16: bool | None
    notes: list[str]
    disturbance: float | None
    vs_fp32: dict[str, list[float]]


def time_gemm(torch: Any, device: str, sync: Any, shape: LayerShape) -> GemmResult:
    """GFLOP/s of a layer-shaped GEMM (tokens x hidden @ hidden x intermediate) per dtype, and
    whether bf16 is fast (None: undecided, the target keeps its own answer).

    NOTE: on the CPU the fast/slow verdict comes from :func:`advisor.hardware.fast16.check_gemms`
    (interleaved, one thread, checked against the ISA), never from one timed call: a single
    call lost to another process made bf16 look 13x slower than fp32 on a busy machine. The
    dtypes found fast are then timed at the layer's shape with the threads training uses,
    interleaved (fastest of the rounds); a slow dtype keeps the check's figure, since timing
    an emulated GEMM at a 7B layer's shape would take minutes.
    """
    notes: list[str] = []
    m, k, n = 256, min(shape.hidden, 4096), min(shape.intermediate, 8192)
    fast: dict[str, bool | None] = {"fp32": True}
    out: dict[str, float] = {}
    disturbance = None
    vs_fp32: dict[str, list[float]] = {}
    if device == "cpu":
        check = check_gemms(torch, device=device, sync=sync)
        disturbance = check.disturbance
        notes.extend(check.notes)
        vs_fp32 = {
            d: [round(s.low, 3), round(s.median, 3), round(s.high, 3)]
            for d, s in check.spreads.items()
        }
        for d, verdict in check.verdicts.items():
            fast[d] = verdict.fast
            if not verdict.fast:
                out[d] = check.gflops[d]
    else:
        fast |= {"bf16": None, "fp16": None}
    fns = {}
    for name in ("fp32", "bf16", "fp16"):
        if fast.get(name) is False:
            continue
        dtype = getattr(torch, DTYPES[name])
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        fns[name] = functools.partial(torch.mm, a, b)
        fns[name]()  # warm-up: the first call picks the kernel
    times, _ = time_rounds(fns, sync, rounds=REPEATS)
    for name, ts in times.items():
        out[name] = round(2 * m * k * n / min(ts) / 1e9, 2)
    if fast["bf16"] is None and "bf16" in times:
        # A GPU: decide from the layer-shaped rounds; undecided stays None.
        spread = Spread.of([f / b for f, b in zip(times["fp32"], times["bf16"], strict=True)])
        verdict = decide("bf16", spread, None)
        fast["bf16"] = verdict.fast if verdict.source == "measured" else None
    return GemmResult(
        gflops={d: out[d] for d in ("fp32", "bf16", "fp16") if d in out},
        fast_bf16=fast["bf16"],
        fast_fp16=fast["fp16"],
        notes=notes,
        disturbance=disturbance,
        vs_fp32=vs_fp32,
    )


def copy_bandwidth(torch: Any, device: str, sync: Any) -> float:
    """GB/s of a large device copy (bytes read + bytes written)."""
    n = 32 * 1024 * 1024  # 128 MiB of fp32
    src = torch.empty(n, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), sync, repeats=REPEATS)
    return round(2 * n * 4 / timing.median_s / 1e9, 2)


def cuda_free(torch: Any, device: str) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def time_gemm_shapes(
    torch: Any,
    device: str,
    sync: Any,
    spec: ModelSpec,
    dtype_name: str,
    token_counts: list[int],
    budget: Budget | None = None,
) -> tuple[list[GemmTiming], str]:
    """TFLOP/s of each distinct weight GEMM of one block at several token counts.

    The cost model then prices the block's GEMMs from these (label ``measured``) instead of
    the fitted saturation curve. Synchronises before every clock read (``measure``); an
    out-of-memory stops the sweep for that shape and is reported, not raised.
    """
    dtype = getattr(torch, DTYPES[dtype_name])
    out: list[GemmTiming] = []
    notes: list[str] = []
    shapes = sorted({(g.n, g.k) for g in block_gemms(spec, 1)})
    for n, k in shapes:
        for m in token_counts:
            if budget is not None and not budget.ok():
                return out, "; ".join([*notes, "GEMM sweep stopped by the budget"])
            try:
                a = torch.randn(m, k, device=device).to(dtype)
                b = torch.randn(k, n, device=device).to(dtype)
                timing = measure(functools.partial(torch.mm, a, b), sync, repeats=REPEATS)
            except RuntimeError as exc:
                if is_out_of_memory(exc):
                    notes.append(f"GEMM {m}x{k}x{n} {dtype_name}: out of memory")
                    break
                raise
            flops = 2.0 * m * n * k
            out.append(
                GemmTiming(m=m, n=n, k=k, dtype=dtype_name, tflops=flops / timing.median_s / 1e12)
            )
    return out, "; ".join(notes)
