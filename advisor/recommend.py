"""`optadvise recommend`: enumerate whole configurations, filter by rules and memory, rank by cost.

Pipeline (one direction): target + workload + model -> baseline memory and derived facts ->
rule decision -> candidates (optimizer x precision x attention x checkpointing x offload x
sharding x adapters) -> hard constraints and memory fit -> cost (measured or analytic) ->
objective score -> ranked report with reasons, "why not" and, when nothing fits, what would.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from advisor.candidates import config_techniques
from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.convergence import (
    ConvergenceCache,
    StepsBand,
    StepsSource,
    TimeToTarget,
    objective_steps,
    plan_steps,
    time_to_target,
)
from advisor.engine import Decision, decide
from advisor.errors import UserError
from advisor.hardware import DeviceKind, HardwareProfile, PeakTflops, ProbeReport
from advisor.memory import DeviceOverheads, MemoryEstimate, estimate_memory
from advisor.modelspec import ModelSpec
from advisor.ruleset import RuleSet
from advisor.taxonomy import Category, Order, Taxonomy, Technique
from advisor.units import GIB, format_bytes

# NOTE: a configuration "fits" when its estimated peak stays within this share of device
# memory. The memory model names every term it knows; the margin covers what it cannot
# know (other processes on the GPU, allocator behaviour of a particular torch build,
# framework buffers), and is stated in every report.
MEMORY_SAFETY_MARGIN = 0.90
# Offloaded states must fit this share of the host RAM available per device.
HOST_SAFETY_MARGIN = 0.80
# How much one unit of rule weight moves a candidate's score, per objective (in units of
# log step time): small under "speed" so measured cost decides, large under "quality".
RULE_WEIGHT = {
    "speed": 0.02,
    "memory": 0.02,
    "balanced": 0.15,
    "quality": 0.5,
    "time-to-target": 0.02,
}


class Objective(str, Enum):
    """What the user optimises for."""

    SPEED = "speed"
    MEMORY = "memory"
    BALANCED = "balanced"
    QUALITY = "quality"
    TIME_TO_TARGET = "time-to-target"  # steps to AdamW's loss x step time (convergence.py)


class Privacy(str, Enum):
    """Whether training must be differentially private."""

    NONE = "none"
    DP = "dp"


class Workload(BaseModel):
    """What the user wants to train, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = Task.FINETUNE
    seq_len: int = Field(default=2048, ge=1)
    micro_batch: int = Field(default=1, ge=1)
    global_batch: int | None = Field(default=None, ge=1)
    gpus: int = Field(default=1, ge=1, description="devices per node")
    nodes: int = Field(default=1, ge=1)
    privacy: Privacy = Privacy.NONE
    objective: Objective = Objective.BALANCED
    sparse_features: bool = False

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    @property
    def accumulation(self) -> int:
        per_step = self.micro_batch * self.world_size
        if self.global_batch is None:
            return 1
        return max(1, math.ceil(self.global_batch / per_step))

    @property
    def effective_global_batch(self) -> int:
        return self.micro_batch * self.world_size * self.accumulation


class Target(BaseModel):
    """The hardware a recommendation is for, per device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: Literal["probe", "profile"]
    device_kind: DeviceKind
    device_memory_bytes: int
    host_memory_bytes: int = Field(description="host RAM available per device for offload")
    compute_capability: float = 0.0
    fast_bf16: bool
    fast_fp16: bool
    gpus_per_node: int
    nodes: int = 1
    interconnect_gb_s: float = Field(description="slowest link of the all-reduce, per device")
    profile: HardwareProfile = Field(description="datasheet figures for analytic costs")
    memory_budget_applied: bool = False


# --- targets -----------------------------------------------------------------------------


def target_from_profile(
    profile: HardwareProfile, *, gpus: int, nodes: int, memory_budget: int | None
) -> Target:
    """A target from a datasheet profile (``--hardware``)."""
    kind = profile.kind
    if kind is DeviceKind.CPU and (gpus > 1 or nodes > 1):
        raise UserError(
            f"--gpus/--nodes plan accelerators, but {profile.id} is a CPU profile",
            "drop --gpus/--nodes, or pick a GPU profile (optadvise profiles list)",
        )
    link = _interconnect(profile, nodes)
    host = int((profile.host_memory_gib or profile.memory_gib * 2) * GIB)
    if kind is DeviceKind.CPU:
        host = 0
    cc = profile.cc if kind is DeviceKind.CUDA else 0.0
    return Target(
        name=profile.name,
        source="profile",
        device_kind=kind,
        device_memory_bytes=min(memory_budget or profile.memory_bytes, profile.memory_bytes)
        if memory_budget is None
        else memory_budget,
        host_memory_bytes=host,
        compute_capability=cc,
        fast_bf16=_fast(profile.peak_tflops.bf16, profile.peak_tflops.fp32),
        fast_fp16=_fast(profile.peak_tflops.fp16, profile.peak_tflops.fp32),
        gpus_per_node=0 if kind is DeviceKind.CPU else gpus,
        nodes=nodes,
        interconnect_gb_s=link if gpus * nodes > 1 else 0.0,
        profile=profile,
        memory_budget_applied=memory_budget is not None,
    )


def _fast(peak16: float | None, fp32: float) -> bool:
    return peak16 is not None and peak16 >= 0.9 * fp32


def _interconnect(profile: HardwareProfile, nodes: int) -> float:
    if nodes > 1 and profile.inter_node is not None:
        return profile.inter_node.bandwidth_gb_s
    if profile.intra_node is not None:
        return profile.intra_node.bandwidth_gb_s
    return 25.0  # NOTE: 100 GbE, bidirectional, when a profile names no link


# NOTE: analytic CPU peak = cores x clock x fp32 FLOPs per cycle per core: two FMA units of
# 8 (AVX2) or 16 (AVX-512) lanes give 32 or 64 FLOPs/cycle. Memory bandwidth is not
# readable without measuring; 10 GB/s per core is a conservative assumption (18.7 GB/s was
# measured for one core on this machine kind, FINDINGS.md). Both are labelled analytic.
_CPU_GB_S_PER_CORE = 10.0


def cpu_profile_from_probe(report: ProbeReport, clock_ghz: float | None) -> HardwareProfile:
    """A synthetic datasheet for the local CPU (used only for analytic costs)."""
    cores = report.cpu.physical_cores or report.cpu.logical_cores
    cores = min(cores, report.cpu.usable_cores)
    lanes = 64 if report.cpu.features.get("avx512f") else 32
    ghz = clock_ghz or 2.5
    fp32 = cores * ghz * lanes / 1000
    bf16 = fp32 if report.cpu.fast_bf16 else fp32 / 100
    fp16 = fp32 if report.cpu.fast_fp16 else fp32 / 100
    return HardwareProfile(
        id="local-cpu",
        name=f"{report.cpu.model} ({cores} cores)",
        kind=DeviceKind.CPU,
        vendor="local",
        memory_gib=report.memory.effective_limit_bytes / GIB,
        memory_bandwidth_gb_s=_CPU_GB_S_PER_CORE * cores,
        peak_tflops=PeakTflops(fp32=fp32, bf16=bf16, fp16=fp16),
        cores=cores,
        notes=f"synthetic: {cores} cores x {ghz:g} GHz x {lanes} FLOP/cycle",
        sources=["probe"],
    )


def match_gpu_profile(
    name: str, memory_bytes: int | None, profiles: Iterable[HardwareProfile]
) -> HardwareProfile | None:
    """The datasheet profile of a probed GPU, from its NVML name and memory size.

    Every model token of the profile id must appear in the name ("h100", "a100", "4090");
    the form factor decides between variants: NVML names PCIe cards "... PCIe" and leaves it
    out for SXM parts ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB").
    """
    lowered = name.lower().replace("nvidia", "").replace("geforce", "").replace("-", " ")
    squashed = lowered.replace(" ", "")
    pcie = "pcie" in squashed
    best: tuple[int, str, HardwareProfile] | None = None
    for p in profiles:
        if p.kind is DeviceKind.CPU:
            continue
        tokens = [t for t in p.id.split("-") if not t.endswith("gb")]
        model = [t for t in tokens if t not in ("sxm", "pcie")]
        if not model or not all(t in squashed for t in model):
            continue
        score = 2 * len(model)
        if "pcie" in tokens:
            score += 2 if pcie else -3
        elif "sxm" in tokens:
            score += -3 if pcie else 2
        if memory_bytes and abs(p.memory_bytes - memory_bytes) / p.memory_bytes < 0.1:
            score += 2
        if best is None or (score, p.id) > (best[0], best[1]):
            best = (score, p.id, p)
    return best[2] if best else None


def closest_gpu_profile(
    compute_capability: str | None, memory_bytes: int | None, profiles: Iterable[HardwareProfile]
) -> HardwareProfile | None:
    """The GPU profile of the same architecture (compute capability) nearest in memory size,
    for a local GPU no profile names."""
    if not compute_capability:
        return None
    cc = float(compute_capability)
    gpus = [p for p in profiles if p.kind is DeviceKind.CUDA and p.compute_capability]
    if not gpus:
        return None
    mem = memory_bytes or 0
    return min(gpus, key=lambda p: (abs(p.cc - cc), abs(p.memory_bytes - mem), p.id))


def target_from_probe(
    report: ProbeReport,
    profiles: dict[str, HardwareProfile],
    *,
    gpus: int | None,
    nodes: int,
    memory_budget: int | None,
    clock_ghz: float | None = None,
) -> Target:
    """A target from the local probe (GPU 0 stands for every GPU of the node)."""
    ram = report.memory.effective_available_bytes
    if not report.gpus:
        if (gpus or 1) > 1 or nodes > 1:
            raise UserError(
                "no GPU found on this machine, so --gpus/--nodes cannot be planned here",
                "use --hardware NAME to plan for another machine (optadvise profiles list)",
            )
        profile = cpu_profile_from_probe(report, clock_ghz)
        return Target(
            name=profile.name,
            source="probe",
            device_kind=DeviceKind.CPU,
            device_memory_bytes=memory_budget or ram,
            host_memory_bytes=0,
            fast_bf16=report.cpu.fast_bf16,
            fast_fp16=report.cpu.fast_fp16,
            gpus_per_node=0,
            interconnect_gb_s=0.0,
            profile=profile,
            memory_budget_applied=memory_budget is not None,
        )
    g = report.gpus[0]
    count = gpus or len(report.gpus)
    if count > len(report.gpus) and nodes == 1:
        raise UserError(
            f"--gpus {count} but this machine has {len(report.gpus)}",
            "use --hardware NAME to plan for a bigger machine",
        )
    matched = match_gpu_profile(g.name, g.memory_total_bytes, profiles.values())
    name = g.name
    if matched is None:
        matched = closest_gpu_profile(g.compute_capability, g.memory_total_bytes, profiles.values())
        if matched is None:
            raise UserError(
                f"no datasheet profile is close to the local GPU {g.name!r}",
                "pass --hardware NAME for the closest profile (optadvise profiles list)",
            )
        # NOTE: said in the report's hardware name, so analytic costs are never passed off
        # as this GPU's own datasheet.
        name = f"{g.name} (analytic costs from the {matched.id} datasheet)"
    profile = matched
    kind = (
        DeviceKind.MPS
        if g.backend == "mps"
        else (DeviceKind.ROCM if report.accelerator == "rocm" else DeviceKind.CUDA)
    )
    cc = float(g.compute_capability) if g.compute_capability else 0.0
    link = _interconnect(profile, nodes)
    return Target(
        name=name,
        source="probe",
        device_kind=kind,
        device_memory_bytes=memory_budget or g.memory_total_bytes or profile.memory_bytes,
        host_memory_bytes=ram // max(count, 1),
        compute_capability=cc,
        fast_bf16=g.bf16 or kind is not DeviceKind.CUDA,
        fast_fp16=True,
        gpus_per_node=count,
        nodes=nodes,
        interconnect_gb_s=link if count * nodes > 1 else 0.0,
        profile=profile,
        memory_budget_applied=memory_budget is not None,
    )


# --- the report ----------------------------------------------------------------------------


class Reason(BaseModel):
    """Why a candidate ranks where it does: a fired rule and its sources."""

    model_config = ConfigDict(frozen=True)

    rule: str
    effect: str
    rationale: str
    sources: list[str]


class Recommendation(BaseModel):
    """One ranked configuration."""

    model_config = ConfigDict(frozen=True)

    rank: int
    optimizer: str
    order: str
    precision: str
    attention: str
    techniques: list[str]
    sharding: str
    task: str
    checkpointing: str
    offload: str
    micro_batch: int
    grad_accumulation: int
    peak_memory_bytes: int
    headroom_bytes: int
    host_memory_bytes: int
    fits: bool
    step_time_s: float
    tokens_per_s: float
    cost_source: str
    cost_components: dict[str, float]
    memory_breakdown: dict[str, int]
    rule_score: float
    score: float
    reasons: list[Reason]
    config: TrainingConfig
    # Time to target (advisor/convergence.py): steps to AdamW's loss relative to AdamW, where
    # that figure comes from, and steps x step time over the same layout's AdamW step time.
    steps_vs_adamw: StepsBand | None = None
    steps_source: StepsSource | None = None
    steps_extrapolated: bool = False
    steps_proxy: float | None = Field(default=None, description="measured-proxy ratio")
    time_to_target_rel: float | None = None


class Rejection(BaseModel):
    """A configuration that was considered and dropped, and why."""

    model_config = ConfigDict(frozen=True)

    configuration: str
    optimizer: str
    techniques: list[str]
    reason: str
    kind: Literal["rule", "memory", "host-memory", "incompatible"]
    peak_memory_bytes: int | None = None
    config: TrainingConfig


class WhyNot(BaseModel):
    """An option a user would expect, and why it is not the pick."""

    model_config = ConfigDict(frozen=True)

    option: str
    verdict: str


class Suggestion(BaseModel):
    """When nothing fits: the smallest change that would."""

    model_config = ConfigDict(frozen=True)

    change: str
    detail: str


class HardwareSummary(BaseModel):
    """The hardware facts the ranking used."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    device_kind: str
    device_memory_bytes: int
    usable_memory_bytes: int
    host_memory_bytes: int
    compute_capability: float
    fast_bf16: bool
    gpus_per_node: int
    nodes: int
    interconnect_gb_s: float
    safety_margin: float


class WorkloadSummary(BaseModel):
    """The workload the ranking used."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_id: str
    parameters: int
    task: str
    seq_len: int
    micro_batch: int
    global_batch: int
    grad_accumulation: int
    world_size: int
    privacy: str
    objective: str


class RecommendReport(BaseModel):
    """Everything `optadvise recommend` says (the --json contract)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = 1
    recommendations: list[Recommendation]
    rejected: list[Rejection]
    why_not: list[WhyNot]
    suggestions: list[Suggestion]
    hardware: HardwareSummary
    workload: WorkloadSummary
    facts: dict[str, Any]
    fired_rules: list[Reason]
    advice: list[Reason]
    candidates_considered: int
    cost_note: str


# --- the pipeline --------------------------------------------------------------------------


class Context(BaseModel):
    """Everything the ranking reads, bundled once."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: ModelSpec
    workload: Workload
    target: Target
    taxonomy: Taxonomy
    ruleset: RuleSet
    convergence: ConvergenceCache | None = None  # calibrate --convergence on this device


def _overheads(target: Target) -> DeviceOverheads:
    return DeviceOverheads.cpu() if target.device_kind is DeviceKind.CPU else DeviceOverheads()


def usable_memory(target: Target) -> int:
    """Device memory a configuration may use (the safety margin applied)."""
    return int(target.device_memory_bytes * MEMORY_SAFETY_MARGIN)


def baseline_config(ctx: Context) -> TrainingConfig:
    """AdamW, bf16-mixed (fp32 where 16-bit is slow), no memory savers, no sharding."""
    precision = Precision.BF16_MIXED if ctx.target.fast_bf16 else Precision.FP32
    task = (
        ctx.workload.task if ctx.workload.task in (Task.PRETRAIN, Task.FINETUNE) else Task.FINETUNE
    )
    return TrainingConfig(
        task=task,
        optimizer="adamw",
        precision=precision,
        attention=Attention.FLASH,
        checkpointing=Checkpointing.NONE,
        micro_batch=ctx.workload.micro_batch,
        seq_len=ctx.workload.seq_len,
        gpus=ctx.workload.world_size,
        sharding=Sharding.NONE,
        offload=Offload.NONE,
        grad_accumulation=ctx.workload.accumulation,
    )


def estimate(ctx: Context, config: TrainingConfig) -> MemoryEstimate:
    """The memory model for one configuration on the target."""
    return estimate_memory(
        ctx.spec,
        config,
        optimizer=ctx.taxonomy.get(config.optimizer),
        device=_overheads(ctx.target),
    )


def enumerate_configs(ctx: Context, optimizers: list[Technique]) -> list[TrainingConfig]:
    """Every whole configuration of the candidate dimensions (before any filtering)."""
    w, t = ctx.workload, ctx.target
    tasks = [w.task]
    if w.task is Task.FINETUNE:
        tasks += [Task.LORA, Task.QLORA]
    precisions = list(Precision)
    attentions = list(Attention)
    checkpointing = list(Checkpointing)
    offloads = [Offload.NONE] if t.device_kind is DeviceKind.CPU else list(Offload)
    shardings = [Sharding.NONE] if w.world_size == 1 else list(Sharding)
    out = []
    for task, opt, prec, attn, ckpt, off, shard in itertools.product(
        tasks, optimizers, precisions, attentions, checkpointing, offloads, shardings
    ):
        if opt.order is Order.ZEROTH and (
            ckpt is not Checkpointing.NONE or off is not Offload.NONE
        ):
            continue  # no backward pass: nothing to checkpoint; no optimizer state to offload
        if task is Task.QLORA and prec in (Precision.FP32, Precision.TF32, Precision.FP8_MIXED):
            continue  # QLoRA computes in 16-bit over a 4-bit base by construction
        if task in (Task.LORA, Task.QLORA) and off is not Offload.NONE:
            continue  # adapter states are megabytes: nothing worth offloading
        if task is Task.LORA and prec is Precision.FP8_MIXED:
            continue  # fp8 recipes (Transformer Engine) train full layers, not adapters
        out.append(
            TrainingConfig(
                task=task,
                optimizer=opt.id,
                precision=prec,
                attention=attn,
                checkpointing=ckpt,
                micro_batch=w.micro_batch,
                seq_len=w.seq_len,
                gpus=w.world_size,
                sharding=shard,
                offload=off,
                lora_rank=16,
                # Per-sample gradients: the first-order private optimizers (DP-ZO has none).
                dp_sgd=opt.id in ("dp-sgd", "dp-adam"),
                grad_accumulation=w.accumulation,
            )
        )
    return out


def derive_facts(ctx: Context, first_order_fits: bool) -> dict[str, Any]:
    """Every declared fact's value for this scenario."""
    w, t = ctx.workload, ctx.target
    base = estimate(ctx, baseline_config(ctx))
    act = base.breakdown.get("activations", 0) + base.breakdown.get("logits", 0)
    facts: dict[str, Any] = {
        "device_kind": t.device_kind.value,
        "compute_capability": t.compute_capability if t.device_kind is DeviceKind.CUDA else 0.0,
        "device_memory_gib": t.device_memory_bytes / GIB,
        "host_memory_gib": t.host_memory_bytes / GIB,
        "fast_bf16": t.fast_bf16,
        "fast_fp16": t.fast_fp16,
        "gpus_per_node": t.gpus_per_node,
        "nodes": w.nodes,
        "interconnect_gb_s": t.interconnect_gb_s,
        "task": w.task.value,
        "arch": ctx.spec.arch.value,
        "model_params_b": ctx.spec.parameter_count() / 1e9,
        "seq_len": w.seq_len,
        "micro_batch": w.micro_batch,
        "global_batch": w.effective_global_batch,
        "data_parallel_degree": w.world_size,
        "privacy": w.privacy.value,
        "objective": w.objective.value,
        "sparse_features": w.sparse_features,
        "memory_headroom": usable_memory(t) / max(base.total_bytes, 1),
        "first_order_fits": first_order_fits,
        "activation_share": act / max(base.total_bytes, 1),
    }
    declared = set(ctx.ruleset.facts.facts)
    return {k: v for k, v in facts.items() if k in declared}


class StepCost(BaseModel):
    """The predicted time of one optimizer step (over the global batch), by component."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: str
    components: dict[str, float]


CostFn = Callable[[TrainingConfig], StepCost]


def _compatible(ctx: Context, config: TrainingConfig, techniques: list[str]) -> str | None:
    """Why a configuration's techniques cannot go together (None: they can)."""
    tax = ctx.taxonomy
    present = set(techniques)
    for tid in techniques:
        if tid not in tax:
            continue
        tech = tax.get(tid)
        clash = sorted(present & set(tech.incompatible_with))
        if clash:
            return f"{tid} is incompatible with {', '.join(clash)}"
        dtypes = {d.value for d in tech.requires.dtypes}
        if dtypes and not dtypes & _compute_dtypes(config.precision):
            return f"{tid} needs {'/'.join(sorted(dtypes))} compute, not {config.precision.value}"
    return None


def _compute_dtypes(precision: Precision) -> set[str]:
    return {
        Precision.FP32: {"fp32"},
        Precision.TF32: {"tf32", "fp32"},
        Precision.AMP_FP16: {"fp16"},
        Precision.AMP_BF16: {"bf16"},
        Precision.FP16_MIXED: {"fp16"},
        Precision.BF16_MIXED: {"bf16"},
        Precision.FP16: {"fp16"},
        Precision.BF16: {"bf16"},
        Precision.FP8_MIXED: {"fp8", "bf16"},
    }[precision]


def describe_config(config: TrainingConfig) -> str:
    """A short human name for a configuration."""
    parts = [config.optimizer, config.precision.value, f"{config.attention.value} attention"]
    if config.task in (Task.LORA, Task.QLORA):
        parts.insert(0, f"{config.task.value} r={config.lora_rank}")
    elif config.task is Task.FINETUNE:
        parts.insert(0, "full fine-tune")
    else:
        parts.insert(0, "pretrain")
    if config.checkpointing is not Checkpointing.NONE:
        parts.append(f"{config.checkpointing.value} checkpointing")
    if config.offload is not Offload.NONE:
        parts.append(f"offload {config.offload.value}")
    if config.sharding is not Sharding.NONE:
        parts.append(config.sharding.value)
    return ", ".join(parts)


class _Scored(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: TrainingConfig
    techniques: list[str]
    memory: MemoryEstimate
    cost: StepCost
    rule_score: float
    score: float


def _objective_score(
    objective: Objective,
    cost: StepCost,
    peak: int,
    usable: int,
    rule_score: float,
    steps: float = 1.0,
) -> float:
    """Lower is better. Step time and memory enter as logarithms, so a rule weight of 1
    is worth the same relative change of cost whatever the model size. ``steps`` is the
    plan's steps to AdamW's loss as the objective counts them (convergence.objective_steps),
    so ``t`` is the log of the time to target."""
    t = math.log(max(cost.seconds * steps, 1e-9))
    m = math.log(max(peak, 1) / max(usable, 1))
    w = RULE_WEIGHT[objective.value]
    if objective in (Objective.SPEED, Objective.TIME_TO_TARGET):
        return t + 0.01 * m - w * rule_score
    if objective is Objective.MEMORY:
        return m + 0.01 * t - w * rule_score
    if objective is Objective.BALANCED:
        # Memory counts a quarter as much as time: a smaller footprint wins only when it
        # costs little speed (headroom matters most near the limit, where log m -> 0).
        return t + 0.25 * m - w * rule_score
    # NOTE: under quality the budget is what it is: a plan needing k times AdamW's steps
    # reaches a worse loss in it, so the step factor counts in full, the step time a tenth.
    return 0.1 * t + 0.9 * math.log(max(steps, 1e-9)) - w * rule_score


def recommend(
    ctx: Context, cost_fn: CostFn, *, top: int = 5, cost_note: str = ""
) -> RecommendReport:
    """Rank every feasible configuration for the context.

    Args:
        ctx: model, workload, target, taxonomy and rules.
        cost_fn: predicts a configuration's step time (measured cache or analytic datasheet).
        top: how many recommendations to return.
        cost_note: where the costs come from, for the report.

    Returns:
        The report: top recommendations, rejections, "why not", suggestions when nothing fits.
    """
    usable = usable_memory(ctx.target)
    optimizers = [t for t in ctx.taxonomy.optimizers() if t.implementation]
    configs = enumerate_configs(ctx, optimizers)
    facts = derive_facts(ctx, first_order_fits(ctx, optimizers, usable))
    decision = decide(ctx.ruleset, ctx.taxonomy, facts)
    judge = _Judge(ctx, decision, cost_fn, usable)
    scored: list[_Scored] = []
    rejected: list[Rejection] = []
    for c in configs:
        verdict = judge(c)
        if isinstance(verdict, Rejection):
            rejected.append(verdict)
        else:
            scored.append(verdict)
    scored.sort(key=_rank_key)
    recs = [_recommendation(ctx, s, i + 1, decision, cost_fn) for i, s in enumerate(scored[:top])]
    return RecommendReport(
        recommendations=recs,
        rejected=sorted(rejected, key=lambda r: (r.kind, r.configuration)),
        why_not=_why_not(ctx, judge, scored, recs),
        suggestions=[] if recs else _suggestions(ctx, usable),
        hardware=_hardware_summary(ctx.target, usable),
        workload=_workload_summary(ctx),
        facts=facts,
        fired_rules=[_reason(ctx, r, _effect(ctx, r)) for r in decision.fired],
        advice=[_reason(ctx, a.rule, a.text) for a in decision.advice],
        candidates_considered=len(configs),
        cost_note=cost_note,
    )


def _rank_key(s: _Scored) -> tuple[float, float, int, str]:
    return (s.score, s.cost.seconds, s.memory.total_bytes, describe_config(s.config))


def first_order_fits(ctx: Context, optimizers: list[Technique], usable: int) -> bool:
    """Whether some first-order configuration fits (full-parameter, or adapters when
    fine-tuning).

    Memory never grows when a saver is added, so it is enough to try, per first-order
    optimizer, its most frugal configuration: full checkpointing, the widest sharding,
    offload where the device has a host, 16-bit storage.
    """
    base = baseline_config(ctx)
    frugal = base.model_copy(
        update={
            "checkpointing": Checkpointing.FULL,
            "sharding": Sharding.ZERO3 if ctx.workload.world_size > 1 else Sharding.NONE,
            "offload": Offload.NONE
            if ctx.target.device_kind is DeviceKind.CPU
            else Offload.OPTIMIZER_PARAMS,
        }
    )
    tasks = [base.task]
    if ctx.workload.task is not Task.PRETRAIN:
        # Adapters are first-order training too: when LoRA fits, backpropagation fits.
        tasks.append(Task.LORA)
        if ctx.target.device_kind is DeviceKind.CUDA:
            tasks.append(Task.QLORA)
    for task in tasks:
        for opt in optimizers:
            if opt.order is not Order.FIRST:
                continue
            for precision in (Precision.BF16, base.precision):
                c = frugal.model_copy(
                    update={"optimizer": opt.id, "precision": precision, "task": task}
                )
                if task is not base.task:
                    c = c.model_copy(update={"offload": Offload.NONE})
                m = estimate(ctx, c)
                if m.total_bytes <= usable and _host_ok(ctx, m):
                    return True
    return False


class _Judge:
    """Turns one configuration into a scored candidate or a rejection with its reason."""

    def __init__(self, ctx: Context, decision: Decision, cost_fn: CostFn, usable: int) -> None:
        self.ctx, self.decision, self.cost_fn, self.usable = ctx, decision, cost_fn, usable

    def __call__(self, c: TrainingConfig) -> _Scored | Rejection:
        ctx = self.ctx
        techniques = config_techniques(c)
        reason = _hard_constraint(self.decision, techniques, ctx)
        if reason is not None:
            return self._reject(c, techniques, reason, "rule")
        reason = _compatible(ctx, c, techniques)
        if reason is not None:
            return self._reject(c, techniques, reason, "incompatible")
        m = estimate(ctx, c)
        if m.total_bytes > self.usable:
            reason = (
                f"needs {format_bytes(m.total_bytes)} per device > {format_bytes(self.usable)} "
                f"usable ({MEMORY_SAFETY_MARGIN:.0%} of "
                f"{format_bytes(ctx.target.device_memory_bytes)})"
            )
            return self._reject(c, techniques, reason, "memory", m)
        if not _host_ok(ctx, m):
            reason = (
                f"offloads {format_bytes(m.host_bytes)} per device > "
                f"{format_bytes(_host_usable(ctx))} of host RAM"
            )
            return self._reject(c, techniques, reason, "host-memory", m)
        cost = self.cost_fn(c)
        rs = self.decision.score(techniques)
        objective = ctx.workload.objective
        steps = objective_steps(objective.value, _plan_steps(ctx, c))
        return _Scored(
            config=c,
            techniques=techniques,
            memory=m,
            cost=cost,
            rule_score=rs,
            score=_objective_score(objective, cost, m.total_bytes, self.usable, rs, steps),
        )

    @staticmethod
    def _reject(
        c: TrainingConfig,
        techniques: list[str],
        reason: str,
        kind: Literal["rule", "memory", "host-memory", "incompatible"],
        m: MemoryEstimate | None = None,
    ) -> Rejection:
        return Rejection(
            configuration=describe_config(c),
            optimizer=c.optimizer,
            techniques=techniques,
            reason=reason,
            kind=kind,
            peak_memory_bytes=m.total_bytes if m else None,
            config=c,
        )


def _host_usable(ctx: Context) -> int:
    return int(ctx.target.host_memory_bytes * HOST_SAFETY_MARGIN)


def _host_ok(ctx: Context, m: MemoryEstimate) -> bool:
    return m.host_bytes <= _host_usable(ctx)


def _hard_constraint(decision: Decision, techniques: list[str], ctx: Context) -> str | None:
    for tid in techniques:
        if tid in decision.excluded:
            rules = decision.excluded[tid]
            hardware = [r for r in rules if r.startswith("requires-")]
            if hardware:
                lr = next(r for r in _requirement_index(ctx) if r.rule.id == hardware[0])
                text: str = lr.rule.rationale
                return text.removeprefix("From the taxonomy: ").rstrip(".")
            return f"{tid} excluded by rule {', '.join(rules)}"
    cats = {Category.OPTIMIZER, Category.PRECISION, Category.ATTENTION}
    present = set(techniques)
    for tid, rules in decision.required.items():
        if tid in present or tid not in ctx.taxonomy:
            continue
        tech = ctx.taxonomy.get(tid)
        # A required one-of choice (optimizer, precision, attention) rules out the others;
        # a required memory or parallelism technique must be present.
        if tech.category in cats or tech.id in _CANDIDATE_MEMBERS:
            return f"{tid} required by {', '.join(rules)}"
    return None


_REQUIREMENTS: dict[int, list[Any]] = {}


def _requirement_index(ctx: Context) -> list[Any]:
    """The taxonomy's requirement rules, built once per taxonomy object."""
    from advisor.engine import requirement_rules

    key = id(ctx.taxonomy)
    if key not in _REQUIREMENTS:
        _REQUIREMENTS.clear()
        _REQUIREMENTS[key] = requirement_rules(ctx.taxonomy)
    return _REQUIREMENTS[key]


_CANDIDATE_MEMBERS = {
    "activation-checkpointing-full",
    "activation-checkpointing-selective",
    "cpu-offload-optimizer",
    "cpu-offload-params",
    "lora",
    "qlora",
    "zero-1",
    "zero-2",
    "zero-3",
    "fsdp",
}


def _effect(ctx: Context, rule_id: str) -> str:
    lr = ctx.ruleset.get(rule_id)
    if lr is None:  # a taxonomy requirement rule
        return "excludes " + rule_id.removeprefix("requires-") + " (hardware requirement)"
    parts = []
    for a in lr.rule.then:
        if a.verb == "advise":
            parts.append("advises")
        else:
            w = f" ({a.score:+g})" if a.verb in ("prefer", "avoid") else ""
            parts.append(f"{a.verb}s {', '.join(a.techniques)}{w}")
    return "; ".join(parts)


def _reason(ctx: Context, rule_id: str, effect: str) -> Reason:
    lr = ctx.ruleset.get(rule_id)
    if lr is None:
        tid = rule_id.removeprefix("requires-")
        tech = ctx.taxonomy.get(tid) if tid in ctx.taxonomy else None
        return Reason(
            rule=rule_id,
            effect=effect,
            rationale=f"{tid} needs hardware this target lacks (taxonomy requirements)",
            sources=[r.cite() for r in tech.references] if tech else [],
        )
    return Reason(
        rule=rule_id,
        effect=effect,
        rationale=" ".join(lr.rule.rationale.split()),
        sources=[s.cite() for s in lr.rule.sources],
    )


def _plan_steps(ctx: Context, c: TrainingConfig) -> Any:
    """The plan's steps to AdamW's loss (advisor/convergence.py)."""
    return plan_steps(
        ctx.taxonomy, c.optimizer, c.task, ctx.spec.parameter_count(), ctx.convergence
    )


def _time_to_target(ctx: Context, s: _Scored, cost_fn: CostFn) -> TimeToTarget:
    # Relative to the AdamW plan of the same layout: only the optimizer changes.
    same = (
        s.config
        if s.config.optimizer == "adamw"
        else s.config.model_copy(update={"optimizer": "adamw"})
    )
    base = s.cost.seconds if same is s.config else cost_fn(same).seconds
    return time_to_target(_plan_steps(ctx, s.config), s.cost.seconds, base)


def _recommendation(
    ctx: Context, s: _Scored, rank: int, decision: Decision, cost_fn: CostFn
) -> Recommendation:
    c = s.config
    tech = ctx.taxonomy.get(c.optimizer)
    tokens = ctx.workload.effective_global_batch * c.seq_len
    present = set(s.techniques)
    reasons = []
    for tid in s.techniques:
        for rule_id, weight in decision.contributions.get(tid, []):
            reasons.append(
                _reason(
                    ctx, rule_id, f"{'prefers' if weight > 0 else 'avoids'} {tid} ({weight:+g})"
                )
            )
    for tid, rules in decision.required.items():
        if tid in present:
            reasons.extend(_reason(ctx, r, f"requires {tid}") for r in rules)
    return Recommendation(
        rank=rank,
        optimizer=c.optimizer,
        order=tech.order.value if tech.order else "",
        precision=c.precision.value,
        attention=c.attention.value,
        techniques=s.techniques,
        sharding=c.sharding.value,
        task=c.task.value,
        checkpointing=c.checkpointing.value,
        offload=c.offload.value,
        micro_batch=c.micro_batch,
        grad_accumulation=c.grad_accumulation,
        peak_memory_bytes=s.memory.total_bytes,
        headroom_bytes=ctx.target.device_memory_bytes - s.memory.total_bytes,
        host_memory_bytes=s.memory.host_bytes,
        fits=True,
        step_time_s=s.cost.seconds,
        tokens_per_s=tokens / s.cost.seconds if s.cost.seconds > 0 else 0.0,
        cost_source=s.cost.source,
        cost_components=s.cost.components,
        memory_breakdown=s.memory.breakdown,
        rule_score=s.rule_score,
        score=round(s.score, 6),
        reasons=sorted(reasons, key=lambda r: r.rule),
        config=c,
        **_time_to_target(ctx, s, cost_fn).model_dump(exclude={"steps_notes"}),
    )


def _why_not(
    ctx: Context, judge: _Judge, scored: list[_Scored], recs: list[Recommendation]
) -> list[WhyNot]:
    """The options a practitioner expects, each judged as one exact configuration."""
    base = baseline_config(ctx)
    what = "full fine-tuning" if base.task is Task.FINETUNE else "pretraining"
    expected = [
        (f"AdamW {what} in {base.precision.value}, no memory savers, no sharding", base),
    ]
    if ctx.workload.task in (Task.FINETUNE, Task.LORA, Task.QLORA):
        expected.append(
            (
                f"LoRA (r=16) with AdamW in {base.precision.value}",
                base.model_copy(update={"task": Task.LORA}),
            )
        )
        expected.append(
            (
                "QLoRA (r=16, 4-bit base) with AdamW in bf16-mixed",
                base.model_copy(update={"task": Task.QLORA, "precision": Precision.BF16_MIXED}),
            )
        )
    if "mezo" in ctx.taxonomy and ctx.workload.task is not Task.PRETRAIN:
        expected.append(
            ("MeZO (zeroth-order, inference memory)", base.model_copy(update={"optimizer": "mezo"}))
        )
    if ctx.workload.world_size > 1:
        expected.append(
            ("AdamW with ZeRO-3 sharding", base.model_copy(update={"sharding": Sharding.ZERO3}))
        )
    picked = {r.config for r in recs}
    position = {s.config: i for i, s in enumerate(scored)}
    out = []
    for label, config in expected:
        if config in picked:
            continue
        if config in position:
            s = scored[position[config]]
            out.append(
                WhyNot(
                    option=label,
                    verdict=f"fits ({format_bytes(s.memory.total_bytes)}) but ranks "
                    f"#{position[config] + 1} of {len(scored)}: {s.cost.seconds:.3g} s/step, "
                    f"{_plan_steps(ctx, config).central:.3g}x AdamW's steps to its loss, "
                    f"rule score {s.rule_score:+g}",
                )
            )
            continue
        verdict = judge(config)
        if isinstance(verdict, Rejection):
            out.append(WhyNot(option=label, verdict=verdict.reason))
        else:
            out.append(
                WhyNot(option=label, verdict="fits, but is not among the enumerated candidates")
            )
    return out


def _suggestions(ctx: Context, usable: int) -> list[Suggestion]:
    """What would fit when nothing does: more GPUs, adapters, zeroth-order, a smaller model."""
    out: list[Suggestion] = []
    base = baseline_config(ctx)
    tight = base.model_copy(update={"checkpointing": Checkpointing.FULL})
    for n in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if n <= ctx.workload.world_size:
            continue
        c = tight.model_copy(update={"gpus": n, "sharding": Sharding.ZERO3})
        m = estimate(ctx, c)
        if m.total_bytes <= usable:
            out.append(
                Suggestion(
                    change=f"{n} devices with ZeRO-3",
                    detail=f"AdamW {base.precision.value} + full checkpointing sharded over {n} "
                    f"devices needs {format_bytes(m.total_bytes)} per device",
                )
            )
            break
    if ctx.target.device_kind is not DeviceKind.CPU and ctx.target.host_memory_bytes:
        # ZeRO-Infinity style: shard and offload optimizer states and parameters to host RAM.
        for n in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            if n < ctx.workload.world_size or n > 1024:
                continue
            c = tight.model_copy(
                update={"gpus": n, "sharding": Sharding.ZERO3, "offload": Offload.OPTIMIZER_PARAMS}
            )
            m = estimate(ctx, c)
            if m.total_bytes <= usable and _host_ok(ctx, m):
                out.append(
                    Suggestion(
                        change=f"{n} devices with ZeRO-3 and CPU offload",
                        detail=f"optimizer states and parameters in host RAM "
                        f"({format_bytes(m.host_bytes)} per device), "
                        f"{format_bytes(m.total_bytes)} on each device; slower per step",
                    )
                )
                break
    for task in (Task.QLORA, Task.LORA):
        c = tight.model_copy(
            update={
                "task": task,
                "precision": Precision.BF16_MIXED if task is Task.QLORA else base.precision,
            }
        )
        m = estimate(ctx, c)
        if m.total_bytes <= usable:
            out.append(
                Suggestion(
                    change=f"{task.value.upper()} fine-tuning",
                    detail=f"{describe_config(c)} needs {format_bytes(m.total_bytes)}",
                )
            )
            break
    zo = base.model_copy(update={"optimizer": "mezo"})
    if "mezo" in ctx.taxonomy:
        m = estimate(ctx, zo)
        if m.total_bytes <= usable:
            out.append(
                Suggestion(
                    change="zeroth-order fine-tuning (MeZO)",
                    detail=f"inference-like memory: {format_bytes(m.total_bytes)};"
                    " expect many more steps",
                )
            )
    for s in (1024, 512):
        if s < ctx.workload.seq_len:
            c = tight.model_copy(update={"seq_len": s, "micro_batch": 1})
            m = estimate(ctx, c)
            if m.total_bytes <= usable:
                out.append(
                    Suggestion(
                        change=f"sequence length {s}, micro-batch 1",
                        detail=f"AdamW + full checkpointing needs {format_bytes(m.total_bytes)}",
                    )
                )
                break
    if not out:
        out.append(
            Suggestion(
                change="a smaller model or a bigger device",
                detail=f"even the frugal options exceed {format_bytes(usable)} per device",
            )
        )
    return out


def _hardware_summary(t: Target, usable: int) -> HardwareSummary:
    return HardwareSummary(
        name=t.name,
        source=t.source,
        device_kind=t.device_kind.value,
        device_memory_bytes=t.device_memory_bytes,
        usable_memory_bytes=usable,
        host_memory_bytes=t.host_memory_bytes,
        compute_capability=t.compute_capability,
        fast_bf16=t.fast_bf16,
        gpus_per_node=t.gpus_per_node,
        nodes=t.nodes,
        interconnect_gb_s=t.interconnect_gb_s,
        safety_margin=MEMORY_SAFETY_MARGIN,
    )


def _workload_summary(ctx: Context) -> WorkloadSummary:
    w = ctx.workload
    return WorkloadSummary(
        model=ctx.spec.name,
        model_id=ctx.spec.id,
        parameters=ctx.spec.parameter_count(),
        task=w.task.value,
        seq_len=w.seq_len,
        micro_batch=w.micro_batch,
        global_batch=w.effective_global_batch,
        grad_accumulation=w.accumulation,
        world_size=w.world_size,
        privacy=w.privacy.value,
        objective=w.objective.value,
    )
