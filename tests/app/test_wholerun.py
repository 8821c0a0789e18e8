"""The whole run of a recommendation: budget flags, each row's run, the impractical verdict
and its remedies (each planned for real), on datasheet profiles (deterministic)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from advisor.app.recommend import RecommendRequest, plan_recommendation
from advisor.app.wholerun import RunOptions, finish_report
from advisor.errors import UserError
from advisor.model import get_model_profile, resolve_model_size


def _report(spec_text: str, hardware: str, options: RunOptions, **flags: object):  # type: ignore[no-untyped-def]
    spec = resolve_model_size(spec_text) if spec_text[0].isdigit() else get_model_profile(spec_text)
    req = RecommendRequest.from_flags(spec=spec, hardware=hardware, top=3, **flags)  # type: ignore[arg-type]
    return finish_report(plan_recommendation(req), req, options)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("2B", 2 * 10**9), ("15T", 15 * 10**12), ("500M", 5 * 10**8), ("1.5k", 1500), ("7", 7)],
)
def test_token_counts_are_decimal(text: str, tokens: int) -> None:
    assert RunOptions.from_flags(tokens=text).tokens == tokens


def test_epochs_times_the_dataset() -> None:
    o = RunOptions.from_flags(epochs=3, dataset_tokens="20M")
    assert o.tokens == 60 * 10**6 and "--epochs 3" in o.source


@pytest.mark.parametrize(
    "flags",
    [
        {"tokens": "-5"},
        {"tokens": "0"},
        {"tokens": "2X"},
        {"tokens": "10000T"},
        {"tokens": "1B", "epochs": 2.0, "dataset_tokens": "1M"},
        {"epochs": 2.0},
        {"dataset_tokens": "1M"},
        {"epochs": 0.0, "dataset_tokens": "1M"},
        {"max_days": 0.0},
        {"price_per_hour": -1.0},
        {"prices": " "},
    ],
)
def test_bad_budget_flags_are_user_errors(flags: dict[str, object]) -> None:
    with pytest.raises(UserError):
        RunOptions.from_flags(**flags)  # type: ignore[arg-type]


def test_a_bad_price_file_is_a_user_error(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("currency: USD\nprices:\n  - id: t4\n    usd_per_gpu_hour: 0\n")
    with pytest.raises(UserError, match="--prices"):
        RunOptions.from_flags(prices=str(f))


def test_every_row_gets_its_run_under_a_budget() -> None:
    report = _report("opt-125m", "h100-sxm-80gb", RunOptions.from_flags(tokens="2B"))
    assert report.whole_run is not None and report.whole_run.practical
    for r in report.recommendations:
        run = r.run
        assert run is not None
        per = r.global_batch * report.workload.seq_len
        assert run.steps == math.ceil(2e9 / per)
        assert run.wall_seconds == pytest.approx(run.steps * r.step_time_s)
        assert run.cost_usd is not None and run.energy_kwh is not None
        assert "runpod.io" in run.price_source


def test_time_to_target_counts_steps_to_adamws_loss() -> None:
    opts = RunOptions.from_flags(tokens="1B")
    report = _report("opt-125m", "h100-sxm-80gb", opts, objective="time-to-target", task="pretrain")
    for r in report.recommendations:
        assert r.run is not None and r.steps_vs_adamw is not None
        base = math.ceil(1e9 / (r.global_batch * report.workload.seq_len))
        assert r.run.steps == max(1, math.ceil(base * r.steps_vs_adamw.central - 1e-9))


def test_without_a_budget_a_practical_pick_says_nothing_new() -> None:
    report = _report("opt-125m", "h100-sxm-80gb", RunOptions.from_flags())
    assert report.whole_run is None
    assert all(r.run is None for r in report.recommendations)


def test_7b_on_a_laptop_cpu_is_impractical_and_says_what_to_do() -> None:
    # The case: a 7B fine-tune on a CPU, hours per optimizer step.
    report = _report("7B", "cpu-laptop", RunOptions.from_flags())
    whole = report.whole_run
    assert whole is not None and not whole.practical and whole.budget.default
    assert "impractical" in whole.verdict
    kinds = {r.kind: r for r in whole.remedies}
    assert "hardware" in kinds and "model" in kinds
    rent = kinds["hardware"]
    assert rent.run.practical and rent.run.cost_usd is not None
    assert rent.command.startswith("--hardware ")
    smaller = kinds["model"]
    assert smaller.command.startswith("--model")
    # Each remedy beats the pick it replaces.
    pick_wall = report.recommendations[0].step_time_s * 1219
    assert all(r.run.wall_seconds < pick_wall for r in whole.remedies)


def test_the_rented_profile_is_the_cheapest_practical_one() -> None:
    opts = RunOptions.from_flags(tokens="2B", max_days=5)
    report = _report("llama-3.1-8b", "rtx-4090", opts, task="lora")
    whole = report.whole_run
    assert whole is not None and not whole.practical
    rent = next(r for r in whole.remedies if r.kind == "hardware")
    others = []
    for hid in ("t4", "l4", "a100-sxm-80gb", "h100-sxm-80gb"):
        alt = _report("llama-3.1-8b", hid, opts, task="lora")
        if (
            alt.recommendations
            and alt.recommendations[0].run
            and alt.recommendations[0].run.practical
        ):
            others.append(alt.recommendations[0].run.cost_usd)
    assert rent.run.practical
    assert rent.run.cost_usd == pytest.approx(min(others))


def test_beyond_one_gpu_the_remedy_rents_a_node() -> None:
    # 20B tokens of an 8B LoRA within 3 days: no single GPU's datasheet is that fast.
    opts = RunOptions.from_flags(tokens="20B", max_days=3)
    report = _report("llama-3.1-8b", "rtx-4090", opts, task="lora")
    assert report.whole_run is not None
    rent = next(r for r in report.whole_run.remedies if r.kind == "hardware")
    assert rent.run.devices == 8 and "--gpus 8" in rent.command
