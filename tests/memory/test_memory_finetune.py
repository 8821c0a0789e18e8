"""Fine-tuning memory as the libraries allocate it, measured on the CPU.

- bitsandbytes' paged optimizers: which state buffers go to CUDA unified memory (the large
  tensors' uint8 states), against the tensors a real 8-bit AdamW allocates;
- LoRA targets: the trainable and total parameters PEFT creates for ``attention``, ``mlp``,
  ``all-linear`` and ``modules_to_save``, on a full-size Llama built on the meta device.
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.app.limits import parse_lora_targets
from advisor.config import Attention, Precision, Task, TrainingConfig
from advisor.cost import predict_for_optimizer
from advisor.errors import UserError
from advisor.hardware.profiles import get_hardware_profile
from advisor.memory import (
    PAGED_MIN_NUMEL,
    DeviceOverheads,
    estimate_memory,
    paged_residency,
)
from advisor.model import get_model_profile
from advisor.rules.taxonomy import load_taxonomy
from tests.memhelpers import spec_for
from tests.paths import ROOT_DIR

TAX = {t.id: t for t in load_taxonomy().techniques}
# Wide enough that the embedding, the LM head and the MLP matrices pass bitsandbytes'
# 1e5-element paging threshold while q, k, v and o (256 x 256 = 65,536) stay below it.
WIDE = dict(hidden_size=256, intermediate_size=512, vocab_size=512, num_layers=2)


def _wide_llama() -> Any:
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        hidden_size=WIDE["hidden_size"],
        intermediate_size=WIDE["intermediate_size"],
        num_hidden_layers=WIDE["num_layers"],
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=WIDE["vocab_size"],
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return tf.LlamaForCausalLM(cfg)


def _states(opt_id: str) -> Any:
    config = TrainingConfig(
        task=Task.PRETRAIN, precision=Precision.FP32, attention=Attention.FLASH, seq_len=8
    )
    return estimate_memory(
        spec_for("llama", **WIDE), config, optimizer=TAX[opt_id], device=DeviceOverheads.cpu()
    )


def test_paged_states_are_the_large_tensors_uint8_buffers() -> None:
    """bitsandbytes pages state1/state2 of every parameter with >= 1e5 elements (on CUDA;
    on the CPU the same buffers are ordinary tensors): the real 8-bit AdamW's buffers of
    those parameters are what the model moves out of the peak; the absmax and the small
    tensors' states stay in it, and nothing is lost."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    model = _wide_llama()
    opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-3)
    ids = torch.randint(0, WIDE["vocab_size"], (1, 8))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    opt.step()
    large = [p for p in model.parameters() if p.numel() >= PAGED_MIN_NUMEL]
    small = [p for p in model.parameters() if p.numel() < PAGED_MIN_NUMEL]
    assert large and any(p.numel() >= 4096 for p in small)  # both kinds are exercised
    buffers = sum(
        opt.state[p][k].untyped_storage().nbytes() for p in large for k in ("state1", "state2")
    )
    paged = _states("paged-adamw-8bit")
    plain = _states("adamw-8bit")
    assert paged.paged_bytes == buffers
    assert (
        paged.breakdown["optimizer_states"] + paged.paged_bytes
        == (plain.breakdown["optimizer_states"])
    )
    assert plain.paged_bytes == 0
    # The peak no longer holds them.
    assert plain.total_bytes - paged.total_bytes == buffers


def test_paged_residency_keeps_what_fits_and_sweeps_the_rest() -> None:
    # Room for all: nothing moves. Short of room: LRU over a fixed sweep misses every chunk,
    # so all states come in and as many go out each step.
    assert paged_residency(10, 50, 100) == (10, 0, 0)
    assert paged_residency(10, 95, 100) == (5, 5, 20)
    assert paged_residency(10, 120, 100) == (0, 10, 20)


def _llama_8b_paged(**over: Any) -> TrainingConfig:
    fields: dict[str, Any] = dict(
        task=Task.FINETUNE,
        optimizer="paged-adamw-8bit",
        precision=Precision.BF16,
        checkpointing="full",
        micro_batch=2,
        seq_len=2048,
        optimizer_in_backward=True,
    )
    fields.update(over)
    return TrainingConfig(**fields)


def test_paged_8bit_full_finetune_of_an_8b_fits_a_24gb_card_and_pays_for_paging() -> None:
    """Full fine-tuning of Llama 3.1 8B in bf16 with paged 8-bit AdamW and the step in
    backward: the 16 GB of 8-bit states cannot sit beside 16 GB of bf16 weights on a 24 GiB
    card, so the driver pages them and every step moves them over PCIe; on an 80 GB card
    they stay resident and cost nothing extra."""
    spec = get_model_profile("llama-3.1-8b")
    config = _llama_8b_paged()
    opt = TAX["paged-adamw-8bit"]
    m = estimate_memory(spec, config, optimizer=opt)
    assert m.paged_bytes > 14 * 2**30  # ~2 bytes per parameter
    rtx = get_hardware_profile("rtx-4090")
    h100 = get_hardware_profile("h100-sxm-80gb")
    assert m.total_bytes <= rtx.memory_bytes
    assert m.total_bytes + m.paged_bytes > rtx.memory_bytes
    small = predict_for_optimizer(spec, config, opt, calibration=None, hardware=rtx)
    large = predict_for_optimizer(spec, config, opt, calibration=None, hardware=h100)
    assert "paged_states" in small.components and "paged_states" not in large.components
    moved = paged_residency(m.paged_bytes, m.total_bytes, rtx.memory_bytes).traffic_bytes
    assert moved == 2 * m.paged_bytes
    # The same run with the unpaged 8-bit AdamW does not fit.
    plain_opt = TAX["adamw-8bit"]
    plain = estimate_memory(spec, _llama_8b_paged(optimizer="adamw-8bit"), optimizer=plain_opt)
    assert plain.total_bytes > rtx.memory_bytes


def _peft_counts(targets: Any, modules_to_save: list[str] | None = None) -> tuple[int, int]:
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = tf.LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = tf.LlamaForCausalLM(cfg)
    lora = peft.LoraConfig(
        r=64, target_modules=targets, modules_to_save=modules_to_save, task_type="CAUSAL_LM"
    )
    wrapped = peft.get_peft_model(model, lora)
    params = list(wrapped.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@pytest.mark.parametrize(
    ("flag", "targets", "save"),
    [
        ("attention", ["q_proj", "k_proj", "v_proj", "o_proj"], None),
        ("mlp", ["gate_proj", "up_proj", "down_proj"], None),
        ("all-linear", "all-linear", None),
        ("q_proj,v_proj", ["q_proj", "v_proj"], None),
        ("all-linear,embed,lm_head", "all-linear", ["embed_tokens", "lm_head"]),
    ],
)
def test_lora_targets_train_what_peft_trains(flag: str, targets: Any, save: Any) -> None:
    """PEFT's own count on Llama 2 7B's shapes (built on the meta device, nothing
    downloaded): adapters on the named modules, and for modules_to_save a trainable copy
    of the embedding and head beside the frozen originals."""
    trainable, total = _peft_counts(targets, save)
    config = TrainingConfig(task=Task.LORA, lora_rank=64, lora_targets=parse_lora_targets(flag))
    m = estimate_memory(get_model_profile("llama-2-7b"), config, optimizer=TAX["adamw"])
    assert m.trainable_parameters == trainable
    # bf16-mixed: every weight (the frozen base, the adapters, the copies) in 16 bits.
    assert m.breakdown["weights"] == 2 * total
    assert m.breakdown["optimizer_states"] == 8 * trainable


@pytest.mark.parametrize("bad", ["foo", "embed", "q,,v", "lm_head,embed"])
def test_lora_targets_refuse_what_is_not_a_block_matrix(bad: str) -> None:
    with pytest.raises(UserError):
        parse_lora_targets(bad)


_DEEPSPEED_STEP = """
import json, os, sys, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
import torch, deepspeed
import torch.distributed as dist
from tests.livemem import LiveBytes
from tests.memhelpers import build_model
dist.init_process_group("gloo", rank=0, world_size=1)
model = build_model("llama", "sdpa")
config = {"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True},
          "zero_optimization": {"stage": int(sys.argv[1])}, "zero_allow_untested_optimizer": True}
if len(sys.argv) > 2:  # fp32 gradient accumulation: BF16_Optimizer under ZeRO-1
    config["data_types"] = {"grad_accum_dtype": sys.argv[2]}
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
extra = []
with LiveBytes() as live:
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    ids = torch.randint(0, 256, (2, 32))
    for _ in range(2):  # the first step allocates the states
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        live.reset_peak()
        before = live.current
        engine.step()
        extra.append(live.peak - before)
print(json.dumps({"extra": extra[-1], "optimizer": type(engine.optimizer).__name__,
                  "alive": live.current, "params": sum(p.numel() for p in model.parameters())}))
"""


def _deepspeed_step(*argv: str) -> dict[str, Any]:
    """One bf16 DeepSpeed step on one gloo rank (see _DEEPSPEED_STEP), its figures."""
    import json
    import os
    import socket
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )
    root = ROOT_DIR
    run = subprocess.run(
        [sys.executable, "-c", _DEEPSPEED_STEP, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
        check=True,
    )
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_zero_steps_an_fp32_copy_of_the_gradient_partition(stage: int) -> None:
    """DeepSpeed's bf16 ZeRO step (one rank over gloo on the CPU, torch's fused AdamW as
    the client optimizer): around ``engine.step()`` it allocates a flat 16-bit copy of the
    gradient partition and its fp32 cast, 6 bytes per parameter: the model's step-phase
    transient for bf16-mixed under ZeRO. Stage 0 (FP16_UnfusedOptimizer over bf16) casts
    each gradient to fp32 for the master step: 4 bytes per parameter."""
    extra = _deepspeed_step(str(stage))["extra"]
    sharding = {0: "none", 1: "zero1", 2: "zero2", 3: "zero3"}[stage]
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        micro_batch=2,
        seq_len=32,
        sharding=sharding,
    )
    est = estimate_memory(
        spec_for("llama"), config, optimizer=TAX["adamw"], device=DeviceOverheads.cpu()
    )
    assert est.phase("optimizer_step").components["transient"] == pytest.approx(extra, abs=64)


@pytest.mark.slow
def test_exported_zero1_bf16_never_runs_bf16_optimizers_fp32_gradient_buffer() -> None:
    """DeepSpeed 0.19.8 picks BF16_Optimizer under bf16 ZeRO-1 only with fp32 gradient
    accumulation (engine._do_optimizer_sanity_check); it then keeps a flat fp32 gradient of
    every trainable parameter alive through the step (bf16_optimizer.py,
    fp32_groups_gradients_flat: 4 B/param, measured here). The memory model does not count
    that buffer because the exported config never asks for it: its ZeRO-1 bf16 file runs
    DeepSpeedZeroOptimizer, whose step transient the test above measures."""
    from advisor.export import emit_deepspeed

    pytest.importorskip("deepspeed")
    plan = TrainingConfig(task=Task.PRETRAIN, precision=Precision.BF16_MIXED, sharding="zero1")
    assert "data_types" not in emit_deepspeed(plan).config
    default, fp32_acc = _deepspeed_step("1"), _deepspeed_step("1", "fp32")
    assert default["optimizer"] == "DeepSpeedZeroOptimizer"
    assert fp32_acc["optimizer"] == "BF16_Optimizer"
    assert fp32_acc["alive"] - default["alive"] == 4 * default["params"]
