"""How long `optadvise recommend --no-calibrate` takes, cold: median of 5 fresh processes.

Targets (issue 10): under 0.5 s for 7B on this machine (the probed CPU) and under 1 s for
70B on 4 x 8 H100. Each run is a new interpreter (imports, YAML loading, probe, search,
report), timed from outside; inside, the same process also times the search alone
(``run_recommend``), so the start-up share is visible.

    .venv/bin/python -m benchmarks.search_speed   # writes benchmarks/results/search_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "7b-this-machine": (["--model-size", "7B"], 0.5),
    "70b-pretrain-4x8-h100": (
        ["--model-size", "70B", "--task", "pretrain", "--hardware", "h100-sxm-80gb",
         "--gpus", "8", "--nodes", "4"],
        1.0,
    ),
}  # fmt: skip


def _inside(args: list[str]) -> dict[str, float]:
    """Runs in the child: time the imports and the recommend job separately."""
    t0 = time.perf_counter()
    from advisor.shell.bootstrap import skip_pydantic_plugins

    skip_pydantic_plugins()  # as the CLI does before its first model class
    from advisor.app.recommend import RecommendRequest, run_recommend
    from advisor.model import resolve_model_size

    t1 = time.perf_counter()
    flags = dict(zip(args[::2], args[1::2], strict=True))
    req = RecommendRequest.from_flags(
        spec=resolve_model_size(flags["--model-size"]),
        task=flags.get("--task", "finetune"),
        hardware=flags.get("--hardware"),
        gpus=int(flags["--gpus"]) if "--gpus" in flags else None,
        nodes=int(flags.get("--nodes", "1")),
        calibrate=False,
    )
    report = run_recommend(req)
    t2 = time.perf_counter()
    assert report.search is not None
    return {
        "import_s": t1 - t0,
        "recommend_s": t2 - t1,
        "plans_considered": report.search.plans_considered,
        "plans_evaluated": report.search.plans_evaluated,
        "memory_evaluations": report.search.memory_evaluations,
        "time_evaluations": report.search.time_evaluations,
    }


# NOTE: byte-code caching on, as in an installed wheel (pip compiles the modules): with
# PYTHONDONTWRITEBYTECODE set, every run would compile the whole package again.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _cli_wall(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one cold CLI run. On a shared machine the CPU
    time is the steadier figure: other work stretches the wall time, not the CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "advisor", "recommend", *args, "--no-calibrate", "--json"],
        check=True,
        stdout=subprocess.DEVNULL,
        env=_ENV,
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.search_speed", "--inside", json.dumps(args)],
        check=True,
        capture_output=True,
        text=True,
        env=_ENV,
    )
    parsed: dict[str, float] = json.loads(out.stdout)
    return parsed


def run(repeats: int = 5) -> dict[str, object]:
    """Every case, ``repeats`` cold runs each; medians and the target verdicts."""
    from benchmarks.startup import _cpu_model

    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    for name, (args, target) in CASES.items():
        _cli_wall(args)  # warm-up: byte-code and the data cache written, as after an install
        runs = [_cli_wall(args) for _ in range(repeats)]
        walls = [w for w, _ in runs]
        inside = [_child(args) for _ in range(repeats)]
        med = statistics.median(walls)
        results[name] = {
            "command": "optadvise recommend " + " ".join(args) + " --no-calibrate --json",
            "wall_s": walls,
            "median_wall_s": med,
            "median_cpu_s": statistics.median(c for _, c in runs),
            "median_import_s": statistics.median(r["import_s"] for r in inside),
            "median_recommend_s": statistics.median(r["recommend_s"] for r in inside),
            "plans_considered": inside[0]["plans_considered"],
            "plans_evaluated": inside[0]["plans_evaluated"],
            "memory_evaluations": inside[0]["memory_evaluations"],
            "time_evaluations": inside[0]["time_evaluations"],
            "target_s": target,
            "meets_target": med < target,
            "meets_target_in_cpu_time": statistics.median(c for _, c in runs) < target,
        }
    # NOTE: on a shared machine read the medians with the load: other processes stretch the
    # wall time (the CPU time less so).
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results/search_speed.json"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.inside:
        print(json.dumps(_inside(json.loads(ns.inside))))
        return
    results = run(ns.repeats)
    text = json.dumps(results, indent=2)
    print(text)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
