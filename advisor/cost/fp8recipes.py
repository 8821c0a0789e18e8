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

The block-scaled precisions (``mxfp8-mixed``, ``nvfp4-mixed``) have their own casts, keyed
here by the precision; element sizes include the block scales (advisor/memory/dtypes.py):

- mxfp8 (OCP Microscaling Formats spec v1.0: 32-element blocks, one 8-bit E8M0 scale:
  1 + 1/32 bytes per element; TE ``MXFP8BlockScaling``): each block's amax is taken by the
  casting kernel itself, so there is no tensor-wide amax pass: read 2, write 1 + 1/32
  (3.03125). A row-scaled MX tensor is not column-scaled, so the backward operands are
  quantised again along the other axis from the 16-bit source, not transposed from the FP8
  data; TE's MXFP8 quantize kernel (transformer_engine/common/cast/mxfp8/quantize_mxfp8.cuh,
  ``ROWWISE_SCALING`` and ``COLWISE_SCALING`` outputs of one kernel) writes both from one
  read of each tile, so each column-wise copy costs its write, 1 + 1/32.
- nvfp4 (NVIDIA NVFP4: 16-element blocks, an E4M3 scale each, and an fp32 per-tensor scale:
  0.5 + 1/16 bytes per element; Abecassis et al. 2025, arXiv 2509.25149, sec. 4, and TE's
  ``NVFP4BlockScaling``): the per-tensor scale needs the tensor's amax before the cast, a
  reduction pass (2), then the cast (2 + 0.5625): 4.5625. The weight-gradient GEMM's
  inputs (the activations and the output gradients, column-wise) get a 16x16 random
  Hadamard transform before they are quantised: a second quantisation from the 16-bit
  source with the transform in the kernel (2 + 0.5625). Its amax is taken in the same
  reduction as the row-wise one: TE's NVFP4 quantizer (transformer_engine/pytorch/csrc/
  quantizer.cpp) calls ``nvte_hadamard_transform_amax``, which returns the raw row-wise
  amax and the post-transform column-wise amax from one read; the casts are priced as
  separate reads of the source (TE fuses the transform into the column-wise cast,
  ``hadamard_transform_cast_fusion``). Weights are scaled in 16x16 blocks (2D), so their
  column-wise copy is the transposed FP4 data and scales (0.5625 + 0.5625). Stochastic
  rounding of the gradients changes the arithmetic, not the bytes. The bf16 share of the
  layers (``NVFP4_BF16_SHARE``) casts nothing.
"""

from __future__ import annotations

from typing import NamedTuple

from advisor.config import Fp8Recipe, Precision
from advisor.memory.dtypes import MXFP8_BYTES, NVFP4_BF16_SHARE, NVFP4_BYTES

#: What keys a recipe's casts: the fp8-mixed recipe, or the block-scaled precision.
CastScheme = Fp8Recipe | Precision


class CastBytes(NamedTuple):
    """Bytes moved per element of a GEMM operand by one recipe's scaling and casts."""

    cast: float  # each operand's forward cast (input, weight) and the output gradient's
    activation_bwd: float  # the input's copy for the weight gradient
    weight_bwd: float  # the weight's copy for the input gradient
    gradient_bwd: float  # the output gradient's second copy (for the weight gradient)
    rescale: float  # per element of the backward GEMMs' outputs (dgrad m x k, wgrad n x k)


CAST_BYTES: dict[CastScheme, CastBytes] = {
    Fp8Recipe.TENSORWISE: CastBytes(5.0, 2.0, 2.0, 2.0, 0.0),
    Fp8Recipe.DELAYED: CastBytes(3.0, 2.0, 2.0, 2.0, 0.0),
    Fp8Recipe.ROWWISE: CastBytes(5.0, 5.0, 5.0, 5.0, 4.0),
    Fp8Recipe.BLOCKWISE: CastBytes(3.0, 3.0, 2.0, 3.0, 0.0),
    Precision.MXFP8_MIXED: CastBytes(2 + MXFP8_BYTES, MXFP8_BYTES, MXFP8_BYTES, MXFP8_BYTES, 0.0),
    Precision.NVFP4_MIXED: CastBytes(
        2 + 2 + NVFP4_BYTES, 2 + NVFP4_BYTES, 2 * NVFP4_BYTES, 2 + NVFP4_BYTES, 0.0
    ),
}

#: The schemes Transformer Engine runs, which cast each weight once per optimizer step, not
#: once per micro-batch: Megatron-LM's TE layers pass ``is_first_microbatch`` to TE's
#: ``Linear`` / ``GroupedLinear`` (megatron/core/extensions/transformer_engine.py, source
#: code: True on a step's first micro-batch, then False), and TE reuses the cached
#: quantised weight and its column-wise copy for the rest of the step. torchao's
#: ``Float8Linear`` (tensorwise, rowwise) casts the weight in every forward and backward.
WEIGHT_CACHED: frozenset[CastScheme] = frozenset(
    {Fp8Recipe.DELAYED, Fp8Recipe.BLOCKWISE, Precision.MXFP8_MIXED, Precision.NVFP4_MIXED}
)

#: The share of the blocks' linear layers a scheme casts (NVFP4's recipe keeps ~16% in bf16).
CAST_SHARE: dict[CastScheme, float] = {Precision.NVFP4_MIXED: 1 - NVFP4_BF16_SHARE}

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

#: The least CUDA compute capability a recipe's kernels run on, where it is above fp8-mixed's
#: own 8.9: Transformer Engine refuses ``Float8BlockScaling`` below 9.0 ("FP8 block scaled
#: GEMM requires compute capability 9.0 or higher", transformer_engine/pytorch/
#: quantization.py, ``_compute_fp8_block_scaling_support``). torchao's rowwise recipe runs
#: on Ada (PyTorch's ``_scaled_mm`` has an sm_89 row-wise kernel, RowwiseScaledMMSM89.cu).
MIN_COMPUTE_CAPABILITY: dict[Fp8Recipe, float] = {Fp8Recipe.BLOCKWISE: 9.0}


def recipe_refusal(recipe: Fp8Recipe | None, compute_capability: float) -> str | None:
    """Why a device of ``compute_capability`` cannot run ``recipe`` (None: it can).

    Args:
        recipe: the chosen fp8-mixed recipe (None: the default tensorwise).
        compute_capability: the CUDA device's (0 when unknown: not refused here).
    """
    if recipe is None:
        return None
    low = MIN_COMPUTE_CAPABILITY.get(recipe)
    if low is None or not compute_capability or compute_capability >= low:
        return None
    return (
        f"--fp8-recipe {recipe.value} needs compute capability >= {low:.1f} "
        "(Transformer Engine's block-scaled FP8 GEMMs)"
    )


#: What the cost breakdown says of each recipe's casts.
CAST_DETAIL: dict[CastScheme, str] = {
    Fp8Recipe.TENSORWISE: "dynamic tensor-wise scaling, at memory bandwidth",
    Fp8Recipe.DELAYED: "delayed tensor-wise scaling (amax history), at memory bandwidth",
    Fp8Recipe.ROWWISE: "row-wise scaling, backward operands re-quantised, at memory bandwidth",
    Fp8Recipe.BLOCKWISE: "1x128 / 128x128 block scaling, casts fused per tile, at memory bandwidth",
    Precision.MXFP8_MIXED: "MXFP8 1x32 block scaling, row- and column-wise copies from one "
    "read, at memory bandwidth",
    Precision.NVFP4_MIXED: "NVFP4 1x16 / 16x16 block scaling with a per-tensor amax pass, "
    "Hadamard-transformed wgrad inputs, at memory bandwidth",
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


def cast_scheme(precision: Precision, recipe: Fp8Recipe | None) -> CastScheme | None:
    """Whose casts a plan pays: fp8-mixed's recipe (tensorwise by default), the block-scaled
    precision itself, or None for a plan without FP8 / FP4 GEMMs.

    Args:
        precision: the configuration's precision.
        recipe: the configuration's ``kernels.fp8_recipe``.

    Returns:
        The key of :data:`CAST_BYTES`, or None.
    """
    if precision in (Precision.MXFP8_MIXED, Precision.NVFP4_MIXED):
        return precision
    return effective_recipe(precision, recipe)


def cast_bytes(
    recipe: CastScheme, mk: float, nk: float, mn: float, *, input_cast: bool = True
) -> tuple[float, float]:
    """(forward, backward) bytes one GEMM's scaling and casts move.

    Args:
        recipe: the FP8 recipe, or the block-scaled precision.
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
