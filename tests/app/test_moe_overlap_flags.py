"""``--moe-overlap`` refuses what the named schedule cannot run: Megatron-Core's
TransformerConfig assertions for the batch-level EP A2A overlap (expert parallelism, the
alltoall or flex dispatcher, no full recomputation, virtual stages with PP > 1) and
DualPipe's even pipeline stages and micro-batches (DeepSeek-V3 report, sec. 3.2.1) and its
one chunk per direction; ``recommend`` refuses a pin no plan can run, exit 2."""

from __future__ import annotations

from typing import Any

import pytest

from advisor.app.moe_overlap import check_moe_overlap
from advisor.config import Checkpointing, MoeDispatcher, MoeOverlap, Precision
from advisor.errors import UserError

_OK: dict[str, Any] = dict(
    expert_parallel=8,
    dispatcher=MoeDispatcher.ALLTOALL,
    checkpointing=Checkpointing.SELECTIVE,
    pipeline_parallel=4,
    virtual_stages=2,
    grad_accumulation=8,
)


def test_valid_layouts_pass() -> None:
    for overlap in MoeOverlap:
        # DualPipe runs one chunk per direction (no interleaving), Megatron-Core's overlap
        # needs interleaving with PP > 1.
        v = 1 if overlap is MoeOverlap.DUALPIPE else 2
        check_moe_overlap(overlap, **(_OK | {"virtual_stages": v}))


@pytest.mark.parametrize(
    ("overlap", "change", "words"),
    [
        (MoeOverlap.A2A_OVERLAP, {"expert_parallel": 1}, "--expert-parallel is 1"),
        (MoeOverlap.DUALPIPE, {"expert_parallel": 1}, "--expert-parallel is 1"),
        (MoeOverlap.A2A_OVERLAP, {"dispatcher": MoeDispatcher.ALLGATHER}, "alltoall or flex"),
        (MoeOverlap.A2A_OVERLAP, {"checkpointing": Checkpointing.FULL}, "full recomputation"),
        (MoeOverlap.A2A_OVERLAP, {"virtual_stages": 1}, "virtual stages"),
        (MoeOverlap.DUALPIPE, {"pipeline_parallel": 3, "virtual_stages": 1}, "even number"),
        (MoeOverlap.DUALPIPE, {"grad_accumulation": 7, "virtual_stages": 1}, "even number"),
        (MoeOverlap.DUALPIPE, {"virtual_stages": 2}, "one model chunk per direction"),
        # Megatron-Core: no recompute_method/num_layers (torchtitan's per-op and
        # every-n-th-block policies run as full there), and a bf16 or fp16 model.
        (MoeOverlap.A2A_OVERLAP, {"checkpointing": Checkpointing.SELECTIVE_LAYER}, "selective"),
        (MoeOverlap.A2A_OVERLAP, {"precision": Precision.FP32}, "bf16 or fp16 model"),
        (MoeOverlap.A2A_OVERLAP, {"precision": Precision.AMP_BF16}, "bf16 or fp16 model"),
    ],
)
def test_unrunnable_overlap_is_a_user_error(
    overlap: MoeOverlap, change: dict[str, Any], words: str
) -> None:
    with pytest.raises(UserError, match=words):
        check_moe_overlap(overlap, **(_OK | change))
