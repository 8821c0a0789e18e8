"""`optadvise estimate`: the memory (and step time) of one explicit configuration."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from advisor.app.limits import check_fp8_recipe, parse_lora_targets
from advisor.app.moe_overlap import check_moe_overlap, parse_moe_balance, parse_moe_overlap
from advisor.config import (
    Adapters,
    Attention,
    BatchGeometry,
    Checkpointing,
    ContextParallelKind,
    Kernels,
    MemorySavers,
    MoeDispatcher,
    Offload,
    OptimizerImpl,
    ParallelLayout,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.cost.convergence import BatchRegime, StepsRange, plan_steps
from advisor.cost.run import RunEstimate
from advisor.errors import UserError
from advisor.hardware.profiles import DeviceKind, HardwareProfile, get_hardware_profile
from advisor.memory import (
    OVERHEAD_COMPONENTS,
    DeviceOverheads,
    MemoryEstimate,
    estimate_memory,
    gpu_overheads,
    paged_residency,
)
from advisor.memory.context import check_context_kernel
from advisor.memory.convnet import check_cnn_config
from advisor.model.spec import ModelSpec
from advisor.rules.taxonomy import Category, load_taxonomy

E = TypeVar("E", bound=Enum)


class StepTimeReport(BaseModel):
    """Predicted time of one training step, by component."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: str = Field(description="measured, analytic or mixed")
    components: dict[str, Any]


class PhaseReport(BaseModel):
    """One phase of the step: the components alive in it (overheads folded) and their sum."""

    model_config = ConfigDict(frozen=True)

    name: str
    components: dict[str, int]
    total_bytes: int


class Alternative(BaseModel):
    """The same configuration under another kernel choice, when it changes the verdict."""

    model_config = ConfigDict(frozen=True)

    change: str = Field(description="what is switched, e.g. 'a fused cross-entropy'")
    stack: Stack
    fused_loss: bool
    total_bytes: int
    saved_bytes: int = Field(description="bytes saved against this configuration")
    fits: bool | None


class RecomputeCase(BaseModel):
    """The same configuration at one activation-checkpointing level (when it was unstated)."""

    model_config = ConfigDict(frozen=True)

    checkpointing: Checkpointing = Field(description="none, selective or full")
    total_bytes: int = Field(description="per-device peak memory at this level, bytes")
    fits: bool | None = Field(description="peak <= device memory (None: no device)")
    step_seconds: float | None = Field(
        default=None, description="predicted step time at this level (None: not predicted)"
    )


class EstimateReport(BaseModel):
    """What `optadvise estimate --json` prints (a stable contract)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = 1
    model: str
    model_id: str
    config: TrainingConfig
    stack: Stack = Field(description="the kernel stack the numbers assume (hf or fused)")
    total_bytes: int = Field(
        description="per-device peak memory: the largest phase, bytes; reserved_bytes plus "
        "the CUDA context and NCCL's buffers (what nvidia-smi shows; what the device must "
        "hold; fits compares this)"
    )
    allocated_bytes: int = Field(
        description="torch.cuda.max_memory_allocated's equivalent: the peak phase's tensors "
        "and cuBLAS workspace, bytes (on a CPU: the tensors, as total_bytes)"
    )
    reserved_bytes: int = Field(
        description="torch.cuda.max_memory_reserved's equivalent: allocated_bytes plus the "
        "caching allocator's slack (allocator_reserve), bytes"
    )
    peak_phase: str = Field(description="the phase whose sum is total_bytes")
    breakdown: dict[str, int] = Field(
        description="component -> full bytes (phases say which coexist). `overhead` is the "
        "sum of the named fixed terms in overhead_breakdown; `dualpipe_weights` (only under "
        "--moe-overlap dualpipe) is DualPipe's second copy of the stage's parameters "
        "(DeepSeek-V3 report, arXiv:2412.19437, sec. 3.2.1)"
    )
    phases: list[PhaseReport] = Field(
        description="forward_end, loss_backward, layer_backward, optimizer_step: the "
        "components alive in each and their sum"
    )
    overhead_breakdown: dict[str, int] = Field(
        description="the fixed per-device terms: CUDA context, NCCL communicator buffers "
        "(multi-GPU layouts), cuBLAS workspace, allocator reserve"
    )
    parameters: int
    active_parameters: int = Field(
        description="parameters one token goes through: all but the routed experts it is not "
        "sent to (= parameters for a dense model; DeepSeek-V3 37.6B of 671B)"
    )
    trainable_parameters: int
    host_bytes: int = Field(description="bytes offload keeps in host memory")
    nvme_bytes: int = Field(default=0, description="bytes NVMe offload keeps on NVMe")
    paged_bytes: int = Field(
        default=0,
        description="optimizer states a paged optimizer keeps in CUDA unified memory, not in "
        "total_bytes (torch's max_memory_allocated/reserved never count them)",
    )
    paged_resident_bytes: int | None = Field(
        default=None,
        description="of paged_bytes, what stays in device memory beside the peak (None: no "
        "device to check against)",
    )
    paged_host_bytes: int | None = Field(
        default=None,
        description="of paged_bytes, what the driver pages out to host memory; when it is not "
        "0, every step migrates all paged states in and out over PCIe (step_time's "
        "paged_states)",
    )
    notes: list[str]
    device: str = Field(description="overheads assumed: cuda or cpu")
    hardware: str | None = Field(default=None, description="profile the fit was checked against")
    device_name: str | None = Field(
        default=None,
        description="the device the fit was checked against: the profile's name, or the probed "
        "device when no --hardware is given",
    )
    device_memory_bytes: int | None = None
    host_memory_bytes: int | None = None
    fits: bool | None = Field(
        default=None,
        description="peak <= device memory (None: no device). With --checkpointing unstated: "
        "whether some level in recompute_range fits",
    )
    recompute_range: list[RecomputeCase] = Field(
        default_factory=list,
        description="with --checkpointing unstated: the peak, verdict and step time with no, "
        "selective and full recompute (the report's figures are at the least level that "
        "fits, or none when none fits); empty when it was given",
    )
    host_fits: bool | None = None
    step_time: StepTimeReport | None = None
    image_size: int | None = Field(
        default=None,
        description="an image model's input resolution in pixels (micro_batch counts images; "
        "a CNN's seq_len is 1, a ViT's its patch tokens and class token); None for text",
    )
    images_per_s: float | None = Field(
        default=None,
        description="an image model's images per second over all data-parallel devices "
        "(micro-batch x accumulation x data-parallel degree / step time); None for text or "
        "without a step time",
    )
    alternatives: list[Alternative] = Field(
        default_factory=list,
        description="other kernel choices that change whether this fits, with their peak",
    )
    steps_vs_adamw: StepsRange | None = Field(
        default=None,
        description="steps to reach AdamW's loss relative to AdamW at this model size "
        "(times LoRA's/QLoRA's factor for adapter tasks); see advisor/cost/convergence.py",
    )
    run: RunEstimate | None = Field(
        default=None,
        description="the whole run under --tokens (or --epochs x --dataset-tokens): steps, "
        "wall time, GPU-hours, energy, cost; absent without a budget",
    )


def _enum(kind: type[E], value: str, flag: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(v.value) for v in kind)  # type: ignore[attr-defined]
        raise UserError(f"invalid {flag} {value!r}", f"use one of: {allowed}") from None


# Hugging Face module names (and the embedding's) accepted for the block matrices.
def build_config(
    *,
    task: str,
    optimizer: str,
    precision: str,
    attention: str,
    checkpointing: str,
    micro_batch: int,
    seq_len: int,
    gpus: int,
    sharding: str,
    offload: str,
    lora_rank: int,
    dp_sgd: bool,
    stack: str = "hf",
    fused_loss: bool = False,
    grad_accumulation: int = 1,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    virtual_stages: int = 1,
    expert_parallel: int = 1,
    context_parallel: int = 1,
    context_parallel_kind: str = "ring",
    expert_tensor_parallel: int | None = None,
    moe_dispatcher: str = "alltoall",
    capacity_factor: float | None = None,
    pad_to_capacity: bool = False,
    moe_overlap: str = "none",
    moe_balance: str = "loss-free",
    optimizer_in_backward: bool = False,
    activation_offload: bool = False,
    ac_frequency: int | None = None,
    fused_norm: bool = False,
    lora_targets: str | None = None,
    optimizer_impl: str = "auto",
    lora_dropout: float = 0.0,
    dropout: bool = False,
    fp8_recipe: str | None = None,
) -> TrainingConfig:
    """Validate flag values into a configuration.

    Raises:
        UserError: naming the flag and its allowed values.
    """
    tax = load_taxonomy()
    optimizers = [t.id for t in tax.by_category(Category.OPTIMIZER)]
    if optimizer not in optimizers:
        tax.get(optimizer)  # raises with "did you mean"
        raise UserError(
            f"{optimizer!r} is not an optimizer", "use one of: " + ", ".join(optimizers)
        )
    impl = _enum(OptimizerImpl, optimizer_impl, "--optimizer-impl")
    memory = tax.get(optimizer).memory
    if impl is OptimizerImpl.FUSED and memory is not None and not memory.fused_step:
        raise UserError(
            f"{optimizer} has no fused implementation",
            "use --optimizer-impl auto or foreach",
        )
    ckpt = _enum(Checkpointing, checkpointing, "--checkpointing")
    if ac_frequency is not None and ckpt is not Checkpointing.SELECTIVE_LAYER:
        raise UserError(
            "--ac-frequency applies to --checkpointing selective-layer only",
            "drop --ac-frequency or use --checkpointing selective-layer",
        )
    if ac_frequency is not None and ac_frequency < 1:
        raise UserError(
            f"invalid --ac-frequency {ac_frequency}: checkpoint every n-th block, n >= 1",
            "use 1 (every block, as full) or more (2 = every second block)",
        )
    if pad_to_capacity and capacity_factor is None:
        raise UserError(
            "--pad-to-capacity pads each expert's batch to its capacity, but no "
            "--capacity-factor is given",
            "give --capacity-factor (e.g. 1.0) or drop --pad-to-capacity",
        )
    recipe = check_fp8_recipe(fp8_recipe, precision)
    overlap = parse_moe_overlap(moe_overlap)
    check_moe_overlap(
        overlap,
        expert_parallel=expert_parallel,
        dispatcher=_enum(MoeDispatcher, moe_dispatcher, "--moe-dispatcher"),
        checkpointing=ckpt,
        pipeline_parallel=pipeline_parallel,
        virtual_stages=virtual_stages,
        grad_accumulation=grad_accumulation,
        precision=_enum(Precision, precision, "--precision"),
    )
    try:
        return TrainingConfig(
            task=_enum(Task, task, "--task"),
            optimizer=optimizer,
            precision=_enum(Precision, precision, "--precision"),
            dropout=dropout,
            dp_sgd=dp_sgd,
            batch=BatchGeometry(
                micro_batch=micro_batch, seq_len=seq_len, grad_accumulation=grad_accumulation
            ),
            layout=ParallelLayout(
                data_parallel=gpus,
                tensor_parallel=tensor_parallel,
                pipeline_parallel=pipeline_parallel,
                virtual_stages=virtual_stages,
                expert_parallel=expert_parallel,
                context_parallel=context_parallel,
                context_parallel_kind=_enum(
                    ContextParallelKind, context_parallel_kind, "--context-parallel-kind"
                ),
                sharding=_enum(Sharding, sharding, "--sharding"),
                expert_tensor_parallel=expert_tensor_parallel,
                moe_dispatcher=_enum(MoeDispatcher, moe_dispatcher, "--moe-dispatcher"),
                capacity_factor=capacity_factor,
                pad_to_capacity=pad_to_capacity,
                moe_overlap=overlap,
                moe_balance=parse_moe_balance(moe_balance),
            ),
            savers=MemorySavers(
                checkpointing=ckpt,
                ac_frequency=2 if ac_frequency is None else ac_frequency,
                offload=_enum(Offload, offload, "--offload"),
                optimizer_in_backward=optimizer_in_backward,
                activation_offload=activation_offload,
            ),
            kernels=Kernels(
                optimizer_impl=impl,
                attention=_enum(Attention, attention, "--attention"),
                stack=_enum(Stack, stack, "--stack"),
                fused_loss=fused_loss,
                fused_norm=fused_norm,
                fp8_recipe=recipe,
            ),
            adapters=Adapters(
                lora_rank=lora_rank,
                lora_dropout=lora_dropout,
                **(
                    {}
                    if lora_targets is None
                    else {"lora_targets": parse_lora_targets(lora_targets)}
                ),
            ),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(
            f"invalid {err['loc'][0]}: {err['msg']}", "see optadvise estimate --help"
        ) from None


def _images_per_s(
    spec: ModelSpec, config: TrainingConfig, step_time: StepTimeReport | None
) -> float | None:
    if not spec.is_image or step_time is None or step_time.seconds <= 0:
        return None
    b, dp = config.batch, config.layout.data_parallel
    return b.micro_batch * b.grad_accumulation * dp / step_time.seconds


def _carried_over(profile: HardwareProfile | None, step_time: StepTimeReport | None) -> list[str]:
    if profile is None or step_time is None or profile.efficiency is None:
        return []
    said = profile.efficiency.carried_over()
    return [said] if said else []


def _microscaling(profile: HardwareProfile | None, config: TrainingConfig) -> list[str]:
    """How an MXFP8 / NVFP4 plan's GEMMs are priced (advisor/cost/microscaling.py)."""
    from advisor.cost.microscaling import MICROSCALING, MICROSCALING_NOTE, block_scaled_peak

    peak = block_scaled_peak(profile, config.precision) if profile is not None else None
    if config.precision not in MICROSCALING or peak is None:
        return []
    return [MICROSCALING_NOTE.format(precision=config.precision.value, peak=peak / 1e12)]


def _fp8_recipe_note(config: TrainingConfig, step_time: StepTimeReport | None) -> list[str]:
    """How a chosen FP8 recipe is priced (advisor/cost/fp8recipes.py); none by default."""
    from advisor.cost.fp8recipes import RECIPE_NOTE

    recipe = config.kernels.fp8_recipe
    if config.precision is not Precision.FP8_MIXED or recipe is None or step_time is None:
        return []
    return [RECIPE_NOTE[recipe]]


def estimate_report(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    hardware: str | None = None,
    device: str = "cuda",
    host_memory_bytes: int | None = None,
    step_time: StepTimeReport | None = None,
    local_device: tuple[str, int] | None = None,
) -> EstimateReport:
    """The memory of one configuration, checked against a profile when one is named, else
    against ``local_device`` (the probed device's name and memory) when given.

    Raises:
        UserError: for an unknown optimizer, profile or device kind.
    """
    profile = get_hardware_profile(hardware) if hardware else None
    if device not in ("cuda", "cpu"):
        raise UserError(f"invalid --device {device!r}", "use cuda or cpu")
    on_cpu = device == "cpu" or (profile is not None and profile.kind is DeviceKind.CPU)
    overheads = (
        DeviceOverheads.cpu()
        if on_cpu
        else gpu_overheads(profile.id, profile.link_domain())
        if profile
        else gpu_overheads(None)
    )
    taxonomy = load_taxonomy()
    tech = taxonomy.get(config.optimizer)
    check_context_kernel(config)
    if spec.cnn is not None:
        check_cnn_config(spec.name, config)
    m = estimate_memory(spec, config, optimizer=tech, device=overheads)
    device_mem = profile.memory_bytes if profile else None
    device_name = profile.name if profile else None
    if profile is None and local_device is not None:
        device_name, device_mem = local_device
    alternatives = [
        Alternative(
            change=change,
            stack=alt.kernels.stack,
            fused_loss=alt.kernels.fused_loss,
            total_bytes=am.total_bytes,
            saved_bytes=m.total_bytes - am.total_bytes,
            fits=None if device_mem is None else am.total_bytes <= device_mem,
        )
        for change, alt, am in kernel_alternatives(spec, config, tech, overheads, m.total_bytes)
        if device_mem is None or (am.total_bytes <= device_mem) != (m.total_bytes <= device_mem)
    ]
    host = host_memory_bytes
    if profile is not None and profile.host_memory_gib is not None:
        host = int(profile.host_memory_gib * 1024**3)
    residency = (
        paged_residency(m.paged_bytes, m.total_bytes, device_mem)
        if m.paged_bytes and device_mem is not None
        else None
    )
    return EstimateReport(
        model=spec.name,
        model_id=spec.id,
        config=config,
        stack=m.stack,
        total_bytes=m.total_bytes,
        allocated_bytes=m.allocated_bytes,
        reserved_bytes=m.reserved_bytes,
        peak_phase=m.peak_phase,
        breakdown=_with_overhead(m.breakdown),
        phases=[
            PhaseReport(
                name=p.name, components=_with_overhead(p.components), total_bytes=p.total_bytes
            )
            for p in m.phases
        ],
        overhead_breakdown={k: m.breakdown[k] for k in OVERHEAD_COMPONENTS},
        parameters=m.parameters,
        active_parameters=spec.active_parameter_count(),
        trainable_parameters=m.trainable_parameters,
        host_bytes=m.host_bytes,
        nvme_bytes=m.nvme_bytes,
        paged_bytes=m.paged_bytes,
        paged_resident_bytes=residency.resident_bytes if residency else None,
        paged_host_bytes=residency.host_bytes if residency else None,
        notes=m.notes
        + _carried_over(profile, step_time)
        + _microscaling(profile, config)
        + _fp8_recipe_note(config, step_time),
        device="cpu" if on_cpu else "cuda",
        hardware=profile.id if profile else None,
        device_name=device_name,
        device_memory_bytes=device_mem,
        host_memory_bytes=host,
        fits=None if device_mem is None else m.total_bytes <= device_mem,
        host_fits=None if host is None or m.host_bytes == 0 else m.host_bytes <= host,
        step_time=step_time,
        image_size=spec.image_size,
        images_per_s=_images_per_s(spec, config, step_time),
        alternatives=alternatives,
        steps_vs_adamw=plan_steps(
            taxonomy,
            config.optimizer,
            config.task,
            m.parameters,
            regime=BatchRegime(global_batch=_global_batch(config), arch=spec.arch),
            image=spec.is_image,
        )
        if tech.steps_vs_adamw is not None
        else None,
    )


def with_recompute_range(report: EstimateReport, cases: list[RecomputeCase]) -> EstimateReport:
    """``report`` (computed at the least recompute level that fits, or without recompute
    when none fits) answered as a range over ``cases``: a note says which levels fit, the
    step times they span and the level the figures are at."""
    fitting = [c for c in cases if c.fits]
    level = report.config.savers.checkpointing
    times = [c.step_seconds for c in cases if c.step_seconds is not None]
    said = (
        "--checkpointing unstated: "
        + (
            "fits with " + ", ".join(c.checkpointing.value for c in fitting)
            if fitting
            else "does not fit at any recompute level"
        )
        + (
            f"; step time {min(times):.3g}-{max(times):.3g} s across none/selective/full"
            if len(times) > 1
            else ""
        )
        + (
            f" (the figures above are at {level.value}, the least recompute that fits)"
            if fitting
            else " (the figures above assume none)"
        )
    )
    return report.model_copy(update={"recompute_range": cases, "notes": [*report.notes, said]})


def kernel_alternatives(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Any,
    overheads: DeviceOverheads,
    base: int,
) -> list[tuple[str, TrainingConfig, MemoryEstimate]]:
    """The same configuration with the memory-saving kernel choices it does not use yet.

    A fused linear cross-entropy (Liger) drops the logits on any stack; the fused stack
    (FlashAttention, fused norms/activations, fused cross-entropy) changes every block.

    Args:
        spec: the model.
        config: the configuration as estimated.
        optimizer: its optimizer's taxonomy entry.
        overheads: the device overheads the estimate assumed.
        base: the configuration's own peak, bytes.

    Returns:
        ``(what changed, configuration, its estimate)`` for each choice that saves memory.
    """
    options: list[tuple[str, TrainingConfig]] = []
    if not config.kernels.fused_loss:
        options.append(("a fused linear cross-entropy", config.with_(fused_loss=True)))
    if config.kernels.stack is Stack.HF:
        options.append(("the fused kernel stack", config.with_(stack=Stack.FUSED)))
    out = []
    for change, alt in options:
        est = estimate_memory(spec, alt, optimizer=optimizer, device=overheads)
        if est.total_bytes < base:
            out.append((change, alt, est))
    return out


def _with_overhead(breakdown: dict[str, int]) -> dict[str, int]:
    """The breakdown with the fixed terms folded into one named `overhead` entry."""
    out = {k: v for k, v in breakdown.items() if k not in OVERHEAD_COMPONENTS}
    out["overhead"] = sum(breakdown.get(k, 0) for k in OVERHEAD_COMPONENTS)
    return out


def check_hardware_support(
    config: TrainingConfig, *, device_kind: str, compute_capability: float | None, where: str
) -> None:
    """Refuse a configuration the hardware cannot run, as `recommend` excludes it (the
    taxonomy's ``requires``: device kinds and a minimum CUDA compute capability).

    Args:
        config: the configuration the flags built.
        device_kind: cuda, cpu or mps: the device the estimate is for.
        compute_capability: the CUDA device's, when known (a what-if ``--device cuda`` on a
            machine without a GPU has none, and only the device kind is checked).
        where: the device in words, for the message (``the t4 profile``).

    Raises:
        UserError: naming the technique, what it requires and the device.
    """
    from advisor.rules.taxonomy import config_technique_id

    taxonomy = load_taxonomy()
    values = (
        config.task,
        config.precision,
        config.kernels.attention,
        config.savers.checkpointing,
        config.layout.sharding,
        config.savers.offload,
    )
    ids = [config.optimizer, *(config_technique_id(v) for v in values)]
    for tid in ids:
        if tid is None or tid not in taxonomy:
            continue
        tech = taxonomy.get(tid)
        req = tech.requires
        kinds = [str(getattr(k, "value", k)) for k in req.device_kinds]
        if kinds and device_kind not in kinds:
            raise UserError(
                f"{tech.name} ({tid}) needs a {' or '.join(kinds)} device; {where} is "
                f"{device_kind}",
                "pick another technique, or --hardware with such a device",
            )
        low = req.min_compute_capability
        cuda_cc = compute_capability if device_kind == "cuda" else None
        if low is not None and cuda_cc and cuda_cc < low:
            raise UserError(
                f"{tech.name} ({tid}) needs compute capability >= {low:g}; {where} has {cuda_cc:g}",
                "pick another technique, or --hardware with a newer GPU",
            )
    cuda_cc = compute_capability if device_kind == "cuda" else None
    if config.precision is Precision.FP8_MIXED and cuda_cc:
        from advisor.cost.fp8recipes import recipe_refusal

        why = recipe_refusal(config.kernels.fp8_recipe, cuda_cc)
        if why is not None:
            raise UserError(
                f"{why}; {where} has {cuda_cc:g}",
                "use --fp8-recipe tensorwise, rowwise or delayed, or --hardware with a newer GPU",
            )


def _global_batch(config: TrainingConfig) -> int:
    """Samples per optimizer step of one configuration (micro-batch x accumulation x the
    data-parallel replicas): past the critical batch the step factor changes."""
    b = config.batch
    return b.micro_batch * b.grad_accumulation * config.layout.data_parallel
