"""MoE layouts as Megatron-Core builds them (megatron/core/parallel_state.py): the routed
experts split over expert x expert tensor parallel ranks and their optimizer states sharded
over the expert-data-parallel group, tensor x context x data / (expert tensor x expert),
by the distributed optimizer; capacity factors pad the experts' batches
(megatron/core/transformer/moe/README.md: capacity = tokens x topk x factor / experts).

The expected figures are computed from the model's published shapes and those rules, not
read back from the code.
"""

from __future__ import annotations

import math

import pytest

from advisor.config import ParallelLayout, Sharding, Task, TrainingConfig
from advisor.errors import UserError
from advisor.memory import estimate_memory
from advisor.memory.moe import expert_fold_problem
from advisor.model import load_model_profiles
from advisor.rules.taxonomy import load_taxonomy

PROFILES = load_model_profiles()
TAX = {t.id: t for t in load_taxonomy().techniques}
MIXTRAL = PROFILES["mixtral-8x7b"]
# Mixtral 8x7B (config.json): 32 layers, hidden 4096, expert width 14336, 8 experts, SwiGLU
# experts of three matrices each.
EXPERT_PARAMS = 32 * 8 * 3 * 4096 * 14336


def _mixtral(**layout: object) -> TrainingConfig:
    return TrainingConfig(task=Task.PRETRAIN, micro_batch=1, seq_len=1024, **layout)


def test_expert_states_are_sharded_over_the_expert_data_parallel_group() -> None:
    """EP 8 over DP 8 leaves each expert on one rank (expert-data-parallel 1): its fp32
    master weights and Adam states are not sharded further; the dense rest is, over 8."""
    config = _mixtral(gpus=8, expert_parallel=8, sharding=Sharding.ZERO1)
    assert config.layout.expert_data_parallel == 1
    est = estimate_memory(MIXTRAL, config, optimizer=TAX["adamw"])
    dense = MIXTRAL.parameter_count() - EXPERT_PARAMS
    experts_here = EXPERT_PARAMS // 8
    # bf16-mixed Adam: fp32 master (4 B) and m, v (8 B) per parameter (ZeRO's 2 + 2 + 12).
    assert est.breakdown["master_weights"] == pytest.approx(
        4 * (dense / 8 + experts_here), rel=1e-6
    )
    assert est.breakdown["optimizer_states"] == pytest.approx(
        8 * (dense / 8 + experts_here), rel=1e-6
    )
    # Weights and gradients (bf16) are not sharded by ZeRO-1: the dense part and 1/8 of the
    # experts (EP 8, expert tensor parallelism 1).
    assert est.breakdown["weights"] == pytest.approx(2 * (dense + experts_here), rel=1e-6)


@pytest.mark.parametrize(
    ("tp", "dp", "ep", "etp"),
    [(1, 16, 1, 1), (1, 16, 8, 1), (2, 8, 8, 1), (2, 8, 4, 2), (4, 4, 8, 1), (2, 8, 2, 2)],
)
def test_distributed_optimizer_expert_states_depend_on_the_fold_only(
    tp: int, dp: int, ep: int, etp: int
) -> None:
    """Under the distributed optimizer every rank of a stage ends up with
    1 / (tensor x data parallel) of the experts' states however the fold factors them:
    params / (ep x etp) sharded over tp x dp / (ep x etp)."""
    config = _mixtral(
        gpus=dp,
        tensor_parallel=tp,
        expert_parallel=ep,
        expert_tensor_parallel=etp,
        sharding=Sharding.ZERO1,
    )
    est = estimate_memory(MIXTRAL, config, optimizer=TAX["adamw"])
    base = estimate_memory(
        MIXTRAL,
        _mixtral(gpus=dp, tensor_parallel=tp, expert_parallel=1, sharding=Sharding.ZERO1),
        optimizer=TAX["adamw"],
    )
    # The experts' Adam states: 8 bytes per parameter, over all tp x dp ranks of the stage.
    expected_delta = 0.0  # the fold changes where the states are, not how many per rank
    got = est.breakdown["optimizer_states"] - base.breakdown["optimizer_states"]
    assert abs(got - expected_delta) <= 8 * 4096  # rounding of a few tensors
    # The experts' bf16 weights: params / (ep x etp) on each rank.
    dense_weights = base.breakdown["weights"] - 2 * EXPERT_PARAMS / tp
    assert est.breakdown["weights"] - dense_weights == pytest.approx(
        2 * EXPERT_PARAMS / (ep * etp), rel=1e-3
    )


def test_the_layouts_nvidia_runs_fold() -> None:
    """DeepSeek-V3 at TP2 PP16 EP64 DP32 and Qwen3-235B at TP2 PP8 EP32 DP16 (issue 24):
    with Megatron's default ETP (= TP) they do not fold; with ETP 1 they do, and Megatron's
    RuntimeError condition, world % (etp x ep x pp), holds."""
    for tp, pp, ep, dp, experts in ((2, 16, 64, 32, 256), (2, 8, 32, 16, 128)):
        world = tp * pp * dp
        layout = ParallelLayout(
            tensor_parallel=tp, pipeline_parallel=pp, expert_parallel=ep, data_parallel=dp
        )
        assert layout.expert_tp == 1  # resolved: ETP = TP = 2 would need 128 | 64
        assert world % (layout.expert_tp * ep * pp) == 0
        assert expert_fold_problem(layout, experts) is None
        pinned = layout.updated(expert_tensor_parallel=2)
        assert world % (2 * ep * pp) != 0
        assert expert_fold_problem(pinned, experts) is not None
    dsv3 = PROFILES["deepseek-v3"]
    config = TrainingConfig(
        task=Task.PRETRAIN,
        gpus=32,
        tensor_parallel=2,
        pipeline_parallel=16,
        expert_parallel=64,
        sharding=Sharding.ZERO1,
        grad_accumulation=16,
    )
    assert estimate_memory(dsv3, config, optimizer=TAX["adamw"]).total_bytes < 80 * 2**30


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ({"gpus": 8, "expert_parallel": 3}, "does not divide the model's 8 experts"),
        ({"gpus": 4, "expert_parallel": 8}, "does not divide the 4 ranks"),
        ({"gpus": 8, "expert_parallel": 4, "expert_tensor_parallel": 4}, "4 x 4"),
    ],
)
def test_layouts_megatron_refuses_are_refused(layout: dict[str, int], match: str) -> None:
    with pytest.raises(UserError, match=match):
        estimate_memory(MIXTRAL, _mixtral(**layout), optimizer=TAX["adamw"])


def test_a_dense_model_refuses_expert_flags() -> None:
    spec = PROFILES["llama-3.1-8b"]
    for layout in ({"gpus": 2, "expert_parallel": 2}, {"capacity_factor": 1.0}):
        with pytest.raises(UserError, match="no experts"):
            estimate_memory(spec, _mixtral(**layout), optimizer=TAX["adamw"])


def test_padded_capacity_scales_the_routed_activations_linearly() -> None:
    """Padded to capacity, every expert runs tokens x topk x factor / experts rows, so the
    routed activations grow in proportion to the factor: the step from 1.0 to 2.0 is twice
    the step from 1.0 to 1.5; dropping without padding never adds rows."""

    def acts(**moe: object) -> int:
        config = _mixtral(gpus=8, expert_parallel=8, **moe)
        return estimate_memory(MIXTRAL, config, optimizer=TAX["adamw"]).breakdown["activations"]

    dropless = acts()
    assert acts(capacity_factor=1.0, pad_to_capacity=True) == pytest.approx(dropless, abs=64)
    step_15 = acts(capacity_factor=1.5, pad_to_capacity=True) - dropless
    step_20 = acts(capacity_factor=2.0, pad_to_capacity=True) - dropless
    assert step_15 > 0
    assert step_20 == pytest.approx(2 * step_15, rel=1e-3)
    assert acts(capacity_factor=2.0) == pytest.approx(dropless, abs=64)  # drop, no pad
    assert acts(capacity_factor=0.5) < dropless
    assert math.isclose(
        dropless - acts(capacity_factor=0.5), step_15, rel_tol=1e-3
    )  # half the rows, either way


def test_the_allgather_dispatcher_keeps_the_gathered_routing_slices() -> None:
    """Megatron's all-gather dispatcher (MoEAllGatherTokenDispatcher) gathers the routing
    map and probabilities of the whole expert tensor x expert group and keeps the local
    experts' slices until the combine: the map's local columns (bool, E / ep per gathered
    token) and the probabilities of the rows routed here (fp32, k / ep per gathered
    token). Mixtral, EP 8, 1024 tokens per rank, 32 MoE blocks kept: 32 x 8 x 1024 x
    (8/8 + 4 x 2/8) bytes more than the all-to-all dispatcher keeps."""
    from advisor.config import MoeDispatcher

    a2a = estimate_memory(MIXTRAL, _mixtral(gpus=8, expert_parallel=8), optimizer=TAX["adamw"])
    ag = estimate_memory(
        MIXTRAL,
        _mixtral(gpus=8, expert_parallel=8, moe_dispatcher=MoeDispatcher.ALLGATHER),
        optimizer=TAX["adamw"],
    )
    expected = 32 * 8 * 1024 * (8 / 8 + 4 * 2 / 8)
    got = ag.breakdown["activations"] - a2a.breakdown["activations"]
    assert got == pytest.approx(expected, abs=32)
