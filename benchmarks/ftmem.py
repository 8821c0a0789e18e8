"""Fine-tuning peak memory against published runs nobody fitted to (issue 23, point 2).

Each row of benchmarks/data/ftmem_runs.yaml is one published run: its configuration as the
source states it and the peak it measured, with the source's URL and where in it. The
prediction is `optadvise estimate`'s (advisor.app.estimate: build_config + estimate_report on
the run's --hardware profile), compared with what the source measured:

    allocated   -> allocated_bytes (torch.cuda.max_memory_allocated)
    reserved    -> reserved_bytes  (torch.cuda.max_memory_reserved)
    nvidia-smi  -> total_bytes     (reserved + CUDA context + NCCL: the device footprint)
    unstated    -> total_bytes

Where a run does not state its activation checkpointing the estimate is the range over none,
selective and full (as `estimate` answers without --checkpointing): the error is 0 inside the
range, else the distance to its nearer end, and the run "fits" when some level fits.

A check, not a fit: nothing here feeds a constant of the memory model. Per source and per kind
of measurement it reports the median |error|, the bias (median signed error), the share within
+-20% and the runs that really ran but are predicted not to fit; the file's `ooms` (runs a
source reports as out of memory) must be predicted not to fit. Writes
benchmarks/results/ftmem.json.

    python -m benchmarks.ftmem                 # ~10 s; --only ID[,ID] for some rows
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).parent / "data" / "ftmem_runs.yaml"
RESULTS = Path(__file__).parent / "results" / "ftmem.json"

MEASURES = ("allocated", "reserved", "nvidia-smi", "unstated")
UNITS = {"GB": 1e9, "GiB": 2**30}
LEVELS = ("none", "selective", "full")
REQUIRED = (
    "id",
    "source",
    "where",
    "task",
    "optimizer",
    "precision",
    "micro_batch",
    "seq_len",
    "checkpointing",
    "gpus",
    "hardware",
    "measured",
    "value",
    "unit",
)
OPTIONAL = (
    "model",
    "model_config",
    "attention",
    "optimizer_impl",
    "optimizer_rank",
    "optimizer_in_backward",
    "sharding",
    "offload",
    "lora_rank",
    "lora_targets",
    "lora_dropout",
    "grad_accumulation",
    "fused_loss",
    "stack",
    "seq_note",
    "note",
)


def load_ooms(path: Path = DATA) -> list[dict[str, Any]]:
    """The runs a source reports as out of memory (``ooms``: a run's fields without
    measured, value and unit), checked as load_runs checks runs."""
    doc = yaml.safe_load(path.read_text())
    ooms = doc.get("ooms") or []
    sources = doc.get("sources") or {}
    problems = []
    for i, run in enumerate(ooms):
        rid = run.get("id", f"#{i}")
        need = [k for k in REQUIRED if k not in ("measured", "value", "unit")]
        problems += [f"{rid}: missing {k}" for k in need if k not in run]
        problems += [f"{rid}: unknown field {k}" for k in run if k not in REQUIRED + OPTIONAL]
        if run.get("source") not in sources:
            problems.append(f"{rid}: unknown source {run.get('source')!r}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return ooms


def load_runs(path: Path = DATA) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sources and runs of ``path``, every problem of the file reported together.

    Raises:
        ValueError: listing each row's missing or unknown fields, unknown sources, units and
            measurement kinds, and sources without an http(s) URL.
    """
    doc = yaml.safe_load(path.read_text())
    sources, runs = doc.get("sources") or {}, doc.get("runs") or []
    problems = []
    for key, src in sources.items():
        if not str(src.get("url", "")).startswith(("https://", "http://")):
            problems.append(f"source {key}: no http(s) url")
    seen = set()
    for i, run in enumerate(runs):
        rid = run.get("id", f"#{i}")
        if rid in seen:
            problems.append(f"{rid}: duplicate id")
        seen.add(rid)
        problems += [f"{rid}: missing {k}" for k in REQUIRED if k not in run]
        problems += [f"{rid}: unknown field {k}" for k in run if k not in REQUIRED + OPTIONAL]
        if ("model" in run) == ("model_config" in run):
            problems.append(f"{rid}: give exactly one of model, model_config")
        if run.get("source") not in sources:
            problems.append(f"{rid}: unknown source {run.get('source')!r}")
        if run.get("measured") not in MEASURES:
            problems.append(f"{rid}: measured must be one of {', '.join(MEASURES)}")
        if run.get("unit") not in UNITS:
            problems.append(f"{rid}: unit must be one of {', '.join(UNITS)}")
        if run.get("checkpointing") not in (*LEVELS, "unstated"):
            problems.append(f"{rid}: checkpointing must be none, selective, full or unstated")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return sources, runs


@dataclass(frozen=True)
class Prediction:
    """One run's predicted peak (bytes) at each checkpointing level it may have used."""

    by_level: dict[str, int]
    fits: bool


def _spec(run: dict[str, Any]) -> Any:
    from advisor.model import get_model_profile

    if "model" in run:
        return get_model_profile(run["model"])
    from advisor.model.hfmeta import spec_from_any_config

    # NOTE: the same reader as `estimate --model-config` (built-in readers, else transformers
    # on the meta device).
    path = Path(__file__).parent / "data" / run["model_config"]
    return spec_from_any_config(json.loads(path.read_text()), path)


def _predicted(report: Any, measured: str) -> int:
    if measured == "allocated":
        return int(report.allocated_bytes)
    if measured == "reserved":
        return int(report.reserved_bytes)
    return int(report.total_bytes)


def predict(run: dict[str, Any]) -> Prediction:
    """The estimate of ``run`` at each checkpointing level the run may have used."""
    from advisor.app.estimate import build_config, estimate_report

    spec = _spec(run)
    levels = LEVELS if run["checkpointing"] == "unstated" else (run["checkpointing"],)
    by_level: dict[str, int] = {}
    fits = False
    for level in levels:
        config = build_config(
            task=run["task"],
            optimizer=run["optimizer"],
            precision=run["precision"],
            attention=run.get("attention", "flash"),
            checkpointing=level,
            micro_batch=run["micro_batch"],
            seq_len=run["seq_len"],
            gpus=run["gpus"],
            sharding=run.get("sharding", "none"),
            offload=run.get("offload", "none"),
            lora_rank=run.get("lora_rank", 16),
            dp_sgd=False,
            stack=run.get("stack", "hf"),
            fused_loss=run.get("fused_loss", False),
            grad_accumulation=run.get("grad_accumulation", 1),
            optimizer_in_backward=run.get("optimizer_in_backward", False),
            lora_targets=run.get("lora_targets"),
            optimizer_impl=run.get("optimizer_impl", "auto"),
            lora_dropout=run.get("lora_dropout", 0.0),
        )
        if "optimizer_rank" in run:
            predicted, fit = _with_rank(spec, config, run)
        else:
            report = estimate_report(spec, config, hardware=run["hardware"], device="cuda")
            predicted, fit = _predicted(report, run["measured"]), bool(report.fits)
        by_level[level] = predicted
        fits = fits or fit
    return Prediction(by_level=by_level, fits=fits)


def _with_rank(spec: Any, config: Any, run: dict[str, Any]) -> tuple[int, bool]:
    """estimate_report's memory for an optimizer run at the source's projection rank (the
    taxonomy's entry carries the default rank; the run's rank replaces it, nothing else)."""
    from advisor.hardware.profiles import get_hardware_profile
    from advisor.memory import estimate_memory, gpu_overheads
    from advisor.rules.taxonomy import load_taxonomy

    tech = load_taxonomy().get(run["optimizer"])
    assert tech.memory is not None
    tech = tech.model_copy(
        update={"memory": tech.memory.model_copy(update={"rank": run["optimizer_rank"]})}
    )
    profile = get_hardware_profile(run["hardware"])
    m = estimate_memory(
        spec, config, optimizer=tech, device=gpu_overheads(profile.id, profile.link_domain())
    )
    predicted = {
        "allocated": m.allocated_bytes,
        "reserved": m.reserved_bytes,
    }.get(run["measured"], m.total_bytes)
    return int(predicted), m.total_bytes <= profile.memory_bytes


def signed_error(measured: float, by_level: dict[str, int]) -> float:
    """Relative error of the prediction (a range when several levels): 0 inside the range,
    else (nearer end - measured) / measured."""
    lo, hi = min(by_level.values()), max(by_level.values())
    if lo <= measured <= hi:
        return 0.0
    end = lo if measured < lo else hi
    return (end - measured) / measured


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median |error|, bias, share within +-20% and no-fits among ``rows``."""
    errs = [r["error"] for r in rows]
    return {
        "runs": len(rows),
        "median_abs_error": round(statistics.median(abs(e) for e in errs), 4),
        "bias": round(statistics.median(errs), 4),
        "within_20pct": round(sum(abs(e) <= 0.20 for e in errs) / len(errs), 4),
        "predicted_not_to_fit": [r["id"] for r in rows if not r["fits"]],
    }


def run_all(only: set[str] | None = None, path: Path = DATA) -> dict[str, Any]:
    """Predict every run of ``path`` (or those in ``only``) and summarise per source."""
    sources, runs = load_runs(path)
    rows = []
    for run in runs:
        if only and run["id"] not in only:
            continue
        measured = run["value"] * UNITS[run["unit"]]  # measured peak, bytes
        pred = predict(run)
        rows.append(
            {
                "id": run["id"],
                "source": run["source"],
                "measured": run["measured"],
                "measured_gib": round(measured / 2**30, 2),
                "predicted_gib": {k: round(v / 2**30, 2) for k, v in pred.by_level.items()},
                "error": round(signed_error(measured, pred.by_level), 4),
                "fits": pred.fits,
            }
        )
    by_source = {
        key: summarise([r for r in rows if r["source"] == key])
        for key in sources
        if any(r["source"] == key for r in rows)
    }
    by_measure = {
        kind: summarise([r for r in rows if r["measured"] == kind])
        for kind in MEASURES
        if any(r["measured"] == kind for r in rows)
    }
    # Runs the source reports as out of memory: the estimate should not fit them (at any
    # checkpointing level it may have used).
    ooms = []
    for run in load_ooms(path):
        if only and run["id"] not in only:
            continue
        pred = predict({**run, "measured": "nvidia-smi"})
        ooms.append(
            {
                "id": run["id"],
                "source": run["source"],
                "predicted_gib": {k: round(v / 2**30, 2) for k, v in pred.by_level.items()},
                "fits": pred.fits,
            }
        )
    return {
        "rows": rows,
        "ooms": ooms,
        "oom_predicted_to_fit": [r["id"] for r in ooms if r["fits"]],
        "by_source": by_source,
        "by_measure": by_measure,
        "overall": summarise(rows) if rows else {},
        "sources": {k: {"title": v["title"], "url": v["url"]} for k, v in sources.items()},
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _print(result: dict[str, Any]) -> None:
    print(f"{'run':36} {'measured':>10} {'predicted GiB':>22} {'error':>8}  fits")
    for r in result["rows"]:
        ends = sorted(r["predicted_gib"].values())
        pred = f"{ends[0]:.1f}" if ends[0] == ends[-1] else f"{ends[0]:.1f}-{ends[-1]:.1f}"
        print(
            f"{r['id']:36} {r['measured_gib']:>7.1f} {r['measured'][:3]}"
            f" {pred:>22} {r['error']:>+8.1%}  {'yes' if r['fits'] else 'NO'}"
        )
    for r in result["ooms"]:
        pred = "-".join(f"{v:.1f}" for v in sorted(r["predicted_gib"].values()))
        print(f"{r['id']:36} {'OOM':>10} {pred:>22} {'':>8}  {'yes' if r['fits'] else 'no'}")
    print()
    print(f"{'source':24} {'rows':>4} {'median |err|':>12} {'bias':>7} {'within 20%':>10}  no-fit")
    lines = [*result["by_source"].items(), ("ALL", result["overall"])]
    lines += [(f"measured: {k}", v) for k, v in result["by_measure"].items()]
    for key, s in lines:
        print(
            f"{key:24} {s['runs']:>4} {s['median_abs_error']:>12.1%} {s['bias']:>+7.1%}"
            f" {s['within_20pct']:>10.0%}  {len(s['predicted_not_to_fit'])}"
        )
    n = len(result["ooms"])
    print(f"out-of-memory runs predicted to fit: {len(result['oom_predicted_to_fit'])} of {n}")


def main(argv: list[str] | None = None) -> None:
    """Run the check, print the table, write benchmarks/results/ftmem.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated run ids")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    result = run_all(only)
    _print(result)
    if args.no_write:
        return
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.ftmem" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "commit": _commit(),
        "method": __doc__.split("\n\n")[1],
        **result,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
