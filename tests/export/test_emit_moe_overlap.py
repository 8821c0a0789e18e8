"""The all-to-all overlap in the engines' own terms: Megatron-Core's batch-level EP A2A
overlap flags (megatron/core/transformer/moe/README.md: ``--overlap-moe-expert-parallel-comm
--delay-wgrad-compute``), DualPipe as a stated change (Megatron-LM has none), and engines
without either schedule moving the plan to exposed all-to-alls."""

from __future__ import annotations

import shlex

from advisor.config import Checkpointing, MoeOverlap, Sharding, Stack, Task, TrainingConfig
from advisor.export import accelerate_emission, emit_megatron, emit_torchtitan, torch_emission


def _config(overlap: MoeOverlap) -> TrainingConfig:
    return TrainingConfig(
        task=Task.PRETRAIN,
        gpus=16,
        expert_parallel=8,
        micro_batch=1,
        sharding=Sharding.ZERO1,
        stack=Stack.FUSED,
        moe_overlap=overlap,
    )


def _flags(text: str) -> set[str]:
    body = text.split("MEGATRON_ARGS=(", 1)[1].rsplit(")", 1)[0]
    return {shlex.split(line)[0] for line in body.strip().splitlines()}


def test_megatron_writes_the_a2a_overlap_flags() -> None:
    emission = emit_megatron(_config(MoeOverlap.A2A_OVERLAP), nodes=2)
    flags = _flags(emission.text)
    assert {"--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute"} <= flags
    assert not emission.differs
    plain = _flags(emit_megatron(_config(MoeOverlap.NONE), nodes=2).text)
    assert "--overlap-moe-expert-parallel-comm" not in plain


def test_megatron_has_no_dualpipe() -> None:
    emission = emit_megatron(_config(MoeOverlap.DUALPIPE), nodes=2)
    assert emission.differs and "DualPipe" in emission.reason
    assert emission.expressed_config.layout.moe_overlap is MoeOverlap.A2A_OVERLAP


def test_torchtitan_exposes_the_all_to_alls() -> None:
    emission = emit_torchtitan(_config(MoeOverlap.A2A_OVERLAP), nodes=2)
    assert emission.differs and "a2a-overlap" in emission.reason
    assert emission.expressed_config.layout.moe_overlap is MoeOverlap.NONE


def test_megatron_never_writes_an_overlap_its_asserts_refuse() -> None:
    # Megatron-Core's TransformerConfig asserts virtual stages with PP > 1 and no full
    # recomputation (recompute_granularity != 'full', no recompute_method) for the A2A
    # overlap: a DualPipe plan on PP 2 without interleaving, and a plan whose torchtitan-style
    # recomputation Megatron runs as full, keep their all-to-alls exposed, and say so.
    dual = _config(MoeOverlap.DUALPIPE).with_(pipeline_parallel=2, grad_accumulation=8)
    emission = emit_megatron(dual, nodes=2)
    assert "--overlap-moe-expert-parallel-comm" not in _flags(emission.text)
    assert emission.expressed_config.layout.moe_overlap is MoeOverlap.NONE
    assert "virtual stages" in emission.reason
    per_op = _config(MoeOverlap.A2A_OVERLAP).with_(checkpointing=Checkpointing.SELECTIVE_OP)
    emission = emit_megatron(per_op, nodes=2)
    flags = _flags(emission.text)
    assert "--recompute-granularity" in flags
    assert "--overlap-moe-expert-parallel-comm" not in flags
    assert emission.expressed_config.layout.moe_overlap is MoeOverlap.NONE
    interleaved = _config(MoeOverlap.DUALPIPE).with_(
        pipeline_parallel=2, virtual_stages=2, grad_accumulation=8
    )
    emission = emit_megatron(interleaved, nodes=2)
    assert "--overlap-moe-expert-parallel-comm" in _flags(emission.text)
    assert emission.expressed_config.layout.moe_overlap is MoeOverlap.A2A_OVERLAP


def test_engines_without_expert_parallelism_drop_the_schedule_and_say_so() -> None:
    fsdp = _config(MoeOverlap.A2A_OVERLAP).with_(sharding=Sharding.FSDP)
    emission = accelerate_emission(fsdp, nodes=2)
    assert emission.expressed_config.layout.moe_overlap is MoeOverlap.NONE
    assert emission.differs and "a2a-overlap" in emission.reason
    snippet = torch_emission(_config(MoeOverlap.A2A_OVERLAP))
    assert any("a2a-overlap schedule" in n for n in snippet.notes)
