"""The FP8 scaling recipes of ``fp8-mixed``, priced apart: their cast and scale traffic as
memory-bound passes, and their GEMMs' share of the tensorwise FP8 GEMM's throughput.

The Hopper share ``gemm_fp8`` (benchmarks/gpu_fit.py) was fitted on runs that scaled per
tensor (torchtitan's and OLMo-core's torchao Float8, tensorwise by default): tensorwise is
the reference, and every other recipe's GEMM runs at ``gemm_fp8 x GEMM_SHARE[recipe]``.

Cast traffic, in bytes per element of the 16-bit operand (an amax pass reads 2 bytes; a cast
reads 2 and writes 1; a transpose of an FP8 copy reads 1 and writes 1):

- tensorwise (current scaling; torchao ``tensorwise``, TE ``Float8CurrentScaling``): a global
  amax reduction, then the cast (5); the backward GEMMs take transposed FP8 copies (2).
- delayed (TE ``DelayedScaling``, Megatron's default ``--fp8-recipe``): the scale comes from
  the amax history, so the cast records the new amax as it goes: one pass (3); transposes (2).
- rowwise (torchao ``rowwise``): a per-row amax and the cast (5); a row-scaled tensor is not
  column-scaled, so each backward operand is re-quantised from its 16-bit copy along the
  other axis (5 instead of a 2-byte transpose). The backward GEMMs accumulate in full
  precision, which torchao runs as cuBLAS's per-tensor kernel and rescales the output in a
  separate pass (torchao/float8/float8_python_api.py, ``addmm_float8_unwrapped``, pytorch/ao
  PR #1325): read 2 and write 2 bytes per output element of dgrad and wgrad.
- blockwise (DeepSeek-V3 tech report, arXiv 2412.19437, sec. 3.3: 1x128 activation tiles,
  128x128 weight blocks; TE ``Float8BlockScaling``): each tile's amax is taken in registers
  by the casting kernel, one pass (3); activations and output gradients are re-quantised as
  128x1 tiles for the weight gradient (3); 128x128 weight blocks transpose exactly (2).
"""

from __future__ import annotations

from typing import NamedTuple

from advisor.config import Fp8Recipe, Precision


class CastBytes(NamedTuple):
    """Bytes moved per element of a GEMM operand by one recipe's scaling and casts."""

    cast: float  # each operand's forward cast (input, weight) and the output gradient's
    activation_bwd: float  # the input's copy for the weight gradient
    weight_bwd: float  # the weight's copy for the input gradient
    gradient_bwd: float  # the output gradient's second copy (for the weight gradient)
    rescale: float  # per element of the backward GEMMs' outputs (dgrad m x k, wgrad n x k)


CAST_BYTES: dict[Fp8Recipe, CastBytes] = {
    Fp8Recipe.TENSORWISE: CastBytes(5.0, 2.0, 2.0, 2.0, 0.0),
    Fp8Recipe.DELAYED: CastBytes(3.0, 2.0, 2.0, 2.0, 0.0),
    Fp8Recipe.ROWWISE: CastBytes(5.0, 5.0, 5.0, 5.0, 4.0),
    Fp8Recipe.BLOCKWISE: CastBytes(3.0, 3.0, 2.0, 3.0, 0.0),
}

#: Each recipe's GEMM throughput relative to the tensorwise FP8 GEMM at the same shape, on
#: Hopper, from kernel benchmark tables (rows in benchmarks/data/fp8_recipe_gemms.yaml;
#: tests/cost/test_fp8_recipes.py recomputes each from them):
#: - delayed: the same per-tensor-scaled cuBLASLt GEMM as tensorwise (1.0 by construction);
#: - rowwise: vLLM's benchmark (PR #17126), per-token x per-channel against per-tensor
#:   CUTLASS FP8 GEMMs at the same shapes: the mean ratio of its rows;
#: - blockwise: FBGEMM's H100 benchmark (PR #2546), the 128x128 block-scaled GEMM against
#:   the row-scaled one at three training shapes (mean ratio), times the rowwise share.
GEMM_SHARE: dict[Fp8Recipe, float] = {
    Fp8Recipe.TENSORWISE: 1.0,
    Fp8Recipe.DELAYED: 1.0,
    Fp8Recipe.ROWWISE: 1.001,
    Fp8Recipe.BLOCKWISE: 0.756,
}

#: What the cost breakdown says of each recipe's casts.
CAST_DETAIL: dict[Fp8Recipe, str] = {
    Fp8Recipe.TENSORWISE: "dynamic tensor-wise scaling, at memory bandwidth",
    Fp8Recipe.DELAYED: "delayed tensor-wise scaling (amax history), at memory bandwidth",
    Fp8Recipe.ROWWISE: "row-wise scaling, backward operands re-quantised, at memory bandwidth",
    Fp8Recipe.BLOCKWISE: "1x128 / 128x128 block scaling, casts fused per tile, at memory bandwidth",
}


#: What the estimate says of a chosen recipe's price (the tensorwise default says nothing).
RECIPE_NOTE: dict[Fp8Recipe, str] = {
    Fp8Recipe.TENSORWISE: "fp8 tensorwise: the recipe the Hopper FP8 share (gemm_fp8) was "
    "fitted on (torchtitan, OLMo-core)",
    Fp8Recipe.DELAYED: "fp8 delayed: the tensorwise GEMM (same per-tensor kernel), casts "
    "without an amax pass (the scale comes from the amax history)",
    Fp8Recipe.ROWWISE: f"fp8 rowwise: GEMMs at {GEMM_SHARE[Fp8Recipe.ROWWISE]:.2f}x the "
    "tensorwise throughput (vLLM kernel table, benchmarks/data/fp8_recipe_gemms.yaml); "
    "backward operands re-quantised from 16 bits and backward outputs rescaled",
    Fp8Recipe.BLOCKWISE: "fp8 blockwise (1x128 / 128x128): GEMMs at "
    f"{GEMM_SHARE[Fp8Recipe.BLOCKWISE]:.2f}x the tensorwise throughput (FBGEMM's H100 "
    "block-scaled kernel, benchmarks/data/fp8_recipe_gemms.yaml; newer kernels reach "
    "0.78-1.03x at inference shapes); casts fused per tile",
}


def effective_recipe(precision: Precision, recipe: Fp8Recipe | None) -> Fp8Recipe | None:
    """The recipe an ``fp8-mixed`` plan runs (tensorwise unless one is chosen); None for
    every other precision (MXFP8 and NVFP4 are priced in advisor/cost/microscaling.py).

    Args:
        precision: the configuration's precision.
        recipe: the configuration's ``kernels.fp8_recipe``.

    Returns:
        The recipe, or None.
    """
    if precision is not Precision.FP8_MIXED:
        return None
    return Fp8Recipe.TENSORWISE if recipe is None else recipe


def cast_bytes(
    recipe: Fp8Recipe, mk: float, nk: float, mn: float, *, input_cast: bool = True
) -> tuple[float, float]:
    """(forward, backward) bytes one GEMM's scaling and casts move.

    Args:
        recipe: the FP8 recipe.
        mk: elements of the input (tokens x in-features).
        nk: elements of the weight.
        mn: elements of the output (and of its gradient).
        input_cast: False where the input was cast once upstream (the column-parallel
            layers' shared input under tensor parallelism, priced by the caller).

    Returns:
        Bytes moved in the forward and in the backward pass.
    """
    b = CAST_BYTES[recipe]
    own = mk if input_cast else 0.0
    fwd = b.cast * (own + nk)
    # NOTE: summed in this order so that tensorwise's bytes are bit-identical to the single
    # coefficient pricing this module replaced (5 mn + 2 (mk + nk + mn)).
    copies = b.activation_bwd * own + b.weight_bwd * nk + b.gradient_bwd * mn
    bwd = b.cast * mn + copies + b.rescale * (mk + nk)
    return fwd, bwd
