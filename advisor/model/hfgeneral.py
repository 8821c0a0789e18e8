"""The general ``config.json`` path: a :class:`ModelSpec` from a model's parameter inventory.

For a ``model_type`` no built-in family reads, :mod:`advisor.model.hfmeta` builds the model from
its config on the meta device and records its parameters; :mod:`advisor.model.inventory` places
them by role. Here the spec's fields are read off the placed tensors (widths from the
shapes, biases and fused projections from which tensors exist, experts from the 3-D
expert tensors), not from config keys, so a renamed key cannot mislead them.

When those fields rebuild the model's tensors exactly (a Llama-like block: Gemma 1,
GPT-NeoX, a Qwen2-VL language tower, Llama 4's text tower) the spec is the plain
field spec, and the memory model's per-op activation accounting applies as verified for
the built-in families. Otherwise the spec also carries the inventory: parameter counts,
weights, gradients and optimizer states come from the real tensors, and the fields are a
representative block for activations, with what they leave out listed in
``inventory.approximated`` (T5's cross-attention, a Mamba mixer's scan, one shared norm).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from advisor.errors import UserError
from advisor.model.hf_config import hf_name, slug
from advisor.model.inventory import Inventory, InvGroup, RawModel, build_inventory, find, roles
from advisor.model.spec import (
    Arch,
    BlockNorms,
    Mlp,
    ModelSpec,
    Norm,
    Position,
    QkNorm,
    SsmShape,
)
from advisor.model.traits import FamilyTraits, family_traits

# NOTE: the sequence length assumed for a model whose config states no position limit
# (T5's relative buckets, Mamba's recurrence); say --seq-len to override it.
_NO_LIMIT = 2048
_HINT = "pass a Hugging Face config.json (or the model folder holding it)"


# What the representative fields leave out, by the roles that show it (the inventory still
# counts these tensors; their activations are what the fields do not describe).
_ROLE_NOTES = {
    "sinks": "attention sinks (one logit per head): counted in eager attention's softmax "
    "(s + 1 columns); the step time prices attention without them",
    "router_bias": "the router's bias: parameters counted",
    "embed_norm": "a LayerNorm on the embeddings: parameters counted, its activations not",
    "lm_head_bias": "the LM head's bias: parameters counted",
    "relpos": "relative position biases (T5 buckets): parameters counted, the bias added to "
    "the scores not",
    "ssm_in": "Mamba-2 mixer blocks: parameters and activations exact (transformers' chunked "
    "scan, or mamba_ssm's fused kernel under the fused stack); the step time prices a mixer "
    "as an attention block of its heads and widths",
    "cross_q": "decoder cross-attention (q/k/v/o over the encoder output): parameters "
    "counted, activations not",
}


def _attr_int(raw: RawModel, *keys: str) -> int | None:
    for key in keys:
        value = raw.attrs.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _dominant(inv: Inventory) -> InvGroup:
    with_attn = [g for g in inv.groups if find(g, "q") or find(g, "qkv") or find(g, "mla_kv_b")]
    return max(with_attn or list(inv.groups), key=lambda g: g.count)


def _mla_shape(group: InvGroup, heads: int | None) -> dict[str, int | None] | None:
    """MLA's ranks and head widths from its tensors (DeepSeek-V2/V3 naming): kv_a is
    (kv_lora_rank + rope, h), kv_b (heads x (nope + v), kv_lora_rank), q_b or q
    (heads x (nope + rope), .), o (h, heads x v)."""
    kv_a, kv_b = find(group, "mla_kv_a"), find(group, "mla_kv_b")
    q = find(group, "mla_q_b") or find(group, "q")
    o, q_a = find(group, "o"), find(group, "mla_q_a")
    if kv_a is None or kv_b is None or q is None or o is None or not heads:
        return None
    rank = kv_b.shape[1]
    rope = kv_a.shape[0] - rank
    v = o.shape[1] // heads
    nope = q.shape[0] // heads - rope
    if min(rope, v, nope) <= 0:
        return None
    return {
        "q_lora_rank": q_a.shape[0] if q_a is not None else None,
        "kv_lora_rank": rank,
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": v,
    }


def _qk_width(mla: dict[str, int | None]) -> int:
    nope, rope = mla["qk_nope_head_dim"], mla["qk_rope_head_dim"]
    assert nope is not None and rope is not None
    return nope + rope


def _mlp_kind(raw: RawModel, gated: bool) -> Mlp:
    act = str(raw.attrs.get("act") or "").lower()
    if "relu" in act and not gated:
        return Mlp.RELU
    if gated:
        return Mlp.GATED_GELU if "gelu" in act else Mlp.GATED_SILU
    return Mlp.GELU


def spec_fields(raw: RawModel, inv: Inventory) -> tuple[dict[str, Any], list[str]]:
    """The representative ModelSpec fields of an inventory, and what they approximate.

    Raises:
        UserError: when the widths do not split into the config's heads.
    """
    notes: list[str] = []
    embed = next(t for t in inv.outside if t.role == "embed")
    vocab, h = embed.shape
    layers = sum(g.count for g in inv.groups)
    dom = _dominant(inv)
    heads, kv, head_dim, mla = _attention_shape(raw, dom, h, notes)
    gated_roles = ("gate", "gate_up", "expert_gate", "expert_gate_up", "shared_gate")
    all_roles: Counter[str] = Counter()
    for g in inv.groups:
        all_roles.update(roles(g))
    gated = any(all_roles[r] for r in gated_roles)
    experts, moe_width, shared = _experts(inv, h, notes)
    ffn = _ffn_width(inv, h, moe_width, notes)
    positions = _positions(raw, inv, notes)
    norms = [t for t in dom.tensors if t.role == "norm"]
    if mla is not None:
        notes.append("multi-head latent attention read from the latent projections' shapes")
    fields: dict[str, Any] = dict(
        arch=Arch.DECODER,
        hidden_size=h,
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=positions or _NO_LIMIT,
        mlp=_mlp_kind(raw, gated),
        **_norm_bias_fields(raw, inv, dom, head_dim, experts),
        fused_qkv=find(dom, "qkv") is not None,
        fused_gate_up=bool(all_roles["gate_up"]),
    )
    if mla is not None:
        fields["mla"] = mla
    ssm = _ssm_shape(raw, inv)
    if ssm is not None:
        fields["ssm"] = ssm
    factor = raw.attrs.get("partial_rotary_factor")
    if isinstance(factor, float) and 0 < factor < 1 and raw.rotary:
        fields["rotary_dim"] = int(head_dim * factor)
    if experts > 1:
        fields.update(_moe_fields(raw, inv, experts, moe_width, shared))
    notes += _closing_notes(raw, inv, layers, len(norms))
    return fields, notes


def _ssm_shape(raw: RawModel, inv: Inventory) -> SsmShape | None:
    """The Mamba-2 mixer's shape: heads, inner width, conv window and B/C width from its
    tensors; the state size (which splits B/C into groups) and the chunk from the config.

    Raises:
        UserError: when the config's state size does not split the mixer's B/C width.
    """
    group = next((g for g in inv.groups if find(g, "ssm_in") is not None), None)
    if group is None:
        return None
    a, conv, out = find(group, "ssm_a"), find(group, "ssm_conv"), find(group, "ssm_out")
    if a is None or conv is None or out is None:
        return None
    heads, inner = a.shape[0], out.shape[1]
    bc = (conv.shape[0] - inner) // 2  # n_groups x state_size, for B and for C
    state = _attr_int(raw, "state_size", "ssm_state_size")
    chunk = _attr_int(raw, "chunk_size")
    if state is None or chunk is None or bc % state or inner % heads:
        raise UserError(
            f"{raw.model_type}: the Mamba mixer's widths (inner {inner}, B/C {bc}) do not "
            f"split into {heads} heads and state size {state}",
            _HINT,
        )
    return SsmShape(
        num_heads=heads,
        head_dim=inner // heads,
        state_size=state,
        n_groups=bc // state,
        conv_kernel=conv.shape[-1],
        chunk_size=chunk,
    )


def _attention_shape(
    raw: RawModel, dom: InvGroup, h: int, notes: list[str]
) -> tuple[int, int, int, dict[str, int | None] | None]:
    """Heads, key-value heads, head width and MLA's shape (or None) of the dominant block.

    Raises:
        UserError: when the widths do not split into the config's heads.
    """
    q, k, qkv = find(dom, "q"), find(dom, "k"), find(dom, "qkv")
    heads = _attr_int(raw, "num_attention_heads", "num_heads")
    head_dim = _attr_int(raw, "head_dim")
    mla = _mla_shape(dom, heads)
    if mla is not None and heads is not None:
        head_dim, kv = _qk_width(mla), heads
    elif q is None and qkv is None:
        # No attention at all (Mamba-2): the mixer's heads stand for the attention heads.
        heads = _attr_int(raw, "num_heads", "mamba_num_heads") or heads or 1
        head_dim = head_dim or max(1, h // heads)
        kv = heads
        notes.append(
            "no attention: the representative heads and widths are the state-space mixer's"
        )
    elif heads is None:
        raise UserError(f"{raw.model_type}: the config states no attention head count", _HINT)
    else:
        if q is not None and k is not None:
            head_dim = head_dim if head_dim and q.shape[0] % head_dim == 0 else q.shape[0] // heads
            kv = max(1, k.shape[0] // head_dim)
            if q.shape[0] != heads * head_dim:
                raise UserError(
                    f"{raw.model_type}: q width {q.shape[0]} is not {heads} heads x {head_dim}",
                    _HINT,
                )
        else:
            assert qkv is not None
            head_dim = head_dim or h // heads
            kv = max(1, (qkv.shape[0] // head_dim - heads) // 2)
    return heads, kv, head_dim, mla


def _experts(inv: Inventory, h: int, notes: list[str]) -> tuple[int, int | None, int]:
    """The routed experts' count and width, and the shared experts in routed widths."""
    expert_groups = [g for g in inv.groups if any(t.role.startswith("expert_") for t in g.tensors)]
    experts = 1
    moe_width: int | None = None
    shared = 0
    if expert_groups:
        eg = max(expert_groups, key=lambda g: g.count)
        stacked = [t for t in eg.tensors if t.role.startswith("expert_") and len(t.shape) == 3]
        if stacked:  # transformers 5: every expert in one (E, ., .) tensor
            experts = stacked[0].shape[0]
        else:  # a ModuleList of experts: experts.<i>.<projection>
            found = {
                m.group(1) for t in eg.tensors if (m := re.search(r"experts\.(\d+)\.", t.name))
            }
            experts = max(len(found), 1)
        down = find(eg, "expert_down")
        if down is not None:
            inner = down.shape[-2:]
            moe_width = inner[0] if inner[1] == h else inner[1]
        sh = find(eg, "shared_down")
        if sh is not None and moe_width:
            width = sh.shape[1]
            shared = width // moe_width if width % moe_width == 0 else 0
            if not shared:
                notes.append(
                    f"shared expert width {width} is not a multiple of the routed "
                    f"width {moe_width}: its activations are not modelled"
                )
    return experts, moe_width, shared


def _ffn_width(inv: Inventory, h: int, moe_width: int | None, notes: list[str]) -> int:
    """The MLP's intermediate width: the dense up projection's, else the experts', else the
    mixer's inner width."""
    up = next((find(g, r) for g in inv.groups for r in ("up", "gate_up") if find(g, r)), None)
    if up is not None:
        return up.shape[0] // (2 if up.role == "gate_up" else 1)
    if moe_width is not None:
        return moe_width
    ssm = next((find(g, "ssm_out") for g in inv.groups if find(g, "ssm_out")), None)
    notes.append("no MLP: the intermediate width is the mixer's inner width")
    return ssm.shape[1] if ssm is not None else 4 * h


def _positions(raw: RawModel, inv: Inventory, notes: list[str]) -> int | None:
    """The position limit the config states, else the learned position table's length."""
    positions = _attr_int(raw, "max_position_embeddings", "n_positions") or next(
        (t.shape[0] for t in inv.outside if t.role == "position"), None
    )
    if positions is None:
        notes.append(
            f"the config states no position limit (relative positions or a recurrent "
            f"mixer): the default sequence length is {_NO_LIMIT}, an assumption"
        )
    return positions


def _norm_bias_fields(
    raw: RawModel, inv: Inventory, dom: InvGroup, head_dim: int, experts: int
) -> dict[str, Any]:
    """Norm kind and placement, positions, biases, a tied head and q/k norms, in field order."""
    norms = [t for t in dom.tensors if t.role == "norm"]
    norm_bias = any(t.role == "norm_bias" for g in inv.groups for t in g.tensors)
    rope = raw.rotary
    position = (
        Position.LEARNED
        if any(t.role == "position" for t in inv.outside)
        else (Position.ROPE if rope else Position.NONE)
    )
    bias = {
        r: any(t.role == r for g in inv.groups for t in g.tensors)
        for r in ("q_bias", "qkv_bias", "o_bias", "up_bias", "down_bias", "gate_up_bias")
    }
    qk = [t for t in dom.tensors if t.role == "qk_norm"]
    qk_norm = QkNorm.NONE
    if qk:
        qk_norm = QkNorm.HEAD if qk[0].shape[0] == head_dim else QkNorm.FULL
    return dict(
        norm=Norm.LAYERNORM if norm_bias else Norm.RMSNORM,
        position=position,
        qkv_bias=bias["q_bias"] or bias["qkv_bias"],
        out_bias=bias["o_bias"],
        mlp_bias=(bias["up_bias"] or bias["down_bias"] or bias["gate_up_bias"]) and experts == 1,
        tie_word_embeddings=not any(t.role == "lm_head" for t in inv.outside),
        qk_norm=qk_norm,
        block_norms=_placement(len(norms), _one_norm_for_two(dom, len(norms))),
        parallel_residual=_parallel(raw, _one_norm_for_two(dom, len(norms))),
    )


def _one_norm_for_two(dom: InvGroup, n_norms: int) -> bool:
    """Whether a block holds attention and an MLP behind a single norm, which both must then
    read side by side (Phi-1/2, GPT-J, Falcon-7B). A hybrid's one-mixer blocks have one norm
    for their one mixer (Nemotron-H)."""
    r = roles(dom)
    attention = any(r[n] for n in ("q", "qkv", "mla_q_a", "mla_q_b"))
    mlp = any(r[n] for n in ("up", "gate_up", "expert_up", "expert_gate_up"))
    return n_norms == 1 and attention and mlp


def _placement(n_norms: int, single: bool) -> BlockNorms:
    """The norm placement from the count of a block's norm weights."""
    if n_norms == 4:
        return BlockNorms.SANDWICH
    return BlockNorms.SINGLE if single else BlockNorms.PRE


def _parallel(raw: RawModel, single: bool) -> bool:
    """Whether attention and the MLP read the same input side by side: the config says so
    (GPT-NeoX ``use_parallel_residual``, Falcon ``parallel_attn``), or one norm feeds both."""
    a = raw.attrs
    stated = a.get("use_parallel_residual") is True or a.get("parallel_attn") is True
    return stated or single


def _moe_fields(
    raw: RawModel, inv: Inventory, experts: int, moe_width: int | None, shared: int
) -> dict[str, Any]:
    """The mixture-of-experts fields, the dense layers among the blocks included."""
    moe = [any(t.role.startswith("expert_") for t in g.tensors) for g in inv.groups]
    dense = [i for i, gi in enumerate(inv.layout) if not moe[gi]]
    return dict(
        num_experts=experts,
        experts_per_token=min(experts, _attr_int(raw, "experts_per_token") or 1),
        moe_intermediate_size=moe_width,
        shared_experts=shared,
        dense_layers=tuple(dense),
    )


def _closing_notes(raw: RawModel, inv: Inventory, layers: int, n_norms: int) -> list[str]:
    """What the fields leave out: roles they cannot show, an encoder-decoder, odd norm counts."""
    notes: list[str] = []
    present = {t.role for g in inv.groups for t in g.tensors} | {t.role for t in inv.outside}
    notes += [text for role, text in _ROLE_NOTES.items() if role in present]
    if raw.encoder_decoder:
        notes.append(
            "encoder-decoder: the encoder and decoder blocks are one stack of "
            f"{layers} blocks for activations; cross-attention activations are not modelled"
        )
    if n_norms not in (1, 2, 4):
        notes.append(f"{n_norms} norm(s) per block: activations count the two of a pre-norm block")
    return notes


def behaviour_notes(raw: RawModel) -> list[str]:
    """What the config says the blocks do that no tensor shows (activations not modelled)."""
    a = raw.attrs
    out = []
    if isinstance(a.get("attention_chunk_size"), int):
        out.append("chunked local attention (Llama 4): activations as full causal attention")
    return out


def spec_from_raw(raw: RawModel, cfg: dict[str, Any], p: Path) -> ModelSpec:
    """The spec of a model read on the meta device (see the module docstring).

    Args:
        raw: what :mod:`advisor.model.hfmeta` read off the model.
        cfg: the parsed config.json (its name).
        p: the file it came from.

    Returns:
        The plain field spec when its fields rebuild every tensor exactly, else the field
        spec carrying the exact inventory.

    Raises:
        UserError: for a module no role fits (one line naming it), or widths that do not
            split into the config's heads.
    """
    try:
        inv = build_inventory(raw)
        fields, notes = spec_fields(raw, inv)
    except UserError as exc:
        raise type(exc)(f"{p}: {exc.message}", exc.hint) from None
    name = hf_name(cfg, p)
    family = "".join(ch for ch in raw.model_type.lower() if ch.isalnum()) or "hf"
    fields.update(
        id=slug(name, raw.model_type),
        name=name or raw.model_type,
        family=family,
        source=p.resolve().as_uri(),
        traits=_traits(raw, inv, family, fields["arch"]),
    )
    try:
        plain = ModelSpec.model_validate(fields)
    except ValidationError as exc:
        errs = "; ".join(e["msg"] for e in exc.errors())
        raise UserError(
            f"{p}: {raw.model_type}: the model's shape cannot be read: {errs}", _HINT
        ) from exc
    if _same_tensors(plain, inv):
        return plain
    approximated = tuple(notes) or ("the block's tensors differ from the representative fields",)
    approximated = tuple(dict.fromkeys(approximated))
    full = inv.model_copy(update={"approximated": approximated})
    return ModelSpec.model_validate({**fields, "inventory": full})


# transformers' activations written out in Python, op by op (activations.py
# NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))), which keep
# the intermediates GPT-2's MLP keeps; the others are one torch op saving its input.
_PYTHON_GELU = frozenset({"gelu_new"})


def _traits(raw: RawModel, inv: Inventory, family: str, arch: Arch) -> FamilyTraits:
    """The family's traits, with what the config states on top: a GELU written out in
    Python, a weightless q/k norm."""
    traits = family_traits(family, arch)
    update: dict[str, bool] = {}
    act = str(raw.attrs.get("act") or "").lower()
    if act in _PYTHON_GELU and not traits.python_gelu:
        update["python_gelu"] = True
    if act == "relu2":
        update["squared_relu"] = True
    if raw.attrs.get("use_qk_norm") is True and not any(
        t.role == "qk_norm" for g in inv.groups for t in g.tensors
    ):
        update["qk_l2_norm"] = True  # Llama 4: a norm with no weight, so no tensor shows it
    return traits.model_copy(update=update) if update else traits


def _same_tensors(spec: ModelSpec, inv: Inventory) -> bool:
    """Whether the fields rebuild the inventory: the same block kinds and counts, the same
    tensor sizes in each (the routed experts as one total: transformers 4 kept a list of
    2-D experts, 5 one 3-D tensor per projection), and the same tensors outside."""

    def sizes(tensors: list[tuple[bool, tuple[int, ...]]]) -> frozenset[tuple[int, int]]:
        counts = Counter(math.prod(s) for routed, s in tensors if not routed)
        routed_total = sum(math.prod(s) for routed, s in tensors if routed)
        return frozenset({**counts, -1: routed_total}.items())

    mine = Counter(
        (n, sizes([(".experts." in f".{name}", s) for name, s in g]))
        for n, g in spec.layer_groups()
    )
    theirs = Counter(
        (g.count, sizes([(t.role.startswith("expert_"), t.shape) for t in g.tensors]))
        for g in inv.groups
    )
    outside = sizes([(False, s) for _, s in spec.embedding_shapes()]) == sizes(
        [(False, t.shape) for t in inv.outside]
    )
    return outside and mine == theirs
