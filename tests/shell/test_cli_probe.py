"""`optadvise probe` and `profiles list` through typer's runner: tables, JSON, schema, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
from typer.testing import CliRunner

from advisor.hardware.profiles import ProbeReport
from advisor.shell.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def probe_json() -> dict[str, object]:
    result = runner.invoke(app, ["probe", "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_probe_json_validates_against_its_exported_schema(probe_json: dict[str, object]) -> None:
    schema = json.loads(runner.invoke(app, ["probe", "--schema"]).stdout)
    jsonschema.validate(probe_json, schema)
    assert schema == ProbeReport.model_json_schema()


def test_probe_json_says_no_gpu_plainly(probe_json: dict[str, object]) -> None:
    assert probe_json["gpus"] == [] and probe_json["accelerator"] == "none"


def test_probe_table_names_every_section() -> None:
    result = runner.invoke(app, ["probe"], env={"NO_COLOR": "1", "COLUMNS": "120"})
    assert result.exit_code == 0
    for words in (
        "CPU",
        "Memory",
        "GPUs  none found",
        "Software",
        "SDPA backends",
        "effective limit",
    ):
        assert words in result.stdout


def test_probe_hardware_profile_instead_of_probing() -> None:
    result = runner.invoke(app, ["probe", "--hardware", "h100-sxm-80gb", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == "h100-sxm-80gb"


def test_unknown_profile_is_one_line_and_exit_2() -> None:
    result = runner.invoke(app, ["probe", "--hardware", "h900"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == "Error: unknown hardware profile 'h900'"
    assert "profiles list" in lines[1] and "Traceback" not in result.output


def test_profiles_list_shows_the_contract_ids() -> None:
    result = runner.invoke(app, ["profiles", "list", "--json"])
    assert result.exit_code == 0
    ids = {p["id"] for p in json.loads(result.stdout)["hardware"]}
    assert {"h100-sxm-80gb", "a100-sxm-80gb", "rtx-4090", "mi300x", "cpu-laptop"} <= ids


def test_python_dash_m_advisor_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "advisor", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("optadvise ")


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import sys, advisor.shell.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
