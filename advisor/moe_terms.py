"""The MoE layout vocabulary: how tokens reach the experts, what hides the exchange, how the
router balances the load (re-exported by :mod:`advisor.config`)."""

from __future__ import annotations

from enum import Enum


class MoeDispatcher(str, Enum):
    """How an MoE layer moves its tokens to the experts and back (Megatron-Core
    ``--moe-token-dispatcher-type``, megatron/core/transformer/moe/token_dispatcher.py).

    ``alltoall``: each rank permutes its tokens by expert and exchanges them with an
    all-to-all over the expert-parallel group, then all-gathers them over the expert
    tensor-parallel group (what Megatron recommends with expert parallelism).
    ``allgather``: every rank all-gathers the hidden states of its whole expert
    tensor x expert parallel group and keeps the tokens routed to its own experts; the
    outputs return by a reduce-scatter (Megatron's default; best without expert
    parallelism or with a large top-k). ``flex``: DeepEP's fused dispatch and combine
    (``--moe-token-dispatcher-type flex --moe-enable-deepep``), which sends a token once per
    destination rank however many of its top-k experts live there (deepseek-ai/DeepEP
    ``Buffer.get_dispatch_layout``: ``num_tokens_per_rank``, ``is_token_in_rank``).
    """

    ALLTOALL = "alltoall"
    ALLGATHER = "allgather"
    FLEX = "flex"


class MoeOverlap(str, Enum):
    """What hides the expert all-to-alls under compute (advisor/cost/expert_overlap.py):
    nothing, Megatron-Core's batch-level 1F1B overlap (``--overlap-moe-expert-parallel-comm
    --delay-wgrad-compute``) or DeepSeek-V3's DualPipe schedule."""

    NONE = "none"
    A2A_OVERLAP = "a2a-overlap"
    DUALPIPE = "dualpipe"


class MoeBalance(str, Enum):
    """How the router balances the experts' load, which sets the busiest expert rank's
    excess (Wang et al. 2024, arXiv:2408.15664): an expert bias (loss-free, DeepSeek-V3) or
    an auxiliary load-balancing loss (GShard, Switch, Megatron-Core's default)."""

    LOSS_FREE = "loss-free"
    AUX_LOSS = "aux-loss"
