"""Is a 16-bit matrix multiply fast here? Interleaved ratios to fp32, checked against the ISA.

A busy machine must give the same verdict as a quiet one. Three habits make it so:

- **Like with like, at the same moment.** fp32, bf16 and fp16 GEMMs are timed in rounds
  (A, B, C, then B, C, A, ...), so contention hits every dtype alike; the verdict comes from
  the per-round speed ratios to fp32, not from absolute times taken seconds apart. Each cell
  keeps the fastest of a few calls: another process can only add time, never remove it.
- **One thread.** The verdict is about kernels, not about scheduling: with two OpenMP threads
  on two shared cores, a GEMM stalls at its barrier whenever another process holds one core
  (fp32 measured at 2-3 GFLOP/s against 170 alone, while bf16 kept its speed). One thread is
  only time-sliced, and interleaving makes every dtype share the slices.
- **Decisive or undecided.** A dtype is fast when the ratios' interquartile range lies wholly
  above the dead band around :data:`THRESHOLD`, slow when it lies wholly below; otherwise the
  measurement says nothing and the ISA decides, so a dtype that runs near the threshold (fp16
  at 0.84-0.93x fp32 with AVX512-FP16) gets the same answer every time, and a hard rule never
  fires on a figure whose spread straddles it.
- **Checked against what the hardware can do.** An x86 CPU without AVX512-FP16/AMX-FP16 has
  no fp16 GEMM kernel faster than fp32; one with AVX512-BF16 or AMX-BF16 does not run bf16 at
  a quarter of fp32's speed. A measurement that contradicts the ISA is taken again; if it
  still does, the ISA verdict stands, with a one-line note.

torch is passed in (never imported here), so the module is free to import anywhere.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A 16-bit dtype is "fast" when its GEMM runs at least this fraction of fp32's speed (the
# project's long-standing definition of the fast_bf16/fast_fp16 facts, rules/facts.yaml).
THRESHOLD = 0.9
# A measured ratio decides only outside THRESHOLD / _BAND .. THRESHOLD x _BAND (0.78-1.04):
# interleaved single-thread ratios spread about +-5% at rest and +-10% under load here.
_BAND = 1.15
# With AVX512-BF16 or AMX-BF16, bf16 GEMMs ran 3-4x fp32's speed on this project's machines
# (benchmarks/results/contention.json); below this fraction of fp32 the measurement, not the
# ISA, is what is wrong (the issue that introduced this module saw 0.08 under load).
_ISA_FLOOR = 0.25
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Rounds per measurement, and the most a verdict may take (re-measurements included).
MIN_ROUNDS = 7
MAX_ATTEMPTS = 3


# --- The ISA -------------------------------------------------------------------------


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """Model name and ISA flags from /proc/cpuinfo (fast; py-cpuinfo takes a second here)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def isa_expectation(flags: set[str], machine: str | None = None) -> dict[str, bool | None]:
    """What the ISA flags say of each 16-bit dtype: True (kernels exist), False (they cannot
    be fast) or None (the flags do not tell: not x86, or no flags read).

    NOTE: on x86, oneDNN runs bf16 GEMMs natively only with AVX512-BF16 or AMX-BF16 and fp16
    only with AVX512-FP16 or AMX-FP16; otherwise it converts to fp32 and back (measured 180x
    slower for bf16 on an AVX2-only machine; benchmarks/results/contention.json records the
    ratios on the machine kind this project is built on).
    ARM's flags (bf16, asimdhp) are left to the measurement.
    """
    machine = (machine or platform.machine()).lower()
    if not flags or machine not in ("x86_64", "amd64", "i686", "i386"):
        return {"bf16": None, "fp16": None}
    return {
        "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "fp16": bool({"avx512_fp16", "amx_fp16"} & flags),
    }


# --- Verdicts (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """A dtype's GEMM speed relative to fp32 over interleaved rounds (1.0 = as fast)."""

    low: float  # lower quartile
    median: float
    high: float  # upper quartile
    rounds: int

    @classmethod
    def of(cls, ratios: list[float]) -> Spread:
        xs = sorted(ratios)
        q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else xs * 3
        return cls(low=q[0], median=statistics.median(xs), high=q[2], rounds=len(xs))


@dataclass(frozen=True)
class Verdict:
    """Whether a dtype is fast, and what says so."""

    fast: bool
    source: str  # "measured", or "isa flags..." when the measurement was undecided or contradicted
    note: str = ""


def decide(dtype: str, spread: Spread | None, isa: bool | None) -> Verdict:
    """The fast/slow verdict of one 16-bit dtype from its measured spread and the ISA.

    Args:
        dtype: "bf16" or "fp16" (for the note).
        spread: the measured speed ratios to fp32; None when nothing was measured.
        isa: :func:`isa_expectation`'s answer for the dtype.

    Returns:
        A measured verdict when the interquartile range is clear of :data:`THRESHOLD` and
        does not contradict the ISA; else the ISA's (slow when the ISA does not tell).
    """
    fallback = bool(isa)
    if spread is None:
        return Verdict(fallback, "isa flags")
    if contradicts(spread, isa):
        return Verdict(
            fallback,
            "isa flags",
            f"{dtype} GEMM measured at {spread.median:.2f}x fp32, which this CPU's ISA rules "
            f"out: taken as {'fast' if fallback else 'slow'} from its flags",
        )
    if spread.low >= THRESHOLD * _BAND:
        return Verdict(True, "measured")
    if spread.high < THRESHOLD / _BAND:
        return Verdict(False, "measured")
    # NOTE: near the threshold the ISA decides by design: no warning (a note that came and
    # went with the noise would itself be the instability this module removes).
    near = f"measured {spread.low:.2f}-{spread.high:.2f}x fp32, too near {THRESHOLD}x to decide"
    return Verdict(fallback, f"isa flags ({near})")


def contradicts(spread: Spread, isa: bool | None) -> bool:
    """Whether a measured spread is impossible on hardware with (or without) the kernels."""
    if isa is True:
        return spread.median < _ISA_FLOOR
    if isa is False:
        return spread.low >= THRESHOLD
    return False


def decisive(spread: Spread) -> bool:
    """Whether the interquartile range lies wholly outside the dead band around the threshold."""
    return spread.low >= THRESHOLD * _BAND or spread.high < THRESHOLD / _BAND


# --- Measurement (torch passed in) ---------------------------------------------------


@dataclass
class GemmCheck:
    """The interleaved GEMM measurement and its verdicts."""

    gflops: dict[str, float]  # one thread, from each dtype's fastest call
    spreads: dict[str, Spread]
    verdicts: dict[str, Verdict]
    disturbance: float  # share of the CPU time the timed calls did not get (0 = undisturbed)
    attempts: int
    notes: list[str] = field(default_factory=list)


def time_rounds(
    fns: Mapping[str, Callable[[], Any]],
    sync: Callable[[], None],
    *,
    rounds: int,
    calls: dict[str, int] | None = None,
    threads: int = 1,
) -> tuple[dict[str, list[float]], float]:
    """Time each function once per round, in a rotating order (A B C, B C A, C A B, ...).

    Args:
        fns: the variants, each one call of the work.
        sync: waits for the device before every clock read.
        rounds: how many rounds.
        calls: timed calls per cell (default 1); the cell keeps its fastest call.
        threads: the intra-op threads the work uses (to tell CPU time the work did not get).

    Returns:
        Each variant's per-round cell times, and the disturbance: 1 - (process CPU time) /
        (wall time x threads) over all cells, clipped to 0..1 (for CPU work only; a GPU
        waits without using the CPU, so callers ignore it there).
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    wall = cpu = 0.0
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            best = float("inf")
            for _ in range((calls or {}).get(name, 1)):
                sync()
                c0, t0 = time.process_time(), time.perf_counter()
                fns[name]()
                sync()
                dt = time.perf_counter() - t0
                cpu += time.process_time() - c0
                wall += dt
                best = min(best, dt)
            times[name].append(best)
    disturbance = 1.0 - cpu / (wall * max(1, threads)) if wall > 0 else 0.0
    return times, max(0.0, min(1.0, disturbance))


def check_gemms(
    torch: Any,
    *,
    flags: set[str] | None = None,
    size: int = 256,
    budget_s: float = 3.0,
    device: str = "cpu",
    sync: Callable[[], None] = lambda: None,
) -> GemmCheck:
    """Measure fp32, bf16 and fp16 square GEMMs interleaved and decide which 16-bit dtype is fast.

    Args:
        torch: the torch module.
        flags: the CPU's ISA flags (read from /proc/cpuinfo when None).
        size: the GEMM's side; 256 takes ~0.3 ms in fp32 and up to ~70 ms in an emulated dtype.
        budget_s: re-measure an undecided or contradicting dtype while this much time is left.
        device: where to run (the ISA check applies on the CPU only).
        sync: waits for the device before every clock read.

    Returns:
        One-thread GFLOP/s per dtype (fastest call), the ratio spreads, the verdicts and the
        disturbance.
    """
    before = int(torch.get_num_threads())
    torch.set_num_threads(1)
    try:
        return _check_gemms(torch, flags, size, budget_s, device, sync)
    finally:
        torch.set_num_threads(before)


def _check_gemms(
    torch: Any,
    flags: set[str] | None,
    size: int,
    budget_s: float,
    device: str,
    sync: Callable[[], None],
) -> GemmCheck:
    start = time.perf_counter()
    isa = (
        isa_expectation(flags if flags is not None else read_cpuinfo()[1])
        if device == "cpu"
        else {"bf16": None, "fp16": None}
    )
    threads = 1
    mats = {
        name: (
            torch.randn(size, size, device=device).to(getattr(torch, dt)),
            torch.randn(size, size, device=device).to(getattr(torch, dt)),
        )
        for name, dt in _DTYPES.items()
    }
    fns = {name: _mm(torch, a, b) for name, (a, b) in mats.items()}
    once: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up: the first call picks (and may JIT) the kernel
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        once[name] = time.perf_counter() - t0
    # Fast cells repeat a few calls (keeping the fastest) so each lasts ~2 ms or more; an
    # emulated dtype's single call already does.
    calls = {n: max(1, min(8, int(0.002 / max(t, 1e-6)))) for n, t in once.items()}
    all_times: dict[str, list[float]] = {n: [] for n in fns}
    disturbances: list[float] = []
    notes: list[str] = []
    attempts = 0
    spreads: dict[str, Spread] = {}
    while True:
        attempts += 1
        times, disturbance = time_rounds(fns, sync, rounds=MIN_ROUNDS, calls=calls, threads=threads)
        disturbances.append(disturbance)
        # A fresh attempt replaces an inconsistent one rather than averaging with it.
        all_times = times
        spreads = {
            d: Spread.of(
                [f / x for f, x in zip(all_times["fp32"], all_times[d], strict=True) if x > 0]
            )
            for d in ("bf16", "fp16")
        }
        unsettled = [d for d, s in spreads.items() if not decisive(s) or contradicts(s, isa[d])]
        if not unsettled or attempts >= MAX_ATTEMPTS:
            break
        if time.perf_counter() - start > budget_s:
            break
    flops = 2.0 * size**3
    gflops = {n: round(flops / min(ts) / 1e9, 2) for n, ts in all_times.items()}
    verdicts = {d: decide(d, spreads[d], isa[d]) for d in ("bf16", "fp16")}
    notes.extend(v.note for v in verdicts.values() if v.note)
    return GemmCheck(
        gflops=gflops,
        spreads=spreads,
        verdicts=verdicts,
        disturbance=round(statistics.median(disturbances), 3),
        attempts=attempts,
        notes=notes,
    )


def _mm(torch: Any, a: Any, b: Any) -> Callable[[], Any]:
    return lambda: torch.mm(a, b)


def load_average() -> float | None:
    """The one-minute load average per usable CPU (None where the OS has none)."""
    try:
        one = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return round(one / max(1, cpus), 2)
