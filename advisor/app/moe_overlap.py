"""What a schedule that hides the expert all-to-alls needs, checked on the user's flags
(``estimate`` on its explicit layout, ``recommend`` on what it pins before the search)."""

from __future__ import annotations

from typing import TypeVar

from advisor.config import Checkpointing, MoeBalance, MoeDispatcher, MoeOverlap, Precision
from advisor.cost.expert_overlap import overlap_problem
from advisor.errors import UserError
from advisor.model.spec import ModelSpec


def parse_moe_overlap(value: str, flag: str = "--moe-overlap") -> MoeOverlap:
    """The ``--moe-overlap`` value.

    Raises:
        UserError: naming the allowed values.
    """
    return _enum(MoeOverlap, value, flag)


def parse_moe_balance(value: str, flag: str = "--moe-balance") -> MoeBalance:
    """The ``--moe-balance`` value.

    Raises:
        UserError: naming the allowed values.
    """
    return _enum(MoeBalance, value, flag)


_E = TypeVar("_E", MoeOverlap, MoeBalance)


def _enum(kind: type[_E], value: str, flag: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(v.value for v in kind)
        raise UserError(f"invalid {flag} {value!r}", f"use one of: {allowed}") from None


def check_moe_overlap(
    overlap: MoeOverlap,
    *,
    expert_parallel: int,
    dispatcher: MoeDispatcher,
    checkpointing: Checkpointing,
    pipeline_parallel: int,
    virtual_stages: int,
    grad_accumulation: int,
    precision: Precision | None = None,
) -> None:
    """Refuse an all-to-all overlap the named schedule cannot run
    (:func:`advisor.cost.expert_overlap.overlap_problem`: Megatron-Core's assertions for
    ``a2a-overlap``, DeepSeek-V3's for ``dualpipe``).

    Raises:
        UserError: naming what is missing.
    """
    problem = overlap_problem(
        overlap,
        expert_parallel=expert_parallel,
        dispatcher=dispatcher,
        checkpointing=checkpointing,
        pipeline_parallel=pipeline_parallel,
        virtual_stages=virtual_stages,
        grad_accumulation=grad_accumulation,
        precision=precision,
    )
    if problem is not None:
        raise UserError(*problem)


def check_moe_pins(
    overlap: MoeOverlap | None,
    spec: ModelSpec,
    *,
    expert_parallel: int | None,
    pipeline_parallel: int | None,
) -> None:
    """Refuse, before ``recommend``'s search, a pinned ``--moe-overlap`` that no plan can run:
    a model without routed experts, or the pinned ``--expert-parallel``/``--pp`` that the
    schedule refuses (the same words as ``estimate``). What the pins leave open (layouts,
    recomputation, micro-batches) the search keeps to what the schedule runs.

    Raises:
        UserError: naming what is missing.
    """
    if overlap is None or overlap is MoeOverlap.NONE:
        return
    flag = f"--moe-overlap {overlap.value}"
    if spec.num_experts <= 1:
        raise UserError(
            f"{flag} hides expert-parallel all-to-alls, but {spec.name} has no routed experts",
            "drop --moe-overlap (it applies to mixture-of-experts models)",
        )
    if expert_parallel is not None and expert_parallel < 2:
        check_moe_overlap(
            overlap,
            expert_parallel=expert_parallel,
            dispatcher=MoeDispatcher.ALLTOALL,
            checkpointing=Checkpointing.NONE,
            pipeline_parallel=2,
            virtual_stages=1 if overlap is MoeOverlap.DUALPIPE else 2,
            grad_accumulation=2,
        )
    if overlap is MoeOverlap.DUALPIPE and pipeline_parallel is not None:
        check_moe_overlap(
            overlap,
            expert_parallel=2,
            dispatcher=MoeDispatcher.ALLTOALL,
            checkpointing=Checkpointing.NONE,
            pipeline_parallel=pipeline_parallel,
            virtual_stages=1,
            grad_accumulation=2,
        )
