"""The FP8 scaling recipes priced apart: each recipe's GEMM share against the kernel tables
it comes from (benchmarks/data/fp8_recipe_gemms.yaml), and its cast traffic.

No absolute time is asserted: GEMM time ratios between recipes are compared with the kernel
tables' throughput ratios, cast traffic with the passes each recipe's kernels make.
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.config import Checkpointing, Fp8Recipe, Precision, Stack, Task, TrainingConfig
from advisor.cost import predict_step_time
from advisor.cost.fp8recipes import GEMM_SHARE, cast_bytes, effective_recipe
from advisor.hardware.profiles import get_hardware_profile
from advisor.model import get_model_profile
from benchmarks.fp8_recipes import fit_shares, load_rows, ratios

H100 = get_hardware_profile("h100-sxm-80gb")
LLAMA8 = get_model_profile("llama-3.1-8b")
ROWS = load_rows()


def _parts(
    recipe: Fp8Recipe | None, precision: Precision = Precision.FP8_MIXED, **kw: Any
) -> dict[str, float]:
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=precision,
        micro_batch=2,
        seq_len=8192,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.SELECTIVE,
        fp8_recipe=recipe,
        **kw,
    )
    st = predict_step_time(LLAMA8, config, calibration=None, hardware=H100)
    return {k: v.seconds for k, v in st.components.items()} | {"total": st.seconds}


def test_every_recipe_has_a_share_cast_bytes_and_a_kernel_table_row() -> None:
    assert set(GEMM_SHARE) == set(Fp8Recipe)
    named = {r["recipe"] for r in ROWS}
    assert {"tensorwise", "rowwise", "blockwise"} <= named
    # Every row names a source the file describes, and every source has rows.
    import yaml

    from benchmarks.fp8_recipes import DATA

    sources = yaml.safe_load(DATA.read_text())["sources"]
    assert {r["source"] for r in ROWS} == set(sources)


@pytest.mark.parametrize("recipe", ["rowwise", "blockwise"])
def test_gemm_share_is_the_kernel_tables_ratio(recipe: str) -> None:
    fitted = fit_shares(ROWS)["shares"][recipe]
    assert GEMM_SHARE[Fp8Recipe(recipe)] == pytest.approx(fitted, abs=5e-4)


def test_rowwise_share_is_within_the_tables_per_shape_spread() -> None:
    per_shape = ratios(ROWS, "vllm-17126", "rowwise", "tensorwise")
    assert len(per_shape) >= 2
    assert min(per_shape) <= GEMM_SHARE[Fp8Recipe.ROWWISE] <= max(per_shape)


def test_blockwise_share_is_within_every_published_blockwise_ratio() -> None:
    # FBGEMM's block/row ratios at training shapes (x the rowwise share) and the H100
    # block/tensor ratios of vLLM #49363 at inference shapes bracket the share.
    row = GEMM_SHARE[Fp8Recipe.ROWWISE]
    evidence = [r * row for r in ratios(ROWS, "fbgemm-2546", "blockwise", "rowwise")]
    evidence += ratios(ROWS, "vllm-49363", "blockwise", "tensorwise")
    assert len(evidence) >= 7
    assert min(evidence) <= GEMM_SHARE[Fp8Recipe.BLOCKWISE] <= max(evidence)
    # Block scaling costs GEMM throughput at training shapes (FBGEMM: 0.73-0.77 of rowwise).
    assert GEMM_SHARE[Fp8Recipe.BLOCKWISE] < 0.8


@pytest.mark.parametrize("recipe", ["rowwise", "blockwise", "delayed"])
def test_gemm_time_scales_as_the_kernel_tables_throughput(recipe: str) -> None:
    # The blocks' FP8 GEMMs take 1/share of the tensorwise time: the tables' TFLOP/s ratio.
    tensorwise = _parts(Fp8Recipe.TENSORWISE)["forward_backward"]
    other = _parts(Fp8Recipe(recipe))["forward_backward"]
    table = fit_shares(ROWS)["shares"][recipe]
    assert tensorwise / other == pytest.approx(table, abs=5e-4)


def test_default_is_tensorwise_bit_for_bit() -> None:
    assert _parts(None) == _parts(Fp8Recipe.TENSORWISE)


def test_attention_and_lm_head_do_not_depend_on_the_recipe() -> None:
    base = _parts(Fp8Recipe.TENSORWISE)
    for recipe in Fp8Recipe:
        parts = _parts(recipe)
        assert parts["attention"] == base["attention"]
        assert parts["lm_head"] == base["lm_head"]


def test_cast_traffic_follows_the_passes_each_recipe_makes() -> None:
    casts = {r: _parts(r)["fp8_casts"] for r in Fp8Recipe}
    # delayed: no amax pass; blockwise: amax per tile inside the cast, but re-quantised
    # activation copies; tensorwise: an amax pass per cast; rowwise: re-quantised backward
    # operands and a rescale of the backward GEMMs' outputs.
    assert (
        casts[Fp8Recipe.DELAYED]
        < casts[Fp8Recipe.BLOCKWISE]
        < casts[Fp8Recipe.TENSORWISE]
        < casts[Fp8Recipe.ROWWISE]
    )


@pytest.mark.parametrize(
    ("recipe", "fwd", "bwd"),
    [
        # per element of input, weight and output (mk = nk = mn = 1): forward casts the input
        # and the weight; backward casts the output gradient and makes the backward copies.
        # tensorwise: amax (read 2) + cast (read 2, write 1) = 5 per cast; FP8 transposes 2.
        ("tensorwise", 10.0, 5.0 + 2.0 * 3),
        # delayed: the cast records the amax as it goes: 3 per cast; transposes 2.
        ("delayed", 6.0, 3.0 + 2.0 * 3),
        # rowwise: three re-quantisations from 16 bits (5 each) + the rescale of dgrad's and
        # wgrad's outputs (read 2, write 2 each).
        ("rowwise", 10.0, 5.0 + 5.0 * 3 + 4.0 * 2),
        # blockwise: fused casts (3); input and gradient re-tiled 128x1 (3 each); the
        # 128x128 weight blocks transpose exactly (2).
        ("blockwise", 6.0, 3.0 + 3.0 + 2.0 + 3.0),
    ],
)
def test_cast_bytes_per_element(recipe: str, fwd: float, bwd: float) -> None:
    assert cast_bytes(Fp8Recipe(recipe), 1.0, 1.0, 1.0) == (fwd, bwd)


def test_a_recipe_prices_only_fp8_mixed() -> None:
    assert effective_recipe(Precision.FP8_MIXED, None) is Fp8Recipe.TENSORWISE
    assert effective_recipe(Precision.MXFP8_MIXED, Fp8Recipe.ROWWISE) is None
    assert effective_recipe(Precision.BF16_MIXED, Fp8Recipe.BLOCKWISE) is None
    assert _parts(Fp8Recipe.ROWWISE, Precision.BF16_MIXED) == _parts(None, Precision.BF16_MIXED)


def test_the_json_view_lists_a_chosen_recipe_of_fp8_plans_only() -> None:
    chosen = TrainingConfig(precision=Precision.FP8_MIXED, fp8_recipe=Fp8Recipe.ROWWISE)
    assert chosen.model_dump(mode="json")["fp8_recipe"] == "rowwise"
    assert TrainingConfig(**chosen.model_dump(mode="json")) == chosen
    assert "fp8_recipe" not in TrainingConfig(precision=Precision.FP8_MIXED).model_dump()
    bf16 = TrainingConfig(precision=Precision.BF16_MIXED, fp8_recipe=Fp8Recipe.ROWWISE)
    assert "fp8_recipe" not in bf16.model_dump()


# Bytes per element of the block-scaled formats, from their definitions (not the code's
# constants): OCP MX v1.0: 32 elements of 8 bits + one 8-bit E8M0 scale; NVFP4: 16 E2M1
# elements of 4 bits + one 8-bit E4M3 scale (the fp32 per-tensor scale is one per tensor).
_MX = (32 * 8 + 8) / 8 / 32
_NV = (16 * 4 + 8) / 8 / 16


@pytest.mark.parametrize(
    ("precision", "fwd", "bwd"),
    [
        # MXFP8: one kernel takes each 32-block's amax and casts (read 2, write 1 + 1/32):
        # no tensor-wide amax pass; the column-wise copies of input, weight and gradient are
        # written by the same kernel from its one read of the 16-bit tile.
        (Precision.MXFP8_MIXED, 2 * (2 + _MX), (2 + _MX) + 3 * _MX),
        # NVFP4: an amax pass for the per-tensor scale (read 2), then the cast (read 2,
        # write 0.5625); the Hadamard-transformed column-wise copies of the input and of the
        # gradient re-read the 16-bit source (2 + 0.5625 each); the weight's 16x16 blocks
        # transpose exactly (read and write 0.5625).
        (Precision.NVFP4_MIXED, 2 * (4 + _NV), (4 + _NV) + 2 * (2 + _NV) + 2 * _NV),
    ],
)
def test_block_scaled_cast_bytes_per_element(precision: Precision, fwd: float, bwd: float) -> None:
    assert cast_bytes(precision, 1.0, 1.0, 1.0) == pytest.approx((fwd, bwd))


B200 = get_hardware_profile("b200")


def _b200_casts(precision: Precision) -> float:
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=precision,
        micro_batch=2,
        seq_len=8192,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.SELECTIVE,
    )
    st = predict_step_time(LLAMA8, config, calibration=None, hardware=B200)
    return st.components["fp8_casts"].seconds


def test_block_scaled_precisions_no_longer_borrow_the_tensorwise_casts() -> None:
    fp8, mx, nv = (
        _b200_casts(p) for p in (Precision.FP8_MIXED, Precision.MXFP8_MIXED, Precision.NVFP4_MIXED)
    )
    # Same GEMMs, same bandwidth (TP 1): per GEMM, tensorwise moves 5 (mk + nk) forward and
    # 5 mn + 2 (mk + nk + mn) backward = 7 per element of each operand; MXFP8 moves
    # (2 + 1.03125) + 1.03125 = 4.0625 per element of each: the ratio is shape-free.
    assert mx / fp8 == pytest.approx((2 + _MX + _MX) / 7, rel=1e-9)
    # NVFP4 per element: input and gradient (4 + 0.5625) + (2 + 0.5625) = 7.125, weight
    # (4 + 0.5625) + 2 x 0.5625 = 5.6875; only 84% of the layers are quantised. The shapes
    # decide the mix, so the ratio to MXFP8 lies between the two per-operand ratios.
    low, high = 0.84 * (4 + 3 * _NV) / (2 + 2 * _MX), 0.84 * (6 + 2 * _NV) / (2 + 2 * _MX)
    assert low < nv / mx < high


def _casts(recipe: Fp8Recipe, micro_batch: int, accumulation: int) -> float:
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.FP8_MIXED,
        fp8_recipe=recipe,
        micro_batch=micro_batch,
        grad_accumulation=accumulation,
        seq_len=4096,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.SELECTIVE,
    )
    st = predict_step_time(LLAMA8, config, calibration=None, hardware=H100)
    return st.components["fp8_casts"].seconds


@pytest.mark.parametrize("recipe", list(Fp8Recipe))
def test_te_recipes_cast_the_weights_once_per_step(recipe: Fp8Recipe) -> None:
    # Cast traffic is linear in the tokens: c(T) = a T + W, W the weights' share. Two token
    # counts give W = 2 c(T) - c(2T) without knowing the GEMM shapes or the bandwidth.
    one, two = _casts(recipe, 1, 1), _casts(recipe, 2, 1)
    weights = 2 * one - two
    assert weights > 0
    eight = _casts(recipe, 1, 8)
    if recipe in (Fp8Recipe.DELAYED, Fp8Recipe.BLOCKWISE):
        # Megatron-LM's TE layers pass is_first_microbatch: weights cast on the first
        # micro-batch of the step only.
        assert eight == pytest.approx(8 * one - 7 * weights, rel=1e-9)
    else:
        # torchao's Float8Linear casts its weight on every micro-batch.
        assert eight == pytest.approx(8 * one, rel=1e-9)
