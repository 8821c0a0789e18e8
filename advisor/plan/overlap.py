"""Which schedule hides a plan's expert all-to-alls: the search weighs every one the plan's
layout, recomputation and micro-batches can run (``none``, Megatron-Core's batch-level
``a2a-overlap``, DeepSeek-V3's ``dualpipe``; advisor/cost/expert_overlap.py prices each,
advisor/memory/pipeline.py DualPipe's memory) and keeps the fastest that fits, unless
``--moe-overlap`` pins one. The pick's report says which it uses, and why.
"""

from __future__ import annotations

from advisor.config import MoeOverlap, TrainingConfig
from advisor.cost.expert_overlap import comm_sm_share, config_overlap_problem
from advisor.plan.evaluator import EQUIVALENT, Evaluator
from advisor.plan.space import Context


def searched(ctx: Context, c: TrainingConfig) -> bool:
    """Whether the search chooses ``c``'s overlap: a model with routed experts over more
    than one expert-parallel rank, and no ``--moe-overlap`` pin."""
    return (
        ctx.spec.num_experts > 1
        and c.layout.expert_parallel > 1
        and ctx.workload.moe_overlap is None
    )


def may_overlap(ctx: Context, c: TrainingConfig) -> bool:
    """Whether a plan of ``c``'s layout may hide its expert all-to-alls (searched, or pinned
    to a schedule that hides them). Such a plan's step is no longer bounded by its time at
    one micro-batch of the whole batch: the paired micro-batches hide the all-to-alls, the
    unpaired ramp's share shrinks with more of them (the bounds drop the all-to-all term,
    and the micro-batch is searched as under a pipeline)."""
    pin = ctx.workload.moe_overlap
    return ctx.spec.num_experts > 1 and c.layout.expert_parallel > 1 and pin is not MoeOverlap.NONE


def overlap_options(ctx: Context, c: TrainingConfig) -> list[TrainingConfig]:
    """``c`` under each overlap it may run, simplest first: the pinned one where it runs,
    every one the schedules' requirements allow when searched, else ``c`` itself."""
    pin = ctx.workload.moe_overlap
    if ctx.spec.num_experts <= 1:
        return [c]
    if pin is not None:
        return [c] if config_overlap_problem(c) is None else []
    if c.layout.expert_parallel < 2:
        return [c]
    out = []
    for mode in MoeOverlap:
        cm = c if mode is c.layout.moe_overlap else c.with_(moe_overlap=mode)
        if config_overlap_problem(cm) is None:
            out.append(cm)
    return out


def with_best_overlap(
    ev: Evaluator, c: TrainingConfig, beat: float | None = None
) -> TrainingConfig | None:
    """``c`` under the overlap that makes its step the fastest among those that fit
    (:func:`overlap_options`; a schedule that saves less than the models' resolution,
    :data:`EQUIVALENT`, loses to a simpler one). ``c`` itself was found to fit; None when
    a pinned overlap cannot run it.

    ``beat``: a step time the caller keeps only a faster geometry against. Where the
    simplest schedule's step, less all it could hide (:func:`hideable_seconds`), is still
    slower, no schedule beats it: the others are not timed and the simplest is returned.
    """
    best: TrainingConfig | None = None
    best_t = 0.0
    options = overlap_options(ev.ctx, c)
    for i, cm in enumerate(options):
        if cm is not c and not ev.fits(cm):
            continue
        t = ev.time(cm).seconds
        if best is None or t < best_t * (1 - EQUIVALENT):
            best, best_t = cm, t
        bounded = i == 0 and beat is not None and len(options) > 1
        if bounded and t - hideable_seconds(ev, cm) > (beat or 0.0) * (1 + 1e-9):
            return best
    return best


def hideable_seconds(ev: Evaluator, c: TrainingConfig) -> float:
    """The most of ``c``'s step another overlap schedule could take off: its pipeline
    bubble (DualPipe fills it from both ends), its expert all-to-alls but the share of the
    SMs their kernels take from the compute they hide under
    (advisor.cost.expert_overlap.exposed_all_to_all: at least a2a x share), and paged
    optimizer states (as :func:`advisor.plan.bounds.top_seconds` bounds a rung)."""
    parts = ev.time(c).components
    share = comm_sm_share(ev.ctx.target.profile.id)
    return (
        parts.get("pipeline_bubble", 0.0)
        + parts.get("expert_all_to_all", 0.0) * (1 - share)
        + parts.get("paged_states", 0.0)
    )


def overlap_reason(ctx: Context, ev: Evaluator, c: TrainingConfig) -> str | None:
    """One line on the overlap a plan uses and why (None where it has no expert
    all-to-alls to hide): pinned, or how much faster it is than each other schedule at the
    plan's batch geometry, and why any other cannot run or does not fit."""
    if ctx.spec.num_experts <= 1 or c.layout.expert_parallel < 2:
        return None
    mode = c.layout.moe_overlap
    parts = ev.time(c).components
    a2a = parts.get("expert_all_to_all", 0.0)
    head = f"{mode.value}"
    if ctx.workload.moe_overlap is not None:
        return f"{head}: pinned by --moe-overlap; {a2a:.3g} s of expert all-to-all exposed per step"
    t = ev.time(c).seconds
    others = []
    for other in MoeOverlap:
        if other is mode:
            continue
        co = c.with_(moe_overlap=other)
        problem = config_overlap_problem(co)
        if problem is not None:
            others.append(f"{other.value} cannot run here ({_short(problem[0])})")
        elif not ev.fits(co):
            others.append(f"{other.value} does not fit")
        else:
            rel = ev.time(co).seconds / t - 1 if t > 0 else 0.0
            others.append(f"{other.value} {rel:+.1%} step time")
    return f"{head}: {a2a:.3g} s of expert all-to-all exposed per step; " + ", ".join(others)


def _short(problem: str) -> str:
    """A refusal without its flag: what the schedule needs."""
    return problem.split(" ", 2)[2] if problem.startswith("--moe-overlap") else problem
