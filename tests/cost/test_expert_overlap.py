"""The expert all-to-all overlap and the routing imbalance against measurement (sampled
routing) and published figures: DeepSeek-V3's computation-to-communication ratio of about
1:1 for cross-node expert parallelism and its all-to-all hidden by DualPipe (DeepSeek-AI
2024, arXiv:2412.19437, sec. 3.2.1), DeepEP's 20 communication SMs of the H800's 132, and
the capacity factor's cap (Megatron-Core's drop policy)."""

from __future__ import annotations

import numpy as np
import pytest

from advisor.config import (
    BatchGeometry,
    Checkpointing,
    Kernels,
    MemorySavers,
    MoeBalance,
    MoeOverlap,
    ParallelLayout,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.cost import predict_step_time
from advisor.cost.expert_overlap import (
    MAX_VIOLATION,
    comm_sm_share,
    exposed_all_to_all,
    straggler_factor,
)
from advisor.hardware.profiles import get_hardware_profile
from advisor.model import get_model_profile


@pytest.mark.parametrize(("ep", "rows"), [(8, 8 * 4096 * 2), (16, 16 * 4096 * 8), (64, 2_097_152)])
def test_batch_noise_matches_sampled_balanced_routing(ep: int, rows: int) -> None:
    # Balanced routing: every row lands on one of ep ranks with probability 1/ep; the
    # busiest rank's excess over the mean, averaged over 4000 sampled micro-batches.
    rng = np.random.default_rng(0)
    counts = rng.multinomial(rows, [1 / ep] * ep, size=4000)
    sampled = float((counts.max(axis=1) / (rows / ep) - 1).mean())
    experts = ep  # one expert per rank: the global excess is MaxVio itself
    factor = straggler_factor(
        experts=experts,
        ep=ep,
        rows=rows,
        balance=MoeBalance.LOSS_FREE,
        capacity_factor=None,
        pad_to_capacity=False,
    )
    noise = factor - 1 - MAX_VIOLATION[MoeBalance.LOSS_FREE]
    assert noise == pytest.approx(sampled, rel=0.08)


def test_capacity_caps_the_busiest_rank() -> None:
    common = {"experts": 8, "ep": 8, "rows": 1000.0, "balance": MoeBalance.AUX_LOSS}
    dropless = straggler_factor(**common, capacity_factor=None, pad_to_capacity=False)
    assert dropless > 1.52  # the auxiliary loss's published MaxVio plus batch noise
    # Tokens beyond 1.25x the mean are dropped before the exchange (Megatron-Core).
    assert straggler_factor(**common, capacity_factor=1.25, pad_to_capacity=False) == 1.25
    # Padded to capacity, every expert runs exactly its capacity: no rank waits.
    assert straggler_factor(**common, capacity_factor=1.25, pad_to_capacity=True) == 1.0
    # No expert parallelism: nothing to wait for.
    assert straggler_factor(**{**common, "ep": 1}, capacity_factor=None, pad_to_capacity=False) == 1


def test_deepep_takes_20_of_the_h800s_132_sms() -> None:
    # DeepSeek-V3 report, sec. 3.2.2 ("only 20 SMs"); H800 = the H100 SXM5 die, 132 SMs.
    assert comm_sm_share("h800") == pytest.approx(20 / 132)


def test_unpaired_micro_batches_stay_exposed() -> None:
    # One micro-batch has nothing to pair with: its all-to-alls are all exposed.
    alone = exposed_all_to_all(
        MoeOverlap.A2A_OVERLAP, a2a=1.0, compute=3.0, accumulation=1, pp=1, sm_share=0.15
    )
    assert alone.seconds == pytest.approx(1.0)
    # Many micro-batches with compute longer than the transfers: only the SM share remains
    # on each pair, plus the first forward and last backward.
    many = exposed_all_to_all(
        MoeOverlap.A2A_OVERLAP, a2a=1.0, compute=3.0, accumulation=64, pp=1, sm_share=0.15
    )
    assert many.seconds == pytest.approx(1.0 + 63 * 0.15)
    # Transfers longer than compute: the difference stays exposed.
    slow = exposed_all_to_all(
        MoeOverlap.DUALPIPE, a2a=2.0, compute=1.5, accumulation=8, pp=2, sm_share=0.15
    )
    assert slow.seconds == pytest.approx(1 * 2.0 + 7 * 0.5)


def _deepseek(overlap: MoeOverlap, accumulation: int = 60) -> dict[str, float]:
    # DeepSeek-V3's own layout (report sec. 3.1-3.3): 2048 H800s, no TP, PP16 x EP64,
    # ZeRO-1, FP8, 4096-token sequences.
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.FP8_MIXED,
        batch=BatchGeometry(micro_batch=1, seq_len=4096, grad_accumulation=accumulation),
        layout=ParallelLayout(
            data_parallel=128,
            pipeline_parallel=16,
            expert_parallel=64,
            sharding=Sharding.ZERO1,
            moe_overlap=overlap,
        ),
        savers=MemorySavers(checkpointing=Checkpointing.SELECTIVE),
        kernels=Kernels(stack=Stack.FUSED),
    )
    st = predict_step_time(
        get_model_profile("deepseek-v3"),
        config,
        calibration=None,
        hardware=get_hardware_profile("h800"),
    )
    return {k: p.seconds for k, p in st.components.items()} | {"total": st.seconds}


_COMPUTE = ("forward_backward", "expert_imbalance", "attention", "elementwise", "fp8_casts")


def test_deepseek_v3_cross_node_ep_is_about_one_to_one() -> None:
    # "the communication overhead introduced by cross-node expert parallelism results in an
    # inefficient computation-to-communication ratio of approximately 1:1" (sec. 3.2.1).
    parts = _deepseek(MoeOverlap.NONE)
    compute = sum(parts[k] for k in _COMPUTE) + parts["recompute"]
    assert 0.67 < parts["expert_all_to_all"] / compute < 1.5


def test_dualpipe_hides_deepseek_v3s_all_to_all() -> None:
    # DualPipe: "both all-to-all and PP communication can be fully hidden" (sec. 3.2.1):
    # past the pipeline ramp, what remains is the communication SMs' share of compute.
    none = _deepseek(MoeOverlap.NONE, accumulation=120)
    dual = _deepseek(MoeOverlap.DUALPIPE, accumulation=120)
    a2a = none["expert_all_to_all"] / 120
    ramp = 8 * a2a  # PP/2 micro-batches run unpaired
    steady = dual["expert_all_to_all"] - ramp
    assert steady == pytest.approx(112 * a2a * 20 / 132, rel=1e-6)
    # ... and the step is shorter than without overlap, bubble included.
    assert dual["total"] < 0.8 * none["total"]
    assert dual["pipeline_bubble"] < none["pipeline_bubble"]


def test_deepseek_v3_throughput_with_dualpipe_near_the_reported_gpu_hours() -> None:
    # "each trillion tokens ... requires only 180K H800 GPU hours" (DeepSeek-V3 report,
    # sec. 1 and 3.1): 1e12 / (180e3 x 3600) = 1543 tokens/s per GPU, with DualPipe and
    # the batch of 15360 sequences of 4096 tokens (sec. 4.2) on 2048 GPUs.
    published = 1e12 / (180e3 * 3600)
    per_gpu_tokens = 15360 * 4096 / 2048
    dual = _deepseek(MoeOverlap.DUALPIPE, accumulation=120)
    none = _deepseek(MoeOverlap.NONE, accumulation=120)
    assert per_gpu_tokens / dual["total"] == pytest.approx(published, rel=0.2)
    # Without the overlap the same layout is predicted far slower than it ran.
    assert per_gpu_tokens / none["total"] < 0.7 * published


def test_interleaved_warm_up_runs_unpaired() -> None:
    # Megatron-Core's interleaved schedule warms the first stage up with
    # 2 (pp - 1) + (v - 1) pp chunk forwards (schedules.py num_warmup_microbatches): pp 4,
    # v 2 -> 10 chunks of half a micro-batch = 5 micro-batches whose transfers run alone.
    ex = exposed_all_to_all(
        MoeOverlap.A2A_OVERLAP, a2a=1.0, compute=3.0, accumulation=32, pp=4, sm_share=0.15, v=2
    )
    assert ex.unpaired == pytest.approx(5.0)
    assert ex.seconds == pytest.approx(5.0 + 27 * 0.15)
