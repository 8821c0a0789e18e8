"""`recommend --hardware a,b,c`: the hardware list, and the ranking by time and cost."""

from __future__ import annotations

import pytest

from advisor.app.compare import compare_hardware, parse_hardware_list
from advisor.app.wholerun import RunOptions
from advisor.errors import UserError
from advisor.model import get_model_profile

SPEC = get_model_profile("llama-3.1-8b")
FLAGS = {"task": "lora"}


@pytest.mark.parametrize("text", ["t4,nope", "t4,,l4", "t4,t4", ",", " , l4"])
def test_a_bad_hardware_list_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError):
        parse_hardware_list(text)


def test_ranked_by_cost_then_by_time() -> None:
    names = ["rtx-4090", "a100-sxm-80gb", "h100-sxm-80gb"]
    opts = RunOptions.from_flags(tokens="200M")
    by_cost = compare_hardware(names, spec=SPEC, options=opts, flags=FLAGS)
    assert by_cost.sort == "cost" and by_cost.fits
    costs = [o.run.cost_usd for o in by_cost.options if o.run]
    assert len(costs) == 3 and costs == sorted(costs)  # type: ignore[type-var]
    by_time = compare_hardware(names, spec=SPEC, options=opts, flags=FLAGS, sort="time")
    walls = [o.run.wall_seconds for o in by_time.options if o.run]
    assert walls == sorted(walls)
    # The H100's datasheet is faster than the 4090's: it finishes first.
    assert by_time.options[0].hardware == "h100-sxm-80gb"
    assert [o.rank for o in by_time.options] == [1, 2, 3]


def test_an_option_without_a_price_ranks_by_time_and_nothing_fits_comes_last() -> None:
    opts = RunOptions.from_flags(tokens="200M")
    report = compare_hardware(
        ["v100-32gb", "h100-sxm-80gb"], spec=get_model_profile("llama-3.1-70b"),
        options=opts, flags={"task": "finetune"},
    )  # fmt: skip
    assert report.sort == "time"
    assert report.options[-1].fits is False or all(o.fits for o in report.options)
    with pytest.raises(UserError):
        compare_hardware(["t4"], spec=SPEC, options=opts, flags=FLAGS, sort="price")
