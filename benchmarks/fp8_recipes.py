"""FP8 recipe GEMM shares relative to tensorwise, from the kernel tables in
benchmarks/data/fp8_recipe_gemms.yaml (advisor/cost/fp8recipes.py GEMM_SHARE).

Each share is a mean of per-shape throughput ratios, two kernels at the same (m, n, k) on
the same machine in the same table:

- rowwise / tensorwise: vLLM PR #17126 (CUTLASS scaled_mm, per-token x per-channel against
  per-tensor scales);
- blockwise / rowwise: FBGEMM PR #2546 (H100, training shapes); blockwise / tensorwise is
  that times the rowwise share (no one table has tensorwise and blockwise at training shapes);
- the vLLM PR #17126-style H100 table of PR #49363 (tensorwise against 1x128 x 128x128 block
  scaling, inference shapes) is reported beside it as a cross-check, not fitted.

    python -m benchmarks.fp8_recipes [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).parent / "data" / "fp8_recipe_gemms.yaml"


def load_rows(path: Path = DATA) -> list[dict[str, Any]]:
    """The kernel rows of the data file."""
    rows: list[dict[str, Any]] = yaml.safe_load(path.read_text())["rows"]
    return rows


def ratios(rows: list[dict[str, Any]], source: str, num: str, den: str) -> list[float]:
    """Per-shape throughput ratios num/den of one source's rows (shapes with both)."""
    by: dict[tuple[int, int, int], dict[str, float]] = {}
    for r in rows:
        if r["source"] == source:
            by.setdefault((r["m"], r["n"], r["k"]), {})[r["recipe"]] = float(r["tflops"])
    return [v[num] / v[den] for _, v in sorted(by.items()) if num in v and den in v]


def fit_shares(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each recipe's GEMM share relative to tensorwise, and the cross-check's ratios."""
    row_vs_tensor = ratios(rows, "vllm-17126", "rowwise", "tensorwise")
    block_vs_row = ratios(rows, "fbgemm-2546", "blockwise", "rowwise")
    rowwise = statistics.fmean(row_vs_tensor)
    blockwise = statistics.fmean(block_vs_row) * rowwise
    check = ratios(rows, "vllm-49363", "blockwise", "tensorwise")
    return {
        "shares": {"tensorwise": 1.0, "delayed": 1.0, "rowwise": rowwise, "blockwise": blockwise},
        "rowwise_over_tensorwise": row_vs_tensor,
        "blockwise_over_rowwise": block_vs_row,
        "crosscheck_blockwise_over_tensorwise": check,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the fit as JSON")
    args = parser.parse_args(argv)
    from advisor.cost.fp8recipes import GEMM_SHARE

    fit = fit_shares(load_rows())
    if args.json:
        print(json.dumps(fit, indent=2))
        return 0
    print("recipe      share (fitted)  advisor GEMM_SHARE")
    for name, share in fit["shares"].items():
        used = {r.value: v for r, v in GEMM_SHARE.items()}[name]
        print(f"{name:<11} {share:>14.4f}  {used:>18.3f}")
    for key in ("rowwise_over_tensorwise", "blockwise_over_rowwise"):
        print(f"{key}: " + ", ".join(f"{x:.4f}" for x in fit[key]))
    check = fit["crosscheck_blockwise_over_tensorwise"]
    print(
        "cross-check (vLLM #49363, H100, inference shapes) blockwise/tensorwise: "
        + ", ".join(f"{x:.3f}" for x in check)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
