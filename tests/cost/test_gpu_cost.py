"""The GPU step-time model's structure: directions, formulas and published anchors.

No absolute time of this machine is asserted: the model is analytic (datasheet x fitted
efficiencies), and the anchors are published throughput figures.
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.calibration.allreduce import bus_bandwidth, measure_collectives
from advisor.calibration.runner import time_gemm_shapes
from advisor.calibration.timing import synchronizer
from advisor.config import (
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.cost import (
    AttentionKernel,
    Source,
    attention_efficiency,
    attention_kernel,
    gemm_efficiency,
    layer_shape,
    predict_step_time,
)
from advisor.cost.comm import RING_LATENCY_S
from advisor.cost.data import (
    CalibrationCache,
    Fingerprint,
    GemmTiming,
    ShapeResults,
)
from advisor.errors import UserError
from advisor.hardware.profiles import get_hardware_profile
from advisor.model import get_model_profile

A100 = get_hardware_profile("a100-sxm-80gb")
H100 = get_hardware_profile("h100-sxm-80gb")
LLAMA8 = get_model_profile("llama-3.1-8b")
LLAMA70 = get_model_profile("llama-3.1-70b")
BASE = TrainingConfig(
    task=Task.PRETRAIN, precision=Precision.BF16_MIXED, micro_batch=1, seq_len=4096
)


def st(config: TrainingConfig, spec: Any = LLAMA8, hw: Any = A100) -> Any:
    return predict_step_time(spec, config, calibration=None, hardware=hw)


def tokens_per_gpu(config: TrainingConfig, spec: Any = LLAMA8, hw: Any = A100) -> float:
    s = st(config, spec, hw).seconds
    tokens = config.batch.micro_batch * config.batch.seq_len * config.batch.grad_accumulation
    return tokens / s / (config.layout.tensor_parallel * config.layout.pipeline_parallel)


def test_every_gpu_profile_has_sourced_efficiencies() -> None:
    from advisor.hardware.profiles import DeviceKind, load_hardware_profiles

    gpus = [p for p in load_hardware_profiles().values() if p.kind is not DeviceKind.CPU]
    # 15 + the 2026 parts (B200, B300, GB200, GB300, H800, H20, MI325X, MI355X) + the
    # free-tier T4s (colab-t4, kaggle-t4x2)
    assert len(gpus) == 25
    for p in gpus:
        eff = p.gpu_efficiency()
        for field in ("gemm_max", "gemm_m0", "gemm_n0", "bandwidth", "overlap"):
            assert getattr(eff, field).source
        assert all(a.source for a in eff.attention.values())


def test_a_profile_without_fitted_constants_is_a_user_error() -> None:
    bare = A100.model_copy(update={"efficiency": None})
    with pytest.raises(UserError, match="no fitted step-time constants"):
        st(BASE, hw=bare)


def test_gemm_efficiency_falls_for_few_tokens_and_thin_layers() -> None:
    eff = A100.gpu_efficiency()
    wide = gemm_efficiency(eff, 8192, 4096, 4096)
    assert gemm_efficiency(eff, 128, 4096, 4096) < gemm_efficiency(eff, 1024, 4096, 4096) < wide
    assert gemm_efficiency(eff, 8192, 256, 4096) < wide
    assert wide <= eff.gemm_max.value


def test_time_grows_with_tokens_but_throughput_does_not_fall() -> None:
    small, big = BASE, BASE.with_(micro_batch=4)
    assert st(big).seconds > st(small).seconds
    assert tokens_per_gpu(big) >= tokens_per_gpu(small)


def test_attention_kernels_follow_the_papers() -> None:
    eff = H100.gpu_efficiency()
    # FlashAttention's efficiency rises with sequence length; causal masks saturate later.
    assert attention_efficiency(eff, AttentionKernel.FA2, 512, 128, True) < (
        attention_efficiency(eff, AttentionKernel.FA2, 8192, 128, True)
    )
    assert attention_efficiency(eff, AttentionKernel.FA2, 1024, 128, True) < (
        attention_efficiency(eff, AttentionKernel.FA2, 1024, 128, False)
    )
    # The fused stack runs FA3 on Hopper; SDPA (hf) runs FA2; Volta falls back.
    assert attention_kernel(BASE.with_(stack=Stack.FUSED).kernels, H100) is (AttentionKernel.FA3)
    assert attention_kernel(BASE.kernels, H100) is AttentionKernel.FA2
    v100 = get_hardware_profile("v100-32gb")
    assert attention_kernel(BASE.kernels, v100) is AttentionKernel.MEM_EFFICIENT


def test_fa2_fit_reproduces_the_papers_a100_figures() -> None:
    # Dao 2023, Fig. 4 (A100, fwd+bwd, head dim 128, causal), as printed on the bars of
    # assets/flash2_a100_fwd_bwd_benchmark.png: 189 TFLOP/s at 16k, 99 at 512. The A100 curve
    # prices forward and backward apart; fwd+bwd = 3.5 / (1/fwd + 2.5/bwd).
    eff = A100.gpu_efficiency()

    def fwd_bwd(s: int) -> float:
        f = attention_efficiency(eff, AttentionKernel.FA2, s, 128, True)
        b = attention_efficiency(eff, AttentionKernel.FA2, s, 128, True, backward=True)
        return 3.5 / (1 / f + 2.5 / b) * 312

    assert fwd_bwd(16384) == pytest.approx(189, rel=0.08)
    assert fwd_bwd(512) == pytest.approx(99, rel=0.08)


def test_fused_stack_is_faster_than_hf() -> None:
    fused = BASE.with_(stack=Stack.FUSED)
    assert st(fused).seconds < st(BASE).seconds
    assert st(fused).components["elementwise"].seconds < st(BASE).components["elementwise"].seconds
    assert st(fused).components["optimizer_step"].detail == "fused"


def test_tensor_parallel_comm_grows_with_tp() -> None:
    # Per layer 8 collectives of (t-1)/t x tokens x h x 2 bytes (Korthikanti et al. 2022),
    # each paying half an all-reduce's NCCL latency (nccl-tests on 2/4/8 A100s,
    # RING_LATENCY_S): X_t = K (c (t-1)/t + alpha_t / 2). K and c from TP 2 and TP 8 must
    # predict TP 4.
    x = {
        t: st(BASE.with_(tensor_parallel=t)).components["tensor_parallel_comm"].seconds
        for t in (2, 4, 8)
    }
    a = {t: RING_LATENCY_S[t] / 2 for t in (2, 4, 8)}
    v = {t: (t - 1) / t for t in (2, 4, 8)}
    # x2 / x8 = (c v2 + a2) / (c v8 + a8)  =>  c = (x2 a8 - x8 a2) / (x8 v2 - x2 v8)
    c = (x[2] * a[8] - x[8] * a[2]) / (x[8] * v[2] - x[2] * v[8])
    k = x[2] / (c * v[2] + a[2])
    assert c > 0 and k > 0
    assert x[4] == pytest.approx(k * (c * v[4] + a[4]), rel=1e-6)
    assert "tensor_parallel_comm" not in st(BASE).components


def test_pipeline_bubble_is_p_minus_1_over_m_v() -> None:
    m, p = 8, 4
    for v in (1, 2):
        cfg = BASE.with_(pipeline_parallel=p, virtual_stages=v, grad_accumulation=m)
        c = st(cfg, LLAMA70).components
        per_step = sum(
            x.seconds
            for k, x in c.items()
            if k
            not in (
                "pipeline_bubble",
                "optimizer_step",
                "master_copies",
                "communication",
                "offload_transfer",
            )
        )
        # Narayanan et al. 2021: bubble fraction (p - 1) / (m v) of the ideal time.
        assert c["pipeline_bubble"].seconds / per_step == pytest.approx((p - 1) / (m * v))


def test_overlap_hides_fsdp_comm_when_compute_is_long() -> None:
    cfg = BASE.with_(data_parallel=64, sharding=Sharding.FSDP, seq_len=2048)
    short = st(cfg, LLAMA70).components["communication"].seconds
    long_cfg = cfg.with_(micro_batch=8)
    long_ = st(long_cfg, LLAMA70).components["communication"].seconds
    # The all-gather volume is the same for any micro-batch; 8x the compute hides more of it.
    assert long_ < short


def test_hsdp_keeps_the_parameter_gathers_inside_a_node() -> None:
    # HSDP gathers inside the node every micro-step and crosses nodes once per step (one
    # all-reduce of the gradient shards, Zhao et al. 2023, sec. 3.2.2); FSDP over 64 crosses
    # nodes in every gather. With accumulation the cross-node traffic of FSDP grows with
    # the micro-steps and HSDP's does not: HSDP's exposed time is the smaller.
    cfg = BASE.with_(data_parallel=64, sharding=Sharding.FSDP, grad_accumulation=8)
    hsdp = cfg.with_(sharding=Sharding.HSDP)
    fsdp_c = st(cfg, LLAMA70).components["communication"]
    hsdp_c = st(hsdp, LLAMA70).components["communication"]
    assert "over 8 ranks (NVLink" in hsdp_c.detail and "replicas" in hsdp_c.detail
    assert "InfiniBand" in fsdp_c.detail.split("+")[0]
    assert hsdp_c.seconds <= fsdp_c.seconds


def test_data_parallel_over_nodes_is_slower_than_inside_one() -> None:
    cfg = BASE.with_(data_parallel=8, sharding=Sharding.FSDP)
    inside = predict_step_time(LLAMA70, cfg, calibration=None, hardware=A100)
    across = predict_step_time(LLAMA70, cfg, calibration=None, hardware=A100, gpus_per_node=4)
    told = predict_step_time(LLAMA70, cfg, calibration=None, hardware=A100, interconnect_gb_s=50.0)
    inside_s = inside.components["communication"].seconds
    assert across.components["communication"].seconds > inside_s
    assert told.components["communication"].seconds > inside_s
    assert "InfiniBand" in across.components["communication"].detail


def test_offload_variants_order_as_their_bandwidths() -> None:
    host = st(BASE.with_(offload=Offload.OPTIMIZER))
    nvme = st(BASE.with_(offload=Offload.OPTIMIZER_NVME))
    assert nvme.components["optimizer_step"].seconds > host.components["optimizer_step"].seconds
    overlapped = st(BASE.with_(offload=Offload.OPTIMIZER, optimizer_in_backward=True))
    assert (
        overlapped.components["optimizer_step"].seconds < host.components["optimizer_step"].seconds
    )
    act = st(BASE.with_(activation_offload=True, checkpointing=Checkpointing.FULL))
    assert "activation_offload" in act.components


def test_activation_offload_moves_what_the_blocks_save() -> None:
    """Offloading moves every saved activation down in forward and back in backward: under
    full recomputation the block inputs (2 b s h bytes a block), without it everything a
    block keeps, which the memory model counts (saved_activation_bytes). At a large
    micro-batch on a slow link the un-recomputed traffic shows; the block inputs' does not
    outgrow the full-recomputation compute that hides it."""
    from advisor.memory import saved_activation_bytes

    big = BASE.with_(micro_batch=8, activation_offload=True)
    full = big.with_(checkpointing=Checkpointing.FULL)
    none = big.with_(checkpointing=Checkpointing.NONE)
    layers = LLAMA8.num_layers
    assert saved_activation_bytes(LLAMA8, full, layers) == layers * 2 * 8 * 4096 * 4096
    assert saved_activation_bytes(LLAMA8, none, layers) > 10 * saved_activation_bytes(
        LLAMA8, full, layers
    )
    moved_none = st(none).components["activation_offload"].seconds
    moved_full = st(full).components["activation_offload"].seconds
    assert moved_none > moved_full


def test_fsdp_under_pipelining_gathers_once_per_step() -> None:
    """torch.distributed.pipelining turns FSDP's sync and resharding off for every backward
    but the last: the exposed gathers and reductions do not grow with the micro-batches,
    where plain FSDP repeats them every micro-batch (and gathers again before backward)."""
    base = BASE.with_(data_parallel=8, sharding=Sharding.FSDP, micro_batch=1)

    def comm(pp: int, accumulation: int) -> float:
        c = base.with_(pipeline_parallel=pp, grad_accumulation=accumulation)
        return float(st(c, LLAMA70, H100).components["communication"].seconds)

    assert comm(4, 16) == pytest.approx(comm(4, 4))
    assert comm(1, 16) > 3 * comm(1, 4)


def test_expert_parallel_adds_all_to_all() -> None:
    mixtral = get_model_profile("mixtral-8x7b")
    cfg = BASE.with_(data_parallel=8, sharding=Sharding.FSDP)
    ep = st(cfg.with_(expert_parallel=8), mixtral)
    assert ep.components["expert_all_to_all"].seconds > 0
    assert "expert_all_to_all" not in st(cfg, mixtral).components


def test_published_anchor_torchtitan_llama3_8b_on_a100() -> None:
    # torchtitan docs/performance.md: Llama 3 8B, FSDP2 over 64 A100-80GB, local batch 1 x
    # 8192, selective checkpointing: 2,904-2,973 tokens/s per GPU.
    cfg = TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        micro_batch=1,
        seq_len=8192,
        gpus=64,
        sharding=Sharding.FSDP,
        checkpointing=Checkpointing.SELECTIVE,
    )
    assert tokens_per_gpu(cfg) == pytest.approx(2940, rel=0.15)


# --- CUDA calibration paths (run here on the CPU or with fakes) ---------------------------


def _cache(results: ShapeResults, **kw: Any) -> CalibrationCache:
    fp = Fingerprint(
        device="cuda:0", device_name="fake", torch_version="2", torch_build="cuda", threads=8
    )
    return CalibrationCache(fingerprint=fp, created_at="now", mode="quick", shapes=[results], **kw)


def test_measured_gemms_and_collectives_are_used_and_labelled() -> None:
    from advisor.cost import block_gemms

    shapes = {(g.n, g.k) for g in block_gemms(LLAMA8, 1)}
    gemms = [
        GemmTiming(m=m, n=n, k=k, dtype="bf16", tflops=100.0)
        for n, k in shapes
        for m in (512, 8192)
    ]
    results = ShapeResults(shape=layer_shape(LLAMA8), gemms=gemms)
    cache = _cache(results, collectives={"all_gather": 50.0}, collective_ranks=8)
    cfg = BASE.with_(data_parallel=8, sharding=Sharding.FSDP)
    measured = predict_step_time(LLAMA8, cfg, calibration=cache, hardware=A100)
    c = measured.components
    assert c["forward_backward"].source is Source.MEASURED
    flops = sum(g.flops for g in block_gemms(LLAMA8, 4096)) * 3 * 32
    assert c["forward_backward"].seconds == pytest.approx(flops / 100e12, rel=1e-9)
    assert c["communication"].source is Source.MEASURED


@pytest.mark.heavy
def test_gemm_shapes_are_timed_for_real_on_the_cpu() -> None:
    import torch

    from advisor.model.spec import ModelSpec

    tiny = ModelSpec.model_validate(
        {
            **get_model_profile("llama-2-7b").model_dump(),
            "id": "tiny",
            "hidden_size": 64,
            "num_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "head_dim": 16,
            "intermediate_size": 128,
            "vocab_size": 256,
            "published_parameters": None,
            "published_parameters_source": None,
        }
    )
    timings, note = time_gemm_shapes(
        torch, "cpu", synchronizer(torch, "cpu"), tiny, "fp32", [8, 32]
    )
    assert note == ""
    assert {(t.n, t.k) for t in timings} == {(64, 64), (128, 64), (64, 128)}
    assert all(t.tflops > 0 and t.m in (8, 32) for t in timings)


class _OomTorch:
    """A torch stand-in whose allocations fail as CUDA's do when memory runs out."""

    float32 = "float32"

    class OutOfMemoryError(RuntimeError):
        pass

    def randn(self, *shape: int, device: str = "") -> Any:
        raise self.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_gemm_timing_catches_out_of_memory() -> None:
    timings, note = time_gemm_shapes(_OomTorch(), "cuda:0", lambda: None, LLAMA8, "fp32", [512])
    assert timings == [] and "out of memory" in note


def test_collectives_skip_with_one_gpu_and_use_nccl_bus_bandwidth() -> None:
    assert measure_collectives("cuda:0", 1) == ({}, "collectives need at least 2 GPUs: skipped")
    # nccl-tests: all-gather busbw = S (n-1)/n / t; all-reduce twice that.
    assert bus_bandwidth("all_gather", 8e9, 1.0, 8) == pytest.approx(7.0)
    assert bus_bandwidth("all_reduce", 8e9, 1.0, 8) == pytest.approx(14.0)
