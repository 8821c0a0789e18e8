"""Batch geometry of a plan: micro-batch x gradient accumulation x data-parallel degree.

Memory and step time are monotone in the micro-batch, so the micro-batch is found by binary
search over the divisors of the per-replica batch (:func:`fitting_prefix`, never by
enumeration); :func:`best_geometry` then picks the fastest of those that fit.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from advisor.config import TrainingConfig
from advisor.plan.evaluator import Evaluator
from advisor.plan.overlap import may_overlap, with_best_overlap
from advisor.plan.space import GlobalBatch


@dataclass(frozen=True)
class Geometry:
    """Micro-batch x accumulation x data-parallel degree, and whether it hits the target."""

    micro_batch: int
    accumulation: int
    global_batch: int
    exact: bool
    note: str = ""
    largest_fit: int = 0  # the largest micro-batch that fits (the next rung's search hint)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def per_replica_batch(batch: GlobalBatch, dp: int) -> tuple[int, str]:
    """Samples each data-parallel replica processes per step, and a note when the global
    batch had to be rounded up to a multiple of the replicas."""
    if batch.samples % dp == 0:
        return batch.samples // dp, ""
    per = -(-batch.samples // dp)
    return per, (
        f"global batch {batch.samples} is not a multiple of {dp} data-parallel replicas; "
        f"rounded up to {per * dp}"
    )


def best_geometry(
    ev: Evaluator,
    config: TrainingConfig,
    dp: int,
    batch: GlobalBatch,
    fixed_micro: int | None,
    *,
    exhaustive: bool = False,
    smallest: bool = False,
    hint: int | None = None,
) -> tuple[TrainingConfig, Geometry] | None:
    """The micro-batch and accumulation of ``config`` with the best throughput that fits
    (with ``smallest``, the least memory: micro-batch 1, as ``--objective memory`` asks).

    Args:
        ev: the memoised models.
        config: the plan, layout applied.
        dp: its data-parallel degree.
        batch: the global batch to reach.
        fixed_micro: ``--micro-batch`` (None: searched).
        exhaustive: try every divisor instead of the binary search.
        smallest: the smallest micro-batch instead of the fastest.
        hint: the largest micro-batch that fit the ladder's previous rung (0: none did), where
            the search for this one's starts (see fitting_prefix).

    Returns:
        The configuration with its geometry, or None when not even one sample per device fits.
    """
    layout = config.layout
    per, note = per_replica_batch(batch, dp)
    in_backward = config.savers.optimizer_in_backward
    with_geometry = _Geometries(config)

    if fixed_micro is not None:
        return _fixed_geometry(ev, with_geometry, fixed_micro, per, note, dp, batch, in_backward)

    overlapped = may_overlap(ev.ctx, config)
    choices = _divisors(per)
    if in_backward:
        # Per-layer updates step as soon as a gradient exists: no accumulation (Lv et al. 2023).
        choices = sorted(set(choices + _powers_below(per)))
    fitting = fitting_prefix(
        ev,
        choices,
        lambda mb: with_geometry(mb, _acc(per, mb, in_backward)),
        hint=hint,
    )
    if not fitting:
        return None
    if in_backward and fitting[-1] != per:
        # The largest micro-batch that fits, as the whole per-replica batch.
        candidates = [fitting[-1]]
    elif exhaustive or layout.pipeline_parallel > 1 or overlapped:
        # More micro-batches shrink the pipeline bubble, (p - 1) / m (Narayanan et al. 2021),
        # and the share of micro-batches whose all-to-alls run unpaired (advisor.plan.overlap).
        candidates = fitting if exhaustive else fitting[-6:]
    else:
        # Without a pipeline, time per token does not grow with the micro-batch (per-sample
        # compute and exposed communication fall with it; the bounds of the search rest on
        # the same fact, tests/plan/test_search_bound.py): the largest that fits is the fastest.
        candidates = fitting[-1:]
    if smallest:
        candidates = fitting[:1]
    descend = (layout.pipeline_parallel > 1 or overlapped) and not exhaustive and not smallest
    if descend:
        # Time per token is unimodal in the micro-batch under a pipeline: per-sample compute
        # falls with it, the bubble's share (p - 1) / m grows with it (Narayanan et al.
        # 2021). From the largest down, the first micro-batch that is slower ends the walk.
        candidates = candidates[::-1]
    return _fastest(ev, with_geometry, candidates, fitting[-1], per, note, dp, batch, descend)


class _Geometries:
    """``config`` with each micro-batch and accumulation asked for: the fit test and the
    timing ask for the same geometries, so each is built once."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.built: dict[tuple[int, int], TrainingConfig] = {}

    def __call__(self, micro: int, accumulation: int) -> TrainingConfig:
        c = self.built.get((micro, accumulation))
        if c is None:
            c = self.built[micro, accumulation] = self.config.with_geometry(micro, accumulation)
        return c


def _fixed_geometry(
    ev: Evaluator,
    with_geometry: _Geometries,
    fixed_micro: int,
    per: int,
    note: str,
    dp: int,
    batch: GlobalBatch,
    in_backward: bool,
) -> tuple[TrainingConfig, Geometry] | None:
    """The geometry of a pinned micro-batch (``--micro-batch``): it accumulates to the
    per-replica batch, or not at all with per-layer updates; None when it does not fit."""
    acc = -(-per // fixed_micro)
    if in_backward:
        acc = 1
    c = with_geometry(fixed_micro, acc)
    if not ev.fits(c):
        return None
    best = with_best_overlap(ev, c)
    if best is None:
        return None
    c = best
    total = fixed_micro * acc * dp
    exact = total == batch.samples
    why = note
    if not exact and not why:
        why = f"--micro-batch {fixed_micro} x {acc} x {dp} replicas = {total}"
    if in_backward and total != batch.samples:
        why = f"per-layer updates cannot accumulate gradients: {total} samples per step"
    return c, Geometry(
        micro_batch=fixed_micro, accumulation=acc, global_batch=total, exact=exact, note=why
    )


def _fastest(
    ev: Evaluator,
    with_geometry: _Geometries,
    candidates: list[int],
    largest_fit: int,
    per: int,
    note: str,
    dp: int,
    batch: GlobalBatch,
    descend: bool,
) -> tuple[TrainingConfig, Geometry] | None:
    """The candidate micro-batch with the least time per token (``descend``: walked from
    the largest down, ending at the first that is slower)."""
    in_backward = with_geometry.config.savers.optimizer_in_backward
    best: tuple[float, TrainingConfig, Geometry] | None = None
    for mb in candidates:
        acc = _acc(per, mb, in_backward)
        # The schedule hiding the expert all-to-alls, chosen at this geometry (it decides
        # what DualPipe and Megatron-Core's overlap can run: even micro-batches, no full
        # recomputation): advisor.plan.overlap.
        total = mb * acc * dp
        # A geometry whose every schedule is bounded slower than the best one so far is
        # not timed under each (its step, less what a schedule could hide).
        beat = None if best is None else best[0] * total * with_geometry.config.batch.seq_len
        overlapped = with_best_overlap(ev, with_geometry(mb, acc), beat)
        if overlapped is None:
            continue
        c = overlapped
        per_token = ev.time(c).seconds / (total * c.batch.seq_len)
        exact = total == batch.samples
        why = note
        if in_backward and total != batch.samples:
            why = (
                f"per-layer updates cannot accumulate gradients (Lv et al. 2023): "
                f"{mb} x {dp} = {total} samples per step instead of {batch.samples}"
            )
        g = Geometry(
            micro_batch=mb,
            accumulation=acc,
            global_batch=total,
            exact=exact,
            note=why,
            largest_fit=largest_fit,
        )
        if descend and best is not None:
            if per_token > best[0] * (1 + 1e-9):
                break
            best = (per_token, c, g)  # no slower: the smaller one, as ascending order picks
        elif best is None or per_token < best[0] * (1 - 1e-9):
            best = (per_token, c, g)
    if best is None:
        return None  # a pinned --moe-overlap runs none of the candidates
    return best[1], best[2]


def _acc(per: int, micro: int, in_backward: bool) -> int:
    return 1 if in_backward else per // micro


def _powers_below(n: int) -> list[int]:
    out, v = [], 1
    while v < n:
        out.append(v)
        v *= 2
    return out


def fitting_prefix(
    ev: Evaluator,
    choices: list[int],
    build: Callable[[int], TrainingConfig],
    *,
    hint: int | None = None,
) -> list[int]:
    """The choices that fit: memory is monotone in the micro-batch, so binary search.

    Without a ``hint`` it looks at each end first (the largest often fits outright, the
    smallest often not at all). ``hint`` is the largest micro-batch that fit the previous
    rung of the ladder (0: none did): the boundary rarely moves far between rungs, so the
    search starts there. Either way the answer is the same prefix.
    """
    if not choices:
        return choices
    n = len(choices)

    def fits(i: int) -> bool:
        return ev.fits(build(choices[i]))

    if hint is None:
        if fits(n - 1):
            return choices
        if not fits(0):
            return []
        lo, hi = 1, n - 1  # choices[:lo] fit; choices[hi:] do not
    else:
        k = bisect.bisect_right(choices, hint)  # the previous rung's fitting prefix
        if k == 0:
            if not fits(0):
                return []
            lo, hi = 1, n
        elif k == n:
            if fits(n - 1):
                return choices
            lo, hi = 0, n - 1
        elif fits(k - 1):
            if not fits(k):
                return choices[:k]
            lo, hi = k + 1, n
        else:
            lo, hi = 0, k - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid + 1
        else:
            hi = mid
    return choices[:lo]
