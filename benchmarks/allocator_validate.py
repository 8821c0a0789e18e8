"""The allocator slack model (advisor.memory.slack) checked against measurements it was not
fitted to: benchmarks/ftmem.py's published fine-tuning peaks by what they measured
(max allocated, max reserved, nvidia-smi) and benchmarks/gpu_fit.py's torchtitan
``max_reserved`` peaks and device-fit checks. Nothing is fitted here.

Run at two commits to compare (the committed result holds both)::

    python -m benchmarks.allocator_validate --label after
    git archive <base> | tar -x -C /tmp/base && cp benchmarks/allocator_validate.py \\
        /tmp/base/benchmarks/ && (cd /tmp/base && python -m benchmarks.allocator_validate \\
        --label before --out <this checkout>/benchmarks/results/allocator_validate.json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "allocator_validate.json"


def ftmem_part() -> dict[str, Any]:
    """ftmem's summaries by measure and by source, and each nvidia-smi/reserved row."""
    from benchmarks import ftmem

    out = ftmem.run_all()
    return {
        "by_measure": out["by_measure"],
        "overall": out["overall"],
        "oom_predicted_to_fit": out["oom_predicted_to_fit"],
        "rows": {r["id"]: r["error"] for r in out["rows"]},
    }


def gpu_fit_part() -> dict[str, Any]:
    """gpu_fit's memory check for every run (no time-model fit needed): fits, fraction of
    the device, and predicted / measured max reserved where the source logs it."""
    from advisor.hardware.profiles import load_hardware_profiles
    from benchmarks import gpu_fit

    profiles = load_hardware_profiles()
    runs = gpu_fit.load_runs(gpu_fit._load("gpu_runs.yaml"))
    rows = {}
    for run in runs:
        mem = gpu_fit.memory_check(run, profiles[run["device"]])
        rows[run["id"]] = {
            k: mem.get(k) for k in ("fits", "peak_fraction_of_device", "predicted_over_measured")
        }
    ratios = [r["predicted_over_measured"] for r in rows.values() if r["predicted_over_measured"]]
    return {
        "not_fitting": sorted(k for k, r in rows.items() if r["fits"] is False),
        "reserved_ratio_median": round(statistics.median(ratios), 3),
        "reserved_ratio_range": [min(ratios), max(ratios)],
        "rows": rows,
    }


def main() -> None:
    """Run both checks with this checkout's advisor and store them under ``--label``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result[args.label] = {
        "commit": commit or "(archive)",
        "ftmem": ftmem_part(),
        "gpu_fit_memory": gpu_fit_part(),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    part = result[args.label]
    print(
        json.dumps(
            {
                "ftmem": part["ftmem"]["by_measure"],
                "gpu_fit": {k: v for k, v in part["gpu_fit_memory"].items() if k != "rows"},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
