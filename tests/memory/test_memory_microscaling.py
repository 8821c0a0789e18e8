"""MXFP8 and NVFP4 (block-scaled) precisions: bytes per element from the format
definitions, the weight copies and saved inputs the recipes keep, their price on Blackwell
and their refusal below compute capability 10.0."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from advisor.config import Checkpointing, Fp8Recipe, Precision, Task, TrainingConfig
from advisor.cost.microscaling import block_scaled_peak
from advisor.hardware.profiles import get_hardware_profile
from advisor.memory import DeviceOverheads, estimate_memory
from advisor.memory.dtypes import MXFP8_BYTES, NVFP4_BF16_SHARE, NVFP4_BYTES, dtypes
from advisor.model.profiles import get_model_profile
from advisor.rules.taxonomy import load_taxonomy
from advisor.shell.cli import app


def test_element_bytes_follow_the_format_definitions() -> None:
    # OCP Microscaling Formats v1.0: 32 elements of 8 bits share one 8-bit E8M0 scale.
    assert MXFP8_BYTES * 32 == 32 + 1
    # NVFP4 (arXiv 2509.25149, sec. 2): 16 E2M1 elements (4 bits) share one E4M3 scale.
    assert NVFP4_BYTES * 16 == 16 * 0.5 + 1
    # NVIDIA's recipe keeps ~16% of the linear layers in bf16 (sec. 4).
    assert pytest.approx(0.16) == NVFP4_BF16_SHARE
    mx, nv = dtypes(Precision.MXFP8_MIXED), dtypes(Precision.NVFP4_MIXED)
    # Weights, gradients, masters and states as bf16-mixed: only GEMM operands quantised.
    bf = dtypes(Precision.BF16_MIXED)
    for d in (mx, nv):
        assert (d.weight, d.grad, d.master, d.state, d.act) == (
            bf.weight,
            bf.grad,
            bf.master,
            bf.state,
            bf.act,
        )


def _estimate(precision: Precision, recipe: Fp8Recipe | None = None) -> object:
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=precision,
        fp8_recipe=recipe,
        micro_batch=1,
        seq_len=4096,
        checkpointing=Checkpointing.NONE,
    )
    return estimate_memory(
        get_model_profile("llama-3.1-8b"),
        config,
        optimizer=load_taxonomy().get("adamw"),
        device=DeviceOverheads.cpu(),
    )


# Llama 3.1 8B's blocks' linear weights, from its published config (hidden 4096, 32 heads
# of 128, 8 KV heads, intermediate 14336, 32 layers): q and o 4096 x 4096, k and v
# 1024 x 4096, gate, up and down 14336 x 4096. The LM head stays bf16 (no copy).
LLAMA8_LINEAR = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)


def test_quantised_weight_copies_per_gemm_orientation() -> None:
    mx = _estimate(Precision.MXFP8_MIXED)
    nv = _estimate(Precision.NVFP4_MIXED)
    # A row-wise and a column-wise copy of every block weight, with their block scales.
    assert mx.breakdown["weight_cache"] == math.ceil(LLAMA8_LINEAR * 2 * MXFP8_BYTES)  # type: ignore[attr-defined]
    expected = math.ceil(LLAMA8_LINEAR * (1 - NVFP4_BF16_SHARE) * 2 * NVFP4_BYTES)
    assert nv.breakdown["weight_cache"] == expected  # type: ignore[attr-defined]


def test_saved_linear_inputs_shrink_with_the_element_width() -> None:
    acts = {
        p: _estimate(p).breakdown["activations"]  # type: ignore[attr-defined]
        for p in (Precision.BF16_MIXED, Precision.MXFP8_MIXED)
    }
    te_fp8 = _estimate(Precision.FP8_MIXED, Fp8Recipe.DELAYED).breakdown["activations"]  # type: ignore[attr-defined]
    nv = _estimate(Precision.NVFP4_MIXED).breakdown["activations"]  # type: ignore[attr-defined]
    # MXFP8 saves FP8 inputs plus one scale byte per 32: a little above TE's per-tensor
    # FP8, below bf16.
    assert te_fp8 < acts[Precision.MXFP8_MIXED] < acts[Precision.BF16_MIXED]
    # The scales add 1/32 of what FP8 saves of the linear inputs (at most 1/32 of it all).
    extra = acts[Precision.MXFP8_MIXED] - te_fp8
    assert 0 < extra <= te_fp8 / 32
    assert nv < te_fp8


def test_block_scaled_peaks_on_blackwell() -> None:
    b200 = get_hardware_profile("b200")
    # MXFP8 runs at the FP8 tensor-core rate (the profile's figures: 4,500 dense).
    assert block_scaled_peak(b200, Precision.MXFP8_MIXED) == b200.peak_tflops.fp8 * 1e12  # type: ignore[operator]
    # NVFP4: 84% of the GEMM FLOPs at the 9,000 TFLOP/s FP4 rate, 16% at bf16's 2,250.
    blended = 1e12 / (0.84 / 9000 + 0.16 / 2250)
    assert block_scaled_peak(b200, Precision.NVFP4_MIXED) == pytest.approx(blended)
    assert block_scaled_peak(b200, Precision.FP8_MIXED) is None


def test_blackwell_step_times_order_by_gemm_width() -> None:
    runner = CliRunner()
    seconds = {}
    for p in ("bf16-mixed", "fp8-mixed", "mxfp8-mixed", "nvfp4-mixed"):
        args = ["estimate", "--model-size", "8B", "--task", "pretrain", "--precision", p]
        r = runner.invoke(app, [*args, "--hardware", "b200", "--json"])
        assert r.exit_code == 0, r.output
        seconds[p] = json.loads(r.stdout)["step_time"]["seconds"]
    assert seconds["nvfp4-mixed"] < seconds["mxfp8-mixed"] < seconds["bf16-mixed"]
    # Same peak and GEMM share as tensorwise fp8 on B200, fewer cast bytes (no amax pass,
    # both orientations from one read: advisor/cost/fp8recipes.py).
    assert seconds["mxfp8-mixed"] < seconds["fp8-mixed"]


@pytest.mark.parametrize("hardware", ["h100-sxm-80gb", "mi300x", "rtx-4090"])
@pytest.mark.parametrize("precision", ["mxfp8-mixed", "nvfp4-mixed"])
def test_refused_below_compute_capability_10(hardware: str, precision: str) -> None:
    args = ["estimate", "--model-size", "8B", "--task", "pretrain", "--precision", precision]
    r = CliRunner().invoke(app, [*args, "--hardware", hardware])
    assert r.exit_code == 2
    assert "Error:" in r.output and precision in r.output
