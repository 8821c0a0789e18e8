"""The recommend job end to end: probe or profile, calibration cache, rules, ranking, emit.

This module joins the measurement layer (probe, calibration) to the pure core; torch is
imported only when a calibration runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from advisor.app.estimate import parse_lora_targets
from advisor.app.limits import check_bound, check_global_batch_tokens, resolve_seq_len
from advisor.config import Stack, Task
from advisor.cost.data import CalibrationCache
from advisor.errors import UserError
from advisor.hardware.profiles import HardwareProfile, get_hardware_profile, load_hardware_profiles
from advisor.model.spec import ModelSpec
from advisor.plan import (
    Context,
    HostOverride,
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
    ) -> RecommendRequest:
        """Parse and check every flag; the defaults are `optadvise recommend`'s.

        Raises:
            UserError: naming the flag and what it accepts.
        """
        task_v = _choice(Task, task, "--task")
        objective_v = _choice(Objective, objective, "--objective")
        privacy_v = _choice(Privacy, privacy, "--privacy")
        s = resolve_seq_len(spec, seq_len, rope_scaling, DEFAULT_SEQ_LEN)
        for flag, value in (
            ("--micro-batch", micro_batch),
            ("--global-batch", global_batch),
            ("--gpus", gpus),
            ("--nodes", nodes),
            ("--top", top),
        ):
            check_bound(flag, value)
        check_bound("--gpus", (gpus or 1) * nodes)
        if hardware is not None and calibrate:
            raise UserError(
                "--calibrate measures this machine, but --hardware plans for another one",
                "drop --calibrate: profile costs are analytic (datasheet figures)",
            )
        _check_plan_flags(global_batch, global_batch_tokens, micro_batch, gpus, nodes, tp, pp)
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
            stack=_choice(Stack, stack, "--stack"),
            lora_targets=None if lora_targets is None else parse_lora_targets(lora_targets),
        )
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
) -> None:
    """The batch and layout flags that contradict each other before any search."""
    world = (gpus or 1) * nodes
    if global_batch is not None and global_batch_tokens is not None:
        raise UserError(
            "--global-batch and --global-batch-tokens both set the global batch",
            "give only one of them",
        )
    replicas = world // ((tp or 1) * (pp or 1)) or 1
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


def _cpu_clock_ghz() -> float | None:
    """The nominal clock from /proc/cpuinfo ("cpu MHz"), for the analytic CPU peak."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except (OSError, ValueError):
        return None
    return None


def run_recommend(
    req: RecommendRequest,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> RecommendReport:
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
    calibration: Any = None
    note = ""
    if req.hardware:
        profile = get_hardware_profile(req.hardware)
        target = target_from_profile(
            profile,
            gpus=req.gpus or 1,
            nodes=w.nodes,
            memory_budget=req.memory_budget,
            host=req.host,
        )
        note = f"costs: analytic, from the {profile.id} datasheet figures"
        if profile.efficiency is not None and profile.efficiency.carried_over():
            note += "; " + profile.efficiency.carried_over()
    else:
        from advisor.hardware.probe import probe_hardware

        report = probe_hardware(with_torch=False)
        target = target_from_probe(
            report,
            profiles,
            gpus=req.gpus,
            nodes=w.nodes,
            memory_budget=req.memory_budget,
            clock_ghz=_cpu_clock_ghz(),
            host=req.host,
        )
        if req.gpus is None and target.gpus_per_node > 1:
            w = w.model_copy(update={"gpus": target.gpus_per_node})
        gpu_name = report.gpus[0].name if report.gpus else ""
        calibration, note = _local_costs(req, target, progress, gpu_name, notify)
        if calibration is not None:
            target = _with_measured_precision(target, calibration)
    ctx = Context(
        spec=req.spec,
        workload=w,
        target=target,
        taxonomy=taxonomy,
        ruleset=ruleset,
        # --no-calibrate uses no measurement at all, the step proxy included.
        convergence=None if req.calibrate is False else _convergence_proxy(req.spec),
    )
    return recommend(ctx, _cost_fn(ctx, calibration, target.profile), top=req.top, cost_note=note)


def _convergence_proxy(spec: ModelSpec) -> Any:
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
    target: Target,
    progress: Progress | None,
    gpu_name: str = "",
    notify: Callable[[str], None] | None = None,
) -> tuple[Any, str]:
    """This device's measured costs: the calibration cache, filled first when it lacks the
    model's layer shape (measured by default); analytic only with --no-calibrate or when
    torch is not installed."""
    if req.calibrate is False:
        return None, "costs: analytic (--no-calibrate), from the probed hardware's peak figures"
    from advisor.calibration import cache as cal_cache
    from advisor.cost import layer_shape

    device = "cpu" if target.device_kind.value == "cpu" else "cuda:0"
    cached = None
    warning = None
    if not req.calibrate:
        # NOTE: the runner names a GPU by torch.cuda.get_device_name, which reports the same
        # marketing name NVML does; the fingerprint must match for the cache to be found.
        cached, warning = cal_cache.load_cache_for(device, gpu_name=gpu_name)
        if cached is not None and cached.results_for(layer_shape(req.spec)) is not None:
            partial = ", partial" if cached.partial else ""
            return (
                cached,
                f"costs: measured on this device (calibration cache {cached.created_at}{partial})"
                + calibration_caveat(cached, req.spec),
            )
    if not _torch_installed():
        extra = f" [{warning}]" if warning else ""
        return cached, (
            "costs: analytic (torch is not installed, so this device cannot be measured; "
            f"install torch for measured costs){extra}"
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
    return calibration, (
        f"costs: measured on this device (quick calibration, {device}{partial})"
        + calibration_caveat(calibration, req.spec)
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


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _with_measured_precision(target: Target, calibration: Any) -> Target:
    fast = getattr(calibration, "fast_bf16", None)
    if fast is None:
        return target
    return target.model_copy(update={"fast_bf16": bool(fast)})


def _cost_fn(ctx: Context, calibration: Any, profile: HardwareProfile) -> Callable[..., StepCost]:
    """The step-time function of one search; it holds the cost model's memo for that search."""
    from advisor.cost import StepMemo, predict_for_optimizer

    memo = StepMemo()

    def cost(config: Any) -> StepCost:
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


def write_emitted(
    report: RecommendReport,
    kind: str,
    out: Path,
    *,
    nodes: int,
    spec: ModelSpec | None = None,
    hardware: str | None = None,
    force: bool = False,
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
            layout, the file would set up another plan than the ranked one or already exists
            (both without ``force``), or the folder cannot be written.
    """
    if not report.recommendations:
        raise UserError("nothing fits, so there is no configuration to emit", "see the suggestions")
    from advisor.export import EmitTarget, emit_config

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
        expressed = _expressed_plan_note(report, emission.expressed_config, spec, hardware)
        if not force:
            # A config file that silently sets up another plan is not the pick: refuse.
            raise UserError(
                f"the {kind} file cannot set up the ranked plan: {expressed}",
                "pass --force to write that plan anyway, or try another --emit engine",
            )
        notes.insert(0, expressed)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create {out}: {exc.strerror}", "pass another --out folder"
        ) from None
    path = out / emission.filename
    _atomic_write(path, emission.text, force)
    return path, notes


def _expressed_plan_note(
    report: RecommendReport, expressed: Any, spec: ModelSpec | None, hardware: str | None
) -> str:
    """The memory and time of the plan an export sets up instead of the ranked one."""
    from advisor.export import same_plan
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


def _atomic_write(path: Path, text: str, force: bool = False) -> None:
    """Write through an exclusive temp file (see advisor.data.safeio); replace only with force."""
    from advisor.data.safeio import describe, remove_stale_temps, write_atomic

    # NOTE: older versions wrote <name>.tmp beside the file and left it on failures.
    remove_stale_temps(path.parent, legacy=(path.name + ".tmp",))
    try:
        write_atomic(path, text.encode(), overwrite=force)
    except FileExistsError:
        raise UserError(
            f"{path} exists; not overwriting it", "pass --force to replace it, or another --out"
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot write {path}: {describe(exc)}", "pass another --out folder"
        ) from None


def local_target() -> tuple[Target, str]:
    """This machine as a planning target (probed without torch), and its first GPU's name."""
    from advisor.hardware.probe import probe_hardware

    report = probe_hardware(with_torch=False)
    target = target_from_probe(
        report,
        load_hardware_profiles(),
        gpus=None,
        nodes=1,
        memory_budget=None,
        clock_ghz=_cpu_clock_ghz(),
    )
    return target, report.gpus[0].name if report.gpus else ""


def local_step_time(
    spec: ModelSpec, config: Any, hardware: str | None, local: tuple[Target, str] | None = None
) -> Any:
    """Step time of one configuration for `optadvise estimate`: measured from this device's
    calibration cache when it holds the model's layer shape, else analytic from the
    --hardware profile or the probed machine's peak figures. Never imports torch.

    Args:
        local: this machine's target and GPU name, when the caller probed it already.

    Returns:
        An ``advisor.app.estimate.StepTimeReport``.
    """
    from advisor.app.estimate import StepTimeReport
    from advisor.cost import predict_for_optimizer

    calibration = None
    link = None
    if hardware:
        profile = get_hardware_profile(hardware)
        if config.gpus > 1 and profile.intra_node is not None:
            link = profile.intra_node.bandwidth_gb_s
    else:
        target, gpu = local or local_target()
        profile = target.profile
        from advisor.calibration import cache as cal_cache

        device = "cpu" if target.device_kind.value == "cpu" else "cuda:0"
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
