"""The last stage: facts and rules, then search, rank and explain, assembled into the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from advisor.config import Precision, TrainingConfig
from advisor.cost.convergence import TimeToTarget, time_to_target
from advisor.hardware.target import Target
from advisor.plan.evaluator import CostFn, Evaluator, Plan
from advisor.plan.explain import (
    effect,
    plan_reasons,
    reason,
    suggestions,
    trade_note,
    why_not,
)
from advisor.plan.models import (
    HardwareSummary,
    Recommendation,
    RecommendReport,
    Rejection,
    SearchStats,
    WorkloadSummary,
)
from advisor.plan.overlap import overlap_reason
from advisor.plan.rank import Row, rank_plans, row_cutoff
from advisor.plan.search import search
from advisor.plan.space import (
    MEMORY_SAFETY_MARGIN,
    QUALITY_RULE_FACTOR,
    Context,
    build_space,
    context_steps,
    derive_facts,
    plan_step_factor,
    resolve_global_batch,
    usable_memory,
)
from advisor.rules.candidates import MEMORY_SAVER_IDS
from advisor.rules.engine import Decision, decide


def build_report(
    ctx: Context, cost_fn: CostFn, *, top: int = 5, cost_note: str = ""
) -> RecommendReport:
    """Search the plan space for the context and rank what fits.

    Args:
        ctx: model, workload, target, taxonomy and rules.
        cost_fn: predicts a configuration's step time (measured cache or analytic datasheet).
        top: how many distinct plans to return.
        cost_note: where the costs come from, for the report.

    Returns:
        The report: top plans, rejections, "why not", suggestions when nothing fits.

    Raises:
        UserError: for a global batch no layout can reach, or contradictory batch flags.
    """
    if ctx.batch is None:
        ctx = ctx.model_copy(update={"batch": resolve_global_batch(ctx.spec, ctx.workload)})
    usable = usable_memory(ctx.target)
    optimizers = [t for t in ctx.taxonomy.optimizers() if t.implementation]
    facts = derive_facts(ctx, optimizers)
    decision = ranking_decision(ctx, decide(ctx.ruleset, ctx.taxonomy, facts))  # type: ignore[arg-type]
    space = build_space(ctx, optimizers)
    steps = _steps_of(ctx)
    found = search(
        ctx,
        decision,
        cost_fn,
        space,
        cutoff=lambda plans: row_cutoff(plans, ctx.workload.objective, usable, top, steps),
    )
    _check_batch(ctx, found.plans, found.rejected)
    rows = rank_plans(found.plans, ctx.workload.objective, usable, steps)
    recs = [_recommendation(ctx, row, i + 1, decision, cost_fn) for i, row in enumerate(rows[:top])]
    ev = found.evaluator or Evaluator(ctx, cost_fn)
    stats = SearchStats(
        plans_considered=found.considered,
        plans_evaluated=found.evaluated,
        plans_pruned=max(found.considered - found.evaluated, 0),
        memory_evaluations=found.memory_evaluations,
        time_evaluations=found.time_evaluations,
        rows_collapsed=len(found.plans) - len(rows),
        ladders_bounded=found.bounded,
        notes=found.notes,
    )
    return RecommendReport(
        recommendations=recs,
        rejected=sorted(found.rejected, key=lambda r: (r.kind, r.configuration)),
        fits=bool(recs),
        verdict="ok" if recs else "nothing-fits",
        trade=trade_note(ctx, decision, rows, _central_steps_of(ctx)),
        rejected_counts=_count_kinds(found.rejected),
        why_not=why_not(ctx, decision, ev, rows, len(recs)),
        suggestions=[] if recs else suggestions(ctx, usable),
        hardware=_hardware_summary(ctx.target, usable),
        workload=_workload_summary(ctx, recs),
        facts=facts,
        fired_rules=[reason(ctx, r, effect(ctx, r)) for r in decision.fired],
        advice=[reason(ctx, a.rule, a.text) for a in decision.advice],
        candidates_considered=found.considered,
        search=stats,
        cost_note=cost_note,
    )


def ranking_decision(ctx: Context, decision: Decision) -> Decision:
    """The rules' decision as the objective ranks by it: quality rules weighted by
    QUALITY_RULE_FACTOR (the search, the ranking and the soundness sweep read the same)."""
    return decision.weighted(QUALITY_RULE_FACTOR.get(ctx.workload.objective.value, 1.0))


def _count_kinds(rejected: Sequence[Rejection]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejected:
        out[r.kind] = out.get(r.kind, 0) + 1
    return dict(sorted(out.items()))


def _central_steps_of(ctx: Context) -> Callable[[Plan], float]:
    """Each plan's central steps to AdamW's loss (what the trade line compares, whatever
    the objective counts)."""
    memo: dict[tuple[str, object], float] = {}

    def steps(p: Plan) -> float:
        key = (p.config.optimizer, p.config.task)
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = context_steps(ctx, p.config).central
        return hit

    return steps


def _steps_of(ctx: Context) -> Callable[[Plan], float]:
    """Each plan's steps to AdamW's loss as the objective counts them, once per optimizer
    and task (the ranking and the search's cutoff ask for every plan, repeatedly)."""
    memo: dict[tuple[str, object], float] = {}

    def steps(p: Plan) -> float:
        key = (p.config.optimizer, p.config.task)
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = plan_step_factor(ctx, p.config)
        return hit

    return steps


def _check_batch(ctx: Context, plans: Sequence[object], rejected: Sequence[object]) -> None:
    """A global batch the user asked for that no layout reaches is bad input."""
    from advisor.errors import UserError

    batch = ctx.global_batch
    if not batch.requested:
        return
    if plans and not any(getattr(p, "exact_batch", True) for p in plans):
        raise UserError(
            f"global batch {batch.samples} cannot be split evenly by any plan that fits: "
            "no micro-batch x accumulation x data-parallel replicas equals it",
            "use a multiple of the data-parallel degree (e.g. of --gpus x --nodes)",
        )
    if plans:
        return
    kinds = {getattr(r, "kind", "") for r in rejected}
    if kinds == {"batch"} or (kinds and kinds <= {"batch"}):
        raise UserError(
            f"global batch {batch.samples} is smaller than the {ctx.workload.world_size} "
            "devices' data-parallel replicas in every layout",
            "raise --global-batch, or plan fewer devices",
        )


def _time_to_target(ctx: Context, p: Plan, cost_fn: CostFn) -> TimeToTarget:
    """Steps to AdamW's loss x step time, relative to the AdamW plan of the same layout and
    batch (only the optimizer changes)."""
    c = p.config
    base = p.cost.seconds if c.optimizer == "adamw" else cost_fn(c.with_(optimizer="adamw")).seconds
    return time_to_target(context_steps(ctx, c), p.cost.seconds, base)


def _fp8_recipe(c: TrainingConfig) -> str | None:
    """The recipe of an fp8-mixed plan where one was chosen (--fp8-recipe)."""
    recipe = c.kernels.fp8_recipe
    return recipe.value if recipe is not None and c.precision is Precision.FP8_MIXED else None


def _recommendation(
    ctx: Context, row: Row, rank: int, decision: Decision, cost_fn: CostFn
) -> Recommendation:
    p = row.plan
    c = p.config
    tech = ctx.taxonomy.get(c.optimizer)
    tokens = p.global_batch * c.batch.seq_len
    return Recommendation(
        rank=rank,
        optimizer=c.optimizer,
        order=tech.order.value if tech.order else "",
        precision=c.precision.value,
        attention=c.kernels.attention.value,
        techniques=p.techniques,
        sharding=c.layout.sharding.value,
        task=c.task.value,
        checkpointing=c.savers.checkpointing.value,
        offload=c.savers.offload.value,
        micro_batch=c.batch.micro_batch,
        grad_accumulation=c.batch.grad_accumulation,
        data_parallel=c.layout.data_parallel,
        tensor_parallel=c.layout.tensor_parallel,
        pipeline_parallel=c.layout.pipeline_parallel,
        virtual_stages=c.layout.virtual_stages,
        expert_parallel=c.layout.expert_parallel,
        context_parallel=c.layout.context_parallel,
        context_parallel_kind=c.layout.context_parallel_kind.value,
        expert_tensor_parallel=c.layout.expert_tp,
        moe_dispatcher=c.layout.moe_dispatcher.value,
        **_overlap_fields(ctx, p),
        layout=p.layout.label,
        stack=c.kernels.stack.value,
        fp8_recipe=_fp8_recipe(c),
        memory_savers=[t for t in p.techniques if t in MEMORY_SAVER_IDS],
        global_batch=p.global_batch,
        global_batch_note=p.batch_note,
        also=row.also,
        peak_memory_bytes=p.memory.total_bytes,
        allocated_memory_bytes=p.memory.allocated_bytes,
        reserved_memory_bytes=p.memory.reserved_bytes,
        headroom_bytes=ctx.target.device_memory_bytes - p.memory.total_bytes,
        host_memory_bytes=p.memory.host_bytes,
        fits=True,
        step_time_s=p.cost.seconds,
        tokens_per_s=tokens / p.cost.seconds if p.cost.seconds > 0 else 0.0,
        images_per_s=(
            p.global_batch / p.cost.seconds if ctx.spec.is_image and p.cost.seconds > 0 else None
        ),
        cost_source=p.cost.source,
        cost_components=p.cost.components,
        memory_breakdown=p.memory.breakdown,
        rule_score=p.rule_score,
        score=round(row.score, 6),
        reasons=plan_reasons(ctx, p, decision),
        config=c,
        **_time_to_target(ctx, p, cost_fn).model_dump(exclude={"steps_notes"}),
    )


def _overlap_fields(ctx: Context, p: Plan) -> dict[str, str]:
    """The plan's all-to-all overlap and why (advisor.plan.overlap); nothing without
    expert parallelism."""
    why = overlap_reason(ctx, p.evaluator, p.config)
    if why is None:
        return {}
    return {"moe_overlap": p.config.layout.moe_overlap.value, "moe_overlap_reason": why}


def _hardware_summary(t: Target, usable: int) -> HardwareSummary:
    return HardwareSummary(
        name=t.name,
        source=t.source,
        device_kind=t.device_kind.value,
        device_memory_bytes=t.device_memory_bytes,
        usable_memory_bytes=usable,
        host_memory_bytes=t.host_memory_bytes,
        nvme_bytes=t.nvme_bytes,
        host_source=t.host_source,
        compute_capability=t.compute_capability,
        fast_bf16=t.fast_bf16,
        gpus_per_node=t.gpus_per_node,
        nodes=t.nodes,
        interconnect_gb_s=t.interconnect_gb_s,
        safety_margin=MEMORY_SAFETY_MARGIN,
    )


def _workload_summary(ctx: Context, recs: list[Recommendation]) -> WorkloadSummary:
    w, b = ctx.workload, ctx.global_batch
    first = recs[0] if recs else None
    return WorkloadSummary(
        model=ctx.spec.name,
        model_id=ctx.spec.id,
        parameters=ctx.spec.parameter_count(),
        task=w.task.value,
        seq_len=w.seq_len,
        image_size=ctx.spec.image_size,
        micro_batch=first.micro_batch if first else (w.micro_batch or 1),
        global_batch=b.samples,
        global_batch_tokens=b.tokens,
        global_batch_source=b.source,
        grad_accumulation=first.grad_accumulation if first else 1,
        world_size=w.world_size,
        stack=w.stack.value,
        privacy=w.privacy.value,
        objective=w.objective.value,
    )
