"""Context parallelism's communication: ring attention's key/value exchange (overlapped with
the attention of the chunk at hand) and Ulysses' all-to-alls, per block and micro-batch.

Ranks are ordered tensor-parallel innermost, then context parallel (Megatron-Core's default
order ``tp-cp-ep-dp-pp``; Llama 3's [TP, CP, PP, DP], Dubey et al. 2024, sec. 3.3.2): a
context-parallel group stays at NVLink speed while ``tp x cp`` fits in an NVLink domain.
"""

from __future__ import annotations

from advisor.config import Checkpointing, ContextParallelKind
from advisor.cost.comm import link
from advisor.cost.compute import attention
from advisor.cost.result import ComponentTime, Source
from advisor.cost.setting import Setting


def kv_widths(s: Setting) -> tuple[float, float]:
    """Elements per token of one block's keys and values on one tensor-parallel rank: key/
    value heads x head width, or under multi-head latent attention every head's decompressed
    key and value (Megatron-Core's MLA context parallelism exchanges those)."""
    spec = s.spec
    heads = spec.num_attention_heads or 1
    hd = spec.head_dim or s.sh.hidden // max(heads, 1)
    mla = spec.mla
    if mla is not None:
        k = heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
        v = heads * mla.v_head_dim
    else:
        k = v = (spec.num_key_value_heads or heads) * hd
    return k / s.tp, v / s.tp


def _act_bytes(s: Setting) -> int:
    return 4 if s.dtype in ("fp32", "tf32") else 2


def ring_step_bytes(s: Setting) -> float:
    """Bytes one rank sends per ring step in forward: its key and value chunk (``seq / cp``
    tokens of each sample). Forward makes ``cp - 1`` such steps: ``(cp - 1) / cp`` of the
    whole sequence's keys and values per block (Liu et al. 2023, sec. 3)."""
    k, v = kv_widths(s)
    return s.tokens * (k + v) * _act_bytes(s)


def ring_bytes(s: Setting) -> tuple[float, float]:
    """(forward, backward) bytes one rank sends per block under ring attention.

    Backward passes the key/value chunks around the ring again, with the accumulated
    dK/dV chunks beside them (Transformer Engine ``AttnFuncWithCPAndKVP2P.backward``;
    Liu et al. 2023, sec. 3): twice the forward's volume.
    """
    if s.cp == 1:
        return 0.0, 0.0
    fwd = (s.cp - 1) * ring_step_bytes(s)
    return fwd, 2 * fwd


def ulysses_bytes(s: Setting) -> tuple[float, float]:
    """(forward, backward) bytes one rank sends per block under Ulysses.

    Forward: all-to-alls of Q, K and V before attention and of its output after it, each
    sending ``(cp - 1) / cp`` of the rank's ``seq / cp``-token tensor; backward the same
    four on the gradients (Jacobs et al. 2023, sec. 3.2: per link ``4 N h / P`` per block
    for multi-head attention, against Megatron sequence parallelism's ``4 N h``). Grouped
    key/value heads make K and V smaller.
    """
    if s.cp == 1:
        return 0.0, 0.0
    spec = s.spec
    heads = spec.num_attention_heads or 1
    hd = spec.head_dim or s.sh.hidden // max(heads, 1)
    mla = spec.mla
    q = heads * ((mla.qk_nope_head_dim + mla.qk_rope_head_dim) if mla else hd) / s.tp
    o = heads * (mla.v_head_dim if mla else hd) / s.tp
    k, v = kv_widths(s)
    share = (s.cp - 1) / s.cp
    fwd = s.tokens * (q + k + v + o) * _act_bytes(s) * share
    return fwd, fwd


def crosses_domain(s: Setting) -> bool:
    """Whether a context-parallel group leaves the NVLink domain (``tp x cp`` ranks in a
    row do not fit in it)."""
    return s.tp * s.cp > s.node


def context_comm(s: Setting) -> tuple[float, str]:
    """Exposed seconds of one block's context-parallel exchange, one micro-batch, and what
    it is.

    Ring: each of the ``cp - 1`` transfers runs under the attention of the chunk at hand
    (a ``1 / cp`` share of the rank's attention), so only what outlasts it is exposed
    (Liu et al. 2023, sec. 3: the exchange hides when the block's compute outlasts its
    transfer; Megatron-Core and torch overlap them on separate streams); a full recompute
    runs the forward's exchange again. Ulysses' all-to-alls sit between the projections and
    attention, with nothing to hide under: exposed.
    """
    if s.cp == 1:
        return 0.0, ""
    crosses = crosses_domain(s)
    bw, name = link(s, crosses)
    full = s.mb.checkpointing is Checkpointing.FULL
    if s.mb.context_parallel_kind is ContextParallelKind.ULYSSES:
        fwd_b, bwd_b = ulysses_bytes(s)
        seconds = (fwd_b * (2 if full else 1) + bwd_b) / bw
        return seconds, f"CP={s.cp} Ulysses all-to-alls over {name}, exposed"
    a_fb, a_fwd, _src = attention(s)
    a_bwd = max(a_fb - a_fwd, 0.0)
    step = ring_step_bytes(s) / bw
    per_fwd = max(step - a_fwd / s.cp, 0.0)
    per_bwd = max(2 * step - a_bwd / s.cp, 0.0)
    exposed = (s.cp - 1) * (per_fwd * (2 if full else 1) + per_bwd)
    total = (s.cp - 1) * step * (4 if full else 3)
    hidden = 1.0 - exposed / total if total > 0 else 1.0
    return exposed, f"CP={s.cp} ring K/V exchange over {name}, {hidden:.0%} hidden under attention"


def context_terms(s: Setting, parts: dict[str, ComponentTime]) -> None:
    """Add one micro-batch's exposed context-parallel exchange on one stage to ``parts``."""
    seconds, detail = context_comm(s)
    if seconds > 0:
        parts["context_parallel_comm"] = ComponentTime(
            seconds=seconds * s.stage_layers, source=Source.ANALYTIC, detail=detail
        )
