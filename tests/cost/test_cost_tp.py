"""Tensor and pipeline parallelism in the GPU step-time model.

Structure only (no absolute time): overlapped TP hides the fitted share of its collectives,
FP8 under TP casts each block input once on its sequence shard, and a pipeline runs at the
pace of its busiest stage (whole layers; Llama 3's uneven split).
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.config import Checkpointing, Precision, Sharding, Stack, Task, TrainingConfig
from advisor.cost import predict_step_time, stage_layers
from advisor.hardware.profiles import get_hardware_profile
from advisor.model import get_model_profile

H100 = get_hardware_profile("h100-sxm-80gb")
A100 = get_hardware_profile("a100-sxm-80gb")
LLAMA70 = get_model_profile("llama-3.1-70b")
LLAMA405 = get_model_profile("llama-3.1-405b")


def _config(**kw: Any) -> TrainingConfig:
    base: dict[str, Any] = dict(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        micro_batch=2,
        seq_len=8192,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.FULL,
        tensor_parallel=8,
    )
    return TrainingConfig(**(base | kw))


def _parts(spec: Any, hw: Any = H100, **kw: Any) -> dict[str, float]:
    st = predict_step_time(spec, _config(**kw), calibration=None, hardware=hw)
    return {k: v.seconds for k, v in st.components.items()} | {"total": st.seconds}


def test_hopper_profile_carries_a_sourced_tp_overlap_share() -> None:
    eff = H100.gpu_efficiency()
    assert eff.tp_overlap is not None
    # At most the (t-1)/t chunks of a decomposed TP8 collective can hide (Wang et al. 2023).
    assert 0.0 < eff.tp_overlap.value <= 7 / 8
    assert "gpu_fit" in eff.tp_overlap.source and "async" in eff.tp_overlap.source


def test_overlapped_tp_hides_the_fitted_share_and_is_the_fused_default() -> None:
    share = H100.gpu_efficiency().tp_overlap
    assert share is not None
    exposed = _parts(LLAMA70, tp_comm_overlap=False)["tensor_parallel_comm"]
    fused_default = _parts(LLAMA70)["tensor_parallel_comm"]
    assert fused_default == pytest.approx(exposed * (1 - share.value))
    # Hugging Face modules run plain TP; asking for overlap there gets the same share.
    assert _parts(LLAMA70, stack=Stack.HF)["tensor_parallel_comm"] == pytest.approx(exposed)
    hf_async = _parts(LLAMA70, stack=Stack.HF, tp_comm_overlap=True)["tensor_parallel_comm"]
    assert hf_async == pytest.approx(fused_default)


def test_no_overlap_is_assumed_where_none_was_fitted() -> None:
    # Ampere has no async-TP measurement: its TP collectives stay exposed either way.
    on = _parts(LLAMA70, hw=A100, tp_comm_overlap=True)["tensor_parallel_comm"]
    off = _parts(LLAMA70, hw=A100, tp_comm_overlap=False)["tensor_parallel_comm"]
    assert on == pytest.approx(off) and on > 0


def test_fp8_under_tp_casts_each_block_input_once_on_its_shard() -> None:
    # torchao's PrepareFloat8ModuleInput casts the attention and MLP inputs before the FP8
    # all-gather: the column-parallel inputs cost 1/t, the row-parallel layers' full-width
    # output gradients do not shrink, so the per-device cast time falls by more than 4x
    # from TP 1 to TP 8 but by less than 8x.
    one = _parts(LLAMA70, precision=Precision.FP8_MIXED, tensor_parallel=1)["fp8_casts"]
    eight = _parts(LLAMA70, precision=Precision.FP8_MIXED)["fp8_casts"]
    assert one / 8 < eight < one / 4


def test_stages_hold_whole_layers_and_llama3_lightens_the_end_stages() -> None:
    # Dubey et al. 2024, sec. 3.3.2: 126 layers, 16 stages of 8 one-layer chunks, one layer
    # fewer on the first and the last stage.
    assert stage_layers(126, 16, 8) == (8.0, 7.0)
    assert stage_layers(126, 16, 1) == (8.0, 7.0)
    # Megatron's even splits: the last stage carries the head on top of its share.
    assert stage_layers(96, 16, 2) == (6.0, 6.0)
    assert stage_layers(126, 1, 1) == (126.0, 126.0)


def test_the_head_runs_in_the_spare_of_a_lighter_last_stage() -> None:
    kw: dict[str, Any] = dict(
        micro_batch=1,
        checkpointing=Checkpointing.NONE,
        sharding=Sharding.ZERO1,
        grad_accumulation=32,
    )
    uneven = _parts(LLAMA405, pipeline_parallel=16, virtual_stages=8, **kw)
    even = _parts(LLAMA405, pipeline_parallel=14, virtual_stages=1, **kw)  # 9 layers each
    assert uneven["lm_head"] == 0.0 and uneven["loss_and_embedding"] == 0.0
    assert even["lm_head"] > 0.0
    # The busiest of 16 stages runs 8 whole layers, not 126/16 = 7.875.
    seven = _parts(LLAMA405, pipeline_parallel=18, virtual_stages=1, **kw)  # 7 layers each
    ratio = uneven["forward_backward"] / seven["forward_backward"]
    assert ratio == pytest.approx(8 / 7, rel=1e-9)
