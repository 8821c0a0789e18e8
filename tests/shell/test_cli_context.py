"""`--context-parallel` on `estimate` and `recommend`: the JSON it adds, the pins the search
honours, and bad input as one line with exit status 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advisor.shell.cli import app

runner = CliRunner()
H100 = ["--hardware", "h100-sxm-80gb", "--model", "llama-3.1-8b", "--task", "pretrain"]


def _usage_error(result: object) -> list[str]:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert lines and lines[0].startswith("Error: ")
    assert len(lines) <= 2 and all(ln.startswith("  hint: ") for ln in lines[1:])
    return lines


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["estimate", "--seq-len", "4096", "--context-parallel", "3"], "divisible by 6"),
        (["estimate", "--seq-len", "4096", "--context-parallel", "0"], "--context-parallel"),
        (["estimate", "--seq-len", "4096", "--context-parallel", "4096"], "out of range"),
        (
            [
                "estimate",
                "--seq-len",
                "65536",
                "--context-parallel",
                "64",
                "--context-parallel-kind",
                "ulysses",
            ],
            "attention heads",
        ),
        (["estimate", "--context-parallel", "2", "--attention", "eager"], "eager"),
        (["estimate", "--context-parallel", "2", "--context-parallel-kind", "x"], "kind"),
        (
            ["recommend", "--seq-len", "4096", "--context-parallel", "3", "--gpus", "6"],
            "divisible by 6",
        ),
        (["recommend", "--context-parallel", "3", "--gpus", "8"], "does not divide the 8"),
        (
            ["recommend", "--gpus", "8", "--context-parallel-kind", "ring-ish"],
            "--context-parallel-kind",
        ),
    ],
)
def test_bad_context_parallel_input_is_one_line(args: list[str], says: str) -> None:
    result = runner.invoke(app, [args[0], *H100, *args[1:], "--json"])
    lines = _usage_error(result)
    assert says in lines[0] or says in " ".join(lines), lines
    assert result.stdout == ""


def test_estimate_json_carries_the_context_parallel_layout() -> None:
    result = runner.invoke(
        app,
        [
            "estimate",
            *H100,
            "--seq-len",
            "65536",
            "--context-parallel",
            "8",
            "--gpus",
            "2",
            "--stack",
            "fused",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["config"]["context_parallel"] == 8
    assert report["config"]["context_parallel_kind"] == "ring"
    assert any("context parallelism 8" in n for n in report["notes"])


def test_recommend_explores_context_parallelism_for_long_sequences() -> None:
    result = runner.invoke(
        app,
        [
            "recommend",
            *H100,
            "--seq-len",
            "131072",
            "--gpus",
            "8",
            "--nodes",
            "2",
            "--stack",
            "fused",
            "--json",
            "--top",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["recommendations"]
    # 128K tokens of Llama 3.1 8B do not fit one H100 without splitting the sequence.
    assert rows and all(r["context_parallel"] > 1 for r in rows)
    assert all(f"cp{r['context_parallel']}" in r["layout"] for r in rows)


def test_recommend_honours_the_pins() -> None:
    result = runner.invoke(
        app,
        [
            "recommend",
            *H100,
            "--seq-len",
            "32768",
            "--gpus",
            "8",
            "--stack",
            "fused",
            "--context-parallel",
            "4",
            "--context-parallel-kind",
            "ulysses",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["recommendations"]
    assert rows and all(
        r["context_parallel"] == 4 and r["context_parallel_kind"] == "ulysses" for r in rows
    )


def test_short_sequences_are_not_split() -> None:
    result = runner.invoke(
        app, ["recommend", *H100, "--seq-len", "4096", "--gpus", "8", "--json", "--top", "5"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["recommendations"]
    assert rows and all(r["context_parallel"] == 1 for r in rows)
