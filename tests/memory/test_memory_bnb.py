"""bitsandbytes' 8-bit optimizers, measured on the CPU (bitsandbytes >= 0.45 runs them there).

The memory model's ``quantized-blockwise`` states (Dettmers et al. 2022: one byte per
element and state, an fp32 absmax per 256-element block, 32-bit states for tensors under
4,096 elements) against the tensors in ``optimizer.state`` after real steps, and the step
itself: the update kernels write in place, so no parameter-sized temporary on any stack.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
bnb = pytest.importorskip("bitsandbytes")

from advisor.config import Attention, Precision, Stack, Task, TrainingConfig  # noqa: E402
from advisor.memory import DeviceOverheads, estimate_memory  # noqa: E402
from advisor.rules.taxonomy import load_taxonomy  # noqa: E402
from tests.livemem import LiveBytes  # noqa: E402
from tests.memhelpers import (  # noqa: E402
    SHAPES,
    build_model,
    param_storages,
    spec_for,
    state_tensors,
    storage_bytes,
)

TAX = {t.id: t for t in load_taxonomy().techniques}
LR = 1e-3
# Each taxonomy entry's implementation (rules/taxonomy.yaml), momentum where it takes one.
IMPLEMENTATIONS: dict[str, Any] = {
    "adamw-8bit": lambda ps: bnb.optim.AdamW8bit(ps, lr=LR),
    "paged-adamw-8bit": lambda ps: bnb.optim.PagedAdamW8bit(ps, lr=LR),
    "adam-8bit": lambda ps: bnb.optim.Adam8bit(ps, lr=LR),
    "lion-8bit": lambda ps: bnb.optim.Lion8bit(ps, lr=LR),
    "sgd-momentum-8bit": lambda ps: bnb.optim.SGD8bit(ps, lr=LR, momentum=0.9),
    "rmsprop-8bit": lambda ps: bnb.optim.RMSprop8bit(ps, lr=LR),
    "adagrad-8bit": lambda ps: bnb.optim.Adagrad8bit(ps, lr=LR),
    "lamb-8bit": lambda ps: bnb.optim.LAMB8bit(ps, lr=LR),
    "lars-8bit": lambda ps: bnb.optim.LARS8bit(ps, lr=LR, momentum=0.9),
}
# NOTE: what the model leaves out: a 256-entry fp32 quantization map per state, shared by
# every tensor (1 KiB each), and LAMB/LARS's fp32 update norm per tensor (4 B each).
QMAP = 256 * 4


def _estimate(name: str, opt_id: str, stack: Stack = Stack.HF) -> Any:
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.FP32,
        attention=Attention.FLASH,
        micro_batch=1,
        seq_len=8,
        stack=stack,
    )
    return estimate_memory(
        spec_for(name), config, optimizer=TAX[opt_id], device=DeviceOverheads.cpu()
    )


@pytest.mark.parametrize("opt_id", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_8bit_states_match_the_real_optimizer(name: str, opt_id: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, "sdpa")
    opt = IMPLEMENTATIONS[opt_id](model.parameters())
    ids = torch.randint(0, SHAPES[name]["vocab_size"], (1, 8))
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
    owned = param_storages(model)
    real = storage_bytes(
        [t for t in state_tensors(dict(opt.state)) if t.untyped_storage().data_ptr() not in owned]
    )
    est = _estimate(name, opt_id).breakdown["optimizer_states"]
    norms = sum(1 for p in model.parameters()) * 4 if opt_id in ("lamb-8bit", "lars-8bit") else 0
    mem = TAX[opt_id].memory
    assert mem is not None
    assert real - est - mem.states * QMAP == pytest.approx(0, abs=norms + 1), (real, est)


@pytest.mark.parametrize("stack", [Stack.HF, Stack.FUSED])
def test_the_8bit_step_updates_in_place(stack: Stack) -> None:
    torch.manual_seed(0)
    with LiveBytes() as live:
        model = build_model("llama", "sdpa")
        opt = bnb.optim.AdamW8bit(model.parameters(), lr=LR)
        ids = torch.randint(0, SHAPES["llama"]["vocab_size"], (1, 8))
        for _ in range(2):  # the first step allocates the states
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            live.reset_peak()
            before = live.peak
            opt.step()
            extra = live.peak - before
            opt.zero_grad(set_to_none=True)
    assert extra == 0
    step = _estimate("llama", "adamw-8bit", stack).phase("optimizer_step")
    assert "transient" not in step.components


def test_nf4_double_quantization_costs_what_the_model_charges() -> None:
    # QLoRA's base (Dettmers et al. 2023): 4-bit NF4 codes, an 8-bit absmax per block of
    # 64, and an fp32 absmax per 256 of those; bitsandbytes quantizes on the CPU too.
    import bitsandbytes.functional as bnbf

    from advisor.memory import NF4_BYTES, NF4_CONSTANT_BITS

    w = torch.randn(4096, 4096, dtype=torch.bfloat16)
    packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True, blocksize=64)
    n = w.numel()
    assert storage_bytes([packed]) == NF4_BYTES * n
    constants = [state.absmax, state.code, state.state2.absmax, state.state2.code, state.offset]
    bits = 8 * storage_bytes([t for t in constants if t is not None]) / n
    # The model leaves out the two code tables (16 + 256 floats per tensor, 0.1% here).
    assert bits == pytest.approx(NF4_CONSTANT_BITS, rel=0.005)
