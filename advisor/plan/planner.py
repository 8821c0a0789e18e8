"""The state of one plan search (:class:`PlanSearch`) and its walk of the saver ladders.

One core on one layout goes through its filters (:mod:`advisor.plan.constraints`), its
batch geometry (:mod:`advisor.plan.geometry`) and its saver ladder
(:mod:`advisor.plan.ladders`), cheapest lower bound first, cut when its bound
(:mod:`advisor.plan.bounds`) cannot reach the shown rows. :mod:`advisor.plan.screens`
decides which cores and layouts get here; :func:`advisor.plan.search.search` drives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from advisor.config import Checkpointing, Offload, TrainingConfig
from advisor.plan.bounds import NOTHING_FITS, LadderBounds, top_seconds
from advisor.plan.constraints import Constraints, reject, techniques_of
from advisor.plan.evaluator import EQUIVALENT, CostFn, Evaluator, Plan, memory_reason
from advisor.plan.geometry import best_geometry, per_replica_batch
from advisor.plan.ladders import (
    adds_no_time,
    all_savers,
    leanest_rung,
    saver_ladder,
    selective_saves,
)
from advisor.plan.layout import Layout
from advisor.plan.models import Rejection
from advisor.plan.overlap import may_overlap
from advisor.plan.space import (
    Context,
    Objective,
    PlanSpace,
    Savers,
    objective_score,
    plan_step_factor,
)
from advisor.rules.engine import Decision
from advisor.rules.taxonomy import Order

# The score a ladder's lower bound must beat to be walked: the last shown row's score over
# the plans found so far (+inf while fewer rows exist; see :meth:`PlanSearch.bound`).
Cutoff = Callable[[Sequence[Plan]], float]

# Objectives whose score is monotone in time, memory and rule score with the plans' ladders
# walked cheapest-first (branch and bound applies; "memory" walks every rung, "quality"
# ranks full-parameter plans above adapters whatever their score).
BOUNDED = (Objective.SPEED, Objective.BALANCED, Objective.TIME_TO_TARGET)


class PlanSearch:
    """The state of one plan search: its constraints and evaluator (every memo of the
    search lives in one of the two), the plans and rejections found so far, and the walk of
    the saver ladders with the branch-and-bound queries over them."""

    def __init__(
        self,
        ctx: Context,
        decision: Decision,
        cost_fn: CostFn,
        space: PlanSpace,
        *,
        exhaustive: bool,
        cutoff: Cutoff | None = None,
    ) -> None:
        self.ctx, self.decision, self.space, self.exhaustive = ctx, decision, space, exhaustive
        self.cutoff = cutoff
        self._cut: tuple[int, float] = (-1, float("inf"))  # (plans seen, cutoff then)
        self.bounded = 0  # ladders not walked: their bound is above the shown rows
        self._ladders: dict[tuple[object, ...], LadderBounds] = {}
        self.ev = Evaluator(ctx, cost_fn)
        self.batch = ctx.global_batch
        self.rejected: dict[TrainingConfig, Rejection] = {}
        self.evaluated = 0
        self.plans: list[Plan] = []
        self.ladder = saver_ladder(ctx, space)
        self.screen_ladder = saver_ladder(ctx, space, offload_every_level=False)
        self.constraints = Constraints(ctx, decision)
        self.pruned_rungs = 0
        self._rungs: dict[tuple[Savers, bool], Savers] = {}
        self.in_backward = True in space.optimizer_in_backward and (
            "fused-backward-step" in ctx.taxonomy
        )

    # -- filters
    def allowed(self, c: TrainingConfig) -> list[str] | None:
        techniques = techniques_of(self.ctx, c)
        reason, kind = self.constraints.verdict(c, techniques)
        if reason is None:
            return techniques
        if c not in self.rejected:  # the first reason stands (built once: not via setdefault)
            self.rejected[c] = reject(c, techniques, reason, kind)
        return None

    # -- one skeleton (core x savers x layout) through the batch geometry
    def plan(self, c: TrainingConfig, layout: Layout, *, hint: int | None = None) -> Plan | None:
        techniques = self.allowed(c)
        if techniques is None:
            return None
        self.evaluated += 1
        found = best_geometry(
            self.ev,
            c,
            layout.parallel.data_parallel,
            self.batch,
            self.ctx.workload.micro_batch,
            exhaustive=self.exhaustive,
            smallest=self.ctx.workload.objective.value == "memory",
            hint=hint,
        )
        if found is None:
            smallest = c.with_(micro_batch=self.ctx.workload.micro_batch or 1)
            reason, kind = memory_reason(self.ctx, self.ev, smallest)
            m = self.ev.totals(smallest)
            if reason and smallest not in self.rejected:
                self.rejected[smallest] = reject(
                    smallest, techniques, reason + _at(smallest), kind, m
                )
            return None
        cfg, g = found
        techniques = techniques_of(self.ctx, cfg)
        if "gradient-accumulation" in techniques and (
            self.constraints.hard_constraint(techniques)
            or self.constraints.compatible(cfg, techniques)
        ):
            return None
        plan = Plan(
            config=cfg,
            layout=layout,
            techniques=techniques,
            peak_bytes=self.ev.totals(cfg).total_bytes,
            evaluator=self.ev,
            cost=self.ev.time(cfg),
            rule_score=self.decision.score(techniques),
            global_batch=g.global_batch,
            exact_batch=g.exact,
            batch_note=g.note,
            largest_fit=g.largest_fit,
        )
        return plan

    # -- the saver ladder for one core on one layout
    def ladder_for(
        self, core: TrainingConfig, layout: Layout, *, screen: bool = False
    ) -> list[Plan]:
        """The plans of one core on one layout: its saver ladder (``screen``: the coarser
        one that ranks layouts, see :func:`advisor.plan.screens.best_layouts`), or every
        combination."""
        base = layout.apply(core)
        out: list[Plan] = []
        if self.exhaustive:
            for s in all_savers(self.space):
                for inb in self.space.optimizer_in_backward if self.in_backward else [False]:
                    p = self.plan(replace(s, optimizer_in_backward=inb).apply(base), layout)
                    if p is not None:
                        out.append(p)
                        self.plans.append(p)
            return out
        zeroth = self.ctx.taxonomy.get(core.optimizer).order is Order.ZEROTH
        levels = [[Savers()]] if zeroth else self.screen_ladder if screen else self.ladder
        inb = self.in_backward and not zeroth
        out = self._levels(base, layout, levels, per_layer=False, try_whole=inb)
        if inb and not any(p.exact_batch for p in out):
            # Nothing reaches the global batch: per-layer updates (no gradient buffer) may
            # fit where nothing else does, at the price of no accumulation.
            out += self._levels(base, layout, levels, per_layer=True, try_whole=False)
        return out

    def _levels(
        self,
        base: TrainingConfig,
        layout: Layout,
        levels: list[list[Savers]],
        *,
        per_layer: bool,
        try_whole: bool,
    ) -> list[Plan]:
        """Walk the saver ladder for one core on one layout (see ``saver_ladder``)."""
        memory_first = self.ctx.workload.objective.value == "memory"
        per, _ = per_replica_batch(self.batch, layout.parallel.data_parallel)
        out: list[Plan] = []
        fitted_on_device = host_fitted = False
        best_exact = float("inf")  # the fastest plan found that reaches the global batch
        # A device plan that reaches the global batch paying nothing for memory (no
        # recomputation or activation offload, the whole per-replica batch or the largest
        # micro-batch it asks for fitting at once): offloading the optimizer then frees
        # memory nothing needs and only adds PCIe traffic and a host step, so the ladder
        # stops (any edge the model gives it there is within its own error).
        device_unbound = False
        fixed = self.ctx.workload.micro_batch
        for level in levels:
            off = level[0].offload
            best, hint = float("inf"), None
            if off is not Offload.NONE and device_unbound and not memory_first:
                break
            if off is not Offload.NONE and not off.nvme and fitted_on_device and not memory_first:
                # Offload where nothing fits on the device (Ren et al. 2021), or where it
                # may be faster than what does: moving the optimizer states off frees the
                # memory recomputation would buy back (Qwen3-30B-A3B on 8 x H100: ep8 dp8
                # ZeRO-2 with the optimizer offloaded, no recomputation, beats op-level SAC
                # on the device by 30%; benchmarks/search_exhaustive.py). Walked only where
                # the level's bound could beat the device plan, its rungs against it.
                if self._level_no_better(base, level, per, per_layer, best_exact):
                    break
                best = best_exact
            if off.nvme and (host_fitted or fitted_on_device) and not memory_first:
                break  # NVMe only when neither the device nor host RAM is enough
            for rung in level:
                if rung.checkpointing is Checkpointing.SELECTIVE and not selective_saves(
                    self.ctx, base
                ):
                    continue
                cfg = self.rung(rung, per_layer).apply(base)
                if best < float("inf") and not memory_first and self._no_better(cfg, per, best):
                    continue
                p = self.plan(cfg, layout, hint=hint)
                hint = p.largest_fit if p is not None else 0
                if try_whole and p is not None and p.config.batch.micro_batch < per:
                    # Per-layer updates free the gradient buffer; if that lets the whole
                    # per-replica batch fit at once, the plan still reaches the global batch.
                    whole = self.rung(rung, True).apply(base)
                    one = whole.with_geometry(per, 1)
                    if self.allowed(one) is not None and self.ev.fits(one):
                        q = self.plan(whole, layout)
                        if q and q.exact_batch and q.seconds_per_token < p.seconds_per_token:
                            p = q
                if p is None:
                    continue
                if (
                    off is not Offload.NONE
                    and fitted_on_device
                    and not memory_first
                    and p.seconds_per_token >= best_exact * (1 - EQUIVALENT)
                ):
                    # After a device fit an offload plan is kept only where it is faster:
                    # less device memory alone does not pay for host RAM, PCIe traffic and
                    # a host optimizer step.
                    continue
                out.append(p)
                self.plans.append(p)
                # Only a plan that reaches the global batch ends the search for savers.
                fitted_on_device = fitted_on_device or (off is Offload.NONE and p.exact_batch)
                device_unbound = device_unbound or (
                    off is Offload.NONE
                    and p.exact_batch
                    and adds_no_time(rung)
                    and max(p.largest_fit, p.config.batch.micro_batch) >= (fixed or per)
                )
                host_fitted = host_fitted or (
                    off is not Offload.NONE and not off.nvme and p.exact_batch
                )
                if memory_first:
                    continue
                best = min(best, p.seconds_per_token)
                if p.exact_batch:
                    best_exact = min(best_exact, p.seconds_per_token)
                # Once the whole per-replica batch is one micro-batch, more savers only slow
                # it down. (Rungs that cannot beat the best even at that batch are skipped by
                # the bound above; a rung that does not improve says nothing about the next:
                # full recomputation plus activation offload can admit a 4x larger
                # micro-batch where full recomputation alone did not pay.)
                if p.config.batch.micro_batch >= per:
                    break
        return out

    def rung(self, rung: Savers, per_layer: bool) -> Savers:
        """``rung`` with or without per-layer updates (built once each: the ladder is walked
        for every core and layout)."""
        key = (rung, per_layer)
        hit = self._rungs.get(key)
        if hit is None:
            hit = self._rungs[key] = replace(rung, optimizer_in_backward=per_layer)
        return hit

    # -- branch and bound over ladders
    def cut(self, bound: float) -> bool:
        """Whether a ladder bounded below by ``bound`` cannot reach the shown rows (strictly
        above the last one's score: a tie may still fold in). The cutoff is recomputed when
        plans were found since (the bounds come in ascending order: once one ladder is cut,
        no plan is added and the rest are cut against the same value)."""
        if self.cutoff is None or bound == float("-inf"):
            return False
        seen, value = self._cut
        if seen != len(self.plans):
            value = self.cutoff(self.plans)
            self._cut = (len(self.plans), value)
        return bound > value

    def cut_fine(self, core: TrainingConfig, layout: Layout) -> bool:
        """Whether every rung of the ladder is bounded above the shown rows (see cut())."""
        if self.cutoff is None:
            return False
        self.cut(float("inf"))  # refreshes the cutoff
        value = self._cut[1]
        return value < float("inf") and self.fine_cut(core, layout, value)

    def bound(
        self,
        core: TrainingConfig,
        layout: Layout,
        *,
        steps: bool = True,
        screen: bool = False,
    ) -> float:
        """A lower bound on the objective score of every plan ``ladder_for(core, layout)``
        can return (-inf where none is known; +inf when nothing can fit).

        The score grows with time per token and peak memory and falls with the rule score;
        each is bounded over the saver rungs the ladder can walk (``screen``: the layout
        screen's coarser ladder) and the micro-batches it can choose:
        - time per token is no less than at the whole per-replica batch as one micro-batch
          without the pipeline bubble: per-token compute and exposed communication do not
          grow with the micro-batch, and the bubble is the one term that does (Narayanan et
          al. 2021);
        - the peak is no less than at micro-batch 1 (memory is monotone in it);
        - the rule score is a sum over techniques: the core's, the rung's, and gradient
          accumulation's where a rule favours it.
        This coarse bound (a few evaluations) pairs the fastest rung's time with the leanest
        rung's peak and the best rung's rules (see :meth:`LadderBounds.level_terms` for which
        rungs are the fastest and the leanest). :meth:`fine_cut` bounds
        each rung on its own. ``steps=False`` leaves out the optimizer's steps to target
        (the layout screen's score). tests/plan/test_search_bound.py holds every walked ladder
        to both.
        """
        lb = self._ladder_bounds(core, layout, screen)
        terms = None if lb is None else lb.coarse
        if terms is None:
            return float("-inf")
        if terms == NOTHING_FITS:
            return float("inf")
        t, m, r = terms
        return self._score(core, t, m, r, steps)

    def fine_cut(
        self,
        core: TrainingConfig,
        layout: Layout,
        above: float,
        *,
        steps: bool = True,
        screen: bool = False,
    ) -> bool:
        """Whether every rung's own bound (its time at the whole batch, its least peak, its
        rules) is above ``above``: stops at the first rung that is not, and prices a rung's
        time only when its peak and rules leave it below (the walk reuses what it reads)."""
        lb = self._ladder_bounds(core, layout, screen)
        if lb is None or lb.coarse is None:
            return False
        if lb.coarse == NOTHING_FITS:
            return True
        for rung in lb.rungs:
            level = next(lv for lv in lb.levels if lv[0].offload is rung.offload)
            terms = lb.level_terms(level)
            if terms is None:
                continue  # nothing on this level fits
            fastest, leanest = terms
            rule = lb.rule(rung)
            if self._score(core, fastest, leanest, rule, steps) > above:
                continue  # its level's bounds and its rules put it above
            peak = lb.least_peak(rung, viable=True)
            if peak is None:
                continue
            if self._score(core, fastest, peak, rule, steps) > above:
                continue
            t = lb.seconds(rung)
            if t is None or self._score(core, t, peak, rule, steps) <= above:
                return False
        return True

    def _score(self, core: TrainingConfig, t: float, peak: int, rule: float, steps: bool) -> float:
        factor = plan_step_factor(self.ctx, core) if steps else 1.0
        return objective_score(self.ctx.workload.objective, t, peak, self.ev.usable, rule, factor)

    def _ladder_bounds(
        self, core: TrainingConfig, layout: Layout, screen: bool
    ) -> LadderBounds | None:
        """What bounds one ladder (None: no bound applies)."""
        if self.exhaustive or self.ctx.workload.objective not in BOUNDED:
            return None
        if self.ctx.taxonomy.get(core.optimizer).order is Order.ZEROTH:
            return None  # one rung, walked anyway
        key = (core, layout, screen)
        hit = self._ladders.get(key)
        if hit is None:
            base = layout.apply(core)
            per, _ = per_replica_batch(self.batch, layout.parallel.data_parallel)
            levels, settled = self.walked(
                base,
                per,
                layout.parallel.data_parallel,
                self.screen_ladder if screen else self.ladder,
            )
            present = frozenset(techniques_of(self.ctx, base))
            hit = self._ladders[key] = LadderBounds(
                self, base, per, layout.parallel.data_parallel, levels, present, settled
            )
        return hit

    def walked(
        self, base: TrainingConfig, per: int, dp: int, ladder: list[list[Savers]]
    ) -> tuple[list[list[Savers]], bool]:
        """The offload levels the ladder may walk (see _levels): host offload always (after
        a device plan reaches the global batch only where its bound beats that plan, which
        is not known here), NVMe only when no device or host-offload plan does; a level's
        leanest rung that is allowed and fits settles it. Also whether one does: then the
        ladder surely finds a plan that reaches the global batch."""
        fixed = self.ctx.workload.micro_batch
        # As best_geometry counts it: a pinned micro-batch accumulates to a multiple of it.
        total = per if fixed is None else fixed * -(-per // fixed)
        exact = total * dp == self.batch.samples
        walked: list[list[Savers]] = []
        on_device = on_host = settled = False
        micro = fixed or 1
        for level in ladder:
            off = level[0].offload
            if off.nvme and (on_host or on_device):
                break
            walked.append(level)
            lean = self.rung(leanest_rung(level), False).apply(base)
            one = lean.with_geometry(micro, -(-per // micro))
            fits = exact and self.ok(one) and self.ev.fits(one)
            on_device = on_device or (fits and off is Offload.NONE)
            on_host = on_host or (fits and off is not Offload.NONE and not off.nvme)
            settled = settled or fits
        return walked, settled

    def finds_exact(self, core: TrainingConfig, layout: Layout, *, screen: bool) -> bool:
        """Whether the ladder surely finds a plan that reaches the global batch."""
        lb = self._ladder_bounds(core, layout, screen)
        return lb is not None and lb.settled

    def ok(self, c: TrainingConfig) -> bool:
        """Whether the rules and compatibility allow ``c``."""
        return self.constraints.verdict(c, techniques_of(self.ctx, c))[0] is None

    def per_layer_options(self) -> tuple[bool, ...]:
        """Whether the ladder's rungs are walked without per-layer updates, and with."""
        return (False, True) if self.in_backward else (False,)

    def _level_no_better(
        self, base: TrainingConfig, level: list[Savers], per: int, per_layer: bool, best: float
    ) -> bool:
        """Whether no rung of an offload level can beat ``best`` seconds per token: its
        fastest rungs (no recomputation, no activation offload; ladders.adds_no_time) at
        the whole per-replica batch, less what a micro-batch schedule may hide
        (bounds.top_seconds), are no faster. False where a rung cannot be priced."""
        fixed = self.ctx.workload.micro_batch
        top_mb = per if fixed is None else fixed * -(-per // fixed)
        fast = [r for r in level if adds_no_time(r)]
        times = []
        for r in fast:
            top = self.rung(r, per_layer).apply(base).with_geometry(top_mb, 1)
            times.append(top_seconds(self.ctx, self.ev, top, base.layout.data_parallel))
        if not times or any(t is None for t in times):
            return False
        return min(t for t in times if t is not None) >= best * (1 - EQUIVALENT)

    def _no_better(self, cfg: TrainingConfig, per: int, best: float) -> bool:
        """Whether a rung cannot beat ``best`` seconds per token even at the whole
        per-replica batch (time per token does not grow with the micro-batch)."""
        top = cfg.with_geometry(per, 1)
        # NOTE: with pipeline stages one micro-batch is the worst case (the whole bubble,
        # Narayanan et al. 2021), so there is no bound of this kind: search the rung.
        if (
            top.savers.optimizer_in_backward
            or top.layout.pipeline_parallel > 1
            or may_overlap(self.ctx, top)  # nor when all-to-alls may be hidden
            or self.allowed(top) is None
        ):
            return False
        bound = self.ev.time(top).seconds / (per * top.layout.data_parallel * top.batch.seq_len)
        if bound >= best * (1 - EQUIVALENT):
            self.pruned_rungs += 1
            return True
        return False


def _at(c: TrainingConfig) -> str:
    return f" at micro-batch {c.batch.micro_batch}"
