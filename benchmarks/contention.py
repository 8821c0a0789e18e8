"""Does the advice survive a busy machine? Quick calibrations with 0, 1 and 2 busy processes.

For each load level (``--busy 0,1,2``: that many ``while True: pass`` processes beside it),
``--runs`` times (default 5): a quick calibration of ``--model-size`` into an empty cache
(a cold ``optadvise calibrate --force`` process, as a user's first run), then the main job
(``optadvise recommend --json``) on that cache. It records, per run:

- the one-thread GEMM speed of bf16 and fp16 relative to fp32 (median and quartiles of the
  interleaved rounds) and the fast_bf16 verdict the calibration stored;
- the other processes' CPU share and the load average while it measured;
- the pick: task, optimizer, precision, attention and memory savers of the first row.

The summary gives, per load level, the spread (min-max over runs) of the two median ratios
and whether the pick differed from the first run at load 0. Machines of this kind are
shared: the load other tenants add is recorded too (``load_per_cpu``), never hidden.

    python -m benchmarks.contention --out benchmarks/results/contention.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from advisor.hardware.fast16 import read_cpuinfo

ROOT = Path(__file__).resolve().parent.parent
# A busy loop that ends with its parent (a killed benchmark must not leave it spinning).
_BUSY = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"


def _optadvise(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPTADVISE_CACHE_DIR=str(cache), NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "advisor", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _pick(report: dict[str, Any]) -> dict[str, Any] | None:
    rows = report.get("recommendations") or []
    if not rows:
        return None
    config = rows[0]["config"]
    keys = ("task", "optimizer", "precision", "attention", "checkpointing", "offload", "stack")
    return {k: config.get(k) for k in keys}


def one_run(model_size: str) -> dict[str, Any]:
    """One cold calibration into an empty cache, then the main job on it."""
    with tempfile.TemporaryDirectory(prefix="optadvise-contention-") as folder:
        cache = Path(folder)
        t0 = time.perf_counter()
        cal = _optadvise(["calibrate", "--model-size", model_size, "--force", "--json"], cache)
        seconds = time.perf_counter() - t0
        if cal.returncode != 0:
            return {"error": (cal.stderr or cal.stdout).strip().splitlines()[-1:]}
        data = json.loads(cal.stdout)
        rec = _optadvise(["recommend", "--model-size", model_size, "--json"], cache)
        if rec.returncode != 0:
            return {"error": (rec.stderr or rec.stdout).strip().splitlines()[-1:]}
        return {
            "calibration_s": round(seconds, 1),
            "partial": data.get("partial"),
            "fast_bf16": data.get("fast_bf16"),
            "gemm_vs_fp32": data.get("gemm_vs_fp32"),
            "gemm_gflops_layer_shape": data.get("gemm_gflops"),
            "other_cpu_share": data.get("other_cpu_share"),
            "disturbance": data.get("disturbance"),
            "load_per_cpu": data.get("load_per_cpu"),
            "pick": _pick(json.loads(rec.stdout)),
        }


def run(model_size: str, runs: int, levels: list[int], log: Any = print) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {}
    for busy in levels:
        procs = [
            subprocess.Popen([sys.executable, "-c", _BUSY], stdin=subprocess.DEVNULL)
            for _ in range(busy)
        ]
        try:
            time.sleep(1.0 if busy else 0.0)  # let the busy loops take their cores
            rows = []
            for i in range(runs):
                row = one_run(model_size)
                rows.append(row)
                log(f"busy={busy} run {i + 1}/{runs}: {json.dumps(row)}")
            results[str(busy)] = rows
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu": read_cpuinfo()[0],
        "cores": os.cpu_count(),
        "model_size": model_size,
        "runs": runs,
        "levels": results,
        "summary": summarize(results),
    }


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per load level: the spread of the median ratios, and whether the pick changed."""
    first = next(
        (r["pick"] for rows in results.values() for r in rows if r.get("pick") is not None),
        None,
    )
    out: dict[str, Any] = {}
    for busy, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        spread = {}
        for dtype in ("bf16", "fp16"):
            medians = [r["gemm_vs_fp32"][dtype][1] for r in ok if r.get("gemm_vs_fp32")]
            spread[dtype] = [min(medians), max(medians)] if medians else None
        out[busy] = {
            "runs": len(rows),
            "errors": len(rows) - len(ok),
            "bf16_vs_fp32_median_range": spread["bf16"],
            "fp16_vs_fp32_median_range": spread["fp16"],
            "fast_bf16": sorted({str(r.get("fast_bf16")) for r in ok}),
            "pick_changed": sum(1 for r in ok if r.get("pick") != first),
            "other_cpu_share_range": _range([r.get("other_cpu_share") for r in ok]),
            "calibration_s_range": _range([r.get("calibration_s") for r in ok]),
            "partial": sum(1 for r in ok if r.get("partial")),
        }
    out["pick"] = first
    return out


def _range(xs: list[Any]) -> list[float] | None:
    vals = [float(x) for x in xs if x is not None]
    return [round(min(vals), 3), round(max(vals), 3)] if vals else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", default="125M")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy", default="0,1,2", help="comma list of busy-process counts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/contention.json")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.busy.split(",")]
    result = run(args.model_size, args.runs, levels)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
