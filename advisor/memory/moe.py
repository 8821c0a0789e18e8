"""MoE layouts as Megatron-Core builds them: the expert fold of a pipeline stage's ranks into
expert tensor x expert x expert-data parallel groups, and the memory of token dispatch
(dispatch buffers, permutation copies, capacity padding) beside the blocks' activations.

Megatron-Core builds two rank generators over the same devices (``initialize_model_parallel``
in megatron/core/parallel_state.py): ``tp-cp-dp-pp`` for attention and dense layers,
``tp-ep-dp-pp`` for the MoE layers, with ``expert_tensor_parallel_size`` defaulting to
``tensor_model_parallel_size`` and ``expert_data_parallel_size = world_size //
(expert_tensor_parallel_size x expert_model_parallel_size x pipeline_model_parallel_size)``,
a RuntimeError where it does not divide ("MoE Parallel Folding",
megatron/core/transformer/moe/README.md: the EP x TP group of the MoE layers is a sub-group
of the DP x CP x TP group of attention). Experts split evenly over the expert-parallel ranks
(``num_experts % expert_model_parallel_size == 0``, megatron/training/arguments.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypedDict

from advisor.config import MoeDispatcher, ParallelLayout


def expert_fold_problem(
    layout: ParallelLayout, experts: int | None = None
) -> tuple[str, str] | None:
    """Why Megatron-Core could not build ``layout``'s expert groups, with what to change,
    or None where they fold.

    Args:
        layout: the degrees (tensor, context, data, expert, expert tensor parallel).
        experts: the model's routed experts (None: not checked here).

    Returns:
        ``(problem, hint)``: one sentence naming the degrees that do not divide, and the fix.
    """
    ep, etp, fold = layout.expert_parallel, layout.expert_tp, layout.expert_fold
    if experts is not None and experts <= 1:
        moe_only = [
            name
            for name, given in (
                (f"expert parallelism {ep}", ep > 1),
                ("expert tensor parallelism", layout.expert_tensor_parallel not in (None, 1)),
                ("an expert capacity factor", layout.capacity_factor is not None),
            )
            if given
        ]
        if moe_only:
            return (
                f"{moe_only[0]} applies to MoE models, and this model has no experts",
                "drop the MoE flags (--expert-parallel, --expert-tensor-parallel, "
                "--capacity-factor) for a dense model",
            )
        return None
    if experts is not None and experts % ep:
        return (
            f"expert parallelism {ep} does not divide the model's {experts} experts",
            "Megatron splits the experts evenly over the expert-parallel ranks: pick a "
            f"divisor of {experts}",
        )
    if fold % (etp * ep):
        cp = layout.context_parallel
        ranks = f"tp {layout.tensor_parallel}" + (f" x cp {cp}" if cp > 1 else "")
        return (
            f"expert tensor x expert parallelism {etp} x {ep} does not divide the {fold} "
            f"ranks of a pipeline stage ({ranks} x dp {layout.data_parallel})",
            "Megatron folds the experts over the tensor x context x data parallel ranks "
            "(MoE parallel folding): pick --expert-parallel and --expert-tensor-parallel "
            f"whose product divides {fold}",
        )
    return None


def routed_rows(layout: ParallelLayout, tokens: float, top_k: int, experts: int) -> float:
    """Token rows one rank's local experts process in one MoE layer, one micro-batch.

    ``tokens`` is the micro-batch's tokens of one data-parallel rank (before the tensor and
    context split). Each rank of the attention layout holds ``tokens / (tp x cp)`` of them
    (sequence parallelism; Megatron's ``num_local_tokens = S/TP*B``); its ``etp x ep``
    expert group brings ``k`` copies of every token to the ``experts / ep`` local experts,
    and each of the ``etp`` expert tensor ranks runs all of the group's rows (the
    all-to-all dispatcher all-gathers them over the expert tensor group; the all-gather
    dispatcher gathers the whole group). Balanced routing: ``tokens / (tp cp) x etp x k``.
    With a capacity factor ``c`` (Megatron ``get_capacity``: ``num_tokens x topk x c /
    num_experts`` per expert, dropped before the exchange) an expert runs at most that many
    and, padded to capacity (``--moe-pad-expert-input-to-capacity``), exactly that many.
    """
    local = tokens / (layout.tensor_parallel * layout.context_parallel)
    scale = capacity_scale(layout) if experts > 1 else 1.0
    return local * layout.expert_tp * top_k * scale


def capacity_scale(layout: ParallelLayout) -> float:
    """The routed experts' rows relative to dropless balanced routing: the capacity factor
    when padded, ``min(c, 1)`` when tokens beyond capacity are only dropped, else 1."""
    cf = layout.capacity_factor
    if cf is None:
        return 1.0
    return cf if layout.pad_to_capacity else min(cf, 1.0)


def dispatch_bytes(
    layout: ParallelLayout, d: Mapping[str, int], tokens: float, act: int
) -> tuple[int, int]:
    """What token dispatch adds to one block on one rank, one micro-batch, beyond the
    per-token-expert copies of the block's activation count (which
    :func:`advisor.memory.activations.layer_activation_bytes` scales by the expert tensor
    gather and the capacity).

    Returns ``(saved, buffer)``: ``saved`` the bytes kept for backward, averaged over the
    dense and MoE blocks as the block count is; ``buffer`` the largest transient
    communication buffer of an MoE layer (freed after the layer).

    - ``allgather`` (megatron/core/transformer/moe/token_dispatcher.py,
      ``MoEAllGatherTokenDispatcher``): the routing map (bool) and the probabilities (fp32)
      of the whole expert tensor x expert group are gathered and the local experts' slices
      kept (``local_map``; ``local_probs``, the routed entries only); the gathered hidden
      states fill a global buffer of ``etp x ep x tokens / (tp cp)`` rows.
    - ``alltoall`` and ``flex``: the ``k`` permuted rows per token before the exchange and
      the exchanged rows after it are the buffers; their saved copies are the block count's.
    """
    E, k, h, L, Lm = d["E"], d["k"], d["h"], d["L"], d["Lm"]
    if E <= 1 or not Lm:
        return 0, 0
    etp, ep = layout.expert_tp, layout.expert_parallel
    if etp * ep == 1:
        return 0, 0  # no exchange: the experts loop's own copies are the block count's
    local = tokens / (layout.tensor_parallel * layout.context_parallel)
    saved = 0.0
    if layout.moe_dispatcher is MoeDispatcher.ALLGATHER:
        group = etp * ep
        # The local experts' columns of the gathered map (1 byte each) and the fp32
        # probabilities of the rows routed to them (k / ep per gathered token).
        saved = group * local * (E // ep + 4 * k / ep)
        buffer = group * local * h * act
    else:
        buffer = 2 * local * k * capacity_scale(layout) * h * act
    return math.ceil(saved * Lm / L), math.ceil(buffer)


class MoeActivationArgs(TypedDict, total=False):
    """The MoE keyword arguments of :func:`~advisor.memory.activations.layer_activation_bytes`."""

    expert_rows: float
    expert_gather: int


def activation_kwargs(layout: ParallelLayout, experts: int) -> MoeActivationArgs:
    """The MoE arguments of :func:`advisor.memory.activations.layer_activation_bytes` for
    ``layout`` (none where they are the defaults, so a dense model's memo key is unchanged)."""
    out: MoeActivationArgs = {}
    if experts <= 1:
        return out
    scale = capacity_scale(layout)
    if scale != 1.0:
        out["expert_rows"] = scale
    if layout.expert_tp != 1:
        out["expert_gather"] = layout.expert_tp
    return out
