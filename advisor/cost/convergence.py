"""Time to target: how many steps a plan needs to reach AdamW's loss, and what that costs.

Step time is not the goal; time to reach the same loss is (Bartoldson, Kailkhura & Blalock
2023 make time-to-result the measure of a training method). Each optimizer in
``rules/taxonomy.yaml`` carries ``steps_vs_adamw``: measured points over model size, each a
range (low, central, high) with its setting and sources. Independent tuned re-benchmarks
give the central value, the method's own paper the optimistic end (``low``). LoRA and QLoRA
carry the same field relative to full fine-tuning, so a plan's factor is the optimizer's
times the adapter's.

The API the recommender calls (pure: no torch, no I/O):

- :func:`steps_vs_adamw` ``(technique, parameters, proxy=None) -> StepsRange``: one
  technique's factor at a model size. Between measured sizes it interpolates linearly on
  log(parameters). Beyond the largest measured size it says so (``extrapolated``) and widens
  the range; where the literature shows gains shrinking with scale (``scale_trend:
  toward-one``) it carries the factor toward 1. ``source`` is ``baseline`` for AdamW,
  ``published`` otherwise, and ``measured-proxy`` where nothing is published
  (``basis: no-ratio-published``) and ``optadvise calibrate --convergence`` measured the
  optimizer (the proxy figure then sets the central value, clamped into the range). The
  proxy figure is always attached as ``proxy`` so it can be shown next to the range.
- :func:`plan_steps` ``(taxonomy, optimizer, task, parameters, proxy=None, regime=None)``:
  the optimizer's factor times LoRA's or QLoRA's when the task is an adapter task. Past the
  critical batch of the architecture (``regime``; :func:`critical_batch`: the rule base's
  thresholds, carried as ``steps_vs_adamw.large_batch`` of LAMB and LARS), AdamW with its
  usual recipe stops training stably (You et al. 2017, 2019; Goyal et al. 2017; McCandlish
  et al. 2018): the layer-wise methods take their large-batch range, whose pessimistic end
  is Nado et al. 2021's re-tuned AdamW/Nesterov matching them, and every other optimizer's
  published ratio, measured at ordinary batches, is centred on AdamW's steps.
- :func:`time_to_target_rel` ``(steps, step_time, baseline_step_time)``: steps x step time
  over the AdamW plan's step time (the plan of the same layout with AdamW).
- :func:`objective_steps` ``(objective, steps)``: the factor an objective's score uses.
  ``time-to-target``, ``balanced`` and ``quality`` use the central factor; ``speed`` ranks by
  the measured step clock and so credits no published speed-up, but it does pay for a
  method's extra steps (``max(1, central)``): a shorter step that buys a 30-300x longer run
  (zeroth order) never wins. ``memory`` ignores steps.

- :func:`time_to_target` ``(steps, step_time, adamw_step_time) -> TimeToTarget``: the
  fields a recommendation's JSON carries (``steps_vs_adamw`` {low, central, high},
  ``steps_source``, ``steps_extrapolated``, ``steps_proxy``, ``time_to_target_rel``).

How the recommender is wired (advisor/plan/, kept to three call sites so that the
plan-search split can move them): ``Context.convergence`` holds the proxy cache (advise.py
loads it unless --no-calibrate); the judge scores each plan with
``objective_steps(objective, plan_steps(...))`` folded into ``log(step time)``; each shown
recommendation gets ``time_to_target(...)`` against the step time of its own layout with
``optimizer="adamw"``. Under ``quality`` the step factor counts in full (a plan that needs k
times the steps reaches a worse loss in the same budget) and the step time a tenth.

The measured proxy's results live in :class:`ConvergenceCache` (written by
``advisor.calibration.convergence``, read here as plain data).
"""

from __future__ import annotations

import itertools
import math
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import Task
from advisor.model.shape import Arch
from advisor.rules.taxonomy import Basis, ScaleTrend, StepEfficiency, StepPoint, Taxonomy, Technique

# NOTE: the rate at which a shrinking gain decays beyond the largest measured size, fitted to
# Wen et al. 2025 (Abstract, Figure 1): matrix-preconditioned optimizers are 1.4x faster than
# tuned AdamW at 0.13B and 1.1x at 1.2B, so ln(speed-up) falls as params^-alpha with
# alpha = ln(ln 1.4 / ln 1.1) / ln(1.2e9 / 1.3e8) = 0.57. Used when a technique has a single
# measured point, or when its own two largest points do not show a shrinking gain.
TREND_EXPONENT = math.log(math.log(1.4) / math.log(1.1)) / math.log(1.2e9 / 1.3e8)
# Beyond (or below) the measured sizes the range is widened by this factor per decade of
# distance: an assumption, not a fit, stated in every extrapolated answer's notes.
WIDEN_PER_DECADE = 0.5
# Sizes within this factor of a measured point count as measured (papers round sizes).
_NEAR = 1.25
# The proxy cache format this module reads.
CONVERGENCE_SCHEMA_VERSION = 1


class StepsSource(str, Enum):
    """Where a plan's step factor comes from."""

    PUBLISHED = "published"
    MEASURED_PROXY = "measured-proxy"
    BASELINE = "baseline"


class StepsRange(BaseModel):
    """Steps to reach AdamW's loss relative to AdamW, at one model size (lower is faster)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(gt=0, description="optimistic end")
    central: float = Field(gt=0, description="independent re-benchmarks' value")
    high: float = Field(gt=0, description="pessimistic end")
    source: StepsSource
    extrapolated: bool = Field(description="the size lies outside the measured sizes")
    proxy: float | None = Field(
        default=None, description="the measured-proxy ratio on this device, when calibrated"
    )
    proxy_reached: bool | None = Field(
        default=None, description="False: the optimizer never reached AdamW's loss (lower bound)"
    )
    notes: str = ""


class ProxyCurvePoint(BaseModel):
    """One evaluation of the proxy run: step, held-out loss and wall time so far."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    step: int = Field(ge=0)
    loss: float
    seconds: float = Field(ge=0)


class ProxyRun(BaseModel):
    """One optimizer at one learning rate on the proxy."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    lr: float = Field(gt=0)
    final_loss: float | None = Field(description="None when the run diverged")
    curve: list[ProxyCurvePoint]


class ProxyResult(BaseModel):
    """One optimizer's best learning rate on the proxy and its steps to AdamW's loss."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    optimizer: str
    status: str = Field(description="ok, skipped (why in detail) or diverged")
    detail: str = ""
    best_lr: float | None = None
    runs: list[ProxyRun] = Field(default_factory=list)
    steps_to_target: float | None = Field(
        default=None, description="steps to reach AdamW's final loss (interpolated)"
    )
    reached: bool = False
    ratio: float | None = Field(
        default=None,
        description="steps_to_target / AdamW's steps; when not reached, budget / AdamW's "
        "steps, a lower bound",
    )
    seconds_per_step: float | None = None


class ConvergenceCache(BaseModel):
    """What `optadvise calibrate --convergence` measured on one device (the cache file)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    schema_version: int = CONVERGENCE_SCHEMA_VERSION
    fingerprint_key: str
    device: str
    created_at: str
    family: str = Field(description="the architecture family the proxy copies")
    proxy: dict[str, int] = Field(description="the proxy's shape: hidden, layers, heads, ...")
    proxy_params: int
    corpus: str = Field(description="what the proxy trained on")
    steps: int = Field(description="the fixed step budget of every run")
    batch_tokens: int
    target_loss: float | None = Field(description="AdamW's final held-out loss (the target)")
    results: list[ProxyResult]
    partial: bool = Field(description="the budget or Ctrl-C stopped it early")
    seconds: float
    budget_s: float | None
    warnings: list[str] = Field(default_factory=list)

    def result(self, optimizer: str) -> ProxyResult | None:
        """The result of one optimizer id, if it was measured."""
        return next((r for r in self.results if r.optimizer == optimizer), None)


def steps_vs_adamw(
    technique: Technique, parameters: int, proxy: ConvergenceCache | None = None
) -> StepsRange:
    """The technique's steps to reach AdamW's loss, relative to AdamW, at a model size.

    Args:
        technique: a taxonomy entry with ``steps_vs_adamw`` data (optimizers, LoRA, QLoRA).
        parameters: the model's parameter count.
        proxy: this device's convergence-calibration cache, if any.

    Returns:
        The range with its source; ``extrapolated`` when ``parameters`` lies outside the
        measured sizes (the range is then widened, and carried toward 1 where the gains are
        published to shrink with scale).

    Raises:
        ValueError: when the technique has no step-efficiency data or ``parameters`` < 1.
    """
    data = technique.steps_vs_adamw
    if data is None:
        raise ValueError(f"{technique.id} has no steps_vs_adamw data in the taxonomy")
    if parameters < 1:
        raise ValueError(f"parameters must be positive, got {parameters}")
    measured = _proxy_figure(technique.id, proxy)
    if data.points[0].basis is Basis.BASELINE:
        return StepsRange(
            low=1.0,
            central=1.0,
            high=1.0,
            source=StepsSource.BASELINE,
            extrapolated=False,
            proxy=measured[0] if measured else None,
            proxy_reached=measured[1] if measured else None,
            notes="AdamW: the reference every factor is relative to",
        )
    low, central, high, extrapolated, note = _at_size(data, parameters)
    source = StepsSource.PUBLISHED
    notes = [note] if note else []
    point = _nearest(data.points, parameters)
    if measured is not None and point.basis is Basis.NO_RATIO_PUBLISHED:
        # Nothing published to centre the range: the proxy measured on this device is the
        # best evidence there is, kept inside the published range's bounds. A run that never
        # reached AdamW's loss gives only a lower bound, which can raise the centre, not set it.
        ratio, reached = measured
        central = min(max(ratio, low), high) if reached else max(central, min(ratio, high))
        source = StepsSource.MEASURED_PROXY
        notes.append(
            "central from the measured proxy (no published step ratio)"
            if reached
            else "the measured proxy did not reach AdamW's loss: its ratio is a lower bound"
        )
    return StepsRange(
        low=round(low, 4),
        central=round(central, 4),
        high=round(high, 4),
        source=source,
        extrapolated=extrapolated,
        proxy=measured[0] if measured else None,
        proxy_reached=measured[1] if measured else None,
        notes="; ".join(notes),
    )


class BatchRegime(BaseModel):
    """The global batch and architecture a plan trains at: whether it is past the critical
    batch where the layer-wise methods' large-batch factors apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    global_batch: int = Field(ge=1, description="samples per optimizer step")
    arch: Arch


def critical_batch(taxonomy: Taxonomy, arch: Arch) -> int | None:
    """The smallest global batch (samples) from which some technique's large-batch factor
    applies to ``arch`` (the rule base's thresholds, carried in the taxonomy), or None."""
    found = [
        t.steps_vs_adamw.large_batch.from_global_batch
        for t in taxonomy.techniques
        if t.steps_vs_adamw is not None
        and t.steps_vs_adamw.large_batch is not None
        and arch in t.steps_vs_adamw.large_batch.arch
    ]
    return min(found) if found else None


def _past_critical_batch(
    taxonomy: Taxonomy, technique: Technique, steps: StepsRange, regime: BatchRegime
) -> StepsRange:
    """The factor past the critical batch: the technique's own large-batch point where it
    has one for this architecture; AdamW stays 1; every other published ratio was measured
    at ordinary batches and is centred on AdamW's steps (nothing measures it here)."""
    threshold = critical_batch(taxonomy, regime.arch)
    if threshold is None or regime.global_batch < threshold:
        return steps
    data = technique.steps_vs_adamw
    point = data.large_batch if data is not None else None
    if point is not None and regime.arch in point.arch:
        if regime.global_batch < point.from_global_batch:
            return steps
        note = (
            f"past the critical batch ({point.from_global_batch:,} samples for "
            f"{regime.arch.value}): the large-batch factor ({point.setting.model}, "
            f"{point.setting.batch})"
        )
        return steps.model_copy(
            update={
                "low": point.low,
                "central": point.central,
                "high": point.high,
                "source": StepsSource.PUBLISHED,
                "notes": "; ".join(n for n in (steps.notes, note) if n),
            }
        )
    if steps.source is StepsSource.BASELINE:
        return steps
    low, high = min(steps.low, 1.0), max(steps.high, 1.0)
    note = (
        f"published at ordinary batches; past the critical batch ({threshold:,} samples for "
        f"{regime.arch.value}) centred on AdamW's steps"
    )
    return steps.model_copy(
        update={
            "low": low,
            "central": 1.0,
            "high": high,
            "notes": "; ".join(n for n in (steps.notes, note) if n),
        }
    )


def plan_steps(
    taxonomy: Taxonomy,
    optimizer: str,
    task: Task,
    parameters: int,
    proxy: ConvergenceCache | None = None,
    regime: BatchRegime | None = None,
) -> StepsRange:
    """A plan's step factor: the optimizer's, times LoRA's or QLoRA's for adapter tasks.

    Args:
        taxonomy: the techniques (their ``steps_vs_adamw`` data).
        optimizer: the plan's optimizer id.
        task: the plan's task (LoRA and QLoRA add the adapter's factor against full
            fine-tuning).
        parameters: the model's parameter count.
        proxy: this device's convergence-calibration cache, if any.
        regime: the global batch and architecture; past the critical batch the layer-wise
            methods take their large-batch factor and other optimizers centre on AdamW's
            steps (None: ordinary batches).

    Returns:
        The combined range; its source is the optimizer's unless the adapter's is not
        published either; ``extrapolated`` if either factor is.

    Raises:
        UserError: for an unknown optimizer id. ValueError: for an id without data.
    """
    technique = taxonomy.get(optimizer)
    opt = steps_vs_adamw(technique, parameters, proxy)
    if task is not Task.PRETRAIN and _pretraining_only(technique):
        opt = _at_adamws_centre(opt)
    if regime is not None and task is Task.PRETRAIN:
        opt = _past_critical_batch(taxonomy, technique, opt, regime)
    adapter_id = {Task.LORA: "lora", Task.QLORA: "qlora"}.get(task)
    if adapter_id is None or adapter_id not in taxonomy:
        return opt
    adapter = steps_vs_adamw(taxonomy.get(adapter_id), parameters)
    source = opt.source
    if source is StepsSource.BASELINE:
        source = StepsSource.PUBLISHED  # AdamW's own factor times a published adapter factor
    notes = "; ".join(n for n in (opt.notes, f"{adapter_id}: x{adapter.central:g}") if n)
    return StepsRange(
        low=round(opt.low * adapter.low, 4),
        central=round(opt.central * adapter.central, 4),
        high=round(opt.high * adapter.high, 4),
        source=source,
        extrapolated=opt.extrapolated or adapter.extrapolated,
        proxy=opt.proxy,
        proxy_reached=opt.proxy_reached,
        notes=notes,
    )


# NOTE: a step ratio measured in pre-training says nothing of fine-tuning a checkpoint that
# AdamW pre-trained (nearly every public one): there the optimizers perform at par at best
# ("MuonAll: Muon Variant for Efficient Finetuning of Large Language Models", 2025,
# arXiv 2511.06086: Muon at par with AdamW fine-tuning public models up to 0.5B),
# and a mismatched optimizer can do worse ("Can Muon Fine-tune Adam-Pretrained Models?",
# arXiv 2605.10468, 2026). So for fine-tuning tasks an optimizer whose every published point
# is a pre-training one keeps its published range but is centred on AdamW's count.
_FINE_TUNING_NOTE = (
    "published ratios are pre-training ones; fine-tuning an AdamW-pre-trained model is "
    "centred on AdamW's steps (MuonAll 2025; arXiv 2605.10468)"
)


def _pretraining_only(technique: Technique) -> bool:
    data = technique.steps_vs_adamw
    if data is None or data.points[0].basis is Basis.BASELINE:
        return False
    return all(p.setting.task is Task.PRETRAIN for p in data.points)


def _at_adamws_centre(steps: StepsRange) -> StepsRange:
    low, high = min(steps.low, 1.0), max(steps.high, 1.0)
    notes = "; ".join(n for n in (steps.notes, _FINE_TUNING_NOTE) if n)
    return steps.model_copy(update={"low": low, "central": 1.0, "high": high, "notes": notes})


def time_to_target_rel(steps: float, step_time: float, baseline_step_time: float) -> float:
    """Time to reach AdamW's loss relative to the AdamW plan: steps x step time / AdamW's.

    Args:
        steps: the plan's steps relative to AdamW (e.g. ``StepsRange.central``).
        step_time: the plan's seconds per step.
        baseline_step_time: seconds per step of the AdamW plan of the same layout.

    Returns:
        The ratio (1: as fast as AdamW to the target; 0.8: 20% sooner).

    Raises:
        ValueError: for non-positive inputs.
    """
    if steps <= 0 or step_time <= 0 or baseline_step_time <= 0:
        raise ValueError("steps and step times must be positive")
    return steps * step_time / baseline_step_time


def objective_steps(objective: str, steps: StepsRange) -> float:
    """The step factor an objective's score multiplies the step time by.

    ``time-to-target``, ``balanced`` and ``quality`` use the central factor. ``speed`` ranks
    by the measured step clock, so it credits no published speed-up but pays for extra steps
    (``max(1, central)``). ``memory`` ignores steps (factor 1).

    Args:
        objective: the ``--objective`` value.
        steps: the plan's step factor.

    Returns:
        The factor (> 0).
    """
    if objective == "memory":
        return 1.0
    if objective == "speed":
        return max(1.0, steps.central)
    return steps.central


class StepsBand(BaseModel):
    """The three numbers of a step range (what a recommendation's JSON carries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(description="the fewest steps relative to AdamW the sources report")
    central: float = Field(description="the central estimate (independent re-benchmarks)")
    high: float = Field(description="the most steps relative to AdamW the sources report")


class TimeToTarget(BaseModel):
    """What a recommendation reports about its time to AdamW's loss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps_vs_adamw: StepsBand
    steps_source: StepsSource
    steps_extrapolated: bool
    steps_proxy: float | None = Field(
        default=None, description="measured-proxy ratio on this device (calibrate --convergence)"
    )
    time_to_target_rel: float = Field(
        description="steps x step time over the step time of the AdamW plan of the same layout"
    )
    steps_notes: str = ""


def time_to_target(steps: StepsRange, step_time: float, adamw_step_time: float) -> TimeToTarget:
    """A plan's time-to-target report from its step factor and the two step times.

    Args:
        steps: the plan's factor (:func:`plan_steps`).
        step_time: the plan's seconds per step.
        adamw_step_time: seconds per step of the same layout with AdamW.

    Returns:
        The JSON-ready summary.
    """
    return TimeToTarget(
        steps_vs_adamw=StepsBand(low=steps.low, central=steps.central, high=steps.high),
        steps_source=steps.source,
        steps_extrapolated=steps.extrapolated,
        steps_proxy=steps.proxy,
        time_to_target_rel=round(time_to_target_rel(steps.central, step_time, adamw_step_time), 4),
        steps_notes=steps.notes,
    )


# --- interpolation ----------------------------------------------------------------------


def _at_size(data: StepEfficiency, parameters: int) -> tuple[float, float, float, bool, str]:
    """(low, central, high, extrapolated, note) at a size, from the measured points."""
    pts = data.points
    first, last = pts[0], pts[-1]
    if parameters > last.params * _NEAR:
        return _beyond(data, parameters)
    if parameters < first.params / _NEAR:
        decades = math.log10(first.params / parameters)
        w = 1 + WIDEN_PER_DECADE * decades
        note = (
            f"below the smallest measured size ({_size(first.params)}): the smallest point's "
            f"range, widened x{w:.2f}"
        )
        return first.low / w, first.central, first.high * w, True, note
    if parameters <= first.params:
        return first.low, first.central, first.high, False, ""
    if parameters >= last.params:
        return last.low, last.central, last.high, False, ""
    for a, b in itertools.pairwise(pts):
        if a.params <= parameters <= b.params:
            t = math.log(parameters / a.params) / math.log(b.params / a.params)
            return (
                _lerp(a.low, b.low, t),
                _lerp(a.central, b.central, t),
                _lerp(a.high, b.high, t),
                False,
                "",
            )
    raise AssertionError("unreachable: points are sorted")  # pragma: no cover


def _beyond(data: StepEfficiency, parameters: int) -> tuple[float, float, float, bool, str]:
    last = data.points[-1]
    decades = math.log10(parameters / last.params)
    w = 1 + WIDEN_PER_DECADE * decades
    low, central, high = last.low, last.central, last.high
    how = "kept"
    if data.scale_trend is ScaleTrend.TOWARD_ONE:
        alpha = _own_exponent(data.points) or TREND_EXPONENT
        shrink = (last.params / parameters) ** alpha
        # ln(factor) decays toward 0 (factor toward 1) as a power of size, never crossing 1.
        low, central, high = (math.exp(math.log(v) * shrink) for v in (low, central, high))
        how = f"carried toward 1 (ln factor x{shrink:.2f}, exponent {alpha:.2f})"
    note = (
        f"extrapolated beyond the largest measured size ({_size(last.params)}): {how}, "
        f"range widened x{w:.2f}"
    )
    return min(low, central) / w, central, max(high, central) * w, True, note


def _own_exponent(points: list[StepPoint]) -> float | None:
    """The decay exponent of the technique's own two largest points, if they show one."""
    if len(points) < 2:
        return None
    a, b = points[-2], points[-1]
    ga, gb = math.log(a.central), math.log(b.central)
    if ga == 0 or gb == 0 or (ga > 0) != (gb > 0) or abs(gb) >= abs(ga):
        return None
    return math.log(ga / gb) / math.log(b.params / a.params)


def _nearest(points: list[StepPoint], parameters: int) -> StepPoint:
    return min(points, key=lambda p: abs(math.log(p.params / parameters)))


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _size(n: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _proxy_figure(optimizer: str, proxy: ConvergenceCache | None) -> tuple[float, bool] | None:
    if proxy is None:
        return None
    r = proxy.result(optimizer)
    if r is None or r.ratio is None:
        return None
    return r.ratio, r.reached


__all__ = [
    "TREND_EXPONENT",
    "BatchRegime",
    "ConvergenceCache",
    "ProxyCurvePoint",
    "ProxyResult",
    "ProxyRun",
    "StepsBand",
    "StepsRange",
    "StepsSource",
    "TimeToTarget",
    "critical_batch",
    "objective_steps",
    "plan_steps",
    "steps_vs_adamw",
    "time_to_target",
    "time_to_target_rel",
]
