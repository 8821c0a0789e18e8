"""Lower bounds on saver ladders (advisor.plan.bounds): never above what a ladder returns,
and cutting ladders changes no shown row.

Each scenario is a real plan search (PlanSearch, the analytic datasheet cost model) whose
ladders are walked in full; the bounds of each ladder (LadderBounds, built from the
search's own view of the ladder) are held to every plan the walk found. The objective
score falls with the rule score, so a bound on it is an *upper* bound on the rules.
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.config import Precision, Task, TrainingConfig
from advisor.plan.bounds import NOTHING_FITS, LadderBounds
from advisor.plan.constraints import techniques_of
from advisor.plan.geometry import per_replica_batch
from advisor.plan.layout import Layout
from advisor.plan.planner import PlanSearch
from advisor.plan.rank import rank_plans, row_cutoff
from advisor.plan.search import plain_layout, search
from advisor.plan.space import (
    Context,
    Objective,
    Savers,
    baseline_config,
    build_space,
    objective_score,
    plan_step_factor,
    usable_memory,
    workload_layouts,
)
from advisor.units import GIB
from tests.plan.scenarios import TAXONOMY, context, searched

SCENARIOS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # Fits without savers: the ladder stops once the whole batch is one micro-batch.
    "gpt2-pretrain-l4-speed": (
        "gpt2",
        "l4",
        dict(task=Task.PRETRAIN, seq_len=1024, objective=Objective.SPEED),
    ),
    # 7B does not fit a 24 GB card bare: recomputation and host offload rungs.
    "7b-pretrain-4090": ("7B", "rtx-4090", dict(task=Task.PRETRAIN, seq_len=1024)),
    # Two devices: sharded layouts, and a pinned micro-batch.
    "1.3b-finetune-2-l4-micro2": (
        "1.3B",
        "l4",
        dict(task=Task.FINETUNE, seq_len=1024, gpus=2, micro_batch=2),
    ),
}


def _cores(ctx: Context) -> list[TrainingConfig]:
    base = baseline_config(ctx)
    out = [base.with_(optimizer=o) for o in ("adamw", "adafactor", "adamw-8bit")]
    out.append(base.with_(precision=Precision.FP32))
    if ctx.workload.task is Task.FINETUNE:
        out.append(base.with_(task=Task.LORA))
    return out


def _layouts(ctx: Context) -> list[Layout]:
    layouts = workload_layouts(ctx)
    return [
        lay
        for lay in layouts
        if lay.parallel.tensor_parallel == 1 and lay.parallel.pipeline_parallel == 1
    ][:3]


def _bounds(ps: PlanSearch, core: TrainingConfig, layout: Layout) -> LadderBounds:
    """The bounds of one ladder, from the search's own view of what it walks."""
    base = layout.apply(core)
    per, _ = per_replica_batch(ps.batch, layout.parallel.data_parallel)
    levels, settled = ps.walked(base, per, layout.parallel.data_parallel, ps.ladder)
    present = frozenset(techniques_of(ps.ctx, base))
    return LadderBounds(ps, base, per, layout.parallel.data_parallel, levels, present, settled)


def _savers(c: TrainingConfig) -> Savers:
    return Savers(
        checkpointing=c.savers.checkpointing,
        offload=c.savers.offload,
        fused_loss=c.kernels.fused_loss,
        activation_offload=c.savers.activation_offload,
        optimizer_in_backward=c.savers.optimizer_in_backward,
    )


def _plan_search(name: str) -> PlanSearch:
    model, hardware, flags = SCENARIOS[name]
    s = searched(model, hardware, **flags)
    optimizers = [t for t in TAXONOMY.optimizers() if t.implementation]
    space = build_space(s.ctx, optimizers)
    return PlanSearch(s.ctx, s.decision, s.cost, space, exhaustive=False)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_ladders_bounds_never_exceed_what_it_returns(name: str) -> None:
    ps = _plan_search(name)
    ctx = ps.ctx
    usable = usable_memory(ctx.target)
    walked = rungs = 0
    for layout in _layouts(ctx):
        for core in _cores(ctx):
            plans = ps.ladder_for(core, layout)
            lb = _bounds(ps, core, layout)
            coarse = lb.coarse
            if not plans or coarse is None:
                continue
            assert coarse != NOTHING_FITS, (name, layout.label, core.optimizer)
            fastest, leanest, best_rules = coarse
            walked += 1
            for p in plans:
                where = (name, layout.label, p.config.optimizer, _savers(p.config))
                # The coarse terms: fastest time, leanest peak, best rules of the ladder.
                assert fastest <= p.seconds_per_token * (1 + 1e-9), where
                assert leanest <= p.peak_bytes, where
                assert best_rules >= p.rule_score - 1e-9, where
                # Each rung's own terms bound the plans walked on that rung.
                rung = _savers(p.config)
                if rung in lb.rungs:
                    rungs += 1
                    t = lb.seconds(rung)
                    assert t is not None and t <= p.seconds_per_token * (1 + 1e-9), where
                    peak = lb.least_peak(rung, viable=False)
                    assert peak is not None and peak <= p.peak_bytes, where
                    assert lb.rule(rung) >= p.rule_score - 1e-9, where
                # And so the score bound (steps to target included) is below every plan's.
                score = objective_score(
                    ctx.workload.objective,
                    p.seconds_per_token,
                    p.peak_bytes,
                    usable,
                    p.rule_score,
                    plan_step_factor(ctx, p.config),
                )
                assert ps.bound(core, layout) <= score + 1e-9, where
    assert walked >= 3 and rungs, name


def test_a_ladder_where_not_even_the_leanest_rung_fits_is_bounded_out() -> None:
    # 70B pretraining on a laptop CPU: 140 GB of bf16 weights alone exceed its RAM, and a
    # CPU has no host to offload to (its ladder has no offload level).
    ctx, cost = context("70B", "cpu-laptop", task=Task.PRETRAIN)
    assert ctx.target.device_memory_bytes < 140 * 10**9
    s = searched("gpt2", "l4")  # any decision: the rules do not change what fits
    optimizers = [t for t in TAXONOMY.optimizers() if t.implementation]
    ps = PlanSearch(ctx, s.decision, cost, build_space(ctx, optimizers), exhaustive=False)
    core, layout = baseline_config(ctx), plain_layout(ctx)
    assert _bounds(ps, core, layout).coarse == NOTHING_FITS
    assert ps.bound(core, layout) == float("inf")
    assert ps.ladder_for(core, layout) == []


@pytest.mark.parametrize("objective", [Objective.MEMORY, Objective.QUALITY])
def test_no_bound_is_claimed_where_the_score_is_not_monotone_in_the_walk(
    objective: Objective,
) -> None:
    # "memory" walks every rung; "quality" ranks full-parameter plans above adapters
    # whatever their score: neither is cut by a bound.
    ps = _plan_search("gpt2-pretrain-l4-speed")
    ctx = ps.ctx.model_copy(
        update={"workload": ps.ctx.workload.model_copy(update={"objective": objective})}
    )
    other = PlanSearch(ctx, ps.decision, ps.ev.cost_fn, ps.space, exhaustive=False)
    assert other.bound(baseline_config(ctx), plain_layout(ctx)) == float("-inf")


@pytest.mark.parametrize(
    ("model", "hardware", "flags"),
    [
        ("gpt2", "l4", dict(task=Task.FINETUNE, seq_len=1024)),
        ("7B", "rtx-4090", dict(task=Task.PRETRAIN, seq_len=1024, objective=Objective.SPEED)),
    ],
)
def test_cutting_ladders_by_their_bound_shows_the_same_rows(
    model: str, hardware: str, flags: dict[str, Any]
) -> None:
    top = 5
    full = searched(model, hardware, **flags)
    ctx, usable = full.ctx, usable_memory(full.ctx.target)
    optimizers = [t for t in TAXONOMY.optimizers() if t.implementation]

    def steps(p: Any) -> float:
        return plan_step_factor(ctx, p.config)

    cut = search(
        ctx,
        full.decision,
        full.cost,
        build_space(ctx, optimizers),
        cutoff=lambda plans: row_cutoff(plans, ctx.workload.objective, usable, top, steps),
    )
    assert cut.bounded > 0  # the bound did cut ladders here
    rows = rank_plans(cut.plans, ctx.workload.objective, usable, steps)

    def shown(rs: list[Any]) -> list[tuple[Any, ...]]:
        return [(r.plan.config, r.plan.layout, round(r.score, 9)) for r in rs[:top]]

    assert shown(rows) == shown(full.rows)
    assert cut.evaluated < full.found.evaluated
    assert all(p.peak_bytes <= usable for p in cut.plans)
    assert usable == int(0.9 * ctx.target.device_memory_bytes) > 20 * GIB
