"""Sustained tensor throughput of a GPU run at a board power limit below its rated one."""

from __future__ import annotations

import math

from advisor.errors import UserError
from advisor.hardware.profiles import HardwareProfile

# NVIDIA's H100 datasheet rates the same 132-SM die at two power limits: SXM5 989.5 dense BF16
# TFLOP/s at 700 W (1830 MHz), NVL 835.5 at 400 W (1545 MHz). With dynamic power ~ C V^2 f and
# the voltage rising with the clock, P ~ f^alpha; the pair gives alpha. The figures and their
# sources are in benchmarks/data/gpu_power.yaml (tests/hardware/test_power.py checks that they
# agree and that the law reproduces the H100 PCIe's rating, which it is not fitted to).
SXM_TFLOPS, SXM_WATTS = 989.5, 700.0
NVL_TFLOPS, NVL_WATTS = 835.5, 400.0
POWER_EXPONENT = math.log(SXM_WATTS / NVL_WATTS) / math.log(SXM_TFLOPS / NVL_TFLOPS)
POWER_SOURCE = (
    "sustained clock ~ (limit / rated power)^(1/3.31): NVIDIA's H100 datasheet rates one die at"
    " 989.5 TFLOP/s (SXM, 700 W) and 835.5 (NVL, 400 W); benchmarks/data/gpu_power.yaml"
)


def clock_share(limit_w: float, rated_w: float) -> float:
    """The share of its rated tensor clock a board sustains under a dense tensor load at
    ``limit_w`` when its datasheet peak holds at ``rated_w``: ``(limit / rated)^(1/alpha)``.

    A limit at or above the rated power keeps the rated clock: the datasheet peak is the most
    the model credits (a higher limit can only raise the clock towards the maximum boost,
    which no figure here prices).

    Args:
        limit_w: the board power limit, watts (``nvidia-smi -pl``).
        rated_w: the power at which the datasheet's peak holds (the profile's ``tdp_watts``).

    Returns:
        A factor in (0, 1] for every clock-bound peak of the profile.

    Raises:
        UserError: a non-positive limit or rated power.
    """
    if limit_w <= 0 or rated_w <= 0:
        raise UserError(
            f"power limit {limit_w:g} W: a power limit is a positive number of watts",
            hint="e.g. --power-limit 500",
        )
    share: float = min(1.0, limit_w / rated_w) ** (1.0 / POWER_EXPONENT)
    return share


def at_power_limit(profile: HardwareProfile, limit_w: float) -> HardwareProfile:
    """The profile as it runs at a board power limit: every peak (tensor and vector units
    share the SM clock) scaled by :func:`clock_share`, memory bandwidth unchanged (HBM has its
    own clock), and ``tdp_watts`` lowered to the limit (the energy estimate's power bound).

    Raises:
        UserError: the profile has no ``tdp_watts`` to scale from, or the limit is not positive.
    """
    if profile.tdp_watts is None:
        raise UserError(
            f"{profile.id} has no tdp_watts: a power limit needs the power its peaks are rated at",
            hint="leave out --power-limit, or use a profile with tdp_watts",
        )
    share = clock_share(limit_w, profile.tdp_watts)
    peaks = {
        name: (value * share if value is not None else None)
        for name, value in profile.peak_tflops.model_dump().items()
    }
    return profile.model_copy(
        update={
            "peak_tflops": profile.peak_tflops.model_copy(update=peaks),
            "tdp_watts": min(limit_w, profile.tdp_watts),
        }
    )
