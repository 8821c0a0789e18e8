"""Pipeline parallelism: how the blocks split into model chunks per rank (Megatron-LM's even
split, torchtitan's default otherwise) and how many block-micro-batches of activations each
rank's 1F1B or interleaved 1F1B schedule keeps in flight."""

from __future__ import annotations

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
    pp, v = len(split), len(split[0])
    blocks = split[rank]
    m = max(microbatches, 1)
    if v == 1:
        # NOTE: one chunk: every steady step adds and frees the same blocks, so the replay's
        # peak is the warm-up's min(m, pp - r - 1) micro-batches plus one (none when the
        # warm-up is all of them): min(m, pp - r), without replaying m steps.
        return min(m, pp - rank) * blocks[0]
    group = m // max(1, m // pp)
    warmup = min(v * m, (v - 1) * group + 2 * (pp - rank - 1))
    live = sum(blocks[(k // group) % v] for k in range(warmup))
    peak = live
    for k in range(min(v * m - warmup, v * group)):
        live += blocks[((warmup + k) // group) % v]
        peak = max(peak, live)
        live -= blocks[v - 1 - (k // group) % v]
    return peak


def pipeline_schedule(
    model: MemoryModel, pp: int, v: int, microbatches: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """The model's :func:`pipeline_split` over ``pp`` ranks of ``v`` chunks, and each rank's
    :func:`inflight_block_microbatches` for ``microbatches`` per step.

    NOTE: the plan search asks for the same schedule under every memory saver and batch
    geometry: call it through its :class:`~advisor.memory.memo.MemoryMemo`.
    """
    split = pipeline_split(model.shape["L"], pp, v)
    return split, tuple(inflight_block_microbatches(split, r, microbatches) for r in range(pp))


#: Micro-batches of one stage's activations DualPipe keeps in flight beyond 1F1B's ``PP``
#: (DeepSeek-V3 report, arXiv:2412.19437, Table 2: activation memory ``PP + 1`` against
#: 1F1B's ``PP``, per device).
DUALPIPE_EXTRA_INFLIGHT = 1


def dualpipe_schedule(
    model: MemoryModel, pp: int, microbatches: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """DualPipe's split and each rank's block-micro-batches in flight (as
    :func:`pipeline_schedule`).

    DualPipe (DeepSeek-V3 report, arXiv:2412.19437, sec. 3.2.1) feeds micro-batches from
    both ends of the pipeline: rank ``r`` runs stage ``r`` of the forward direction and
    stage ``PP - 1 - r`` of the reverse one, which is why it keeps two copies of the
    parameters (:func:`mirror_rank`). Its Table 2 puts the activations of every device at
    ``PP + 1`` micro-batches of a stage against 1F1B's ``PP``; with fewer micro-batches per
    step than that, all of them. The split is 1F1B's (one chunk per direction).
    """
    split = pipeline_split(model.shape["L"], pp, 1)
    held = min(max(microbatches, 1), pp + DUALPIPE_EXTRA_INFLIGHT)
    return split, tuple(held * sum(split[r]) for r in range(pp))


def mirror_rank(rank: int, pp: int) -> int:
    """The stage of DualPipe's reverse direction that ``rank`` also holds: ``PP - 1 - r``."""
    return pp - 1 - rank
