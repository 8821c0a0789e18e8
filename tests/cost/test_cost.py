"""The cost model: labels, published accounting, and the directions costs must move in."""

from __future__ import annotations

import pytest

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.cost import Source, block_gemms, gemm_efficiency, layer_shape, predict_step_time
from advisor.cost.data import (
    AttentionFit,
    CalibrationCache,
    Fingerprint,
    LayerTiming,
    OptimizerTiming,
    ShapeResults,
    Timing,
)
from advisor.cost.efficiency import AttentionKernel, attention_efficiency
from advisor.cost.hfbytes import hf_bytes
from advisor.hardware.profiles import get_hardware_profile
from advisor.model import get_model_profile

A100 = get_hardware_profile("a100-sxm-80gb")
LLAMA = get_model_profile("llama-2-7b")


def step(config: TrainingConfig, **kw: object) -> float:
    return predict_step_time(LLAMA, config, calibration=None, hardware=A100, **kw).seconds  # type: ignore[arg-type]


BASE = TrainingConfig(
    task=Task.PRETRAIN,
    optimizer="adamw",
    precision=Precision.BF16_MIXED,
    attention=Attention.FLASH,
    micro_batch=1,
    seq_len=2048,
)


def test_analytic_gemms_are_6n_flops_per_token_at_their_shapes() -> None:
    # Kaplan et al. 2020: training costs ~6 FLOPs per parameter per token for the matmuls.
    eff = A100.gpu_efficiency()
    gemms = block_gemms(LLAMA, 2048)
    flops = sum(g.flops for g in gemms)
    norms = 2 * 4096  # RMSNorm weights are counted in the layer but do no matmul
    assert flops / 2048 == pytest.approx(2 * LLAMA.layer_parameter_count(), rel=norms / 2e8)
    st = predict_step_time(LLAMA, BASE, calibration=None, hardware=A100)
    expected = 3 * 32 * sum(g.flops / (312e12 * gemm_efficiency(eff, g.m, g.n, g.k)) for g in gemms)
    assert st.components["forward_backward"].seconds == pytest.approx(expected, rel=1e-9)
    assert st.source is Source.ANALYTIC and all(
        c.source is Source.ANALYTIC for c in st.components.values()
    )


def test_costs_grow_with_tokens_and_accumulation() -> None:
    assert step(BASE.with_(seq_len=4096)) > step(BASE)
    assert step(BASE.with_(micro_batch=4)) > step(BASE)
    two = step(BASE.with_(grad_accumulation=2))
    assert step(BASE) < two < 2 * step(BASE)  # the optimizer step is not repeated


def test_recompute_and_eager_attention_cost_time() -> None:
    full = predict_step_time(
        LLAMA,
        BASE.with_(checkpointing=Checkpointing.FULL),
        calibration=None,
        hardware=A100,
    )
    plain = predict_step_time(LLAMA, BASE, calibration=None, hardware=A100)
    c = plain.components
    # Full recomputation re-runs the forward: a third of the GEMMs' and elementwise work and
    # FlashAttention's forward, at the forward's own speed: of the fwd+bwd time F/e_f +
    # 2.5 F/e_b (backward FLOPs 2.5x; Dao 2023, Figs. 5-6 on A100) the share
    # 1 / (1 + 2.5 e_f / e_b). The elementwise forward is its measured share of the block's
    # bytes (benchmarks/eager_bytes.json: the hf stack's forward and backward traffic).
    row = hf_bytes(LLAMA.traits.layout, False, BASE.precision, BASE.dropout)
    h, f = LLAMA.hidden_size or 0, LLAMA.intermediate_size or 0
    fwd_bytes = row.h_fwd * h + row.f_fwd * f
    fwd_share = fwd_bytes / (fwd_bytes + row.h_bwd * h + row.f_bwd * f)
    eff = A100.gpu_efficiency()
    seq, d = BASE.batch.seq_len, LLAMA.head_dim or 128
    e_f = attention_efficiency(eff, AttentionKernel.FA2, seq, d, True)
    e_b = attention_efficiency(eff, AttentionKernel.FA2, seq, d, True, backward=True)
    expected = (
        c["forward_backward"].seconds / 3
        + c["attention"].seconds / (1 + 2.5 * e_f / e_b)
        + c["elementwise"].seconds * fwd_share
    )
    assert full.components["recompute"].seconds == pytest.approx(expected, rel=1e-6)
    selective = predict_step_time(
        LLAMA,
        BASE.with_(checkpointing=Checkpointing.SELECTIVE),
        calibration=None,
        hardware=A100,
    )
    assert 0 < selective.components["recompute"].seconds < full.components["recompute"].seconds
    assert step(BASE.with_(attention=Attention.EAGER, seq_len=8192)) > step(
        BASE.with_(seq_len=8192)
    )


def test_communication_follows_the_ring_volumes_and_what_compute_hides() -> None:
    one = predict_step_time(LLAMA, BASE, calibration=None, hardware=A100)
    assert "communication" not in one.components
    eff = A100.gpu_efficiency()
    eight = predict_step_time(LLAMA, BASE.with_(data_parallel=8), calibration=None, hardware=A100)
    grads = LLAMA.parameter_count() * 2
    busbw = 600 / 2 * eff.comm_intra.value * 1e9
    ring = 2 * 7 / 8 * grads / busbw
    # DDP: one bucketed all-reduce, hidden under backward up to the fitted overlap share.
    exposed = eight.components["communication"].seconds
    assert 0 < exposed <= ring
    zero3 = predict_step_time(
        LLAMA,
        BASE.with_(data_parallel=8, sharding=Sharding.ZERO3),
        calibration=None,
        hardware=A100,
    )
    # ZeRO-3 adds the parameter all-gathers: 1.5x the data-parallel volume (Rajbhandari et al.
    # 2020), of which compute hides part.
    assert zero3.components["communication"].seconds > exposed


def test_offload_and_zeroth_order_and_adapters() -> None:
    off = predict_step_time(
        LLAMA,
        BASE.with_(offload=Offload.OPTIMIZER),
        calibration=None,
        hardware=A100,
    )
    assert off.components["offload_transfer"].seconds > 0
    zo = predict_step_time(
        LLAMA,
        BASE.with_(optimizer="mezo"),
        calibration=None,
        hardware=A100,
        optimizer_order="zeroth",
    )
    fb = predict_step_time(LLAMA, BASE, calibration=None, hardware=A100)
    # Two forwards, no backward: two thirds of forward+backward.
    assert zo.components["forward_backward"].seconds == pytest.approx(
        fb.components["forward_backward"].seconds * 2 / 3, rel=1e-9
    )
    lora = step(BASE.with_(task=Task.LORA))
    assert lora < step(BASE)


def _cache_for(spec_shape_tokens: int = 512) -> CalibrationCache:
    t = Timing(median_s=0.1, iqr_s=0.001, repeats=5)
    results = ShapeResults(
        shape=layer_shape(LLAMA),
        layers=[
            LayerTiming(
                dtype="bf16",
                tokens=spec_shape_tokens,
                timing=t,
                forward=Timing(median_s=0.03, iqr_s=0, repeats=5),
            )
        ],
        attention=[
            AttentionFit(
                backend="flash",
                dtype="bf16",
                a=1e-9,
                b=1e-6,
                c=1e-4,
                seq_lens=[512, 1024, 2048],
                seconds=[0.0, 0.0, 0.0],
                max_rel_residual=0.01,
            )
        ],
        optimizers=[
            OptimizerTiming(
                optimizer="adamw",
                variant="fused",
                steady=Timing(median_s=0.2, iqr_s=0, repeats=5),
                layer_parameters=LLAMA.layer_parameter_count(),
            )
        ],
        matmul_tflops={"bf16": 100.0},
    )
    fp = Fingerprint(
        device="cuda:0", device_name="test", torch_version="2.13.0", torch_build="cuda", threads=8
    )
    return CalibrationCache(
        fingerprint=fp, created_at="now", mode="quick", copy_gb_s=1000.0, shapes=[results]
    )


def test_measured_terms_come_from_the_cache_at_the_models_shape() -> None:
    st = predict_step_time(LLAMA, BASE, calibration=_cache_for(), hardware=A100)
    c = st.components
    assert c["forward_backward"].source is Source.MEASURED
    assert c["forward_backward"].seconds == pytest.approx(0.1 / 512 * 2048 * 32)
    assert c["attention"].seconds == pytest.approx((1e-9 * 2048**2 + 1e-6 * 2048 + 1e-4) * 32)
    assert c["optimizer_step"].source is Source.MEASURED
    assert c["optimizer_step"].seconds == pytest.approx(
        0.2 / LLAMA.layer_parameter_count() * LLAMA.parameter_count()
    )
    assert st.source is Source.MEASURED
    # A shape the cache does not hold falls back to the datasheet, labelled analytic.
    other = predict_step_time(
        get_model_profile("llama-2-13b"), BASE, calibration=_cache_for(), hardware=A100
    )
    assert other.components["forward_backward"].source is Source.ANALYTIC
    # fp32 was not measured: analytic too, even for the cached shape.
    fp32 = predict_step_time(
        LLAMA,
        BASE.with_(precision=Precision.FP32),
        calibration=_cache_for(),
        hardware=A100,
    )
    assert (
        fp32.components["forward_backward"].source is Source.ANALYTIC
        and fp32.source is Source.MIXED
    )
