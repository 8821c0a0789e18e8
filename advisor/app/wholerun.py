"""The whole run of a recommendation: its budget flags, each ranked plan's wall time, GPU-hours,
energy and cost (advisor.cost.run), and, when the pick is impractical, what would make it
practical: LoRA or QLoRA, a smaller model, or a rentable hardware profile, each planned for
real (one more search each) with its own time and cost.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from advisor.app.limits import check_bound, parse_token_count
from advisor.config import Task
from advisor.cost.run import (
    DEFAULT_MAX_DAYS,
    DevicePower,
    PriceChoice,
    PriceTable,
    Remedy,
    RunBudget,
    RunEstimate,
    WholeRun,
    choose_price,
    default_budget,
    estimate_run,
    format_duration,
    load_prices,
)
from advisor.errors import UserError
from advisor.hardware.profiles import HardwareProfile
from advisor.plan import Recommendation, RecommendReport

if TYPE_CHECKING:
    from advisor.app.environment import Environment
    from advisor.app.estimate import EstimateReport
    from advisor.app.recommend import RecommendRequest, RecommendRun

# NOTE: the hardware ladder tried when a plan is impractical: one rentable GPU per class,
# cheapest first (free-tier class, inference class, consumer flagship, the two datacentre
# generations); each is planned for real and the cheapest practical one is named.
REMEDY_HARDWARE = ("t4", "l4", "rtx-4090", "a100-sxm-80gb", "h100-sxm-80gb")
# When no single GPU of the ladder is fast enough: one node of the datacentre generations.
REMEDY_NODE = (("a100-sxm-80gb", 8), ("h100-sxm-80gb", 8))
SMALLEST_MODEL = 125e6


class RunOptions(BaseModel):
    """The whole-run flags of recommend and estimate, checked."""

    model_config = ConfigDict(frozen=True)

    tokens: int | None = None
    source: str = ""
    max_days: float = DEFAULT_MAX_DAYS
    user_prices: PriceTable | None = None
    price_per_hour: float | None = None

    @classmethod
    def from_flags(
        cls,
        *,
        tokens: str | None = None,
        epochs: float | None = None,
        dataset_tokens: str | None = None,
        max_days: float | None = None,
        price_per_hour: float | None = None,
        prices: str | None = None,
    ) -> RunOptions:
        """Parse and check the budget, bound and price flags.

        Raises:
            UserError: for a bad count, a contradiction (--tokens with --epochs), an epoch
                count without the dataset's size, or a bad price file.
        """
        if tokens is not None and (epochs is not None or dataset_tokens is not None):
            raise UserError(
                "--tokens and --epochs/--dataset-tokens both set the budget",
                "give --tokens N, or --epochs E with --dataset-tokens N",
            )
        if (epochs is None) != (dataset_tokens is None):
            given = "--epochs" if epochs is not None else "--dataset-tokens"
            raise UserError(
                f"{given} needs its partner: the budget is --epochs x --dataset-tokens",
                "give both (e.g. --epochs 3 --dataset-tokens 20M), or --tokens N",
            )
        for flag, value in (
            ("--epochs", epochs),
            ("--max-days", max_days),
            ("--price-per-hour", price_per_hour),
        ):
            check_bound(flag, value)
        count: int | None = None
        source = ""
        if tokens is not None:
            count = parse_token_count(tokens, "--tokens")
            source = f"--tokens {tokens.strip()}"
        elif epochs is not None and dataset_tokens is not None:
            per_epoch = parse_token_count(dataset_tokens, "--dataset-tokens")
            count = max(1, math.ceil(epochs * per_epoch))
            check_bound("--tokens", count)
            source = f"--epochs {epochs:g} x --dataset-tokens {dataset_tokens.strip()}"
        user = None
        if prices is not None:
            if not prices.strip():
                raise UserError("--prices is empty", "give a price file, e.g. --prices my.yaml")
            user = load_prices(Path(prices), flag="--prices")  # bad input fails before planning
        return cls(
            tokens=count,
            source=source,
            max_days=DEFAULT_MAX_DAYS if max_days is None else max_days,
            user_prices=user,
            price_per_hour=price_per_hour,
        )

    def budget(self, seq_len: int) -> RunBudget:
        """The user's budget, or the default one judged for practicality only."""
        if self.tokens is None:
            return default_budget(seq_len, self.max_days)
        return RunBudget(tokens=self.tokens, source=self.source, max_days=self.max_days)

    def price(self, hardware_id: str | None) -> PriceChoice:
        """The $/GPU-hour for ``hardware_id`` (--price-per-hour first, then --prices, then the
        shipped table, read only when a price is asked for)."""
        if self.price_per_hour is not None:
            return choose_price(
                hardware_id, PriceTable(currency="USD", prices=[]), self.price_per_hour
            )
        table = load_prices()
        if self.user_prices is not None:
            table = table.merged(self.user_prices)
        return choose_price(hardware_id, table)


def profile_power(profile: HardwareProfile | None) -> DevicePower:
    """A datasheet profile's power: its tdp_watts, no measured idle."""
    tdp = profile.tdp_watts if profile is not None else None
    return DevicePower(
        limit_watts=tdp, source=f"{profile.id} tdp_watts" if profile else "no profile"
    )


def probed_power(limit_w: float | None, idle_w: float | None, fallback: DevicePower) -> DevicePower:
    """This GPU's NVML readings where the probe has them, else ``fallback`` (its profile)."""
    if limit_w is None:
        return fallback
    return DevicePower(limit_watts=limit_w, idle_watts=idle_w, source="NVML")


def row_run(
    report: RecommendReport,
    row: Recommendation,
    budget: RunBudget,
    power: DevicePower,
    price: PriceChoice,
) -> RunEstimate:
    """One ranked plan's whole run (steps to AdamW's loss under --objective time-to-target)."""
    factor = 1.0
    basis = ""
    tokens_per_step = row.global_batch * report.workload.seq_len
    if report.workload.objective == "time-to-target" and row.steps_vs_adamw is not None:
        factor = row.steps_vs_adamw.central
        basis = (
            f"ceil({budget.tokens:,} tokens / {tokens_per_step:,} per step) x "
            f"{factor:g} (steps to AdamW's loss, central)"
        )
    return estimate_run(
        step_seconds=row.step_time_s,
        tokens_per_step=tokens_per_step,
        devices=report.workload.world_size,
        budget=budget,
        components=row.cost_components,
        power=power,
        price=price,
        steps_factor=factor,
        steps_basis=basis,
    )


def with_runs(
    report: RecommendReport,
    options: RunOptions,
    power: DevicePower,
    hardware_id: str | None,
) -> RecommendReport:
    """The report with each row's run (when the user gave a budget) and the pick's verdict
    (with a budget always; without one only when even the shortest run is impractical).
    Remedies are added by :func:`with_remedies`."""
    if not report.recommendations:
        return report
    budget = options.budget(report.workload.seq_len)
    price = options.price(hardware_id)
    rows = [
        r.model_copy(update={"run": row_run(report, r, budget, power, price)})
        for r in report.recommendations
    ]
    pick = rows[0].run
    assert pick is not None
    if budget.default and pick.practical:
        return report
    update: dict[str, object] = {"whole_run": verdict(budget, pick)}
    if not budget.default:
        update["recommendations"] = rows
    return report.model_copy(update=update)


def verdict(budget: RunBudget, run: RunEstimate) -> WholeRun:
    """The pick's run against the bound, in one line."""
    took = format_duration(run.wall_seconds)
    step = format_duration(run.wall_seconds / run.steps)
    bound = f"{budget.max_days:g} days"
    if run.practical:
        line = (
            f"the pick finishes {run.tokens:,} tokens ({run.steps:,} steps of {step}) in "
            f"{took}, within {bound}"
        )
    else:
        line = (
            f"impractical: at {step} per step the pick needs {took} for {run.steps:,} steps "
            f"({run.tokens:,} tokens), more than {bound} (--max-days)"
        )
    return WholeRun(budget=budget, practical=run.practical, verdict=line)


def describe(row: Recommendation) -> str:
    """A ranked plan in short."""
    task = {"lora": "LoRA", "qlora": "QLoRA", "finetune": "full fine-tuning"}.get(
        row.task, row.task
    )
    return f"{task}, {row.optimizer}, {row.precision}, {row.layout}"


# --- remedies -----------------------------------------------------------------------------


def with_remedies(
    report: RecommendReport, req: RecommendRequest, options: RunOptions
) -> RecommendReport:
    """When the pick's run is impractical, the smallest changes that make it practical, each
    planned for real: LoRA or QLoRA on the same hardware, a smaller model on it, and the
    cheapest profile of :data:`REMEDY_HARDWARE` that finishes within the bound (the fastest
    when none does). Costs of re-planned local runs are analytic (no new calibration)."""
    whole = report.whole_run
    if whole is None or whole.practical or not report.recommendations:
        return report
    pick = report.recommendations[0]
    found = [
        r
        for r in (
            _task_remedy(report, req, options, pick),
            _model_remedy(report, req, options),
            _hardware_remedy(report, req, options),
        )
        if r is not None
    ]
    return report.model_copy(update={"whole_run": whole.model_copy(update={"remedies": found})})


def _replan(
    req: RecommendRequest, options: RunOptions, budget: RunBudget, **changes: object
) -> tuple[RecommendReport, RunEstimate] | None:
    """The pick of ``req`` with ``changes`` (workload fields, spec or hardware), and its run;
    None when nothing fits or the change is not valid there."""
    from advisor.app.recommend import plan_recommendation

    workload_changes = {k: v for k, v in changes.items() if k in ("task",)}
    update: dict[str, object] = {k: v for k, v in changes.items() if k not in workload_changes}
    update["top"] = 1
    if workload_changes:
        base = update.get("workload", req.workload)
        update["workload"] = base.model_copy(update=workload_changes)  # type: ignore[attr-defined]
    hardware = update.get("hardware", req.hardware)
    # NOTE: a remedy never starts a calibration (analytic on this machine), and reads the
    # measured step proxy only where the user's own run did (not with --no-calibrate).
    update["calibrate"] = False if hardware is None or req.calibrate is False else None
    alt_req = req.model_copy(update=update)
    try:
        run = plan_recommendation(alt_req)
    except UserError:
        return None
    alt = run.report
    if not alt.recommendations:
        return None
    power, hw_id = target_power(None if hardware is None else str(hardware), run.environment, alt)
    est = row_run(alt, alt.recommendations[0], budget, power, options.price(hw_id))
    return alt, est


def _remedy(kind: str, change: str, command: str, alt: RecommendReport, run: RunEstimate) -> Remedy:
    return Remedy(
        kind=kind,
        change=change,
        command=command,
        plan=describe(alt.recommendations[0]),
        costs=alt.cost_note.split("\n")[0],
        run=run,
    )


def _task_remedy(
    report: RecommendReport, req: RecommendRequest, options: RunOptions, pick: Recommendation
) -> Remedy | None:
    """LoRA (or QLoRA on CUDA) instead of full fine-tuning or LoRA; None for pre-training."""
    ladder = {"finetune": [Task.LORA, Task.QLORA], "lora": [Task.QLORA]}.get(pick.task, [])
    if report.hardware.device_kind != "cuda":
        ladder = [t for t in ladder if t is not Task.QLORA]  # bitsandbytes 4-bit needs CUDA
    best: tuple[RecommendReport, RunEstimate, Task] | None = None
    for task in ladder:
        got = _replan(req, options, _budget(report), task=task)
        if got is not None and (best is None or got[1].wall_seconds < best[1].wall_seconds):
            best = (got[0], got[1], task)
    if best is None:
        return None
    name = "LoRA" if best[2] is Task.LORA else "QLoRA"
    return _remedy(
        "task", f"{name} instead of {pick.task}", f"--task {best[2].value}", best[0], best[1]
    )


def _model_remedy(
    report: RecommendReport, req: RecommendRequest, options: RunOptions
) -> Remedy | None:
    """The largest smaller model (by the size ladder) whose run fits the bound on this
    hardware: time per token scales with parameters (6N FLOPs per token, Kaplan et al. 2020),
    so the first guess is the size x bound / wall time, then checked by planning it."""
    from advisor.model import resolve_model_size

    budget = _budget(report)
    wall = _pick_wall(report)
    params = report.workload.parameters
    best: tuple[RecommendReport, RunEstimate, str] | None = None
    for _ in range(3):
        # NOTE: no smaller than the ladder's smallest rung (OPT-125M): below it there is no
        # model worth advice (advisor.model.profiles.resolve_model_size).
        target = max(params * budget.max_days * 86_400 / wall * 0.8, SMALLEST_MODEL)
        text = f"{target / 1e9:.2g}B" if target >= 1e9 else f"{target / 1e6:.0f}M"
        spec = resolve_model_size(text)
        if spec.parameter_count() >= report.workload.parameters:
            break
        got = _replan(req, options, budget, spec=spec)
        if got is None:
            break
        best = (got[0], got[1], text)
        if got[1].practical:
            break
        params, wall = spec.parameter_count(), got[1].wall_seconds
    if best is None:
        return None
    alt, run, text = best
    synthetic = alt.workload.model_id.startswith("llama-style-")
    flag = f"--model-size {text}" if synthetic else f"--model {alt.workload.model_id}"
    return _remedy("model", f"a smaller model: {alt.workload.model}", flag, alt, run)


def _hardware_remedy(
    report: RecommendReport, req: RecommendRequest, options: RunOptions
) -> Remedy | None:
    """The cheapest rentable profile that finishes within the bound (else the fastest)."""
    budget = _budget(report)
    tried: list[tuple[RecommendReport, RunEstimate, str]] = []
    for hid in REMEDY_HARDWARE:
        if hid == req.hardware:
            continue
        got = _replan(req, options, budget, hardware=hid)
        if got is not None:
            tried.append((got[0], got[1], hid))
    if not any(t[1].practical for t in tried) and (req.gpus or 1) * req.workload.nodes < 8:
        for hid, gpus in REMEDY_NODE:
            workload = req.workload.model_copy(update={"gpus": gpus})
            got = _replan(req, options, budget, hardware=hid, gpus=gpus, workload=workload)
            if got is not None:
                tried.append((got[0], got[1], hid))
    if not tried:
        return None
    practical = [t for t in tried if t[1].practical]
    if practical:
        alt, run, hid = min(practical, key=lambda t: (_cost_key(t[1]), t[1].wall_seconds))
    else:
        alt, run, hid = min(tried, key=lambda t: t[1].wall_seconds)
    n = run.devices
    flags = f"--hardware {hid}" + (f" --gpus {n}" if n != (req.gpus or 1) else "")
    return _remedy("hardware", f"rent {n} x {hid}", flags, alt, run)


def _cost_key(run: RunEstimate) -> float:
    return run.cost_usd if run.cost_usd is not None else math.inf


def _budget(report: RecommendReport) -> RunBudget:
    assert report.whole_run is not None
    return report.whole_run.budget


def _pick_wall(report: RecommendReport) -> float:
    """The pick's wall time under the report's budget (rows carry it only with --tokens)."""
    pick = report.recommendations[0]
    if pick.run is not None:
        return pick.run.wall_seconds
    budget = _budget(report)
    steps = math.ceil(budget.tokens / (pick.global_batch * report.workload.seq_len))
    return steps * pick.step_time_s


def target_power(
    hardware: str | None, env: Environment | None, report: RecommendReport | None
) -> tuple[DevicePower, str | None]:
    """The power and price id of a --hardware profile, else of this machine."""
    from advisor.hardware.profiles import get_hardware_profile

    if hardware:
        profile = get_hardware_profile(hardware)
        return profile_power(profile), profile.id
    if report is None:
        return machine_power()
    return local_power(env, report)


def local_power(env: Environment | None, report: RecommendReport) -> tuple[DevicePower, str | None]:
    """This machine's power (NVML where probed, else its matched profile's tdp_watts) and the
    profile id its price is looked up by (None for a CPU: nothing to rent)."""
    if env is None:
        return DevicePower(limit_watts=None, source="unknown"), None
    gpus = env.probe.gpus
    if report.hardware.device_kind == "cpu" or not gpus:
        return DevicePower(limit_watts=None, source="CPU (no power reading)"), None
    profile = env.local_target.profile
    match = profile if profile.id in env.profiles else None
    fallback = profile_power(match)
    return probed_power(gpus[0].power_limit_w, gpus[0].idle_power_w, fallback), (
        match.id if match else None
    )


def finish_report(run: RecommendRun, req: RecommendRequest, options: RunOptions) -> RecommendReport:
    """The recommend report with its whole-run figures and, when impractical, the remedies."""

    report = run.report
    power, hw_id = target_power(req.hardware, run.environment, report)
    report = with_runs(report, options, power, hw_id)
    return with_remedies(report, req, options)


def estimate_with_run(
    report: EstimateReport, options: RunOptions, hardware: str | None
) -> EstimateReport:
    """An estimate report with its configuration's whole run under the user's budget.

    Raises:
        UserError: when the estimate has no step time to multiply.
    """

    st = report.step_time
    if st is None or st.seconds <= 0:
        raise UserError(
            "--tokens needs a step time, and this estimate has none",
            "give --hardware NAME (or run it where the device can be probed)",
        )
    c = report.config
    power, hw_id = target_power(hardware, None, None) if hardware else machine_power()
    budget = options.budget(c.batch.seq_len)
    tokens_per_step = (
        c.batch.micro_batch * c.batch.grad_accumulation * c.layout.data_parallel * c.batch.seq_len
    )
    components = {k: _seconds(v) for k, v in st.components.items()}
    run = estimate_run(
        step_seconds=st.seconds,
        tokens_per_step=tokens_per_step,
        devices=c.layout.world_size,
        budget=budget,
        components=components,
        power=power,
        price=options.price(hw_id),
    )
    return report.model_copy(update={"run": run})


def machine_power() -> tuple[DevicePower, str | None]:
    """This machine's GPU power (NVML, else its matched profile) and profile id; a CPU has
    neither (no power reading, nothing to rent)."""
    from advisor.app.environment import probe_environment

    env = probe_environment()
    gpus = env.probe.gpus
    if not gpus:
        return DevicePower(limit_watts=None, source="CPU (no power reading)"), None
    profile = env.local_target.profile
    match = profile if profile.id in env.profiles else None
    return probed_power(gpus[0].power_limit_w, gpus[0].idle_power_w, profile_power(match)), (
        match.id if match else None
    )


def _seconds(value: object) -> float:
    """A step-time component's seconds (the estimate report keeps each as a dict)."""
    if isinstance(value, dict):
        value = value.get("seconds", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0
