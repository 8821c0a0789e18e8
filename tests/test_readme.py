"""The README's pasted output is real: deterministic commands are re-run and compared (golden)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
# Commands whose output depends on nothing but the code and the shipped data (profiles,
# rules, analytic costs). Probe, calibration and local recommendations measure the machine.
DETERMINISTIC = re.compile(
    r"^optadvise (taxonomy|rules show|estimate .*--hardware|recommend .*--hardware|profiles list)"
)


def _blocks() -> list[tuple[str, list[str]]]:
    text = README.read_text()
    out = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        lines = block.rstrip("\n").splitlines()
        command = lines[0].removeprefix("$ ").strip()
        body = lines[1:]
        # A block may show a second command (e.g. `cat` of an emitted file): keep the first.
        for i, line in enumerate(body):
            if line.startswith("$ "):
                body = body[:i]
                break
        out.append((command, body))
    return out


CASES = [(c, b) for c, b in _blocks() if DETERMINISTIC.match(c) and "--emit" not in c]


def test_the_readme_shows_every_command() -> None:
    commands = " ".join(c for c, _ in _blocks())
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
    assert len(CASES) >= 5


@pytest.mark.parametrize(("command", "expected"), CASES, ids=[c for c, _ in CASES])
def test_pasted_output_matches_a_real_run(command: str, expected: list[str]) -> None:
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(app, args, env={"NO_COLOR": "1", "COLUMNS": "100"})
    actual = [line.rstrip() for line in result.output.rstrip("\n").splitlines()]
    if expected and expected[-1] == "…":  # the README shows the first lines only
        expected = expected[:-1]
        actual = actual[: len(expected)]
    assert actual == [line.rstrip() for line in expected]


def update_readme() -> int:
    """Re-run every deterministic block and paste its real output (keeps a trailing "…").

    Run after a change that moves the output: ``python -m tests.test_readme``.

    Returns:
        How many blocks changed.
    """
    text = README.read_text()
    changed = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal changed
        block = match.group(1)
        lines = block.rstrip("\n").splitlines()
        command = lines[0].removeprefix("$ ").strip()
        if not DETERMINISTIC.match(command) or "--emit" in command:
            return match.group(0)
        body = lines[1:]
        tail: list[str] = []
        for i, line in enumerate(body):
            if line.startswith("$ "):
                body, tail = body[:i], body[i:]
                break
        result = CliRunner().invoke(
            app, shlex.split(command)[1:], env={"NO_COLOR": "1", "COLUMNS": "100"}
        )
        actual = [line.rstrip() for line in result.output.rstrip("\n").splitlines()]
        if body and body[-1] == "…":
            actual = [*actual[: len(body) - 1], "…"]
        if actual != [line.rstrip() for line in body]:
            changed += 1
        return "```console\n" + "\n".join([lines[0], *actual, *tail]) + "\n```"

    README.write_text(re.sub(r"```console\n(.*?)```", replace, text, flags=re.S))
    return changed


if __name__ == "__main__":
    print(f"{update_readme()} block(s) updated in {README}")
