"""Pipeline parallelism: how the blocks split into model chunks per rank (Megatron-LM's even
split, torchtitan's default otherwise) and how many block-micro-batches of activations each
rank's 1F1B or interleaved 1F1B schedule keeps in flight."""

from __future__ import annotations

from enum import Enum

from advisor.errors import UserError
from advisor.memory.derived import MemoryModel


def pipeline_split(layers: int, pp: int, v: int = 1) -> tuple[tuple[int, ...], ...]:
    """The blocks of each model chunk: ``split[rank][chunk]`` for virtual stage ``chunk*pp+rank``.

    Layers that divide evenly into the ``pp x v`` chunks are split evenly (Megatron-LM
    requires it). Otherwise torchtitan's default split: the embedding and the LM head count
    as one block each, the ``L + 2`` units are dealt out evenly (the first chunks take the
    remainder) and the first and last chunk give up the unit of the embedding and the head
    (``generate_llm_fqn_per_model_part``, input and output weight 1). For Llama 3 405B's
    126 layers on 16 stages x 8 chunks this is the paper's split: "the first model chunk on
    the first stage has only the embedding, and the last model chunk on the last stage has
    only output projection and loss calculation" (Dubey et al. 2024, sec. 3.3.2).

    Args:
        layers: the model's blocks.
        pp: pipeline stages (ranks).
        v: model chunks per rank (interleaved schedule), 1 for plain 1F1B.

    Raises:
        UserError: when there are fewer units than chunks (torchtitan refuses empty stages).
    """
    chunks = pp * v
    if layers % chunks == 0:
        blocks = [layers // chunks] * chunks
    else:
        per_chunk, extra = divmod(layers + 2, chunks)
        if per_chunk < 1:
            raise UserError(
                f"{layers} layers cannot fill {pp} pipeline stages of {v} chunks each",
                "pick fewer pipeline or virtual stages",
            )
        blocks = [per_chunk + (1 if c < extra else 0) for c in range(chunks)]
        blocks[0] -= 1
        blocks[-1] -= 1
    return tuple(tuple(blocks[c * pp + r] for c in range(v)) for r in range(pp))


def inflight_block_microbatches(
    split: tuple[tuple[int, ...], ...], rank: int, microbatches: int
) -> int:
    """The most block-micro-batches of activations ``rank`` holds over a step's schedule.

    1F1B (``v = 1``): rank ``r`` runs ``pp - r - 1`` warm-up forwards, then alternates one
    forward and one backward (Narayanan et al. 2021, sec. 2.2.1), so ``min(m, pp - r)``
    micro-batches are in flight. Interleaved 1F1B (``v > 1``) runs its chunks depth-first in
    rounds of ``N`` micro-batches (``N = m // max(1, m // pp)``, torch.distributed.pipelining's
    ``microbatches_per_round``; Megatron-LM's default group is ``pp``): ``(v-1) N + 2 (pp-r-1)``
    warm-up forwards (all ``v m`` when there are not more), then one forward and one backward
    per step. Forward ``k`` runs chunk ``(k // N) % v`` and backward ``k`` chunk
    ``v - 1 - (k // N) % v``, each adding or freeing that chunk's blocks. The schedule is
    replayed: with uneven chunks (Llama 3's embedding-only first chunk, a lighter last one)
    the peak need not be at the end of the warm-up. The steady steps repeat with period
    ``v N`` (both counts advance by ``N`` times the rank's blocks per period), so one period
    is replayed.
    """
    return _replay(split, rank, microbatches)[0]


def inflight_chunk_microbatches(
    split: tuple[tuple[int, ...], ...], rank: int, microbatches: int
) -> tuple[int, ...]:
    """The micro-batches each of ``rank``'s chunks has in flight (forward run, backward not
    yet) at the peak of :func:`inflight_block_microbatches`: the first point that reaches
    it, and the forwards of chunks without blocks that follow it at once."""
    return _replay(split, rank, microbatches)[1]


def _replay(
    split: tuple[tuple[int, ...], ...], rank: int, microbatches: int
) -> tuple[int, tuple[int, ...]]:
    """:func:`inflight_block_microbatches` and :func:`inflight_chunk_microbatches`."""
    pp, v = len(split), len(split[0])
    blocks = split[rank]
    m = max(microbatches, 1)
    if v == 1:
        # NOTE: one chunk: every steady step adds and frees the same blocks, so the replay's
        # peak is the warm-up's min(m, pp - r - 1) micro-batches plus one (none when the
        # warm-up is all of them): min(m, pp - r), without replaying m steps.
        held = min(m, pp - rank)
        return held * blocks[0], (held,)
    group = m // max(1, m // pp)
    warmup = min(v * m, (v - 1) * group + 2 * (pp - rank - 1))
    chunks = [0] * v
    for k in range(warmup):
        chunks[(k // group) % v] += 1
    live = sum(n * b for n, b in zip(chunks, blocks, strict=True))
    # The warm-up only adds: its end holds its peak. ``extend``: the last op reached the peak,
    # so a forward of a chunk without blocks (Llama 3's embedding-only first chunk) right
    # after it keeps the peak with one more micro-batch in flight: that point is taken.
    peak, at_peak, extend = live, tuple(chunks), True
    for k in range(min(v * m - warmup, v * group)):
        forward = ((warmup + k) // group) % v
        chunks[forward] += 1
        live += blocks[forward]
        if live > peak or (extend and blocks[forward] == 0):
            peak, at_peak, extend = live, tuple(chunks), True
        else:
            extend = False
        backward = v - 1 - (k // group) % v
        chunks[backward] -= 1
        live -= blocks[backward]
        extend = False
    return peak, at_peak


class PipelineRuntime(str, Enum):
    """The pipeline runtime, which decides what a stage keeps of its inputs and outputs.

    ``megatron``: Megatron-LM / Megatron-Core (``megatron/core/pipeline_parallel/
    schedules.py``). After a stage sends a micro-batch's output, ``deallocate_output_tensor``
    replaces the output's storage by a one-element tensor and keeps only its autograd node
    (``custom_backward`` runs backward from it); Megatron-LM's training loop sets
    ``deallocate_pipeline_outputs=True``. The received input is the tensor the first block
    saves for backward. So a stage keeps nothing beyond what its blocks save; Llama 3's
    runtime does the same ("we deallocate tensors that will not be used for future
    computation, including the input and output tensors of each pipeline stage", Dubey et
    al. 2024, sec. 3.3.2).

    ``torch``: torch.distributed.pipelining (torchtitan; ``torch/distributed/pipelining/
    stage.py``). ``forward_one_chunk`` keeps each micro-batch's output in ``fwd_cache`` until
    its backward (``stage_backward`` runs ``autograd.backward`` from it); a stage that
    receives activations allocates one receive buffer per micro-batch of the step
    (``_setup_forward_recv_info``: ``args_recv_info[chunk_id]`` for every chunk id) and one
    that receives gradients one gradient buffer per micro-batch (``_create_grad_recv_info``
    for every ``mb_index``); both sets are kept from step to step.
    """

    MEGATRON = "megatron"
    TORCH = "torch"


def stage_io_bytes(
    runtime: PipelineRuntime,
    pp: int,
    v: int,
    rank: int,
    microbatches: int,
    chunk_inflight: tuple[int, ...],
    hidden_bytes: int,
) -> int:
    """What ``rank``'s pipeline runtime keeps of its stages' inputs and outputs beyond the
    activations its blocks save, at the rank's peak.

    ``hidden_bytes`` is one micro-batch's hidden state as a stage sends it (the residual
    stream, split over tensor-parallel ranks by sequence parallelism); ``chunk_inflight``
    the micro-batches each chunk holds at the peak (:func:`inflight_chunk_microbatches`).

    Under ``megatron`` nothing (see :class:`PipelineRuntime`). Under ``torch``, per chunk
    (stage ``c pp + r``): a middle stage keeps ``m`` activation buffers, of which the
    in-flight ones are its first block's saved input (counted with the blocks), ``m``
    gradient buffers and the in-flight outputs: ``(m - n) + m + n = 2m`` hidden states. The
    first stage receives nothing: ``m + n``; the last sends nothing (its output, the logits,
    is priced with the loss): ``m - n``. The input gradients autograd leaves in the receive
    buffers' ``.grad`` until the next step (``clear_runtime_states``) are not counted: none
    exists before a rank's first backward, where its peak is (a steady 1F1B phase longer
    than the warm-up would add up to one per backward run).
    """
    if runtime is PipelineRuntime.MEGATRON or pp == 1:
        return 0
    m = max(microbatches, 1)
    kept = 0
    for c, n in enumerate(chunk_inflight):
        stage = c * pp + rank
        first, last = stage == 0, stage == pp * v - 1
        kept += (0 if first else m - n) + (0 if last else m + n)
    return kept * hidden_bytes


def pipeline_schedule(
    model: MemoryModel, pp: int, v: int, microbatches: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The model's :func:`pipeline_split` over ``pp`` ranks of ``v`` chunks, each rank's
    :func:`inflight_block_microbatches` and :func:`inflight_chunk_microbatches` for
    ``microbatches`` per step.

    NOTE: the plan search asks for the same schedule under every memory saver and batch
    geometry: call it through its :class:`~advisor.memory.memo.MemoryMemo`.
    """
    split = pipeline_split(model.shape["L"], pp, v)
    replays = [_replay(split, r, microbatches) for r in range(pp)]
    return split, tuple(p for p, _ in replays), tuple(c for _, c in replays)


#: Micro-batches of one stage's activations DualPipe keeps in flight beyond 1F1B's ``PP``
#: (DeepSeek-V3 report, arXiv:2412.19437, Table 2: activation memory ``PP + 1`` against
#: 1F1B's ``PP``, per device).
DUALPIPE_EXTRA_INFLIGHT = 1


def dualpipe_schedule(
    model: MemoryModel, pp: int, microbatches: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """DualPipe's split, each rank's block-micro-batches and its chunk's micro-batches in
    flight (as :func:`pipeline_schedule`).

    DualPipe (DeepSeek-V3 report, arXiv:2412.19437, sec. 3.2.1) feeds micro-batches from
    both ends of the pipeline: rank ``r`` runs stage ``r`` of the forward direction and
    stage ``PP - 1 - r`` of the reverse one, which is why it keeps two copies of the
    parameters (:func:`mirror_rank`). Its Table 2 puts the activations of every device at
    ``PP + 1`` micro-batches of a stage against 1F1B's ``PP``; with fewer micro-batches per
    step than that, all of them. The split is 1F1B's (one chunk per direction).
    """
    split = pipeline_split(model.shape["L"], pp, 1)
    held = min(max(microbatches, 1), pp + DUALPIPE_EXTRA_INFLIGHT)
    return (
        split,
        tuple(held * sum(split[r]) for r in range(pp)),
        tuple((held,) for _ in range(pp)),
    )


def mirror_rank(rank: int, pp: int) -> int:
    """The stage of DualPipe's reverse direction that ``rank`` also holds: ``PP - 1 - r``."""
    return pp - 1 - rank
