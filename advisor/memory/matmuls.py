"""A transformer block's weight matmuls in forward order, and the share of their FLOPs that
torchtitan's op-level selective activation checkpointing recomputes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from advisor.memory.params import enum_value, spec_value
from advisor.model.spec import ModelSpec

#: ``(name, out_width, in_width, plain)``: one weight matmul of a block (see
#: :func:`block_matmuls_of`).
Matmul = tuple[str, int, int, bool]


def block_matmuls_of(spec: ModelSpec, d: Mapping[str, int]) -> list[Matmul]:
    """A dense block's weight matmuls in the order its forward runs them.

    Each entry is ``(name, out_width, in_width, plain)``: ``plain`` when the linear has no
    bias, so that ``aten.linear`` on a 3-D input dispatches to ``aten.mm`` (with a bias it
    is ``aten.addmm``), which is what torchtitan's op-level selective checkpointing counts.
    Order as the Hugging Face and torchtitan blocks call them: the attention projections
    (q, k, v; a fused qkv; MLA's q_a, q_b, kv_a, kv_b), the output projection, then the MLP
    (gate, up, down; a fused gate_up; up, down).
    """
    h, a, kv, hd, f = d["h"], d["a"], d["kv"], d["hd"], d["f"]
    qd, kd = a * hd, kv * hd
    qkv_plain = not spec.qkv_bias
    out: list[Matmul] = []
    if d["mla"]:
        qk = a * (d["dn"] + d["dr"])
        if d["rq"]:
            out += [("q_a", d["rq"], h, qkv_plain), ("q", qk, d["rq"], True)]
        else:
            out.append(("q", qk, h, True))
        out += [
            ("kv_a", d["rkv"] + d["dr"], h, qkv_plain),
            ("kv_b", a * (d["dn"] + d["dv"]), d["rkv"], True),
        ]
        qd = a * d["dv"]
    elif str(spec.family).lower() == "gpt2":
        # GPT-2's Conv1D is addmm (bias) whatever the flags say.
        out.append(("qkv", qd + 2 * kd, h, False))
    elif spec_value(spec, "fused_qkv", False):
        out.append(("qkv", qd + 2 * kd, h, qkv_plain))
    else:
        out += [("q", qd, h, qkv_plain), ("k", kd, h, qkv_plain), ("v", kd, h, qkv_plain)]
    gpt2 = str(spec.family).lower() == "gpt2"
    out.append(("o", h, qd, not spec.out_bias and not gpt2))
    plain = not spec.mlp_bias and not gpt2
    if spec_value(spec, "fused_gate_up", False):
        out += [("gate_up", 2 * f, h, plain), ("down", h, f, plain)]
    elif enum_value(spec.mlp) in ("gated-silu", "gated-gelu"):
        out += [("gate", f, h, plain), ("up", f, h, plain), ("down", h, f, plain)]
    else:
        out += [("up", f, h, plain), ("down", h, f, plain)]
    return out


def saved_matmuls_of(matmuls: Iterable[Matmul]) -> list[Matmul]:
    """The matmuls whose outputs torchtitan's op-level policy saves: every ``aten.mm`` but
    every second one (counted per block forward), never ``addmm``."""
    saved = []
    count = 0
    for mm in matmuls:
        if mm[3]:
            count += 1
            if count % 2:
                saved.append(mm)
    return saved


def recompute_share_of(
    spec: ModelSpec, d: Mapping[str, int], matmuls: Sequence[Matmul], saved: Sequence[Matmul]
) -> float:
    """The share of a block's weight-GEMM FLOPs that op-level selective AC recomputes.

    Every matmul whose output is not saved (each second ``aten.mm``, every ``addmm``) runs
    again in backward (torchtitan ``_apply_ac_to_transformer_block``). Dense blocks; an MoE
    block's experts are taken at the same share as its dense projections.

    Args:
        spec: the model's shapes.
        d: its dimensions (:func:`~advisor.memory.params.shape_of`).
        matmuls: its block's matmuls (:func:`block_matmuls_of`).
        saved: those whose outputs the policy saves (:func:`saved_matmuls_of`).

    Returns:
        Recomputed FLOPs / forward weight-GEMM FLOPs of one block, in [0, 1].
    """
    total = sum(o * i for _, o, i, _ in matmuls)
    kept = sum(o * i for _, o, i, _ in saved)
    if d["Lm"]:
        # MoE layers: attention as a dense block; the router, the routed experts (grouped
        # GEMMs, always recomputed) and the shared experts replace the dense MLP.
        mlp = {"gate", "up", "down", "gate_up"}
        attn = [m for m in matmuls if m[0] not in mlp]
        attn_total = sum(o * i for _, o, i, _ in attn)
        attn_kept = sum(o * i for n, o, i, _ in saved if n not in mlp)
        h, fe = d["h"], d["fe"]
        width = (3 if enum_value(spec.mlp) in ("gated-silu", "gated-gelu") else 2) * h * fe
        router = sum(1 for m in attn if m[3]) + 1
        moe_total = attn_total + d["E"] * h + (d["k"] + d["S"]) * width
        moe_kept = attn_kept + (d["E"] * h if router % 2 else 0)
        if d["S"]:
            shared = [h * fe * d["S"]] * (width // (h * fe) - 1) + [h * fe * d["S"]]
            moe_kept += sum(w for i, w in enumerate(shared) if (router + 1 + i) % 2)
        dense = d["L"] - d["Lm"]
        total = dense * total + d["Lm"] * moe_total
        kept = dense * kept + d["Lm"] * moe_kept
    return (total - kept) / total if total else 0.0
