"""The plan space: the workload, the global batch, and the dimensions a plan varies."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import (
    Adapters,
    Attention,
    BatchGeometry,
    Checkpointing,
    ContextParallelKind,
    Fp8Recipe,
    Kernels,
    MemorySavers,
    MoeBalance,
    MoeOverlap,
    Offload,
    ParallelLayout,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.cost.convergence import (
    BatchRegime,
    ConvergenceCache,
    StepsRange,
    objective_steps,
    plan_steps,
)
from advisor.errors import UserError
from advisor.hardware.profiles import DeviceKind
from advisor.hardware.target import Target
from advisor.memory import (
    DeviceOverheads,
    MemoryEstimate,
    MemoryMemo,
    MemoryTotals,
    estimate_memory,
    gpu_overheads,
    memory_totals,
)
from advisor.model.spec import ModelSpec
from advisor.plan.layout import Layout, enumerate_layouts, moe_layouts
from advisor.rules.candidates import runnable_attention
from advisor.rules.ruleset import RuleSet
from advisor.rules.taxonomy import Order, Taxonomy, Technique
from advisor.units import GIB

# NOTE: a configuration "fits" when its estimated peak stays within this share of device
# memory. The memory model names every term it knows; the margin covers what it cannot
# know (other processes on the GPU, allocator behaviour of a particular torch build,
# framework buffers), and is stated in every report.
MEMORY_SAFETY_MARGIN = 0.90
# Offloaded states must fit this share of the host RAM (or NVMe) available per device.
HOST_SAFETY_MARGIN = 0.80


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
    micro_batch: int | None = Field(default=None, ge=1, description="None: searched")
    global_batch: int | None = Field(default=None, ge=1, description="samples per step")
    global_batch_tokens: int | None = Field(default=None, ge=1, description="tokens per step")
    gpus: int = Field(default=1, ge=1, description="devices per node")
    nodes: int = Field(default=1, ge=1)
    privacy: Privacy = Privacy.NONE
    objective: Objective = Objective.BALANCED
    sparse_features: bool = False
    stack: Stack = Stack.HF
    tensor_parallel: int | None = Field(default=None, ge=1, description="pinned (--tp)")
    pipeline_parallel: int | None = Field(default=None, ge=1, description="pinned (--pp)")
    context_parallel: int | None = Field(
        default=None, ge=1, description="pinned (--context-parallel)"
    )
    context_parallel_kind: ContextParallelKind | None = Field(
        default=None, description="pinned (--context-parallel-kind)"
    )
    expert_parallel: int | None = Field(
        default=None, ge=1, description="pinned (--expert-parallel)"
    )
    expert_tensor_parallel: int | None = Field(
        default=None, ge=1, description="pinned (--expert-tensor-parallel)"
    )
    lora_targets: tuple[str, ...] | None = Field(
        default=None, description="what LoRA/QLoRA plans adapt (--lora-targets; None: default)"
    )
    fp8_recipe: Fp8Recipe | None = Field(
        default=None, description="the recipe fp8-mixed plans scale by (--fp8-recipe)"
    )
    moe_overlap: MoeOverlap | None = Field(default=None, description="pinned (--moe-overlap)")
    moe_balance: MoeBalance = Field(default=MoeBalance.LOSS_FREE, description="--moe-balance")

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes


class GlobalBatch(BaseModel):
    """Samples per optimizer step, and where the number comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(ge=1)
    tokens: int = Field(ge=1)
    source: str
    requested: bool = Field(description="the user gave it (--global-batch[-tokens])")


# Published global batches, in tokens, for pre-training decoders by size (GPT-3: Brown et
# al. 2020, Table 2.1: 0.5M tokens up to 760M, 1M at 1.3B-2.7B, 2M at 6.7B-13B, 3.2M at
# 175B; Llama 2: Touvron et al. 2023, 4M tokens at 7B-70B; Llama 3: Dubey et al. 2024,
# 4M rising to 16M tokens at 405B).
_PRETRAIN_TOKENS = [
    (1e9, 2**19, "GPT-3 Table 2.1 (Brown et al. 2020): 0.5M tokens below 1B"),
    (4e9, 2**20, "GPT-3 Table 2.1 (Brown et al. 2020): 1M tokens at 1.3B-2.7B"),
    (2e10, 2**21, "GPT-3 Table 2.1 (Brown et al. 2020): 2M tokens at 6.7B-13B"),
    (float("inf"), 2**22, "Llama 2/3 (Touvron et al. 2023; Dubey et al. 2024): 4M tokens"),
]
# Instruction fine-tuning: Alpaca trained LLaMA 7B at 128 sequences per step (Taori et al.
# 2023); LIMA used 32-64, HF TRL/PEFT recipes 64-128.
_FINETUNE_SAMPLES = (128, "Alpaca (Taori et al. 2023): 128 sequences per step")
# Image models, in images: ResNet on ImageNet at 256 (He et al. 2016, sec. 3.4; the
# reference batch of Goyal et al. 2017's scaling rule); ViT pre-training at 4096, fine-tuning
# at 512 (Dosovitskiy et al. 2021, sec. 4.1; BiT's fine-tuning batch, Kolesnikov et al. 2020).
_IMAGE_SAMPLES = {
    ("cnn", True): (256, "ResNet (He et al. 2016, sec. 3.4): 256 images per step"),
    ("cnn", False): (512, "BiT fine-tuning (Kolesnikov et al. 2020): 512 images per step"),
    ("vit", True): (4096, "ViT pre-training (Dosovitskiy et al. 2021, sec. 4.1): 4096 images"),
    ("vit", False): (512, "ViT fine-tuning (Dosovitskiy et al. 2021, sec. 4.1): 512 images"),
}


def resolve_global_batch(spec: ModelSpec, workload: Workload) -> GlobalBatch:
    """The global batch to plan for: the user's, or a published default for the task and size.

    Raises:
        UserError: when both --global-batch and --global-batch-tokens are given.
    """
    w, s = workload, workload.seq_len
    if w.global_batch is not None and w.global_batch_tokens is not None:
        raise UserError(
            "--global-batch and --global-batch-tokens both set the global batch",
            "give only one of them",
        )
    if w.global_batch is not None:
        return GlobalBatch(
            samples=w.global_batch,
            tokens=w.global_batch * s,
            source="--global-batch",
            requested=True,
        )
    image = spec.is_image
    if w.global_batch_tokens is not None and image:
        raise UserError(
            f"--global-batch-tokens counts tokens; {spec.name} is an image model",
            "give the batch in images with --global-batch",
        )
    if image:
        kind = "cnn" if spec.cnn is not None else "vit"
        samples, source = _IMAGE_SAMPLES[kind, w.task is Task.PRETRAIN]
        return GlobalBatch(
            samples=samples, tokens=samples * s, source=f"default: {source}", requested=False
        )
    if w.global_batch_tokens is not None:
        samples = max(1, round(w.global_batch_tokens / s))
        return GlobalBatch(
            samples=samples,
            tokens=samples * s,
            source=f"--global-batch-tokens {w.global_batch_tokens} / {s} tokens per sample",
            requested=True,
        )
    if w.task is Task.PRETRAIN:
        n = spec.parameter_count()
        tokens, source = next((t, src) for limit, t, src in _PRETRAIN_TOKENS if n < limit)
        samples = max(1, round(tokens / s))
        return GlobalBatch(
            samples=samples, tokens=samples * s, source=f"default: {source}", requested=False
        )
    samples, source = _FINETUNE_SAMPLES
    return GlobalBatch(
        samples=samples, tokens=samples * s, source=f"default: {source}", requested=False
    )


@dataclass(frozen=True, kw_only=True)
class Context:
    """Everything the search and the ranking read, bundled once.

    NOTE: a frozen dataclass, not a pydantic model: its fields are validated models
    already, and a pydantic schema over the model spec, the taxonomy and the rules took
    ~15 ms of every start (the plan search's own values are dataclasses too).
    """

    spec: ModelSpec
    workload: Workload
    target: Target
    taxonomy: Taxonomy
    ruleset: RuleSet
    batch: GlobalBatch | None = None
    convergence: ConvergenceCache | None = None  # calibrate --convergence on this device

    @property
    def global_batch(self) -> GlobalBatch:
        if self.batch is not None:
            return self.batch
        return resolve_global_batch(self.spec, self.workload)

    @cached_property
    def memory_memo(self) -> MemoryMemo:
        """The memory model's memo for this context's model, held as long as the context
        (one command): the plan search asks for the same pieces thousands of times. A copy
        (:meth:`model_copy`) starts its own."""
        return MemoryMemo(self.spec)

    @cached_property
    def device_overheads(self) -> DeviceOverheads:
        """:func:`overheads` of this context's target, built once per context."""
        return overheads(self.target)

    def model_copy(self, *, update: Mapping[str, Any]) -> Context:
        """A copy with ``update``'s fields replaced (as a pydantic model's)."""
        return replace(self, **update)


def usable_memory(target: Target) -> int:
    """Device memory a configuration may use (the safety margin applied)."""
    return int(target.device_memory_bytes * MEMORY_SAFETY_MARGIN)


def host_usable(target: Target) -> int:
    """Host RAM per device an offloading plan may fill."""
    return int(target.host_memory_bytes * HOST_SAFETY_MARGIN)


def nvme_usable(target: Target) -> int:
    """NVMe per device an NVMe-offloading plan may fill."""
    return int(target.nvme_bytes * HOST_SAFETY_MARGIN)


# Built once (frozen): the search asks for it thousands of times.
_CPU_OVERHEADS = DeviceOverheads.cpu()


def overheads(target: Target) -> DeviceOverheads:
    """The device's fixed memory overheads: none on a CPU, the GPU's CUDA context and cuBLAS
    workspaces (memory.cuda_context) and its NCCL fabric (memory.nccl) on a CUDA device."""
    if target.device_kind is DeviceKind.CPU:
        return _CPU_OVERHEADS
    return gpu_overheads(target.profile.id, target.profile.link_domain())


def estimate(ctx: Context, config: TrainingConfig) -> MemoryEstimate:
    """The memory model for one configuration on the target."""
    return estimate_memory(
        ctx.spec,
        config,
        optimizer=ctx.taxonomy.get(config.optimizer),
        device=ctx.device_overheads,
        memo=ctx.memory_memo,
    )


def estimate_totals(ctx: Context, config: TrainingConfig) -> MemoryTotals:
    """:func:`estimate`'s peak and offloaded bytes alone (a fit test's inputs), cheaper."""
    return memory_totals(
        ctx.spec,
        config,
        optimizer=ctx.taxonomy.get(config.optimizer),
        device=ctx.device_overheads,
        memo=ctx.memory_memo,
    )


def host_fits(ctx: Context, config: TrainingConfig, m: MemoryEstimate | MemoryTotals) -> str | None:
    """Why the offloaded states do not fit the target's host (None: they do)."""
    from advisor.units import format_bytes

    nvme = getattr(m, "nvme_bytes", None)
    host = m.host_bytes
    if config.savers.offload.nvme and nvme is None:
        # The memory model has not split NVMe from host RAM: what it offloads goes to NVMe.
        nvme, host = host, 0
    if host > host_usable(ctx.target):
        return (
            f"offloads {format_bytes(host)} per device > {format_bytes(host_usable(ctx.target))}"
            f" of host RAM ({ctx.target.host_source})"
        )
    if nvme and nvme > nvme_usable(ctx.target):
        return (
            f"offloads {format_bytes(nvme)} per device to NVMe > "
            f"{format_bytes(nvme_usable(ctx.target))} available"
        )
    return None


def default_precision(target: Target) -> Precision:
    """The precision a plain plan trains in: bf16-mixed where bf16 is fast; fp16-mixed with
    dynamic loss scaling on GPUs with fast fp16 and no bf16 (Volta, Turing: Micikevicius et
    al. 2018); fp32 elsewhere."""
    if target.fast_bf16:
        return Precision.BF16_MIXED
    if target.fast_fp16 and target.device_kind is not DeviceKind.CPU:
        return Precision.FP16_MIXED
    return Precision.FP32


def quantized_base_precision(target: Target) -> Precision:
    """QLoRA's compute precision: bf16 where the device has it, else fp16
    (``bnb_4bit_compute_dtype=torch.float16``, which bitsandbytes' 4-bit matmuls accept)."""
    return Precision.BF16_MIXED if target.fast_bf16 else Precision.FP16_MIXED


def default_attention(ctx: Context) -> Attention:
    """The fastest attention kernel the target runs (FlashAttention-2 from cc 8.0, the
    memory-efficient SDPA kernel on Volta and Turing)."""
    t = ctx.target
    return runnable_attention(ctx.taxonomy, t.device_kind, t.compute_capability)


def baseline_config(ctx: Context) -> TrainingConfig:
    """AdamW in the target's default precision (bf16-mixed; fp16-mixed without bf16; fp32
    where 16-bit is slow), the fastest attention kernel it runs, no memory savers, no
    sharding."""
    precision = default_precision(ctx.target)
    task = (
        ctx.workload.task if ctx.workload.task in (Task.PRETRAIN, Task.FINETUNE) else Task.FINETUNE
    )
    return TrainingConfig(
        task=task,
        optimizer="adamw",
        precision=precision,
        batch=BatchGeometry(
            micro_batch=ctx.workload.micro_batch or 1, seq_len=ctx.workload.seq_len
        ),
        layout=ParallelLayout(data_parallel=ctx.workload.world_size, sharding=Sharding.NONE),
        savers=MemorySavers(checkpointing=Checkpointing.NONE, offload=Offload.NONE),
        # A CNN has no attention: its plans carry eager, the one value of its space.
        kernels=Kernels(
            attention=Attention.EAGER if ctx.spec.cnn is not None else default_attention(ctx),
            stack=ctx.workload.stack,
            fp8_recipe=ctx.workload.fp8_recipe,
        ),
        adapters=workload_adapters(ctx),
    )


def workload_adapters(ctx: Context) -> Adapters:
    """The workload's LoRA targets as adapters (the default targets where it names none)."""
    targets = ctx.workload.lora_targets
    return Adapters() if targets is None else Adapters(lora_targets=targets)


def describe_config(config: TrainingConfig) -> str:
    """A short human name for a configuration."""
    savers, kernels, layout = config.savers, config.kernels, config.layout
    parts = [
        config.optimizer,
        config.precision.value,
        f"{kernels.attention.value} attention",
    ]
    if config.task in (Task.LORA, Task.QLORA):
        parts.insert(0, f"{config.task.value} r={config.adapters.lora_rank}")
    elif config.task is Task.FINETUNE:
        parts.insert(0, "full fine-tune")
    else:
        parts.insert(0, "pretrain")
    if savers.checkpointing is not Checkpointing.NONE:
        parts.append(f"{savers.checkpointing.value} checkpointing")
    if savers.activation_offload:
        parts.append("activation offload")
    if savers.offload is not Offload.NONE:
        parts.append(f"offload {savers.offload.value}")
    if savers.optimizer_in_backward:
        parts.append("optimizer in backward")
    if kernels.fused_loss and kernels.stack is Stack.HF:
        parts.append("fused cross-entropy")
    if layout.tensor_parallel > 1:
        parts.append(f"tp{layout.tensor_parallel}")
    if layout.pipeline_parallel > 1:
        v = f"x{layout.virtual_stages}" if layout.virtual_stages > 1 else ""
        parts.append(f"pp{layout.pipeline_parallel}{v}")
    if layout.context_parallel > 1:
        kind = "" if layout.context_parallel_kind is ContextParallelKind.RING else " ulysses"
        parts.append(f"cp{layout.context_parallel}{kind}")
    if layout.expert_parallel > 1:
        parts.append(f"ep{layout.expert_parallel}")
    if layout.sharding is not Sharding.NONE:
        parts.append(layout.sharding.value)
    return ", ".join(parts)


@dataclass(frozen=True)
class Savers:
    """One combination of the memory savers that change neither the math nor the layout."""

    checkpointing: Checkpointing = Checkpointing.NONE
    offload: Offload = Offload.NONE
    fused_loss: bool = False
    activation_offload: bool = False
    optimizer_in_backward: bool = False

    @functools.cached_property
    def record(self) -> MemorySavers:
        """These savers as a configuration holds them (the default ac_frequency)."""
        return MemorySavers(
            checkpointing=self.checkpointing,
            offload=self.offload,
            activation_offload=self.activation_offload,
            optimizer_in_backward=self.optimizer_in_backward,
        )

    @functools.cached_property
    def _kernels(self) -> dict[Kernels, Kernels]:
        # The kernels of the configurations these savers were applied to, with the fused
        # loss set as they set it: the ladders apply one rung to thousands of configurations
        # that share a few kernel records (a memo of this rung, for the search's lifetime).
        return {}

    def apply(self, config: TrainingConfig) -> TrainingConfig:
        """``config`` with these savers (its ac_frequency kept)."""
        kernels = self._kernels.get(config.kernels)
        if kernels is None:
            kernels = self._kernels[config.kernels] = config.kernels.with_fused_loss(
                self.fused_loss
            )
        savers = self.record
        if savers.ac_frequency != config.savers.ac_frequency:
            savers = savers.updated(ac_frequency=config.savers.ac_frequency)
        return config.replace(savers=savers, kernels=kernels)


class PlanSpace(BaseModel):
    """The values of every plan dimension for one scenario (before rules and pruning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[Task]
    optimizers: list[str]
    precisions: list[Precision]
    attentions: list[Attention]
    checkpointing: list[Checkpointing]
    offloads: list[Offload]
    fused_loss: list[bool]
    activation_offload: list[bool]
    optimizer_in_backward: list[bool]

    def saver_count(self) -> int:
        return (
            len(self.checkpointing)
            * len(self.offloads)
            * len(self.fused_loss)
            * len(self.activation_offload)
            * len(self.optimizer_in_backward)
        )

    def core_count(self) -> int:
        return len(self.tasks) * len(self.optimizers) * len(self.precisions) * len(self.attentions)


def build_space(ctx: Context, optimizers: list[Technique]) -> PlanSpace:
    """Every value of every dimension the target could run."""
    w, t = ctx.workload, ctx.target
    tasks = [w.task]
    if w.task is Task.FINETUNE:
        tasks += [Task.LORA, Task.QLORA]
    cpu = t.device_kind is DeviceKind.CPU
    offloads = [Offload.NONE] if cpu else list(Offload)
    space = PlanSpace(
        tasks=tasks,
        optimizers=[o.id for o in optimizers],
        precisions=list(Precision),
        attentions=list(Attention),
        checkpointing=list(Checkpointing),
        offloads=offloads,
        # The fused stack always fuses the loss; on the hf stack it is a choice (Liger).
        fused_loss=[False] if w.stack is Stack.FUSED else [False, True],
        activation_offload=[False] if cpu else [False, True],
        optimizer_in_backward=[False, True],
    )
    return image_space(ctx.spec, space)


def image_space(spec: ModelSpec, space: PlanSpace) -> PlanSpace:
    """An image model's dimensions: a classifier over 1000 classes has no vocabulary logits
    to fuse; a CNN (advisor.memory.convnet) has no attention kernel to choose, no fp8
    convolutions (Transformer Engine's fp8 covers linear layers), no adapters and no
    transformer blocks to recompute or offload one by one, so its plans are full training
    with BatchNorm's saved tensors, sharded or not."""
    if spec.cnn is None and spec.vision is None:
        return space
    update: dict[str, Any] = {"fused_loss": [False]}
    if spec.cnn is not None:
        update |= {
            "tasks": [x for x in space.tasks if x not in (Task.LORA, Task.QLORA)],
            "precisions": [p for p in space.precisions if p is not Precision.FP8_MIXED],
            "attentions": [Attention.EAGER],
            "checkpointing": [Checkpointing.NONE],
            "activation_offload": [False],
        }
    return space.model_copy(update=update)


def first_order(optimizers: list[Technique]) -> list[Technique]:
    """The first-order optimizers of a list."""
    return [o for o in optimizers if o.order is Order.FIRST]


# How much one unit of rule weight moves a candidate's score, per objective (in units of
# log time to target): small wherever time counts, so that the cost models decide and a
# preference breaks ties (0.02: a weight-3 rule is worth ~6% of time, never a large speed
# difference); large under "quality", whose rules carry what is learnt.
RULE_WEIGHT = {
    "speed": 0.02,
    "memory": 0.02,
    "balanced": 0.02,
    "quality": 0.5,
    "time-to-target": 0.02,
}
# Rules marked ``quality: true`` (what is learnt, not what a step costs: the cost models
# cannot price it) weigh this many times a cost heuristic's point under "balanced": a
# weight-5 quality rule is worth ~35% of time to target (e.g. full fine-tuning over adapters
# that learn less, Biderman et al. 2024), and the report's trade line names it.
QUALITY_RULE_FACTOR = {"balanced": 3.0}
# NOTE: "balanced" gives up at most ~10% of time to target for memory headroom beyond the
# safety margin: its memory term is linear in the share of the usable memory a plan fills
# (0 to 1 for a plan that fits), so the leanest and the fullest plan differ by log(1.10).
BALANCED_MEMORY_TRADE = math.log(1.10)


def objective_score(
    objective: Objective,
    seconds_per_token: float,
    peak: int,
    usable: int,
    rule_score: float,
    steps: float = 1.0,
) -> float:
    """Lower is better. Time per token enters as a logarithm, so a rule weight of 1 is worth
    the same relative change of cost whatever the model size. ``steps`` is the plan's steps
    to AdamW's loss as the objective counts them (convergence.objective_steps), so ``t`` is
    the log of the time to target.

    - speed and time-to-target: time to target; memory only breaks ties (0.01 per e-fold).
    - memory: the peak (log), time breaking ties.
    - balanced: time to target, plus at most log(1.10) for the memory a plan fills
      (:data:`BALANCED_MEMORY_TRADE`): a leaner plan wins only when it is at most ~10% slower.
    - quality: steps to AdamW's loss in full, the step time a tenth, rules at full weight.

    Every objective but quality subtracts ``RULE_WEIGHT`` (0.02) per unit of rule score:
    preferences break ties and cannot outweigh a large predicted speed difference.
    """
    t = math.log(max(seconds_per_token * steps, 1e-15))
    m = math.log(max(peak, 1) / max(usable, 1))
    w = RULE_WEIGHT[objective.value]
    if objective in (Objective.SPEED, Objective.TIME_TO_TARGET):
        return t + 0.01 * m - w * rule_score
    if objective is Objective.MEMORY:
        return m + 0.01 * t - w * rule_score
    if objective is Objective.BALANCED:
        share = min(max(peak, 0) / max(usable, 1), 1.0)
        return t + BALANCED_MEMORY_TRADE * share - w * rule_score
    # NOTE: under quality the budget is what it is: a plan needing k times AdamW's steps
    # reaches a worse loss in it, so the step factor counts in full, the step time a tenth.
    return 0.1 * t + 0.9 * math.log(max(steps, 1e-9)) - w * rule_score


# --- derived facts -----------------------------------------------------------------------


def workload_layouts(ctx: Context) -> list[Layout]:
    """Every layout of the workload's devices, honouring its --tp/--pp pins, with its
    --moe-balance and a pinned --moe-overlap (:func:`~advisor.plan.layout.moe_layouts`)."""
    w = ctx.workload
    layouts = enumerate_layouts(
        ctx.spec,
        world_size=w.world_size,
        gpus_per_node=max(w.gpus, 1),
        tp=w.tensor_parallel,
        pp=w.pipeline_parallel,
        nvlink_domain=ctx.target.nvlink_domain or None,
        seq_len=w.seq_len,
        cp=w.context_parallel,
        cp_kind=w.context_parallel_kind,
        ep=w.expert_parallel,
        etp=w.expert_tensor_parallel,
    )
    if ctx.spec.num_experts <= 1:
        return layouts
    return moe_layouts(layouts, w.moe_overlap, w.moe_balance, w.world_size)


def _frugal_fits(ctx: Context, config: TrainingConfig, host: bool = True) -> bool:
    """Whether ``config`` fits in some layout of the planned devices, one sample per device,
    with every saver that keeps the math (full recomputation, fused loss, and, when ``host``,
    offload where the device has a host). Memory never grows when a saver is added, so this
    decides."""

    t = ctx.target
    cpu = t.device_kind is DeviceKind.CPU
    # An image model keeps what its space has (a CNN: no recompute; no vocabulary loss).
    frugal = config.with_(
        checkpointing=Checkpointing.NONE if ctx.spec.cnn is not None else Checkpointing.FULL,
        micro_batch=1,
        fused_loss="fused-cross-entropy" in ctx.taxonomy and not ctx.spec.is_image,
    )
    offloads = [Offload.NONE]
    if host and not cpu and config.task in (Task.PRETRAIN, Task.FINETUNE):
        offloads += [Offload.OPTIMIZER_PARAMS] + (
            [Offload.OPTIMIZER_PARAMS_NVME] if t.nvme_bytes else []
        )
    layouts = workload_layouts(ctx)
    # Most devices per copy of the model first: the likeliest to fit.
    layouts.sort(
        key=lambda lay: (
            -(lay.parallel.tensor_parallel * lay.parallel.pipeline_parallel),
            -lay.parallel.sharding.zero_stage,
        )
    )
    usable = usable_memory(t)
    for lay in layouts:
        if config.task in (Task.LORA, Task.QLORA) and lay.parallel.pipeline_parallel > 1:
            continue
        for off in offloads:
            c = lay.apply(frugal.with_(offload=off))
            m = estimate(ctx, c)
            if m.total_bytes <= usable and host_fits(ctx, c, m) is None:
                return True
    return False


def _lightest_first_order(optimizers: list[Technique]) -> Technique | None:
    # The state signature orders optimizers without a memory evaluation each: elementwise
    # bytes per parameter, then the bytes of the tensors the structured schemes leave out.
    firsts = first_order(optimizers)
    if not firsts:
        return None
    return min(
        firsts,
        key=lambda o: (
            o.memory.bytes_per_param if o.memory else 0.0,
            (o.memory.fallback_bytes_per_param or 0.0) if o.memory else 0.0,
            o.id,
        ),
    )


def mixed_precision_fits_on_device(ctx: Context, optimizers: list[Technique]) -> bool:
    """Whether full-parameter first-order training that keeps fp32 master weights (the
    baseline's mixed precision) fits in the devices' own memory in some layout, offloading
    nothing to the host. Memory is monotone in the optimizer state, so the lightest
    first-order optimizer decides."""
    base = baseline_config(ctx)
    lightest = _lightest_first_order(optimizers)
    if lightest is None or base.precision in (Precision.BF16, Precision.FP16):
        return False
    return _frugal_fits(ctx, base.with_(optimizer=lightest.id), host=False)


def training_fits(ctx: Context, optimizers: list[Technique]) -> tuple[bool, bool]:
    """Whether full-parameter first-order training fits on the planned devices in some
    layout, and whether any first-order training (adapters too, when fine-tuning) does.

    Per precision it is enough to try the first-order optimizer with the least state
    (memory is monotone in the optimizer state).
    """
    base = baseline_config(ctx)
    lightest = _lightest_first_order(optimizers)
    if lightest is None:
        return False, False
    full = any(
        _frugal_fits(ctx, base.with_(optimizer=lightest.id, precision=p))
        for p in dict.fromkeys((Precision.BF16, base.precision))
    )
    if full or ctx.workload.task is Task.PRETRAIN:
        return full, full
    tasks = [Task.LORA] + ([Task.QLORA] if ctx.target.device_kind is DeviceKind.CUDA else [])
    adapters = any(
        _frugal_fits(
            ctx,
            base.with_(optimizer=lightest.id, task=task, precision=Precision.BF16_MIXED),
        )
        for task in tasks
    )
    return full, adapters


def derive_facts(ctx: Context, optimizers: list[Technique]) -> dict[str, object]:
    """Every declared fact's value for this scenario."""
    w, t = ctx.workload, ctx.target
    base = estimate(ctx, baseline_config(ctx))
    act = base.breakdown.get("activations", 0) + base.breakdown.get("logits", 0)
    full, any_first = training_fits(ctx, optimizers)
    facts: dict[str, object] = {
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
        "modality": "image" if ctx.spec.is_image else "text",
        "model_params_b": ctx.spec.parameter_count() / 1e9,
        "seq_len": w.seq_len,
        "micro_batch": w.micro_batch or _normalisation_batch(ctx),
        "global_batch": ctx.global_batch.samples,
        "data_parallel_degree": w.world_size,
        "privacy": w.privacy.value,
        "objective": w.objective.value,
        "sparse_features": w.sparse_features,
        "memory_headroom": usable_memory(t) / max(base.total_bytes, 1),
        "sharded_memory_headroom": usable_memory(t) / max(_sharded_baseline_bytes(ctx, base), 1),
        "first_order_fits": any_first,
        "full_training_fits": full,
        "mixed_precision_fits_on_device": full and mixed_precision_fits_on_device(ctx, optimizers),
        "activation_share": act / max(base.total_bytes, 1),
    }
    declared = set(ctx.ruleset.facts.facts)
    return {k: v for k, v in facts.items() if k in declared}


def _sharded_baseline_bytes(ctx: Context, base: MemoryEstimate) -> int:
    """The baseline's peak with its states sharded over every device (FSDP) and full
    recomputation: what one device must hold of a model training the standard way at this
    scale. On one device, the baseline's own peak."""
    if ctx.workload.world_size == 1:
        return base.total_bytes
    ref = baseline_config(ctx)
    sharded = ref.replace(
        layout=ref.layout.updated(sharding=Sharding.FSDP),
        savers=ref.savers.updated(checkpointing=Checkpointing.FULL),
    )
    return estimate(ctx, sharded).total_bytes


def context_steps(ctx: Context, config: TrainingConfig) -> StepsRange:
    """The plan's steps to AdamW's loss at this model size and global batch (past the
    critical batch the layer-wise methods' large-batch factors apply; an image model's
    recipe optimizers train in their recipe's epochs)."""
    regime = BatchRegime(global_batch=ctx.global_batch.samples, arch=ctx.spec.arch)
    return plan_steps(
        ctx.taxonomy,
        config.optimizer,
        config.task,
        ctx.spec.parameter_count(),
        ctx.convergence,
        regime,
        image=ctx.spec.is_image,
    )


def _normalisation_batch(ctx: Context) -> int:
    """The micro-batch the rules see when none is pinned: 1 for a language model (what it
    always was); for an image model the images each device gets per step, the largest batch
    BatchNorm can normalise over (the plan may accumulate smaller micro-batches)."""
    if not ctx.spec.is_image:
        return 1
    return max(1, ctx.global_batch.samples // max(ctx.workload.world_size, 1))


def plan_step_factor(ctx: Context, config: TrainingConfig) -> float:
    """The plan's steps to AdamW's loss as the objective counts them (advisor/cost/convergence.py:
    published ranges, or the measured proxy): the step time's multiplier in the score."""
    return objective_steps(ctx.workload.objective.value, context_steps(ctx, config))
