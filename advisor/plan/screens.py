"""Dominance screening of the plan search: which cores and layouts are worth a ladder.

Dimensions whose values only trade memory for time are screened once at a reference plan,
and a value that is no better in memory, time and rule score than another is pruned (or,
when equal, folded into it as an "also"): optimizers, precisions and attentions
(:func:`screen_cores`), then layouts (:func:`screen_layouts`, :func:`best_layouts`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from advisor.config import (
    Attention,
    BatchGeometry,
    Checkpointing,
    Kernels,
    Offload,
    ParallelLayout,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.plan.evaluator import EQUIVALENT
from advisor.plan.geometry import per_replica_batch
from advisor.plan.layout import Layout
from advisor.plan.planner import PlanSearch
from advisor.plan.space import (
    Context,
    PlanSpace,
    Savers,
    default_attention,
    default_precision,
    objective_score,
    plan_step_factor,
    quantized_base_precision,
    workload_adapters,
)
from advisor.rules.candidates import ATTENTION_IDS, FUSED_LOSS_ID, config_techniques
from advisor.rules.taxonomy import StateKind

# Layouts carried from the reference search into the full one (the rest are dominated or
# clearly slower for the reference plan; the benchmark checks the loss against exhaustive).
# 5: the Hopper GEMM shape curve (issue 23) ranks 70B's dp16 FSDP fifth for the bf16 AdamW
# reference while fp8 with offload makes it the best (benchmarks/search_exhaustive.py).
TOP_LAYOUTS = 5
PRUNE_LAYOUTS = True

_DP = ("dp-sgd", "dp-adam")
# Technique ids of the saver and geometry dimensions: a value that clashes with one of them
# is screened only against values that clash with it too.
_SAVER_IDS = frozenset(
    {
        "activation-checkpointing-full",
        "activation-checkpointing-selective",
        "cpu-offload-optimizer",
        "cpu-offload-params",
        "nvme-offload",
        "fused-backward-step",
        "gradient-accumulation",
        FUSED_LOSS_ID,
        "activation-offload",
    }
)
# The offload savers a core may rule out (8-bit states cannot be offloaded).
_OFFLOAD_IDS = frozenset({"cpu-offload-optimizer", "cpu-offload-params"})


@dataclass(frozen=True)
class _Point:
    key: str
    memory: int
    seconds: float
    rule: float
    simplicity: int
    clashes: frozenset[str] = frozenset()
    steps: float = 1.0  # steps to AdamW's loss, as the objective counts them
    # The memory with the space's leanest savers (offloaded optimizer and parameters, or
    # the step fused into backward; each with full recomputation): what stays on the
    # device differs by core (autocast's fp32 weights and 16-bit copies stay where mixed
    # precision keeps only 16-bit weights; per-layer steps free each layer's temporaries),
    # so a verdict taken at the bare reference alone does not carry to the savers.
    lean: tuple[int, ...] = ()
    # What the host adds where it dispatches slower than the device computes (the
    # host_overhead term, advisor.cost.host), kept out of ``seconds``: the reference plan's
    # micro-batch 1 is where the host is most exposed, so its device time alone says which
    # value is faster at the batch the ladder finds, and a value waits no longer on the host.
    waiting: float = 0.0


def screen(
    points: list[_Point], *, prune: bool = True
) -> tuple[list[str], dict[str, list[str]], int]:
    """The values worth keeping: equal ones fold into the simplest (preferences never split
    a tie), then values no better than another in memory, time and rule score are pruned.

    Returns:
        The kept keys (in input order), the aliases folded into each, how many were pruned.
    """
    groups: list[list[_Point]] = []
    for p in sorted(points, key=lambda p: (p.simplicity, p.key)):
        for g in groups:
            h = g[0]
            same = p.clashes == h.clashes and p.steps == h.steps
            same = same and all(_close(x, y) for x, y in zip(p.lean, h.lean, strict=True))
            # (the host's excess compared against the whole step: a few microseconds of
            # difference in a term that is often nil must not split equal values)
            scale = max(p.seconds + p.waiting, h.seconds + h.waiting)
            same = same and abs(p.waiting - h.waiting) <= EQUIVALENT * scale
            if same and _close(p.memory, h.memory) and _close(p.seconds, h.seconds):
                g.append(p)
                break
        else:
            groups.append([p])
    heads = [g[0] for g in groups]
    aliases = {g[0].key: [p.key for p in g[1:]] for g in groups}
    if not prune:
        return [h.key for h in heads], aliases, len(points) - len(heads)
    kept = []
    for a in heads:
        dominated = any(
            b is not a
            and b.memory <= a.memory
            and all(x <= y for x, y in zip(b.lean, a.lean, strict=True))
            and b.seconds <= a.seconds
            # NOTE: both the device time and the host's excess no larger: then the host's
            # time is no larger either, and max(host, device) no larger at any batch.
            and b.waiting <= a.waiting
            and b.rule >= a.rule
            # A value that rules out a saver (8-bit states cannot be offloaded) never
            # stands in for one that allows it.
            and b.clashes <= a.clashes
            and b.steps <= a.steps
            and (
                b.memory < a.memory or b.seconds < a.seconds or b.rule > a.rule or b.steps < a.steps
            )
            for b in heads
        )
        if not dominated:
            kept.append(a.key)
    order = {p.key: i for i, p in enumerate(points)}
    kept.sort(key=lambda k: order[k])
    return kept, aliases, len(points) - len(kept)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= EQUIVALENT * max(abs(a), abs(b), 1e-12)


def reference_config(ctx: Context, space: PlanSpace, task: Task) -> TrainingConfig:
    """The plan each dimension is screened against: AdamW (or the first optimizer the space
    has), the target's default precision, the fastest attention kernel the target runs (of
    those the space has), no savers."""
    precision = default_precision(ctx.target)
    if task is Task.QLORA:
        precision = quantized_base_precision(ctx.target)
    if precision not in space.precisions:
        precision = space.precisions[0]
    optimizer = "adamw" if "adamw" in space.optimizers else space.optimizers[0]
    attention = default_attention(ctx)
    if attention not in space.attentions:
        attention = space.attentions[0]
    return TrainingConfig(
        task=task,
        optimizer=optimizer,
        precision=precision,
        dp_sgd=optimizer in ("dp-sgd", "dp-adam"),
        batch=BatchGeometry(
            micro_batch=ctx.workload.micro_batch or 1, seq_len=ctx.workload.seq_len
        ),
        layout=ParallelLayout(data_parallel=ctx.workload.world_size),
        kernels=Kernels(
            attention=attention, stack=ctx.workload.stack, fp8_recipe=ctx.workload.fp8_recipe
        ),
        adapters=workload_adapters(ctx),
    )


def _point(
    s: PlanSearch, key: str, c: TrainingConfig, simplicity: int, *, lean: bool = False
) -> _Point | None:
    techniques = s.allowed(c)
    if techniques is None:
        return None
    m = s.ev.totals(c)
    table = s.constraints.clashes
    clashes = {
        other
        for tid in techniques
        if tid in table
        for other in table[tid][0]
        if other in _SAVER_IDS
    }
    memory = m.total_bytes + m.host_bytes // 16
    lean_memory: list[int] = []
    if lean:
        for leanest in _leanest_savers(s.space, c, frozenset(clashes)):
            if leanest is None:
                lean_memory.append(memory)  # a saver the core rules out: as it is
            else:
                ml = s.ev.totals(leanest)
                lean_memory.append(ml.total_bytes + ml.host_bytes // 16)
    cost = s.ev.time(c)
    waiting = cost.components.get("host_overhead", 0.0)
    return _Point(
        steps=plan_step_factor(s.ctx, c),
        clashes=frozenset(clashes),
        key=key,
        memory=memory,
        seconds=cost.seconds - waiting,
        waiting=waiting,
        rule=s.decision.score(techniques),
        simplicity=simplicity,
        lean=tuple(lean_memory),
    )


def _leanest_savers(
    space: PlanSpace, c: TrainingConfig, clashes: frozenset[str]
) -> list[TrainingConfig | None]:
    """``c`` with the savers that leave the least on the device, one variant per kind the
    space has (offloaded optimizer and parameters; the step fused into backward), each with
    full recomputation where the space has it; None for a variant ``c``'s core rules out.
    The list's length depends on the space alone, so points compare term by term."""
    full = Checkpointing.FULL in space.checkpointing and (
        "activation-checkpointing-full" not in clashes
    )
    if full:
        c = c.with_(checkpointing=Checkpointing.FULL)
    out: list[TrainingConfig | None] = []
    if Offload.OPTIMIZER_PARAMS in space.offloads:
        ok = not clashes & _OFFLOAD_IDS
        out.append(c.with_(offload=Offload.OPTIMIZER_PARAMS) if ok else None)
    if True in space.optimizer_in_backward:
        ok = "fused-backward-step" not in clashes
        out.append(c.with_(optimizer_in_backward=True) if ok else None)
    if not out:
        out.append(c if full else None)
    return out


def screen_cores(
    s: PlanSearch,
    task: Task,
    layout: Layout,
    aliases: dict[tuple[str, str], list[str]],
    exhaustive: bool,
) -> list[TrainingConfig]:
    """The (optimizer, precision, attention) combinations worth searching for one task."""
    cores = _Cores(s, layout.apply(reference_config(s.ctx, s.space, task)))
    ref = cores.reference()
    if ref is None:
        s.allowed(cores.start)  # records why
        return []
    optimizers = cores.values(ref, task, "optimizer", s.space.optimizers, str, aliases, exhaustive)
    precisions = cores.values(
        ref, task, "precision", s.space.precisions, lambda p: str(p.value), aliases, exhaustive
    )
    attentions = cores.values(
        ref, task, "attention", s.space.attentions, lambda a: str(a.value), aliases, exhaustive
    )
    combos = []
    for o, p, a in itertools.product(optimizers, precisions, attentions):
        combos.append(cores.make(o, a, p))
    if exhaustive or len(combos) <= 1:
        return combos
    # The survivors of each dimension, combined, screened once more as whole cores: a
    # combination no better than another in memory, time and rule score is pruned.
    pts = []
    for i, c in enumerate(combos):
        if s.allowed(c) is None:
            continue
        pt = _point(s, str(i), c, i, lean=True)
        if pt is not None:
            pts.append(pt)
    kept, _aliases, _ = screen(pts)
    return [combos[int(k)] for k in sorted(kept, key=int)]


class _Cores:
    """The cores of one task: ``start`` (the reference plan on the first layout) with its
    optimizer, attention and precision replaced. The verdict of each triple is memoised,
    and each configuration built once."""

    def __init__(self, s: PlanSearch, start: TrainingConfig) -> None:
        self.s, self.start = s, start
        self.built: dict[tuple[Any, Any, Any], TrainingConfig] = {}
        self.verdicts: dict[tuple[Any, Any, Any], bool] = {}
        # NOTE: a configuration's technique ids are its optimizer, precision and attention,
        # then ids that do not depend on them (config_techniques); compatible() reads the
        # precision of the configuration, not its optimizer or attention. So the verdict of
        # a triple needs one configuration per precision, not one per triple.
        self.rest = config_techniques(start)[3:]
        self.by_precision: dict[Precision, TrainingConfig] = {}

    def make(self, o: str, a: Attention, p: Precision) -> TrainingConfig:
        c = self.built.get((o, a, p))
        if c is None:
            c = self.built[o, a, p] = self.start.with_(
                optimizer=o, attention=a, precision=p, dp_sgd=o in _DP
            )
        return c

    def ok_triple(self, o: str, a: Attention, p: Precision) -> bool:
        v = self.verdicts.get((o, a, p))
        if v is None:
            c = self.by_precision.get(p)
            if c is None:
                c = self.by_precision[p] = self.start.with_(precision=p)
            ids = [o, p.value, ATTENTION_IDS[a], *self.rest]
            tech = self.s.ctx.taxonomy.get(o)
            if tech.memory is not None and tech.memory.state is StateKind.QUANTIZED_BLOCKWISE:
                ids.append("optimizer-states-8bit")
            v = self.verdicts[o, a, p] = self.s.constraints.verdict(c, ids)[0] is None
        return v

    def ok(self, c: TrainingConfig) -> bool:
        return self.ok_triple(c.optimizer, c.kernels.attention, c.precision)

    def reference(self) -> TrainingConfig | None:
        """The baseline where the rules allow it, else the first allowed combination
        (private training has no AdamW; a T4 has no FlashAttention)."""
        start, space = self.start, self.s.space
        return next(
            (
                self.make(o, a, p)
                for o, a, p in itertools.product(
                    _first(start.optimizer, space.optimizers),
                    _first(start.kernels.attention, space.attentions),
                    _first(start.precision, space.precisions),
                )
                if self.ok_triple(o, a, p)
            ),
            None,
        )

    def allowed_somehow(self, c: TrainingConfig, dim: str) -> bool:
        """A value may clash with the reference's other choices (Sophia needs eager
        attention): it is kept, unscreened, when some combination allows it."""
        space = self.s.space
        pools: dict[str, Sequence[Any]] = {
            "optimizer": [c.optimizer] if dim == "optimizer" else space.optimizers,
            "attention": [c.kernels.attention] if dim == "attention" else space.attentions,
            "precision": [c.precision] if dim == "precision" else space.precisions,
        }
        return any(
            self.ok_triple(o, a, p)
            for o, a, p in itertools.product(
                pools["optimizer"], pools["attention"], pools["precision"]
            )
        )

    def values(
        self,
        ref: TrainingConfig,
        task: Task,
        dim: str,
        options: Sequence[Any],
        key: Callable[[Any], str],
        aliases: dict[tuple[str, str], list[str]],
        exhaustive: bool,
    ) -> list[Any]:
        """The values of one dimension worth keeping, each screened at the reference."""
        s = self.s
        pts = []
        unscreened = []
        for i, o in enumerate(options):
            c = self.make(
                o if dim == "optimizer" else ref.optimizer,
                o if dim == "attention" else ref.kernels.attention,
                o if dim == "precision" else ref.precision,
            )
            if self.ok(c):
                pt = _point(s, key(o), c, _simplicity(s.ctx, dim, o, i), lean=True)
                if pt is not None:
                    pts.append(pt)
            elif self.allowed_somehow(c, dim):
                unscreened.append(key(o))
            else:
                s.allowed(c)  # records why
        if exhaustive:
            return [o for o in options if key(o) in {p.key for p in pts} | set(unscreened)]
        kept, al, _ = screen(pts)
        kept += unscreened
        aliases.update({(task.value, k): v for k, v in al.items() if v})
        return [o for o in options if key(o) in kept]


def _first(value: Any, options: Sequence[Any]) -> list[Any]:
    return [value] + [o for o in options if o != value]


def _simplicity(ctx: Context, dim: str, value: Any, index: int) -> int:
    """Which of two equal values to show: the baseline, then torch's own implementations,
    then the order of the dimension (never the rules' preferences)."""
    if dim == "optimizer":
        if value == "adamw":
            return 0
        impl = ctx.taxonomy.get(value).implementation or ""
        return (1 if impl.startswith("torch.") else 2) * 1000 + index
    if dim == "precision":
        return 0 if value in (Precision.BF16_MIXED, Precision.FP32) else 1000 + index
    return 0 if value is Attention.FLASH else 1000 + index


def screen_layouts(
    s: PlanSearch, layouts: list[Layout], ref: TrainingConfig
) -> tuple[list[Layout], dict[str, list[str]]]:
    """Layouts equal to another fold into it; layouts no better in memory, time and rule
    score than another are pruned (at the reference plan, one sample per device)."""
    pts = []
    for i, lay in enumerate(layouts):
        # One sample per micro-batch, accumulated over the whole per-replica batch: every
        # layout then steps over the same global batch (times compare), and pipelines see
        # as many micro-batches as they will run with (their bubble, not a worst case).
        per, _ = per_replica_batch(s.batch, lay.parallel.data_parallel)
        plain = lay.apply(ref).with_geometry(1, per)
        full = Savers(checkpointing=Checkpointing.FULL).apply(plain)
        pt = _point(s, lay.label, full, i) or _point(s, lay.label, plain, i)
        if pt is not None:
            pts.append(pt)
    # NOTE: equal layouts fold together anywhere, but dominance prunes only among the
    # shardings of one tensor x pipeline split: across splits, one reference geometry can
    # make a pipeline look worse than it is at the micro-batch it really runs (the
    # exhaustive benchmark caught a 12% miss that way).
    _kept, al, _ = screen(pts, prune=False)
    heads: set[str] = set()
    by_split: dict[tuple[object, ...], list[_Point]] = {}
    label_of = {lay.label: lay for lay in layouts}
    for pt in pts:
        if pt.key in al:
            lay = label_of[pt.key]
            by_split.setdefault(
                (
                    lay.parallel.tensor_parallel,
                    lay.parallel.pipeline_parallel,
                    lay.parallel.virtual_stages,
                    lay.parallel.expert_parallel,
                    lay.parallel.context_parallel,
                    lay.parallel.context_parallel_kind,
                ),
                [],
            ).append(pt)
    for group in by_split.values():
        kept, _al, _ = screen(group, prune=PRUNE_LAYOUTS)
        heads.update(kept)
    return [lay for lay in layouts if lay.label in heads], {k: v for k, v in al.items() if v}


def best_layouts(s: PlanSearch, layouts: list[Layout], refs: list[TrainingConfig]) -> list[Layout]:
    """The layouts the full search covers: the best few for the reference plans (the
    baseline core and the leanest one, which fits where the baseline does not) by the
    objective's own score (time, memory and the rules' preferences for the layout's
    techniques, as the ranking weighs them), plus the most frugal layout, so that plans
    needing every byte still find their layout."""
    if len(layouts) <= TOP_LAYOUTS:
        return layouts
    ref = refs[0]
    objective = s.ctx.workload.objective
    scored: list[tuple[bool, float, int, Layout]] = []
    frugal: list[tuple[int, Layout]] = []
    for lay in layouts:
        c = Savers(checkpointing=Checkpointing.FULL).apply(lay.apply(ref))
        frugal.append((s.ev.totals(c).total_bytes, lay))

    # Branch and bound (where the caller cuts at all: a cutoff is given): layouts by their
    # bound for the reference plan, cheapest first; a layout is cut when its bound is above
    # the third best layout found (the coarse bound, then the fine one). The screen's plans
    # on layouts not chosen leave the ranking (see search()), so a cut layout changes
    # nothing shown.
    def cut(lay: Layout, kth: float) -> bool:
        # The screen's own score (no steps to target), over the reference plans it may
        # walk (the leaner one only where the first may find nothing that reaches the
        # batch): coarse bounds first, then each rung's.
        walks = refs[:1] if s.finds_exact(refs[0], lay, screen=True) else refs
        if all(s.bound(r, lay, steps=False, screen=True) > kth for r in walks):
            return True
        return all(s.fine_cut(r, lay, kth, steps=False, screen=True) for r in walks)

    coarse = [s.bound(refs[0], lay, steps=False, screen=True) for lay in layouts]
    for i in sorted(range(len(layouts)), key=lambda i: coarse[i]):
        lay = layouts[i]
        exact = sorted(x[1] for x in scored if not x[0])
        kth = exact[TOP_LAYOUTS - 1] if len(exact) >= TOP_LAYOUTS else float("inf")
        if s.cutoff is not None and kth < float("inf") and cut(lay, kth):
            s.bounded += 1
            continue
        # NOTE: the screen walks the coarser ladder (activation offload with full
        # recomputation only); the layouts it keeps get every rung in the full search.
        plans = s.ladder_for(refs[0], lay, screen=True)
        for r in refs[1:]:
            if not any(p.exact_batch for p in plans):
                plans += s.ladder_for(
                    r, lay, screen=True
                )  # the leaner core, where the baseline fails
        if plans:
            best = min(
                (
                    not p.exact_batch,
                    objective_score(
                        objective,
                        p.seconds_per_token,
                        p.peak_bytes,
                        s.ev.usable,
                        p.rule_score,
                    ),
                )
                for p in plans
            )
            scored.append((*best, i, lay))
    chosen = [x[-1] for x in sorted(scored, key=lambda x: x[:3])[:TOP_LAYOUTS]]
    lightest = min(frugal, key=lambda x: x[0])[1]
    if lightest not in chosen:
        chosen.append(lightest)
    # Plain data parallelism is the baseline every layout must beat (issue 22, point 5): the
    # reference plans may need sharding where a lighter plan (LoRA, a small model) does not.
    # So are the two shardings practitioners try next over the same ranks, ZeRO-1 and FSDP:
    # the screen's coarser ladder can rank them a few percent off (Mistral 7B pre-training on
    # 8 A100 under --objective speed: dp8 ZeRO-1 1.8% faster than the pipelined pick, and
    # screened out; benchmarks/soundness.py).
    for lay in layouts:
        if _plain_data_parallel(lay) and lay not in chosen:
            chosen.append(lay)
    return chosen


_PRACTITIONER_SHARDINGS = (Sharding.NONE, Sharding.ZERO1, Sharding.FSDP)


def _plain_data_parallel(lay: Layout) -> bool:
    p = lay.parallel
    return p.data_parallel == lay.world_size and p.sharding in _PRACTITIONER_SHARDINGS
