"""The plan search: rule filters, dominance screening, layouts, memory savers, batch geometry.

Memory and step time are monotone in the micro-batch, so the micro-batch is found by binary
search over the divisors of the per-replica batch (never by enumeration; see
:mod:`advisor.plan.geometry`); dimensions whose values only trade memory for time are
screened once at a reference plan, and a value that is no better in memory, time and rule
score than another is pruned (or, when equal, folded into it as an "also";
:mod:`advisor.plan.screens`). Saver ladders (one core on one layout,
:mod:`advisor.plan.ladders`) are walked cheapest lower bound first and cut when their bound
cannot reach the shown rows (branch and bound; see
:meth:`advisor.plan.planner.PlanSearch.bound`). ``exhaustive=True`` turns the shortcuts off
(for the benchmark). This module holds the loop that drives them, :func:`search`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from advisor.config import (
    BatchGeometry,
    Kernels,
    ParallelLayout,
    Task,
    TrainingConfig,
)
from advisor.plan.constraints import reject, techniques_of
from advisor.plan.evaluator import CostFn, Evaluator, Plan
from advisor.plan.layout import Layout
from advisor.plan.models import Rejection
from advisor.plan.planner import Cutoff, PlanSearch
from advisor.plan.screens import best_layouts, reference_config, screen_cores, screen_layouts
from advisor.plan.space import Context, PlanSpace, workload_layouts
from advisor.rules.engine import Decision
from advisor.rules.taxonomy import Order

# The names tests and benchmarks reach through this module (each owned by the one named).
__all__ = [
    "CostFn",  # advisor.plan.evaluator
    "Cutoff",  # advisor.plan.planner
    "Evaluator",  # advisor.plan.evaluator
    "Plan",  # advisor.plan.evaluator
    "PlanSearch",  # advisor.plan.planner
    "SearchResult",
    "plain_layout",
    "search",
]


@dataclass(frozen=True)
class SearchResult:
    """What the search found, and how much it looked at."""

    plans: list[Plan]
    rejected: list[Rejection]
    considered: int
    evaluated: int
    memory_evaluations: int
    time_evaluations: int
    evaluator: Evaluator | None = None  # the memoised models, for explanations
    bounded: int = 0  # ladders cut by their bound (branch and bound)
    notes: list[str] = field(default_factory=list)  # what the search left out, and why


def search(
    ctx: Context,
    decision: Decision,
    cost_fn: CostFn,
    space: PlanSpace,
    *,
    exhaustive: bool = False,
    cutoff: Cutoff | None = None,
) -> SearchResult:
    """Find the plans worth ranking.

    Args:
        ctx: model, workload, target, taxonomy, rules, global batch.
        decision: what the rules concluded (exclusions, requirements, scores).
        cost_fn: the step-time model.
        space: the plan dimensions.
        exhaustive: evaluate every combination (benchmark only; slow).
        cutoff: the score of the last row the caller shows, over the plans found so far
            (+inf while there are fewer rows): a ladder whose lower bound is above it cannot
            reach those rows and is not walked (branch and bound). None walks every ladder.

    Returns:
        Every fitting plan evaluated, the rejections, and the counts.
    """
    s = PlanSearch(ctx, decision, cost_fn, space, exhaustive=exhaustive, cutoff=cutoff)
    notes: list[str] = []
    layouts = _planned_layouts(ctx, s, notes)
    considered = space.core_count() * space.saver_count() * len(layouts)
    layouts = _within_batch(ctx, s, layouts)
    if not layouts:
        return SearchResult(
            plans=[],
            rejected=list(s.rejected.values()),
            considered=considered,
            evaluated=0,
            memory_evaluations=0,
            time_evaluations=0,
        )
    aliases: dict[tuple[str, str], list[str]] = {}
    cores_by_task = {t: screen_cores(s, t, layouts[0], aliases, exhaustive) for t in space.tasks}
    chosen = _chosen_layouts(s, layouts, cores_by_task, aliases, exhaustive)
    only_at: dict[tuple[str, str, str], set[str]] = {}
    if not exhaustive:
        for t, cores in cores_by_task.items():
            cores += _expert_parallel_cores(s, t, layouts[0], chosen, cores, aliases, only_at)
    _walk_ladders(s, cores_by_task, chosen, only_at)
    plans = [replace(p, aliases=_aliases_of(p, aliases)) for p in s.plans]
    if s.bounded:
        notes.append(
            f"'also' names equivalent plans among those evaluated, not those of the {s.bounded} "
            "ladders cut by their bound (they could not reach the shown rows)"
        )
    mem, tim = s.ev.counts
    return SearchResult(
        notes=notes,
        evaluator=s.ev,
        plans=plans,
        rejected=list(s.rejected.values()),
        considered=considered,
        evaluated=s.evaluated,
        memory_evaluations=mem,
        time_evaluations=tim,
        bounded=s.bounded,
    )


def _planned_layouts(ctx: Context, s: PlanSearch, notes: list[str]) -> list[Layout]:
    """The workload's layouts the step-time model can price (a note when some are not)."""
    w = ctx.workload
    layouts = workload_layouts(ctx)
    pinned = (
        w.tensor_parallel is not None
        or w.pipeline_parallel is not None
        or w.context_parallel is not None
    )
    if not pinned and w.world_size > 1 and not _time_prices_layouts(ctx, s.ev):
        # A step-time model blind to tensor/pipeline parallelism would see their memory
        # savings for free: plan data parallelism only, and say so.
        layouts = [
            lay
            for lay in layouts
            if lay.parallel.tensor_parallel == 1
            and lay.parallel.pipeline_parallel == 1
            and lay.parallel.context_parallel == 1
        ]
        notes.append(
            "tensor and pipeline parallel layouts not planned: the step-time model does not "
            "price their communication yet (pin them with --tp/--pp to see their memory)"
        )
    return layouts


def _within_batch(ctx: Context, s: PlanSearch, layouts: list[Layout]) -> list[Layout]:
    """The layouts whose replicas do not exceed the requested global batch (the others are
    rejected, at the reference plan)."""
    space = s.space
    batch_ok = [
        lay
        for lay in layouts
        if lay.parallel.data_parallel <= s.batch.samples or not s.batch.requested
    ]
    kept = {id(lay) for lay in batch_ok}  # NOTE: by identity: a list test compares models
    for lay in layouts:
        if id(lay) not in kept:
            c = lay.apply(reference_config(ctx, space, space.tasks[0]))
            s.rejected.setdefault(
                c,
                reject(
                    c,
                    techniques_of(ctx, c),
                    f"{lay.label}: {lay.parallel.data_parallel} replicas exceed the global "
                    "batch of "
                    f"{s.batch.samples} samples",
                    "batch",
                ),
            )
    return batch_ok


def _expert_parallel_cores(
    s: PlanSearch,
    task: Task,
    first: Layout,
    chosen: list[Layout],
    cores: list[TrainingConfig],
    aliases: dict[tuple[str, str], list[str]],
    only_at: dict[tuple[str, str, str], set[str]],
) -> list[TrainingConfig]:
    """The cores the screen at the first layout left out that the same screen keeps at a
    chosen layout of another expert-parallel degree; each is walked on the chosen layouts
    that keep it only (``only_at``: their labels, by the core's optimizer, precision and
    attention), and leaves the first layout's "also" lists.

    Expert parallelism gives each rank's experts the tokens of every rank of its group
    (Lepikhin et al. 2021, GShard), so the expert GEMMs grow with its degree and a verdict
    at one degree does not carry to another (Qwen3-30B-A3B on 8 x H100: fp8 is slower than
    bf16 at dp8 and micro-batch 1, faster at ep8; benchmarks/search_exhaustive.py).
    """
    keys = {_core_key(c) for c in cores}
    extra: list[TrainingConfig] = []
    for lay in chosen:
        if lay.parallel.expert_parallel == first.parallel.expert_parallel:
            continue
        for c in screen_cores(s, task, lay, {}, False):
            key = _core_key(c)
            if key in keys:
                continue
            if key not in only_at:
                only_at[key] = set()
                extra.append(first.apply(c))
            only_at[key].add(lay.label)
    kept = {v for c in extra for v in _core_key(c)}
    for (t, _value), folded in aliases.items():
        if t == task.value:
            folded[:] = [v for v in folded if v not in kept]
    return extra


def _core_key(c: TrainingConfig) -> tuple[str, str, str]:
    return (c.optimizer, c.precision.value, c.kernels.attention.value)


def _chosen_layouts(
    s: PlanSearch,
    layouts: list[Layout],
    cores_by_task: dict[Task, list[TrainingConfig]],
    aliases: dict[tuple[str, str], list[str]],
    exhaustive: bool,
) -> list[Layout]:
    """The layouts the full search covers (every one when ``exhaustive``)."""
    every = [c for cs in cores_by_task.values() for c in cs]
    first_order_cores = [c for c in every if s.ctx.taxonomy.get(c.optimizer).order is Order.FIRST]
    first = next(iter(first_order_cores or every), None)
    if exhaustive:
        return layouts
    if first is None:
        return []
    layouts, layout_aliases = screen_layouts(s, layouts, first)
    aliases.update({("layout", k): v for k, v in layout_aliases.items()})
    # The leanest core at the reference point (least memory): where the baseline core
    # does not fit a layout, it may.
    lean = min(every, key=lambda c: s.ev.totals(layouts[0].apply(c)).total_bytes)
    return best_layouts(s, layouts, list(dict.fromkeys([first, lean])))


def _walk_ladders(
    s: PlanSearch,
    cores_by_task: dict[Task, list[TrainingConfig]],
    chosen: list[Layout],
    only_at: dict[tuple[str, str, str], set[str]],
) -> None:
    """Walk every core's ladder on every chosen layout (a core in ``only_at`` on the layouts
    named there), cheapest bound first, so that the rows fill early and the rest is cut."""
    ladders = [
        (core, layout)
        for cores in cores_by_task.values()
        for layout in chosen
        for core in cores
        if layout.label in only_at.get(_core_key(core), {layout.label})
    ]
    bounds = [s.bound(core, layout) for core, layout in ladders]
    # NOTE: the layout screen's plans on layouts not chosen stay in the ranking: each was
    # evaluated in full (it fits, and its time is priced), and dropping it could hide a plan
    # that beats the pick (BERT-large's plain DDP on 8 x A100 was found by the screen and
    # then dropped; benchmarks/soundness.py checks the pick against the obvious plans).
    for i in sorted(range(len(ladders)), key=lambda i: bounds[i]):
        if s.cut(bounds[i]) or s.cut_fine(*ladders[i]):
            s.bounded += 1
            continue
        s.ladder_for(*ladders[i])


def _time_prices_layouts(ctx: Context, ev: Evaluator) -> bool:
    """Whether the step-time model tells tensor parallelism from a single device (the same
    plan at tp 2 and tp 1 on one data-parallel rank): a model that does not price its
    all-reduces (Shoeybi et al. 2019) would make every TP/PP layout look free."""
    c = TrainingConfig(
        task=Task.PRETRAIN,
        batch=BatchGeometry(seq_len=ctx.workload.seq_len),
        kernels=Kernels(stack=ctx.workload.stack),
    )
    try:
        return ev.time(c.with_(tensor_parallel=2)).seconds != ev.time(c).seconds
    except ValueError:
        return False


def _aliases_of(p: Plan, aliases: dict[tuple[str, str], list[str]]) -> list[str]:
    task = p.config.task.value
    out = list(aliases.get((task, p.config.optimizer), []))
    out += aliases.get((task, p.config.precision.value), [])
    out += [f"{a} attention" for a in aliases.get((task, p.config.kernels.attention.value), [])]
    out += aliases.get(("layout", p.layout.label), [])
    return out


def plain_layout(ctx: Context) -> Layout:
    """Data parallel over every device, no sharding."""
    w = ctx.workload
    return Layout(
        world_size=w.world_size,
        gpus_per_node=max(w.gpus, 1),
        parallel=ParallelLayout(data_parallel=w.world_size),
    )
