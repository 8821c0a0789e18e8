"""The recommend job end to end: probe or profile, calibration cache, rules, ranking, emit.

This module joins the measurement layer (probe, calibration) to the pure core; torch is
imported only when a calibration runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from advisor.config import Task
from advisor.errors import UserError
from advisor.hardware import HardwareProfile, get_hardware_profile, load_hardware_profiles
from advisor.modelspec import ModelSpec
from advisor.recommend import (
    Context,
    Objective,
    Privacy,
    RecommendReport,
    StepCost,
    Target,
    Workload,
    recommend,
    target_from_probe,
    target_from_profile,
)
from advisor.ruleset import load_rules
from advisor.taxonomy import load_taxonomy
from advisor.units import parse_bytes, parse_length

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

    @classmethod
    def from_flags(
        cls,
        *,
        spec: ModelSpec,
        task: str,
        seq_len: str | None,
        micro_batch: int,
        global_batch: int | None,
        hardware: str | None,
        gpus: int | None,
        nodes: int,
        memory_budget: str | None,
        objective: str,
        privacy: str,
        sparse_features: bool,
        top: int,
        calibrate: bool | None,
    ) -> RecommendRequest:
        """Parse and check every flag.

        Raises:
            UserError: naming the flag and what it accepts.
        """
        task_v = _choice(Task, task, "--task")
        objective_v = _choice(Objective, objective, "--objective")
        privacy_v = _choice(Privacy, privacy, "--privacy")
        limit = spec.max_position_embeddings or DEFAULT_SEQ_LEN
        s = parse_length(seq_len) if seq_len else min(DEFAULT_SEQ_LEN, limit)
        if s > limit and spec.position is not None and spec.position.value == "learned":
            raise UserError(
                f"--seq-len {s} exceeds {spec.name}'s {limit} learned positions",
                f"use --seq-len {limit} or less",
            )
        if hardware is not None and calibrate:
            raise UserError(
                "--calibrate measures this machine, but --hardware plans for another one",
                "drop --calibrate: profile costs are analytic (datasheet figures)",
            )
        if global_batch is not None and global_batch < micro_batch * (gpus or 1) * nodes:
            raise UserError(
                f"--global-batch {global_batch} is smaller than one micro-batch on every device "
                f"({micro_batch} x {(gpus or 1) * nodes})",
                "raise --global-batch or lower --micro-batch",
            )
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
        )
        return cls(
            spec=spec,
            workload=workload,
            hardware=hardware,
            gpus=gpus,
            memory_budget=parse_bytes(memory_budget, "--memory-budget") if memory_budget else None,
            top=top,
            calibrate=calibrate,
        )


def _choice(kind: Any, value: str, flag: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(v.value for v in kind)
        raise UserError(f"invalid {flag} {value!r}", f"use one of: {allowed}") from None


def _cpu_clock_ghz() -> float | None:
    """The nominal clock from /proc/cpuinfo ("cpu MHz"), for the analytic CPU peak."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except (OSError, ValueError):
        return None
    return None


def run_recommend(req: RecommendRequest, progress: Progress | None = None) -> RecommendReport:
    """Probe (or load the profile), find the costs, apply the rules, rank.

    Raises:
        UserError: for unknown profiles, impossible flag combinations, broken data files.
    """
    taxonomy = load_taxonomy()
    ruleset = load_rules(req.rules_dirs, technique_ids=set(taxonomy.ids()))
    profiles = load_hardware_profiles()
    w = req.workload
    calibration: Any = None
    note = ""
    if req.hardware:
        profile = get_hardware_profile(req.hardware)
        target = target_from_profile(
            profile, gpus=req.gpus or 1, nodes=w.nodes, memory_budget=req.memory_budget
        )
        note = f"costs: analytic, from the {profile.id} datasheet figures"
    else:
        from advisor.probe import probe_hardware

        report = probe_hardware(with_torch=False)
        target = target_from_probe(
            report,
            profiles,
            gpus=req.gpus,
            nodes=w.nodes,
            memory_budget=req.memory_budget,
            clock_ghz=_cpu_clock_ghz(),
        )
        if req.gpus is None and target.gpus_per_node > 1:
            w = w.model_copy(update={"gpus": target.gpus_per_node})
        gpu_name = report.gpus[0].name if report.gpus else ""
        calibration, note = _local_costs(req, target, progress, gpu_name)
        if calibration is not None:
            target = _with_measured_precision(target, calibration)
    ctx = Context(spec=req.spec, workload=w, target=target, taxonomy=taxonomy, ruleset=ruleset)
    return recommend(ctx, _cost_fn(ctx, calibration, target.profile), top=req.top, cost_note=note)


def _local_costs(
    req: RecommendRequest, target: Target, progress: Progress | None, gpu_name: str = ""
) -> tuple[Any, str]:
    """The calibration cache for this device, run first with --calibrate."""
    if req.calibrate is False:
        return None, "costs: analytic (--no-calibrate), from the probed hardware's peak figures"
    from advisor.calibration import cache as cal_cache

    device = "cpu" if target.device_kind.value == "cpu" else "cuda:0"
    if req.calibrate:
        from advisor.calibration.runner import run_calibration

        calibration = run_calibration(req.spec, device=device, mode="quick", progress=progress)
        return calibration, f"costs: measured on this device (quick calibration, {device})"
    # NOTE: the runner names a GPU by torch.cuda.get_device_name, which reports the same
    # marketing name NVML does; the fingerprint must match for the cache to be found.
    cached, warning = cal_cache.load_cache_for(device, gpu_name=gpu_name)
    if cached is None:
        hint = "run `optadvise calibrate` or pass --calibrate for measured costs"
        return None, f"costs: analytic (no calibration cache for this device; {hint})" + (
            f" [{warning}]" if warning else ""
        )
    from advisor.cost import layer_shape

    if cached.results_for(layer_shape(req.spec)) is None:
        return cached, (
            "costs: mostly analytic: the calibration cache has no results at this model's layer"
            f" shape; run `optadvise calibrate --model-size ...` for it ({cached.created_at})"
        )
    partial = ", partial" if cached.partial else ""
    return (
        cached,
        f"costs: measured on this device (calibration cache {cached.created_at}{partial})",
    )


def _with_measured_precision(target: Target, calibration: Any) -> Target:
    fast = getattr(calibration, "fast_bf16", None)
    if fast is None:
        return target
    return target.model_copy(update={"fast_bf16": bool(fast)})


def _cost_fn(ctx: Context, calibration: Any, profile: HardwareProfile) -> Callable[..., StepCost]:
    from advisor.cost import predict_for_optimizer

    def cost(config: Any) -> StepCost:
        st = predict_for_optimizer(
            ctx.spec,
            config,
            ctx.taxonomy.get(config.optimizer),
            calibration=calibration,
            hardware=profile,
            interconnect_gb_s=ctx.target.interconnect_gb_s or None,
        )
        return StepCost(
            seconds=st.seconds,
            source=str(getattr(st.source, "value", st.source)),
            components={k: float(v.seconds) for k, v in st.components.items()},
        )

    return cost


def write_emitted(
    report: RecommendReport,
    kind: str,
    out: Path,
    *,
    nodes: int,
    spec: ModelSpec | None = None,
    hardware: str | None = None,
) -> tuple[Path, list[str]]:
    """Write the first pick as a DeepSpeed JSON, Accelerate YAML, torchtitan TOML,
    Megatron-LM arguments or a PyTorch snippet.

    When the engine cannot set up the ranked plan, the file sets up the nearest plan it can;
    the first note then names that plan with its memory and step time beside the ranked one's
    (from the report when it priced that plan, else from the memory and cost models).

    Returns:
        The file written and the notes to show (engines reject unknown keys, so what a
        config file cannot say is said here).

    Raises:
        UserError: when nothing fits (nothing to emit), the engine cannot express the plan's
            layout, or the folder cannot be written.
    """
    if not report.recommendations:
        raise UserError("nothing fits, so there is no configuration to emit", "see the suggestions")
    from advisor.emit import EmitTarget, emit_config

    best = report.recommendations[0]
    impl = load_taxonomy().get(best.optimizer).implementation
    cpu = report.hardware.device_kind == "cpu"
    emission = emit_config(
        EmitTarget(kind),
        best.config,
        nodes=nodes,
        optimizer_implementation=impl,
        cpu=cpu,
        num_layers=spec.num_layers if spec is not None else None,
    )
    notes = list(emission.notes)
    if emission.differs:
        notes.insert(0, _expressed_plan_note(report, emission.expressed_config, spec, hardware))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create {out}: {exc.strerror}", "pass another --out folder"
        ) from None
    path = out / emission.filename
    _atomic_write(path, emission.text)
    return path, notes


def _expressed_plan_note(
    report: RecommendReport, expressed: Any, spec: ModelSpec | None, hardware: str | None
) -> str:
    """The memory and time of the plan an export sets up instead of the ranked one."""
    from advisor.emit import same_plan
    from advisor.units import format_bytes, format_seconds

    best = report.recommendations[0]
    ranked = (
        f"ranked plan: {format_bytes(best.peak_memory_bytes)}/device, "
        f"{format_seconds(best.step_time_s)}/step"
    )
    for rec in report.recommendations:
        if same_plan(rec.config, expressed):
            return (
                f"this file sets up plan #{rec.rank} instead: "
                f"{format_bytes(rec.peak_memory_bytes)}/device, "
                f"{format_seconds(rec.step_time_s)}/step ({ranked})"
            )
    if spec is None:
        return f"this file sets up another plan than the ranked one ({ranked}); see below"
    from advisor.memory import DeviceOverheads, estimate_memory

    tech = load_taxonomy().get(expressed.optimizer)
    overheads = DeviceOverheads.cpu() if report.hardware.device_kind == "cpu" else None
    memory = estimate_memory(spec, expressed, optimizer=tech, device=overheads)
    step = local_step_time(spec, expressed, hardware)
    fits = "fits" if memory.total_bytes <= report.hardware.usable_memory_bytes else "does NOT fit"
    return (
        f"this file sets up another plan: {format_bytes(memory.total_bytes)}/device ({fits}), "
        f"{format_seconds(step.seconds)}/step ({ranked})"
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise UserError(
            f"cannot write {path}: {exc.strerror}", "pass another --out folder"
        ) from None


def local_step_time(spec: ModelSpec, config: Any, hardware: str | None) -> Any:
    """Step time of one configuration for `optadvise estimate`: measured from this device's
    calibration cache when it holds the model's layer shape, else analytic from the
    --hardware profile or the probed machine's peak figures. Never imports torch.

    Returns:
        An ``advisor.estimate.StepTimeReport``.
    """
    from advisor.cost import predict_for_optimizer
    from advisor.estimate import StepTimeReport

    calibration = None
    link = None
    if hardware:
        profile = get_hardware_profile(hardware)
        if config.gpus > 1 and profile.intra_node is not None:
            link = profile.intra_node.bandwidth_gb_s
    else:
        from advisor.probe import probe_hardware

        report = probe_hardware(with_torch=False)
        target = target_from_probe(
            report,
            load_hardware_profiles(),
            gpus=None,
            nodes=1,
            memory_budget=None,
            clock_ghz=_cpu_clock_ghz(),
        )
        profile = target.profile
        from advisor.calibration import cache as cal_cache

        device = "cpu" if target.device_kind.value == "cpu" else "cuda:0"
        gpu = report.gpus[0].name if report.gpus else ""
        calibration, _warning = cal_cache.load_cache_for(device, gpu_name=gpu)
    st = predict_for_optimizer(
        spec,
        config,
        load_taxonomy().get(config.optimizer),
        calibration=calibration,
        hardware=profile,
        interconnect_gb_s=link,
    )
    return StepTimeReport(
        seconds=st.seconds,
        source=st.source.value,
        components={
            k: {"seconds": v.seconds, "source": v.source.value, "detail": v.detail}
            for k, v in st.components.items()
        },
    )
