"""Timing hygiene: warm-up, device synchronisation before every clock read, repeat medians.

Also the other processes' CPU share during a calibration (/proc/stat) and out-of-memory
recognition. torch is passed in or imported lazily; importing this module costs nothing.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from advisor.cost.data import Timing

MIN_REPEATS = 5


def torch_threads_env() -> int | None:
    """The intra-op thread count torch will use, read without importing torch.

    torch takes ``OMP_NUM_THREADS`` (then ``MKL_NUM_THREADS``) at start-up; without them it
    uses the physical cores, which the caller supplies. ``None`` when neither is set.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def synchronizer(torch: Any, device: str) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on CPU)."""
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    if device == "mps":
        return lambda: torch.mps.synchronize()
    return lambda: None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device (or the host allocator) running out of memory."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _quantile(xs: list[float], q: float) -> float:
    # Linear interpolation between closest ranks (the "inclusive" definition).
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: list[float]) -> Timing:
    """Median and interquartile range of repeated measurements."""
    xs = sorted(samples)
    return Timing(
        median_s=statistics.median(xs),
        iqr_s=max(0.0, _quantile(xs, 0.75) - _quantile(xs, 0.25)),
        repeats=len(xs),
    )


def measure(
    fn: Callable[[], Any],
    sync: Callable[[], None],
    *,
    repeats: int = MIN_REPEATS,
    warmup: int = 1,
    max_seconds: float | None = None,
) -> Timing:
    """Time ``fn``: ``warmup`` untimed runs, then ``repeats`` timed ones, synced around each.

    Args:
        fn: the work to time.
        sync: waits for the device (from :func:`synchronizer`); called before every clock read.
        repeats: timed runs.
        warmup: untimed runs first (allocations, kernel selection, first-call costs).
        max_seconds: stop repeating once the timed runs add up to this (at least one run is
            always kept; ``Timing.repeats`` says how many were taken).

    Returns:
        Median and IQR of the timed runs.

    Raises:
        RuntimeError, MemoryError: from ``fn`` (see :func:`is_out_of_memory`).
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    for _ in range(max(1, repeats)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
        if max_seconds is not None and spent >= max_seconds:
            break
    return summarize(samples)


def measure_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    sync: Callable[[], None],
    *,
    repeats: int = MIN_REPEATS,
    warmup: int = 1,
    max_seconds: float | None = None,
) -> dict[str, Timing]:
    """Time variants that will be compared in rounds (A B C, B C A, ...), so that another
    process's load falls on all of them alike; each variant's median and IQR.

    Args:
        fns: the variants.
        sync: waits for the device; called before every clock read.
        repeats: rounds (each variant is timed once per round).
        warmup: untimed runs of each variant first.
        max_seconds: stop after the round in which the timed runs add up to this (every
            variant always gets the same number of rounds, at least one).

    Raises:
        RuntimeError, MemoryError: from a variant (see :func:`is_out_of_memory`).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    spent = 0.0
    for r in range(max(1, repeats)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            dt = time.perf_counter() - t0
            samples[name].append(dt)
            spent += dt
        if max_seconds is not None and spent >= max_seconds:
            break
    return {n: summarize(xs) for n, xs in samples.items()}


class CpuShare:
    """The share of all CPU time used by processes other than this one, since construction.

    Reads ``/proc/stat`` (busy jiffies of all CPUs) and ``/proc/self/stat`` (ours and our
    waited-for children's). ``other_share()`` is ``None`` where /proc is absent.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                # After the ")" closing comm: utime, stime, cutime, cstime are items 11..14.
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # user..steal; guest time is already inside user
        mine = sum(int(x) for x in own[11:15])
        return total, idle, mine

    def other_share(self) -> float | None:
        """Other processes' share of all CPU time since construction (0..1)."""
        end = self._read()
        if self._start is None or end is None:
            return None
        total = end[0] - self._start[0]
        if total <= 0:
            return 0.0
        busy = total - (end[1] - self._start[1])
        other = busy - (end[2] - self._start[2])
        return max(0.0, min(1.0, other / total))
