"""Bytes per element of each tensor kind under a precision layout (weights, gradients,
masters, activations, the residual stream, optimizer states, weight copies)."""

from __future__ import annotations

from dataclasses import dataclass

from advisor.config import Precision


@dataclass(frozen=True)
class Dtypes:
    """Bytes per element of what one precision layout keeps (see :func:`dtypes`)."""

    weight: int  # bytes of a weight element on the device
    grad: int
    master: int  # 0 when there is no fp32 master copy
    act: int  # compute (activation) dtype
    linear_in: int  # what a linear layer saves of its input (1 under fp8)
    residual: int  # the residual stream (fp32 under autocast)
    state: int  # cap on optimizer state element bytes
    weight_cache: float  # bytes per linear weight of 16-bit / fp8 copies


def dtypes(precision: Precision) -> Dtypes:
    """The element sizes of ``precision``'s layout (weights, gradients, masters, compute)."""
    return _TABLE[precision]


def _layout(precision: Precision) -> Dtypes:
    if precision in (Precision.FP32, Precision.TF32):
        return Dtypes(4, 4, 0, 4, 4, 4, 4, 0)
    if precision in (Precision.AMP_FP16, Precision.AMP_BF16):
        return Dtypes(4, 4, 0, 2, 2, 4, 4, 2)
    if precision in (Precision.FP16_MIXED, Precision.BF16_MIXED):
        return Dtypes(2, 2, 4, 2, 2, 2, 4, 0)
    if precision is Precision.FP8_MIXED:
        # NOTE: Transformer Engine keeps bf16 weights plus an fp8 copy of each linear weight
        # and saves fp8 inputs of the linear layers; everything else stays bf16.
        return Dtypes(2, 2, 4, 2, 1, 2, 4, 1)
    return Dtypes(2, 2, 0, 2, 2, 2, 2, 0)  # bare fp16 / bf16


# One entry per precision, built once: called per phase of every estimate.
_TABLE: dict[Precision, Dtypes] = {p: _layout(p) for p in Precision}
