"""What each fp8-mixed recipe keeps alive (advisor/memory/fp8copies.py), against hand counts
of Llama 3.1 8B's linear weights and the formats' bytes per element, on H100 and B200."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advisor.config import Checkpointing, Fp8Recipe, Precision, Stack, Task, TrainingConfig
from advisor.memory import DeviceOverheads, estimate_memory
from advisor.memory.dtypes import dtypes
from advisor.model.profiles import get_model_profile
from advisor.rules.taxonomy import load_taxonomy
from advisor.shell.cli import app

# Llama 3.1 8B's blocks' linear weights from its published config (hidden 4096, 8 KV heads
# of 128, intermediate 14336, 32 layers); the LM head runs in bf16 under every recipe.
LLAMA8_LINEAR = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)


def _breakdown(precision: Precision, recipe: Fp8Recipe | None = None) -> dict[str, int]:
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=precision,
        fp8_recipe=recipe,
        micro_batch=1,
        seq_len=4096,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.NONE,
    )
    est = estimate_memory(
        get_model_profile("llama-3.1-8b"),
        config,
        optimizer=load_taxonomy().get("adamw"),
        device=DeviceOverheads.cpu(),
    )
    return dict(est.breakdown)


def test_bytes_per_element_of_each_recipe() -> None:
    # torchao's Float8Linear saves the 16-bit input and weight (float8_linear.py,
    # ctx.save_for_backward(input_hp, weight_hp_t)) and keeps no FP8 copy.
    for r in (Fp8Recipe.TENSORWISE, Fp8Recipe.ROWWISE):
        d = dtypes(Precision.FP8_MIXED, r)
        assert (d.linear_in, d.weight_cache) == (2, 0)
    # TE per-tensor: a 1-byte column-wise input; the weight's FP8 copy and its transpose.
    d = dtypes(Precision.FP8_MIXED, Fp8Recipe.DELAYED)
    assert (d.linear_in, d.weight_cache) == (1, 2)
    # DeepSeek-V3 blockwise: one fp32 scale per 1x128 tile (4 bytes / 128 elements) and per
    # 128x128 block (4 / 16384), two weight copies.
    d = dtypes(Precision.FP8_MIXED, Fp8Recipe.BLOCKWISE)
    assert d.linear_in == (128 * 1 + 4) / 128
    assert d.weight_cache == 2 * (128 * 128 + 4) / (128 * 128)
    # Unchanged by a recipe: bf16 weights, gradients and activations, fp32 masters.
    bf = dtypes(Precision.BF16_MIXED)
    for r in Fp8Recipe:
        d = dtypes(Precision.FP8_MIXED, r)
        assert (d.weight, d.grad, d.master, d.act) == (bf.weight, bf.grad, bf.master, bf.act)
    assert dtypes(Precision.FP8_MIXED) == dtypes(Precision.FP8_MIXED, Fp8Recipe.TENSORWISE)


def test_weight_copies_per_recipe_are_the_linear_weight_count() -> None:
    caches = {r: _breakdown(Precision.FP8_MIXED, r)["weight_cache"] for r in Fp8Recipe}
    assert caches[Fp8Recipe.TENSORWISE] == caches[Fp8Recipe.ROWWISE] == 0
    assert caches[Fp8Recipe.DELAYED] == 2 * LLAMA8_LINEAR
    # 2 x (1 + 4/16384) bytes per weight, rounded up once.
    assert caches[Fp8Recipe.BLOCKWISE] == -(-LLAMA8_LINEAR * 2 * 16388 // 16384)


def test_saved_inputs_per_recipe() -> None:
    acts = {r: _breakdown(Precision.FP8_MIXED, r)["activations"] for r in Fp8Recipe}
    bf16 = _breakdown(Precision.BF16_MIXED)["activations"]
    # torchao saves exactly what bf16-mixed saves (the same 16-bit tensors).
    assert acts[Fp8Recipe.TENSORWISE] == acts[Fp8Recipe.ROWWISE] == bf16
    # TE saves 1-byte inputs; blockwise adds its 1x128 tiles' fp32 scales (1/32 of them).
    assert acts[Fp8Recipe.DELAYED] < acts[Fp8Recipe.BLOCKWISE] < bf16
    extra = acts[Fp8Recipe.BLOCKWISE] - acts[Fp8Recipe.DELAYED]
    assert 0 < extra <= acts[Fp8Recipe.DELAYED] / 32


@pytest.mark.parametrize(
    ("hardware", "precision", "recipe"),
    [
        ("h100-sxm-80gb", "fp8-mixed", "tensorwise"),
        ("h100-sxm-80gb", "fp8-mixed", "delayed"),
        ("h100-sxm-80gb", "fp8-mixed", "blockwise"),
        ("b200", "mxfp8-mixed", None),
        ("b200", "nvfp4-mixed", None),
    ],
)
def test_llama8_estimate_per_recipe(hardware: str, precision: str, recipe: str | None) -> None:
    args = ["estimate", "--model", "llama-3.1-8b", "--task", "pretrain", "--stack", "fused"]
    args += ["--precision", precision, "--hardware", hardware, "--json"]
    args += ["--fp8-recipe", recipe] if recipe else []
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    cache = out["breakdown"]["weight_cache"]
    per_weight = {
        "tensorwise": 0.0,
        "delayed": 2.0,
        "blockwise": 2 * (1 + 4 / 128**2),
        None: 2 * (1 + 1 / 32) if precision == "mxfp8-mixed" else 0.84 * 2 * (0.5 + 1 / 16),
    }[recipe]
    assert cache == pytest.approx(LLAMA8_LINEAR * per_weight, abs=1)
    said = {"fp8-mixed": f"fp8 {recipe} (", "mxfp8-mixed": "MXFP8BlockScaling"}
    assert any(said.get(precision, "NVFP4BlockScaling") in n for n in out["notes"])
    assert not any("fp8: 8-bit" in n for n in out["notes"])


@pytest.mark.parametrize("recipe", [r.value for r in Fp8Recipe])
def test_a_recipe_the_device_cannot_run_exits_2(recipe: str) -> None:
    args = ["estimate", "--model", "llama-3.1-8b", "--precision", "fp8-mixed"]
    r = CliRunner().invoke(app, [*args, "--fp8-recipe", recipe, "--hardware", "a100-sxm-80gb"])
    assert r.exit_code == 2
    assert "Error:" in r.output


@pytest.mark.parametrize("command", ["estimate", "recommend"])
def test_blockwise_needs_hopper(command: str) -> None:
    # Transformer Engine refuses Float8BlockScaling below compute capability 9.0; the
    # RTX 4090 (Ada, 8.9) runs the other recipes (torch's _scaled_mm has sm_89 kernels).
    args = [command, "--model", "llama-3.2-1b", "--hardware", "rtx-4090", "--task", "pretrain"]
    args += ["--precision", "fp8-mixed"] if command == "estimate" else ["--no-calibrate"]
    r = CliRunner().invoke(app, [*args, "--fp8-recipe", "blockwise"])
    assert r.exit_code == 2
    assert "Error: --fp8-recipe blockwise needs compute capability >= 9.0" in r.output
    assert "Traceback" not in r.output
    if command == "estimate":
        ok = CliRunner().invoke(app, [*args, "--fp8-recipe", "rowwise"])
        assert ok.exit_code == 0, ok.output
