"""Context parallelism in the step-time model: the exchange volumes against the papers'
formulas, ring attention's overlap condition, the split of attention compute, and the
gradient reduction over data x context parallel ranks. Structure only (no absolute time).
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.config import ContextParallelKind, Precision, Sharding, Stack, Task, TrainingConfig
from advisor.cost import predict_step_time
from advisor.cost.context import context_comm, ring_bytes, ulysses_bytes
from advisor.cost.efficiency import efficiency_for
from advisor.cost.memo import StepMemo
from advisor.cost.setting import Setting, micro_batch_config
from advisor.hardware.profiles import get_hardware_profile
from advisor.model import get_model_profile

H100 = get_hardware_profile("h100-sxm-80gb")
LLAMA8 = get_model_profile("llama-3.1-8b")  # 32 heads, 8 KV heads of 128, hidden 4096
GPT2 = get_model_profile("gpt2")  # multi-head attention: K and V as wide as the hidden size
RING, ULYSSES = ContextParallelKind.RING, ContextParallelKind.ULYSSES


def _config(**kw: Any) -> TrainingConfig:
    base: dict[str, Any] = dict(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        micro_batch=1,
        seq_len=65536,
        stack=Stack.FUSED,
    )
    return TrainingConfig(**(base | kw))


def _setting(spec: Any, config: TrainingConfig, gpus_per_node: int | None = None) -> Setting:
    held = StepMemo().model(spec, H100, None)
    return Setting(
        spec,
        micro_batch_config(config),
        None,
        H100,
        efficiency_for(H100),
        None,
        gpus_per_node,
        shape=held.shape,
        matrices=held.matrices,
        results=held.results,
    )


@pytest.mark.parametrize("cp", [2, 4, 8, 16])
def test_ring_sends_2_cp_minus_1_over_cp_of_k_and_v_per_block(cp: int) -> None:
    """Each rank passes its K/V chunk round the ring cp - 1 times in forward: (cp - 1) / cp of
    the whole sequence's K and V (Liu et al. 2023, sec. 3); K and V are each
    seq x kv_heads x head_dim in bf16. Backward passes K/V and dK/dV: twice that."""
    seq = 65536
    s = _setting(LLAMA8, _config(seq_len=seq, context_parallel=cp))
    k_bytes = seq * 8 * 128 * 2  # the whole sequence's keys (values the same size)
    fwd, bwd = ring_bytes(s)
    assert fwd == pytest.approx(2 * (cp - 1) / cp * k_bytes)
    assert bwd == pytest.approx(2 * fwd)


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_ulysses_moves_4_n_h_over_p_per_block(cp: int) -> None:
    """Jacobs et al. 2023, sec. 3.2: Ulysses' four all-to-alls (Q, K, V, output) move
    4 N h / P per block and link for multi-head attention, (P - 1) / P of it off the rank;
    the same four run on the gradients in backward."""
    seq, h = 32768, GPT2.hidden_size or 0
    s = _setting(GPT2, _config(seq_len=seq, context_parallel=cp, context_parallel_kind=ULYSSES))
    fwd, bwd = ulysses_bytes(s)
    assert fwd == pytest.approx(4 * seq * h / cp * (cp - 1) / cp * 2)
    assert bwd == pytest.approx(fwd)
    # Grouped KV heads shrink K and V: Llama 3.1 8B's 8 of 32 heads.
    g = _setting(LLAMA8, _config(seq_len=seq, context_parallel=cp, context_parallel_kind=ULYSSES))
    assert ulysses_bytes(g)[0] == pytest.approx(
        (32 + 8 + 8 + 32) * 128 * seq / cp * (cp - 1) / cp * 2
    )


def test_ring_hides_under_attention_when_the_chunk_outlasts_its_transfer() -> None:
    """Liu et al. 2023: the exchange hides when a block's attention takes longer than
    sending its K/V chunk (block size c >= F / B). 8K tokens per rank over NVLink (Llama 3's
    128K on CP 16) hide; 2K tokens of a multi-head model across nodes do not."""
    inside = _setting(LLAMA8, _config(seq_len=131072, context_parallel=16), gpus_per_node=72)
    assert context_comm(inside)[0] == 0.0
    across = _setting(GPT2, _config(seq_len=16384, context_parallel=8), gpus_per_node=1)
    exposed, detail = context_comm(across)
    assert exposed > 0 and "ring" in detail
    # Shorter chunks on the same link expose more of the exchange.
    shorter = _setting(GPT2, _config(seq_len=8192, context_parallel=8), gpus_per_node=1)
    ratio = context_comm(shorter)[0] / exposed
    assert 0.5 < ratio < 1.0  # half the bytes, a quarter of the attention to hide them under


def test_ulysses_all_to_alls_are_exposed() -> None:
    s = _setting(LLAMA8, _config(context_parallel=4, context_parallel_kind=ULYSSES))
    seconds, detail = context_comm(s)
    fwd, bwd = ulysses_bytes(s)
    assert seconds > 0 and "exposed" in detail
    # Full recomputation runs the forward's all-to-alls again.
    full = _setting(
        LLAMA8,
        _config(context_parallel=4, context_parallel_kind=ULYSSES, checkpointing="full"),
    )
    assert context_comm(full)[0] == pytest.approx(seconds * (2 * fwd + bwd) / (fwd + bwd))


def _parts(spec: Any, **kw: Any) -> dict[str, float]:
    st = predict_step_time(spec, _config(**kw), calibration=None, hardware=H100)
    return {k: v.seconds for k, v in st.components.items()} | {"total": st.seconds}


def test_compute_splits_by_the_context_parallel_degree() -> None:
    """A rank runs every GEMM on seq / cp tokens and 1 / cp of the causal attention (load
    balanced over 2 cp chunks); Ulysses runs the whole sequence on heads / cp, at the same
    kernel efficiency, so its attention is exactly 1 / cp."""
    one = _parts(LLAMA8)
    for cp in (2, 4, 8):
        u = _parts(LLAMA8, context_parallel=cp, context_parallel_kind=ULYSSES)
        assert u["attention"] == pytest.approx(one["attention"] / cp)
        r = _parts(LLAMA8, context_parallel=cp)
        # Ring calls the kernel on seq / cp chunks: no more efficient than on the whole.
        assert r["attention"] >= u["attention"] * 0.999
        assert r["forward_backward"] < one["forward_backward"] / cp * 1.25


def test_gradients_reduce_over_data_and_context_parallel_ranks() -> None:
    st = predict_step_time(
        LLAMA8,
        _config(gpus=2, context_parallel=4, sharding=Sharding.ZERO1),
        calibration=None,
        hardware=H100,
    )
    assert "over 8 ranks" in (st.components["communication"].detail or "")
    # One replica split over CP ranks still reduces its gradients across them.
    alone = predict_step_time(LLAMA8, _config(context_parallel=4), calibration=None, hardware=H100)
    assert "communication" in alone.components
    assert "over 4 ranks" in (alone.components["communication"].detail or "")
