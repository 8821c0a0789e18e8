"""The step-time assembly: one micro-batch's terms on the busiest pipeline stage, scaled by
the accumulation, the pipeline bubble, then what acts once per step (optimizer step, master
copies, offload and paged transfers, data-parallel communication); and the entry points."""

from __future__ import annotations

from advisor.config import MoeOverlap, Offload, OptimizerImpl, TrainingConfig
from advisor.cost import comm, compute, context, host, offload, optimizer
from advisor.cost.data import CalibrationCache
from advisor.cost.efficiency import CPU_EFFICIENCY, efficiency_for
from advisor.cost.expert_overlap import comm_sm_share, dualpipe_bubble, exposed_all_to_all
from advisor.cost.memo import MicroBatch, ModelMemo, Scaled, StepMemo
from advisor.cost.result import ComponentTime, Source, StepTime
from advisor.cost.setting import Setting, micro_batch_config, trainable_local
from advisor.hardware.profiles import DeviceKind, HardwareProfile
from advisor.memory import (
    fused_step_on,
    gpu_overheads,
    memory_totals,
    paged_residency,
)
from advisor.model.spec import ModelSpec
from advisor.rules.taxonomy import StateKind, Technique


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
    optimizer_quantized: bool = False,
    interconnect_gb_s: float | None = None,
    gpus_per_node: int | None = None,
    paged_traffic_bytes: float = 0.0,
    memo: StepMemo | None = None,
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
        optimizer_quantized: bitsandbytes' 8-bit states: the step loops over the tensors,
            one kernel each (the host's share, advisor.cost.host).
        interconnect_gb_s: bidirectional GB/s of the slowest link the data-parallel
            collectives cross (default: the profile's links). A value below the profile's
            intra-node link says that they leave the node.
        gpus_per_node: devices per node (default: the profile's ``gpus_per_node``); ranks
            are laid out TP innermost, then data parallel, then pipeline (Megatron's order).
        paged_traffic_bytes: bytes a paged optimizer's states migrate between host and
            device per step (memory.paged_residency); priced at the host link's rate.
        memo: figures kept across predictions (one per plan search); None computes them
            afresh, with the same result.

    Returns:
        The step time with every component labelled measured or analytic.

    Raises:
        ValueError: when neither a calibration nor a hardware profile is given.
        UserError: when a GPU profile has no fitted efficiencies.
    """
    if calibration is None and hardware is None:
        raise ValueError("predict_step_time needs a calibration or a hardware profile")
    eff = efficiency_for(hardware) if hardware is not None else CPU_EFFICIENCY
    held = (memo or StepMemo()).model(spec, hardware, calibration)
    s = Setting(
        spec,
        micro_batch_config(config),
        calibration,
        hardware,
        eff,
        interconnect_gb_s,
        gpus_per_node,
        shape=held.shape,
        matrices=held.matrices,
        results=held.results,
        memory_memo=held.memory,
    )
    zeroth = optimizer_order == "zeroth"
    parts, fwd, bwd = step_terms(s, config, zeroth, held)
    parts["optimizer_step"] = optimizer.optimizer_step(
        s,
        config,
        optimizer_bytes_per_param,
        zeroth,
        preconditioner_interval,
        bwd,
        optimizer_fused_step,
    )
    if not zeroth and config.savers.offload is Offload.NONE:
        # (an offloaded step runs on the host CPU: DeepSpeed's CPUAdam launches no kernels)
        excess = host.with_optimizer_excess(
            s,
            parts.get("host_overhead"),
            host.optimizer_impl(
                optimizer_fused_step,
                config.kernels.optimizer_impl is OptimizerImpl.FOREACH,
                optimizer_quantized,
            ),
            trainable_local(s, config),
            parts["optimizer_step"].seconds,
        )
        if excess is not None:
            parts["host_overhead"] = excess
    _once_per_step(s, config, parts, zeroth, fwd, bwd, paged_traffic_bytes)
    total = sum(p.seconds for p in parts.values())
    sources = {p.source for p in parts.values() if p.seconds > 0}
    source = sources.pop() if len(sources) == 1 else Source.MIXED
    return StepTime(seconds=total, source=source, components=parts)


def predict_for_optimizer(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Technique,
    *,
    calibration: CalibrationCache | None,
    hardware: HardwareProfile | None,
    interconnect_gb_s: float | None = None,
    gpus_per_node: int | None = None,
    memo: StepMemo | None = None,
) -> StepTime:
    """:func:`predict_step_time` with the optimizer's facts read from its taxonomy entry
    (state bytes, order, refresh interval): how the recommender, ``estimate`` and the
    benchmarks all call the cost model. A paged optimizer on a CUDA profile adds the
    migration of the states the device cannot hold (memory.paged_residency)."""
    kernels = config.kernels
    paged_traffic = 0.0
    if (
        optimizer.memory is not None
        and optimizer.memory.paged
        and hardware is not None
        and hardware.kind is DeviceKind.CUDA
    ):
        held = memo.model(spec, hardware, calibration).memory if memo is not None else None
        totals = memory_totals(
            spec,
            config,
            optimizer=optimizer,
            device=gpu_overheads(hardware.id, hardware.link_domain()),
            memo=held,
        )
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
        optimizer_fused_step=fused_step_on(optimizer.memory, kernels.stack, kernels.optimizer_impl)
        if optimizer.memory
        else True,
        optimizer_quantized=optimizer.memory is not None
        and optimizer.memory.state is StateKind.QUANTIZED_BLOCKWISE,
        interconnect_gb_s=interconnect_gb_s,
        gpus_per_node=gpus_per_node,
        paged_traffic_bytes=paged_traffic,
        memo=memo,
    )


# --- one micro-batch ----------------------------------------------------------------------


def micro_batch(s: Setting, zeroth: bool) -> MicroBatch:
    """The terms of one micro-batch on one stage, and its (forward, backward) compute."""
    parts: dict[str, ComponentTime] = {}
    block_fwd = compute.block_terms(s, zeroth, parts)
    head_fwd = compute.head_terms(s, zeroth, parts)
    comm.parallel_terms(s, parts)
    context.context_terms(s, parts)
    head_share = head_on_critical_path(s, parts)
    if head_share < 1.0:
        for key in ("lm_head", "loss_and_embedding"):
            part = parts[key]
            parts[key] = part.model_copy(
                update={
                    "seconds": part.seconds * head_share,
                    "detail": f"{head_share:.0%} on the busiest stage's path",
                }
            )
    fwd = block_fwd * s.stage_layers + head_fwd * head_share
    total = sum(p.seconds for p in parts.values())
    # NOTE: an eager step's host dispatches and launches every op; where that takes longer
    # than the device's work the micro-batch takes the host's time (advisor.cost.host). The
    # excess is its own term, outside the forward and backward compute that overlap and
    # offload terms read.
    waiting = host.micro_batch_excess(s, zeroth, total)
    if waiting is not None:
        parts["host_overhead"] = waiting
    return parts, fwd, max(total - fwd, 0.0)


# The blocks' compute of one micro-batch: what a paired micro-batch runs beside the
# all-to-alls (advisor/cost/expert_overlap.py).
_BLOCK_COMPUTE = (
    "forward_backward",
    "expert_imbalance",
    "attention",
    "elementwise",
    "fp8_casts",
    "recompute",
)


def head_on_critical_path(s: Setting, parts: dict[str, ComponentTime]) -> float:
    """Share of the LM head and loss that lengthens the busiest stage's micro-batch.

    1F1B runs at the pace of its slowest stage. The last stage holds
    ``last_stage_layers`` layers plus the head; when it is lighter than the busiest
    stage (uneven splits, Llama 3's balancing) only what exceeds the busiest stage
    counts (none for Llama 3 405B on 16 stages).
    """
    if s.pp <= 1 or s.last_stage_layers >= s.stage_layers:
        return 1.0
    per_layer_keys = (
        *_BLOCK_COMPUTE,
        "tensor_parallel_comm",
        "expert_all_to_all",
        "context_parallel_comm",
    )
    per_layer = sum(parts[k].seconds for k in per_layer_keys if k in parts)
    per_layer /= max(s.stage_layers, 1.0)
    head = parts["lm_head"].seconds + parts["loss_and_embedding"].seconds
    if head <= 0:
        return 1.0
    spare = (s.stage_layers - s.last_stage_layers) * per_layer
    return max(head - spare, 0.0) / head


# --- per step -----------------------------------------------------------------------------


def micro_batches(s: Setting, zeroth: bool, accumulation: int, held: ModelMemo) -> Scaled:
    """The terms of the step's ``A`` micro-batches (:func:`micro_batch` scaled by the
    accumulation), one micro-batch's forward and backward compute and its seconds;
    memoised in ``held`` (a fresh dict each time: the caller adds to it).

    NOTE: the plan search prices thousands of plans that differ only in what acts once
    per step (optimizer, sharding, offload): their micro-batch terms are the same. The key
    is everything :func:`micro_batch` reads besides the memo's model, profile and
    calibration: the link override, the node size, the optimizer's order and the
    :class:`~advisor.cost.setting.MicroBatchConfig` it receives; the scaled terms add the
    accumulation to it.
    """
    A = accumulation
    key = (s.link_override, s.node, zeroth, s.mb)
    scaled = held.scaled.get((key, A))
    if scaled is None:
        hit = held.micro.get(key)
        if hit is None:
            hit = held.micro[key] = micro_batch(s, zeroth)
        parts, fwd, bwd = hit
        mb_seconds = sum(p.seconds for p in parts.values())
        # NOTE: built directly (not model_copy): the same values, a third of the time.
        times = {
            k: ComponentTime(seconds=p.seconds * A, source=p.source, detail=p.detail)
            for k, p in parts.items()
        }
        scaled = held.scaled[key, A] = (times, fwd, bwd, mb_seconds)
    times, fwd, bwd, mb_seconds = scaled
    return dict(times), fwd, bwd, mb_seconds


def step_terms(
    s: Setting, c: TrainingConfig, zeroth: bool, held: ModelMemo
) -> tuple[dict[str, ComponentTime], float, float]:
    """The step's micro-batches with the pipeline bubble and offloaded activations; one
    micro-batch's forward and backward compute."""
    batch = c.batch
    parts, fwd, bwd, mb_seconds = micro_batches(s, zeroth, batch.grad_accumulation, held)
    A = batch.grad_accumulation
    if A > 1 and "fp8_casts" in parts and not zeroth:
        # Transformer Engine's recipes cast each weight on the step's first micro-batch
        # only (advisor/cost/fp8recipes.py, WEIGHT_CACHED).
        weights = compute.fp8_weight_casts(s)
        if weights:
            p = parts["fp8_casts"]
            parts["fp8_casts"] = ComponentTime(
                seconds=p.seconds - weights * (A - 1),
                source=p.source,
                detail=f"{p.detail}; weights cast once per step (weight caching)",
            )
    overlap = c.layout.moe_overlap
    if overlap is not MoeOverlap.NONE and "expert_all_to_all" in parts and not zeroth:
        _overlap_all_to_all(s, overlap, parts, A)
    if s.pp > 1 and overlap is MoeOverlap.DUALPIPE and not zeroth:
        # DeepSeek-V3 report, Table 2: F&B the overlapped pair, B a backward, W its
        # weight-gradient GEMMs (as long as the data-gradient ones: a third of the GEMMs).
        pair = sum(p.seconds for p in parts.values()) / A
        wgrad = parts["forward_backward"].seconds / A / 3
        parts["pipeline_bubble"] = ComponentTime(
            seconds=dualpipe_bubble(s.pp, fwd, bwd, wgrad, pair),
            source=Source.ANALYTIC,
            detail=f"DualPipe bubble (PP/2-1)(F&B+B-3W), PP={s.pp}",
        )
    elif s.pp > 1:
        bubble = (s.pp - 1) / s.v * mb_seconds
        parts["pipeline_bubble"] = ComponentTime(
            seconds=bubble,
            source=Source.ANALYTIC,
            detail=f"1F1B bubble (p-1)/(m v) = {s.pp - 1}/({A}x{s.v}) of compute",
        )
    if c.savers.activation_offload and not zeroth:
        parts["activation_offload"] = offload.activation_offload(s, c, fwd, bwd)
    return parts, fwd, bwd


def _overlap_all_to_all(
    s: Setting, overlap: MoeOverlap, parts: dict[str, ComponentTime], A: int
) -> None:
    """Replace the step's expert all-to-alls by what the overlap leaves exposed."""
    part = parts["expert_all_to_all"]
    compute = sum(parts[k].seconds for k in _BLOCK_COMPUTE if k in parts) / A
    hw_id = s.hw.id if s.hw is not None else None
    share = comm_sm_share(hw_id)
    ex = exposed_all_to_all(
        overlap,
        a2a=part.seconds / A,
        compute=compute,
        accumulation=A,
        pp=s.pp,
        sm_share=share,
        v=s.v,
    )
    hidden = 1.0 - ex.seconds / part.seconds if part.seconds else 0.0
    parts["expert_all_to_all"] = ComponentTime(
        seconds=ex.seconds,
        source=part.source,
        detail=f"{part.detail}; {overlap.value}: {hidden:.0%} hidden under the paired "
        f"micro-batch's compute, {ex.unpaired:g} of {A} micro-batch(es) unpaired, "
        f"{ex.sm_tax:.3g} s for the {share:.0%} of SMs the all-to-all kernels take",
    )


def _once_per_step(
    s: Setting,
    c: TrainingConfig,
    parts: dict[str, ComponentTime],
    zeroth: bool,
    fwd: float,
    bwd: float,
    paged_traffic: float,
) -> None:
    """Add the terms after the optimizer step: master copies, offload and paged
    transfers, data-parallel communication."""
    masters = optimizer.master_copies(s, c, zeroth)
    if masters is not None:
        parts["master_copies"] = masters
    if c.savers.offload is not Offload.NONE and not zeroth:
        parts["offload_transfer"] = offload.offload(s, c, fwd, bwd)
    if paged_traffic > 0:
        parts["paged_states"] = offload.paged_states(s, paged_traffic)
    if s.dp_cp > 1:
        parts["communication"] = comm.data_parallel(s, c, fwd, bwd)
