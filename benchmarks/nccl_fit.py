"""Fit NCCL's per-collective latency to measured all-reduce times on A100.

    python -m benchmarks.nccl_fit

Data: benchmarks/data/nccl_allreduce_a100.yaml (nccl-tests all_reduce_perf on 2, 4 and 8
A100 SXM GPUs of one node, 1 MiB to 1 GiB, from vTrain's repository). Model: an all-reduce
of S bytes over n ranks takes t = alpha_n + 2 (n - 1) / n x S / B_n (Hockney's
latency-bandwidth model with the ring's bus traffic, nccl-tests doc/PERFORMANCE.md); alpha_n
and B_n by least squares on the relative error of t. ``advisor.cost.comm.RING_LATENCY_S``
holds the fitted alpha_n (the step-time model takes the bandwidth from the profile's link
and ``comm_intra``); this prints them and how well the model reproduces each size.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from benchmarks.gpu_fit import _load


def measured(data: dict[str, Any], n: int) -> list[tuple[float, float]]:
    """(bytes, seconds) of every row for ``n`` ranks: the mean of the two columns."""
    return [
        (r["mib"] * 2**20, (r["out_of_place_ns"] + r["in_place_ns"]) / 2e9)
        for r in data["ranks"][n]
    ]


def fit_ranks(rows: list[tuple[float, float]], n: int) -> tuple[float, float]:
    """(alpha seconds, B bytes/s) minimising sum ((alpha + b x) / t - 1)^2, x the bus bytes."""
    f = 2 * (n - 1) / n
    a00 = a01 = a11 = b0 = b1 = 0.0
    for size, t in rows:
        x, w = f * size, 1 / t**2
        a00, a01, a11 = a00 + w, a01 + w * x, a11 + w * x * x
        b0, b1 = b0 + w * t, b1 + w * x * t
    det = a00 * a11 - a01 * a01
    alpha = (b0 * a11 - a01 * b1) / det
    inv_bw = (a00 * b1 - a01 * b0) / det
    return alpha, 1 / inv_bw


def fit_all(data: dict[str, Any]) -> dict[int, dict[str, float]]:
    out = {}
    for n in sorted(data["ranks"]):
        rows = measured(data, n)
        alpha, bw = fit_ranks(rows, n)
        f = 2 * (n - 1) / n
        errors = [abs((alpha + f * s / bw) / t - 1) for s, t in rows]
        out[n] = {
            "alpha_s": alpha,
            "bus_gb_s": bw / 1e9,
            "median_abs_error": statistics.median(errors),
            "worst_abs_error": max(errors),
        }
    return out


def main() -> int:
    data = _load("nccl_allreduce_a100.yaml")
    for n, r in fit_all(data).items():
        print(
            f"{n} ranks: alpha {r['alpha_s'] * 1e6:.1f} us, bus {r['bus_gb_s']:.1f} GB/s;"
            f" |error| median {r['median_abs_error']:.1%}, worst {r['worst_abs_error']:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
