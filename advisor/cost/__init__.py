"""The cost model: predicted time of one optimizer step, term by term, measured or analytic.

One step on one device (a pipeline stage of a tensor-parallel shard of one data-parallel
replica) is

    (A + (p - 1) / v) x micro-batch time            1F1B with its bubble (Narayanan et al. 2021)
    + optimizer step + master copies + offload        memory- or PCIe-bound
    + exposed data-parallel communication             what backward does not hide

where A is the number of micro-batches (gradient accumulation), p the pipeline stages and v
the interleaved chunks per stage. The micro-batch time is the sum of its kernels' times:
GEMMs at their real shapes (tokens x layer widths per TP shard) at a saturating share of
the dense peak, attention per kernel and sequence length, elementwise and norm work at
memory bandwidth (per kernel stack), recompute, the loss, and the exposed tensor-parallel,
expert-parallel and pipeline transfers. Every constant is the hardware profile's fitted
``efficiency:`` block (benchmarks/gpu_fit.py fits them to public measurements, each with its
source).

Each term is ``measured`` when it comes from this device's calibration cache at the model's
own shapes, ``analytic`` when it comes from datasheet figures times fitted efficiencies.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
import re
from enum import Enum

from pydantic import BaseModel, ConfigDict

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.cost.data import CalibrationCache, LayerShape, LayerTiming, ShapeResults
from advisor.hardware.profiles import (
    AttentionEfficiency,
    DeviceKind,
    Fitted,
    Generation,
    GpuEfficiency,
    HardwareProfile,
)
from advisor.memory import (
    DeviceOverheads,
    fused_step_on,
    memory_totals,
    paged_residency,
    saved_activation_bytes,
    selective_op_recompute_share,
    trainable_parameter_count,
)
from advisor.model.spec import Arch, ModelSpec
from advisor.rules.taxonomy import Technique

# --- Constants that are not per device generation (each with its source) -----------------

# Offloaded optimizer steps and transfers: PCIe 4.0 x16 sustains ~25 GB/s one way (PCIe 5.0
# on Hopper hosts ~50), and a host CPU Adam step runs at ~50 GB/s of state traffic per GPU's
# share of the host (ZeRO-Offload, Ren et al. 2021, sec. 5: CPU-Adam 6x faster than
# PyTorch's, ~1.5 ns/param for 16 bytes of states).
PCIE_GB_S = 25.0
PCIE5_GB_S = 50.0
HOST_STEP_GB_S = 50.0
# NVMe offload: one PCIe 4.0 NVMe drive per GPU reads ~6-7 GB/s (ZeRO-Infinity,
# Rajbhandari et al. 2021, sec. 6: 1.6-3 GB/s per GPU of a DGX-2 with its NVMe array; 6 GB/s
# is a modern drive's sequential rate).
NVME_GB_S = 6.0
# Bytes an optimizer step reads and writes per trainable parameter, beyond its states:
# the parameter (read + write) and its gradient (read), in fp32.
_STEP_BASE_BYTES = 12
# torch's foreach optimizers (the CUDA default) run each arithmetic op as its own pass over
# every tensor: AdamW's _multi_tensor_adamw reads/writes each state ~4 times against fused
# AdamW's one pass (torch/optim/adamw.py); measured 3-6x on CPU (FINDINGS.md). The fused
# stack uses fused AdamW (torchtitan's default, Megatron's apex/TE FusedAdam) where the
# optimizer has a fused kernel (taxonomy memory.fused_step); bitsandbytes' 8-bit kernels
# are fused on every stack; the others loop everywhere (memory.fused_step_on).
FOREACH_TRAFFIC = 2.5
# Second-order refreshes (eigendecompositions, inverse roots) run far below peak: ~5%.
REFRESH_EFFICIENCY = 0.05
# Elementwise and norm traffic of one block, per token, in units of (h-wide, f-wide)
# activation tensors read or written, forward only (backward moves about twice that):
#   hf: two unfused RMSNorm/LayerNorm in fp32 (cast, square, mean, rsqrt, scale: ~8 h-wide
#   passes each), two residual adds (3 each), rotary on q and k (~4); SwiGLU as separate
#   silu and mul kernels (~5 f-wide passes). Hugging Face LlamaRMSNorm/LlamaMLP source.
#   fused: fused add+norm (~3 passes each), rotary inside the attention/QKV kernel, fused
#   SwiGLU (2 reads, 1 write): Liger/Apex/TE kernels, torch.compile in torchtitan.
_ELEMENTWISE_PASSES = {Stack.HF: (26.0, 5.0), Stack.FUSED: (8.0, 3.0)}
# The loss over the logits, bytes per token per vocabulary entry, forward and backward:
#   hf: bf16 logits written, upcast to fp32 (read 2, write 4), log-softmax (read 4, write 4),
#   gradient (write 4, downcast read 4 write 2): ~28 (transformers' ForCausalLMLoss).
#   fused: chunked/fused linear cross-entropy reads the bf16 logits chunk twice and writes
#   its gradient in place (Liger FusedLinearCrossEntropy; torchtune chunked CE): ~6.
_LOSS_BYTES = {Stack.HF: 28.0, Stack.FUSED: 6.0}
# Eager attention materialises scores, an fp32 softmax and their gradients: ~60 bytes per
# score element, forward and backward (Dao et al. 2022, sec. 3; HF eager_attention_forward).
_EAGER_SCORE_BYTES = 60.0
# FlashAttention's backward does 2.5x the forward's matmul FLOPs (5 matmuls vs 2; Dao 2023,
# sec. 4.1): fwd+bwd = 3.5 x forward. Eager: backward = 2 x forward.
_FLASH_FB = 3.5
_EAGER_FB = 3.0
# FP8 training with dynamic (current) tensor-wise scaling casts every GEMM operand each
# micro-step: an amax pass and a cast pass over the 16-bit tensor (read 2 + read 2 + write 1
# bytes per element) for the input and the weight forward and the output gradient backward,
# plus the transposed FP8 copies the backward GEMMs take (read 1 + write 1 each) (torchao
# float8 tensorwise recipe, torchao/float8/README.md; Transformer Engine's current scaling;
# Micikevicius et al. 2022, FP8 Formats for Deep Learning). Only the blocks' linear layers
# run in FP8: attention, norms and the LM head stay 16-bit (torchtitan's float8 converter
# skips `output`; Megatron's output layer is not a TE module).
_FP8_CAST_BYTES = 5.0
_FP8_TRANSPOSE_BYTES = 2.0

# The CPU has no fitted GPU block: these come from measurements on the project's CPUs
# (FINDINGS.md): fp32 GEMM 120-170 GFLOP/s on 2 AVX-512 cores (~320 peak) -> 0.45; flash SDPA
# fp32 S=2048 d=64 fwd+bwd 137 ms (~0.35 of peak), math 442 ms (~0.18); copies 80% of peak.
_FINDINGS = "FINDINGS.md (measured on the project's CPUs, 2026-11)"
CPU_EFFICIENCY = GpuEfficiency(
    generation=Generation.CPU,
    gemm_max=Fitted(value=0.45, source=_FINDINGS),
    gemm_m0=Fitted(value=16.0, source=_FINDINGS),
    gemm_n0=Fitted(value=16.0, source=_FINDINGS),
    bandwidth=Fitted(value=0.8, source=_FINDINGS),
    comm_intra=Fitted(value=0.75, source=_FINDINGS),
    comm_inter=Fitted(value=0.75, source=_FINDINGS),
    overlap=Fitted(value=0.01, source="gloo collectives do not overlap compute on a CPU"),
    attention={
        "fa2": AttentionEfficiency(max=0.35, s0=0, s0_causal=0, d0=0, source=_FINDINGS),
        "mem-efficient": AttentionEfficiency(max=0.3, s0=0, s0_causal=0, d0=0, source=_FINDINGS),
        "eager": AttentionEfficiency(max=0.18, s0=0, s0_causal=0, d0=0, source=_FINDINGS),
    },
    gpus_per_node=1,
)


class Source(str, Enum):
    """Where a cost comes from."""

    MEASURED = "measured"
    ANALYTIC = "analytic"
    MIXED = "mixed"


class ComponentTime(BaseModel):
    """One term of the step time."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: Source
    detail: str = ""


class StepTime(BaseModel):
    """Predicted seconds of one optimizer step (over the global batch), by component."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: Source
    components: dict[str, ComponentTime]


class AttentionKernel(str, Enum):
    """The attention implementation that really runs (kernel, not SDPA flag)."""

    FA2 = "fa2"
    FA3 = "fa3"
    CUDNN = "cudnn"
    MEM_EFFICIENT = "mem-efficient"
    EAGER = "eager"


def compute_dtype(precision: Precision) -> str:
    """The dtype the matrix multiplies of a precision mode run in."""
    return {
        Precision.FP32: "fp32",
        Precision.TF32: "tf32",
        Precision.AMP_FP16: "fp16",
        Precision.FP16_MIXED: "fp16",
        Precision.FP16: "fp16",
        Precision.AMP_BF16: "bf16",
        Precision.BF16_MIXED: "bf16",
        Precision.BF16: "bf16",
        Precision.FP8_MIXED: "fp8",
    }[precision]


def layer_shape(spec: ModelSpec) -> LayerShape:
    """The layer shape a calibration measures for this model (its true widths)."""
    h = spec.hidden_size or 0
    heads = spec.num_attention_heads or 1
    return LayerShape(
        hidden=h,
        intermediate=spec.intermediate_size or 4 * h,
        heads=heads,
        kv_heads=spec.num_key_value_heads or heads,
        head_dim=spec.head_dim or h // heads,
        gated_mlp=spec.gated_mlp,
    )


def efficiency_for(hw: HardwareProfile) -> GpuEfficiency:
    """The fitted efficiencies of a profile (the CPU's measured defaults for a CPU).

    Raises:
        UserError: for a GPU profile without an ``efficiency:`` block.
    """
    if hw.kind is DeviceKind.CPU:
        return hw.efficiency or CPU_EFFICIENCY
    return hw.gpu_efficiency()


def gemm_efficiency(eff: GpuEfficiency, m: float, n: float, k: float) -> float:
    """Share of the dense peak a GEMM of (m x k) @ (k x n) reaches.

    A saturating function of each dimension: few tokens (m) or thin layers (n, k) leave
    tensor cores idle (tile quantisation, memory-bound loads), large shapes approach the
    generation's ``gemm_max``. Fitted per generation (benchmarks/gpu_fit.py).
    """
    m0, n0 = eff.gemm_m0.value, eff.gemm_n0.value
    return eff.gemm_max.value * (m / (m + m0)) * (n / (n + n0)) * (k / (k + n0))


def attention_efficiency(
    eff: GpuEfficiency, kernel: AttentionKernel, s: int, d: int, causal: bool
) -> float:
    """Share of the dense peak an attention kernel's fwd+bwd reaches at sequence ``s``,
    head dimension ``d`` (FlashAttention-2/3 papers' kernel TFLOP/s, fitted)."""
    table = eff.attention
    entry = table.get(kernel.value)
    if entry is None and kernel in (AttentionKernel.FA3, AttentionKernel.CUDNN):
        entry = table.get(AttentionKernel.FA2.value)
    if entry is None:
        entry = table.get(AttentionKernel.FA2.value) or next(iter(table.values()))
    s0 = entry.s0_causal if causal else entry.s0
    scale = (d / (d + entry.d0)) / (128 / (128 + entry.d0)) if entry.d0 else 1.0
    return min(entry.max * s / (s + s0) * scale, 0.95)


def attention_kernel(config: TrainingConfig, hw: HardwareProfile | None) -> AttentionKernel:
    """The kernel ``config.attention`` runs as on ``hw``.

    SDPA's flash backend is FlashAttention-2 on every CUDA generation (PyTorch ships FA2);
    the fused stack runs FlashAttention-3 on Hopper (torchtitan, Megatron/TE via cuDNN's
    fused attention, Shah et al. 2024) and cuDNN's fused attention on Blackwell. Volta/Turing
    have no FA2 kernel: SDPA falls back to memory-efficient attention there.
    """
    if config.attention is Attention.EAGER:
        return AttentionKernel.EAGER
    if config.attention is Attention.MEM_EFFICIENT:
        return AttentionKernel.MEM_EFFICIENT
    if hw is not None and hw.kind is DeviceKind.CUDA and 0 < hw.cc < 8.0:
        return AttentionKernel.MEM_EFFICIENT
    if hw is not None and hw.cc >= 10.0 and config.stack is Stack.FUSED:
        # FA3 is written for sm90 only; on Blackwell the fused stacks run cuDNN's attention.
        return AttentionKernel.CUDNN
    if hw is not None and hw.cc >= 9.0 and config.stack is Stack.FUSED:
        return AttentionKernel.FA3
    return AttentionKernel.FA2


def _peak_flops(hw: HardwareProfile, dtype: str) -> float:
    p = hw.peak_tflops
    value = {
        "fp32": p.fp32,
        "tf32": p.tf32 or p.fp32,
        "fp16": p.fp16,
        "bf16": p.bf16,
        "fp8": p.fp8 or p.bf16 or p.fp16,
    }.get(dtype)
    return (value or p.fp32 / 100) * 1e12


def _weight_bytes(precision: Precision) -> int:
    return (
        4
        if precision in (Precision.FP32, Precision.TF32, Precision.AMP_FP16, Precision.AMP_BF16)
        else 2
    )


def _grad_bytes(precision: Precision) -> int:
    return _weight_bytes(precision)


class _Shape(BaseModel):
    model_config = ConfigDict(frozen=True)

    layers: int
    layer_matmul_params: int  # the block's matrix parameters a token multiplies (active experts)
    layer_params: int
    head_params: int  # LM head matmul (vocab x hidden)
    params: int
    hidden: int
    heads: int


@functools.lru_cache(maxsize=256)
def _shape(spec: ModelSpec) -> _Shape:
    h = spec.hidden_size or 0
    layers = spec.layer_repeats()
    # Blocks may differ (DeepSeek-V3: 3 dense, 58 MoE): per-layer figures are averages over
    # the stack, so layers x figure is exact. A token multiplies the active parameters: an
    # MoE layer's router, shared experts and experts_per_token of its routed experts.
    outside = spec.embedding_parameter_count()
    return _Shape(
        layers=layers,
        layer_matmul_params=(spec.active_parameter_count() - outside) // layers,
        layer_params=(spec.parameter_count() - outside) // layers,
        head_params=(spec.vocab_size or 0) * h,
        params=spec.parameter_count(),
        hidden=h,
        heads=spec.num_attention_heads or 1,
    )


# Megatron's row-parallel layers (input dimension split across TP ranks); the others are
# column-parallel (output split) (Shoeybi et al. 2019, sec. 3).
_ROW_PARALLEL = re.compile(
    r"(c_proj|o_proj|out_proj|down_proj|w2|fc2|output\.dense|dense_4h_to_h)(\.weight)?$"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Gemm:
    """One weight GEMM of a block per micro-batch: (m x k) @ (k x n), ``count`` times."""

    m: float
    n: int
    k: int
    count: float = 1.0

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count


def block_gemms(spec: ModelSpec, tokens: int, tp: int = 1, ep: int = 1) -> list[Gemm]:
    """The forward GEMMs of one block for ``tokens`` tokens on one TP/EP shard.

    Column-parallel layers split their output width by ``tp``, row-parallel ones their
    input; with sequence parallelism every GEMM still sees all ``tokens`` (Korthikanti et
    al. 2022). Each expert of an MoE block sees ``tokens x top-k x ep / experts`` tokens.
    """
    out: list[Gemm] = []
    experts = max(spec.num_experts, 1)
    for n, k, row, expert in _weight_matrices(spec):
        if row:
            k = max(1, k // tp)
        else:
            n = max(1, n // tp)
        if expert:
            local = max(1, experts // ep)
            m = tokens * spec.experts_per_token * ep / experts
            out.append(Gemm(m=m, n=n, k=k, count=local))
        else:
            out.append(Gemm(m=tokens, n=n, k=k, count=1.0))
    return out


@functools.lru_cache(maxsize=256)
def _weight_matrices(spec: ModelSpec) -> tuple[tuple[int, int, bool, bool], ...]:
    """(out, in, row-parallel, expert) of each weight matrix of one block (expert 0 only)."""
    out: list[tuple[int, int, bool, bool]] = []
    for name, shape in spec.layer_matrix_shapes():
        if len(shape) < 2:
            continue
        # Routed experts (transformers 5): one 3-D tensor (experts, out, in) per projection;
        # shared experts ("shared_experts.") are dense and replicated.
        routed = ".experts." in f".{name}"
        if routed:
            shape = shape[1:]
        n, k = shape[0], math.prod(shape[1:])
        if spec.family == "gpt2" and len(shape) == 2:
            k, n = shape[0], shape[1]  # Conv1D stores (in, out)
        out.append((n, k, bool(_ROW_PARALLEL.search(name)), routed))
    return tuple(out)


def predict_step_time(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    calibration: CalibrationCache | None,
    hardware: HardwareProfile | None,
    optimizer_bytes_per_param: float = 8.0,
    optimizer_order: str = "first",
    preconditioner_interval: int | None = None,
    optimizer_fused_step: bool = True,
    interconnect_gb_s: float | None = None,
    gpus_per_node: int | None = None,
    paged_traffic_bytes: float = 0.0,
) -> StepTime:
    """Predict one optimizer step's seconds for ``config`` on one device.

    Honours the kernel stack, fused loss, optimizer-in-backward, activation and optimizer
    offload (host or NVMe), and the layout: ``config.gpus`` data-parallel replicas (DDP,
    ZeRO-1/2/3, FSDP, HSDP), tensor parallelism with sequence parallelism, pipeline
    parallelism (1F1B, interleaved over ``virtual_stages``) and expert parallelism.

    Args:
        spec: the model.
        config: the configuration (micro-batch, accumulation, precision, layout ...).
        calibration: this device's measurements (None: analytic only).
        hardware: datasheet figures and fitted efficiencies for whatever was not measured.
        optimizer_bytes_per_param: the optimizer's state bytes (analytic step cost).
        optimizer_order: zeroth, first or second (zeroth-order has no backward).
        preconditioner_interval: steps between refreshes (analytic second-order cost).
        optimizer_fused_step: the step runs a fused in-place kernel (one pass over the
            states; memory.fused_step_on); otherwise a foreach/for-loop step (an op per
            pass).
        interconnect_gb_s: bidirectional GB/s of the slowest link the data-parallel
            collectives cross (default: the profile's links). A value below the profile's
            intra-node link says that they leave the node.
        gpus_per_node: devices per node (default: the profile's ``gpus_per_node``); ranks
            are laid out TP innermost, then data parallel, then pipeline (Megatron's order).
        paged_traffic_bytes: bytes a paged optimizer's states migrate between host and
            device per step (memory.paged_residency); priced at the host link's rate.

    Returns:
        The step time with every component labelled measured or analytic.

    Raises:
        ValueError: when neither a calibration nor a hardware profile is given.
        UserError: when a GPU profile has no fitted efficiencies.
    """
    if calibration is None and hardware is None:
        raise ValueError("predict_step_time needs a calibration or a hardware profile")
    eff = efficiency_for(hardware) if hardware is not None else CPU_EFFICIENCY
    step = _Step(spec, config, calibration, hardware, eff, interconnect_gb_s, gpus_per_node)
    return step.run(
        optimizer_bytes_per_param,
        optimizer_order,
        preconditioner_interval,
        optimizer_fused_step,
        paged_traffic_bytes,
    )


def _merge(a: Source, b: Source) -> Source:
    return a if a == b else Source.MIXED


def _find_layer(results: ShapeResults | None, dtype: str) -> LayerTiming | None:
    if results is None:
        return None
    want = "fp32" if dtype == "tf32" else dtype
    return next((lt for lt in results.layers if lt.dtype == want), None)


def _stage_layers(layers: int, pp: int, v: int) -> tuple[float, float]:
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


_BACKEND = {
    AttentionKernel.EAGER: "math",
    AttentionKernel.FA2: "flash",
    AttentionKernel.FA3: "flash",
    AttentionKernel.CUDNN: "cudnn",
    AttentionKernel.MEM_EFFICIENT: "mem-efficient",
}


# Configuration fields that only act once per step (in :meth:`_Step.run` and what it calls
# besides :meth:`_Step.micro_batch`): one micro-batch's terms never read them.
_PER_STEP_FIELDS = frozenset(
    {
        "optimizer",
        "grad_accumulation",
        "sharding",
        "shard_group",
        "offload",
        "optimizer_in_backward",
        "activation_offload",
        "lora_rank",
        "lora_targets",
        "optimizer_impl",
    }
)
_MICRO_BATCH_FIELDS = tuple(f for f in TrainingConfig.model_fields if f not in _PER_STEP_FIELDS)
_MICRO_BATCH_VALUES = operator.attrgetter(*_MICRO_BATCH_FIELDS)  # one C call per key
_MICRO_BATCH: dict[
    tuple[object, ...],
    tuple[tuple[object, ...], tuple[dict[str, ComponentTime], float, float]],
] = {}
_SCALED: dict[
    tuple[tuple[object, ...], int],
    tuple[tuple[object, ...], tuple[dict[str, ComponentTime], float, float, float]],
] = {}


class _Step:
    """One prediction: the shared facts of a configuration, and one method per term."""

    def __init__(
        self,
        spec: ModelSpec,
        config: TrainingConfig,
        calibration: CalibrationCache | None,
        hw: HardwareProfile | None,
        eff: GpuEfficiency,
        interconnect_gb_s: float | None,
        gpus_per_node: int | None = None,
    ) -> None:
        self.spec, self.config, self.cal, self.hw, self.eff = spec, config, calibration, hw, eff
        self.link_override = interconnect_gb_s
        self.sh = _shape(spec)
        self.results = calibration.results_for(layer_shape(spec)) if calibration else None
        self.dtype = compute_dtype(config.precision)
        self.fp8 = self.dtype == "fp8"
        self.tp = config.tensor_parallel
        self.pp = config.pipeline_parallel
        self.v = config.virtual_stages if config.pipeline_parallel > 1 else 1
        self.dp = config.gpus
        self.ep = min(config.expert_parallel, max(spec.num_experts, 1))
        self.tokens = config.micro_batch * config.seq_len
        self.stage_layers, self.last_stage_layers = _stage_layers(self.sh.layers, self.pp, self.v)
        self.kernel = attention_kernel(config, hw)
        # NOTE: "node" here is the group joined at the intra-node link: the NVLink domain
        # (72 GPUs across the trays of an NVL72 rack), not the host.
        domain = hw.nvlink_domain if hw is not None else None
        self.node = gpus_per_node or domain or eff.gpus_per_node

    # --- device figures -------------------------------------------------------------------

    def peak(self) -> float:
        """The dense peak of the blocks' GEMMs (FP8 only where an FP8 share is fitted)."""
        if self.hw is None:
            return 0.0
        if self.fp8 and self.eff.gemm_fp8 is None:
            return self.peak16()
        return _peak_flops(self.hw, self.dtype)

    def peak16(self) -> float:
        """The peak of what stays 16-bit under FP8 (attention, LM head)."""
        if self.hw is None:
            return 0.0
        return _peak_flops(self.hw, "bf16" if self.fp8 else self.dtype)

    def bandwidth(self) -> tuple[float, Source]:
        if self.cal is not None and self.cal.copy_gb_s:
            return self.cal.copy_gb_s * 1e9, Source.MEASURED
        assert self.hw is not None
        return self.hw.memory_bandwidth_gb_s * 1e9 * self.eff.bandwidth.value, Source.ANALYTIC

    def pcie(self) -> float:
        return (PCIE5_GB_S if self.hw is not None and self.hw.cc >= 9.0 else PCIE_GB_S) * 1e9

    def link(
        self, crosses_nodes: bool, *, data_parallel: bool = False, per_node: int = 1
    ) -> tuple[float, str]:
        """Achievable bus bandwidth (bytes/s) of a collective's ring and the link's name.

        Inside a node: the NVLink (or PCIe) one-way rate x the NCCL bus-bandwidth share.
        Across nodes a ring enters each node once per channel, one channel per NIC, so the
        ``per_node`` members of the group that share a node share their NICs: bus bandwidth
        = min(intra-node, per_node x per-GPU NIC x share) (nccl-tests PERFORMANCE.md).
        """
        hw = self.hw
        intra = hw.intra_node if hw is not None else None
        inter = hw.inter_node if hw is not None else None
        intra_bidir = (intra.bandwidth_gb_s if intra else None) or self.link_override or 25.0
        intra_bw = intra_bidir / 2 * self.eff.comm_intra.value * 1e9
        if not crosses_nodes:
            return intra_bw, intra.name if intra else "PCIe/host link"
        nic = (self.link_override if data_parallel else None) or (
            inter.bandwidth_gb_s if inter else intra_bidir
        )
        nic_bw = nic / 2 * self.eff.comm_inter.value * 1e9
        name = inter.name if inter else "inter-node link"
        return min(intra_bw, max(1, per_node) * nic_bw), name

    def measured_busbw(self, op: str, ranks: int) -> float | None:
        """A local NCCL measurement for a single-node group, in bytes/s."""
        if self.cal is None or not self.cal.collectives or ranks > self.cal.collective_ranks:
            return None
        value = self.cal.collectives.get(op)
        return value * 1e9 if value else None

    # --- compute per micro-batch ------------------------------------------------------------

    def gemm_seconds(
        self, gemms: list[Gemm], *, low_precision: bool = True
    ) -> tuple[float, Source]:
        """Seconds of forward GEMMs; ``low_precision=False`` keeps them 16-bit under FP8."""
        total, sources = 0.0, set()
        fp8 = self.fp8 and low_precision and self.eff.gemm_fp8 is not None
        peak = self.peak() if low_precision else self.peak16()
        share = self.eff.gemm_fp8.value if fp8 and self.eff.gemm_fp8 is not None else 1.0
        for g in gemms:
            # Under FP8 the measured rows are FP8 GEMMs: not what a 16-bit GEMM runs at.
            measured = self.measured_gemm(g) if low_precision or not self.fp8 else None
            if measured is not None:
                total += g.flops / measured
                sources.add(Source.MEASURED)
                continue
            e = gemm_efficiency(self.eff, g.m, g.n, g.k) * share
            total += g.flops / (peak * e) if peak else 0.0
            sources.add(Source.ANALYTIC)
        src = sources.pop() if len(sources) == 1 else Source.MIXED
        return total, src

    def measured_gemm(self, g: Gemm) -> float | None:
        if self.results is None:
            return None
        want = "fp32" if self.dtype == "tf32" else self.dtype
        if not self.results.gemms:
            # Older caches: one layer-shaped GEMM per dtype.
            tflops = self.results.matmul_tflops.get(want)
            return tflops * 1e12 if tflops else None
        rows = sorted(
            (r for r in self.results.gemms if r.dtype == want and {r.n, r.k} == {g.n, g.k}),
            key=lambda r: r.m,
        )
        if not rows:
            return None
        # Interpolate the measured throughput in log(m); clamp outside the measured range.
        if g.m <= rows[0].m:
            return (
                rows[0].tflops * 1e12 * g.m / rows[0].m
                if g.m < rows[0].m
                else (rows[0].tflops * 1e12)
            )
        for lo, hi in itertools.pairwise(rows):
            if lo.m <= g.m <= hi.m:
                t = math.log(g.m / lo.m) / math.log(hi.m / lo.m) if hi.m > lo.m else 0.0
                return (lo.tflops + t * (hi.tflops - lo.tflops)) * 1e12
        return rows[-1].tflops * 1e12

    def layer_gemm(self) -> tuple[float, float, Source]:
        """(fwd+bwd, fwd) seconds of one block's weight GEMMs for one micro-batch."""
        measured = _find_layer(self.results, self.dtype)
        if measured is not None and self.tp == 1 and self.spec.num_experts == 1:
            fb = measured.seconds_per_token * self.tokens
            fwd = measured.forward_seconds_per_token
            return fb, (fwd * self.tokens if fwd is not None else fb / 3), Source.MEASURED
        if self.spec.cnn is not None:
            flops = 2 * self.sh.layer_matmul_params * self.tokens / self.tp
            e = gemm_efficiency(self.eff, self.tokens, 4096, 4096)
            fwd = flops / (self.peak() * e) if self.peak() else 0.0
            return 3 * fwd, fwd, Source.ANALYTIC
        fwd, src = self.gemm_seconds(block_gemms(self.spec, self.tokens, self.tp, self.ep))
        # dgrad and wgrad are GEMMs of the same three dimensions: twice the forward.
        return 3 * fwd, fwd, src

    def layer_measured(self) -> bool:
        return (
            _find_layer(self.results, self.dtype) is not None
            and self.tp == 1
            and self.spec.num_experts == 1
        )

    def attention(self) -> tuple[float, float, Source]:
        """(fwd+bwd, fwd) seconds of the attention core of one block, one micro-batch."""
        s, mb = self.config.seq_len, self.config.micro_batch
        if self.results is not None:
            want = "fp32" if self.dtype == "tf32" else self.dtype
            fit = next(
                (
                    f
                    for f in self.results.attention
                    if f.backend == _BACKEND[self.kernel] and f.dtype == want and not f.failed
                ),
                None,
            )
            if fit is not None:
                fb = fit.predict(s) * mb / self.tp
                return fb, fb / 3, Source.MEASURED
        if self.hw is None:
            return 0.0, 0.0, Source.ANALYTIC
        heads = (self.spec.num_attention_heads or 1) / self.tp
        d = self.spec.head_dim or (self.sh.hidden // max(self.sh.heads, 1))
        causal = self.spec.arch is Arch.DECODER
        eager = self.kernel is AttentionKernel.EAGER
        # QK^T and PV: 2 matmuls x 2 s^2 d FLOPs per head; fused kernels skip the masked half.
        fwd_flops = 4 * mb * s * s * heads * d * (0.5 if causal and not eager else 1.0)
        e = attention_efficiency(self.eff, self.kernel, s, d, causal)
        fwd = fwd_flops / (self.peak16() * e)
        fb = fwd * (_EAGER_FB if eager else _FLASH_FB)
        if eager:
            bw, _ = self.bandwidth()
            traffic = _EAGER_SCORE_BYTES * heads * mb * s * s / bw
            fb += traffic
            fwd += traffic / 3
        return fb, fwd, Source.ANALYTIC

    def elementwise(self) -> tuple[float, float, Source]:
        """(fwd+bwd, fwd) seconds of norms, residuals, rotary and activations, one block."""
        if self.layer_measured():
            return 0.0, 0.0, Source.MEASURED  # inside the measured block
        h = self.sh.hidden
        f = self.spec.intermediate_size or 4 * h
        act = 4 if self.dtype in ("fp32", "tf32") else 2
        ph, pf = _ELEMENTWISE_PASSES[self.config.stack]
        # Sequence parallelism splits the norm/residual work across TP ranks; the MLP
        # activation is on the TP-sharded width (Korthikanti et al. 2022, sec. 4.2.2).
        per_token = (ph * h + pf * f * self.spec.experts_per_token) * act / self.tp
        bw, src = self.bandwidth()
        fwd = per_token * self.tokens / bw
        return 3 * fwd, fwd, src

    def fp8_casts(self) -> tuple[float, float]:
        """(fwd+bwd, fwd) seconds of one block's FP8 scaling and casts, one micro-batch."""
        if not self.fp8 or self.eff.gemm_fp8 is None or self.hw is None:
            return 0.0, 0.0
        fwd_b = bwd_b = 0.0
        gemms = block_gemms(self.spec, self.tokens, self.tp, self.ep)
        shared_input = 0.0
        if self.tp > 1:
            # Under TP the column-parallel layers' common input (the attention and the MLP
            # block input) is cast once, on its sequence shard, before the FP8 all-gather
            # (torchao float8_tensor_parallel.PrepareFloat8ModuleInput: "the float8 cast
            # happens before the all-gather ... we perform fp8 allgather only once");
            # backward transposes the gathered FP8 copy once per module.
            shared_input = 2.0 * self.tokens * self.sh.hidden
            fwd_b += _FP8_CAST_BYTES * shared_input / self.tp
            bwd_b += _FP8_TRANSPOSE_BYTES * shared_input
        for g, (_n, _k, row, _expert) in zip(gemms, _weight_matrices(self.spec), strict=True):
            mk, nk, mn = g.m * g.k * g.count, g.n * g.k * g.count, g.m * g.n * g.count
            if self.tp > 1 and not row and not _expert:
                mk = 0.0  # its input was cast above
            fwd_b += _FP8_CAST_BYTES * (mk + nk)
            bwd_b += _FP8_CAST_BYTES * mn + _FP8_TRANSPOSE_BYTES * (mk + nk + mn)
        bw, _ = self.bandwidth()
        return (fwd_b + bwd_b) / bw, fwd_b / bw

    def tp_comm(self) -> float:
        """Exposed tensor-parallel collectives of one block, one micro-batch.

        With sequence parallelism each block does 2 all-gathers and 2 reduce-scatters of a
        (tokens x h) activation forward and the same backward (Korthikanti et al. 2022,
        sec. 4.2.2); a full recompute repeats the forward's. Under FP8 the forward
        all-gathers carry the FP8-cast GEMM input (1 byte per element; torchao's
        Float8ColwiseParallel, Transformer Engine's sequence-parallel FP8 all-gather);
        reduce-scatters sum 16-bit outputs and gradients.

        Overlapped TP (:meth:`tp_overlapped`) splits each collective into ``t`` per-rank
        chunks pipelined with the partial GEMMs that consume or produce them (Wang et al.
        2023, "Overlap Communication with Dependent Computation via Decomposition";
        torchtitan async TP; Transformer Engine userbuffers): the profile's fitted
        ``tp_overlap`` share is hidden, never more than the ``(t - 1) / t`` chunks that have
        a partial GEMM to run under.
        """
        if self.tp == 1:
            return 0.0
        act = 4 if self.dtype in ("fp32", "tf32") else 2
        per = self.tokens * self.sh.hidden * act * (self.tp - 1) / self.tp
        full = self.config.checkpointing is Checkpointing.FULL
        count = 8.0 + (4 if full else 0)
        if self.fp8 and self.eff.gemm_fp8 is not None:
            count -= (2 + (2 if full else 0)) / 2
        bw = self.measured_busbw("all_gather", self.tp) or self.link(self.tp > self.node)[0]
        seconds = count * per / bw
        hidden = self.tp_hidden_share()
        return seconds * (1.0 - hidden)

    def tp_hidden_share(self) -> float:
        """Share of the TP collectives hidden under the dependent GEMMs (0 when not
        overlapped or where no share is fitted for the generation)."""
        if self.tp == 1 or not self.config.tp_overlapped or self.eff.tp_overlap is None:
            return 0.0
        return min(self.eff.tp_overlap.value, (self.tp - 1) / self.tp)

    def ep_comm(self) -> float:
        """Exposed expert-parallel all-to-alls of one MoE block, one micro-batch: dispatch and
        combine, forward and backward (Lepikhin et al. 2021; Fedus et al. 2022)."""
        if self.ep <= 1 or self.spec.num_experts <= 1:
            return 0.0
        per = (
            self.tokens * self.spec.experts_per_token * self.sh.hidden * 2 * (self.ep - 1) / self.ep
        )
        bw, _ = self.link(self.ep * self.tp > self.node)
        return 4 * per / bw

    def micro_batch(self, zeroth: bool) -> tuple[dict[str, ComponentTime], float, float]:
        """The terms of one micro-batch on one stage, and its (forward, backward) compute."""
        c = self.config
        L = self.stage_layers
        parts: dict[str, ComponentTime] = {}
        g_fb, g_fwd, g_src = self.layer_gemm()
        adapters = c.task in (Task.LORA, Task.QLORA)
        if zeroth:
            body = 2 * g_fwd  # two forward passes, no backward (Malladi et al. 2023)
        elif adapters:
            body = g_fb * 2 / 3  # frozen base: activation gradients only
        else:
            body = g_fb
        if c.dp_sgd and not zeroth:
            body *= 4 / 3  # per-sample gradients redo the weight-gradient GEMMs
        parts["forward_backward"] = ComponentTime(seconds=body * L, source=g_src)
        a_fb, a_fwd, a_src = self.attention()
        parts["attention"] = ComponentTime(
            seconds=(2 * a_fwd if zeroth else a_fb) * L, source=a_src, detail=self.kernel.value
        )
        e_fb, e_fwd, e_src = self.elementwise()
        if e_fb:
            parts["elementwise"] = ComponentTime(
                seconds=(2 * e_fwd if zeroth else e_fb) * L,
                source=e_src,
                detail=f"{c.stack.value} stack, at memory bandwidth",
            )
        cast_fb, cast_fwd = self.fp8_casts()
        if cast_fb:
            parts["fp8_casts"] = ComponentTime(
                seconds=(cast_fwd if zeroth else cast_fb) * L,
                source=Source.ANALYTIC,
                detail="dynamic tensor-wise scaling, at memory bandwidth",
            )
        if not zeroth and c.checkpointing is Checkpointing.FULL:
            rec = (g_fwd + a_fwd + e_fwd) * L
            parts["recompute"] = ComponentTime(seconds=rec, source=_merge(g_src, a_src))
        elif not zeroth and c.checkpointing is Checkpointing.SELECTIVE:
            # Selective recompute re-runs the attention core and the cheap elementwise ops,
            # not the GEMMs (Korthikanti et al. 2022, sec. 5).
            parts["recompute"] = ComponentTime(seconds=(a_fwd + e_fwd) * L, source=a_src)
        elif not zeroth and c.checkpointing is Checkpointing.SELECTIVE_LAYER:
            # torchtitan's layer-level selective AC: every ac_frequency-th block recomputes
            # its whole forward.
            rec = (g_fwd + a_fwd + e_fwd) * (L // c.ac_frequency)
            parts["recompute"] = ComponentTime(seconds=rec, source=_merge(g_src, a_src))
        elif not zeroth and c.checkpointing is Checkpointing.SELECTIVE_OP:
            # torchtitan's op-level SAC re-runs every matmul it does not save (each second
            # mm) and every pointwise op; the attention kernel's output is saved.
            share = selective_op_recompute_share(self.spec)
            rec = (g_fwd * share + e_fwd) * L
            parts["recompute"] = ComponentTime(seconds=rec, source=g_src)
        # The LM head and the loss run on the last pipeline stage, the critical path.
        vocab = self.spec.vocab_size or 0
        head = [Gemm(m=self.tokens, n=max(1, vocab // self.tp), k=self.sh.hidden)]
        head_fwd, head_src = (
            self.gemm_seconds(head, low_precision=False) if vocab else (0.0, Source.ANALYTIC)
        )
        parts["lm_head"] = ComponentTime(seconds=head_fwd * (2 if zeroth else 3), source=head_src)
        bw, bw_src = self.bandwidth()
        cb = 4 if self.dtype in ("fp32", "tf32") else 2
        stack = Stack.FUSED if c.loss_fused else Stack.HF
        per_logit = _LOSS_BYTES[stack] * (cb / 2 if stack is Stack.HF else 1.0)
        loss_bytes = self.tokens * vocab / self.tp * (per_logit / 3 * 2 if zeroth else per_logit)
        if not zeroth and not adapters:
            # A dense embedding gradient is zeroed and scattered into (fp32).
            loss_bytes += 2 * vocab * self.sh.hidden * 4 / self.tp
        parts["loss_and_embedding"] = ComponentTime(seconds=loss_bytes / bw, source=bw_src)
        if c.task is Task.QLORA:
            # NF4 dequantisation reads the 4-bit base and writes 16-bit tiles, forward and
            # backward: ~2.5 bytes per weight, twice per micro-step (Dettmers et al. 2023).
            local = self.sh.params / (self.tp * self.pp)
            parts["dequantize"] = ComponentTime(seconds=2 * 2.5 * local / bw, source=bw_src)
        tp_s = self.tp_comm() * L
        if tp_s:
            parts["tensor_parallel_comm"] = ComponentTime(
                seconds=tp_s,
                source=Source.ANALYTIC,
                detail=f"TP={self.tp} sequence-parallel all-gather/reduce-scatter, "
                + (
                    f"{self.tp_hidden_share():.0%} hidden (overlapped TP)"
                    if self.tp_hidden_share()
                    else "exposed"
                ),
            )
        ep_s = self.ep_comm() * L
        if ep_s:
            parts["expert_all_to_all"] = ComponentTime(
                seconds=ep_s, source=Source.ANALYTIC, detail=f"EP={self.ep}"
            )
        if self.pp > 1:
            act = 4 if self.dtype in ("fp32", "tf32") else 2
            # Activations forward and their gradients backward between neighbouring stages,
            # v times with interleaving; Megatron's scatter/gather sends 1/t per TP rank
            # (Narayanan et al. 2021, sec. 4.1).
            bytes_ = 2 * self.v * self.tokens * self.sh.hidden * act / self.tp
            bw_p2p, _ = self.link(self.tp * self.dp >= self.node)
            parts["pipeline_p2p"] = ComponentTime(
                seconds=bytes_ / bw_p2p, source=Source.ANALYTIC, detail="1F1B send/recv"
            )
        head_share = self.head_on_critical_path(parts)
        if head_share < 1.0:
            for key in ("lm_head", "loss_and_embedding"):
                part = parts[key]
                parts[key] = part.model_copy(
                    update={
                        "seconds": part.seconds * head_share,
                        "detail": f"{head_share:.0%} on the busiest stage's path",
                    }
                )
        fwd = (g_fwd + a_fwd + e_fwd) * L + head_fwd * head_share
        total = sum(p.seconds for p in parts.values())
        return parts, fwd, max(total - fwd, 0.0)

    def head_on_critical_path(self, parts: dict[str, ComponentTime]) -> float:
        """Share of the LM head and loss that lengthens the busiest stage's micro-batch.

        1F1B runs at the pace of its slowest stage. The last stage holds
        ``last_stage_layers`` layers plus the head; when it is lighter than the busiest
        stage (uneven splits, Llama 3's balancing) only what exceeds the busiest stage
        counts (none for Llama 3 405B on 16 stages).
        """
        if self.pp <= 1 or self.last_stage_layers >= self.stage_layers:
            return 1.0
        per_layer_keys = (
            "forward_backward",
            "attention",
            "elementwise",
            "fp8_casts",
            "recompute",
            "tensor_parallel_comm",
            "expert_all_to_all",
        )
        per_layer = sum(parts[k].seconds for k in per_layer_keys if k in parts)
        per_layer /= max(self.stage_layers, 1.0)
        head = parts["lm_head"].seconds + parts["loss_and_embedding"].seconds
        if head <= 0:
            return 1.0
        spare = (self.stage_layers - self.last_stage_layers) * per_layer
        return max(head - spare, 0.0) / head

    # --- per step ---------------------------------------------------------------------------

    def micro_batches(self, zeroth: bool) -> tuple[dict[str, ComponentTime], float, float, float]:
        """The terms of the step's ``A`` micro-batches (:meth:`micro_batch` scaled by the
        accumulation), one micro-batch's forward and backward compute and its seconds;
        memoised (a fresh dict each time: the caller adds to it).

        NOTE: the plan search prices thousands of plans that differ only in what acts once
        per step (optimizer, sharding, offload): their micro-batch terms are the same. The
        key is everything :meth:`micro_batch` reads: the identities of the model, the
        hardware profile (its efficiencies follow from it) and the calibration (the entry
        keeps them alive, so their ids are not reused), the link override, the node size,
        and every configuration field but those of :data:`_PER_STEP_FIELDS`; the scaled
        terms add the accumulation to it.
        """
        c = self.config
        key = (
            id(self.spec),
            id(self.hw),
            id(self.cal),
            self.link_override,
            self.node,
            zeroth,
            _MICRO_BATCH_VALUES(c),
        )
        A = c.grad_accumulation
        scaled = _SCALED.get((key, A))
        if scaled is None:
            hit = _MICRO_BATCH.get(key)
            if hit is None:
                if len(_MICRO_BATCH) > 8192:
                    _MICRO_BATCH.clear()
                    _SCALED.clear()
                hit = _MICRO_BATCH[key] = ((self.spec, self.hw, self.cal), self.micro_batch(zeroth))
            parts, fwd, bwd = hit[1]
            mb_seconds = sum(p.seconds for p in parts.values())
            # NOTE: built directly (not model_copy): the same values, a third of the time.
            times = {
                k: ComponentTime(seconds=p.seconds * A, source=p.source, detail=p.detail)
                for k, p in parts.items()
            }
            scaled = _SCALED[key, A] = (hit[0], (times, fwd, bwd, mb_seconds))
        times, fwd, bwd, mb_seconds = scaled[1]
        return dict(times), fwd, bwd, mb_seconds

    def run(
        self,
        state_bytes: float,
        order: str,
        interval: int | None,
        fused_step: bool = True,
        paged_traffic: float = 0.0,
    ) -> StepTime:
        c = self.config
        zeroth = order == "zeroth"
        parts, fwd, bwd, mb_seconds = self.micro_batches(zeroth)
        A = c.grad_accumulation
        if self.pp > 1:
            bubble = (self.pp - 1) / self.v * mb_seconds
            parts["pipeline_bubble"] = ComponentTime(
                seconds=bubble,
                source=Source.ANALYTIC,
                detail=f"1F1B bubble (p-1)/(m v) = {self.pp - 1}/({A}x{self.v}) of compute",
            )
        if c.activation_offload and not zeroth:
            # What the blocks save for backward goes to host memory in forward and comes
            # back in backward on a side stream (torchao/torchtune activation offloading):
            # the block inputs under full recomputation, everything a block keeps without it
            # (the memory model's count).
            act = saved_activation_bytes(self.spec, c, math.ceil(self.stage_layers))
            moved = 2 * act / self.pcie()
            exposed = max(0.0, moved - self.eff.overlap.value * (fwd + bwd))
            parts["activation_offload"] = ComponentTime(
                seconds=exposed * A, source=Source.ANALYTIC, detail="PCIe, overlapped"
            )
        parts["optimizer_step"] = self.optimizer(state_bytes, zeroth, interval, bwd, fused_step)
        mixed = (Precision.BF16_MIXED, Precision.FP16_MIXED, Precision.FP8_MIXED)
        if c.precision in mixed and not zeroth:
            # fp32 master weights: 16-bit gradients up-cast before the step, updated masters
            # cast back into the 16-bit weights: ~12 bytes moved per trainable parameter.
            bw, src = self.bandwidth()
            parts["master_copies"] = ComponentTime(
                seconds=12 * self.trainable_local() / bw, source=src
            )
        if c.offload is not Offload.NONE and not zeroth:
            parts["offload_transfer"] = self.offload(fwd, bwd)
        if paged_traffic > 0:
            # bitsandbytes syncs the stream after every parameter's update (sync_gpu), so the
            # migrations of its paged states are not hidden behind compute.
            parts["paged_states"] = ComponentTime(
                seconds=paged_traffic / self.pcie(),
                source=Source.ANALYTIC,
                detail="unified-memory migration of paged optimizer states over PCIe",
            )
        if self.dp > 1:
            parts["communication"] = self.data_parallel(fwd, bwd)
        total = sum(p.seconds for p in parts.values())
        sources = {p.source for p in parts.values() if p.seconds > 0}
        source = sources.pop() if len(sources) == 1 else Source.MIXED
        return StepTime(seconds=total, source=source, components=parts)

    def trainable(self) -> int:
        c, sh = self.config, self.sh
        if c.task in (Task.LORA, Task.QLORA):
            # The adapters on the configured targets, r x (d_in + d_out) per adapted matrix
            # (Hu et al. 2021), and any whole tensor trained beside them.
            return trainable_parameter_count(self.spec, c)
        return sh.params

    def shard(self, from_stage: int) -> int:
        stage = self.config.sharding.zero_stage
        if stage < from_stage:
            return 1
        if self.config.sharding is Sharding.HSDP:
            return self.shard_group()
        return self.dp

    def shard_group(self) -> int:
        group = self.config.shard_group or max(1, self.node // self.tp)
        return max(1, min(group, self.dp))

    def trainable_local(self) -> float:
        """Trainable parameters this device steps: its TP/PP shard, then its ZeRO shard."""
        return self.trainable() / (self.tp * self.pp) / self.shard(1)

    def optimizer(
        self,
        state_bytes: float,
        zeroth: bool,
        interval: int | None,
        bwd: float,
        fused_step: bool = True,
    ) -> ComponentTime:
        c = self.config
        local = self.trainable_local()
        steps = c.grad_accumulation if c.optimizer_in_backward else 1
        if self.results is not None and not zeroth:
            timed = [
                o
                for o in self.results.optimizers
                if o.optimizer == c.optimizer and o.status == "ok" and o.per_step_s is not None
            ]
            if timed and c.offload is Offload.NONE:
                # Best measured variant (fused where available), per parameter, scaled to the
                # parameters this device steps (embeddings included, sharding applied).
                best = min(timed, key=lambda o: o.per_step_s or 0.0)
                per_param = (best.per_step_s or 0.0) / max(best.layer_parameters, 1)
                detail = f"{best.variant or 'default'}, {per_param * 1e9:.2f} ns/param"
                return ComponentTime(
                    seconds=per_param * local * steps, source=Source.MEASURED, detail=detail
                )
        bw, src = self.bandwidth()
        if zeroth:
            # MeZO: 4 in-place perturbation passes over the weights (perturb +, -, restore,
            # update), each reading and writing them and drawing a normal sample per weight.
            wb = _weight_bytes(c.precision)
            local_w = self.sh.params / (self.tp * self.pp)
            return ComponentTime(
                seconds=4 * local_w * (2 * wb + 4) / bw,
                source=src,
                detail="seeded perturbation passes",
            )
        if c.offload is not Offload.NONE:
            seconds = local * (_STEP_BASE_BYTES + state_bytes) / (HOST_STEP_GB_S * 1e9)
            detail = "on the host CPU"
            if c.offload.nvme:
                # States are read from and written back to NVMe every step.
                seconds += 2 * local * (state_bytes + 4) / (NVME_GB_S * 1e9)
                detail += ", states on NVMe"
            if c.optimizer_in_backward:
                # Per-parameter host steps run while backward continues on the GPU
                # (ZeRO-Offload's overlap; LOMO-style fused updates).
                seconds = max(seconds / max(self.stage_layers, 1.0), seconds - bwd)
                detail += ", overlapped with backward"
            return ComponentTime(seconds=seconds, source=Source.ANALYTIC, detail=detail)
        traffic = _STEP_BASE_BYTES + 2 * state_bytes
        variant = "fused"
        if not fused_step:
            traffic *= FOREACH_TRAFFIC
            variant = "foreach"
        if c.optimizer_in_backward:
            traffic -= 4  # the gradient is consumed where it is produced, never re-read
        seconds = local * traffic * steps / bw
        if interval and self.hw is not None:
            # Preconditioner refresh: ~10 d^3 FLOPs per d x d factor (eigendecomposition or
            # inverse root), amortised over the interval (Gupta et al. 2018; Vyas et al. 2024).
            d = min(self.sh.hidden, 1024)
            share = self.trainable() / max(self.sh.params, 1)
            factors = (
                2
                * (self.sh.layer_params // max(d * d, 1))
                * self.sh.layers
                * share
                / self.shard(1)
                / (self.tp * self.pp)
            )
            refresh = 10 * d**3 * factors / (self.hw.peak_tflops.fp32 * 1e12 * REFRESH_EFFICIENCY)
            seconds += refresh / interval
        return ComponentTime(
            seconds=seconds, source=src if self.hw is None else Source.ANALYTIC, detail=variant
        )

    def offload(self, fwd: float, bwd: float) -> ComponentTime:
        """Gradients down and updated parameters up every step over PCIe; streamed weights
        every micro-step when the parameters live off the device, prefetched under compute
        (ZeRO-Offload, Ren et al. 2021; ZeRO-Infinity, Rajbhandari et al. 2021)."""
        c = self.config
        local = self.trainable_local()
        pcie = self.pcie()
        seconds = local * (_grad_bytes(c.precision) + _weight_bytes(c.precision)) / pcie
        if c.optimizer_in_backward:
            seconds = max(seconds / max(self.stage_layers, 1.0), seconds - bwd)
        if c.offload.params:
            wb = _weight_bytes(c.precision)
            params = self.sh.params / (self.tp * self.pp) / self.shard(3)
            source_bw = min(pcie, NVME_GB_S * 1e9) if c.offload.nvme else pcie
            per_micro = 2 * params * wb / source_bw
            hidden = self.eff.overlap.value * (fwd + bwd)
            seconds += max(per_micro / max(self.stage_layers, 1.0), per_micro - hidden) * (
                c.grad_accumulation
            )
        return ComponentTime(seconds=seconds, source=Source.ANALYTIC, detail="PCIe transfers")

    def data_parallel(self, fwd: float, bwd: float) -> ComponentTime:
        """Exposed data-parallel collectives: what forward/backward compute does not hide.

        FSDP/ZeRO-3 all-gather the parameters before forward and again before backward and
        reduce-scatter the gradients every micro-step, prefetching one layer ahead
        (Rajbhandari et al. 2020; Zhao et al. 2023); HSDP does that inside a shard group and
        all-reduces the gradient shards across groups once per step. DDP and ZeRO-1
        all-reduce gradients once per step in buckets during the last backward; ZeRO-2
        reduce-scatters every micro-step; ZeRO-1/2 all-gather the updated parameters after
        the step. Ring collectives move (n-1)/n of the data over each rank's link at the NCCL
        bus bandwidth (nccl-tests PERFORMANCE.md). Under pipeline parallelism FSDP/HSDP
        gather the parameters once and reduce the gradients once per step:
        torch.distributed.pipelining turns gradient sync and resharding off for every
        micro-batch's backward but the last (stage.py ``backward_maybe_with_nosync``), and
        torchtitan does not reshard after forward with PP (the memory model keeps those
        parameters gathered and gradients unsharded).
        """
        c = self.config
        eta = self.eff.overlap.value
        L = max(self.stage_layers, 1.0)
        A = c.grad_accumulation
        # One gather and one reduction per step (see above).
        pipelined = self.pp > 1 and c.sharding in (Sharding.FSDP, Sharding.HSDP)
        if pipelined:
            A = 1
        wb, gb = _weight_bytes(c.precision), _grad_bytes(c.precision)
        params = self.sh.params / (self.tp * self.pp)
        grads = self.trainable() / (self.tp * self.pp) * gb
        stage = c.sharding.zero_stage
        n = self.shard_group() if c.sharding is Sharding.HSDP else self.dp
        intra = self.hw.intra_node if self.hw is not None else None
        slower = (
            c.sharding is not Sharding.HSDP
            and self.link_override is not None
            and intra is not None
            and self.link_override < intra.bandwidth_gb_s
        )
        crosses = self.tp * n > self.node or slower
        measured = self.measured_busbw("all_gather", n) if not crosses else None
        per_node = min(n, max(1, self.node // self.tp))
        bw, name = (
            (measured, "measured NCCL")
            if measured
            else self.link(crosses, data_parallel=True, per_node=per_node)
        )
        share = (n - 1) / n
        exposed = 0.0
        if stage == 3:
            ag = share * params * wb / bw
            rs = share * grads / bw
            exp_f = max(ag / L, ag - eta * fwd)
            regather = 0.0 if pipelined else ag  # no reshard after forward under PP
            exp_b = max((regather + rs) / L, regather + rs - eta * bwd)
            exposed = (exp_f + exp_b) * A
            detail = f"FSDP/ZeRO-3 over {n} ranks ({name})"
            if c.sharding is Sharding.HSDP and self.dp > n:
                r = self.dp // n
                bw_x, name_x = self.link(True, data_parallel=True)
                ar = 2 * (r - 1) / r * grads / n / bw_x
                exposed += max(ar / L, ar - eta * bwd)
                detail += f" + all-reduce over {r} replicas ({name_x})"
        else:
            if stage == 2:
                rs = share * grads / bw
                exposed = max(rs / L, rs - eta * bwd) * A
            else:
                ar = 2 * share * grads / bw
                exposed = max(ar / L, ar - eta * bwd)
            if stage in (1, 2):
                exposed += share * self.trainable() / (self.tp * self.pp) * wb / bw
            detail = f"{'DDP' if stage == 0 else f'ZeRO-{stage}'} over {n} ranks ({name})"
        src = Source.MEASURED if measured else Source.ANALYTIC
        if self.hw is None and self.cal is not None and self.cal.allreduce_gb_s:
            # CPU calibration: gloo all-reduce bus bandwidth, no overlap.
            volume = 2 * share * grads * (A if stage == 3 else 1)
            if stage == 3:
                volume += 2 * share * params * wb * A
            return ComponentTime(
                seconds=volume / (self.cal.allreduce_gb_s * 1e9),
                source=Source.MEASURED,
                detail="ring collectives at the measured gloo bus bandwidth",
            )
        return ComponentTime(seconds=exposed, source=src, detail=detail + ", exposed")


def predict_for_optimizer(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Technique,
    *,
    calibration: CalibrationCache | None,
    hardware: HardwareProfile | None,
    interconnect_gb_s: float | None = None,
    gpus_per_node: int | None = None,
) -> StepTime:
    """:func:`predict_step_time` with the optimizer's facts read from its taxonomy entry
    (state bytes, order, refresh interval): how the recommender, ``estimate`` and the
    benchmarks all call the cost model. A paged optimizer on a CUDA profile adds the
    migration of the states the device cannot hold (memory.paged_residency)."""
    paged_traffic = 0.0
    if (
        optimizer.memory is not None
        and optimizer.memory.paged
        and hardware is not None
        and hardware.kind is DeviceKind.CUDA
    ):
        totals = memory_totals(spec, config, optimizer=optimizer, device=DeviceOverheads())
        if totals.paged_bytes:
            residency = paged_residency(
                totals.paged_bytes, totals.total_bytes, hardware.memory_bytes
            )
            paged_traffic = float(residency.traffic_bytes)
    return predict_step_time(
        spec,
        config,
        calibration=calibration,
        hardware=hardware,
        optimizer_bytes_per_param=optimizer.memory.bytes_per_param if optimizer.memory else 0.0,
        optimizer_order=optimizer.order.value if optimizer.order else "first",
        preconditioner_interval=optimizer.compute.preconditioner_interval,
        optimizer_fused_step=fused_step_on(optimizer.memory, config.stack, config.optimizer_impl)
        if optimizer.memory
        else True,
        interconnect_gb_s=interconnect_gb_s,
        gpus_per_node=gpus_per_node,
        paged_traffic_bytes=paged_traffic,
    )
