"""The shared facts of one prediction: one micro-batch's fields of the configuration, the
layout degrees and stage sizes, the dtype and attention kernel, the device's figures (dense
peaks, memory bandwidth) every term reads, and what one device holds and steps of the model
(its trainable parameters after the TP/PP and ZeRO splits)."""

from __future__ import annotations

import math
from typing import NamedTuple

from advisor.config import (
    Attention,
    Checkpointing,
    ContextParallelKind,
    Fp8Recipe,
    MoeBalance,
    MoeDispatcher,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.cost.data import CalibrationCache, ShapeResults
from advisor.cost.efficiency import AttentionKernel, attention_kernel, compute_dtype, peak_flops
from advisor.cost.fp8recipes import effective_recipe
from advisor.cost.microscaling import block_scaled_peak
from advisor.cost.result import Source
from advisor.cost.shape import ModelShape, WeightMatrices
from advisor.hardware.profiles import GpuEfficiency, HardwareProfile
from advisor.memory import MemoryMemo, trainable_parameter_count
from advisor.memory.moe import capacity_scale
from advisor.model.spec import ModelSpec


class MicroBatchConfig(NamedTuple):
    """The fields of a configuration that one micro-batch's terms read, and only those.

    NOTE: the micro-batch terms (compute, recompute, the head and loss, TP/EP/PP transfers)
    receive this record, never the whole configuration, so it is by construction everything
    they read: the memo of :class:`advisor.cost.memo.StepMemo` keys on it. What acts once
    per step (optimizer, accumulation, sharding, offload ...) is not here, so the plan
    search's thousands of plans that differ only in those share their micro-batch terms.
    It takes parts of several of the configuration's sub-records (the batch geometry but
    its accumulation, the layout's degrees but its sharding, the recomputation of the
    savers, what the kernels decide): no one sub-record is what these terms read.
    """

    task: Task
    precision: Precision
    attention: Attention
    stack: Stack
    checkpointing: Checkpointing
    ac_frequency: int
    micro_batch: int
    seq_len: int
    data_parallel: int
    dp_sgd: bool
    loss_fused: bool
    tp_overlapped: bool
    tensor_parallel: int
    pipeline_parallel: int
    virtual_stages: int
    expert_parallel: int
    context_parallel: int
    context_parallel_kind: ContextParallelKind
    expert_tensor_parallel: int  # resolved (ParallelLayout.expert_tp)
    moe_dispatcher: MoeDispatcher
    expert_rows: float  # routed rows relative to dropless balanced routing (capacity)
    fp8_recipe: Fp8Recipe | None  # fp8-mixed's recipe (tensorwise by default), else None
    moe_balance: MoeBalance  # the router's load balancing (the busiest rank's excess)
    capacity_factor: float | None
    pad_to_capacity: bool
    dropout: bool  # the model's own dropout (ops the host dispatches: advisor.cost.host)
    lora_targets: tuple[str, ...]  # what LoRA adapts, under LoRA/QLoRA (the host dispatches
    # each adapter's ops every micro-batch: advisor.cost.host); () otherwise


def micro_batch_config(config: TrainingConfig) -> MicroBatchConfig:
    """The :class:`MicroBatchConfig` of ``config``."""
    batch, layout, kernels, savers = config.batch, config.layout, config.kernels, config.savers
    return MicroBatchConfig(
        config.task,
        config.precision,
        kernels.attention,
        kernels.stack,
        savers.checkpointing,
        savers.ac_frequency,
        batch.micro_batch,
        batch.seq_len,
        layout.data_parallel,
        config.dp_sgd,
        kernels.loss_fused,
        kernels.tp_overlapped,
        layout.tensor_parallel,
        layout.pipeline_parallel,
        layout.virtual_stages,
        layout.expert_parallel,
        layout.context_parallel,
        layout.context_parallel_kind,
        layout.expert_tp,
        layout.moe_dispatcher,
        capacity_scale(layout),
        effective_recipe(config.precision, kernels.fp8_recipe),
        layout.moe_balance,
        layout.capacity_factor,
        layout.pad_to_capacity,
        config.dropout,
        config.adapters.lora_targets if config.task in (Task.LORA, Task.QLORA) else (),
    )


def stage_layers(layers: int, pp: int, v: int) -> tuple[float, float]:
    """(layers of the busiest pipeline stage, layers of the last stage, which also runs the
    LM head and the loss).

    Stages hold whole layers: with ``pp x v`` model chunks of ``ceil(layers / (pp v))``
    layers the busiest stage holds ``v`` full chunks. Where the layers do not split evenly
    the missing ones come off the end stages, the last stage taking the odd one: Llama 3's
    126 layers on 16 stages run 8 layers per stage with one layer fewer on the first and
    the last stage, whose extra work is the embedding and the output layer and loss
    (Dubey et al. 2024, sec. 3.3.2). Evenly split (Megatron requires it), the last stage
    runs the head on top of its share.
    """
    if pp <= 1:
        return float(layers), float(layers)
    per_chunk = math.ceil(layers / (pp * v))
    busiest = per_chunk * v
    deficit = per_chunk * pp * v - layers
    return float(busiest), float(max(busiest - (deficit + 1) // 2, 0))


class Setting:
    """One prediction's shared facts; every term of the step time is a function of it."""

    __slots__ = (
        "cal",
        "cp",
        "dp",
        "dp_cp",
        "dtype",
        "eff",
        "ep",
        "etp",
        "fp8",
        "hw",
        "kernel",
        "last_stage_layers",
        "link_override",
        "matrices",
        "mb",
        "memory_memo",
        "node",
        "pp",
        "results",
        "sh",
        "spec",
        "stage_layers",
        "tokens",
        "tp",
        "v",
    )

    def __init__(
        self,
        spec: ModelSpec,
        mb: MicroBatchConfig,
        calibration: CalibrationCache | None,
        hw: HardwareProfile | None,
        eff: GpuEfficiency,
        interconnect_gb_s: float | None,
        gpus_per_node: int | None,
        *,
        shape: ModelShape,
        matrices: WeightMatrices,
        results: ShapeResults | None,
        memory_memo: MemoryMemo | None = None,
    ) -> None:
        self.spec, self.mb, self.cal, self.hw, self.eff = spec, mb, calibration, hw, eff
        self.link_override = interconnect_gb_s
        self.sh = shape
        self.matrices = matrices
        self.results = results
        self.memory_memo = memory_memo
        self.dtype = compute_dtype(mb.precision)
        self.fp8 = self.dtype == "fp8"
        self.tp = mb.tensor_parallel
        self.pp = mb.pipeline_parallel
        self.v = mb.virtual_stages if mb.pipeline_parallel > 1 else 1
        self.dp = mb.data_parallel
        # Context parallelism: each rank runs its micro-batch on seq_len / cp tokens of every
        # sample; gradients are reduced over data x context parallel ranks.
        self.cp = mb.context_parallel
        self.dp_cp = self.dp * self.cp
        self.ep = min(mb.expert_parallel, max(spec.num_experts, 1))
        self.etp = mb.expert_tensor_parallel if spec.num_experts > 1 else self.tp
        self.tokens = mb.micro_batch * mb.seq_len // self.cp
        self.stage_layers, self.last_stage_layers = stage_layers(self.sh.layers, self.pp, self.v)
        self.kernel: AttentionKernel = attention_kernel(mb, hw)
        # NOTE: "node" here is the group joined at the intra-node link: the NVLink domain
        # (72 GPUs across the trays of an NVL72 rack), not the host.
        domain = hw.nvlink_domain if hw is not None else None
        self.node: int = gpus_per_node or domain or eff.gpus_per_node

    # --- device figures -------------------------------------------------------------------

    def peak(self) -> float:
        """The dense peak of the blocks' GEMMs (FP8 only where an FP8 share is fitted)."""
        if self.hw is None:
            return 0.0
        if self.fp8 and self.eff.gemm_fp8 is None:
            return self.peak16()
        # MXFP8 / NVFP4 (advisor/cost/microscaling.py): priced as FP8 at their own peak.
        return block_scaled_peak(self.hw, self.mb.precision) or peak_flops(self.hw, self.dtype)

    def peak16(self) -> float:
        """The peak of what stays 16-bit under FP8 (attention, LM head)."""
        if self.hw is None:
            return 0.0
        return peak_flops(self.hw, "bf16" if self.fp8 else self.dtype)

    def bandwidth(self) -> tuple[float, Source]:
        """Achievable memory bandwidth (bytes/s): measured copies, else datasheet x fitted."""
        if self.cal is not None and self.cal.copy_gb_s:
            return self.cal.copy_gb_s * 1e9, Source.MEASURED
        assert self.hw is not None
        return self.hw.memory_bandwidth_gb_s * 1e9 * self.eff.bandwidth.value, Source.ANALYTIC


# --- what one device holds and steps -----------------------------------------------------


def weight_bytes(precision: Precision) -> int:
    """Bytes of one weight as the model holds it (4 under fp32/tf32 and autocast)."""
    return (
        4
        if precision in (Precision.FP32, Precision.TF32, Precision.AMP_FP16, Precision.AMP_BF16)
        else 2
    )


def grad_bytes(precision: Precision) -> int:
    """Bytes of one gradient (the weights' dtype)."""
    return weight_bytes(precision)


def trainable(s: Setting, c: TrainingConfig) -> int:
    """Trainable parameters of the whole model."""
    if c.task in (Task.LORA, Task.QLORA):
        # The adapters on the configured targets, r x (d_in + d_out) per adapted matrix
        # (Hu et al. 2021), and any whole tensor trained beside them.
        return trainable_parameter_count(s.spec, c, memo=s.memory_memo)
    return s.sh.params


def shard(s: Setting, c: TrainingConfig, from_stage: int) -> int:
    """Ranks a state is sharded over when ZeRO ``from_stage`` shards it (else 1)."""
    layout = c.layout
    stage = layout.sharding.zero_stage
    if stage < from_stage:
        return 1
    if layout.sharding is Sharding.HSDP:
        return shard_group(s, c)
    return s.dp_cp


def shard_group(s: Setting, c: TrainingConfig) -> int:
    """Data(-and-context)-parallel ranks of one HSDP shard group (default: a node's)."""
    group = c.layout.shard_group or max(1, s.node // s.tp)
    return max(1, min(group, s.dp_cp))


def trainable_local(s: Setting, c: TrainingConfig) -> float:
    """Trainable parameters this device steps: its TP/PP shard, then its ZeRO shard; the
    routed experts' share is ``1 / (ep x etp x pp)``, sharded over the expert-data-parallel
    group (Megatron-Core's distributed optimizer; :mod:`advisor.memory.moe`)."""
    whole = trainable(s, c) / (s.tp * s.pp) / shard(s, c, 1)
    layout = c.layout
    if (
        s.spec.num_experts <= 1
        or c.task not in (Task.PRETRAIN, Task.FINETUNE)
        or (layout.expert_parallel == 1 and s.etp == s.tp)
    ):
        return whole
    routed = s.spec.moe_layer_count() * s.spec.num_experts * s.spec.expert_parameter_count()
    n = shard(s, c, 1)
    n_expert = max(1, n * s.tp // (s.etp * layout.expert_parallel)) if n > 1 else 1
    counted = routed / (s.tp * s.pp) / n
    held = routed / (layout.expert_parallel * s.etp * s.pp) / n_expert
    return whole - counted + held
