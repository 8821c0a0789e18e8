"""The per-search evaluator: memoised memory and step-time figures of configurations.

One :class:`Evaluator` is built per search and owns every memo of the models' answers (the
full memory estimate, the fit test's peak, the step time), keyed on the configuration it
was asked about; :class:`Plan` is one evaluated plan, which reads its full estimate back
from the evaluator that priced it.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from advisor.config import TrainingConfig
from advisor.memory import MemoryEstimate, MemoryTotals, optimizer_note
from advisor.plan.layout import Layout
from advisor.plan.models import RejectionKind, StepCost
from advisor.plan.space import (
    MEMORY_SAFETY_MARGIN,
    Context,
    estimate,
    estimate_totals,
    host_fits,
    usable_memory,
)
from advisor.rules.taxonomy import OptimizerMemory
from advisor.units import format_bytes

CostFn = Callable[[TrainingConfig], StepCost]

# Two values of a dimension are the same plan when memory and time differ by less than this
# (relative): below the models' own resolution, and invisible to a user.
EQUIVALENT = 0.005
# Every field of a configuration but its optimizer, in field order (see Evaluator._state_key).
_BUT_OPTIMIZER = operator.itemgetter(*(k for k in TrainingConfig.model_fields if k != "optimizer"))


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
    largest_fit: int = 0  # the largest micro-batch that fit (see geometry.fitting_prefix's hint)

    @functools.cached_property
    def memory(self) -> MemoryEstimate:
        """The full estimate (phases, breakdown, notes), built when a report row asks for
        it: of the hundreds of plans a search finds, the ranking reads only the peak."""
        return self.evaluator.memory(self.config)

    @functools.cached_property
    def tokens(self) -> int:
        return self.global_batch * self.config.batch.seq_len

    # NOTE: read ~140k times per search by the ranking and the screens; a plan never changes.
    @functools.cached_property
    def seconds_per_token(self) -> float:
        return self.cost.seconds / max(self.tokens, 1)


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
        other field (None when the optimizer has none: the model refuses it).

        NOTE: the fields are read off the configuration itself (every one but the
        optimizer; sub-records whole), not from a list kept by hand: a field added to
        TrainingConfig or to one of its sub-records is in the key without anyone
        remembering to add it."""
        mem = self.ctx.taxonomy.get(c.optimizer).memory
        if mem is None:
            return None
        return (mem, *_BUT_OPTIMIZER(c.__dict__))

    @property
    def counts(self) -> tuple[int, int]:
        """Configurations whose memory was evaluated (in full or for a fit test), and whose
        step time was."""
        return len(self._mem.keys() | self._totals.keys()), len(self._time)


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
