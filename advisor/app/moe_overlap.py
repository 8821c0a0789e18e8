"""What a schedule that hides the expert all-to-alls needs, checked on the user's flags."""

from __future__ import annotations

from advisor.config import Checkpointing, MoeDispatcher, MoeOverlap
from advisor.errors import UserError


def check_moe_overlap(
    overlap: MoeOverlap,
    *,
    expert_parallel: int,
    dispatcher: MoeDispatcher,
    checkpointing: Checkpointing,
    pipeline_parallel: int,
    virtual_stages: int,
    grad_accumulation: int,
) -> None:
    """Refuse an all-to-all overlap the named schedule cannot run.

    ``a2a-overlap``: Megatron-Core's ``TransformerConfig.__post_init__`` asserts expert
    parallelism, the alltoall or flex dispatcher, no full recomputation, and virtual
    pipeline stages when PP > 1. ``dualpipe``: DeepSeek-V3's DualPipe (arXiv:2412.19437,
    sec. 3.2.1) "only requires that the pipeline stages and micro-batches be divisible by 2".

    Raises:
        UserError: naming what is missing.
    """
    if overlap is MoeOverlap.NONE:
        return
    flag = f"--moe-overlap {overlap.value}"
    if expert_parallel < 2:
        raise UserError(
            f"{flag} hides expert-parallel all-to-alls, but --expert-parallel is 1",
            "give --expert-parallel 2 or more, or drop --moe-overlap",
        )
    if overlap is MoeOverlap.A2A_OVERLAP:
        if dispatcher is MoeDispatcher.ALLGATHER:
            raise UserError(
                f"{flag} runs with the alltoall or flex dispatcher only (Megatron-Core)",
                "use --moe-dispatcher alltoall or flex",
            )
        if checkpointing is Checkpointing.FULL:
            raise UserError(
                f"{flag} cannot run with full recomputation (Megatron-Core)",
                "use --checkpointing selective or none",
            )
        if pipeline_parallel > 1 and virtual_stages < 2:
            raise UserError(
                f"{flag} with pipeline parallelism needs virtual stages (Megatron-Core)",
                "give --virtual-stages 2 or more",
            )
        return
    if pipeline_parallel < 2 or pipeline_parallel % 2 or grad_accumulation % 2:
        raise UserError(
            f"{flag} needs an even number of pipeline stages (2 or more) and of "
            f"micro-batches, got {pipeline_parallel} and {grad_accumulation}",
            "give an even --pipeline-parallel and --grad-accumulation",
        )
