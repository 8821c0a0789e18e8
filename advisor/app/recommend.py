"""The recommend job end to end: flags, probe or profile, calibration, rules, ranking.

This module joins the measurement layer (probe, calibration) to the pure core; torch is
imported only when a calibration runs. The machine is probed and its calibration read once
(advisor.app.environment); the export of the first pick is advisor.app.export's.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from advisor.app.environment import Environment, calibration_device, probe_environment
from advisor.app.limits import (
    check_bound,
    check_cnn_flags,
    check_fp8_recipe,
    check_global_batch_tokens,
    parse_lora_targets,
    resolve_seq_len,
)
from advisor.app.moe_overlap import check_moe_pins, parse_moe_balance, parse_moe_overlap
from advisor.config import ContextParallelKind, Stack, Task, TrainingConfig
from advisor.cost.convergence import ConvergenceCache
from advisor.cost.data import CalibrationCache
from advisor.errors import UserError
from advisor.hardware.profiles import HardwareProfile, get_hardware_profile, load_hardware_profiles
from advisor.model.spec import ModelSpec
from advisor.plan import (
    Context,
    CostFn,
    HostOverride,
    Objective,
    Privacy,
    RecommendReport,
    StepCost,
    Target,
    Workload,
    build_report,
    target_from_profile,
)
from advisor.rules.ruleset import load_rules
from advisor.rules.taxonomy import load_taxonomy
from advisor.units import parse_bytes

Progress = Callable[[str, float], None]
DEFAULT_SEQ_LEN = 2048


class RecommendRequest(BaseModel):
    """The validated flags of `optadvise recommend`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: ModelSpec
    workload: Workload
    hardware: str | None
    gpus: int | None
    memory_budget: int | None
    top: int
    rules_dirs: list[Path] = []
    calibrate: bool | None
    host: HostOverride = HostOverride()

    @classmethod
    def from_flags(
        cls,
        *,
        spec: ModelSpec,
        task: str = "finetune",
        seq_len: str | None = None,
        micro_batch: int | None = None,
        global_batch: int | None = None,
        hardware: str | None = None,
        gpus: int | None = None,
        nodes: int = 1,
        memory_budget: str | None = None,
        objective: str = "balanced",
        privacy: str = "none",
        sparse_features: bool = False,
        top: int = 5,
        calibrate: bool | None = None,
        rope_scaling: float | None = None,
        stack: str = "hf",
        global_batch_tokens: str | None = None,
        host_memory: str | None = None,
        nvme: str | None = None,
        tp: int | None = None,
        pp: int | None = None,
        lora_targets: str | None = None,
        fp8_recipe: str | None = None,
        context_parallel: int | None = None,
        context_parallel_kind: str | None = None,
        expert_parallel: int | None = None,
        expert_tensor_parallel: int | None = None,
        moe_overlap: str | None = None,
        moe_balance: str = "loss-free",
    ) -> RecommendRequest:
        """Parse and check every flag; the defaults are `optadvise recommend`'s.

        Raises:
            UserError: naming the flag and what it accepts.
        """
        task_v = _choice(Task, task, "--task")
        objective_v = _choice(Objective, objective, "--objective")
        privacy_v = _choice(Privacy, privacy, "--privacy")
        s = resolve_seq_len(spec, seq_len, rope_scaling, DEFAULT_SEQ_LEN)
        check_cnn_flags(spec, task_v, tp, pp)
        for flag, value in (
            ("--micro-batch", micro_batch),
            ("--global-batch", global_batch),
            ("--gpus", gpus),
            ("--nodes", nodes),
            ("--top", top),
            ("--expert-parallel", expert_parallel),
            ("--expert-tensor-parallel", expert_tensor_parallel),
        ):
            check_bound(flag, value)
        check_bound("--gpus", (gpus or 1) * nodes)
        if hardware is not None and calibrate:
            raise UserError(
                "--calibrate measures this machine, but --hardware plans for another one",
                "drop --calibrate: profile costs are analytic (datasheet figures)",
            )
        _check_plan_flags(
            global_batch, global_batch_tokens, micro_batch, gpus, nodes, tp, pp, context_parallel
        )
        overlap = None if moe_overlap is None else parse_moe_overlap(moe_overlap)
        check_moe_pins(overlap, spec, expert_parallel=expert_parallel, pipeline_parallel=pp)
        tokens = _tokens(global_batch_tokens) if global_batch_tokens is not None else None
        check_global_batch_tokens(tokens, s)
        workload = Workload(
            task=task_v,
            seq_len=s,
            micro_batch=micro_batch,
            global_batch=global_batch,
            gpus=gpus or 1,
            nodes=nodes,
            privacy=privacy_v,
            objective=objective_v,
            sparse_features=sparse_features,
            global_batch_tokens=tokens,
            tensor_parallel=tp,
            pipeline_parallel=pp,
            context_parallel=context_parallel,
            context_parallel_kind=None
            if context_parallel_kind is None
            else _choice(ContextParallelKind, context_parallel_kind, "--context-parallel-kind"),
            expert_parallel=expert_parallel,
            expert_tensor_parallel=expert_tensor_parallel,
            stack=_choice(Stack, stack, "--stack"),
            lora_targets=None if lora_targets is None else parse_lora_targets(lora_targets),
            fp8_recipe=check_fp8_recipe(fp8_recipe, None),
            moe_overlap=overlap,
            moe_balance=parse_moe_balance(moe_balance),
        )
        _check_context_pin(spec, workload)
        return cls(
            spec=spec,
            workload=workload,
            hardware=hardware,
            gpus=gpus,
            memory_budget=_memory_budget(memory_budget),
            top=top,
            calibrate=calibrate,
            host=HostOverride(
                memory_bytes=_size(host_memory, "--host-memory"),
                nvme_bytes=_size(nvme, "--nvme"),
            ),
        )


def _check_context_pin(spec: ModelSpec, w: Workload) -> None:
    """A pinned --context-parallel degree that cannot split the sequence (or, under
    Ulysses, the heads) is refused before the search, as ``estimate`` refuses it."""
    if w.context_parallel is None or w.context_parallel == 1:
        return
    from advisor.memory.context import check_context
    from advisor.memory.params import shape_of

    probe = TrainingConfig().with_(
        seq_len=w.seq_len,
        tensor_parallel=w.tensor_parallel or 1,
        context_parallel=w.context_parallel,
        context_parallel_kind=w.context_parallel_kind or ContextParallelKind.RING,
    )
    check_context(probe, shape_of(spec), spec)


def _memory_budget(text: str | None) -> int | None:
    if text is None:
        return None
    value = parse_bytes(text, "--memory-budget")
    check_bound("--memory-budget", value)
    return value


def _check_plan_flags(
    global_batch: int | None,
    global_batch_tokens: str | None,
    micro_batch: int | None,
    gpus: int | None,
    nodes: int,
    tp: int | None,
    pp: int | None,
    cp: int | None = None,
) -> None:
    """The batch and layout flags that contradict each other before any search."""
    world = (gpus or 1) * nodes
    if cp is not None and ((tp or 1) * (pp or 1) * cp > world or world % ((tp or 1) * cp)):
        raise UserError(
            f"--context-parallel {cp} x --tp {tp or 1} does not divide the {world} devices",
            "pick degrees whose product divides --gpus x --nodes",
        )
    if global_batch is not None and global_batch_tokens is not None:
        raise UserError(
            "--global-batch and --global-batch-tokens both set the global batch",
            "give only one of them",
        )
    replicas = world // ((tp or 1) * (pp or 1) * (cp or 1)) or 1
    if global_batch is not None and global_batch < (micro_batch or 1) * replicas:
        raise UserError(
            f"--global-batch {global_batch} is smaller than one micro-batch on every "
            f"data-parallel replica ({micro_batch or 1} x {replicas})",
            "raise --global-batch, lower --micro-batch, or pin --tp/--pp",
        )
    # NOTE: --tp against the NVLink domain is checked where layouts are built (plan/layout.py):
    # a domain may span nodes (NVL72), so --tp > --gpus is not wrong in itself.
    if (tp or 1) * (pp or 1) > world or world % ((tp or 1) * (pp or 1)):
        raise UserError(
            f"--tp {tp or 1} x --pp {pp or 1} does not divide the {world} devices",
            "pick degrees whose product divides --gpus x --nodes",
        )


def _tokens(text: str) -> int:
    """A token count: ``524288``, ``512k`` or ``4M`` (k = 1024, M = 2**20, as GPT-3 and
    Llama write their "0.5M" and "4M" token batches)."""
    import re

    # NOTE: at most 30 digits either side of the point (as advisor.units): 400 digits are
    # invalid, never an OverflowError; the value is then bounded (advisor.app.limits).
    m = re.fullmatch(r"(\d{1,30}(?:\.\d{1,30})?)\s*([kKmM]?)", text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UserError(
            f"invalid --global-batch-tokens {text!r}", "use a token count, e.g. 524288, 512k or 4M"
        )
    scale = {"": 1, "k": 2**10, "m": 2**20}[m.group(2).lower()]
    return max(1, round(float(m.group(1)) * scale))


def _size(value: str | None, flag: str) -> int | None:
    """A byte size flag (``2TB``, ``512GiB``); negative sizes are bad input."""
    if value is None:
        return None
    if value.strip().startswith("-"):
        raise UserError(f"{flag} must not be negative, got {value}", f"e.g. {flag} 512GiB")
    import re

    if re.fullmatch(r"0+(\.0*)?\s*[KMGT]?i?B?", value.strip(), flags=re.IGNORECASE):
        return 0  # "none": e.g. --nvme 0 for a node without NVMe for offload
    size = parse_bytes(value, flag)
    check_bound(flag, size)
    return size


def _choice(kind: Any, value: str, flag: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(v.value for v in kind)
        raise UserError(f"invalid {flag} {value!r}", f"use one of: {allowed}") from None


@dataclass(frozen=True)
class RecommendRun:
    """A recommend job's report and the machine it planned for (None for a --hardware plan),
    probed once and with its calibration as the job left it: the export's note reuses both."""

    report: RecommendReport
    environment: Environment | None


def run_recommend(
    req: RecommendRequest,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> RecommendReport:
    """The report of :func:`plan_recommendation` alone (tests, benchmarks, library use)."""
    return plan_recommendation(req, progress, notify).report


def plan_recommendation(
    req: RecommendRequest,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> RecommendRun:
    """Probe (or load the profile), find the costs, apply the rules, rank.

    On a local device whose calibration cache lacks the model's layer shape (and without
    ``--no-calibrate``), the quick calibration runs first, so the ranking is by measured
    cost; ``notify`` is told so in one line before it starts.

    Raises:
        UserError: for unknown profiles, impossible flag combinations, broken data files.
    """
    taxonomy = load_taxonomy()
    ruleset = load_rules(req.rules_dirs, technique_ids=set(taxonomy.ids()))
    profiles = load_hardware_profiles()
    w = req.workload
    calibration: CalibrationCache | None = None
    env: Environment | None = None
    if req.hardware:
        target, note = _profile_target(req)
    else:
        env = probe_environment(profiles)
        target = env.target(
            gpus=req.gpus, nodes=w.nodes, memory_budget=req.memory_budget, host=req.host
        )
        if req.gpus is None and target.gpus_per_node > 1:
            w = w.model_copy(update={"gpus": target.gpus_per_node})
        env, calibration, note = _local_costs(req, env, target, progress, notify)
        if calibration is not None:
            target = _with_measured_precision(target, calibration)
    _check_fp8_target(w, target)
    ctx = Context(
        spec=req.spec,
        workload=w,
        target=target,
        taxonomy=taxonomy,
        ruleset=ruleset,
        # --no-calibrate uses no measurement at all, the step proxy included.
        convergence=None if req.calibrate is False else _convergence_proxy(req.spec),
    )
    cost = cost_function(ctx, calibration, target.profile)
    report = build_report(ctx, cost, top=req.top, cost_note=note)
    return RecommendRun(report=report, environment=env)


def _check_fp8_target(w: Workload, target: Target) -> None:
    """--fp8-recipe applies to fp8-mixed plans: a device without FP8 tensor cores (no dense
    FP8 figure in its profile) has none to apply it to."""
    if w.fp8_recipe is None:
        return
    if target.profile.peak_tflops.fp8:
        from advisor.cost.fp8recipes import recipe_refusal

        why = recipe_refusal(w.fp8_recipe, target.profile.cc)
        if why is None:
            return
        raise UserError(
            f"{why}; {target.name} has {target.profile.cc:g}",
            "use --fp8-recipe tensorwise, rowwise or delayed, or plan for newer hardware",
        )
    raise UserError(
        f"--fp8-recipe applies to fp8-mixed plans, and {target.name} has no FP8 tensor cores",
        "drop --fp8-recipe, or plan for FP8 hardware (--hardware h100-sxm-80gb, l40s, ...)",
    )


def _profile_target(req: RecommendRequest) -> tuple[Target, str]:
    """The --hardware profile as the target, and the report's line on where costs come from."""
    profile = get_hardware_profile(req.hardware or "")
    target = target_from_profile(
        profile,
        gpus=req.gpus or 1,
        nodes=req.workload.nodes,
        memory_budget=req.memory_budget,
        host=req.host,
    )
    note = f"costs: analytic, from the {profile.id} datasheet figures"
    if profile.efficiency is not None and profile.efficiency.carried_over():
        note += "; " + profile.efficiency.carried_over()
    return target, note


def _convergence_proxy(spec: ModelSpec) -> ConvergenceCache | None:
    """This machine's `calibrate --convergence` results for the model's family, if any.

    Step counts do not depend on the device a plan runs on, so the local proxy applies to
    --hardware plans too. Reading the cache never imports torch.
    """
    from advisor.calibration.convergence import load_convergence

    for device in ("cuda:0", "cpu"):
        cache, _warning = load_convergence(device, spec)
        if cache is not None:
            return cache
    return None


def _local_costs(
    req: RecommendRequest,
    env: Environment,
    target: Target,
    progress: Progress | None,
    notify: Callable[[str], None] | None = None,
) -> tuple[Environment, CalibrationCache | None, str]:
    """This device's measured costs: the calibration cache, filled first when it lacks the
    model's layer shape (measured by default); analytic only with --no-calibrate or when
    torch is not installed. Returns the environment (with what it measured), the
    calibration the costs use and the report's line on where they come from."""
    if req.calibrate is False:
        return (
            env,
            None,
            "costs: analytic (--no-calibrate), from the probed hardware's peak figures",
        )
    from advisor.cost import layer_shape

    device = calibration_device(target.device_kind)
    cached = None
    warning = None
    if not req.calibrate:
        cached, warning = env.stored_calibration
        if cached is not None and cached.results_for(layer_shape(req.spec)) is not None:
            partial = ", partial" if cached.partial else ""
            return (
                env,
                cached,
                f"costs: measured on this device (calibration cache {cached.created_at}{partial})"
                + calibration_caveat(cached, req.spec),
            )
    if not torch_installed():
        extra = f" [{warning}]" if warning else ""
        return (
            env,
            cached,
            "costs: analytic (torch is not installed, so this device cannot be measured; "
            f"install torch for measured costs){extra}",
        )
    from advisor.calibration.runner import QUICK_DEFAULT_BUDGET_S, run_calibration

    if notify is not None and not req.calibrate:
        notify(
            f"no measured costs for {req.spec.name}'s layer shape on this device yet: running "
            f"the quick calibration first (at most {QUICK_DEFAULT_BUDGET_S:.0f} s, cached for "
            "next time; --no-calibrate skips it)"
        )
    calibration = run_calibration(
        req.spec, device=device, mode="quick", progress=progress, say=notify
    )
    partial = ", partial: the time budget ran out" if calibration.partial else ""
    return (
        env.with_measured(calibration),
        calibration,
        f"costs: measured on this device (quick calibration, {device}{partial})"
        + calibration_caveat(calibration, req.spec),
    )


def calibration_caveat(calibration: CalibrationCache, spec: ModelSpec) -> str:
    """One line for the report when the measured costs rest on a disturbed or partial
    calibration (empty otherwise), with the command that measures again."""
    why = []
    if calibration.disturbed():
        why.append(
            f"other processes used {calibration.other_cpu_share or 0:.0%} of the CPU while it"
            " measured"
        )
    if calibration.partial:
        why.append("the budget ran out before every term was measured (the rest is analytic)")
    if not why:
        return ""
    return (
        f"\ncaveat: {'; '.join(why)}: re-measure on a quieter machine with"
        f" `optadvise calibrate {_model_flag(spec)} --force`"
    )


def _model_flag(spec: ModelSpec) -> str:
    """The flag that names ``spec`` again on the command line."""
    if spec.source.startswith("file://"):
        return f"--model-config {shlex.quote(spec.source.removeprefix('file://'))}"
    if spec.source.startswith("synthetic:"):
        return f"--model-size {spec.id.removeprefix('llama-style-').upper()}"
    return f"--model {spec.id}"


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _with_measured_precision(target: Target, calibration: CalibrationCache) -> Target:
    fast = getattr(calibration, "fast_bf16", None)
    if fast is None:
        return target
    return target.model_copy(update={"fast_bf16": bool(fast)})


def cost_function(
    ctx: Context, calibration: CalibrationCache | None, profile: HardwareProfile | None
) -> CostFn:
    """The plan search's step-time function: measured from ``calibration`` where it holds
    the model's layer shape, else analytic from ``profile``'s datasheet figures. It holds
    the cost model's memo for this one search."""
    from advisor.cost import StepMemo, predict_for_optimizer

    memo = StepMemo()

    def cost(config: TrainingConfig) -> StepCost:
        st = predict_for_optimizer(
            ctx.spec,
            config,
            ctx.taxonomy.get(config.optimizer),
            calibration=calibration,
            hardware=profile,
            interconnect_gb_s=ctx.target.interconnect_gb_s or None,
            memo=memo,
        )
        return StepCost(
            seconds=st.seconds,
            source=str(getattr(st.source, "value", st.source)),
            components={k: float(v.seconds) for k, v in st.components.items()},
        )

    return cost
