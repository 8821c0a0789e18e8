"""Context parallelism in the memory model: the layouts it can run, the sequence share one
rank holds, and the key/value exchange buffers of ring attention and of Ulysses' all-to-alls.

Context parallelism splits every sequence over ``cp`` ranks: each rank runs the blocks on
``seq_len / cp`` tokens and keeps that share of every activation (Megatron-Core's context
parallelism docs: "each GPU only computes on a part of the sequence, which reduces the
activation memory by CP times"; Liu et al. 2023, sec. 3; Jacobs et al. 2023, sec. 3.1).
The attention kernel saves its local queries, keys, values, output and log-sum-exp (ring:
the rank's own chunks; Ulysses: every token of ``heads / cp`` heads, the same element
count), so a rank's saved tensors are those of one device at ``seq_len / cp`` tokens; what
attention adds is a transient buffer for the chunks in flight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from advisor.config import Attention, ContextParallelKind, TrainingConfig
from advisor.errors import UserError
from advisor.memory.params import enum_value
from advisor.model.spec import ModelSpec

#: Ring attention's buffers in flight, in chunks of the rank's keys and values. Forward
#: double-buffers the peers' K/V chunk (the one attended to and the one arriving); backward
#: passes the K/V chunks and their gradient accumulators dK/dV around the ring, each
#: double-buffered (Transformer Engine ``AttnFuncWithCPAndKVP2P``: ``p2p_comm_buffers`` of
#: two K/V chunks forward; two K/V and two dK/dV chunks backward; Liu et al. 2023, Alg. 1).
RING_BACKWARD_CHUNKS = 4
#: Ulysses' all-to-all outputs alive beside their inputs: the re-partitioned Q, K, V before
#: attention and its output after it (Jacobs et al. 2023, Fig. 2; DeepSpeed
#: ``DistributedAttention``: one all-to-all output per tensor).
ULYSSES_COPIES = 1


def check_context(config: TrainingConfig, d: Mapping[str, int], spec: ModelSpec) -> None:
    """Refuse context-parallel layouts the engines cannot run, with what to change (the
    attention kernel is :func:`check_context_kernel`'s).

    Args:
        config: the configuration (its layout's context-parallel degree and kind, the
            sequence length, the attention kernel, the tensor-parallel degree).
        d: the model's dimensions (:func:`~advisor.memory.params.shape_of`).
        spec: the model; a decoder's causal mask is balanced by cutting the sequence into
            ``2 cp`` chunks under ring attention.

    Raises:
        UserError: a degree that does not divide the sequence or the heads (Ulysses).
    """
    layout = config.layout
    cp = layout.context_parallel
    if cp == 1:
        return
    seq = config.batch.seq_len
    causal = enum_value(spec.arch) == "decoder"
    ring = layout.context_parallel_kind is ContextParallelKind.RING
    # Megatron-Core (get_batch_on_this_cp_rank) and torch's context_parallel load-balance
    # the causal mask by cutting the sequence into 2 x cp chunks, rank r taking chunks r
    # and 2cp-1-r: the sequence must split into 2 x cp equal chunks.
    pieces = 2 * cp if ring and causal else cp
    if seq % pieces:
        why = " (ring attention balances the causal mask over 2 x cp chunks)" if pieces > cp else ""
        raise UserError(
            f"context parallelism {cp} needs a sequence length divisible by {pieces}{why}; "
            f"{seq} is not",
            f"pick a degree whose {'2 x ' if pieces > cp else ''}cp divides {seq}",
        )
    if not ring:
        tp = layout.tensor_parallel
        heads, kv = d["a"] // tp, max(d["kv"] // tp, 1)
        # DeepSpeed's UlyssesSPAttentionHF: the heads must divide by the degree; key/value
        # heads must divide by it or it by them (then they are replicated).
        if d["a"] % tp or heads % cp:
            raise UserError(
                f"Ulysses context parallelism {cp} does not divide the {heads} attention "
                f"heads{' per tensor-parallel rank' if tp > 1 else ''}",
                "pick a degree that divides the heads, or --context-parallel-kind ring",
            )
        if kv % cp and cp % kv:
            raise UserError(
                f"Ulysses context parallelism {cp} and the {kv} key/value heads"
                f"{' per tensor-parallel rank' if tp > 1 else ''} do not divide one another",
                "pick a degree that divides the key/value heads or a multiple of them",
            )


def check_context_kernel(config: TrainingConfig) -> None:
    """Refuse ring attention over the eager attention kernel (``estimate``'s check; the plan
    search excludes the pair in its compatibility filter, advisor.plan.constraints).

    Raises:
        UserError: ring context parallelism with eager attention.
    """
    layout = config.layout
    if (
        layout.context_parallel > 1
        and layout.context_parallel_kind is ContextParallelKind.RING
        and config.kernels.attention is Attention.EAGER
    ):
        raise UserError(
            "ring attention merges blockwise softmax results: it needs the flash or "
            "memory-efficient attention kernel, not eager attention",
            "use --attention flash (torch's context_parallel runs the flash, efficient and "
            "cuDNN SDPA kernels), or --context-parallel-kind ulysses",
        )


def rank_config(config: TrainingConfig) -> TrainingConfig:
    """The configuration one context-parallel rank runs its blocks on: ``seq_len / cp``
    tokens per sample (``config`` itself without context parallelism)."""
    cp = config.layout.context_parallel
    if cp == 1:
        return config
    return config.with_(seq_len=config.batch.seq_len // cp)


def kv_widths(d: Mapping[str, int]) -> tuple[int, int]:
    """Elements per token of one block's keys and of its values, all heads: the key/value
    heads x head width, or under multi-head latent attention every head's decompressed key
    (nope + rope parts) and value (what Megatron-Core's MLA context parallelism exchanges)."""
    if d["mla"]:
        return d["a"] * (d["dn"] + d["dr"]), d["a"] * d["dv"]
    return d["kv"] * d["hd"], d["kv"] * d["hd"]


def exchange_bytes(config: TrainingConfig, d: Mapping[str, int], act_bytes: int) -> int:
    """The transient bytes one rank's attention exchange keeps in a block's backward, the
    larger direction (``config`` the rank's configuration, :func:`rank_config`).

    Ring: :data:`RING_BACKWARD_CHUNKS` chunks of the rank's keys and values (its ``seq_len
    / cp`` tokens; under tensor parallelism its heads' share). Ulysses: one all-to-all
    output of the block's Q, K, V (its local elements; the all-to-all only moves them).
    """
    layout = config.layout
    if layout.context_parallel == 1:
        return 0
    tp = layout.tensor_parallel
    tokens = config.batch.micro_batch * config.batch.seq_len
    k, v = kv_widths(d)
    if layout.context_parallel_kind is ContextParallelKind.RING:
        return math.ceil(RING_BACKWARD_CHUNKS * tokens * (k + v) * act_bytes / tp)
    q = d["a"] * (d["dn"] + d["dr"] if d["mla"] else d["hd"])
    return math.ceil(ULYSSES_COPIES * tokens * (q + k + v) * act_bytes / tp)
