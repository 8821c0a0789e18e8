"""The communication volumes of MoE token dispatch: what one rank sends through each
collective of one MoE layer, per token dispatcher, as Megatron-Core's dispatchers run them.

Notation (megatron/core/transformer/moe/token_dispatcher.py): a rank of the attention layout
holds ``n = tokens / (tp x cp)`` tokens of hidden width ``h`` (sequence parallelism:
``num_local_tokens = S/TP*B``); each token picks ``k`` of ``E`` experts; the experts split
``ep`` ways (expert parallelism) and their matrices ``etp`` ways (expert tensor parallelism).
Routing is taken balanced (the load-balancing loss or bias keeps it so on average; Lepikhin
et al. 2021; DeepSeek-AI 2024, sec. 2.1.2): a token-expert pair lands on each expert rank
with probability ``1 / ep``.

- ``alltoall`` (``MoEAlltoAllTokenDispatcher``: permute -> all-to-all(EP) -> all-gather(ETP)
  -> experts -> reduce-scatter(ETP) -> all-to-all(EP) -> unpermute): each of the ``n k``
  token-expert rows leaves the rank unless its expert is local, ``n k (ep - 1) / ep`` rows
  each way (GShard's all-to-all, Lepikhin et al. 2021; DeepSpeed-MoE, Rajbhandari et al.
  2022, sec. 5); the expert tensor group then gathers the ``etp - 1`` peers' rows and
  reduce-scatters the outputs, ``(etp - 1) n k`` rows each.
- ``allgather`` (``MoEAllGatherTokenDispatcher``): the hidden states, routing map (bool) and
  probabilities of the whole ``G = etp x ep`` group are all-gathered, ``(G - 1) n`` rows,
  and the outputs reduce-scattered back, ``(G - 1) n`` rows: independent of ``k``, hence
  better "when only tensor parallelism is used or when the top-k value is very large"
  (megatron/core/transformer/moe/README.md).
- ``flex`` (DeepEP, ``--moe-enable-deepep``): one copy of a token per destination rank
  however many of its ``k`` experts live there (DeepEP ``Buffer.get_dispatch_layout``:
  ``is_token_in_rank``), so a token reaches ``D = ep (1 - C(E - E/ep, k) / C(E, k))``
  expert ranks in expectation (``k`` distinct experts drawn from ``E``); the remote ones
  ``D (ep - 1) / ep`` each way.
- A capacity factor scales the rows that cross (tokens over capacity are dropped before
  the exchange; padded rows are exchanged too: Megatron's drop-and-pad sends
  ``capacity x num_experts`` rows).

Backward sends the same volumes the other way (the gradient of a dispatch is a combine).
"""

from __future__ import annotations

from math import comb

from advisor.config import MoeDispatcher


def ranks_reached(experts: int, top_k: int, ep: int) -> float:
    """Expected expert-parallel ranks a token's ``top_k`` distinct experts live on, with the
    ``experts`` split evenly over ``ep`` ranks and picked uniformly."""
    if ep <= 1 or experts <= 1:
        return 1.0
    per_rank = experts // ep
    k = min(top_k, experts)
    miss = comb(experts - per_rank, k) / comb(experts, k)
    return ep * (1.0 - miss)


def dispatch_volumes(
    dispatcher: MoeDispatcher,
    *,
    tokens: float,
    hidden: int,
    experts: int,
    top_k: int,
    tp: int,
    cp: int,
    etp: int,
    ep: int,
    act_bytes: int,
    capacity_scale: float = 1.0,
) -> dict[str, float]:
    """Bytes one rank sends in each collective of one MoE layer's forward (dispatch and
    combine), one micro-batch; the backward mirrors them.

    Args:
        dispatcher: the token dispatcher.
        tokens: the micro-batch's tokens of one data-parallel rank.
        hidden: the hidden width.
        experts: routed experts per layer.
        top_k: experts per token.
        tp: tensor parallelism of the attention layout (sequence parallel split).
        cp: context parallelism.
        etp: expert tensor parallelism.
        ep: expert parallelism.
        act_bytes: bytes per element of the exchanged activations.
        capacity_scale: rows relative to dropless balanced routing
            (:func:`advisor.memory.moe.capacity_scale`).

    Returns:
        Collective name -> bytes sent by one rank (only the collectives that run).
    """
    if experts <= 1 or etp * ep == 1:
        return {}
    n = tokens / (tp * cp)
    row = hidden * act_bytes
    out: dict[str, float] = {}
    if dispatcher is MoeDispatcher.ALLGATHER:
        group = etp * ep
        out["allgather_dispatch"] = (group - 1) * n * (row + experts * (1 + 4))
        out["reduce_scatter_combine"] = (group - 1) * n * row
        return out
    rows = n * top_k * capacity_scale
    if ep > 1:
        if dispatcher is MoeDispatcher.FLEX:
            reached = ranks_reached(experts, top_k, ep) * capacity_scale
            sent = n * reached * (ep - 1) / ep * row
        else:
            sent = rows * (ep - 1) / ep * row
        out["all_to_all_dispatch"] = sent
        out["all_to_all_combine"] = sent
    if etp > 1:
        out["expert_tp_all_gather"] = (etp - 1) * rows * row
        out["expert_tp_reduce_scatter"] = (etp - 1) * rows * row
    return out
