"""Bytes per element of each tensor kind under a precision layout (weights, gradients,
masters, activations, the residual stream, optimizer states, weight copies)."""

from __future__ import annotations

from dataclasses import dataclass

from advisor.config import Fp8Recipe, Precision
from advisor.memory.fp8copies import FP8_COPIES


@dataclass(frozen=True)
class Dtypes:
    """Bytes per element of what one precision layout keeps (see :func:`dtypes`)."""

    weight: int  # bytes of a weight element on the device
    grad: int
    master: int  # 0 when there is no fp32 master copy
    act: int  # compute (activation) dtype
    linear_in: float  # what a linear layer saves of its input (per fp8 recipe: fp8copies)
    residual: int  # the residual stream (fp32 under autocast)
    state: int  # cap on optimizer state element bytes
    weight_cache: float  # bytes per linear weight of 16-bit / low-precision copies


def dtypes(precision: Precision, fp8_recipe: Fp8Recipe | None = None) -> Dtypes:
    """The element sizes of ``precision``'s layout (weights, gradients, masters, compute);
    under ``fp8-mixed`` those of ``fp8_recipe``'s implementation (tensorwise by default:
    advisor/memory/fp8copies.py)."""
    if precision is Precision.FP8_MIXED:
        return _FP8_TABLE[fp8_recipe or Fp8Recipe.TENSORWISE]
    return _TABLE[precision]


def _layout(precision: Precision) -> Dtypes:
    if precision in (Precision.FP32, Precision.TF32):
        return Dtypes(4, 4, 0, 4, 4, 4, 4, 0)
    if precision in (Precision.AMP_FP16, Precision.AMP_BF16):
        return Dtypes(4, 4, 0, 2, 2, 4, 4, 2)
    if precision in (Precision.FP16_MIXED, Precision.BF16_MIXED):
        return Dtypes(2, 2, 4, 2, 2, 2, 4, 0)
    if precision is Precision.FP8_MIXED:
        return _fp8_layout(Fp8Recipe.TENSORWISE)
    if precision in (Precision.MXFP8_MIXED, Precision.NVFP4_MIXED):
        return microscaling_dtypes(precision)
    return Dtypes(2, 2, 0, 2, 2, 2, 2, 0)  # bare fp16 / bf16


# Block-scaled (microscaling) formats: bytes per element including the block scales.
# OCP Microscaling Formats (MX) v1.0 spec (2023): MXFP8 = 8-bit E4M3/E5M2 elements with one
# 8-bit E8M0 scale per block of 32 -> 1 + 1/32 bytes. NVFP4 (NVIDIA, Blackwell; Abecassis
# et al. 2025, arXiv 2509.25149, sec. 2): 4-bit E2M1 elements, one FP8 E4M3 scale per 16,
# one fp32 scale per tensor (negligible) -> 0.5 + 1/16 bytes.
MXFP8_BYTES = 1 + 1 / 32
NVFP4_BYTES = 0.5 + 1 / 16
#: The share of linear layers NVIDIA's NVFP4 pre-training recipe keeps in bf16 (the first
#: and last blocks; "~16%" of the linear layers of its 12B run, arXiv 2509.25149, sec. 4).
NVFP4_BF16_SHARE = 0.16


def microscaling_dtypes(precision: Precision) -> Dtypes:
    """bf16-mixed with block-scaled GEMM operands (``mxfp8-mixed``, ``nvfp4-mixed``).

    What the training recipes quantise (Transformer Engine's MXFP8BlockScaling and
    NVFP4BlockScaling recipes; torchao's MXLinear): only the blocks' linear layers' GEMM
    operands. Weights are kept in bf16 with fp32 masters and optimizer states as under
    bf16-mixed; each linear weight gets a quantised copy per GEMM orientation, rowwise for
    the forward and columnwise for the backward (a block scale runs along one axis, so the
    transposed operand needs its own: 2 copies), and each linear layer saves its input
    quantised columnwise for the weight-gradient GEMM (1 copy). Under NVFP4 the bf16 share
    of the layers saves bf16 inputs and keeps no copies.
    """
    if precision is Precision.MXFP8_MIXED:
        return Dtypes(2, 2, 4, 2, MXFP8_BYTES, 2, 4, 2 * MXFP8_BYTES)
    low = 1 - NVFP4_BF16_SHARE
    return Dtypes(2, 2, 4, 2, low * NVFP4_BYTES + NVFP4_BF16_SHARE * 2, 2, 4, low * 2 * NVFP4_BYTES)


def _fp8_layout(recipe: Fp8Recipe) -> Dtypes:
    # bf16 weights, fp32 masters and states; the linears' saved inputs and FP8 weight copies
    # as the recipe's implementation keeps them (advisor/memory/fp8copies.py).
    c = FP8_COPIES[recipe]
    return Dtypes(2, 2, 4, 2, c.linear_in, 2, 4, c.weight_cache)


# One entry per precision (and fp8 recipe), built once: called per phase of every estimate.
_TABLE: dict[Precision, Dtypes] = {p: _layout(p) for p in Precision}
_FP8_TABLE: dict[Fp8Recipe, Dtypes] = {r: _fp8_layout(r) for r in Fp8Recipe}
