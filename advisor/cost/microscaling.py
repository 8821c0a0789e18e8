"""The GEMM peak of the block-scaled (microscaling) precisions on Blackwell: MXFP8 and NVFP4.

Kept apart from the FP8 pricing on purpose: ``mxfp8-mixed`` and ``nvfp4-mixed`` are priced
as ``fp8-mixed`` (``compute_dtype`` answers ``fp8``: the same FP8 share of the 16-bit GEMM
efficiency, ``gemm_fp8``, with attention and the LM head in bf16), with their own casts
(advisor/cost/fp8recipes.py, keyed by the precision), at the peak
:func:`block_scaled_peak` gives instead of the FP8 one. The hook is one line in
:meth:`advisor.cost.setting.Setting.peak`.

- MXFP8 runs on Blackwell's FP8 tensor-core path: the profile's ``mxfp8`` figure (the
  dense FP8 rate, NVIDIA Blackwell Architecture Technical Brief, 2024), else its ``fp8``.
- NVFP4 GEMMs run at the profile's dense ``fp4`` figure; NVIDIA's pre-training recipe keeps
  ~16% of the linear layers in bf16 (arXiv 2509.25149, sec. 4; memory.dtypes.
  NVFP4_BF16_SHARE), so the blocks' GEMM FLOPs run at the harmonic blend of the two peaks.
- Efficiency: no MXFP8 or NVFP4 measurement is fitted here; the profile's ``gemm_fp8``
  share (fitted on Hopper FP8 rows, carried over to Blackwell: see each profile's
  sources) applies to both, which the estimate's notes say.
"""

from __future__ import annotations

from advisor.config import Precision
from advisor.hardware.profiles import HardwareProfile
from advisor.memory.dtypes import NVFP4_BF16_SHARE

MICROSCALING: frozenset[Precision] = frozenset({Precision.MXFP8_MIXED, Precision.NVFP4_MIXED})

#: What the estimate says about these prices.
MICROSCALING_NOTE = (
    "{precision}: GEMMs at the {peak:.0f} TFLOP/s block-scaled peak with the FP8 efficiency "
    "share carried over from Hopper (no Blackwell {precision} measurement fitted)"
)


def block_scaled_peak(hw: HardwareProfile, precision: Precision) -> float | None:
    """The dense GEMM peak (FLOP/s) of the blocks under a microscaling precision.

    Args:
        hw: the hardware profile.
        precision: the configuration's precision.

    Returns:
        None unless ``precision`` is mxfp8-mixed or nvfp4-mixed and ``hw`` has that path.
    """
    p = hw.peak_tflops
    if precision is Precision.MXFP8_MIXED:
        tflops = p.mxfp8 or p.fp8
        return tflops * 1e12 if tflops else None
    if precision is Precision.NVFP4_MIXED and p.fp4 and p.bf16:
        low = 1 - NVFP4_BF16_SHARE
        return 1e12 / (low / p.fp4 + NVFP4_BF16_SHARE / p.bf16)
    return None
