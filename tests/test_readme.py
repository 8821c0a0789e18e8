"""The README's examples and figures are real: each comes from a command that regenerates it.

`python -m benchmarks.readme` re-runs every example and renders the figures; these tests
fail when the README and the code (or the committed results) have drifted apart:

- examples that depend only on the code and the shipped data are re-run and compared
  line by line (a block ending in "…" shows the first lines only; `--emit` blocks compare
  the emitted file the block `cat`s too);
- examples that measure this machine (probe, calibrate, a local recommendation) are
  compared with the record of the run that produced them (benchmarks/results/
  readme_examples.json), which names its date and machine;
- the figures section is the rendering of the committed result files.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor.shell.cli import app
from benchmarks import readme

README = readme.README
TEXT = README.read_text()
BLOCKS = readme.blocks(TEXT)
CASES = [(c, b, t) for c, b, t in BLOCKS if not readme.measures_this_machine(c)]
MEASURED = [(c, b) for c, b, _t in BLOCKS if readme.measures_this_machine(c)]
# Elapsed times in otherwise deterministic output (`rules check` reports its own).
# A timing, also where the console folds the line before its unit.
_ELAPSED = re.compile(r"\bin \d+(\.\d+)?( s\b|$)")


def test_the_readme_shows_every_command() -> None:
    commands = " ".join(c for c, _b, _t in BLOCKS)
    for name in (
        "probe",
        "profiles list",
        "taxonomy",
        "rules show",
        "rules check",
        "estimate",
        "calibrate",
        "recommend",
    ):
        assert f"optadvise {name}" in commands
    assert len(CASES) >= 5 and MEASURED


@pytest.mark.parametrize(("command", "expected", "tail"), CASES, ids=[c for c, _b, _t in CASES])
def test_pasted_output_matches_a_real_run(
    command: str,
    expected: list[str],
    tail: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # --emit writes here
    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, shlex.split(command)[1:], env=readme.ENV)
    actual = [line.rstrip() for line in result.output.rstrip("\n").splitlines()]
    actual = readme.cut(actual, expected)
    mask = _ELAPSED.sub
    assert [mask("in _ s", a) for a in actual] == [mask("in _ s", e.rstrip()) for e in expected]
    if tail and tail[0].startswith("$ cat "):
        written = (tmp_path / tail[0].removeprefix("$ cat ").strip()).read_text()
        shown = tail[1:]
        assert readme.cut(written.rstrip("\n").splitlines(), shown) == shown


def test_measured_examples_are_the_recorded_runs() -> None:
    record = json.loads(readme.EXAMPLES.read_text())
    runs = {r["command"]: r["output"] for r in record["examples"]}
    for command, body in MEASURED:
        assert command in runs, f"{command!r} was not run by `python -m benchmarks.readme`"
        assert runs[command] == body, f"{command!r}: regenerate with python -m benchmarks.readme"


def test_the_figures_are_the_committed_results() -> None:
    match = readme.FIGURES.search(TEXT)
    assert match, "README.md lost its figures markers"
    assert match.group(2) == readme.render_figures(), (
        "regenerate with python -m benchmarks.readme --figures"
    )
