"""What peak the 500 W torchtitan H100s would need for their left-out rows to be right.

    python -m benchmarks.power_sweep            # writes benchmarks/results/power_sweep.json

Fits every constant without the source (``torchtitan-h100`` by default, as its
leave-one-source-out fold in ``benchmarks.gpu_cv`` does), then predicts the source's runs with
their BF16 (and FP8, at the profile's FP8/BF16 ratio) peak set to each value of a sweep, and
reports the median predicted/measured ratio beside the board power NVIDIA's H100 ratings imply
for that peak (``advisor.hardware.power``: P = 700 W x share^alpha). It tests the hypothesis
that the power limit explains the source's left-out error: the peak that brings the ratio to
1 must be one a 500 W board can sustain.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from advisor.hardware.power import POWER_EXPONENT, at_power_limit
from advisor.hardware.profiles import load_hardware_profiles
from benchmarks.gpu_fit import _load, fit_constants, load_runs, predict_run, with_efficiency

RESULTS = Path(__file__).parent / "results" / "power_sweep.json"
PEAKS = (989.5, 912.0, 893.8, 850.0, 800.0, 780.0, 760.0, 740.0, 720.0)


def sweep(source: str, peaks: tuple[float, ...]) -> dict[str, Any]:
    """The left-out median ratio of ``source``'s runs at each BF16 peak of ``peaks``."""
    profiles = load_hardware_profiles()
    runs = load_runs(_load("gpu_runs.yaml"))
    _, _, blocks = fit_constants(runs, profiles, exclude=frozenset({source}))
    mine = [r for r in runs if r["source"] == source]
    device = mine[0]["device"]
    hw = with_efficiency(profiles[device], blocks[device])
    bf16 = hw.peak_tflops.bf16 or 0.0
    fp8_ratio = (hw.peak_tflops.fp8 or 0.0) / bf16
    limit = mine[0].get("device_overrides", {}).get("power_limit_w")
    rows = []
    for peak in peaks:
        ratios = []
        for r in mine:
            r2 = copy.deepcopy(r)
            over = {k: v for k, v in r2.get("device_overrides", {}).items() if k != "power_limit_w"}
            over.update(bf16_tflops=peak, fp8_tflops=peak * fp8_ratio)
            r2["device_overrides"] = over
            ratios.append(predict_run(r2, hw) / r["_measured"])
        share = peak / bf16
        rows.append(
            {
                "bf16_tflops": peak,
                "clock_share": round(share, 4),
                "median_ratio": round(statistics.median(ratios), 4),
                "watts_at_the_datasheet_exponent": round(
                    (hw.tdp_watts or 0.0) * min(share, 1.0) ** POWER_EXPONENT
                ),
            }
        )
    modelled = at_power_limit(hw, float(limit)).peak_tflops.bf16 if limit else None
    return {
        "source": source,
        "device": device,
        "power_limit_w": limit,
        "modelled_bf16_tflops_at_the_limit": round(modelled, 1) if modelled else None,
        "power_exponent": round(POWER_EXPONENT, 3),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="torchtitan-h100")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.power_sweep",
        "what": "left-out median predicted/measured of one source's runs against the BF16 peak"
        " assumed for its boards, and the board power NVIDIA's H100 ratings imply for it",
        **sweep(args.source, PEAKS),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.source} left out; modelled at {result['power_limit_w']} W:"
        f" {result['modelled_bf16_tflops_at_the_limit']} TFLOP/s"
    )
    for row in result["rows"]:
        print(
            f"  bf16 {row['bf16_tflops']:7.1f}  share {row['clock_share']:.3f}"
            f"  median ratio {row['median_ratio']:.3f}"
            f"  ~{row['watts_at_the_datasheet_exponent']} W"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
