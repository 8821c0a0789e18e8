"""The memory model's entry points: the per-device peak of one configuration
(:func:`estimate_memory`), its totals alone for fit tests (:func:`memory_totals`), and the
trainable parameter count; under pipeline parallelism the heaviest rank's estimate."""

from __future__ import annotations

from advisor.config import Checkpointing, ContextParallelKind, MoeOverlap, TrainingConfig
from advisor.memory.context import check_context, rank_config
from advisor.memory.convnet import check_cnn_config
from advisor.memory.dtypes import dtypes
from advisor.memory.memo import MemoryMemo, memo_for
from advisor.memory.pipeline import (
    PipelineRuntime,
    dualpipe_schedule,
    mirror_rank,
    pipeline_schedule,
    stage_io_bytes,
)
from advisor.memory.results import DeviceOverheads, MemoryEstimate, MemoryTotals
from advisor.memory.sharding import check_layout
from advisor.memory.stage import estimate_stage, trainable_total
from advisor.memory.states import StateInputs, stage_states
from advisor.model.spec import ModelSpec
from advisor.rules.taxonomy import OptimizerMemory, Technique


def estimate_memory(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None = None,
    lora_targets: frozenset[str] | None = None,
    memo: MemoryMemo | None = None,
    pipeline_runtime: PipelineRuntime = PipelineRuntime.MEGATRON,
) -> MemoryEstimate:
    """Estimate the per-device peak memory of training ``spec`` under ``config``.

    The peak is the largest phase of a step (:data:`PHASES`); under pipeline parallelism it
    is the larger of the first stage (most activations in flight) and the last (LM head and
    loss).

    Args:
        spec: the model's shapes.
        config: the training configuration (precision, attention, kernel stack, memory
            savers, layout, micro-batch, sequence length ...).
        optimizer: the taxonomy entry of the optimizer (or its state signature); its
            ``memory`` fields drive the optimizer-state formula, so an extended taxonomy works.
        device: fixed device overheads; ``None`` means a CUDA device with the defaults of
            :class:`DeviceOverheads`; use ``DeviceOverheads.cpu()`` for none.
        lora_targets: what LoRA/QLoRA adapts (default: ``config.lora_targets``).
        memo: the caller's memo of this model's pieces, held for one search or command
            (None: a fresh one; the numbers are the same).
        pipeline_runtime: what runs the pipeline schedule (:class:`~advisor.memory.
            pipeline.PipelineRuntime`): Megatron-Core frees each stage output once sent;
            torch.distributed.pipelining keeps outputs and per-micro-batch buffers.

    Returns:
        The estimate, with every component named (see :data:`COMPONENTS`) and every phase.

    Raises:
        UserError: for a CNN spec, a non-optimizer technique, or a layout the model cannot
            be split into.
        ValueError: when ``memo`` holds another model spec's pieces.
    """
    targets = frozenset(config.adapters.lora_targets) if lora_targets is None else lora_targets
    m = _estimate(
        memo_for(spec, memo),
        config,
        optimizer,
        device,
        targets,
        pipeline_runtime,
        totals_only=False,
    )
    assert isinstance(m, MemoryEstimate)
    return m


def _estimate(
    memo: MemoryMemo,
    config: TrainingConfig,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None,
    lora_targets: frozenset[str],
    runtime: PipelineRuntime,
    *,
    totals_only: bool,
) -> MemoryEstimate | MemoryTotals:
    """:func:`estimate_memory`, or with ``totals_only`` its three numbers alone."""
    layout = config.layout
    d = memo.model.shape
    if memo.model.convnet is not None:
        check_cnn_config(memo.model.spec.name, config, recompute=False)
        config = config.with_(checkpointing=Checkpointing.NONE)
    check_layout(config, d)
    check_context(config, d, memo.model.spec)
    # A context-parallel rank runs every block, the head and the loss on its share of each
    # sequence (advisor.memory.context); its model states are the layout's as they are.
    config = rank_config(config)
    pp = layout.pipeline_parallel
    if pp == 1:
        one = estimate_stage(
            memo, config, optimizer, device, lora_targets, "only", d["L"], 0, totals_only
        )
        return _context_note(one, config)
    v, m = layout.virtual_stages, config.batch.grad_accumulation
    dualpipe = layout.moe_overlap is MoeOverlap.DUALPIPE
    if dualpipe:
        v = 1  # one chunk per direction (advisor.memory.pipeline.dualpipe_schedule)
        split, held, chunks = memo.call(dualpipe_schedule, pp, m)
    else:
        split, held, chunks = memo.call(pipeline_schedule, pp, v, m)
    names = ["first", *(["middle"] * (pp - 2)), "last"]

    def copy_bytes(r: int) -> int:
        # DualPipe's second parameter copy: the weights of the reverse direction's stage
        # (see _dualpipe_copy).
        if not dualpipe:
            return 0
        mirror = mirror_rank(r, pp)
        return _dualpipe_copy(
            memo, config, optimizer, lora_targets, names[mirror], sum(split[mirror])
        )

    # One micro-batch's hidden state as a stage sends it: the residual stream, sequence-
    # parallel over the tensor-parallel ranks.
    batch = config.batch
    hidden = -(
        -dtypes(config.precision).residual
        * batch.micro_batch
        * batch.seq_len
        * d["h"]
        // layout.tensor_parallel
    )
    io = [stage_io_bytes(runtime, pp, v, r, m, chunks[r], hidden) for r in range(pp)]
    # The first rank (embedding, most micro-batches in flight) and the last (LM head, loss)
    # are always candidates; a middle rank only when it holds more blocks or more
    # block-micro-batches than the first (Llama 3's lightened first chunk): the heaviest
    # of them, as the middle ranks differ in nothing else.
    ranks = [0, pp - 1]
    middle = max(range(1, pp - 1), key=lambda r: (held[r], sum(split[r]), io[r]), default=None)
    if middle is not None and (
        held[middle] > held[0] or sum(split[middle]) > sum(split[0]) or io[middle] > io[0]
    ):
        ranks.insert(1, middle)
    stages = [
        estimate_stage(
            memo,
            config,
            optimizer,
            device,
            lora_targets,
            "first" if r == 0 else "last" if r == pp - 1 else "middle",
            sum(split[r]),
            held[r],
            totals_only,
            stage_io=io[r],
            copy_bytes=copy_bytes(r),
        )
        for r in ranks
    ]
    worst = max(range(len(ranks)), key=lambda i: stages[i].total_bytes)
    last = stages[worst]
    if not isinstance(last, MemoryEstimate):
        return last  # memory_totals reads its numbers, not the note
    others = ", ".join(
        f"rank {r}: {est.total_bytes / 2**30:.1f} GiB"
        for i, (r, est) in enumerate(zip(ranks, stages, strict=True))
        if i != worst
    )
    note = (
        f"pipeline {pp} stages: rank {ranks[worst]} ({sum(split[ranks[worst]])} blocks) is the "
        f"largest ({others})"
    )
    return _context_note(last.model_copy(update={"notes": [*last.notes, note]}), config)


def _dualpipe_copy(
    memo: MemoryMemo,
    config: TrainingConfig,
    optimizer: Technique | OptimizerMemory,
    lora_targets: frozenset[str],
    stage: str,
    stage_layers: int,
) -> int:
    """The bytes of DualPipe's second copy of the model parameters on one rank: the weights
    of the stage it runs in the reverse direction, as that stage's own rank stores them.

    "DualPipe requires keeping two copies of the model parameters" (DeepSeek-V3 report,
    arXiv:2412.19437, sec. 3.2.1; Table 2: Parameter 2x). The copy is what the GEMMs read,
    the weights in their storage dtype (bf16 in the report's run: its FP8 GEMMs cast the
    bf16 weights per tile, sec. 3.3.1, and it keeps only the master weights, weight
    gradients and optimizer states in fp32, sec. 3.3.3, sharded by its ZeRO-1-style
    optimizer), split by the same tensor and expert parallelism. The report prices nothing
    else for the copy: its gradients are accumulated with the first copy's before the
    optimizer step, so no second gradient buffer, master or optimizer state is counted.
    """
    st = memo.call_with_memo(
        stage_states, StateInputs.of(config, optimizer, lora_targets, stage, stage_layers)
    )
    return st.bd["weights"] + st.bd["quantization_constants"]


def _context_note(
    m: MemoryEstimate | MemoryTotals, config: TrainingConfig
) -> MemoryEstimate | MemoryTotals:
    """``m`` with a note on what context parallelism split (the rank's ``config``)."""
    layout = config.layout
    cp = layout.context_parallel
    if cp == 1 or not isinstance(m, MemoryEstimate):
        return m
    how = (
        "ring attention: peers' key/value chunks double-buffered (Liu et al. 2023)"
        if layout.context_parallel_kind is ContextParallelKind.RING
        else "Ulysses all-to-all buffers of Q, K, V (Jacobs et al. 2023)"
    )
    note = (
        f"context parallelism {cp}: each rank holds {config.batch.seq_len} tokens of every "
        f"sequence's activations and logits; {how}; gradients reduced (and ZeRO/FSDP shards "
        f"kept) over data x context parallel, {layout.dp_cp} ranks"
    )
    return m.model_copy(update={"notes": [*m.notes, note]})


def memory_totals(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None = None,
    lora_targets: frozenset[str] | None = None,
    memo: MemoryMemo | None = None,
    pipeline_runtime: PipelineRuntime = PipelineRuntime.MEGATRON,
) -> MemoryTotals:
    """:func:`estimate_memory`'s ``total_bytes``, ``host_bytes`` and ``nvme_bytes``, the
    same numbers, without building the phases (about 40% of the work). The arguments are
    :func:`estimate_memory`'s.

    NOTE: the plan search's binary searches over the micro-batch ask only whether a plan
    fits, thousands of times; most of those plans are never shown.
    """
    targets = frozenset(config.adapters.lora_targets) if lora_targets is None else lora_targets
    m = _estimate(
        memo_for(spec, memo), config, optimizer, device, targets, pipeline_runtime, totals_only=True
    )
    assert isinstance(m, MemoryTotals)
    return m


def trainable_parameter_count(
    spec: ModelSpec, config: TrainingConfig, *, memo: MemoryMemo | None = None
) -> int:
    """Parameters that get gradients: all of them, or LoRA's adapters (on
    ``config.lora_targets``) and the whole tensors trained beside them.

    Args:
        spec: the model's shapes.
        config: its task, LoRA rank and targets.
        memo: the caller's memo of this model's pieces (None: a fresh one).
    """
    return trainable_total(memo_for(spec, memo), config, frozenset(config.adapters.lora_targets))
