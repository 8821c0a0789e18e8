"""The estimate, recommend, taxonomy, rules and calibrate commands through the CLI runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from advisor.shell.cli import app

runner = CliRunner()


def test_estimate_json_contract_and_schema() -> None:
    result = runner.invoke(
        app, ["estimate", "--model-size", "7B", "--hardware", "rtx-4090", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in (
        "total_bytes",
        "breakdown",
        "parameters",
        "trainable_parameters",
        "host_bytes",
        "step_time",
    ):
        assert key in data
    for part in (
        "weights",
        "gradients",
        "master_weights",
        "optimizer_states",
        "activations",
        "overhead",
    ):
        assert isinstance(data["breakdown"][part], int)
    # The total is the largest phase, not the sum of components that never coexist.
    peak = next(p for p in data["phases"] if p["name"] == data["peak_phase"])
    assert sum(peak["components"].values()) == peak["total_bytes"] == data["total_bytes"]
    assert sum(data["breakdown"].values()) > data["total_bytes"]
    assert data["stack"] == "hf"
    assert data["overhead_breakdown"]["cuda_context"] > 0
    assert data["fits"] is False  # 7B full fine-tune with AdamW is ~145 GiB
    st = data["step_time"]
    assert st["seconds"] > 0 and st["source"] == "analytic"
    assert {"forward_backward", "attention", "optimizer_step"} <= set(st["components"])
    schema = json.loads(runner.invoke(app, ["estimate", "--schema"]).stdout)
    jsonschema.validate(data, schema)


def test_estimate_and_recommend_never_import_torch() -> None:
    code = (
        "import sys\n"
        "from advisor.shell.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['estimate', '--model-size', '1.3B', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['recommend', '--model-size', '125M', '--no-calibrate', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['rules', 'check', '--json'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["estimate", "--model-size", "7Q"], "invalid model size '7Q'"),
        (["estimate", "--optimizer", "adamx"], "unknown technique 'adamx'"),
        (["estimate", "--precision", "fp64"], "invalid --precision 'fp64'"),
        (["estimate", "--micro-batch", "-1"], "--micro-batch -1 is out of range"),
        (["estimate", "--seq-len", "-5"], "invalid sequence length"),
        (["estimate", "--model", "llama-9"], "unknown model"),
        (["estimate", "--model-config", "/nonexistent/config.json"], "config"),
        (["estimate", "--model-size", "7B", "--model", "gpt2"], "both name a model"),
        (["recommend", "--hardware", "h900"], "unknown hardware profile"),
        (["recommend", "--memory-budget", "lots"], "--memory-budget"),
        (["recommend", "--emit", "yaml"], "invalid --emit"),
        (["rules", "show", "no-such-rule"], "unknown rule"),
        (["calibrate", "--budget", "-1"], "--budget -1 is out of range"),
        (["calibrate", "--device", "cuda:0", "--model-size", "125M"], "no CUDA GPU"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert "Traceback" not in result.output


def test_recommend_json_and_emit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "recommend",
            "--model-size",
            "7B",
            "--hardware",
            "a100-sxm-80gb",
            "--gpus",
            "8",
            # NOTE: pinned to data parallel: Accelerate's config cannot express tensor
            # parallelism, which the search may pick for this plan (emit says so, exit 2).
            "--tp",
            "1",
            "--emit",
            "accelerate",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["recommendations"] and data["hardware"]["gpus_per_node"] == 8
    assert (out / "accelerate_config.yaml").exists() or any(out.iterdir())
    schema = json.loads(runner.invoke(app, ["recommend", "--schema"]).stdout)
    jsonschema.validate(data, schema)


def test_recommend_uses_a_users_rules_folder(tmp_path: Path) -> None:
    mine = tmp_path / "rules"
    mine.mkdir()
    (mine / "mine.yaml").write_text(
        """rules:
  - id: house-rule-no-lion
    title: Our team does not use Lion
    when: {all: []}
    then:
      - exclude: [lion]
    rationale: A house rule, to show that user rules are applied alongside the shipped ones.
    sources: [{authors: Chen et al., year: 2023, title: Symbolic Discovery of Optimization Algorithms}]
"""
    )
    args = ["recommend", "--model-size", "125M", "--hardware", "l4", "--json", "--top", "200"]
    result = runner.invoke(app, [*args, "--rules-dir", str(mine)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "house-rule-no-lion" in {f["rule"] for f in data["fired_rules"]}
    assert not any(r["optimizer"] == "lion" for r in data["recommendations"])


def test_taxonomy_and_rules_browsing() -> None:
    tree = runner.invoke(app, ["taxonomy"], env={"NO_COLOR": "1", "COLUMNS": "120"})
    assert (
        tree.exit_code == 0 and "zeroth-order (3)" in tree.stdout and "second-order" in tree.stdout
    )
    data = json.loads(runner.invoke(app, ["taxonomy", "--json"]).stdout)
    assert len(data["techniques"]) >= 70
    listing = json.loads(runner.invoke(app, ["rules", "list", "--json"]).stdout)
    assert len(listing) >= 40 and all(r["rule"]["sources"] for r in listing)
    shown = runner.invoke(app, ["rules", "show", "adamw-for-transformers"], env={"NO_COLOR": "1"})
    assert shown.exit_code == 0 and "Loshchilov & Hutter 2019" in shown.stdout


def test_calibrate_show_with_an_empty_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path))
    result = runner.invoke(app, ["calibrate", "show"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0 and "no calibration cached" in result.stdout
    (tmp_path / "cpu-0000.json").write_text("{broken")
    result = runner.invoke(app, ["calibrate", "show"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0 and "unreadable" in result.stdout


def test_recommend_request_defaults_are_the_cli_defaults() -> None:
    # Tests and benchmarks build requests with RecommendRequest.from_flags' defaults: they
    # must be what `optadvise recommend` does when a flag is not given.
    import inspect

    from advisor.app.recommend import RecommendRequest
    from advisor.shell.cli.recommend import recommend

    flags = inspect.signature(recommend).parameters
    params = inspect.signature(RecommendRequest.from_flags).parameters
    shared = [n for n in params if n != "spec"]
    assert all(n in flags for n in shared), set(shared) - set(flags)
    assert {n: params[n].default for n in shared} == {n: flags[n].default for n in shared}


def test_the_model_config_help_names_every_model_type_accepted() -> None:
    import re

    from advisor.model import HF_TYPES
    from advisor.shell.cli import ModelConfigOpt

    help_text = ModelConfigOpt.__metadata__[0].help
    named = set(re.findall(r"[a-z][a-z0-9_]+", help_text.split("model_type", 1)[1]))
    assert set(HF_TYPES) <= named, sorted(set(HF_TYPES) - named)


def test_estimate_with_recompute_unstated_answers_a_range() -> None:
    # torchtitan docs/performance.md (commit 0413364): Llama 2 70B, FSDP on 64 A100-80GB,
    # micro-batch 2 x 4096 ran with full activation checkpointing. Given without
    # --checkpointing, the run must not be called "does not fit": the answer is the range.
    args = ["estimate", "--model", "llama-2-70b", "--task", "pretrain", "--hardware"]
    args += ["a100-sxm-80gb", "--gpus", "64", "--sharding", "fsdp", "--seq-len", "4096"]
    args += ["--micro-batch", "2", "--json"]
    unstated = json.loads(runner.invoke(app, args).stdout)
    levels = {c["checkpointing"]: c for c in unstated["recompute_range"]}
    assert set(levels) == {"none", "selective", "full"}
    assert levels["full"]["fits"] is True and levels["none"]["fits"] is False
    assert unstated["fits"] is True
    assert levels["full"]["step_seconds"] > levels["none"]["step_seconds"]
    assert any("--checkpointing unstated" in n for n in unstated["notes"])
    # The run ran, so it had at least the recompute that fits: the central figures are
    # full recompute's (the least level that fits here), not the no-recompute ones.
    assert unstated["config"]["checkpointing"] == "full"
    assert unstated["step_time"]["seconds"] == levels["full"]["step_seconds"]
    assert unstated["total_bytes"] == levels["full"]["total_bytes"]
    # Stated, the configuration is checked as given, with no range.
    stated = json.loads(runner.invoke(app, [*args, "--checkpointing", "none"]).stdout)
    assert stated["fits"] is False and stated["recompute_range"] == []
