"""The whole-run arithmetic (advisor.cost.run) against published recipes and power figures."""

from __future__ import annotations

import pytest

from advisor.cost.run import (
    MIN_RUN_SEQUENCES,
    DevicePower,
    PriceChoice,
    RunBudget,
    busy_share,
    default_budget,
    device_watts,
    estimate_run,
    format_duration,
)

PRICE = PriceChoice(usd_per_gpu_hour=2.0, source="test")
NO_PRICE = PriceChoice(usd_per_gpu_hour=None, source="none")
TDP_400 = DevicePower(limit_watts=400, source="a100 tdp_watts")


def _run(step_s: float, tokens_per_step: int, devices: int, tokens: int, **kw: object):  # type: ignore[no-untyped-def]
    budget = RunBudget(tokens=tokens, source="test", max_days=kw.pop("max_days", 30.0))  # type: ignore[arg-type]
    return estimate_run(
        step_seconds=step_s,
        tokens_per_step=tokens_per_step,
        devices=devices,
        budget=budget,
        components=kw.pop("components", {}),  # type: ignore[arg-type]
        power=kw.pop("power", TDP_400),  # type: ignore[arg-type]
        price=kw.pop("price", PRICE),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_alpaca_default_budget_is_its_published_step_count() -> None:
    # Stanford Alpaca (Taori et al. 2023): 52,002 examples, 3 epochs, batch 128, max length 512
    # -> 1,219 optimizer steps (52,002 x 3 / 128 = 1,218.8).
    budget = default_budget(seq_len=512)
    assert budget.default and MIN_RUN_SEQUENCES == 156_006
    run = _run(1.0, 128 * 512, 1, budget.tokens)
    assert run.steps == 1219


def test_the_steps_cover_the_budget_and_no_more() -> None:
    # Llama 3's 15.6T tokens at 16M tokens per step (Dubey et al. 2024, sec. 3.4): the last
    # step may be partial, never missing.
    per = 16 * 2**20
    run = _run(1.0, per, 16384, int(15.6e12))
    assert (run.steps - 1) * per < 15.6e12 <= run.steps * per
    assert 900_000 < run.steps < 1_000_000


def test_gpu_hours_and_tdp_energy_follow_the_model_card_convention() -> None:
    # Llama 2 (Touvron et al. 2023, Table 2): 7B took 184,320 A100-80GB GPU-hours at 400 W
    # "peak power capacity per GPU": the card's energy is GPU-hours x TDP = 73,728 kWh.
    devices, steps = 2048, 500_000
    step_s = 184_320 * 3600 / (devices * steps)
    run = _run(step_s, 4 * 2**20, devices, steps * 4 * 2**20)
    assert run.steps == steps
    assert run.gpu_hours == pytest.approx(184_320)
    assert run.energy_kwh == pytest.approx(73_728)
    assert run.cost_usd == pytest.approx(184_320 * 2.0)
    assert "upper bound" in run.energy_basis


def test_nvml_power_is_idle_plus_the_busy_share_of_the_rest() -> None:
    # Fan, Weber & Barroso 2007: P(u) = P_idle + (P_busy - P_idle) u.
    power = DevicePower(limit_watts=700, idle_watts=70, source="NVML")
    assert device_watts(power, 0.0)[0] == pytest.approx(70)
    assert device_watts(power, 1.0)[0] == pytest.approx(700)
    assert device_watts(power, 0.5)[0] == pytest.approx(385)
    # Below the TDP bound wherever the device waits: the bound never under-counts.
    assert (
        device_watts(power, 0.7)[0] < device_watts(DevicePower(limit_watts=700, source="p"), 0.7)[0]
    )  # type: ignore[operator]


def test_busy_share_counts_only_computing_components() -> None:
    parts = {"forward_backward": 6.0, "communication": 3.0, "pipeline_bubble": 1.0}
    assert busy_share(parts, 10.0) == pytest.approx(0.6)
    assert busy_share({}, 10.0) == 1.0
    assert busy_share({"offload_transfer": 20.0}, 10.0) == 0.0


def test_unknown_power_or_price_is_reported_as_such() -> None:
    run = _run(
        1.0, 1000, 1, 10_000, power=DevicePower(limit_watts=None, source="cpu"), price=NO_PRICE
    )
    assert run.energy_kwh is None and run.cost_usd is None and run.device_watts is None


def test_the_bound_decides_practical() -> None:
    day = 86_400.0
    assert _run(day, 1000, 1, 30_000).practical  # 30 steps of a day: 30 days
    assert not _run(day, 1000, 1, 31_000).practical
    assert _run(day, 1000, 1, 31_000, max_days=31.0).practical


def test_time_to_target_scales_the_steps() -> None:
    assert _run(1.0, 1000, 1, 100_000, steps_factor=1.5).steps == 150
    with pytest.raises(ValueError):
        _run(0.0, 1000, 1, 100)


def test_durations_read_as_a_person_says_them() -> None:
    assert format_duration(30) == "30 s"
    assert format_duration(17 * 3600) == "17.0 h"
    assert format_duration(3 * 86_400) == "3.0 days"
    assert format_duration(2.4 * 365.25 * 86_400) == "2.4 years"
