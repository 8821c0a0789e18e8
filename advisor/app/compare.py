"""`recommend --hardware a,b,c`: the same job planned on each hardware option, ranked by time
and cost to finish ("what should I rent for this fine-tune?")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from advisor.app.wholerun import RunOptions, describe, profile_power, row_run
from advisor.cost.run import POWER_BOUND_NOTE, RunBudget, RunEstimate
from advisor.errors import UserError
from advisor.model.spec import ModelSpec
from advisor.plan import Recommendation

Sort = Literal["time", "cost"]
MAX_OPTIONS = 32


def _d(text: str, **kw: Any) -> Any:
    return Field(description=text, **kw)


class CompareOption(BaseModel):
    """One hardware option: its best plan for the job and that plan's whole run."""

    model_config = ConfigDict(frozen=True)

    rank: int = _d("1 = the best option by the sort (options where nothing fits come last)")
    hardware: str = _d("the hardware profile id")
    devices: int = _d("devices the option plans for (--gpus x --nodes)")
    fits: bool = _d("a plan fits on this option")
    plan: str = _d("its best plan in short (task, optimizer, precision, layout)")
    step_time_s: float | None = _d("that plan's seconds per optimizer step", default=None)
    tokens_per_s: float | None = _d("that plan's tokens per second over all devices", default=None)
    run: RunEstimate | None = _d("that plan's whole run (null when nothing fits)", default=None)
    note: str = _d("why nothing fits, or where the costs come from", default="")
    pick: Recommendation | None = _d(
        "the best plan in full, as recommend --json reports it (null when nothing fits)",
        default=None,
    )


class CompareReport(BaseModel):
    """What `recommend --hardware a,b,c --json` prints."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = _d("1: the first hardware comparison report", default=1)
    fits: bool = _d("a plan fits on at least one option; false exits with status 3")
    model: str = _d("the model's name")
    model_id: str = _d("the model's profile id (or the size it resolved from)")
    task: str = _d("the requested task: pretrain, finetune, lora or qlora")
    budget: RunBudget = _d("the tokens every option's run is for")
    sort: Sort = _d("what the options are ranked by: time or cost to finish")
    options: list[CompareOption] = _d("the hardware options, best first")
    energy_note: str = _d("how device power is found (profile tdp_watts: an upper bound)")


def parse_hardware_list(text: str) -> list[str]:
    """``a,b,c`` as profile ids, each checked before any planning.

    Raises:
        UserError: for an empty entry, a repeated one, too many, or an unknown profile.
    """
    from advisor.hardware.profiles import get_hardware_profile

    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise UserError(
            f"--hardware {text!r} has an empty entry", "give profile ids separated by commas"
        )
    if len(set(names)) != len(names):
        raise UserError(f"--hardware {text!r} names a profile twice", "name each profile once")
    if len(names) > MAX_OPTIONS:
        raise UserError(
            f"--hardware lists {len(names)} profiles, more than {MAX_OPTIONS}",
            "compare fewer options at a time",
        )
    return [get_hardware_profile(n).id for n in names]


def compare_hardware(
    names: Sequence[str],
    *,
    spec: ModelSpec,
    options: RunOptions,
    flags: Mapping[str, Any],
    sort: str | None = None,
    rules_dirs: list[Path] | None = None,
) -> CompareReport:
    """Plan the job on each profile (analytic datasheet costs) and rank by time or cost.

    Args:
        names: profile ids (:func:`parse_hardware_list`).
        spec: the model.
        options: the budget, bound and prices.
        flags: recommend's other flags (RecommendRequest.from_flags keywords).
        sort: ``time``, ``cost`` or None (cost where every fitting option has a price).
        rules_dirs: extra rule folders (--rules-dir).

    Raises:
        UserError: for a bad --sort, or flags that are bad input on every option.
    """
    from advisor.app.recommend import RecommendRequest, plan_recommendation
    from advisor.hardware.profiles import get_hardware_profile

    if sort is not None and sort not in ("time", "cost"):
        raise UserError(f"invalid --sort {sort!r}", "use time or cost")
    found: list[CompareOption] = []
    budget: RunBudget | None = None
    task = str(flags.get("task", "finetune"))
    for hid in names:
        mine = dict(flags)
        if not get_hardware_profile(hid).peak_tflops.fp8:
            mine["fp8_recipe"] = None  # --fp8-recipe applies to the FP8 options' plans only
        req = RecommendRequest.from_flags(spec=spec, hardware=hid, top=1, **mine)
        if rules_dirs:
            req = req.model_copy(update={"rules_dirs": rules_dirs})
        report = plan_recommendation(req).report
        budget = budget or options.budget(report.workload.seq_len)
        devices = report.workload.world_size
        if not report.recommendations:
            hint = report.suggestions[0].change if report.suggestions else ""
            found.append(
                CompareOption(
                    rank=0,
                    hardware=hid,
                    devices=devices,
                    fits=False,
                    plan="nothing fits",
                    note=f"nothing fits; would fit: {hint}" if hint else "nothing fits",
                )
            )
            continue
        row = report.recommendations[0]
        profile = get_hardware_profile(hid)
        run = row_run(report, row, budget, profile_power(profile), options.price(hid))
        found.append(
            CompareOption(
                rank=0,
                hardware=hid,
                devices=devices,
                fits=True,
                plan=describe(row),
                step_time_s=row.step_time_s,
                tokens_per_s=row.tokens_per_s,
                run=run,
                note=report.cost_note,
                pick=row.model_copy(update={"run": run, "reasons": []}),
            )
        )
    fitting = [o for o in found if o.run is not None]
    chosen: Sort
    if sort is None:
        chosen = (
            "cost"
            if fitting and all(o.run and o.run.cost_usd is not None for o in fitting)
            else "time"
        )
    else:
        chosen = "cost" if sort == "cost" else "time"
    ranked = sorted(found, key=lambda o: _key(o, chosen))
    assert budget is not None
    return CompareReport(
        fits=bool(fitting),
        model=spec.name,
        model_id=spec.id,
        task=task,
        budget=budget,
        sort=chosen,
        options=[o.model_copy(update={"rank": i + 1}) for i, o in enumerate(ranked)],
        energy_note=f"profile tdp_watts, {POWER_BOUND_NOTE}",
    )


def _key(o: CompareOption, sort: Sort) -> tuple[float, float, float]:
    if o.run is None:
        return (1.0, math.inf, math.inf)
    cost = o.run.cost_usd if o.run.cost_usd is not None else math.inf
    if sort == "cost":
        return (0.0, cost, o.run.wall_seconds)
    return (0.0, o.run.wall_seconds, cost)
