"""Token-dispatch volumes against a simulation of the dispatchers: tokens routed to ``k``
distinct experts drawn uniformly (balanced routing), experts placed contiguously on the
expert-parallel ranks as Megatron-Core places them (``local_expert_indices``), and the rows
each dispatcher sends counted token by token:

- all-to-all (Megatron ``MoEAlltoAllTokenDispatcher``; GShard; DeepSpeed-MoE): one row per
  token-expert pair whose expert lives on another rank; then the expert tensor group's
  all-gather of the ``etp - 1`` peers' rows;
- DeepEP (``flex``): one row per distinct remote rank a token's experts live on;
- all-gather (``MoEAllGatherTokenDispatcher``): every peer's rows, whatever the routing.
"""

from __future__ import annotations

import random

import pytest

from advisor.config import MoeDispatcher
from advisor.cost.moe import dispatch_volumes, ranks_reached

H, BYTES = 64, 2  # a small hidden width; bf16


def _simulate(experts: int, k: int, ep: int, tokens: int, seed: int = 0) -> tuple[float, float]:
    """(token-expert rows sent to other ranks, token copies sent to distinct other ranks)
    of one rank (rank 0) under uniform top-k routing."""
    rng = random.Random(seed)
    per_rank = experts // ep
    pairs = copies = 0
    for _ in range(tokens):
        chosen = rng.sample(range(experts), k)
        ranks = [e // per_rank for e in chosen]
        pairs += sum(1 for r in ranks if r != 0)
        copies += len({r for r in ranks if r != 0})
    return pairs, copies


@pytest.mark.parametrize(
    ("experts", "k", "ep"), [(8, 2, 8), (256, 8, 64), (128, 8, 32), (64, 6, 8), (8, 2, 4)]
)
def test_all_to_all_and_deepep_volumes_match_a_routing_simulation(
    experts: int, k: int, ep: int
) -> None:
    tokens = 20_000
    pairs, copies = _simulate(experts, k, ep, tokens)
    common = {"tokens": tokens, "hidden": H, "experts": experts, "top_k": k, "tp": 1, "cp": 1}
    a2a = dispatch_volumes(MoeDispatcher.ALLTOALL, **common, etp=1, ep=ep, act_bytes=BYTES)
    flex = dispatch_volumes(MoeDispatcher.FLEX, **common, etp=1, ep=ep, act_bytes=BYTES)
    assert a2a["all_to_all_dispatch"] == pytest.approx(pairs * H * BYTES, rel=0.02)
    assert a2a["all_to_all_combine"] == a2a["all_to_all_dispatch"]
    assert flex["all_to_all_dispatch"] == pytest.approx(copies * H * BYTES, rel=0.02)
    # DeepEP never sends more than all-to-all: one copy per rank, not per expert.
    assert flex["all_to_all_dispatch"] <= a2a["all_to_all_dispatch"]


def test_ranks_reached_bounds() -> None:
    # One expert per rank: k distinct experts reach k distinct ranks.
    assert ranks_reached(64, 8, 64) == pytest.approx(8.0)
    # All experts on one rank: one rank.
    assert ranks_reached(64, 8, 1) == 1.0
    # DeepSeek-V3 on 64 ranks (4 experts each), top-8: fewer than 8 ranks in expectation.
    assert 7.0 < ranks_reached(256, 8, 64) < 8.0


def test_expert_tensor_gather_and_sequence_split() -> None:
    """With TP 2 (sequence parallel) each rank holds tokens / 2; ETP 2 all-gathers the
    peer's k rows per token and reduce-scatters the outputs (Megatron: permute ->
    all-to-all(EP) -> all-gather(ETP))."""
    tokens, k, ep, etp, tp = 4096, 2, 4, 2, 2
    vol = dispatch_volumes(
        MoeDispatcher.ALLTOALL,
        tokens=tokens,
        hidden=H,
        experts=8,
        top_k=k,
        tp=tp,
        cp=1,
        etp=etp,
        ep=ep,
        act_bytes=BYTES,
    )
    local = tokens / tp
    assert vol["expert_tp_all_gather"] == (etp - 1) * local * k * H * BYTES
    assert vol["expert_tp_reduce_scatter"] == vol["expert_tp_all_gather"]
    assert vol["all_to_all_dispatch"] == local * k * (ep - 1) / ep * H * BYTES


def test_allgather_volume_is_the_group_s_rows_whatever_top_k() -> None:
    vols = [
        dispatch_volumes(
            MoeDispatcher.ALLGATHER,
            tokens=1024,
            hidden=H,
            experts=8,
            top_k=k,
            tp=1,
            cp=1,
            etp=1,
            ep=8,
            act_bytes=BYTES,
        )
        for k in (1, 2, 8)
    ]
    assert vols[0] == vols[1] == vols[2]
    assert vols[0]["reduce_scatter_combine"] == 7 * 1024 * H * BYTES


def test_padded_capacity_exchanges_the_padding() -> None:
    """Megatron's drop-and-pad exchanges capacity x experts rows per rank: a factor of 1.5
    sends 1.5 times the dropless rows."""
    common = {"tokens": 1024, "hidden": H, "experts": 8, "top_k": 2, "tp": 1, "cp": 1}
    base = dispatch_volumes(MoeDispatcher.ALLTOALL, **common, etp=1, ep=8, act_bytes=BYTES)
    padded = dispatch_volumes(
        MoeDispatcher.ALLTOALL, **common, etp=1, ep=8, act_bytes=BYTES, capacity_scale=1.5
    )
    assert padded["all_to_all_dispatch"] == pytest.approx(1.5 * base["all_to_all_dispatch"])


def test_no_exchange_without_expert_or_expert_tensor_parallelism() -> None:
    assert not dispatch_volumes(
        MoeDispatcher.ALLTOALL,
        tokens=1024,
        hidden=H,
        experts=8,
        top_k=2,
        tp=1,
        cp=1,
        etp=1,
        ep=1,
        act_bytes=BYTES,
    )
