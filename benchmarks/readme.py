"""Regenerate every example and figure the README shows, from the code and benchmarks/results/.

Two kinds of README content come from here:

- **Examples** (every ```console block): each command is re-run, in order, as a cold
  process (``python -m advisor``, ``NO_COLOR=1 COLUMNS=100``, a fresh calibration cache
  for the whole pass, a scratch working folder so ``--emit`` files land there; a following
  ``$ cat FILE`` shows the emitted file). A block that ends in "…" keeps its length. The
  commands that measure this machine (``probe``, ``calibrate``, ``recommend`` without
  ``--hardware``) are recorded with their output, date and machine in
  ``benchmarks/results/readme_examples.json``; ``tests/test_readme.py`` re-runs the others
  and compares them with the README, and checks the measured ones against that record.
- **Figures** (between the ``<!-- figures:begin -->`` and ``<!-- figures:end -->``
  markers): one table rendered by :func:`render_figures` from the result files of the
  benchmarks, each row naming the command that regenerates it.

    python -m benchmarks.readme            # rewrite README.md and the examples record
    python -m benchmarks.readme --figures  # the figures only (no command is run)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = RESULTS / "readme_examples.json"
ENV = {"NO_COLOR": "1", "COLUMNS": "100", "TERM": "dumb"}
BLOCK = re.compile(r"```console\n(.*?)```", flags=re.S)
FIGURES = re.compile(r"(<!-- figures:begin[^>]*-->\n)(.*?)(<!-- figures:end -->)", flags=re.S)


def measures_this_machine(command: str) -> bool:
    """Whether a README command's output depends on this machine (probe, calibration, a
    local recommendation); the others depend only on the code and the shipped data."""
    args = shlex.split(command)[1:]
    if not args:
        return False
    if args[0] in ("probe", "calibrate"):
        return "--hardware" not in args
    return args[0] in ("recommend", "estimate") and "--hardware" not in args


def blocks(text: str) -> list[tuple[str, list[str], list[str]]]:
    """Each console block as (command, output lines, trailing "$ cat FILE" lines)."""
    out = []
    for block in BLOCK.findall(text):
        lines = block.rstrip("\n").splitlines()
        command = lines[0].removeprefix("$ ").strip()
        body, tail = lines[1:], []
        for i, line in enumerate(body):
            if line.startswith("$ "):
                body, tail = body[:i], body[i:]
                break
        out.append((command, body, tail))
    return out


def run_command(command: str, cwd: Path, cache: Path) -> list[str]:
    """One README command as a user's shell runs it, its stdout and stderr as lines."""
    env = dict(os.environ, **ENV, OPTADVISE_CACHE_DIR=str(cache))
    result = subprocess.run(
        [sys.executable, "-m", "advisor", *shlex.split(command)[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    text = result.stderr + result.stdout if result.stderr else result.stdout
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def cut(actual: list[str], shown: list[str]) -> list[str]:
    """Keep a block's "…" truncation: as many lines as the README shows."""
    if shown and shown[-1] == "…":
        return [*actual[: len(shown) - 1], "…"]
    return actual


def regenerate_examples(
    text: str, log: Callable[[str], None] = print
) -> tuple[str, list[dict[str, Any]]]:
    """Re-run every console block; returns the new README text and the measured records."""
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="optadvise-readme-") as folder:
        cwd, cache = Path(folder) / "work", Path(folder) / "cache"
        cwd.mkdir()

        def replace(match: re.Match[str]) -> str:
            command = match.group(1).splitlines()[0].removeprefix("$ ").strip()
            ((_, body, tail),) = blocks(match.group(0))
            log(f"$ {command}")
            started = dt.datetime.now(dt.timezone.utc)
            actual = cut(run_command(command, cwd, cache), body)
            shown_tail: list[str] = []
            for line in tail:
                if line.startswith("$ cat "):
                    path = cwd / line.removeprefix("$ cat ").strip()
                    content = path.read_text().rstrip("\n").splitlines() if path.exists() else []
                    tail_body = tail[tail.index(line) + 1 :]
                    shown_tail = [line, *cut(content, tail_body)]
                    break
            if measures_this_machine(command):
                records.append(
                    {
                        "command": command,
                        "date": started.isoformat(timespec="seconds"),
                        "output": actual,
                    }
                )
            return "```console\n" + "\n".join([f"$ {command}", *actual, *shown_tail]) + "\n```"

        new = BLOCK.sub(replace, text)
    return new, records


# --- Figures ---------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _s(x: float) -> str:
    return f"{x:.2f} s" if x < 10 else f"{x:.0f} s"


def render_figures() -> str:
    """The README's table of measured figures, from the committed benchmark results."""
    rows: list[tuple[str, str, str]] = []
    fresh = _load("fresh_clone.json")
    for run in (fresh or {}).get("runs", []):
        when = f"{run['date'][:10]}, commit {run['commit']}, {run['busy_processes']} busy processes"
        rows.append(
            (
                f"`make test` on a fresh clone ({when})",
                "`python -m benchmarks.fresh_clone --busy N`",
                f"exit {run['make_test_exit']} in {_s(run['make_test_s'])}: "
                f"{run['make_test_summary']}",
            )
        )
        rows.append(
            (
                f"the main job on a fresh clone: install, quick calibration, ranking ({when})",
                "`python -m benchmarks.fresh_clone --busy N`",
                f"exit {run['main_job_exit']} in {_s(run['main_job_s'])}; pick: "
                f"{run['main_job_pick']}",
            )
        )
    startup = _load("startup.json")
    if startup:
        for name, row in startup["commands"].items():
            rows.append(
                (
                    f"`optadvise {name}` ({startup['date'][:10]})",
                    "`python -m benchmarks.startup`",
                    f"median of {startup['runs']} cold runs {_s(row['total']['median_s'])} "
                    f"(start-up {_s(row['startup']['median_s'])}; first run with an empty "
                    f"data cache {_s(row['first_run']['median_s'])})",
                )
            )
    speed = _load("search_speed.json")
    if speed:
        for key, row in speed.items():
            if isinstance(row, dict) and "median_wall_s" in row:
                rows.append(
                    (
                        f"search speed, {key} ({str(speed['date'])[:10]})",
                        "`python -m benchmarks.search_speed`",
                        f"`{row['command']}`: median {_s(row['median_wall_s'])} "
                        f"(target {_s(row['target_s'])}), {row['plans_evaluated']:,} of "
                        f"{row['plans_considered']:,} plans evaluated",
                    )
                )
    pvm = _load("predict_vs_measure.json")
    if pvm:
        taus = ", ".join(f"{c['kendall_tau']:.2f}" for c in pvm["cases"])
        rows.append(
            (
                f"predicted vs measured step ({pvm['date'][:10]})",
                "`python -m benchmarks.predict_vs_measure`",
                f"Kendall tau {taus}; median absolute error "
                f"{pvm['median_abs_error_pct']:.1f} % over "
                f"{len(pvm['rows'])} rows (other processes: "
                f"{100 * (pvm.get('other_cpu_share') or 0):.0f} % of the CPU)",
            )
        )
    regret = _load("regret.json")
    if regret:
        rows.append(
            (
                f"recommender regret ({regret['date'][:10]})",
                "`python -m benchmarks.regret`",
                f"the fastest of {regret['measured']} measured candidates was the "
                f"recommender's #{regret['fastest_rank']}; regret of the first pick "
                f"{regret.get('regret_pct') or 0:.1f} %",
            )
        )
    contention = _load("contention.json")
    if contention:
        for busy, s in contention["summary"].items():
            if busy == "pick":
                continue
            bf16, fp16 = s["bf16_vs_fp32_median_range"], s["fp16_vs_fp32_median_range"]
            rows.append(
                (
                    f"quick calibration of {contention['model_size']} beside {busy} busy "
                    f"process(es) ({contention['date'][:10]})",
                    "`python -m benchmarks.contention`",
                    f"{s['runs']} runs: bf16/fp32 {bf16[0]:.2f}-{bf16[1]:.2f}x, fp16/fp32 "
                    f"{fp16[0]:.2f}-{fp16[1]:.2f}x (one thread, medians); pick changed in "
                    f"{s['pick_changed']}; other processes' CPU share "
                    f"{_pct_range(s['other_cpu_share_range'])}",
                )
            )
    lines = ["| what | regenerate with | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if pvm:
        lines += [
            "",
            f"Prediction against measurement, row by row ({pvm['date'][:10]}, "
            f"{pvm.get('threads', '?')} thread(s)):",
            "",
            "| config | optimizer | predicted ms | measured ms (IQR) | error % |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['config']} | {r['optimizer']} | {1e3 * r['predicted_s']:.1f} | "
            f"{1e3 * r['measured_s']:.1f} ({1e3 * r['measured_iqr_s']:.1f}) | "
            f"{r['error_pct']:+.1f} |"
            for r in pvm["rows"]
        ]
    return "\n".join(lines) + "\n"


def _pct_range(r: list[float] | None) -> str:
    return f"{100 * r[0]:.0f}-{100 * r[1]:.0f} %" if r else "not measured"


def replace_figures(text: str) -> str:
    """The README with its figures section rendered anew."""
    if not FIGURES.search(text):
        raise SystemExit("README.md has no <!-- figures:begin --> ... <!-- figures:end --> section")
    return FIGURES.sub(lambda m: m.group(1) + render_figures() + m.group(3), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", action="store_true", help="rewrite the figures only")
    args = parser.parse_args(argv)
    text = README.read_text()
    if not args.figures:
        from advisor.hardware.fast16 import read_cpuinfo

        text, records = regenerate_examples(text)
        EXAMPLES.write_text(
            json.dumps(
                {
                    "cpu": read_cpuinfo()[0],
                    "cores": os.cpu_count(),
                    "load_average": list(os.getloadavg()),
                    "examples": records,
                },
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
    README.write_text(replace_figures(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
