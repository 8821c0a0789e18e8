"""MoE layouts in the exports: Megatron-LM's expert, expert tensor, dispatcher and capacity
flags (checked against core v0.19.0's own argument list), torchtitan's expert mesh rules
(ParallelDims: ETP = TP or 1), DeepSpeed-MoE's layer arguments, and stated changes (refused
by ``--emit`` without ``--force``) where an engine cannot express the plan."""

from __future__ import annotations

from advisor.config import MoeDispatcher, Sharding, Task, TrainingConfig
from advisor.export import emit_deepspeed, emit_megatron, emit_torchtitan
from tests.export.test_emit_layouts import MEG_FLAGS, _check_torchtitan, _megatron_args

# DeepSeek-V3 as NVIDIA runs it (issue 24): TP2 PP16 EP64 DP32, expert tensor parallelism 1.
DSV3 = TrainingConfig(
    task=Task.PRETRAIN,
    gpus=32,
    tensor_parallel=2,
    pipeline_parallel=16,
    expert_parallel=64,
    sharding=Sharding.ZERO1,
    micro_batch=1,
    grad_accumulation=16,
)


def _flags(config: TrainingConfig, nodes: int) -> dict[str, str | None]:
    args = _megatron_args(emit_megatron(config, nodes=nodes).text)
    for flag, value in args:
        assert flag in MEG_FLAGS, flag
        choices = MEG_FLAGS[flag]["choices"]
        assert MEG_FLAGS[flag]["takes_value"] is (value is not None), flag
        if choices:
            assert value in choices, (flag, value)
    return dict(args)


def test_megatron_writes_the_folded_expert_layout() -> None:
    # Megatron's default ETP (= TP 2) does not fold 64 experts ranks into TP 2 x DP 32 = 64
    # ranks; ETP 1 does: expert-data-parallel = 64 / (1 x 64) = 1.
    assert DSV3.layout.expert_tp == 1 and DSV3.layout.expert_data_parallel == 1
    text = emit_megatron(DSV3, nodes=128).text
    assert "expert tensor 1 x expert 64 x expert data 1" in text
    got = _flags(DSV3, nodes=128)
    assert got["--expert-model-parallel-size"] == "64"
    assert got["--expert-tensor-parallel-size"] == "1"
    # Megatron's default dispatcher is allgather: the planned all-to-all is written out.
    assert got["--moe-token-dispatcher-type"] == "alltoall"
    assert "--moe-expert-capacity-factor" not in got  # dropless, Megatron's default


def test_megatron_capacity_and_flex_dispatcher() -> None:
    config = DSV3.with_(
        capacity_factor=1.25, pad_to_capacity=True, moe_dispatcher=MoeDispatcher.FLEX
    )
    got = _flags(config, nodes=128)
    assert got["--moe-expert-capacity-factor"] == "1.25"
    assert "--moe-pad-expert-input-to-capacity" in got
    assert got["--moe-token-dispatcher-type"] == "flex"
    assert got["--moe-flex-dispatcher-backend"] == "deepep"
    # Where ETP equals TP (Megatron's default) it is not repeated.
    same = _flags(DSV3.with_(expert_parallel=32, expert_tensor_parallel=2), nodes=128)
    assert "--expert-tensor-parallel-size" not in same


def test_torchtitan_expert_mesh() -> None:
    # ETP 1 borrows all TP ranks: ep % tp == 0 and dp_shard x tp % ep == 0 (8 x 2 % 16).
    config = TrainingConfig(
        task=Task.PRETRAIN,
        gpus=8,
        tensor_parallel=2,
        expert_parallel=16,
        expert_tensor_parallel=1,
        sharding=Sharding.FSDP,
    )
    emission = emit_torchtitan(config, nodes=2)
    flat = _check_torchtitan(emission.text)
    assert not emission.differs, emission.reason
    assert flat["parallelism.expert_parallel_degree"] == 16
    assert flat["parallelism.expert_tensor_parallel_degree"] == 1
    # ETP = TP borrows only FSDP shard ranks: 8 % 16 != 0, so torchtitan cannot build it.
    refused = emit_torchtitan(config.with_(expert_parallel=16, expert_tensor_parallel=2), nodes=4)
    assert refused.differs and "device mesh" in refused.reason
    # DeepEP is torchtitan's expert_parallel_comm_backend; an all-gather dispatcher and a
    # capacity factor are not expressible (its MoE is dropless all-to-all).
    flex = emit_torchtitan(config.with_(moe_dispatcher=MoeDispatcher.FLEX), nodes=2)
    assert _check_torchtitan(flex.text)["parallelism.expert_parallel_comm_backend"] == "deepep"
    assert not flex.differs
    gather = emit_torchtitan(config.with_(moe_dispatcher=MoeDispatcher.ALLGATHER), nodes=2)
    assert gather.differs and "all-to-all only" in gather.reason
    dropping = emit_torchtitan(config.with_(capacity_factor=1.0), nodes=2)
    assert dropping.differs and dropping.expressed_config.layout.capacity_factor is None


def test_deepspeed_moe_layer_arguments() -> None:
    config = TrainingConfig(task=Task.PRETRAIN, gpus=16, expert_parallel=8, micro_batch=1)
    emission = emit_deepspeed(config, nodes=2)
    note = next(n for n in emission.notes if "deepspeed.moe.layer.MoE" in n)
    assert "ep_size=8" in note and "drop_tokens=False" in note
    assert "2-rank expert-data-parallel group" in note  # 16 / 8
    assert not emission.differs
    # DeepSpeed's gates pad to capacity: a drop-only plan becomes a padded one, stated.
    capped = emit_deepspeed(config.with_(capacity_factor=1.0), nodes=2)
    assert capped.differs and capped.expressed_config.layout.pad_to_capacity
    assert any("capacity_factor=1, drop_tokens=True" in n for n in capped.notes)
    gather = emit_deepspeed(config.with_(moe_dispatcher=MoeDispatcher.ALLGATHER), nodes=2)
    assert gather.differs and "all-to-all only" in gather.reason
