"""Context parallelism in the memory model: a rank's activations against the saved tensors of
a real model run on its share of the sequence, the states' sharding over data x context
parallel ranks, and the layouts it refuses.

NOTE: torch's own ``context_parallel`` cannot be measured on this CPU: torch 2.13 has no
sharding strategy for ``aten._scaled_dot_product_flash_attention_for_cpu`` (measured:
NotImplementedError), so a context-parallel rank is measured as what it runs, the blocks on
``seq / cp`` tokens (Megatron-Core's context parallelism guide: "CP partitions the network
inputs and all activations along the sequence dimension"; the attention kernel saves its
local Q, K, V, output and log-sum-exp, Liu et al. 2023).
"""

from __future__ import annotations

import pytest

from advisor.config import (
    Attention,
    ContextParallelKind,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.memory import DeviceOverheads, estimate_memory
from advisor.memory.context import check_context_kernel
from advisor.model.profiles import get_model_profile
from advisor.rules.taxonomy import load_taxonomy
from tests.memhelpers import SHAPES, build_model, count_activations, rel_err, spec_for

TOL = 0.05


def _config(shape: str, seq: int, cp: int, precision: Precision, **extra: object) -> TrainingConfig:
    return TrainingConfig(
        task=Task.PRETRAIN,
        optimizer="sgd",
        precision=precision,
        attention=Attention.FLASH,
        micro_batch=SHAPES[shape]["b"],
        seq_len=seq,
        context_parallel=cp,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.heavy
@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("shape", ["llama", "qwen2"])
def test_rank_activations_match_a_real_model_on_its_share(shape: str, cp: int) -> None:
    """The estimate of one rank at ``seq`` tokens and context parallelism ``cp`` against the
    bytes a real Hugging Face model saves for backward on ``seq / cp`` tokens."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sh = SHAPES[shape]
    seq = 2 * cp * 16  # whole chunks for ring attention's causal balancing
    model = build_model(shape, "sdpa").to(torch.bfloat16)
    measured = count_activations(model, sh["b"], seq // cp, sh["vocab_size"], sh["num_layers"])
    sgd = load_taxonomy().get("sgd")
    est = estimate_memory(
        spec_for(shape),
        _config(shape, seq, cp, Precision.BF16),
        optimizer=sgd,
        device=DeviceOverheads.cpu(),
    ).breakdown
    assert rel_err(est["activations"], measured.activations) < TOL, (
        est["activations"],
        measured.activations,
    )
    assert rel_err(est["logits"], measured.logits) < TOL, (est["logits"], measured.logits)
    # And the whole sequence on one device saves cp times as much (what CP takes away).
    whole = count_activations(model, sh["b"], seq, sh["vocab_size"], sh["num_layers"])
    assert whole.activations > (cp - 0.5) * measured.activations


def test_states_shard_over_data_and_context_parallel_ranks() -> None:
    """ZeRO's 12 bytes/parameter of fp32 states divide by N_d (Rajbhandari et al. 2020); with
    context parallelism N_d is data x context parallel (Megatron-Core's distributed
    optimizer over the data-parallel group with context parallel; torchtitan's FSDP over
    dp_shard_cp)."""
    spec = get_model_profile("llama-3.1-8b")
    adamw = load_taxonomy().get("adamw")
    base = TrainingConfig(
        task=Task.PRETRAIN,
        seq_len=32768,
        gpus=2,
        context_parallel=4,
        sharding=Sharding.ZERO1,
        stack=Stack.FUSED,
    )
    m = estimate_memory(spec, base, optimizer=adamw).breakdown
    params = spec.parameter_count()
    assert rel_err(m["optimizer_states"] + m["master_weights"], 12 * params / 8) < 0.01
    # Without sharding the states are replicated on every context-parallel rank.
    full = estimate_memory(spec, base.with_(sharding=Sharding.NONE), optimizer=adamw).breakdown
    assert rel_err(full["optimizer_states"] + full["master_weights"], 12 * params) < 0.01


def test_activations_and_logits_split_by_cp_at_long_sequences() -> None:
    spec = get_model_profile("llama-3.1-8b")
    adamw = load_taxonomy().get("adamw")
    base = TrainingConfig(task=Task.PRETRAIN, seq_len=131072, stack=Stack.FUSED, gpus=1)
    one = estimate_memory(spec, base, optimizer=adamw).breakdown
    for cp in (2, 8, 16):
        rank = estimate_memory(spec, base.with_(context_parallel=cp), optimizer=adamw).breakdown
        # Every activation holds seq / cp tokens; the model-level terms are per token too.
        assert rel_err(rank["activations"] * cp, one["activations"]) < 0.01
        assert rel_err(rank["logits"] * cp, one["logits"]) < 0.01
        assert rank["weights"] == one["weights"]


def test_ring_exchange_buffers_are_transient() -> None:
    """Ring attention's peer chunks (K/V and dK/dV, double-buffered) add to a block's
    backward, not to what is saved."""
    spec = get_model_profile("llama-3.1-8b")
    adamw = load_taxonomy().get("adamw")
    c = TrainingConfig(task=Task.PRETRAIN, seq_len=65536, context_parallel=4, stack=Stack.FUSED)
    ring = estimate_memory(spec, c, optimizer=adamw)
    ulysses = estimate_memory(
        spec, c.with_(context_parallel_kind=ContextParallelKind.ULYSSES), optimizer=adamw
    )
    assert ring.breakdown["activations"] == ulysses.breakdown["activations"]
    # 4 chunks of K and V (8 KV heads x 128) of 16384 tokens, bf16, against Ulysses' one
    # copy of Q, K, V (32 + 8 + 8 heads).
    ring_bufs = 4 * 16384 * 2 * 8 * 128 * 2
    a2a_bufs = 16384 * (32 + 16) * 128 * 2
    lb = {p.name: p for p in ring.phases}["layer_backward"].total_bytes
    lb_u = {p.name: p for p in ulysses.phases}["layer_backward"].total_bytes
    assert lb - lb_u == ring_bufs - a2a_bufs
    assert any("context parallelism 4" in n for n in ring.notes)


def test_bad_layouts_are_refused() -> None:
    spec = get_model_profile("llama-3.1-8b")
    adamw = load_taxonomy().get("adamw")
    with pytest.raises(UserError, match="divisible by 6"):
        estimate_memory(spec, TrainingConfig(seq_len=4096, context_parallel=3), optimizer=adamw)
    ulysses = ContextParallelKind.ULYSSES
    # 32 heads do not split over 64 Ulysses ranks (DeepSpeed's UlyssesSPAttentionHF check).
    with pytest.raises(UserError, match="32 attention heads"):
        estimate_memory(
            spec,
            TrainingConfig(seq_len=65536, context_parallel=64, context_parallel_kind=ulysses),
            optimizer=adamw,
        )
    # 8 KV heads and 12 ranks divide neither way (12 does not divide 32 heads either).
    with pytest.raises(UserError, match="heads"):
        estimate_memory(
            spec,
            TrainingConfig(seq_len=12 * 4096, context_parallel=12, context_parallel_kind=ulysses),
            optimizer=adamw,
        )
    # Under tensor parallelism the heads per rank are what Ulysses splits.
    with pytest.raises(UserError, match="per tensor-parallel rank"):
        estimate_memory(
            spec,
            TrainingConfig(
                seq_len=65536,
                tensor_parallel=8,
                context_parallel=8,
                context_parallel_kind=ulysses,
            ),
            optimizer=adamw,
        )
    with pytest.raises(UserError, match="eager"):
        check_context_kernel(TrainingConfig(context_parallel=2, attention=Attention.EAGER))
    check_context_kernel(
        TrainingConfig(context_parallel=2, attention=Attention.EAGER, context_parallel_kind=ulysses)
    )
