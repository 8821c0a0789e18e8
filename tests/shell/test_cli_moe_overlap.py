"""``recommend --moe-overlap/--moe-balance`` on the command line: the same values and
refusals as ``estimate`` (one ``Error:`` line, a hint, exit status 2), the pick's schedule in
its JSON (and in ``--hardware a,b`` comparisons), and DualPipe picked on DeepSeek-V3's own
layout (the report's PP16 x EP64 on 2048 H800s, arXiv:2412.19437, sec. 3.2.1)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advisor.shell.cli import app

runner = CliRunner()
QWEN = ["--model", "qwen3-30b-a3b", "--task", "pretrain", "--stack", "fused", "--no-calibrate"]
H100x16 = ["--hardware", "h100-sxm-80gb", "--gpus", "8", "--nodes", "2"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([*QWEN, *H100x16, "--moe-overlap", "overlap"], "invalid --moe-overlap"),
        ([*QWEN, *H100x16, "--moe-balance", "z-loss"], "invalid --moe-balance"),
        ([*QWEN, *H100x16, "--moe-overlap", "a2a-overlap", "--expert-parallel", "1"],
         "--expert-parallel is 1"),
        ([*QWEN, *H100x16, "--moe-overlap", "dualpipe", "--pp", "1"], "even number"),
        (["--model", "llama-3.1-8b", "--no-calibrate", *H100x16, "--moe-overlap", "dualpipe"],
         "no routed experts"),
        # One node of 8: DualPipe's even pipeline cannot carry expert parallelism here.
        ([*QWEN, "--hardware", "h100-sxm-80gb", "--gpus", "2", "--moe-overlap", "dualpipe",
          "--pp", "2"], "--expert-parallel is 1"),
    ],
)  # fmt: skip
def test_recommend_refuses_what_no_plan_can_run(args: list[str], says: str) -> None:
    result = runner.invoke(app, ["recommend", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error:") and says in lines[0], lines
    assert len(lines) == 2 and "Traceback" not in result.output


def test_estimate_refuses_dualpipe_with_virtual_stages() -> None:
    result = runner.invoke(
        app,
        ["estimate", "--model", "qwen3-30b-a3b", "--task", "pretrain", "--gpus", "4",
         "--pipeline-parallel", "4", "--virtual-stages", "2", "--expert-parallel", "4",
         "--grad-accumulation", "8", "--moe-overlap", "dualpipe"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --moe-overlap dualpipe runs one model chunk")


def _picks(args: list[str]) -> list[dict[str, object]]:
    result = runner.invoke(app, ["recommend", *args, "--json"])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout)["recommendations"])


def test_deepseek_v3_on_its_own_layout_picks_dualpipe() -> None:
    # The report's layout: 2048 H800s, PP16 x EP64 (sec. 3.2.1-3.3), trained with DualPipe.
    picks = _picks(
        ["--model", "deepseek-v3", "--hardware", "h800", "--gpus", "8", "--nodes", "256",
         "--task", "pretrain", "--seq-len", "4096", "--pp", "16", "--expert-parallel", "64",
         "--stack", "fused", "--no-calibrate", "--top", "1"]
    )  # fmt: skip
    pick = picks[0]
    assert pick["moe_overlap"] == "dualpipe"
    assert pick["config"]["moe_overlap"] == "dualpipe"  # type: ignore[index]
    assert pick["grad_accumulation"] % 2 == 0  # type: ignore[operator]
    assert pick["memory_breakdown"]["dualpipe_weights"] > 0  # type: ignore[index]
    reason = str(pick["moe_overlap_reason"])
    # Megatron-Core's overlap needs interleaving, which 61 layers on 16 stages cannot split.
    assert "none +" in reason and "a2a-overlap cannot run here" in reason


def test_a_pinned_overlap_is_kept_and_said() -> None:
    picks = _picks([*QWEN, *H100x16, "--moe-overlap", "none", "--top", "2"])
    assert all(p["moe_overlap"] == "none" for p in picks)
    assert "pinned by --moe-overlap" in str(picks[0]["moe_overlap_reason"])
    balanced = _picks([*QWEN, *H100x16, "--moe-balance", "aux-loss", "--top", "1"])[0]
    assert balanced["config"]["moe_balance"] == "aux-loss"  # type: ignore[index]


def test_dense_plans_carry_no_overlap_field() -> None:
    picks = _picks(["--model", "llama-3.1-8b", "--no-calibrate", *H100x16, "--top", "1"])
    assert "moe_overlap" not in picks[0] and "moe_overlap_reason" not in picks[0]


def test_comparisons_carry_the_pick_s_overlap() -> None:
    result = runner.invoke(
        app,
        ["recommend", *QWEN, "--hardware", "h100-sxm-80gb,h800", "--gpus", "8", "--nodes", "2",
         "--tokens", "1B", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for option in json.loads(result.stdout)["options"]:
        assert option["pick"]["moe_overlap"] in ("none", "a2a-overlap", "dualpipe")
