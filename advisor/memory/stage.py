"""One pipeline rank's estimate: its model states (:mod:`advisor.memory.states`), the
activations, logits and loss its schedule keeps, the step's transients, offload and ZeRO-3
gathering, then the phases and the peak."""

from __future__ import annotations

import math
from typing import NamedTuple

from advisor.config import (
    Checkpointing,
    MoeOverlap,
    Offload,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.memory.activations import layer_activation_bytes, model_level_activation_bytes
from advisor.memory.context import exchange_bytes
from advisor.memory.convnet import backward_worst, conv_workspace_bytes
from advisor.memory.derived import trainable_count
from advisor.memory.loss import NO_LOSS, LossMemory, loss_memory
from advisor.memory.memo import MemoryMemo
from advisor.memory.moe import activation_kwargs, dispatch_bytes
from advisor.memory.nccl import nccl_bytes, nccl_note
from advisor.memory.optimizer import fused_step_on, optimizer_note
from advisor.memory.params import Role, count, enum_value
from advisor.memory.phases import grads_persistent, phases_of
from advisor.memory.recompute import block_saves
from advisor.memory.results import (
    OUTSIDE_ALLOCATOR,
    OVERHEAD_COMPONENTS,
    DeviceOverheads,
    MemoryEstimate,
    MemoryTotals,
    Phase,
)
from advisor.memory.slack import churn_bytes, pipeline_churn_bytes, slack_share
from advisor.memory.states import StageStates, StateInputs, stage_states
from advisor.model.spec import ModelSpec
from advisor.rules.taxonomy import OptimizerMemory, StateKind, Technique

# DeepSpeed's default ``reduce_bucket_size`` (elements), the gradient a ZeRO-Offload device
# holds at once (https://www.deepspeed.ai/docs/config-json/, zero_optimization; advisor/export/
# writes the same value into the exported config).
OFFLOAD_BUCKET_ELEMENTS = 500_000_000


def estimate_stage(
    memo: MemoryMemo,
    config: TrainingConfig,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None,
    lora_targets: frozenset[str],
    stage: str,
    stage_layers: int,
    held_blocks: int,
    totals_only: bool = False,
    *,
    stage_io: int = 0,
    copy_bytes: int = 0,
) -> MemoryEstimate | MemoryTotals:
    """One pipeline rank's estimate: ``stage_layers`` blocks, ``held_blocks`` block-micro-
    batches of activations in flight (:func:`~advisor.memory.pipeline.
    inflight_block_microbatches`; unused without pipeline parallelism), ``stage_io``
    bytes of stage inputs and outputs its pipeline runtime keeps beside them
    (:func:`~advisor.memory.pipeline.stage_io_bytes`) and ``copy_bytes`` of DualPipe's
    second parameter copy (0 under any other schedule)."""
    savers = config.savers
    spec = memo.model.spec
    st = memo.call_with_memo(
        stage_states, StateInputs.of(config, optimizer, lora_targets, stage, stage_layers)
    )
    notes = list(st.notes)
    bd = dict(st.bd)
    if copy_bytes:
        bd["dualpipe_weights"] = copy_bytes
        notes.append(
            "DualPipe keeps two copies of the model parameters (DeepSeek-V3 report, "
            "arXiv:2412.19437, sec. 3.2.1): the reverse direction's stage weights, "
            f"{copy_bytes / 2**30:.2f} GiB in the weights' dtype (bf16 in the report)"
        )
    device = device or DeviceOverheads()
    if config.dp_sgd and not st.zeroth:
        bd["per_sample_gradients"] = config.batch.micro_batch * st.p_t * st.dt.grad
        notes.append("DP-SGD: per-sample gradients b x P_t (Abadi et al. 2016; Opacus)")
    first = stage in ("only", "first")
    acts = _activations(
        memo,
        config,
        st,
        device,
        lora_targets,
        first,
        stage_layers,
        held_blocks,
        stage_io,
        bd,
        notes,
    )
    # The transient: the larger of the loss backward and the optimizer step's temporaries.
    loss_tr, step_tr, grad_flow = _transients(spec, config, st, acts.loss, stage_layers, bd)
    off_host, fsdp_backward, paged, step_tr = _offload_and_gather(
        spec, config, st, stage_layers, loss_tr, step_tr, grad_flow, bd, notes
    )
    host = acts.host_activations + (0 if savers.offload.nvme else off_host)
    nvme = off_host if savers.offload.nvme else 0
    if nvme:
        notes.append("offloaded states live on NVMe (ZeRO-Infinity, Rajbhandari et al. 2021)")
    # What is alive when. A CNN's one "layer" is its trunk: its backward is walked layer by
    # layer instead (its end keeps the model level alone).
    net = memo.model.convnet
    worst = None
    if net is not None and not st.zeroth:
        worst = backward_worst(
            net,
            config.batch.micro_batch * config.batch.seq_len,
            st.dt,
            acts.model_level,
            bd["gradients"],
        )
    phases = phases_of(
        bd,
        config,
        zeroth=st.zeroth,
        grads_persistent=grads_persistent(config),
        head_grad=st.shard(st.head_trainable * st.dt.grad, 2) if not st.zeroth else 0,
        model_level=acts.model_level,
        per_block=0 if worst else acts.per_block,
        loss_tr=loss_tr,
        loss_saved=acts.loss.saved_bytes,
        grad_flow=grad_flow + fsdp_backward,
        step_tr=step_tr,
        inflight=acts.inflight,
        head_cache=st.head_cache,
        adapter_cache=st.adapter_cache,
        worst=worst,
    )
    peak_tensors = max(sum(p.values()) for p in phases.values())
    bd["cuda_context"] = device.cuda_context_bytes
    # NCCL's communicator buffers (driver allocations, outside torch's allocator).
    bd["nccl"] = nccl_bytes(config.layout, device.nccl)
    if not totals_only and (said := nccl_note(config.layout, device.nccl)):
        notes.append(said)
    bd["workspace"] = device.workspace_bytes
    if net is not None and device.workspace_bytes:
        # cuDNN's convolution scratch beside cuBLAS's (a CUDA device only).
        bd["workspace"] += conv_workspace_bytes(net, config.batch.micro_batch, st.dt)
    # The caching allocator's slack: a share of the peak phase's churn (the bytes allocated
    # and freed within the step; the cuBLAS workspace is allocated once and stays).
    peak_parts = max(phases.values(), key=lambda p: sum(p.values()))
    # Under a pipeline schedule, of one micro-batch's activations only
    # (advisor.memory.slack.pipeline_churn_bytes).
    churn = pipeline_churn_bytes(
        churn_bytes(peak_parts, grads_resident=grads_persistent(config)),
        peak_parts.get("activations", 0),
        bd["activations"],
        acts.model_level,
        acts.inflight,
    )
    bd["allocator_reserve"] = int(churn * slack_share(config)) if device.caching_allocator else 0
    overheads = {k: bd[k] for k in OVERHEAD_COMPONENTS}
    if totals_only:
        # What a fit test reads (memory_totals): every phase carries the same overheads, so
        # the peak is the largest tensor sum plus them. Neither the phases nor the model
        # are built.
        return MemoryTotals(peak_tensors + sum(overheads.values()), host, nvme, paged)
    return _full_estimate(
        memo, config, st, lora_targets, bd, notes, phases, overheads, host, nvme, paged
    )


class _Activations(NamedTuple):
    """What :func:`_activations` found besides the components it set."""

    model_level: int  # embedding ids, position tables, the final norm (see activations)
    per_block: int  # one block's saved bytes (what backward works on at a time)
    inflight: float  # micro-batches of the whole stage alive (pipeline schedule)
    loss: LossMemory
    host_activations: int  # what activation offloading keeps in host memory


def _activations(
    memo: MemoryMemo,
    config: TrainingConfig,
    st: StageStates,
    device: DeviceOverheads,
    lora_targets: frozenset[str],
    first: bool,
    stage_layers: int,
    held_blocks: int,
    stage_io: int,
    bd: dict[str, int],
    notes: list[str],
) -> _Activations:
    """The activations and logits of one rank (``bd``'s activations, logits, recompute),
    its schedule's micro-batches in flight, its runtime's stage inputs and outputs and
    activation offloading; notes appended. ``first``: the rank runs the embedding (the
    last rank, ``st.last``, the final norm and the LM head)."""
    savers, kernels, batch = config.savers, config.kernels, config.batch
    spec, d, dt = memo.model.spec, st.d, st.dt
    tp, last, zeroth, adapters = st.tp, st.last, st.zeroth, st.adapters
    b, s = batch.micro_batch, batch.seq_len
    lt = lora_targets if adapters else None
    layer = memo.call(
        layer_activation_bytes,
        b,
        s,
        kernels.attention,
        config.precision,
        selective=savers.checkpointing is Checkpointing.SELECTIVE,
        lora_targets=lt,
        lora_rank=config.adapters.lora_rank,
        stack=kernels.stack,
        tensor_parallel=tp,
        fused_norm=kernels.fused_norm,
        quantized=config.task is Task.QLORA,
        lora_dropout=adapters and config.adapters.lora_dropout > 0,
        mask_bytes=device.dropout_mask_bytes,
        dropout=config.dropout and not zeroth,
        fp8_recipe=config.kernels.fp8_recipe,
        **activation_kwargs(config.layout, d["E"]),
    )
    if not zeroth:
        # Token dispatch's own saved tensors (the all-gather dispatcher's routing slices).
        layer += dispatch_bytes(config.layout, d, b * s, dt.act)[0]
    ckpt = Checkpointing.NONE if zeroth else savers.checkpointing
    # Every block wrapped in a full checkpoint (selective-layer with frequency 1 is full).
    full_ckpt = ckpt is Checkpointing.FULL or (
        ckpt is Checkpointing.SELECTIVE_LAYER and savers.ac_frequency == 1
    )
    head_frozen = adapters and (
        "embed" not in lora_targets if spec.tie_word_embeddings else "lm_head" not in lora_targets
    )
    model_level = memo.call(
        model_level_activation_bytes,
        b,
        s,
        config.precision,
        kernels.attention,
        full_ckpt,
        kernels.stack,
        kernels.fused_norm,
        adapters,
        head_frozen,
        embedding=first,
        head=last,
    )
    if config.dropout and not zeroth and first:
        # The embedding output's dropout mask (its output is the first block's input).
        model_level += b * s * d["h"] * (device.dropout_mask_bytes or dt.residual)
    loss = (
        memo.call(
            loss_memory,
            b,
            s,
            config.precision,
            stack=kernels.stack,
            fused_loss=kernels.fused_loss,
            tensor_parallel=tp,
            classify=enum_value(spec.arch) == "encoder" and config.task is not Task.PRETRAIN,
        )
        if last
        else NO_LOSS
    )
    inflight, per_block, stored_blocks, host_activations = _stored_blocks(
        memo, config, st, layer, stage_layers, held_blocks, bd, notes
    )
    if stage_io and not zeroth:
        # NOTE: torch.distributed.pipelining's kept stage outputs and receive buffers
        # (advisor.memory.pipeline.stage_io_bytes): alive through the whole step like the
        # model-level tensors (a middle stage's sum does not change as micro-batches flow).
        model_level += stage_io
        notes.append(
            f"torch.distributed.pipelining: {stage_io / 2**30:.2f} GiB of stage outputs and "
            "per-micro-batch receive buffers kept (Megatron-Core frees each output once sent)"
        )
    bd["activations"] = stored_blocks + (0 if zeroth else model_level)
    bd["logits"] = loss.saved_bytes + loss.output_bytes
    return _Activations(model_level, per_block, inflight, loss, host_activations)


def _stored_blocks(
    memo: MemoryMemo,
    config: TrainingConfig,
    st: StageStates,
    layer: int,
    stage_layers: int,
    held_blocks: int,
    bd: dict[str, int],
    notes: list[str],
) -> tuple[float, int, int, int]:
    """What the rank's blocks keep for backward under its schedule, checkpointing and
    activation offloading (``bd["recompute"]``); notes appended.

    Returns:
        The micro-batches in flight, one block's saved bytes, the blocks' bytes on the
        device and what activation offloading moves to the host.
    """
    pp, zeroth = st.pp, st.zeroth
    # The rank's schedule keeps ``held_blocks`` block-micro-batches of activations alive
    # (inflight_block_microbatches); ``inflight`` is that in micro-batches of the whole stage.
    inflight = 1.0
    if pp > 1:
        inflight = held_blocks / stage_layers if stage_layers else 1.0
        schedule = "interleaved 1F1B" if config.layout.virtual_stages > 1 else "1F1B"
        if config.layout.moe_overlap is MoeOverlap.DUALPIPE:
            # PP + 1 micro-batches against 1F1B's PP (DeepSeek-V3 report, Table 2).
            schedule = "DualPipe (PP + 1 micro-batches, DeepSeek-V3 Table 2)"
        notes.append(
            f"{schedule}: {held_blocks} block-micro-batches of activations in flight on this "
            f"rank's {stage_layers} blocks"
        )
    if zeroth:
        # Inference-like: one block's forward working set, logits and the fp32 upcast.
        per_block, stored_blocks = layer, layer
    else:
        saved = block_saves(memo, config, stage_layers, layer)
        per_block = saved.per_block
        stored_blocks = math.ceil(saved.per_microbatch * inflight)
        bd["recompute"] = saved.recompute
        if saved.note:
            notes.append(saved.note)
    if config.savers.activation_offload and not zeroth and stored_blocks > 2 * per_block:
        # Saved activations stream to host memory and back; the device keeps the block in
        # use and the one being prefetched (torchtune / torchao activation offloading).
        kept = 2 * per_block
        host_activations = stored_blocks - kept
        stored_blocks = kept
        notes.append("activations offloaded to host memory: two blocks' worth kept on device")
    else:
        host_activations = 0
    return inflight, per_block, stored_blocks, host_activations


def _transients(
    spec: ModelSpec,
    config: TrainingConfig,
    st: StageStates,
    loss: LossMemory,
    stage_layers: int,
    bd: dict[str, int],
) -> tuple[int, int, int]:
    """The loss backward's, the optimizer step's and the backward's gradient-flow
    temporaries (``bd["transient"]``, the largest of them); returns the three."""
    savers, batch = config.savers, config.batch
    mem, dt, d, tp, tensors = st.mem, st.dt, st.d, st.tp, st.tensors
    zeroth, p_t, shard = st.zeroth, st.p_t, st.shard
    layer_trainable, head_trainable = st.layer_trainable, st.head_trainable
    b, s = batch.micro_batch, batch.seq_len
    loss_tr = 0 if zeroth else loss.transient_bytes
    step_tr = 0
    impl = config.kernels.optimizer_impl
    if mem.state not in (StateKind.NONE, StateKind.SEED) and not fused_step_on(
        mem, config.kernels.stack, impl
    ):
        # NOTE: torch's foreach/multi-tensor steps allocate one temporary per parameter of
        # the local shard (e.g. Adam's denominator) in the dtype of what they step: fp32
        # parameters or masters 4 B, bare 16-bit parameters 2 B (measured in
        # tests/memory/test_memory_stacks.py); stepped per layer in backward, one block's worth.
        # Fused kernels update in place: no temporary.
        step_tr = shard(p_t * dt.state, 1)
        if savers.optimizer_in_backward:
            step_tr = math.ceil(
                max(layer_trainable / max(stage_layers, 1), head_trainable) * dt.state
            )
    if (
        dt.master
        and not zeroth
        and not savers.optimizer_in_backward
        and config.layout.sharding in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3)
    ):
        # DeepSpeed's ZeRO optimizers step fp32 master partitions with fp32 gradients: right
        # before the step they flatten this rank's 16-bit gradient partition into a new
        # buffer and cast that to fp32, both alive at once beside the 16-bit gradients
        # (runtime/zero/stage_1_and_2.py step: flatten(averaged_gradients).to(fp32);
        # stage3.py likewise): 2 + 4 bytes per parameter of the partition (measured with
        # DeepSpeed 0.19.8 on the CPU, stages 1-3, in tests/memory/test_memory_finetune.py). The
        # 16-bit copy is freed before the optimizer runs beside the fp32 gradients.
        step_tr = max(shard(p_t * (dt.grad + 4), 1), shard(p_t * 4, 1) + step_tr)
    elif (
        dt.master
        and not zeroth
        and not savers.optimizer_in_backward
        and config.layout.sharding is Sharding.NONE
    ):
        # Without ZeRO, 16-bit weights with fp32 masters are DeepSpeed's stage 0: its
        # FP16_(Unfused)Optimizer (bf16 too, DDP_BFLOAT16 in runtime/engine.py) casts every
        # 16-bit gradient to fp32 (fp16/unfused_optimizer.py step: p.grad.to(fp32) into the
        # master's .grad; fused_optimizer.py flattens them into one fp32 buffer) and steps
        # the masters with those: 4 bytes per parameter beside the 16-bit gradients
        # (measured with DeepSpeed 0.19.8 on the CPU, stage 0, in tests/memory/
        # test_memory_finetune.py).
        step_tr = p_t * 4 + step_tr
    # The gradient flowing through the blocks: the incoming gradient of a block's output
    # and the one it computes for its input, both residual-stream sized (measured on a full
    # checkpointing step: the recomputed block's backward peaks with these two alive).
    block_input = math.ceil(dt.residual * b * s * d["h"] / tp)
    grad_flow = 0 if zeroth else 2 * block_input
    if not zeroth:
        # Context parallelism's key/value exchange in a block's backward (ring: the peers'
        # chunks and dK/dV double-buffered; Ulysses: the all-to-all buffers).
        grad_flow += exchange_bytes(config, d, dt.act)
    if (
        not zeroth
        and config.kernels.stack is Stack.HF
        and spec.traits.python_gelu
        and enum_value(spec.mlp) == "gelu"
    ):
        # GPT-2's tanh GELU is written out in Python: its backward walks a chain of
        # elementwise ops, each making a b·s·f gradient before the saved inputs it frees
        # (three alive at once, measured on a full step in tests/memory/test_memory_stacks.py).
        grad_flow += math.ceil(3 * dt.act * b * s * d["f"] / tp)
    if config.task is Task.QLORA and not zeroth:
        # bitsandbytes runs a 4-bit matmul of more than 1536 rows as dequantize + F.linear
        # (backends/cuda/ops.py _dequant_linear_fallback; the default backend, the CPU's,
        # always) and dequantizes again for the input gradient (MatMul4Bit.backward): one
        # whole matrix in the compute dtype beside the fp32 block scales double
        # quantization rebuilds (two n/64 tensors) at a time, the largest one's at most.
        n = max((t.numel for t in tensors if t.per_layer and len(t.shape) == 2), default=0)
        grad_flow += math.ceil(n * dt.act + 8 * n / 64)
    if not zeroth:
        # An MoE layer's dispatch buffers (permuted and exchanged rows, or the all-gather
        # dispatcher's gathered hidden states) live through its forward and its backward.
        grad_flow += dispatch_bytes(config.layout, d, b * s, dt.act)[1]
    bd["transient"] = max(loss_tr, step_tr, grad_flow)
    return loss_tr, step_tr, grad_flow


def _offload_and_gather(
    spec: ModelSpec,
    config: TrainingConfig,
    st: StageStates,
    stage_layers: int,
    loss_tr: int,
    step_tr: int,
    grad_flow: int,
    bd: dict[str, int],
    notes: list[str],
) -> tuple[int, int, int, int]:
    """Offloading (ZeRO-Offload, ZeRO-Infinity) and ZeRO-3/FSDP gathering: moves what leaves
    the device out of ``bd`` and adds the gathered parameters; notes appended.

    Returns:
        The offloaded bytes, FSDP's backward temporaries, the paged optimizer states and
        the optimizer step's transient (none once the step runs on the host).
    """
    savers = config.savers
    dt, pp, tensors, local_params, zeroth = st.dt, st.pp, st.tensors, st.local_params, st.zeroth
    adapters, n, stage_zero, p_t, shard = st.adapters, st.n, st.stage_zero, st.p_t, st.shard
    layer_bytes, layer_trainable = st.layer_bytes, st.layer_trainable
    off_host = 0
    fsdp_backward = 0
    layer_weights = layer_bytes // max(stage_layers, 1)  # one block's weights as stored
    gathered_layers = min(2, stage_layers)  # current + prefetched block
    paged = st.paged
    if savers.offload is not Offload.NONE:
        # Offloaded states live on the host whether or not the optimizer would page them.
        off_host += bd["master_weights"] + bd["optimizer_states"] + paged
        paged = 0
        if dt.master:
            off_host += shard(p_t * 4, 2)  # fp32 gradients for the CPU step (Ren et al. 2021)
        bd["master_weights"] = bd["optimizer_states"] = 0
        if not savers.optimizer_in_backward and not zeroth:
            # ZeRO-Offload streams each reduced gradient bucket to the host as backward makes
            # it (Ren et al. 2021, sec. 4.1; DeepSpeed's reduce bucket, 5e8 elements by
            # default): the device holds one bucket, never the whole gradient.
            bd["gradients"] = min(bd["gradients"], math.ceil(OFFLOAD_BUCKET_ELEMENTS * dt.grad))
        step_tr = 0
        bd["transient"] = max(loss_tr, grad_flow)
        notes.append("optimizer states and master weights offloaded to host memory")
    if savers.offload.params:
        off_host += bd["weights"]
        bd["weights"] = 0
        bd["gathered_parameters"] = gathered_layers * layer_weights
        notes.append("parameters offloaded: two blocks' weights on the device at a time")
    elif stage_zero == 3 and n > 1:
        # The non-local part of the gathered blocks (FSDP / ZeRO-3 all-gather buffers).
        bd["gathered_parameters"] = int(gathered_layers * layer_weights * (1 - 1 / n))
        if config.layout.sharding in (Sharding.FSDP, Sharding.HSDP) and pp == 1:
            # FSDP keeps its root unit (what no block owns: embedding, final norm, LM head)
            # unsharded from the forward through the backward: FSDP2's lazy init sets the
            # root's post-forward mesh to None ("for the root, do not reshard after forward",
            # _fsdp_state.py; unconditionally in 2024 releases, by default since), and
            # torchtitan shards the model root last, around those modules.
            # The root's bytes as they are stored (QLoRA keeps them 16-bit beside NF4 blocks).
            root_bytes = dt.weight
            root = (local_params - count(tensors, per_layer=True)) * root_bytes
            # FSDP2 all-gathers into a full-size buffer beside the local shard, so the whole
            # root is counted. NOTE: the blocks above count only their non-local part.
            bd["gathered_parameters"] += math.ceil(root)
            if not zeroth and not adapters:
                # FSDP2's foreach_reduce copies a block's unsharded gradients into one
                # reduce-scatter input in the reduce dtype (fp32 in torchtitan's mixed
                # precision) before freeing them; the LM head's unsharded gradient waits for
                # the root's reduce-scatter at the end of the backward.
                block_grads = layer_trainable / max(stage_layers, 1)
                reduce = 4 if dt.master else dt.grad
                head = sum(t.numel * t.count for t in tensors if t.role is Role.OUTPUT)
                if spec.tie_word_embeddings:
                    head = sum(t.numel * t.count for t in tensors if t.role is Role.EMBEDDING)
                fsdp_backward = math.ceil(
                    block_grads * (dt.grad + reduce) + head * dt.grad * (1 - 1 / n)
                )
                notes.append(
                    "FSDP: root unit (embedding, LM head) unsharded through the step; one "
                    "block's gradients + reduce-scatter input in backward"
                )
    return off_host, fsdp_backward, paged, step_tr


def _full_estimate(
    memo: MemoryMemo,
    config: TrainingConfig,
    st: StageStates,
    lora_targets: frozenset[str],
    bd: dict[str, int],
    notes: list[str],
    phases: dict[str, dict[str, int]],
    overheads: dict[str, int],
    host: int,
    nvme: int,
    paged: int,
) -> MemoryEstimate:
    """The estimate with its phases, its peak and its notes."""
    kernels = config.kernels
    phase_list = [
        Phase(
            name=name,
            components={**parts, **overheads},
            total_bytes=sum(parts.values()) + sum(overheads.values()),
        )
        for name, parts in phases.items()
    ]
    peak = max(phase_list, key=lambda p: p.total_bytes)
    outside = sum(overheads[k] for k in OUTSIDE_ALLOCATOR)
    allocated = peak.total_bytes - outside - overheads["allocator_reserve"]
    if paged:
        notes.append(
            f"paged optimizer states: {paged / 2**30:.1f} GiB in CUDA unified memory, outside "
            "the peak (torch's allocator never sees them); the device keeps what the peak "
            "leaves free, the rest moves over PCIe every step"
        )
    notes.append(optimizer_note(st.opt_id, st.mem))
    notes.append(
        f"kernel stack {kernels.stack.value}" + (", fused loss" if kernels.fused_loss else "")
    )
    return MemoryEstimate(
        total_bytes=peak.total_bytes,
        allocated_bytes=allocated,
        reserved_bytes=allocated + overheads["allocator_reserve"],
        breakdown=bd,
        phases=phase_list,
        peak_phase=peak.name,
        stack=kernels.stack,
        parameters=st.params,
        trainable_parameters=st.p_t
        if st.pp == 1 and st.tp == 1
        else trainable_total(memo, config, lora_targets),
        host_bytes=host,
        nvme_bytes=nvme,
        paged_bytes=paged,
        notes=notes,
    )


def trainable_total(memo: MemoryMemo, config: TrainingConfig, targets: frozenset[str]) -> int:
    """The model's trainable parameters under ``config`` (all ranks together)."""
    adapters = config.task in (Task.LORA, Task.QLORA)
    return memo.call(
        trainable_count, adapters, config.adapters.lora_rank if adapters else 0, targets
    )
