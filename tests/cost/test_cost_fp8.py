"""FP8 in the GPU step-time model: which kernels run in FP8 and what the scaling costs.

Structure only (no absolute time): torchao/Transformer Engine FP8 training runs the blocks'
linear layers in FP8 with dynamic scaling; attention and the LM head stay 16-bit.
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.config import Checkpointing, Precision, Stack, Task, TrainingConfig
from advisor.cost import predict_step_time
from advisor.hardware.profiles import get_hardware_profile
from advisor.model import get_model_profile

H100 = get_hardware_profile("h100-sxm-80gb")
L40S = get_hardware_profile("l40s")
LLAMA8 = get_model_profile("llama-3.1-8b")


def _config(
    precision: Precision, seq_len: int = 8192, micro_batch: int = 2, **kw: Any
) -> TrainingConfig:
    return TrainingConfig(
        task=Task.PRETRAIN,
        precision=precision,
        micro_batch=micro_batch,
        seq_len=seq_len,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.SELECTIVE,
        **kw,
    )


def _parts(spec: Any, precision: Precision, hw: Any = H100, **kw: Any) -> dict[str, float]:
    st = predict_step_time(spec, _config(precision, **kw), calibration=None, hardware=hw)
    return {k: v.seconds for k, v in st.components.items()} | {"total": st.seconds}


def test_hopper_profile_carries_a_sourced_fp8_share() -> None:
    eff = H100.gpu_efficiency()
    assert eff.gemm_fp8 is not None
    assert 0.2 <= eff.gemm_fp8.value <= 1.0
    assert "gpu_fit" in eff.gemm_fp8.source


def test_attention_and_lm_head_stay_16_bit_under_fp8() -> None:
    bf16 = _parts(LLAMA8, Precision.BF16_MIXED)
    fp8 = _parts(LLAMA8, Precision.FP8_MIXED)
    assert fp8["attention"] == pytest.approx(bf16["attention"])
    assert fp8["lm_head"] == pytest.approx(bf16["lm_head"])
    # The blocks' GEMMs run at the FP8 peak: faster, but not the full 2x of the datasheet.
    assert bf16["forward_backward"] / 2 < fp8["forward_backward"] < bf16["forward_backward"]


def test_fp8_pays_its_scaling_casts() -> None:
    fp8 = _parts(LLAMA8, Precision.FP8_MIXED)
    assert fp8["fp8_casts"] > 0
    assert "fp8_casts" not in _parts(LLAMA8, Precision.BF16_MIXED)


def test_end_to_end_fp8_gain_is_below_the_datasheet_ratio() -> None:
    # torchtitan (llama3_h100_202412): Float8 took Llama 3.1 8B from 6,667 to 8,532 tok/s
    # per GPU (1.28x) at sequence 8192; the datasheet's FP8/BF16 ratio is 2.
    bf16 = _parts(LLAMA8, Precision.BF16_MIXED)["total"]
    fp8 = _parts(LLAMA8, Precision.FP8_MIXED)["total"]
    assert 1.1 < bf16 / fp8 < 1.6
    # The same tokens per micro-batch at a short sequence: attention, which stays 16-bit, is
    # a smaller share, so FP8 helps more there.
    short = _parts(LLAMA8, Precision.BF16_MIXED, seq_len=1024, micro_batch=16)["total"]
    short8 = _parts(LLAMA8, Precision.FP8_MIXED, seq_len=1024, micro_batch=16)["total"]
    assert short / short8 > bf16 / fp8


def test_without_a_fitted_fp8_share_fp8_is_no_faster_than_bf16() -> None:
    # Ada has FP8 tensor cores (733 TFLOP/s on the L40S datasheet) but no public end-to-end
    # FP8 training table here, so no gemm_fp8: FP8 GEMMs are priced as 16-bit ones.
    assert L40S.peak_tflops.fp8 and L40S.gpu_efficiency().gemm_fp8 is None
    bf16 = _parts(LLAMA8, Precision.BF16_MIXED, hw=L40S)
    fp8 = _parts(LLAMA8, Precision.FP8_MIXED, hw=L40S)
    assert fp8["forward_backward"] == pytest.approx(bf16["forward_backward"])
    assert "fp8_casts" not in fp8
