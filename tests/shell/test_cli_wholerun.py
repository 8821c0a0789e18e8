"""`recommend`/`estimate` --tokens and `recommend --hardware a,b,c` on the command line: the
JSON contract (every new field described), the verdict text, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor.errors import EXIT_NOTHING_FITS, EXIT_OK, EXIT_USAGE
from advisor.shell.cli import app

runner = CliRunner()
REC = ["recommend", "--no-calibrate", "--model", "llama-3.1-8b", "--task", "lora"]


def _usage_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("Error: ")
    assert len(lines) <= 2 and all(ln.startswith("  hint: ") for ln in lines[1:])
    assert not result.stdout.strip(), "nothing half-written on stdout"
    return lines[0]


@pytest.mark.parametrize(
    "extra",
    [
        ["--hardware", "rtx-4090", "--tokens", "-5"],
        ["--hardware", "rtx-4090", "--tokens", "0"],
        ["--hardware", "rtx-4090", "--tokens", "lots"],
        ["--hardware", "rtx-4090", "--epochs", "3"],
        ["--hardware", "rtx-4090", "--tokens", "1B", "--epochs", "1", "--dataset-tokens", "1B"],
        ["--hardware", "rtx-4090", "--max-days", "-1"],
        ["--hardware", "rtx-4090", "--price-per-hour", "0"],
        ["--hardware", "t4,no-such-gpu"],
        ["--hardware", "t4,,l4"],
        ["--hardware", "t4,t4"],
        ["--hardware", "rtx-4090", "--sort", "cost"],
        ["--hardware", "t4,l4", "--sort", "speed"],
        ["--hardware", "t4,l4", "--emit", "torch"],
        ["--hardware", "t4,l4", "--calibrate"],
        ["--hardware", "t4,l4", "--explain"],
        ["--hardware", "t4,l4", "--show-rejected"],
    ],
)
def test_bad_whole_run_input_is_one_line_and_exit_2(extra: list[str]) -> None:
    _usage_error([*REC, *extra])


def test_a_bad_price_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text("currency: USD\nprices:\n  - id: rtx-4090\n    usd_per_gpu_hour: nope\n")
    line = _usage_error([*REC, "--hardware", "rtx-4090", "--tokens", "1B", "--prices", str(bad)])
    assert "--prices" in line
    _usage_error(["estimate", "--model", "llama-3.1-8b", "--tokens", "1B", "--prices", str(bad)])


def test_estimate_rejects_a_negative_budget() -> None:
    _usage_error(
        ["estimate", "--model", "llama-3.1-8b", "--hardware", "rtx-4090", "--tokens", "-1"]
    )


def _props(schema: dict[str, Any], root: str) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for name, model in [(root, schema), *schema.get("$defs", {}).items()]:
        for prop, body in model.get("properties", {}).items():
            out.append((name, prop, body))
    return out


def test_every_field_of_the_compare_schema_is_described() -> None:
    result = runner.invoke(app, ["recommend", "--hardware", "t4,l4", "--schema"])
    assert result.exit_code == EXIT_OK, result.output
    props = _props(json.loads(result.stdout), "CompareReport")
    assert {"options", "budget", "sort"} <= {p for _, p, _ in props}
    bare = [f"{m}.{p}" for m, p, body in props if not body.get("description")]
    assert not bare, f"fields without a description: {bare}"


def test_recommend_json_carries_the_run_of_every_row() -> None:
    result = runner.invoke(app, [*REC, "--hardware", "h100-sxm-80gb", "--tokens", "2B", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    data = json.loads(result.stdout)
    assert data["whole_run"]["practical"] is True
    for row in data["recommendations"]:
        run = row["run"]
        assert run["tokens"] == 2 * 10**9
        assert run["gpu_hours"] > 0 and run["cost_usd"] > 0 and run["energy_kwh"] > 0


def test_recommend_json_without_a_budget_has_no_run_fields() -> None:
    result = runner.invoke(app, [*REC, "--hardware", "h100-sxm-80gb", "--json"])
    data = json.loads(result.stdout)
    assert "whole_run" not in data
    assert all("run" not in row for row in data["recommendations"])


def test_the_cpu_7b_case_says_it_is_impractical_and_what_to_do() -> None:
    args = ["recommend", "--model-size", "7B", "--hardware", "cpu-laptop", "--top", "1"]
    text = runner.invoke(app, args)
    assert text.exit_code == EXIT_OK, text.output
    assert "impractical" in text.stdout and "--hardware " in text.stdout
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert data["whole_run"]["practical"] is False
    assert data["whole_run"]["remedies"]


def test_compare_table_and_json() -> None:
    args = [*REC, "--hardware", "rtx-4090,a100-sxm-80gb,h100-sxm-80gb", "--tokens", "200M"]
    text = runner.invoke(app, [*args, "--sort", "time"])
    assert text.exit_code == EXIT_OK, text.output
    assert "h100-sxm-80gb" in text.stdout and "runpod.io" in text.stdout
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert data["sort"] == "cost" and len(data["options"]) == 3
    assert [o["rank"] for o in data["options"]] == [1, 2, 3]
    assert all(o["pick"]["run"] == o["run"] for o in data["options"])


def test_compare_where_nothing_fits_exits_3() -> None:
    args = ["recommend", "--no-calibrate", "--model-size", "70B", "--hardware", "t4,l4"]
    args += ["--memory-budget", "4GB", "--host-memory", "8GB", "--nvme", "0", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_NOTHING_FITS, result.output
    assert json.loads(result.stdout)["fits"] is False


def test_estimate_with_tokens_reports_the_run() -> None:
    args = ["estimate", "--model", "llama-3.1-8b", "--task", "lora", "--hardware", "rtx-4090"]
    args += ["--micro-batch", "4", "--grad-accumulation", "8", "--tokens", "50M", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_OK, result.output
    run = json.loads(result.stdout)["run"]
    assert run["tokens_per_step"] == 4 * 8 * 2048
    assert run["steps"] == -(-50_000_000 // (4 * 8 * 2048))
    plain = runner.invoke(app, [*args[:-3], "--json"])
    assert "run" not in json.loads(plain.stdout)
