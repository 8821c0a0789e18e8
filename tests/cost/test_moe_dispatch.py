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


def test_expert_gradients_are_reduced_over_the_expert_data_parallel_group_only() -> None:
    """Megatron-Core reduces the routed experts' gradients over the expert-data-parallel
    group (megatron/core/parallel_state.py ``_EXPERT_DATA_PARALLEL_GROUP``), DeepSpeed-MoE
    likewise: with EP 8 over 8 data-parallel ranks each expert lives on one rank and only
    the dense parameters' gradients are all-reduced. The exposed all-reduce is then at most
    the dense share of the EP 1 one (ring volume 2 (n - 1) / n x bytes; the part hidden
    under backward only lowers it)."""
    from advisor.config import Precision, Stack, Task, TrainingConfig
    from advisor.cost import predict_step_time
    from advisor.hardware.profiles import get_hardware_profile
    from advisor.model import get_model_profile

    spec = get_model_profile("mixtral-8x7b")
    hw = get_hardware_profile("h100-sxm-80gb")

    def dp_comm(ep: int) -> float:
        config = TrainingConfig(
            task=Task.PRETRAIN,
            precision=Precision.BF16_MIXED,
            micro_batch=1,
            seq_len=128,
            stack=Stack.FUSED,
            gpus=8,
            expert_parallel=ep,
        )
        st = predict_step_time(spec, config, calibration=None, hardware=hw)
        return st.components["communication"].seconds

    routed = spec.moe_layer_count() * spec.num_experts * spec.expert_parameter_count()
    dense_share = 1 - routed / spec.parameter_count()
    assert 0 < dp_comm(8) <= dp_comm(1) * dense_share * (1 + 1e-9)
