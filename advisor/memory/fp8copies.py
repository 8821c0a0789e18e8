"""What each ``fp8-mixed`` recipe keeps alive beside the bf16 model: the FP8 input a linear
layer saves for its weight gradient and the FP8 weight copies cached through the step.

The recipes differ in their implementation, and the implementation decides the memory:

- ``tensorwise`` and ``rowwise`` run as torchao's ``Float8Linear`` (torchtitan's and
  OLMo-core's FP8 training, the runs the Hopper FP8 share was fitted on; TE's
  ``Float8CurrentScaling`` is the other tensorwise implementation). Its autograd function
  (``matmul_with_hp_or_float8_args`` in torchao/float8/float8_linear.py, source code) saves
  the high-precision input and weight for backward and casts each operand again in the
  backward along the axis the GEMM needs: a linear saves its 16-bit input (shared with the
  ops that save it under bf16-mixed: no extra copy) and no FP8 weight copy outlives its GEMM.
- ``delayed`` and ``blockwise`` run as Transformer Engine's ``DelayedScaling`` and
  ``Float8BlockScaling`` recipes (Megatron-LM's ``--fp8-recipe delayed|blockwise``). TE's
  ``Linear`` (transformer_engine/pytorch/module/linear.py, source code) saves the quantised
  input in the layout the weight-gradient GEMM reads (the column-wise / transposed copy
  only, its row-wise usage dropped after the forward GEMM) and, with weight caching across the
  micro-batches of a step (``is_first_microbatch``), keeps each linear weight's FP8 copy and
  its transpose (Hopper's FP8 tensor cores take only the TN layout, so the backward GEMMs
  need the transposed copy: 2 bytes per weight).
- ``blockwise`` (DeepSeek-V3, arXiv 2412.19437 sec. 3.3; TE ``Float8BlockScaling``): 1x128
  activation tiles and 128x128 weight blocks, one fp32 scale each: the saved input is
  1 + 4/128 bytes per element, each weight copy 1 + 4/128**2.

``mxfp8-mixed`` and ``nvfp4-mixed`` (TE ``MXFP8BlockScaling`` / ``NVFP4BlockScaling``) are
their own precisions, laid out in :func:`advisor.memory.dtypes.microscaling_dtypes`.

None of these implementations quantise the LM head (torchtitan converts the blocks'
linears only; Megatron-LM's output layer is not a TE module): it keeps no FP8 copy.
"""

from __future__ import annotations

from typing import NamedTuple

from advisor.config import Fp8Recipe

#: Bytes of one fp32 scale.
_FP32 = 4
#: DeepSeek-V3's tile and block edge (arXiv 2412.19437, sec. 3.3).
_TILE = 128


class Fp8Copies(NamedTuple):
    """What one recipe's implementation keeps, in bytes per element."""

    implementation: str
    linear_in: float  # what a linear layer saves of its input
    weight_cache: float  # FP8 copies of each linear weight kept through the step


FP8_COPIES: dict[Fp8Recipe, Fp8Copies] = {
    Fp8Recipe.TENSORWISE: Fp8Copies("torchao Float8Linear", 2.0, 0.0),
    Fp8Recipe.ROWWISE: Fp8Copies("torchao Float8Linear", 2.0, 0.0),
    Fp8Recipe.DELAYED: Fp8Copies("Transformer Engine DelayedScaling", 1.0, 2.0),
    Fp8Recipe.BLOCKWISE: Fp8Copies(
        "Transformer Engine Float8BlockScaling",
        1 + _FP32 / _TILE,
        2 * (1 + _FP32 / _TILE**2),
    ),
}


#: What the block-scaled precisions keep (advisor/memory/dtypes.py, microscaling_dtypes).
MICROSCALING_NOTE = {
    "mxfp8-mixed": "mxfp8 (Transformer Engine MXFP8BlockScaling): linear inputs saved "
    "column-wise in MXFP8 (1 + 1/32 B/element: one E8M0 scale per 32); a row- and a "
    "column-wise copy of each block weight (2 x (1 + 1/32) B/weight)",
    "nvfp4-mixed": "nvfp4 (Transformer Engine NVFP4BlockScaling): 84% of the linears save "
    "their input column-wise in NVFP4 (0.5 + 1/16 B/element: one E4M3 scale per 16) and "
    "keep a row- and a column-wise copy of the weight (2 x (0.5 + 1/16) B/weight); the "
    "other 16% stay bf16",
}


def fp8_copies_note(recipe: Fp8Recipe) -> str:
    """What the estimate says of ``recipe``'s saved inputs and weight copies."""
    c = FP8_COPIES[recipe]
    saved = "16-bit" if c.linear_in == 2 else f"FP8 ({c.linear_in:.3g} B/element)"
    if c.weight_cache:
        cache = f"FP8 weight copy and transpose kept ({c.weight_cache:.3g} B/weight)"
    else:
        cache = "no FP8 weight copy kept"
    return f"fp8 {recipe.value} ({c.implementation}): linear inputs saved {saved}; {cache}"
