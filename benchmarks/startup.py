"""Start-up time of `rules check` and `recommend --no-calibrate`, which must feel instant.

Every run is a cold process (``python -m advisor ...``), as a user's shell starts it. For
each command it reports the median of ``--runs`` runs (default 5) of:

- ``total``: the whole command, with the data cache filled (the usual case);
- ``startup``: from launch to the moment the command's own work begins, i.e. imports,
  flag parsing and loading the rules, taxonomy and profiles (for `rules check`, up to the
  consistency analysis; for `recommend`, up to the plan search);
- ``first_run``: the whole command with an empty data cache (the first run after an
  install or a data change: YAML parsed and validated, cache written);
- the CPU time (user + system) of each, which the other processes on a shared machine
  disturb less than the wall time.

Byte-code caching is on, as in an installed wheel (pip compiles the modules); one warm-up
run per command writes the ``__pycache__`` files first. The machine's load average is
recorded before and after: on a shared machine, read the medians with it.

    python -m benchmarks.startup --out benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from advisor.hardware.probe import read_cpuinfo

ROOT = Path(__file__).resolve().parent.parent
COMMANDS: dict[str, list[str]] = {
    "rules check": ["rules", "check"],
    "recommend --no-calibrate": ["recommend", "--model-size", "7B", "--no-calibrate"],
}
# The work each command does after start-up; the probe below stops the process there.
_STOP_AT = {
    "rules check": ("advisor.rules.checks", "_Checker", "run"),
    "recommend --no-calibrate": ("advisor.app.recommend", None, "build_report"),
}
_PROBE = """
import importlib, os, sys, time
t0 = float(os.environ["OPTADVISE_BENCH_T0"])
module, owner, name = sys.argv[1:4]
sys.argv = ["optadvise", *sys.argv[4:]]
import advisor.shell.cli
def stop(*args, **kwargs):
    sys.stdout.write(f"STARTUP {time.time() - t0:.6f}\\n")
    sys.stdout.flush()
    os._exit(0)
target = importlib.import_module(module)
setattr(getattr(target, owner) if owner != "-" else target, name, stop)
advisor.shell.cli.main()
"""


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(OPTADVISE_CACHE_DIR=str(cache), NO_COLOR="1", COLUMNS="100")
    return env


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) and stdout of one cold process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(values), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
        "runs_s": [round(v, 4) for v in values],
    }


def measure(runs: int = 5) -> dict[str, Any]:
    """Time every command ``runs`` times in each mode; return the report."""
    py = sys.executable
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="optadvise-bench-") as tmp:
        cache = Path(tmp) / "cache"
        env = _env(cache)
        for label, args in COMMANDS.items():
            argv = [py, "-m", "advisor", *args]
            _run(argv, env)  # warm-up: byte-code and the data cache are written
            total = [_run(argv, env) for _ in range(runs)]
            first: list[tuple[float, float, str]] = []
            for i in range(runs):
                fresh = _env(Path(tmp) / f"empty-{label.split()[0]}-{i}")
                first.append(_run(argv, fresh))
            module, owner, name = _STOP_AT[label]
            startup: list[float] = []
            startup_cpu: list[float] = []
            for _ in range(runs):
                probe_env = {**env, "OPTADVISE_BENCH_T0": repr(time.time())}
                probe = [py, "-c", _PROBE, module, owner or "-", name, *args]
                _wall, cpu, out = _run(probe, probe_env)
                line = next(x for x in out.splitlines() if x.startswith("STARTUP "))
                startup.append(float(line.split()[1]))
                startup_cpu.append(cpu)
            results[label] = {
                "argv": ["optadvise", *args],
                "total": _summary([w for w, _, _ in total]),
                "total_cpu": _summary([c for _, c, _ in total]),
                "startup": _summary(startup),
                "startup_cpu": _summary(startup_cpu),
                "first_run": _summary([w for w, _, _ in first]),
                "first_run_cpu": _summary([c for _, c, _ in first]),
            }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "target_s": 0.35,
        "commands": results,
    }


def _cpu_model() -> str:
    return read_cpuinfo()[0]


def main() -> None:
    """Measure and print the medians; write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/startup.json")
    ns = parser.parse_args()
    report = measure(ns.runs)
    print(
        f"{report['cpu']}, {report['cores']} cores, load average "
        f"{report['load_average_before'][0]} -> {report['load_average_after'][0]}; "
        f"median of {ns.runs} cold runs (wall / CPU, seconds)"
    )
    for label, r in report["commands"].items():
        print(
            f"  {label:<26} start-up {r['startup']['median_s']:.3f} / "
            f"{r['startup_cpu']['median_s']:.3f}   total {r['total']['median_s']:.3f} / "
            f"{r['total_cpu']['median_s']:.3f}   first run (empty cache) "
            f"{r['first_run']['median_s']:.3f} / {r['first_run_cpu']['median_s']:.3f}"
        )
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
