"""Leave-one-source-out cross-validation of the GPU step-time fit.

    python -m benchmarks.gpu_cv            # or: python -m benchmarks.gpu_fit --loso
    python -m benchmarks.gpu_cv --out PATH

For each source of benchmarks/data/gpu_runs.yaml, the whole fit of benchmarks/gpu_fit.py
(``fit_constants``: every generation's constants, in the same order, on the same data) is
rerun without that source, and the source's runs are predicted with the constants fitted
without them. The error "left out" is what the model does on a source it never saw; the
error "fitted" is the same runs under the fit on every source (what ``gpu_fit`` reports).
A source that is held out of every fit (Llama 3) has the same figure in both columns.

Where a fold leaves out the only rows a constant is fitted on, the constant takes its
stated prior (``gpu_fit.TP_OVERLAP_PRIOR`` for async TP) and the fold says so.

Writes benchmarks/results/gpu_cv.json: per source (n, median |error|, worst |error|,
median predicted/measured) left out and fitted, every run's both predictions, and the
constants of each fold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from advisor.hardware.profiles import HardwareProfile, load_hardware_profiles
from benchmarks.gpu_fit import (
    FIT_ON,
    FP8_FIT_ON,
    HELD_OUT,
    TP_OVERLAP_FIT_ON,
    _load,
    fit_constants,
    load_runs,
    predict_run,
    with_efficiency,
)

RESULTS = Path(__file__).parent / "results" / "gpu_cv.json"


def _fitted_sources() -> set[str]:
    return (
        {s for group in FIT_ON.values() for s in group} | set(FP8_FIT_ON) | set(TP_OVERLAP_FIT_ON)
    )


def predict_all(
    runs: list[dict[str, Any]], profiles: dict[str, HardwareProfile], blocks: dict[str, Any]
) -> dict[str, float]:
    """Predicted tokens/s/GPU of each run (by id) under one fold's efficiency blocks."""
    return {
        r["id"]: predict_run(r, with_efficiency(profiles[r["device"]], blocks[r["device"]]))
        for r in runs
    }


def stats(ratios: list[float]) -> dict[str, Any]:
    """n, median and worst |error|, median predicted/measured of a list of ratios."""
    errors = [abs(x - 1) for x in ratios]
    return {
        "runs": len(ratios),
        "median_abs_error": round(statistics.median(errors), 4),
        "worst_abs_error": round(max(errors), 4),
        "median_ratio": round(statistics.median(ratios), 4),
    }


def fold_notes(source: str, runs: list[dict[str, Any]]) -> list[str]:
    """What a fold without ``source`` cannot fit (constants that fall back to a prior)."""
    rest = [r for r in runs if r["source"] != source and r["source"] != HELD_OUT]
    notes = []
    if not any(r["source"] in TP_OVERLAP_FIT_ON and r.get("tp_comm_overlap") for r in rest):
        notes.append("no async-TP rows left: tp_overlap takes its prior (gpu_fit.TP_OVERLAP_PRIOR)")
    if not any(r["source"] in FP8_FIT_ON and r["precision"] == "fp8-mixed" for r in rest):
        notes.append("no FP8 rows left: gemm_fp8 stays at the search's start")
    return notes


def cross_validate(
    runs: list[dict[str, Any]], profiles: dict[str, HardwareProfile]
) -> dict[str, Any]:
    """Every fold's fit and predictions, and the per-source table."""
    all_fit, _, all_blocks = fit_constants(runs, profiles)
    fitted_pred = predict_all(runs, profiles, all_blocks)
    sources = list(dict.fromkeys(r["source"] for r in runs))
    fitted_here = _fitted_sources()
    table: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    folds: dict[str, Any] = {}
    for src in sources:
        mine = [r for r in runs if r["source"] == src]
        if src == HELD_OUT or src not in fitted_here:
            # Never fitted: the all-source fit already leaves it out.
            loso_pred = {r["id"]: fitted_pred[r["id"]] for r in mine}
            fold = {"fitted": all_fit, "notes": ["never fitted: the all-source fit leaves it out"]}
        else:
            fit, _, blocks = fit_constants(runs, profiles, exclude=frozenset({src}))
            loso_pred = predict_all(mine, profiles, blocks)
            fold = {"fitted": fit, "notes": fold_notes(src, runs)}
        folds[src] = {
            "fitted": {
                g: {k: round(v, 4) for k, v in c.items()} for g, c in fold["fitted"].items()
            },
            "notes": fold["notes"],
        }
        left = [loso_pred[r["id"]] / r["_measured"] for r in mine]
        fitted = [fitted_pred[r["id"]] / r["_measured"] for r in mine]
        table[src] = {
            "held_out_of_every_fit": src == HELD_OUT or src not in fitted_here,
            "left_out": stats(left),
            "fitted": stats(fitted),
        }
        for r, lo, fi in zip(mine, left, fitted, strict=True):
            rows.append(
                {
                    "id": r["id"],
                    "source": src,
                    "device": r["device"],
                    "precision": r["precision"],
                    "seq_len": r["seq_len"],
                    "measured_tokens_per_s_per_gpu": round(r["_measured"], 1),
                    "predicted_left_out": round(loso_pred[r["id"]], 1),
                    "predicted_fitted": round(fitted_pred[r["id"]], 1),
                    "ratio_left_out": round(lo, 4),
                    "ratio_fitted": round(fi, 4),
                }
            )
    return {
        "per_source": table,
        "pooled_left_out": stats([r["ratio_left_out"] for r in rows]),
        "pooled_fitted": stats([r["ratio_fitted"] for r in rows]),
        "folds": folds,
        "runs": rows,
    }


def render(result: dict[str, Any]) -> str:
    """The per-source table, left out beside fitted."""
    head = (
        f"{'source':24} {'n':>3}  {'left out: med|err|':>18} {'worst':>7} {'med ratio':>9}"
        f"  {'fitted: med|err|':>16} {'worst':>7} {'med ratio':>9}"
    )
    lines = [head, "-" * len(head)]

    def line(name: str, lo: dict[str, Any], fi: dict[str, Any], tag: str = "") -> str:
        return (
            f"{name:24} {lo['runs']:3d}  {lo['median_abs_error']:18.1%}"
            f" {lo['worst_abs_error']:7.1%} {lo['median_ratio']:9.3f}"
            f"  {fi['median_abs_error']:16.1%}"
            f" {fi['worst_abs_error']:7.1%} {fi['median_ratio']:9.3f}{tag}"
        )

    for src, t in result["per_source"].items():
        tag = "  (never fitted)" if t["held_out_of_every_fit"] else ""
        lines.append(line(src, t["left_out"], t["fitted"], tag))
    lines.append(line("all runs", result["pooled_left_out"], result["pooled_fitted"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    profiles = load_hardware_profiles()
    runs = load_runs(_load("gpu_runs.yaml"))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.gpu_cv",
        "what": "leave-one-source-out: each source predicted by the fit without it; ratio ="
        " predicted / measured tokens/s per GPU",
        **cross_validate(runs, profiles),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    for src, fold in result["folds"].items():
        for note in fold["notes"]:
            print(f"  {src}: {note}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
