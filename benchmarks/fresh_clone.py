"""The README's two set-up commands on a fresh clone, timed, optionally beside busy processes.

Clones this repository's HEAD into a scratch folder and runs, as a new user would:

1. the main job: ``python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 . &&
   .venv/bin/optadvise recommend --model-size 7B`` (with an empty calibration cache, so the
   quick calibration runs first), then the same recommendation again with ``--json`` on
   the now-filled cache to record the pick;
2. the tests: ``make test`` (its own development venv, as CI does).

``--busy N`` starts N ``while True: pass`` processes beside both and ends them by PID
after: users run this on busy laptops. The result (wall times, exit statuses, pytest's
summary line, the pick, the load) goes to ``benchmarks/results/fresh_clone.json``, one
entry per ``--busy`` level, which ``python -m benchmarks.readme --figures`` renders.

    python -m benchmarks.fresh_clone --busy 0
    python -m benchmarks.fresh_clone --busy 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "fresh_clone.json"
MAIN_JOB = (
    "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 . && "
    ".venv/bin/optadvise recommend --model-size 7B"
)


def _sh(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, time.perf_counter() - t0, done.stdout + done.stderr


def run(busy: int) -> dict[str, Any]:
    procs = [
        # A busy loop that ends with its parent (a killed run must not leave it spinning).
        subprocess.Popen(
            [sys.executable, "-c", "import os\np = os.getppid()\nwhile os.getppid() == p: pass"],
            stdin=subprocess.DEVNULL,
        )
        for _ in range(busy)
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="optadvise-fresh-") as folder:
            clone = Path(folder) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env = dict(
                os.environ,
                OPTADVISE_CACHE_DIR=str(Path(folder) / "cache"),
                XDG_CACHE_HOME=str(Path(folder) / "xdg"),
            )
            env.pop("VIRTUAL_ENV", None)
            load_before = os.getloadavg()
            rc_main, main_s, main_out = _sh(MAIN_JOB, clone, env)
            rc_pick, _, pick_out = _sh(
                ".venv/bin/optadvise recommend --model-size 7B --json", clone, env
            )
            pick = _pick(pick_out) if rc_pick == 0 else None
            rc_test, test_s, test_out = _sh("make test", clone, env)
            summary = next(
                (
                    line.strip("= ")
                    for line in reversed(test_out.splitlines())
                    if re.search(r"\d+ (passed|failed)", line)
                ),
                "no pytest summary",
            )
            return {
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "commit": subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip(),
                "busy_processes": busy,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "main_job_exit": rc_main,
                "main_job_s": round(main_s, 1),
                "main_job_pick": pick,
                "main_job_tail": main_out.strip().splitlines()[-3:],
                "make_test_exit": rc_test,
                "make_test_s": round(test_s, 1),
                "make_test_summary": summary,
                "make_test_failures": [
                    line for line in test_out.splitlines() if line.startswith(("FAILED", "ERROR"))
                ],
            }
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _pick(stdout: str) -> str | None:
    rows = json.loads(stdout).get("recommendations") or []
    if not rows:
        return None
    c = rows[0]["config"]
    return f"{c['task']}, {c['optimizer']}, {c['precision']}, {c['attention']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = run(args.busy)
    old = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    runs = [r for r in old.get("runs", []) if r.get("busy_processes") != args.busy]
    args.out.write_text(json.dumps({"runs": [*runs, result]}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["main_job_exit"] == 0 and result["make_test_exit"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
