"""Rule and compatibility filters of the plan search: which technique sets may go together.

:func:`compatible` holds the technique clash table (incompatible ids, required compute
dtypes) and the task, offload and pipeline clashes; :func:`hard_constraint` the rules'
exclusions and requirements. :class:`Constraints` is both for one search: it builds the
clash table once and memoises each verdict (the search asks thousands of times).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from advisor.config import Offload, Precision, Task, TrainingConfig
from advisor.memory import MemoryEstimate, MemoryTotals
from advisor.plan.models import Rejection, RejectionKind
from advisor.plan.space import Context, describe_config
from advisor.rules.candidates import config_techniques
from advisor.rules.engine import Decision, requirement_rules
from advisor.rules.taxonomy import Category, StateKind, Taxonomy

# Technique id -> (its incompatible ids, its required compute dtypes).
ClashTable = dict[str, tuple[frozenset[str], frozenset[str]]]


def clash_table(tax: Taxonomy) -> ClashTable:
    """Each technique's incompatible ids and required compute dtypes (a search builds it
    once, in :class:`Constraints`)."""
    return {
        t.id: (frozenset(t.incompatible_with), frozenset(d.value for d in t.requires.dtypes))
        for t in tax.techniques
    }


class Constraints:
    """The rule and compatibility verdicts of one search, with what they derive from the
    taxonomy (the clash table, the hardware requirements' rationales) built once."""

    def __init__(self, ctx: Context, decision: Decision) -> None:
        self.ctx, self.decision = ctx, decision
        self.clashes = clash_table(ctx.taxonomy)
        self._rationales: dict[str, str] | None = None  # built on the first hardware clash
        self._verdicts: dict[tuple[object, ...], tuple[str | None, RejectionKind]] = {}

    def compatible(self, config: TrainingConfig, techniques: Sequence[str]) -> str | None:
        """Why a configuration's techniques cannot go together (None: they can)."""
        return _compatible(self.clashes, config, techniques, self.ctx.target.fast_bf16)

    def hard_constraint(self, techniques: Sequence[str]) -> str | None:
        """Why the rules exclude a plan (None: they do not)."""
        return _hard_constraint(self.ctx, self.decision, techniques, self._rationale)

    def verdict(self, c: TrainingConfig, techniques: list[str]) -> tuple[str | None, RejectionKind]:
        """Why the rules or compatibility exclude ``c`` (None: they do not), memoised on
        the techniques and the few fields compatible() reads."""
        layout = c.layout
        key = (
            tuple(techniques),
            c.precision,
            c.task,
            c.savers.offload,
            layout.data_parallel,
            layout.pipeline_parallel,
        )
        known = self._verdicts.get(key)
        if known is None:
            reason = self.hard_constraint(techniques)
            kind: RejectionKind = "rule"
            if reason is None:
                reason, kind = self.compatible(c, techniques), "incompatible"
            known = self._verdicts[key] = (reason, kind)
        return known

    def _rationale(self, rule_id: str) -> str:
        if self._rationales is None:
            self._rationales = requirement_rationales(self.ctx.taxonomy)
        return self._rationales[rule_id]


def compatible(ctx: Context, config: TrainingConfig, techniques: Sequence[str]) -> str | None:
    """Why a configuration's techniques cannot go together (None: they can).

    Builds the clash table for this one question; a search asks through its
    :class:`Constraints`, which builds it once."""
    return _compatible(clash_table(ctx.taxonomy), config, techniques, ctx.target.fast_bf16)


def _compatible(
    table: ClashTable, config: TrainingConfig, techniques: Sequence[str], fast_bf16: bool = True
) -> str | None:
    savers, layout = config.savers, config.layout
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
    if config.task is Task.QLORA and fast_bf16 and config.precision in _FP16:
        # NOTE: QLoRA computes in bf16 (Dettmers et al. 2023); fp16 compute
        # (bnb_4bit_compute_dtype=float16) is the fallback for GPUs without bf16.
        return "QLoRA computes in bf16 where the GPU has it; fp16 is the Volta/Turing fallback"
    if config.task is Task.LORA and config.precision is Precision.FP8_MIXED:
        return "fp8 recipes (Transformer Engine) train full layers, not adapters"
    if config.task in (Task.LORA, Task.QLORA) and (
        savers.offload is not Offload.NONE or layout.pipeline_parallel > 1
    ):
        return "adapter states are megabytes: nothing worth offloading or pipelining"
    offload_params = savers.offload.params or savers.offload.nvme
    if layout.data_parallel > 1 and offload_params and layout.sharding.zero_stage < 3:
        return "parameter and NVMe offload need ZeRO stage 3 (DeepSpeed ZeRO-Infinity)"
    if savers.offload is not Offload.NONE and layout.pipeline_parallel > 1:
        return "pipeline engines (DeepSpeed, Megatron-LM) do not offload states"
    if savers.optimizer_in_backward and layout.pipeline_parallel > 1:
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


_FP16 = frozenset({Precision.AMP_FP16, Precision.FP16_MIXED, Precision.FP16})


def _compute_dtypes(precision: Precision) -> frozenset[str]:
    return _COMPUTE_DTYPES[precision]


# Ids that a rule may require: then a plan without them is out.
_REQUIRABLE = frozenset(
    {
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
)


def requirement_rationales(tax: Taxonomy) -> dict[str, str]:
    """Each hardware requirement rule's id, with its rationale as a rejection states it."""
    return {
        lr.rule.id: lr.rule.rationale.removeprefix("From the taxonomy: ").rstrip(".")
        for lr in requirement_rules(tax)
    }


def hard_constraint(ctx: Context, decision: Decision, techniques: Sequence[str]) -> str | None:
    """Why the rules exclude a plan (None: they do not).

    Reads the requirement rules afresh where a hardware requirement excludes the plan; a
    search asks through its :class:`Constraints`, which reads them once."""
    return _hard_constraint(
        ctx, decision, techniques, lambda rule_id: requirement_rationales(ctx.taxonomy)[rule_id]
    )


def _hard_constraint(
    ctx: Context,
    decision: Decision,
    techniques: Sequence[str],
    rationale: Callable[[str], str],
) -> str | None:
    for tid in techniques:
        if tid in decision.excluded:
            rules = decision.excluded[tid]
            hardware = [r for r in rules if r.startswith("requires-")]
            if hardware:
                return rationale(hardware[0])
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
