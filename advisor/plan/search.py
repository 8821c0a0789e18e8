"""The plan search: rule filters, dominance screening, layouts, memory savers, batch geometry.

Memory and step time are monotone in the micro-batch, so the micro-batch is found by binary
search over the divisors of the per-replica batch (never by enumeration); dimensions whose
values only trade memory for time are screened once at a reference plan, and a value that
is no better in memory, time and rule score than another is pruned (or, when equal, folded
into it as an "also"). Saver ladders (one core on one layout) are walked cheapest lower
bound first and cut when their bound cannot reach the shown rows (branch and bound; see
``_Search.bound``). ``exhaustive=True`` turns the shortcuts off (for the benchmark).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Task,
    TrainingConfig,
)
from advisor.memory import (
    MemoryEstimate,
    MemoryTotals,
    layer_activation_bytes,
    optimizer_note,
)
from advisor.plan.bounds import NOTHING_FITS, LadderBounds, leanest_rung
from advisor.plan.layout import Layout
from advisor.plan.models import Rejection, RejectionKind, StepCost
from advisor.plan.space import (
    MEMORY_SAFETY_MARGIN,
    Context,
    GlobalBatch,
    Objective,
    PlanSpace,
    Savers,
    describe_config,
    estimate,
    estimate_totals,
    host_fits,
    lora_target_fields,
    objective_score,
    plan_step_factor,
    usable_memory,
    workload_layouts,
)
from advisor.rules.candidates import (
    ATTENTION_IDS,
    FUSED_LOSS_ID,
    config_techniques,
)
from advisor.rules.engine import Decision, requirement_rules
from advisor.rules.taxonomy import Category, OptimizerMemory, Order, StateKind, Taxonomy
from advisor.units import format_bytes

CostFn = Callable[[TrainingConfig], StepCost]
# The score a ladder's lower bound must beat to be walked: the last shown row's score over
# the plans found so far (+inf while fewer rows exist; see :meth:`_Search.bound`).
Cutoff = Callable[[Sequence["Plan"]], float]

# Two values of a dimension are the same plan when memory and time differ by less than this
# (relative): below the models' own resolution, and invisible to a user.
EQUIVALENT = 0.005
# Layouts carried from the reference search into the full one (the rest are dominated or
# clearly slower for the reference plan; the benchmark checks the loss against exhaustive).
TOP_LAYOUTS = 3
PRUNE_LAYOUTS = True
# Objectives whose score is monotone in time, memory and rule score with the plans' ladders
# walked cheapest-first (branch and bound applies; "memory" walks every rung, "quality"
# ranks full-parameter plans above adapters whatever their score).
BOUNDED = (Objective.SPEED, Objective.BALANCED, Objective.TIME_TO_TARGET)


# NOTE: the search's internal values are frozen dataclasses, not pydantic models: thousands
# are built per search and none is read from a file (the report's models stay pydantic).
@dataclass(frozen=True)
class Plan:
    """One evaluated plan: a configuration with its layout and batch geometry."""

    config: TrainingConfig
    layout: Layout
    techniques: list[str]
    peak_bytes: int  # the per-device peak, memory.total_bytes (ranking reads only this)
    cost: StepCost
    rule_score: float
    global_batch: int
    exact_batch: bool  # micro x accumulation x dp = the global batch
    evaluator: Evaluator = field(repr=False, compare=False)
    batch_note: str = ""
    aliases: list[str] = field(default_factory=list)  # equivalent labels folded in
    largest_fit: int = 0  # the largest micro-batch that fit (see _fitting_prefix's hint)

    @functools.cached_property
    def memory(self) -> MemoryEstimate:
        """The full estimate (phases, breakdown, notes), built when a report row asks for
        it: of the hundreds of plans a search finds, the ranking reads only the peak."""
        return self.evaluator.memory(self.config)

    @property
    def tokens(self) -> int:
        return self.global_batch * self.config.seq_len

    @property
    def seconds_per_token(self) -> float:
        return self.cost.seconds / max(self.tokens, 1)


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


# Every field of a configuration but its optimizer (see Evaluator._state_key).
_BUT_OPTIMIZER = tuple(f for f in TrainingConfig.model_fields if f != "optimizer")
_BUT_OPTIMIZER_VALUES = operator.attrgetter(*_BUT_OPTIMIZER)  # one C call per key


class Evaluator:
    """Memoised memory and time of configurations, counted."""

    def __init__(self, ctx: Context, cost_fn: CostFn) -> None:
        self.ctx, self.cost_fn = ctx, cost_fn
        self._mem: dict[TrainingConfig, MemoryEstimate] = {}
        self._time: dict[TrainingConfig, StepCost] = {}
        # (the optimizer's state signature, the configuration without its optimizer) ->
        # (the optimizer estimated, its estimate): see memory().
        self._by_state: dict[tuple[object, ...], tuple[str, MemoryEstimate]] = {}
        # The fit tests' peaks of configurations not (yet) estimated in full (see fits()).
        self._totals: dict[TrainingConfig, MemoryTotals] = {}
        self._totals_by_state: dict[tuple[object, ...], MemoryTotals] = {}
        self.usable = usable_memory(ctx.target)

    def memory(self, c: TrainingConfig) -> MemoryEstimate:
        m = self._mem.get(c)
        if m is None:
            m = self._mem[c] = self._estimate(c)
        return m

    def _estimate(self, c: TrainingConfig) -> MemoryEstimate:
        """The memory model reads an optimizer only through its state signature (and names
        it in one note): optimizers that share one (Lion, RMSprop and SGD-momentum in 8 bits
        keep one 8-bit state each) share the estimate, with the note renamed."""
        key = self._state_key(c)
        if key is None:
            return estimate(self.ctx, c)  # not an optimizer: the model says so
        hit = self._by_state.get(key)
        if hit is None:
            m = estimate(self.ctx, c)
            self._by_state[key] = (c.optimizer, m)
            return m
        other, m = hit
        if other == c.optimizer:
            return m
        mem = key[0]
        assert isinstance(mem, OptimizerMemory)
        old, new = optimizer_note(other, mem), optimizer_note(c.optimizer, mem)
        return m.model_copy(update={"notes": [new if n == old else n for n in m.notes]})

    def time(self, c: TrainingConfig) -> StepCost:
        t = self._time.get(c)
        if t is None:
            t = self._time[c] = self.cost_fn(c)
        return t

    def fits(self, c: TrainingConfig) -> bool:
        m = self.totals(c)
        return m.total_bytes <= self.usable and host_fits(self.ctx, c, m) is None

    def totals(self, c: TrainingConfig) -> MemoryEstimate | MemoryTotals:
        """The peak and offloaded bytes of ``c``: what a fit test or a rejection reads.

        NOTE: most plans a binary search tries are never shown: their peak and offloaded
        bytes (memory_totals, the same numbers) do without the phases and notes."""
        m: MemoryEstimate | MemoryTotals | None = self._totals.get(c) or self._mem.get(c)
        if m is None:
            key = self._state_key(c)
            m = self._totals_by_state.get(key) if key else None
            if m is None:
                m = estimate_totals(self.ctx, c)
                if key:
                    self._totals_by_state[key] = m
            self._totals[c] = m
        return m

    def _state_key(self, c: TrainingConfig) -> tuple[object, ...] | None:
        """What the memory model reads of ``c``: its optimizer's state signature, and every
        other field (None when the optimizer has none: the model refuses it)."""
        mem = self.ctx.taxonomy.get(c.optimizer).memory
        return None if mem is None else (mem, _BUT_OPTIMIZER_VALUES(c))

    @property
    def counts(self) -> tuple[int, int]:
        """Configurations whose memory was evaluated (in full or for a fit test), and whose
        step time was."""
        return len(self._mem.keys() | self._totals.keys()), len(self._time)


# --- rule and compatibility filters ----------------------------------------------------------


# id(taxonomy) -> (the taxonomy, technique id -> (its incompatible ids, its required dtypes)).
_CLASHES: dict[int, tuple[Taxonomy, dict[str, tuple[frozenset[str], frozenset[str]]]]] = {}


def _clash_table(tax: Taxonomy) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Each technique's incompatible ids and required compute dtypes, built once per
    taxonomy (the search asks thousands of times; the entry keeps the taxonomy alive, so its
    id is not reused)."""
    hit = _CLASHES.get(id(tax))
    if hit is None or hit[0] is not tax:
        _CLASHES.clear()
        table = {
            t.id: (frozenset(t.incompatible_with), frozenset(d.value for d in t.requires.dtypes))
            for t in tax.techniques
        }
        hit = _CLASHES[id(tax)] = (tax, table)
    return hit[1]


def compatible(ctx: Context, config: TrainingConfig, techniques: Sequence[str]) -> str | None:
    """Why a configuration's techniques cannot go together (None: they can)."""
    table = _clash_table(ctx.taxonomy)
    present = set(techniques)
    for tid in techniques:
        if tid not in table:
            continue
        incompatible, dtypes = table[tid]
        clash = present & incompatible
        if clash:
            return f"{tid} is incompatible with {', '.join(sorted(clash))}"
        if dtypes and not dtypes & _compute_dtypes(config.precision):
            return f"{tid} needs {'/'.join(sorted(dtypes))} compute, not {config.precision.value}"
    if config.task is Task.QLORA and config.precision in (
        Precision.FP32,
        Precision.TF32,
        Precision.FP8_MIXED,
    ):
        return "QLoRA computes in 16-bit over a 4-bit base by construction"
    if config.task is Task.LORA and config.precision is Precision.FP8_MIXED:
        return "fp8 recipes (Transformer Engine) train full layers, not adapters"
    if config.task in (Task.LORA, Task.QLORA) and (
        config.offload is not Offload.NONE or config.pipeline_parallel > 1
    ):
        return "adapter states are megabytes: nothing worth offloading or pipelining"
    offload_params = config.offload.params or config.offload.nvme
    if config.gpus > 1 and offload_params and config.sharding.zero_stage < 3:
        return "parameter and NVMe offload need ZeRO stage 3 (DeepSpeed ZeRO-Infinity)"
    if config.offload is not Offload.NONE and config.pipeline_parallel > 1:
        return "pipeline engines (DeepSpeed, Megatron-LM) do not offload states"
    if config.optimizer_in_backward and config.pipeline_parallel > 1:
        return "per-layer updates need the whole backward on one stage (no 1F1B interleaving)"
    return None


# The dtypes each precision computes in (built once: compatible() asks per technique).
_COMPUTE_DTYPES: dict[Precision, frozenset[str]] = {
    Precision.FP32: frozenset({"fp32"}),
    Precision.TF32: frozenset({"tf32", "fp32"}),
    Precision.AMP_FP16: frozenset({"fp16"}),
    Precision.AMP_BF16: frozenset({"bf16"}),
    Precision.FP16_MIXED: frozenset({"fp16"}),
    Precision.BF16_MIXED: frozenset({"bf16"}),
    Precision.FP16: frozenset({"fp16"}),
    Precision.BF16: frozenset({"bf16"}),
    Precision.FP8_MIXED: frozenset({"fp8", "bf16"}),
}


def _compute_dtypes(precision: Precision) -> frozenset[str]:
    return _COMPUTE_DTYPES[precision]


_REQUIREMENTS: dict[int, list[Any]] = {}

# Ids that a rule may require: then a plan without them is out.
_REQUIRABLE = {
    "activation-checkpointing-full",
    "activation-checkpointing-selective",
    "cpu-offload-optimizer",
    "cpu-offload-params",
    "nvme-offload",
    "lora",
    "qlora",
    "zero-1",
    "zero-2",
    "zero-3",
    "fsdp",
    "hybrid-shard",
    "fused-backward-step",
    "tensor-parallel",
    "pipeline-parallel",
}


def hard_constraint(ctx: Context, decision: Decision, techniques: Sequence[str]) -> str | None:
    """Why the rules exclude a plan (None: they do not)."""
    for tid in techniques:
        if tid in decision.excluded:
            rules = decision.excluded[tid]
            hardware = [r for r in rules if r.startswith("requires-")]
            if hardware:
                key = id(ctx.taxonomy)
                if key not in _REQUIREMENTS:
                    _REQUIREMENTS.clear()
                    _REQUIREMENTS[key] = requirement_rules(ctx.taxonomy)
                lr = next(r for r in _REQUIREMENTS[key] if r.rule.id == hardware[0])
                text: str = lr.rule.rationale
                return text.removeprefix("From the taxonomy: ").rstrip(".")
            return f"{tid} excluded by rule {', '.join(rules)}"
    cats = {Category.OPTIMIZER, Category.PRECISION, Category.ATTENTION}
    present = set(techniques)
    for tid, rules in decision.required.items():
        if tid in present or tid not in ctx.taxonomy:
            continue
        tech = ctx.taxonomy.get(tid)
        # A required one-of choice (optimizer, precision, attention) rules out the others;
        # a required memory or parallelism technique must be present.
        if tech.category in cats or tech.id in _REQUIRABLE:
            return f"{tid} required by {', '.join(rules)}"
    return None


def techniques_of(ctx: Context, config: TrainingConfig) -> list[str]:
    """A configuration's technique ids, with 8-bit states named when its optimizer has them."""
    ids = config_techniques(config)
    tech = ctx.taxonomy.get(config.optimizer)
    if tech.memory is not None and tech.memory.state is StateKind.QUANTIZED_BLOCKWISE:
        ids.append("optimizer-states-8bit")
    return ids


def reject(
    c: TrainingConfig,
    techniques: list[str],
    reason: str,
    kind: RejectionKind,
    m: MemoryEstimate | MemoryTotals | None = None,
) -> Rejection:
    """A rejection record."""
    return Rejection(
        configuration=describe_config(c),
        optimizer=c.optimizer,
        techniques=techniques,
        reason=reason,
        kind=kind,
        peak_memory_bytes=m.total_bytes if m else None,
        config=c,
    )


def memory_reason(ctx: Context, ev: Evaluator, c: TrainingConfig) -> tuple[str, RejectionKind]:
    """Why a configuration does not fit (device memory first, then the host)."""
    m = ev.totals(c)
    if m.total_bytes > ev.usable:
        return (
            f"needs {format_bytes(m.total_bytes)} per device > {format_bytes(ev.usable)} "
            f"usable ({MEMORY_SAFETY_MARGIN:.0%} of "
            f"{format_bytes(ctx.target.device_memory_bytes)})",
            "memory",
        )
    return host_fits(ctx, c, m) or "", "host-memory"


# --- batch geometry ----------------------------------------------------------------------


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
            the search for this one's starts (see _fitting_prefix).

    Returns:
        The configuration with its geometry, or None when not even one sample per device fits.
    """
    per, note = per_replica_batch(batch, dp)
    in_backward = config.optimizer_in_backward

    built: dict[tuple[int, int], TrainingConfig] = {}

    def with_geometry(micro: int, accumulation: int) -> TrainingConfig:
        # The fit test and the timing below ask for the same geometries: build each once.
        c = built.get((micro, accumulation))
        if c is None:
            update = {"micro_batch": micro, "grad_accumulation": accumulation}
            c = built[micro, accumulation] = config.model_copy(update=update)
        return c

    if fixed_micro is not None:
        acc = -(-per // fixed_micro)
        if in_backward:
            acc = 1
        c = with_geometry(fixed_micro, acc)
        if not ev.fits(c):
            return None
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

    choices = _divisors(per)
    if in_backward:
        # Per-layer updates step as soon as a gradient exists: no accumulation (Lv et al. 2023).
        choices = sorted(set(choices + _powers_below(per)))
    fitting = _fitting_prefix(
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
    elif exhaustive or config.pipeline_parallel > 1:
        # More micro-batches shrink the pipeline bubble, (p - 1) / m (Narayanan et al. 2021).
        candidates = fitting if exhaustive else fitting[-6:]
    else:
        # Without a pipeline, time per token does not grow with the micro-batch (per-sample
        # compute and exposed communication fall with it; the bounds of the search rest on
        # the same fact, tests/test_search_bound.py): the largest that fits is the fastest.
        candidates = fitting[-1:]
    if smallest:
        candidates = fitting[:1]
    descend = config.pipeline_parallel > 1 and not exhaustive and not smallest
    if descend:
        # Time per token is unimodal in the micro-batch under a pipeline: per-sample compute
        # falls with it, the bubble's share (p - 1) / m grows with it (Narayanan et al.
        # 2021). From the largest down, the first micro-batch that is slower ends the walk.
        candidates = candidates[::-1]
    best: tuple[float, TrainingConfig, Geometry] | None = None
    for mb in candidates:
        acc = _acc(per, mb, in_backward)
        c = with_geometry(mb, acc)
        total = mb * acc * dp
        per_token = ev.time(c).seconds / (total * c.seq_len)
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
            largest_fit=fitting[-1],
        )
        if descend and best is not None:
            if per_token > best[0] * (1 + 1e-9):
                break
            best = (per_token, c, g)  # no slower: the smaller one, as ascending order picks
        elif best is None or per_token < best[0] * (1 - 1e-9):
            best = (per_token, c, g)
    assert best is not None
    return best[1], best[2]


def _acc(per: int, micro: int, in_backward: bool) -> int:
    return 1 if in_backward else per // micro


def _powers_below(n: int) -> list[int]:
    out, v = [], 1
    while v < n:
        out.append(v)
        v *= 2
    return out


def _fitting_prefix(
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


# --- the search --------------------------------------------------------------------------


def saver_ladder(
    ctx: Context, space: PlanSpace, *, offload_every_level: bool = True
) -> list[list[Savers]]:
    """The memory-saver combinations, by offload level (none, then the optimizer and the
    parameters to host RAM, Ren et al. 2021, then to NVMe, Rajbhandari et al. 2021), each
    level in the order of its expected slowdown: fused loss (no slower; Hsu et al. 2024),
    selective to full recomputation (Korthikanti et al. 2022: ~2.7% and ~33% more compute),
    each also with activation offload (with ``offload_every_level=False`` only the last: the
    layout screen's coarser ladder), then activation offload without recomputation."""
    fused = True in space.fused_loss and FUSED_LOSS_ID in ctx.taxonomy
    # In order of extra compute: attention core (~3%), torchtitan's op-level SAC (every other
    # matmul, ~13% on Llama 2 13B), every second block (~17%), every block (~33%).
    order = (
        Checkpointing.SELECTIVE,
        Checkpointing.SELECTIVE_OP,
        Checkpointing.SELECTIVE_LAYER,
        Checkpointing.FULL,
    )
    ckpts = [c for c in order if c in space.checkpointing]
    levels = []
    for off in space.offloads:
        act = True in space.activation_offload
        rungs = [Savers(offload=off)]
        if fused:
            rungs.append(Savers(offload=off, fused_loss=True))
        for ck in ckpts:
            rungs.append(Savers(checkpointing=ck, fused_loss=fused, offload=off))
            if act and (offload_every_level or ck is ckpts[-1]):
                # Each recomputation level with its saved activations streamed to the host:
                # op-level SAC plus offload can admit a micro-batch that beats full
                # recomputation plus offload (70B on 2 x 8 H100, search_exhaustive).
                rungs.append(
                    Savers(checkpointing=ck, fused_loss=fused, offload=off, activation_offload=True)
                )
        if act:
            # Without recomputation every saved activation crosses PCIe twice (about 16
            # times the block inputs, memory.saved_activation_bytes): the slowest rung.
            rungs.append(Savers(offload=off, fused_loss=fused, activation_offload=True))
        levels.append(rungs)
    return levels


def all_savers(space: PlanSpace) -> list[Savers]:
    """Every saver combination (exhaustive mode)."""
    return [
        Savers(checkpointing=ck, offload=off, fused_loss=f, activation_offload=a)
        for ck, off, f, a in itertools.product(
            space.checkpointing, space.offloads, space.fused_loss, space.activation_offload
        )
    ]


class _Search:
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
        self._verdicts: dict[tuple[object, ...], tuple[str | None, RejectionKind]] = {}
        self.pruned_rungs = 0
        self._rungs: dict[tuple[Savers, bool], Savers] = {}
        self.in_backward = True in space.optimizer_in_backward and (
            "fused-backward-step" in ctx.taxonomy
        )

    # -- filters
    def allowed(self, c: TrainingConfig) -> list[str] | None:
        techniques = techniques_of(self.ctx, c)
        reason, kind = self._verdict(c, techniques)
        if reason is None:
            return techniques
        if c not in self.rejected:  # the first reason stands (built once: not via setdefault)
            self.rejected[c] = reject(c, techniques, reason, kind)
        return None

    def _verdict(
        self, c: TrainingConfig, techniques: list[str]
    ) -> tuple[str | None, RejectionKind]:
        """Why the rules or compatibility exclude ``c`` (None: they do not), memoised on
        the techniques and the few fields compatible() reads."""
        key = (tuple(techniques), c.precision, c.task, c.offload, c.gpus, c.pipeline_parallel)
        known = self._verdicts.get(key)
        if known is None:
            reason = hard_constraint(self.ctx, self.decision, techniques)
            kind: RejectionKind = "rule"
            if reason is None:
                reason, kind = compatible(self.ctx, c, techniques), "incompatible"
            known = self._verdicts[key] = (reason, kind)
        return known

    # -- one skeleton (core x savers x layout) through the batch geometry
    def plan(self, c: TrainingConfig, layout: Layout, *, hint: int | None = None) -> Plan | None:
        techniques = self.allowed(c)
        if techniques is None:
            return None
        self.evaluated += 1
        found = best_geometry(
            self.ev,
            c,
            layout.dp,
            self.batch,
            self.ctx.workload.micro_batch,
            exhaustive=self.exhaustive,
            smallest=self.ctx.workload.objective.value == "memory",
            hint=hint,
        )
        if found is None:
            smallest = c.model_copy(update={"micro_batch": self.ctx.workload.micro_batch or 1})
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
            hard_constraint(self.ctx, self.decision, techniques)
            or compatible(self.ctx, cfg, techniques)
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
        one that ranks layouts, see :func:`_best_layouts`), or every combination."""
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
        per, _ = per_replica_batch(self.batch, layout.dp)
        out: list[Plan] = []
        fitted_on_device = host_fitted = False
        for level in levels:
            off = level[0].offload
            if off is not Offload.NONE and fitted_on_device and not memory_first:
                break  # offload only when nothing fits on the device (Ren et al. 2021)
            if off.nvme and host_fitted and not memory_first:
                break  # NVMe only when host RAM is not enough
            best, hint = float("inf"), None
            for rung in level:
                if rung.checkpointing is Checkpointing.SELECTIVE and not _selective_saves(
                    self.ctx, base
                ):
                    continue
                cfg = self._rung(rung, per_layer).apply(base)
                if best < float("inf") and not memory_first and self._no_better(cfg, per, best):
                    continue
                p = self.plan(cfg, layout, hint=hint)
                hint = p.largest_fit if p is not None else 0
                if try_whole and p is not None and p.config.micro_batch < per:
                    # Per-layer updates free the gradient buffer; if that lets the whole
                    # per-replica batch fit at once, the plan still reaches the global batch.
                    whole = self._rung(rung, True).apply(base)
                    one = whole.model_copy(update={"micro_batch": per, "grad_accumulation": 1})
                    if self.allowed(one) is not None and self.ev.fits(one):
                        q = self.plan(whole, layout)
                        if q and q.exact_batch and q.seconds_per_token < p.seconds_per_token:
                            p = q
                if p is None:
                    continue
                out.append(p)
                self.plans.append(p)
                # Only a plan that reaches the global batch ends the search for savers.
                fitted_on_device = fitted_on_device or (off is Offload.NONE and p.exact_batch)
                host_fitted = host_fitted or (
                    off is not Offload.NONE and not off.nvme and p.exact_batch
                )
                if memory_first:
                    continue
                best = min(best, p.seconds_per_token)
                # Once the whole per-replica batch is one micro-batch, more savers only slow
                # it down. (Rungs that cannot beat the best even at that batch are skipped by
                # the bound above; a rung that does not improve says nothing about the next:
                # full recomputation plus activation offload can admit a 4x larger
                # micro-batch where full recomputation alone did not pay.)
                if p.config.micro_batch >= per:
                    break
        return out

    def _rung(self, rung: Savers, per_layer: bool) -> Savers:
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
        (the layout screen's score). tests/test_search_bound.py holds every walked ladder
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
            per, _ = per_replica_batch(self.batch, layout.dp)
            levels, settled = self._walked(
                base, per, layout.dp, self.screen_ladder if screen else self.ladder
            )
            present = frozenset(techniques_of(self.ctx, base))
            hit = self._ladders[key] = LadderBounds(
                self, base, per, layout.dp, levels, present, settled
            )
        return hit

    def _walked(
        self, base: TrainingConfig, per: int, dp: int, ladder: list[list[Savers]]
    ) -> tuple[list[list[Savers]], bool]:
        """The offload levels the ladder walks (see _levels): offload only when no device
        plan reaches the global batch, NVMe only when no host-offload plan does; a level's
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
            if (off is not Offload.NONE and on_device) or (off.nvme and on_host):
                break
            walked.append(level)
            lean = self._rung(leanest_rung(level), False).apply(base)
            one = lean.model_copy(
                update={"micro_batch": micro, "grad_accumulation": -(-per // micro)}
            )
            fits = exact and self._ok(one) and self.ev.fits(one)
            on_device = on_device or (fits and off is Offload.NONE)
            on_host = on_host or (fits and off is not Offload.NONE and not off.nvme)
            settled = settled or fits
        return walked, settled

    def finds_exact(self, core: TrainingConfig, layout: Layout, *, screen: bool) -> bool:
        """Whether the ladder surely finds a plan that reaches the global batch."""
        lb = self._ladder_bounds(core, layout, screen)
        return lb is not None and lb.settled

    def _ok(self, c: TrainingConfig) -> bool:
        return self._verdict(c, techniques_of(self.ctx, c))[0] is None

    def _inb(self) -> tuple[bool, ...]:
        return (False, True) if self.in_backward else (False,)

    def _no_better(self, cfg: TrainingConfig, per: int, best: float) -> bool:
        """Whether a rung cannot beat ``best`` seconds per token even at the whole
        per-replica batch (time per token does not grow with the micro-batch)."""
        top = cfg.model_copy(update={"micro_batch": per, "grad_accumulation": 1})
        # NOTE: with pipeline stages one micro-batch is the worst case (the whole bubble,
        # Narayanan et al. 2021), so there is no bound of this kind: search the rung.
        if top.optimizer_in_backward or top.pipeline_parallel > 1 or self.allowed(top) is None:
            return False
        bound = self.ev.time(top).seconds / (per * top.gpus * top.seq_len)
        if bound >= best * (1 - EQUIVALENT):
            self.pruned_rungs += 1
            return True
        return False


def _selective_saves(ctx: Context, c: TrainingConfig) -> bool:
    """Whether selective recomputation (the attention core, Korthikanti et al. 2022) saves
    any memory for ``c``'s attention and kernel stack. With FlashAttention or the fused stack
    the block never keeps the s x s scores, so it saves nothing and only adds recompute: the
    rung is dominated by the one without it and is skipped."""

    def saved(selective: bool) -> int:
        return layer_activation_bytes(
            ctx.spec,
            1,
            c.seq_len,
            c.attention,
            c.precision,
            selective=selective,
            stack=c.stack,
            tensor_parallel=c.tensor_parallel,
            fused_norm=c.fused_norm,
        )

    return saved(True) < saved(False)


def _at(c: TrainingConfig) -> str:
    return f" at micro-batch {c.micro_batch}"


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


# --- dominance screening ---------------------------------------------------------------------


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
    s = _Search(ctx, decision, cost_fn, space, exhaustive=exhaustive, cutoff=cutoff)
    w = ctx.workload
    layouts = workload_layouts(ctx)
    notes: list[str] = []
    pinned = w.tensor_parallel is not None or w.pipeline_parallel is not None
    if not pinned and w.world_size > 1 and not _time_prices_layouts(ctx, s.ev):
        # A step-time model blind to tensor/pipeline parallelism would see their memory
        # savings for free: plan data parallelism only, and say so.
        layouts = [lay for lay in layouts if lay.tp == 1 and lay.pp == 1]
        notes.append(
            "tensor and pipeline parallel layouts not planned: the step-time model does not "
            "price their communication yet (pin them with --tp/--pp to see their memory)"
        )
    batch_ok = [lay for lay in layouts if lay.dp <= s.batch.samples or not s.batch.requested]
    considered = space.core_count() * space.saver_count() * len(layouts)
    for lay in layouts:
        if lay not in batch_ok:
            c = lay.apply(_reference(ctx, space, space.tasks[0]))
            s.rejected.setdefault(
                c,
                reject(
                    c,
                    techniques_of(ctx, c),
                    f"{lay.label}: {lay.dp} replicas exceed the global batch of "
                    f"{s.batch.samples} samples",
                    "batch",
                ),
            )
    layouts = batch_ok
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
    cores_by_task = {t: _cores(s, t, layouts[0], aliases, exhaustive) for t in space.tasks}
    every = [c for cs in cores_by_task.values() for c in cs]
    first_order_cores = [c for c in every if ctx.taxonomy.get(c.optimizer).order is Order.FIRST]
    first = next(iter(first_order_cores or every), None)
    if exhaustive:
        chosen = layouts
    elif first is None:
        chosen = []
    else:
        layouts, layout_aliases = _screen_layouts(s, layouts, first)
        aliases.update({("layout", k): v for k, v in layout_aliases.items()})
        # The leanest core at the reference point (least memory): where the baseline core
        # does not fit a layout, it may.
        lean = min(every, key=lambda c: s.ev.totals(layouts[0].apply(c)).total_bytes)
        chosen = _best_layouts(s, layouts, list(dict.fromkeys([first, lean])))
    # Cheapest bound first, so that the rows fill early and the rest is cut.
    ladders = [
        (core, layout) for cores in cores_by_task.values() for layout in chosen for core in cores
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


def _time_prices_layouts(ctx: Context, ev: Evaluator) -> bool:
    """Whether the step-time model tells tensor parallelism from a single device (the same
    plan at tp 2 and tp 1 on one data-parallel rank): a model that does not price its
    all-reduces (Shoeybi et al. 2019) would make every TP/PP layout look free."""
    c = TrainingConfig(task=Task.PRETRAIN, seq_len=ctx.workload.seq_len, stack=ctx.workload.stack)
    try:
        return ev.time(c.model_copy(update={"tensor_parallel": 2})).seconds != ev.time(c).seconds
    except ValueError:
        return False


def _aliases_of(p: Plan, aliases: dict[tuple[str, str], list[str]]) -> list[str]:
    task = p.config.task.value
    out = list(aliases.get((task, p.config.optimizer), []))
    out += aliases.get((task, p.config.precision.value), [])
    out += [f"{a} attention" for a in aliases.get((task, p.config.attention.value), [])]
    out += aliases.get(("layout", p.layout.label), [])
    return out


def _reference(ctx: Context, space: PlanSpace, task: Task) -> TrainingConfig:
    """The plan each dimension is screened against: AdamW (or the first optimizer the space
    has), the target's default precision, the best attention the space has, no savers."""
    precision = Precision.BF16_MIXED if ctx.target.fast_bf16 else Precision.FP32
    if precision not in space.precisions:
        precision = space.precisions[0]
    if task is Task.QLORA and precision in (Precision.FP32, Precision.TF32):
        precision = Precision.BF16_MIXED if ctx.target.fast_bf16 else Precision.FP16_MIXED
    optimizer = "adamw" if "adamw" in space.optimizers else space.optimizers[0]
    attention = Attention.FLASH if Attention.FLASH in space.attentions else space.attentions[0]
    return TrainingConfig(
        task=task,
        optimizer=optimizer,
        precision=precision,
        attention=attention,
        micro_batch=ctx.workload.micro_batch or 1,
        seq_len=ctx.workload.seq_len,
        gpus=ctx.workload.world_size,
        stack=ctx.workload.stack,
        dp_sgd=optimizer in ("dp-sgd", "dp-adam"),
        **lora_target_fields(ctx),
    )


def _point(
    s: _Search, key: str, c: TrainingConfig, simplicity: int, *, lean: bool = False
) -> _Point | None:
    techniques = s.allowed(c)
    if techniques is None:
        return None
    m = s.ev.totals(c)
    table = _clash_table(s.ctx.taxonomy)
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
    return _Point(
        steps=plan_step_factor(s.ctx, c),
        clashes=frozenset(clashes),
        key=key,
        memory=memory,
        seconds=s.ev.time(c).seconds,
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
    base: dict[str, Any] = {}
    if Checkpointing.FULL in space.checkpointing and "activation-checkpointing-full" not in clashes:
        base["checkpointing"] = Checkpointing.FULL
    out: list[TrainingConfig | None] = []
    if Offload.OPTIMIZER_PARAMS in space.offloads:
        ok = not clashes & _OFFLOAD_IDS
        out.append(
            c.model_copy(update={**base, "offload": Offload.OPTIMIZER_PARAMS}) if ok else None
        )
    if True in space.optimizer_in_backward:
        ok = "fused-backward-step" not in clashes
        out.append(c.model_copy(update={**base, "optimizer_in_backward": True}) if ok else None)
    if not out:
        out.append(c.model_copy(update=base) if base else None)
    return out


def _cores(
    s: _Search,
    task: Task,
    layout: Layout,
    aliases: dict[tuple[str, str], list[str]],
    exhaustive: bool,
) -> list[TrainingConfig]:
    """The (optimizer, precision, attention) combinations worth searching for one task."""
    ctx, space = s.ctx, s.space

    start = layout.apply(_reference(ctx, space, task))
    # Every configuration below is ``start`` with its optimizer, attention and precision
    # replaced: the verdict of each triple is memoised, and the configuration built once.
    built: dict[tuple[Any, Any, Any], TrainingConfig] = {}
    verdicts: dict[tuple[Any, Any, Any], bool] = {}

    def make(o: str, a: Attention, p: Precision) -> TrainingConfig:
        c = built.get((o, a, p))
        if c is None:
            update = {"optimizer": o, "attention": a, "precision": p, "dp_sgd": o in _DP}
            c = built[o, a, p] = start.model_copy(update=update)
        return c

    # NOTE: a configuration's technique ids are its optimizer, precision and attention,
    # then ids that do not depend on them (config_techniques); compatible() reads the
    # precision of the configuration, not its optimizer or attention. So the verdict of a
    # triple needs one configuration per precision, not one per triple.
    rest = config_techniques(start)[3:]
    by_precision: dict[Precision, TrainingConfig] = {}

    def ok_triple(o: str, a: Attention, p: Precision) -> bool:
        v = verdicts.get((o, a, p))
        if v is None:
            c = by_precision.get(p)
            if c is None:
                c = by_precision[p] = start.model_copy(update={"precision": p})
            ids = [o, p.value, ATTENTION_IDS[a], *rest]
            tech = ctx.taxonomy.get(o)
            if tech.memory is not None and tech.memory.state is StateKind.QUANTIZED_BLOCKWISE:
                ids.append("optimizer-states-8bit")
            v = verdicts[o, a, p] = s._verdict(c, ids)[0] is None
        return v

    def ok(c: TrainingConfig) -> bool:
        return ok_triple(c.optimizer, c.attention, c.precision)

    # The reference: the baseline where the rules allow it, else the first allowed
    # combination (private training has no AdamW; a T4 has no FlashAttention).
    ref = next(
        (
            make(o, a, p)
            for o, a, p in itertools.product(
                _first(start.optimizer, space.optimizers),
                _first(start.attention, space.attentions),
                _first(start.precision, space.precisions),
            )
            if ok_triple(o, a, p)
        ),
        None,
    )
    if ref is None:
        s.allowed(start)  # records why
        return []

    def allowed_somehow(c: TrainingConfig, dim: str) -> bool:
        # A value may clash with the reference's other choices (Sophia needs eager
        # attention): it is kept, unscreened, when some combination allows it.
        pools: dict[str, Sequence[Any]] = {
            "optimizer": [c.optimizer] if dim == "optimizer" else space.optimizers,
            "attention": [c.attention] if dim == "attention" else space.attentions,
            "precision": [c.precision] if dim == "precision" else space.precisions,
        }
        return any(
            ok_triple(o, a, p)
            for o, a, p in itertools.product(
                pools["optimizer"], pools["attention"], pools["precision"]
            )
        )

    def values(dim: str, options: Sequence[Any], key: Callable[[Any], str]) -> list[Any]:
        pts = []
        unscreened = []
        for i, o in enumerate(options):
            c = make(
                o if dim == "optimizer" else ref.optimizer,
                o if dim == "attention" else ref.attention,
                o if dim == "precision" else ref.precision,
            )
            if ok(c):
                pt = _point(s, key(o), c, _simplicity(ctx, dim, o, i), lean=True)
                if pt is not None:
                    pts.append(pt)
            elif allowed_somehow(c, dim):
                unscreened.append(key(o))
            else:
                s.allowed(c)  # records why
        if exhaustive:
            return [o for o in options if key(o) in {p.key for p in pts} | set(unscreened)]
        kept, al, _ = screen(pts)
        kept += unscreened
        aliases.update({(task.value, k): v for k, v in al.items() if v})
        return [o for o in options if key(o) in kept]

    optimizers = values("optimizer", space.optimizers, str)
    precisions = values("precision", space.precisions, lambda p: str(p.value))
    attentions = values("attention", space.attentions, lambda a: str(a.value))
    combos = []
    for o, p, a in itertools.product(optimizers, precisions, attentions):
        combos.append(make(o, a, p))
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


def _screen_layouts(
    s: _Search, layouts: list[Layout], ref: TrainingConfig
) -> tuple[list[Layout], dict[str, list[str]]]:
    """Layouts equal to another fold into it; layouts no better in memory, time and rule
    score than another are pruned (at the reference plan, one sample per device)."""
    pts = []
    for i, lay in enumerate(layouts):
        # One sample per micro-batch, accumulated over the whole per-replica batch: every
        # layout then steps over the same global batch (times compare), and pipelines see
        # as many micro-batches as they will run with (their bubble, not a worst case).
        per, _ = per_replica_batch(s.batch, lay.dp)
        plain = lay.apply(ref).model_copy(update={"micro_batch": 1, "grad_accumulation": per})
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
    by_split: dict[tuple[int, int, int, int], list[_Point]] = {}
    label_of = {lay.label: lay for lay in layouts}
    for pt in pts:
        if pt.key in al:
            lay = label_of[pt.key]
            by_split.setdefault((lay.tp, lay.pp, lay.vp, lay.ep), []).append(pt)
    for group in by_split.values():
        kept, _al, _ = screen(group, prune=PRUNE_LAYOUTS)
        heads.update(kept)
    return [lay for lay in layouts if lay.label in heads], {k: v for k, v in al.items() if v}


def _best_layouts(s: _Search, layouts: list[Layout], refs: list[TrainingConfig]) -> list[Layout]:
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
    return chosen


def plain_layout(ctx: Context) -> Layout:
    """Data parallel over every device, no sharding."""
    w = ctx.workload
    return Layout(world_size=w.world_size, gpus_per_node=max(w.gpus, 1), dp=w.world_size)
