"""The memory model against published accounting, and its properties (no torch needed)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    OptimizerImpl,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.memory import (
    COMPONENTS,
    PHASES,
    DeviceOverheads,
    MemoryEstimate,
    estimate_memory,
    lora_tensors,
)
from advisor.rules.taxonomy import load_taxonomy
from tests.memhelpers import make_spec, replace_spec

TAX = {t.id: t for t in load_taxonomy().techniques}
CPU = DeviceOverheads.cpu()


def llama2_7b() -> object:
    """Llama 2 7B shapes from its published config.json (meta-llama/Llama-2-7b-hf)."""
    return make_spec(
        id="llama-2-7b", name="Llama 2 7B", family="llama", arch="decoder",
        source="https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json",
        hidden_size=4096, num_layers=32, num_attention_heads=32, num_key_value_heads=32,
        head_dim=128, intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
        mlp="gated-silu", norm="rmsnorm", position="rope", qkv_bias=False, out_bias=False,
        mlp_bias=False, tie_word_embeddings=False,
    )  # fmt: skip


def est(spec: object = None, opt: str = "adamw", **cfg: object) -> MemoryEstimate:
    return estimate_memory(
        spec or llama2_7b(),  # type: ignore[arg-type]
        TrainingConfig(**cfg),  # type: ignore[arg-type]
        optimizer=TAX[opt],
        device=CPU,
    )


def states(e: MemoryEstimate) -> int:
    b = e.breakdown
    return b["weights"] + b["gradients"] + b["master_weights"] + b["optimizer_states"]


def test_llama2_7b_parameter_count_is_the_published_one() -> None:
    # 6,738,415,616 parameters (Touvron et al. 2023, HF model card).
    assert est().parameters == 6_738_415_616


def test_breakdown_is_named_ordered_and_the_total_is_the_largest_phase() -> None:
    e = estimate_memory(llama2_7b(), TrainingConfig(), optimizer=TAX["adamw"])  # type: ignore[arg-type]
    assert tuple(e.breakdown) == COMPONENTS
    assert [p.name for p in e.phases] == list(PHASES)
    for phase in e.phases:
        assert phase.total_bytes == sum(phase.components.values())
        # A phase holds at most each component's full size.
        assert all(v <= e.breakdown[k] for k, v in phase.components.items()), phase.name
    assert (
        e.total_bytes == max(p.total_bytes for p in e.phases) == e.phase(e.peak_phase).total_bytes
    )
    # Components that never coexist are not added: the loss's fp32 gradients are gone
    # before the optimizer step's temporaries exist.
    assert e.total_bytes < sum(e.breakdown.values())
    assert e.breakdown["cuda_context"] > 0 and e.breakdown["allocator_reserve"] > 0
    assert e.overhead_bytes == sum(e.breakdown[k] for k in ("cuda_context", "workspace",
                                                            "allocator_reserve"))  # fmt: skip


@pytest.mark.parametrize("precision", [Precision.BF16_MIXED, Precision.FP16_MIXED])
def test_mixed_precision_adam_is_16_bytes_per_parameter(precision: Precision) -> None:
    # ZeRO (Rajbhandari et al. 2020), section 3.1: 2 + 2 + (4 + 4 + 4) = 16 bytes per parameter.
    e = est(precision=precision, task=Task.PRETRAIN)
    assert states(e) == 16 * e.parameters


@pytest.mark.parametrize("n", [2, 8, 64])
def test_zero_stages_divide_exactly_what_the_paper_says(n: int) -> None:
    base = est(precision=Precision.BF16_MIXED, gpus=n).breakdown
    z = {s: est(precision=Precision.BF16_MIXED, gpus=n, sharding=s).breakdown for s in Sharding}
    P = est().parameters

    def div(x: int) -> int:
        return -(-x // n)

    assert base["optimizer_states"] == 8 * P and base["master_weights"] == 4 * P
    # Stage 1 (P_os): optimizer states (with the fp32 master copy) partitioned.
    assert z[Sharding.ZERO1]["optimizer_states"] == div(8 * P)
    assert z[Sharding.ZERO1]["master_weights"] == div(4 * P)
    assert z[Sharding.ZERO1]["gradients"] == 2 * P and z[Sharding.ZERO1]["weights"] == 2 * P
    # Stage 2 (P_os+g): gradients too.
    assert z[Sharding.ZERO2]["gradients"] == div(2 * P)
    assert z[Sharding.ZERO2]["weights"] == 2 * P
    # Stage 3 (P_os+g+p) and FSDP full shard: parameters too.
    for s in (Sharding.ZERO3, Sharding.FSDP):
        assert z[s]["weights"] == div(2 * P) and z[s]["gradients"] == div(2 * P)
        assert z[s]["gathered_parameters"] > 0
    # Sharding never touches activations.
    assert {z[s]["activations"] for s in Sharding} == {base["activations"]}
    # P_os+g+p: all 16 bytes per parameter divided by N_d (paper: 16 * 7.5B / 64 = 1.88 GB).
    assert states(est(precision=Precision.BF16_MIXED, gpus=n, sharding=Sharding.ZERO3)) == (
        div(2 * P) * 2 + div(4 * P) + div(8 * P)
    )


def test_qlora_base_is_half_a_byte_per_parameter_plus_constants() -> None:
    e = est(task=Task.QLORA, precision=Precision.BF16_MIXED, lora_rank=64)
    P = e.parameters
    h, V = 4096, 32000
    quantized = P - 2 * V * h - (2 * 32 + 1) * h  # block matrices only
    adapters = e.trainable_parameters * 2
    base = e.breakdown["weights"] - adapters - (P - quantized) * 2
    assert base == pytest.approx(0.5 * quantized, rel=1e-6)
    # Dettmers et al. 2023: double quantization costs 0.127 bits per parameter.
    bits = e.breakdown["quantization_constants"] * 8 / quantized
    assert bits == pytest.approx(0.127, abs=0.001)
    # about 3.5 GiB of 4-bit base for Llama 2 7B plus its 16-bit embeddings and head
    assert 3.4e9 < e.breakdown["weights"] < 4.1e9


def test_lora_counts_the_published_trainable_parameters() -> None:
    # PEFT's print_trainable_parameters for Llama-2-7b, r=16 on q,k,v,o: 16,777,216.
    e = est(task=Task.LORA, lora_rank=16)
    assert e.trainable_parameters == 16_777_216
    assert e.breakdown["optimizer_states"] == 8 * 16_777_216
    assert len(lora_tensors(llama2_7b(), 8)) == 8  # type: ignore[arg-type]


def test_zeroth_order_is_inference_like() -> None:
    e = est(opt="mezo", precision=Precision.BF16, task=Task.FINETUNE)
    b = e.breakdown
    assert b["gradients"] == b["optimizer_states"] == b["master_weights"] == 0
    # one block's forward working set: what a recomputed block holds under checkpointing
    full = est(precision=Precision.BF16, checkpointing=Checkpointing.FULL).breakdown["recompute"]
    assert b["activations"] == full > 0


def test_dp_sgd_keeps_per_sample_gradients() -> None:
    e = est(opt="sgd", dp_sgd=True, micro_batch=4, precision=Precision.FP32)
    assert e.breakdown["per_sample_gradients"] == 4 * e.trainable_parameters * 4


def test_offload_moves_optimizer_and_params_to_host() -> None:
    base = est(precision=Precision.BF16_MIXED)
    off = est(precision=Precision.BF16_MIXED, offload=Offload.OPTIMIZER)
    P = base.parameters
    assert off.breakdown["optimizer_states"] == off.breakdown["master_weights"] == 0
    assert off.host_bytes == 8 * P + 4 * P + 4 * P  # states, master, fp32 grads (ZeRO-Offload)
    both = est(precision=Precision.BF16_MIXED, offload=Offload.OPTIMIZER_PARAMS)
    assert both.breakdown["weights"] == 0 and both.host_bytes == off.host_bytes + 2 * P
    assert 0 < both.breakdown["gathered_parameters"] < 2 * P / 8


def test_flash_drops_the_quadratic_term() -> None:
    eager = est(attention=Attention.EAGER, seq_len=4096).breakdown["activations"]
    flash = est(attention=Attention.FLASH, seq_len=4096).breakdown["activations"]
    # the s^2 terms: fp32 softmax + its bf16 copy, 6 b a s^2 per layer
    assert eager - flash == pytest.approx(32 * 6 * 32 * 4096**2, rel=0.01)
    selective = est(attention=Attention.EAGER, seq_len=4096, checkpointing=Checkpointing.SELECTIVE)
    assert selective.breakdown["activations"] == pytest.approx(flash, rel=0.01)


def test_amp_keeps_a_16_bit_weight_cache() -> None:
    e = est(precision=Precision.AMP_BF16)
    assert e.breakdown["weights"] == 4 * e.parameters
    assert e.breakdown["weight_cache"] == pytest.approx(2 * (e.parameters - 32000 * 4096), rel=1e-3)


def test_selective_layer_checkpointing_of_every_block_keeps_no_autocast_copies() -> None:
    common: dict[str, object] = {"precision": Precision.AMP_BF16, "micro_batch": 4}
    full = est(checkpointing=Checkpointing.FULL, **common)
    every = est(checkpointing=Checkpointing.SELECTIVE_LAYER, ac_frequency=1, **common)
    half = est(checkpointing=Checkpointing.SELECTIVE_LAYER, ac_frequency=2, **common)
    assert every.phases == full.phases
    saved = [e.phase("loss_backward").components["weight_cache"] for e in (every, half)]
    head = saved[0]  # only the LM head is never recomputed
    assert saved[1] == head + math.ceil((half.breakdown["weight_cache"] - head) / 2)


def test_bitsandbytes_steps_in_place_on_every_stack() -> None:
    # bitsandbytes has no foreach variant: its 8-bit update kernels write in place. What the
    # step holds besides is bf16-mixed's fp32 gradients of the master step (DeepSpeed stage
    # 0 casts each 16-bit gradient to fp32: measured in test_memory_finetune.py).
    for stack in (Stack.HF, Stack.FUSED):
        e8 = est(opt="adamw-8bit", stack=stack, micro_batch=1, seq_len=64)
        fp32_grads = 4 * e8.trainable_parameters
        assert e8.phase("optimizer_step").components["transient"] == fp32_grads
        e8 = est(opt="adamw-8bit", stack=stack, optimizer_impl=OptimizerImpl.FOREACH)
        assert e8.phase("optimizer_step").components["transient"] == fp32_grads
        bare = est(opt="adamw-8bit", stack=stack, precision=Precision.BF16)
        assert "transient" not in bare.phase("optimizer_step").components
    hf = est(
        opt="adamw",
        stack=Stack.HF,
        micro_batch=1,
        seq_len=64,
        optimizer_impl=OptimizerImpl.FOREACH,
    )
    # torch's foreach AdamW temporary (fp32, as the masters) beside the fp32 gradients.
    assert hf.phase("optimizer_step").components["transient"] == 8 * hf.trainable_parameters


def test_memory_core_does_not_import_torch() -> None:
    code = "import sys, advisor.memory; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- properties

OPTS = st.sampled_from(
    ["sgd", "adamw", "adafactor", "adam-mini", "galore-adamw", "soap", "shampoo", "mezo",
     "adamw-8bit", "kfac", "lion"]
)  # fmt: skip
CONFIGS = st.builds(
    TrainingConfig,
    task=st.sampled_from(list(Task)),
    precision=st.sampled_from(list(Precision)),
    attention=st.sampled_from(list(Attention)),
    checkpointing=st.sampled_from(list(Checkpointing)),
    micro_batch=st.integers(1, 8),
    seq_len=st.integers(1, 4096),
    gpus=st.integers(1, 16),
    sharding=st.sampled_from(list(Sharding)),
    offload=st.sampled_from(list(Offload)),
    lora_rank=st.integers(1, 64),
    dp_sgd=st.booleans(),
)


def small(layers: int, heads: int, head_dim: int, ffn: int) -> object:
    base = llama2_7b()
    return replace_spec(
        base, hidden_size=heads * head_dim, num_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, head_dim=head_dim, intermediate_size=ffn, vocab_size=1000,
    )  # fmt: skip


def total(spec: object, cfg: TrainingConfig, opt: str) -> int:
    return estimate_memory(spec, cfg, optimizer=TAX[opt], device=CPU).total_bytes  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(cfg=CONFIGS, opt=OPTS, layers=st.integers(1, 6), heads=st.integers(1, 8),
       head_dim=st.sampled_from([8, 16, 64]), ffn=st.integers(8, 512))  # fmt: skip
def test_memory_grows_with_parameters_sequence_and_batch(
    cfg: TrainingConfig, opt: str, layers: int, heads: int, head_dim: int, ffn: int
) -> None:
    spec = small(layers, heads, head_dim, ffn)
    t = total(spec, cfg, opt)
    assert total(small(layers + 1, heads, head_dim, ffn), cfg, opt) >= t
    assert total(small(layers, heads + 1, head_dim, ffn), cfg, opt) >= t
    assert total(small(layers, heads, head_dim, ffn + 8), cfg, opt) >= t
    assert total(spec, cfg.with_(seq_len=cfg.batch.seq_len + 1), opt) >= t
    assert total(spec, cfg.with_(micro_batch=cfg.batch.micro_batch + 1), opt) >= t


@settings(max_examples=150, deadline=None)
@given(cfg=CONFIGS, opt=OPTS, layers=st.integers(1, 6), extra=st.integers(1, 16))
def test_memory_never_grows_with_the_sharding_degree(
    cfg: TrainingConfig, opt: str, layers: int, extra: int
) -> None:
    spec = small(layers, 4, 16, 128)
    # NOTE: from one device to two, DDP keeps its gradient buckets alive through the forward
    # pass (a real cost); from two devices on, more ranks only divide.
    cfg = cfg.with_(data_parallel=max(cfg.layout.data_parallel, 2))
    t = total(spec, cfg, opt)
    assert total(spec, cfg.with_(data_parallel=cfg.layout.data_parallel + extra), opt) <= t


def test_zero_offload_keeps_one_gradient_bucket_on_the_device() -> None:
    # ZeRO-Offload (Ren et al. 2021, sec. 4.1) streams reduced gradient buckets to the host
    # during backward: 13B on one V100 holds one 5e8-element bucket, not 26 GB of gradients.
    from advisor.export import BUCKET_ELEMENTS
    from advisor.memory import OFFLOAD_BUCKET_ELEMENTS, estimate_memory
    from advisor.model import resolve_model_size
    from advisor.units import GIB

    assert BUCKET_ELEMENTS == OFFLOAD_BUCKET_ELEMENTS  # the exported config says the same
    spec = resolve_model_size("13B")
    base = TrainingConfig(task=Task.PRETRAIN, optimizer="adamw", precision=Precision.BF16_MIXED)
    on_device = estimate_memory(spec, base, optimizer=TAX["adamw"])  # type: ignore[arg-type]
    off = base.with_(offload=Offload.OPTIMIZER)
    offloaded = estimate_memory(spec, off, optimizer=TAX["adamw"])  # type: ignore[arg-type]
    assert on_device.breakdown["gradients"] > 20 * GIB
    assert offloaded.breakdown["gradients"] == OFFLOAD_BUCKET_ELEMENTS * 2
    assert offloaded.host_bytes >= spec.parameter_count() * (4 + 8 + 4)
