"""Lower bounds on what a saver ladder of the plan search can return (its branch and bound).

A ladder is one core (optimizer, precision, attention) on one layout, walked through its
memory-saver rungs (:mod:`advisor.plan.ladders`) and micro-batches by
:class:`advisor.plan.planner.PlanSearch`. The bounds here read the search through
:class:`LadderSource` (its memoised evaluator, its rules, its rung filter);
:meth:`advisor.plan.planner.PlanSearch.bound` turns them into a score and
``tests/plan/test_search_bound.py`` holds every walked ladder to them.
"""

from __future__ import annotations

import functools
from typing import Protocol

from advisor.config import Checkpointing, Offload, TrainingConfig
from advisor.cost.expert_overlap import comm_sm_share
from advisor.plan.evaluator import Evaluator
from advisor.plan.ladders import adds_no_time, leanest_rung, saver_ids
from advisor.plan.overlap import may_overlap
from advisor.plan.space import Context, Savers
from advisor.rules.engine import Decision


class LadderSource(Protocol):
    """What the bounds read of the search that walks the ladders (PlanSearch is one)."""

    @property
    def ctx(self) -> Context: ...

    @property
    def decision(self) -> Decision: ...

    @property
    def ev(self) -> Evaluator: ...

    def rung(self, rung: Savers, per_layer: bool) -> Savers:
        """``rung`` with or without per-layer updates, as the search walks it."""
        ...

    def per_layer_options(self) -> tuple[bool, ...]:
        """Whether the ladder's rungs are walked without per-layer updates, and with."""
        ...

    def ok(self, c: TrainingConfig) -> bool:
        """Whether the rules and compatibility allow ``c``."""
        ...


# The coarse terms of a ladder where not even its leanest rung fits.
NOTHING_FITS: tuple[float, int, float] = (float("inf"), 0, 0.0)


class LadderBounds:
    """The bounds of one ladder (a core on a layout), with its evaluations memoised by the
    search's evaluator (see :meth:`advisor.plan.planner.PlanSearch.bound`); ``present`` is
    the technique ids of the core on its layout, ``settled`` whether the ladder surely finds
    a plan that reaches the global batch (see
    :meth:`advisor.plan.planner.PlanSearch.walked`)."""

    def __init__(
        self,
        s: LadderSource,
        base: TrainingConfig,
        per: int,
        dp: int,
        levels: list[list[Savers]],
        present: frozenset[str],
        settled: bool,
    ) -> None:
        self.s, self.base, self.per, self.dp, self.levels = s, base, per, dp, levels
        # A pinned micro-batch accumulates to a multiple of itself (best_geometry): the
        # plan's samples per replica, as one micro-batch, bound its time per token.
        fixed = s.ctx.workload.micro_batch
        self.top_mb = per if fixed is None else fixed * -(-per // fixed)
        self.rungs = [
            s.rung(r, inb) for level in levels for r in level for inb in s.per_layer_options()
        ]
        scores = s.decision.scores
        self.present = present
        self.accumulate = max(scores.get("gradient-accumulation", 0.0), 0.0) if per > 1 else 0.0
        self._rules: dict[Savers, float] = {}
        self.settled = settled  # the ladder surely finds a plan reaching the global batch
        self._levels: dict[Offload, tuple[float, int] | None] = {}

    def seconds(self, rung: Savers) -> float | None:
        """Time per token of the rung at the whole batch, without the pipeline bubble."""
        top = rung.apply(self.base).with_geometry(self.top_mb, 1)
        return top_seconds(self.s.ctx, self.s.ev, top, self.dp)

    def rule(self, rung: Savers) -> float:
        hit = self._rules.get(rung)
        if hit is None:
            extra = 0.0 if rung.optimizer_in_backward else self.accumulate
            ids = self.present | saver_ids(rung)
            hit = self._rules[rung] = self.s.decision.score(list(ids)) + extra
        return hit

    def least_peak(self, rung: Savers, *, viable: bool) -> int | None:
        """The least peak of the rung over the geometries best_geometry can give it: micro-
        batch 1 accumulating over the per-replica batch, or the whole batch at once (acc 1
        drops persistent gradients); per-layer updates never accumulate. None when none
        fits the device (``viable``: the host too, and the rules allow the rung)."""
        s, c, per = self.s, rung.apply(self.base), self.per
        if viable and not s.ok(c.with_geometry(1, 1)):
            return None
        geometries = (
            [(1, 1)] if c.savers.optimizer_in_backward or per == 1 else [(1, per), (per, 1)]
        )
        best = None
        for micro, acc in geometries:
            g = c.with_geometry(micro, acc)
            m = s.ev.totals(g)
            if (s.ev.fits(g) if viable else m.total_bytes <= s.ev.usable) and (
                best is None or m.total_bytes < best
            ):
                best = m.total_bytes
        return best

    def level_terms(self, level: list[Savers]) -> tuple[float, int] | None:
        """Bounds on one offload level's rungs: the time of its fastest rungs (those that
        neither recompute nor offload activations: the bare one and the fused loss, which
        moves fewer bytes) and the peak of its leanest (full recomputation with activation
        offload, or no recomputation at all: a pipeline rank holding one or two blocks
        keeps less without it than with full recomputation's buffer; every rung where the
        level has no full recomputation). None when no rung of the level fits."""
        off = level[0].offload
        if off in self._levels:
            return self._levels[off]
        s = self.s
        leanest = leanest_rung(level)
        if leanest.checkpointing is not Checkpointing.FULL:
            lean = level
        elif -(-(s.ctx.spec.num_layers or 0) // self.base.layout.pipeline_parallel) <= 2:
            # A pipeline rank of one or two blocks with one micro-batch in flight keeps
            # less without recomputation than with full recomputation's buffer.
            plain = [r for r in level if r.checkpointing is Checkpointing.NONE]
            lean = [leanest, *plain[-1:]]  # the last: activation offload, else fused loss
        else:
            lean = [leanest]
        peaks = [
            p
            for r in lean
            for inb in s.per_layer_options()
            if (p := self.least_peak(s.rung(r, inb), viable=False)) is not None
        ]
        terms: tuple[float, int] | None = None
        if peaks:
            fast = [r for r in level if adds_no_time(r)]
            # NOTE: the fused loss moves 6 bytes per logit against the unfused loss's 28 or
            # more (cost._LOSS_BYTES): where the level has it, it is the fastest of these.
            fast = [r for r in fast if r.fused_loss] or fast
            times = [self.seconds(s.rung(r, inb)) for r in fast for inb in s.per_layer_options()]
            if not times or any(t is None for t in times):
                raise Unpriced
            terms = (min(t for t in times if t is not None), min(peaks))
        self._levels[off] = terms
        return terms

    @functools.cached_property
    def coarse(self) -> tuple[float, int, float] | None:
        """The coarse bound's terms: the fastest time, the leanest peak and the best rules
        over the walked levels (NOTHING_FITS: no rung fits; None: a rung is unpriced)."""
        try:
            terms = [t for level in self.levels if (t := self.level_terms(level)) is not None]
        except Unpriced:
            return None
        if not terms:
            return NOTHING_FITS  # not even the leanest rung fits: the ladder finds nothing
        return (
            min(t for t, _ in terms),
            min(p for _, p in terms),
            max(self.rule(r) for r in self.rungs),
        )


def top_seconds(ctx: Context, ev: Evaluator, top: TrainingConfig, dp: int) -> float | None:
    """A lower bound on the time per token of ``top``'s rung at any micro-batch, ``top``
    being the rung at the whole per-replica batch as one micro-batch: per-token compute and
    exposed communication do not grow with the micro-batch, the pipeline bubble does
    (Narayanan et al. 2021) and is left out, as are the all-to-alls a schedule may hide and
    paged optimizer states (None where the step-time model cannot price it). ``dp``: the
    layout's data-parallel degree."""
    try:
        cost = ev.time(top)
    except ValueError:
        return None
    bubble = cost.components.get("pipeline_bubble", 0.0)
    if may_overlap(ctx, top):
        # A schedule may hide the all-to-alls at the plan's geometry (advisor.plan.overlap),
        # all but the share of the SMs their kernels take from the compute they run
        # under (advisor.cost.expert_overlap.exposed_all_to_all: at least a2a x share).
        share = comm_sm_share(ctx.target.profile.id)
        bubble += cost.components.get("expert_all_to_all", 0.0) * (1 - share)
    # Paged optimizer states cost PCIe time only where the peak leaves them too little
    # room (memory.paged_residency): a leaner geometry may not page at all.
    paged = cost.components.get("paged_states", 0.0)
    tokens = top.batch.micro_batch * dp * top.batch.seq_len
    return (cost.seconds - bubble - paged) / tokens


class Unpriced(Exception):
    """The step-time model cannot price a rung (no bound applies)."""
