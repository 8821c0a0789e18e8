"""The cost model: predicted time of one optimizer step, term by term, measured or analytic.

step = A x (layers fwd+bwd + attention + recompute + LM head) + optimizer step
       + offload transfers + data-parallel communication,  A = gradient-accumulation steps.

Each term is ``measured`` when it comes from this device's calibration cache at the model's
own layer shape, ``analytic`` when it comes from datasheet figures (a hardware profile).
Communication and offload are not overlapped with compute (a conservative choice).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Task,
    TrainingConfig,
)
from advisor.costdata import CalibrationCache, LayerShape, LayerTiming, ShapeResults
from advisor.hardware import HardwareProfile
from advisor.modelspec import Mlp, ModelSpec
from advisor.taxonomy import Technique

# NOTE: analytic compute runs at this share of the datasheet dense peak. Well-tuned
# large-model training reaches 40-56% model FLOPs utilisation (Korthikanti et al. 2022
# report 56.3% for a 1T GPT on A100s with selective recomputation); 0.45 is the middle.
ANALYTIC_MFU = 0.45
# Memory-bound kernels (optimizer steps, perturbations) reach about this share of the
# datasheet bandwidth (STREAM-like copies reach 80-90% on GPUs).
BANDWIDTH_EFFICIENCY = 0.8
# All-reduce reaches about this share of the link's datasheet bandwidth (NCCL bus bandwidth
# of ring all-reduce is typically 70-85% of the unidirectional link rate).
COMM_EFFICIENCY = 0.75
# Offloaded optimizer steps and transfers: PCIe 4.0 x16 sustains ~25 GB/s one way, and a
# host CPU step runs at ~1/5 of GPU-memory speed per byte (ZeRO-Offload, Ren et al. 2021).
PCIE_GB_S = 25.0
HOST_STEP_GB_S = 50.0
# Bytes an optimizer step reads and writes per trainable parameter, beyond its states:
# the parameter (read + write) and its gradient (read), in fp32.
_STEP_BASE_BYTES = 12
# Second-order refreshes (eigendecompositions, inverse roots) run far below peak: ~5%.
REFRESH_EFFICIENCY = 0.05


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
        gated_mlp=spec.mlp is Mlp.GATED_SILU,
    )


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


class _Shape(BaseModel):
    model_config = ConfigDict(frozen=True)

    layers: int
    layer_matmul_params: int  # the block's matrix parameters an token multiplies (active experts)
    layer_params: int
    head_params: int  # LM head matmul (vocab x hidden)
    params: int
    hidden: int
    heads: int


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


def predict_step_time(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    calibration: CalibrationCache | None,
    hardware: HardwareProfile | None,
    optimizer_bytes_per_param: float = 8.0,
    optimizer_order: str = "first",
    preconditioner_interval: int | None = None,
    interconnect_gb_s: float | None = None,
) -> StepTime:
    """Predict one optimizer step's seconds for ``config`` on one device.

    Args:
        spec: the model.
        config: the configuration (micro-batch, accumulation, precision, attention ...).
        calibration: this device's measurements (None: analytic only).
        hardware: datasheet figures for whatever was not measured.
        optimizer_bytes_per_param: the optimizer's state bytes (analytic step cost).
        optimizer_order: zeroth, first or second (zeroth-order has no backward).
        preconditioner_interval: steps between refreshes (analytic second-order cost).
        interconnect_gb_s: the all-reduce's slowest link, bidirectional GB/s (default: the
            profile's intra-node link).

    Returns:
        The step time with every component labelled measured or analytic.

    Raises:
        ValueError: when neither a calibration nor a hardware profile is given.
    """
    if calibration is None and hardware is None:
        raise ValueError("predict_step_time needs a calibration or a hardware profile")
    sh = _shape(spec)
    results = calibration.results_for(layer_shape(spec)) if calibration else None
    dtype = compute_dtype(config.precision)
    tokens = config.micro_batch * config.seq_len
    zeroth = optimizer_order == "zeroth"
    parts: dict[str, ComponentTime] = {}

    layer_fb, layer_fwd, layer_src = _layer_cost(results, hardware, sh, dtype, tokens)
    adapters = config.task in (Task.LORA, Task.QLORA)
    if zeroth:
        # Two forward passes, no backward (Malladi et al. 2023).
        body = 2 * layer_fwd
    elif adapters:
        # Frozen base: activation gradients only, no weight gradients (2 of the 3 matmuls).
        body = layer_fb * 2 / 3
    else:
        body = layer_fb
    if config.dp_sgd and not zeroth:
        # Per-sample gradients redo the weight-gradient matmuls per sample (+1/3).
        body *= 4 / 3
    parts["forward_backward"] = ComponentTime(seconds=body * sh.layers, source=layer_src)

    att, att_fwd, att_src = _attention_cost(results, hardware, spec, config, dtype)
    parts["attention"] = ComponentTime(
        seconds=(2 * att_fwd if zeroth else att) * sh.layers * config.micro_batch, source=att_src
    )
    if not zeroth and config.checkpointing is Checkpointing.FULL:
        rec = (layer_fwd + att_fwd * config.micro_batch) * sh.layers
        parts["recompute"] = ComponentTime(seconds=rec, source=_merge(layer_src, att_src))
    elif not zeroth and config.checkpointing is Checkpointing.SELECTIVE:
        parts["recompute"] = ComponentTime(
            seconds=att_fwd * config.micro_batch * sh.layers, source=att_src
        )
    head_flops = (2 if zeroth else 6) * sh.head_params * tokens
    head_s, head_src = _matmul_seconds(results, hardware, head_flops, dtype)
    parts["lm_head"] = ComponentTime(seconds=head_s, source=head_src)
    if config.task is Task.QLORA:
        # NF4 dequantisation reads the 4-bit base and writes 16-bit tiles, forward and
        # backward: ~2.5 bytes per weight, twice per micro-step (Dettmers et al. 2023).
        bw = _bandwidth(calibration, hardware)
        parts["dequantize"] = ComponentTime(
            seconds=2 * 2.5 * sh.params / bw, source=_bw_source(calibration)
        )

    # Memory-bound work outside the blocks: the loss reads the logits and writes fp32
    # probabilities and (with a backward) the logits' gradient; a dense embedding gradient is
    # zeroed and scattered into. Priced at the device's copy bandwidth.
    bw = _bandwidth(calibration, hardware)
    cb = 4 if dtype in ("fp32", "tf32") else 2
    vocab = spec.vocab_size or 0
    h = spec.hidden_size or 0
    if zeroth:
        loss_bytes = 2 * tokens * vocab * (cb + 4)
    else:
        loss_bytes = tokens * vocab * (2 * cb + 8)
        if config.task not in (Task.LORA, Task.QLORA):
            loss_bytes += 2 * vocab * h * 4
    parts["loss_and_embedding"] = ComponentTime(
        seconds=loss_bytes / bw, source=_bw_source(calibration)
    )

    accumulation = config.grad_accumulation
    for key in list(parts):
        parts[key] = parts[key].model_copy(update={"seconds": parts[key].seconds * accumulation})

    parts["optimizer_step"] = _optimizer_cost(
        results,
        calibration,
        hardware,
        spec,
        config,
        sh,
        optimizer_bytes_per_param,
        zeroth,
        preconditioner_interval,
    )
    if (
        config.precision in (Precision.BF16_MIXED, Precision.FP16_MIXED, Precision.FP8_MIXED)
        and not zeroth
    ):
        # fp32 master weights: 16-bit gradients up-cast before the step, updated masters
        # cast back into the 16-bit weights: ~12 bytes moved per trainable parameter.
        trainable = _trainable(spec, config, sh) / _shard_degree(config, 1)
        parts["master_copies"] = ComponentTime(
            seconds=12 * trainable / _bandwidth(calibration, hardware),
            source=_bw_source(calibration),
        )
    if config.offload is not Offload.NONE and not zeroth:
        trainable = _trainable(spec, config, sh)
        moved = trainable * (2 + 2)  # 16-bit gradients down, 16-bit parameters back
        if config.offload.params:
            moved += 2 * sh.params * 2 * accumulation  # weights streamed in, fwd and bwd
        parts["offload_transfer"] = ComponentTime(
            seconds=moved / (PCIE_GB_S * 1e9), source=Source.ANALYTIC
        )
    if config.gpus > 1:
        parts["communication"] = _communication(
            calibration, hardware, spec, config, sh, interconnect_gb_s
        )

    total = sum(p.seconds for p in parts.values())
    sources = {p.source for p in parts.values() if p.seconds > 0}
    source = sources.pop() if len(sources) == 1 else Source.MIXED
    return StepTime(seconds=total, source=source, components=parts)


def _merge(a: Source, b: Source) -> Source:
    return a if a == b else Source.MIXED


def _layer_cost(
    results: ShapeResults | None, hw: HardwareProfile | None, sh: _Shape, dtype: str, tokens: int
) -> tuple[float, float, Source]:
    """(fwd+bwd, fwd) seconds of one block without the attention core."""
    measured = _find_layer(results, dtype)
    if measured is not None:
        fb = measured.seconds_per_token * tokens
        fwd = measured.forward_seconds_per_token
        return fb, (fwd * tokens if fwd is not None else fb / 3), Source.MEASURED
    assert hw is not None
    flops = 6 * sh.layer_matmul_params * tokens
    fb = flops / (_peak_flops(hw, dtype) * ANALYTIC_MFU)
    return fb, fb / 3, Source.ANALYTIC


def _find_layer(results: ShapeResults | None, dtype: str) -> LayerTiming | None:
    if results is None:
        return None
    want = "fp32" if dtype == "tf32" else dtype
    return next((lt for lt in results.layers if lt.dtype == want), None)


_BACKEND = {
    Attention.EAGER: "math",
    Attention.FLASH: "flash",
    Attention.MEM_EFFICIENT: "mem-efficient",
}


def _attention_cost(
    results: ShapeResults | None,
    hw: HardwareProfile | None,
    spec: ModelSpec,
    config: TrainingConfig,
    dtype: str,
) -> tuple[float, float, Source]:
    """(fwd+bwd, fwd) seconds of the attention core for one sample and one layer."""
    s = config.seq_len
    if results is not None:
        want = "fp32" if dtype == "tf32" else dtype
        fit = next(
            (
                f
                for f in results.attention
                if f.backend == _BACKEND[config.attention] and f.dtype == want and not f.failed
            ),
            None,
        )
        if fit is not None:
            fb = fit.predict(s)
            return fb, fb / 3, Source.MEASURED
    if hw is None:
        # Measured device, backend not measured there: no datasheet to fall back on.
        hw_fallback = 0.0
        return hw_fallback, hw_fallback, Source.ANALYTIC
    h = spec.hidden_size or 0
    # QK^T and PV: 2 matmuls x 2 s^2 d FLOPs forward; backward twice that. Causal fused
    # kernels skip the masked half (Dao 2023); eager computes all of it.
    causal = 0.5 if config.attention is not Attention.EAGER else 1.0
    flops = 3 * 4 * s * s * h * causal
    t = flops / (_peak_flops(hw, dtype) * ANALYTIC_MFU)
    if config.attention is Attention.EAGER:
        # Eager materialises scores, softmax (fp32) and their gradients: ~5 passes of
        # a·s² four-byte values through memory (Dao et al. 2022).
        heads = spec.num_attention_heads or 1
        t += 5 * 4 * heads * s * s / (hw.memory_bandwidth_gb_s * 1e9 * BANDWIDTH_EFFICIENCY)
    return t, t / 3, Source.ANALYTIC


def _matmul_seconds(
    results: ShapeResults | None, hw: HardwareProfile | None, flops: float, dtype: str
) -> tuple[float, Source]:
    if results is not None:
        want = "fp32" if dtype == "tf32" else dtype
        tflops = results.matmul_tflops.get(want)
        if tflops:
            return flops / (tflops * 1e12), Source.MEASURED
    if hw is None:
        return 0.0, Source.ANALYTIC
    return flops / (_peak_flops(hw, dtype) * ANALYTIC_MFU), Source.ANALYTIC


def _bandwidth(calibration: CalibrationCache | None, hw: HardwareProfile | None) -> float:
    if calibration is not None and calibration.copy_gb_s:
        return calibration.copy_gb_s * 1e9
    assert hw is not None
    return hw.memory_bandwidth_gb_s * 1e9 * BANDWIDTH_EFFICIENCY


def _bw_source(calibration: CalibrationCache | None) -> Source:
    return Source.MEASURED if calibration is not None and calibration.copy_gb_s else Source.ANALYTIC


def _trainable(spec: ModelSpec, config: TrainingConfig, sh: _Shape) -> int:
    if config.task in (Task.LORA, Task.QLORA):
        h = spec.hidden_size or 0
        kv = (spec.num_key_value_heads or 1) * (spec.head_dim or 1)
        q = (spec.num_attention_heads or 1) * (spec.head_dim or 1)
        r = config.lora_rank
        # q, k, v, o adapters: r x (d_in + d_out) each (Hu et al. 2021).
        return sh.layers * r * ((h + q) + (h + kv) * 2 + (q + h))
    return sh.params


def _shard_degree(config: TrainingConfig, from_stage: int) -> int:
    stage = config.sharding.zero_stage
    return config.gpus if stage >= from_stage else 1


def _optimizer_cost(
    results: ShapeResults | None,
    calibration: CalibrationCache | None,
    hw: HardwareProfile | None,
    spec: ModelSpec,
    config: TrainingConfig,
    sh: _Shape,
    state_bytes: float,
    zeroth: bool,
    interval: int | None,
) -> ComponentTime:
    trainable = _trainable(spec, config, sh) / _shard_degree(config, 1)
    if results is not None:
        timed = [
            o
            for o in results.optimizers
            if o.optimizer == config.optimizer and o.status == "ok" and o.per_step_s is not None
        ]
        if timed:
            # Best measured variant (fused where available), per parameter, scaled to the
            # parameters this device steps (embeddings included, sharding applied).
            best = min(timed, key=lambda o: o.per_step_s or 0.0)
            per_param = (best.per_step_s or 0.0) / max(best.layer_parameters, 1)
            detail = f"{best.variant or 'default'}, {per_param * 1e9:.2f} ns/param"
            if config.offload is not Offload.NONE:
                return ComponentTime(
                    seconds=trainable * (_STEP_BASE_BYTES + state_bytes) / (HOST_STEP_GB_S * 1e9),
                    source=Source.ANALYTIC,
                    detail="offloaded to the host CPU",
                )
            return ComponentTime(
                seconds=per_param * trainable, source=Source.MEASURED, detail=detail
            )
    bw = _bandwidth(calibration, hw)
    src = _bw_source(calibration)
    if config.offload is not Offload.NONE:
        bw, src = HOST_STEP_GB_S * 1e9, Source.ANALYTIC
    if zeroth:
        # MeZO: 4 in-place perturbation passes over the weights (perturb +, -, restore,
        # update), each reading and writing them and drawing a normal sample per weight.
        wb = _weight_bytes(config.precision)
        seconds = 4 * sh.params * (2 * wb + 4) / bw
        return ComponentTime(seconds=seconds, source=src, detail="seeded perturbation passes")
    seconds = trainable * (_STEP_BASE_BYTES + 2 * state_bytes) / bw
    if interval and hw is not None:
        # Preconditioner refresh: ~10 d^3 FLOPs per d x d factor (eigendecomposition or
        # inverse root), amortised over the interval (Gupta et al. 2018; Vyas et al. 2024).
        d = min(sh.hidden, 1024)
        # Only trainable matrices carry preconditioners (LoRA: the adapters' share).
        share = _trainable(spec, config, sh) / max(sh.params, 1)
        factors = (
            2 * (sh.layer_params // max(d * d, 1)) * sh.layers * share / _shard_degree(config, 1)
        )
        refresh = 10 * d**3 * factors / (hw.peak_tflops.fp32 * 1e12 * REFRESH_EFFICIENCY)
        seconds += refresh / interval
    return ComponentTime(seconds=seconds, source=src if hw is None else Source.ANALYTIC)


def _communication(
    calibration: CalibrationCache | None,
    hw: HardwareProfile | None,
    spec: ModelSpec,
    config: TrainingConfig,
    sh: _Shape,
    interconnect_gb_s: float | None,
) -> ComponentTime:
    n = config.gpus
    grad_bytes = _trainable(spec, config, sh) * (
        4
        if config.precision
        in (Precision.FP32, Precision.TF32, Precision.AMP_BF16, Precision.AMP_FP16)
        else 2
    )
    share = (n - 1) / n
    if config.sharding.zero_stage == 3:
        # Every micro-step: parameters all-gathered for forward and again for backward, and
        # gradients reduce-scattered: 3 x (n-1)/n x the model, 1.5x the data-parallel volume
        # (Rajbhandari et al. 2020).
        wb = _weight_bytes(config.precision)
        volume = (share * grad_bytes + 2 * share * sh.params * wb) * config.grad_accumulation
    else:
        # Ring all-reduce of the gradients once per optimizer step (ZeRO-1/2: a
        # reduce-scatter plus an all-gather of the same total volume).
        volume = 2 * share * grad_bytes
    if calibration is not None and calibration.allreduce_gb_s and hw is None:
        return ComponentTime(
            seconds=volume / (calibration.allreduce_gb_s * 1e9),
            source=Source.MEASURED,
            detail="ring all-reduce at the measured bus bandwidth",
        )
    assert hw is not None
    link = interconnect_gb_s or (hw.intra_node.bandwidth_gb_s if hw.intra_node else 25.0)
    one_way = link / 2 * COMM_EFFICIENCY
    return ComponentTime(
        seconds=volume / (one_way * 1e9),
        source=Source.ANALYTIC,
        detail=f"ring all-reduce at {one_way:.0f} GB/s one way",
    )


def predict_for_optimizer(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Technique,
    *,
    calibration: CalibrationCache | None,
    hardware: HardwareProfile | None,
    interconnect_gb_s: float | None = None,
) -> StepTime:
    """:func:`predict_step_time` with the optimizer's facts read from its taxonomy entry
    (state bytes, order, refresh interval): how the recommender, ``estimate`` and the
    benchmarks all call the cost model."""
    return predict_step_time(
        spec,
        config,
        calibration=calibration,
        hardware=hardware,
        optimizer_bytes_per_param=optimizer.memory.bytes_per_param if optimizer.memory else 0.0,
        optimizer_order=optimizer.order.value if optimizer.order else "first",
        preconditioner_interval=optimizer.compute.preconditioner_interval,
        interconnect_gb_s=interconnect_gb_s,
    )
