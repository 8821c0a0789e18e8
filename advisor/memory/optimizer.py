"""Optimizer state bytes by the taxonomy's state formulas (elementwise, factored, quantized,
block-mean, low-rank, preconditioners, K-FAC), paged states and their residency, and whether
a step runs a fused in-place kernel."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from advisor.config import OptimizerImpl, Stack
from advisor.errors import UserError
from advisor.memory.params import ParamTensor, Role
from advisor.rules.taxonomy import OptimizerMemory, StateKind, Technique

# bitsandbytes' paged optimizers allocate a state buffer in CUDA unified memory
# (functional.get_paged: cudaMallocManaged) only for parameters of at least 1e5 elements;
# smaller ones, and every block's absmax, are ordinary torch tensors on the device
# (bitsandbytes/optim/optimizer.py, Optimizer8bit.get_state_buffer, 0.43-0.50).
PAGED_MIN_NUMEL = 100_000


def _blocks(d: int, block: int | None) -> Iterator[int]:
    if not block or block >= d:
        yield d
        return
    full, rest = divmod(d, block)
    yield from [block] * full
    if rest:
        yield rest


def optimizer_state_bytes(
    mem: OptimizerMemory, tensors: Sequence[ParamTensor], *, state_dtype_bytes: int = 4
) -> int:
    """Bytes of optimizer state for ``tensors``, by the formula of ``mem.state`` (see StateKind).

    Args:
        mem: the optimizer's state signature from the taxonomy.
        tensors: the trainable tensors.
        state_dtype_bytes: 4 when states are fp32 (the taxonomy's reference); 2 when the
            parameters themselves are 16-bit with no master copy (bare fp16/bf16), where
            the implementations allocate states like the parameter, so every state element
            is capped at 2 bytes.

    Returns:
        The state bytes, before sharding.
    """
    if mem.state is StateKind.BLOCK_MEAN:
        # NOTE: Adam-mini allocates its states in fp32 whatever the parameter dtype.
        state_dtype_bytes = 4

    def cap(per_element: float) -> float:
        # fp32 layouts keep the reference dtypes (bf16 momentum included) unchanged.
        return per_element if state_dtype_bytes >= 4 else min(per_element, state_dtype_bytes)

    states = max(mem.states, 1)
    bpp = cap(mem.bytes_per_param / states) * states if mem.bytes_per_param else 0.0
    fallback = mem.fallback_bytes_per_param
    fb = bpp if fallback is None else cap(fallback / max(states, 1)) * max(states, 1)
    if fallback is not None and mem.state is StateKind.FACTORED:
        fb = cap(fallback)
    # NOTE: under bare 16-bit, factor / projection / preconditioner matrices follow the
    # parameter dtype as in torch Adafactor, GaLore and SOAP (measured); ScalableShampoo
    # is the exception (fp32 statistics): set factor_bytes accordingly in its entry.
    fbytes = cap(mem.factor_bytes or 4.0)
    total = 0.0
    kind = mem.state
    for t in tensors:
        n, c = t.numel, t.count
        matrix = len(t.shape) >= 2
        if kind in (StateKind.NONE, StateKind.SEED):
            per = 0.0
        elif kind is StateKind.ELEMENTWISE:
            per = bpp * n
        elif kind is StateKind.FACTORED:
            # Shazeer & Stern 2018: row and column statistics of the second moment.
            per = bpp * n + fbytes * (t.shape[0] + t.shape[1]) if matrix else fb * n
        elif kind is StateKind.QUANTIZED_BLOCKWISE:
            small = mem.min_quantized_numel is not None and n < mem.min_quantized_numel
            block = mem.block_size or 2048
            per = fb * n if small else bpp * n + math.ceil(n / block) * (mem.block_stat_bytes or 0)
        elif kind is StateKind.BLOCK_MEAN:
            # Adam-mini (Zhang et al. 2024): embeddings and output keep Adam's full v.
            if t.role in (Role.EMBEDDING, Role.OUTPUT):
                per = fb * n
            elif t.role is Role.POSITION:
                per = bpp * n + (mem.block_stat_bytes or 4)
            else:
                blocks = t.heads if t.role is Role.ATTENTION_QK and t.heads else t.shape[0]
                per = bpp * n + blocks * (mem.block_stat_bytes or 4)
        elif kind is StateKind.LOW_RANK_PROJECTED:
            # GaLore (Zhao et al. 2024) projects the block matrices (attention, MLP);
            # embeddings, LM head and vectors run plain Adam.
            rank = mem.rank or 128
            if matrix and t.role in (Role.ATTENTION_QK, Role.LAYER_MATRIX):
                r = min(rank, *t.shape)
                per = bpp * r * max(t.shape) + fbytes * r * min(t.shape)
            else:
                per = fb * n
        elif kind is StateKind.BLOCK_PRECONDITIONER:
            if not matrix and fallback is not None:
                per = fb * n
            else:
                per = bpp * n + _preconditioner_elements(mem, t.shape) * fbytes
        else:  # KFAC_FACTORS: Martens & Grosse 2015, per linear layer A (in x in), G (out x out)
            per = bpp * n
            if matrix and t.role in (Role.ATTENTION_QK, Role.LAYER_MATRIX):
                d_out, d_in = t.shape
                per += (mem.factor_matrices or 2) * fbytes * (d_in**2 + d_out**2)
        total += per * c
    return math.ceil(total)


def paged_state_bytes(mem: OptimizerMemory, tensors: Sequence[ParamTensor]) -> int:
    """The part of :func:`optimizer_state_bytes` a paged optimizer keeps in unified memory.

    bitsandbytes pages the elementwise state buffers (8-bit: one uint8 per element and
    state) of parameters with at least :data:`PAGED_MIN_NUMEL` elements; the block
    statistics (absmax) and the states of smaller tensors are ordinary device tensors.

    Args:
        mem: the optimizer's state signature (``paged`` set, else nothing is paged).
        tensors: the trainable tensors.

    Returns:
        The paged bytes, before sharding.
    """
    if not mem.paged or mem.state in (StateKind.NONE, StateKind.SEED):
        return 0
    return math.ceil(
        sum(mem.bytes_per_param * t.numel * t.count for t in tensors if t.numel >= PAGED_MIN_NUMEL)
    )


class PagedResidency(NamedTuple):
    """Where a paged optimizer's states live on a device of a given size, and what a step
    moves over the host link."""

    resident_bytes: int  # kept in device memory (what torch's peak leaves free)
    host_bytes: int  # paged out to host memory
    traffic_bytes: int  # migrated host <-> device per optimizer step


def paged_residency(paged_bytes: int, peak_bytes: int, device_bytes: int) -> PagedResidency:
    """How unified memory holds ``paged_bytes`` of states next to a ``peak_bytes`` peak.

    The CUDA driver backs managed memory with whatever device memory the other allocations
    leave (torch's caching allocator keeps its peak reserved, so the peak is what is left
    over from) and evicts the rest to host memory in 2 MiB root chunks, least recently
    migrated first (NVIDIA open-gpu-kernel-modules, kernel-open/nvidia-uvm/uvm_pmm_gpu.c: the
    root-chunk LRU is updated when a chunk is allocated or migrated, not on access).
    bitsandbytes prefetches each parameter's states to the device before its update
    (``Optimizer8bit.prefetch_state``: cudaMemPrefetchAsync) in the same order every step,
    so once the states exceed the free memory that sweep is the LRU worst case: every
    chunk is evicted before it is needed again, and each step migrates all paged states in
    and writes as many evicted (updated) ones back. With room for them all, nothing moves.

    Args:
        paged_bytes: the estimate's ``paged_bytes``.
        peak_bytes: the estimate's ``total_bytes`` (tensors, context and overheads).
        device_bytes: the device's memory.

    Returns:
        Resident and host bytes, and the bytes a step moves over the host link.
    """
    resident = max(0, min(paged_bytes, device_bytes - peak_bytes))
    host = paged_bytes - resident
    return PagedResidency(resident, host, 2 * paged_bytes if host else 0)


def _preconditioner_elements(mem: OptimizerMemory, shape: tuple[int, ...]) -> int:
    """Elements of the per-block preconditioner matrices of one tensor (Gupta et al. 2018)."""
    copies = mem.factor_matrices or 2
    limit = mem.max_preconditioned_dim
    # The tensor is cut into a grid of blocks of block_size along every dimension; each
    # block keeps, per dimension, `copies` square matrices of its side.
    per_dim = [list(_blocks(d, mem.block_size)) for d in shape]
    n_blocks = math.prod(len(b) for b in per_dim)
    elements = 0
    for sides in per_dim:
        others = n_blocks // len(sides)
        elements += others * sum(side * side for side in sides if not limit or side <= limit)
    return copies * elements


def memory_of(optimizer: Technique | OptimizerMemory) -> tuple[OptimizerMemory, str]:
    """The optimizer's state signature and its id (the state kind for a bare signature)."""
    if isinstance(optimizer, Technique):
        if optimizer.memory is None:
            raise UserError(f"{optimizer.id} is not an optimizer", "pick an optimizer id")
        return optimizer.memory, optimizer.id
    return optimizer, optimizer.state.value


def optimizer_note(opt_id: str, mem: OptimizerMemory) -> str:
    """The note naming the optimizer, the only part of an estimate that reads its id (the
    plan search shares one estimate among optimizers with the same state signature)."""
    return f"optimizer {opt_id}: state {mem.state.value}"


def fused_step_on(
    mem: OptimizerMemory, stack: Stack, impl: OptimizerImpl = OptimizerImpl.AUTO
) -> bool:
    """Whether the step runs a fused in-place kernel: bitsandbytes' 8-bit optimizers always
    do (they have no other implementation); torch's ``fused=True`` ones unless foreach is
    asked for (``auto`` is fused where a fused kernel exists, on every stack: see
    :class:`~advisor.config.OptimizerImpl`). ``stack`` is kept for the callers' sake."""
    del stack
    if not mem.fused_step:
        return False
    return mem.state is StateKind.QUANTIZED_BLOCKWISE or impl is not OptimizerImpl.FOREACH
