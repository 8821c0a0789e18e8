"""The whole run: optimizer steps for a token budget, wall time, GPU-hours, energy and money.

A plan's step time (advisor.cost.step) times the steps a budget needs:

    steps      = ceil(tokens / tokens per optimizer step)   (x steps to AdamW's loss under
                                                             --objective time-to-target)
    wall time  = steps x step time
    GPU-hours  = wall time x devices / 3600
    energy     = GPU-hours x device power (kWh)
    cost       = GPU-hours x $/GPU-hour (profiles/costs/prices.yaml, or the user's)

Device power. Where the device was probed through NVML (a local NVIDIA GPU), the draw is
the measured idle power plus the rest of the enforced power limit in proportion to the share
of the step the device computes (``busy_share``): P = idle + (limit - idle) x busy. The
linear form is the utilisation model of server power (Fan, Weber and Barroso 2007, "Power
provisioning for a warehouse-sized computer", ISCA, sec. 4: P(u) = P_idle + (P_busy -
P_idle) u). Without a measured idle figure (a --hardware profile), the draw is the board
power limit (the profile's ``tdp_watts``) for the whole run: the convention of the Llama 2
and Llama 3 model cards (GPU-hours x TDP), which measurements show is an upper bound: an
8 x H100 node training Llama-2-13B peaked at 8.4 kW of its 10.2 kW rating (Latif et al.
2024, arXiv 2412.08602), compute-intensive training ran at 76% of it (Newkirk et al. 2025,
arXiv 2506.14551). Host, cooling and network power are not counted (no per-plan source).

This module is pure: no torch, no NVML (the probe reads NVML; advisor.hardware.probe).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from advisor.data.cache import cached_by_content
from advisor.errors import UserError

SECONDS_PER_DAY = 86_400.0
DEFAULT_MAX_DAYS = 30.0

# NOTE: the run judged when the user gives no budget: Alpaca's fine-tune (Taori et al. 2023,
# github.com/tatsu-lab/stanford_alpaca: 52,002 examples, 3 epochs, 128 per step = 1,219
# steps), the shortest published recipe the default global batch already follows. It is a
# lower bound on any training run: a plan that cannot finish even this within the bound is
# impractical for every real budget; one that can is not judged further.
MIN_RUN_SEQUENCES = 52_002 * 3
MIN_RUN_SOURCE = (
    "no --tokens: judged on the shortest published fine-tune, Alpaca's 3 epochs of 52,002 "
    "examples (Taori et al. 2023), a lower bound on any run"
)

# Step-time components during which the device waits for a link, the host or a neighbour
# stage rather than computing (advisor/cost/step.py, comm.py, offload.py names).
WAITING_COMPONENTS = frozenset(
    {
        "communication",
        "tensor_parallel_comm",
        "expert_all_to_all",
        "pipeline_p2p",
        "pipeline_bubble",
        "offload_transfer",
        "activation_offload",
        "paged_states",
    }
)

POWER_BOUND_NOTE = (
    "upper bound: board power limit (tdp_watts) for the whole run, as the Llama 2/3 model "
    "cards count; measured training draw is 76-82% of it (Latif et al. 2024; Newkirk et al. 2025)"
)


def _d(text: str, **kw: Any) -> Any:
    return Field(description=text, **kw)


# --- budget -------------------------------------------------------------------------------


class RunBudget(BaseModel):
    """How much training the whole-run figures are for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int = _d("training tokens in all (what --tokens, or --epochs x --dataset-tokens, gave)")
    source: str = _d(
        "where the budget comes from: --tokens, --epochs x --dataset-tokens, or the default"
    )
    default: bool = _d(
        "true when the user gave no budget: the run judged is the shortest published "
        "fine-tune (a lower bound), only to tell whether the plan is practical",
        default=False,
    )
    max_days: float = _d("the wall time beyond which a plan is marked impractical, days")


def default_budget(seq_len: int, max_days: float = DEFAULT_MAX_DAYS) -> RunBudget:
    """The budget judged when the user gives none: :data:`MIN_RUN_SEQUENCES` sequences."""
    return RunBudget(
        tokens=MIN_RUN_SEQUENCES * seq_len, source=MIN_RUN_SOURCE, default=True, max_days=max_days
    )


# --- prices -------------------------------------------------------------------------------


class Price(BaseModel):
    """One dated, sourced on-demand price for a hardware profile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", description="the hardware profile id")
    usd_per_gpu_hour: float = Field(gt=0, lt=10_000, description="US dollars per GPU-hour")
    offer: str = Field(min_length=1, description="provider and offer the figure is")
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="when the figure was read")
    source: str = Field(min_length=1, description="the vendor page (URL)")
    via: str = Field(default="", description="the transcription of that page it was read from")


class PriceTable(BaseModel):
    """A price file: ``currency: USD`` and a list of :class:`Price`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: str = Field(pattern=r"^USD$")
    prices: list[Price]

    def get(self, hardware_id: str) -> Price | None:
        """The price of ``hardware_id``, or None."""
        return next((p for p in self.prices if p.id == hardware_id), None)

    def merged(self, other: PriceTable) -> PriceTable:
        """This table with ``other``'s entries replacing (or adding) by id."""
        theirs = {p.id for p in other.prices}
        kept = [p for p in self.prices if p.id not in theirs]
        return PriceTable(currency=self.currency, prices=kept + list(other.prices))


def shipped_prices_path() -> Path:
    """profiles/costs/prices.yaml."""
    from advisor.data.resources import profiles_dir

    return profiles_dir() / "costs" / "prices.yaml"


def load_prices(path: Path | None = None, *, flag: str = "--prices") -> PriceTable:
    """Load a price file (the shipped one by default), every problem in one error.

    Raises:
        UserError: naming the file and each bad entry (a user's file is bad input; the
            shipped one is checked by tests/cost/test_prices.py).
    """
    from advisor.data.yamlio import YamlError

    path = path or shipped_prices_path()
    try:
        return _load_table(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{flag} {path}: cannot be read ({exc.__class__.__name__})",
            "give a readable YAML file shaped as profiles/costs/prices.yaml",
        ) from None
    except YamlError as exc:
        raise UserError(f"{flag} {path}: not YAML ({exc})", "check the file's syntax") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise UserError(
            f"{flag} {path}: {problems}",
            "each entry needs id, usd_per_gpu_hour > 0, offer, date (YYYY-MM-DD) and source; "
            "see profiles/costs/prices.yaml",
        ) from None


def _price_sources(args: dict[str, Any]) -> tuple[list[Path], str]:
    return [Path(args["path"])], ""


@cached_by_content("prices", _price_sources)
def _load_table(path: Path) -> PriceTable:
    """Parse and validate one price file (cached by its content: a warm run parses no YAML).

    Raises:
        OSError, UnicodeDecodeError: the file cannot be read. YamlError: not YAML.
        ValidationError: not a price table.
    """
    from advisor.data.yamlio import parse_yaml

    return PriceTable.model_validate(parse_yaml(path.read_text(encoding="utf-8")))


class PriceChoice(BaseModel):
    """The price a run is costed at, and where it comes from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    usd_per_gpu_hour: float | None = _d("US dollars per GPU-hour (null: no price known)")
    source: str = _d("where the price comes from: --price-per-hour, or the offer, date and URL")


def choose_price(
    hardware_id: str | None, table: PriceTable, per_hour: float | None = None
) -> PriceChoice:
    """--price-per-hour if given, else the table's entry for ``hardware_id``."""
    if per_hour is not None:
        return PriceChoice(usd_per_gpu_hour=per_hour, source="--price-per-hour")
    price = table.get(hardware_id) if hardware_id else None
    if price is None:
        what = f"for {hardware_id}" if hardware_id else "for this machine"
        return PriceChoice(
            usd_per_gpu_hour=None,
            source=f"no price {what}: give --price-per-hour or --prices FILE",
        )
    return PriceChoice(
        usd_per_gpu_hour=price.usd_per_gpu_hour,
        source=f"{price.offer}, {price.date}, {price.source}",
    )


# --- power --------------------------------------------------------------------------------


class DevicePower(BaseModel):
    """What is known of one device's power: its limit and, where measured, its idle draw."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit_watts: float | None = _d("board power limit: NVML's enforced limit, or tdp_watts")
    idle_watts: float | None = _d(
        "measured idle draw (NVML), null where not measured", default=None
    )
    source: str = _d("profile tdp_watts, or NVML")


def busy_share(components: Mapping[str, float], seconds: float) -> float:
    """The share of a step the device computes: 1 minus the waiting components' share."""
    if seconds <= 0:
        return 0.0
    waiting = sum(v for k, v in components.items() if k in WAITING_COMPONENTS)
    return min(1.0, max(0.0, 1.0 - waiting / seconds))


def device_watts(power: DevicePower, busy: float) -> tuple[float | None, str]:
    """One device's average draw over the run and how it was found (module docstring)."""
    if power.limit_watts is None:
        return None, "no power figure for this device (no tdp_watts, no NVML reading)"
    if power.idle_watts is not None and power.idle_watts < power.limit_watts:
        watts = power.idle_watts + (power.limit_watts - power.idle_watts) * busy
        return watts, (
            f"{power.source}: idle {power.idle_watts:.0f} W + (limit {power.limit_watts:.0f} W "
            f"- idle) x busy share {busy:.2f} (Fan et al. 2007 linear model)"
        )
    return power.limit_watts, f"{power.source}: {POWER_BOUND_NOTE}"


# --- the run ------------------------------------------------------------------------------


class RunEstimate(BaseModel):
    """One plan's whole run under a budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int = _d("training tokens the run covers")
    tokens_per_step: int = _d("tokens per optimizer step (global batch x sequence length)")
    steps: int = _d(
        "optimizer steps: ceil(tokens / tokens per step), times the plan's steps to AdamW's "
        "loss (central) under --objective time-to-target"
    )
    steps_basis: str = _d("how the steps were counted")
    wall_seconds: float = _d("steps x step time, seconds")
    wall_days: float = _d("the same in days")
    devices: int = _d("devices the run occupies")
    gpu_hours: float = _d("wall time x devices, hours")
    busy_share: float = _d(
        "share of each step the devices compute (the rest waits on links, host or pipeline)"
    )
    device_watts: float | None = _d("average draw per device over the run, watts (null: unknown)")
    energy_kwh: float | None = _d("device energy of the run, kWh (null: no power figure)")
    energy_basis: str = _d("how the device power was found, with its source")
    usd_per_gpu_hour: float | None = _d("the price used, US dollars per GPU-hour (null: none)")
    cost_usd: float | None = _d("GPU-hours x price, US dollars (null: no price)")
    price_source: str = _d("where the price comes from (offer, date, URL) or why there is none")
    practical: bool = _d("the wall time is within the bound (max_days)")
    max_days: float = _d("the bound on wall time, days (--max-days)")


def estimate_run(
    *,
    step_seconds: float,
    tokens_per_step: int,
    devices: int,
    budget: RunBudget,
    components: Mapping[str, float],
    power: DevicePower,
    price: PriceChoice,
    steps_factor: float = 1.0,
    steps_basis: str = "",
) -> RunEstimate:
    """The whole run of one plan.

    Args:
        step_seconds: the plan's seconds per optimizer step.
        tokens_per_step: tokens per optimizer step (global batch x sequence length).
        devices: devices in the plan's layout.
        budget: the tokens to train on, and the practicality bound.
        components: the step's time by component (to find the busy share).
        power: the device's power figures.
        price: $/GPU-hour and its source.
        steps_factor: steps to AdamW's loss relative to AdamW (1 unless the objective counts
            them: --objective time-to-target).
        steps_basis: how the steps were counted, for the report.

    Returns:
        The run's figures.

    Raises:
        ValueError: for a non-positive step time, batch or device count (a programming error).
    """
    if step_seconds <= 0 or tokens_per_step <= 0 or devices <= 0 or steps_factor <= 0:
        raise ValueError("step time, tokens per step, devices and steps factor must be positive")
    base = math.ceil(budget.tokens / tokens_per_step)
    steps = max(1, math.ceil(base * steps_factor - 1e-9))
    wall = steps * step_seconds
    gpu_hours = wall * devices / 3600.0
    busy = busy_share(components, step_seconds)
    watts, basis = device_watts(power, busy)
    rate = price.usd_per_gpu_hour
    return RunEstimate(
        tokens=budget.tokens,
        tokens_per_step=tokens_per_step,
        steps=steps,
        steps_basis=steps_basis or f"ceil({budget.tokens:,} tokens / {tokens_per_step:,} per step)",
        wall_seconds=wall,
        wall_days=wall / SECONDS_PER_DAY,
        devices=devices,
        gpu_hours=gpu_hours,
        busy_share=round(busy, 4),
        device_watts=None if watts is None else round(watts, 1),
        energy_kwh=None if watts is None else gpu_hours * watts / 1000.0,
        energy_basis=basis,
        usd_per_gpu_hour=rate,
        cost_usd=None if rate is None else gpu_hours * rate,
        price_source=price.source,
        practical=wall <= budget.max_days * SECONDS_PER_DAY,
        max_days=budget.max_days,
    )


def format_duration(seconds: float) -> str:
    """A wall time as a person reads it: 45 s, 12 min, 7.5 h, 3.2 days, 2.1 years."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    days = seconds / SECONDS_PER_DAY
    if days < 730:
        return f"{days:.1f} days"
    return f"{days / 365.25:.1f} years"


class Remedy(BaseModel):
    """One change that makes an impractical run practical (or the nearest to it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    change: str = _d(
        "the change, e.g. 'QLoRA instead of full fine-tuning' or 'rent 1 x h100-sxm-80gb'"
    )
    kind: str = _d("task (LoRA/QLoRA), model (a smaller one), or hardware (a profile)")
    command: str = _d("the optadvise flags that plan it")
    plan: str = _d("the plan that change gets, in short")
    costs: str = _d(
        "where that plan's step time comes from (a re-planned local run is analytic: a "
        "remedy never starts a calibration)",
        default="",
    )
    run: RunEstimate = _d("that plan's whole run under the same budget")


class WholeRun(BaseModel):
    """The pick's whole run, the verdict on it, and what would make it practical."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget: RunBudget = _d("the tokens the figures are for, and the practicality bound")
    practical: bool = _d("the pick finishes the budget within max_days")
    verdict: str = _d("one line: the pick's wall time against the bound")
    remedies: list[Remedy] = _d(
        "when impractical: the smallest changes that make it practical (task, model, hardware), "
        "each with its plan's time and cost; empty when practical",
        default_factory=list,
    )
