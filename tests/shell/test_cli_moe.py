"""The MoE layout flags on the command line: Megatron's published expert layouts are
accepted by estimate and recommend, and expert degrees Megatron could not build get one
``Error:`` line, a hint, and exit status 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advisor.shell.cli import app

runner = CliRunner()
H100 = ["--hardware", "h100-sxm-80gb", "--task", "pretrain", "--stack", "fused"]


@pytest.mark.parametrize(
    "args",
    [
        # DeepSeek-V3 at TP2 PP16 EP64 DP32; Qwen3-235B at TP2 PP8 EP32 DP16 (issue 24).
        ["--model", "deepseek-v3", "--tensor-parallel", "2", "--pipeline-parallel", "16",
         "--expert-parallel", "64", "--gpus", "32", "--sharding", "zero1"],
        ["--model", "qwen3-235b-a22b", "--tensor-parallel", "2", "--pipeline-parallel", "8",
         "--expert-parallel", "32", "--gpus", "16", "--sharding", "zero1",
         "--moe-dispatcher", "flex", "--capacity-factor", "1.25", "--pad-to-capacity"],
    ],
)  # fmt: skip
def test_estimate_accepts_megatron_expert_layouts(args: list[str]) -> None:
    result = runner.invoke(app, ["estimate", *args, *H100, "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert config["expert_parallel"] == int(args[args.index("--expert-parallel") + 1])
    assert config["expert_tensor_parallel"] is None  # resolved to 1 by the fold


def test_recommend_pins_the_expert_layout() -> None:
    result = runner.invoke(
        app,
        ["recommend", "--model", "qwen3-235b-a22b", "--gpus", "8", "--nodes", "32", "--tp", "2",
         "--pp", "8", "--expert-parallel", "32", "--expert-tensor-parallel", "1", "--top", "1",
         *H100, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    pick = json.loads(result.stdout)["recommendations"][0]
    assert "ep32" in pick["layout"] and "etp1" in pick["layout"]
    assert pick["expert_parallel"] == 32 and pick["expert_tensor_parallel"] == 1
    assert pick["moe_dispatcher"] == "alltoall"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "mixtral-8x7b", "--expert-parallel", "3", "--gpus", "6"], "8 experts"),
        (["--model", "mixtral-8x7b", "--expert-parallel", "8", "--gpus", "4"], "4 ranks"),
        (["--model", "mixtral-8x7b", "--expert-parallel", "4", "--gpus", "8",
          "--expert-tensor-parallel", "4"], "4 x 4"),
        (["--model", "llama-3.1-8b", "--expert-parallel", "2", "--gpus", "2"], "no experts"),
        (["--model", "mixtral-8x7b", "--pad-to-capacity"], "--capacity-factor"),
        (["--model", "mixtral-8x7b", "--moe-dispatcher", "ring"], "--moe-dispatcher"),
        (["--model", "mixtral-8x7b", "--capacity-factor", "0"], "--capacity-factor"),
        (["--model", "mixtral-8x7b", "--expert-tensor-parallel", "0"], "--expert-tensor"),
    ],
)  # fmt: skip
def test_expert_layouts_megatron_cannot_build_are_refused(args: list[str], says: str) -> None:
    result = runner.invoke(app, ["estimate", *args, *H100])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error:") and says in lines[0]
    assert "Traceback" not in result.output


def test_recommend_refuses_an_expert_pin_that_does_not_fold() -> None:
    result = runner.invoke(
        app,
        ["recommend", "--model", "qwen3-235b-a22b", "--gpus", "8", "--nodes", "16", "--tp", "2",
         "--pp", "8", "--expert-parallel", "32", *H100],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: no layout of 128 devices folds --expert-parallel 32")
