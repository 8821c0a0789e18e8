"""The shipped price table: every price dated and sourced, every id a hardware profile; a
user's price file replaces entries, and a bad one is bad input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from advisor.cost.run import choose_price, load_prices
from advisor.errors import UserError
from advisor.hardware.profiles import load_hardware_profiles


def test_every_price_has_a_date_a_source_and_a_profile() -> None:
    table = load_prices()
    profiles = load_hardware_profiles()
    assert table.currency == "USD"
    # Count what was checked (a check that checks nothing passes silently otherwise).
    assert len(table.prices) >= 12
    ids = [p.id for p in table.prices]
    assert len(ids) == len(set(ids)), "one price per profile"
    for p in table.prices:
        assert p.id in profiles, p.id
        assert p.source.startswith("https://"), p.id
        assert p.offer and p.via, p.id
        read = dt.date.fromisoformat(p.date)
        assert dt.date(2025, 1, 1) <= read <= dt.date.today(), p.id
        # An on-demand list price per GPU-hour: between $0.10 (free-tier class) and $20.
        assert 0.1 < p.usd_per_gpu_hour < 20, p.id


def test_newer_gpus_cost_more_per_hour_in_the_same_offer() -> None:
    # RunPod Secure Cloud's own ordering on the page the figures were read from.
    t = load_prices()
    order = ["rtx-4090", "l40s", "a100-sxm-80gb", "h100-sxm-80gb", "h200", "b200"]
    prices = [t.get(i).usd_per_gpu_hour for i in order]  # type: ignore[union-attr]
    assert prices == sorted(prices)


def test_a_price_file_replaces_entries_and_the_flag_wins(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "currency: USD\nprices:\n  - id: h100-sxm-80gb\n    usd_per_gpu_hour: 2.0\n"
        "    offer: my cluster\n    date: '2026-10-01'\n    source: https://example.org\n"
    )
    merged = load_prices().merged(load_prices(f))
    assert choose_price("h100-sxm-80gb", merged).usd_per_gpu_hour == 2.0
    assert choose_price("t4", merged).usd_per_gpu_hour == load_prices().get("t4").usd_per_gpu_hour  # type: ignore[union-attr]
    assert choose_price("t4", merged, per_hour=9.0).usd_per_gpu_hour == 9.0
    assert choose_price("cpu-laptop", merged).usd_per_gpu_hour is None


@pytest.mark.parametrize(
    "text",
    [
        "currency: USD\nprices:\n  - id: t4\n    usd_per_gpu_hour: -1\n    offer: x\n"
        "    date: '2026-01-01'\n    source: https://x\n",
        "currency: USD\nprices:\n  - id: t4\n    usd_per_gpu_hour: 1\n    offer: x\n    source: https://x\n",
        "currency: EUR\nprices: []\n",
        "prices: [1, 2",
    ],
    ids=["negative", "no-date", "not-usd", "not-yaml"],
)
def test_a_bad_price_file_is_bad_input(tmp_path: Path, text: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match="--prices"):
        load_prices(f)
    with pytest.raises(UserError, match="cannot be read"):
        load_prices(tmp_path / "missing.yaml")
