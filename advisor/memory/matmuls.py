"""A transformer block's weight matmuls in forward order, and the share of their FLOPs that
torchtitan's op-level selective activation checkpointing recomputes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from advisor.model.blocks import Kind
from advisor.model.spec import ModelSpec


class Matmul(NamedTuple):
    """One weight matmul of a block (see :func:`block_matmuls_of`)."""

    name: str  # the matrix's role (q, k, v, qkv, q_a, kv_a, kv_b, o, gate, up, down, gate_up)
    out: int
    inp: int
    plain: bool  # aten.mm (no bias), not aten.addmm
    row: bool  # row-parallel: under tensor parallelism its output is a full-width partial sum


def block_matmuls_of(spec: ModelSpec) -> list[Matmul]:
    """A dense block's weight matmuls in the order its forward runs them, from the block
    inventory (:attr:`ModelSpec.block <advisor.model.spec.ModelSpec.block>`).

    ``plain`` when the linear has no bias, so that ``aten.linear`` on a 3-D input dispatches
    to ``aten.mm`` (with a bias, or GPT-2's Conv1D, it is ``aten.addmm``), which is what
    torchtitan's op-level selective checkpointing counts. Order as the Hugging Face and
    torchtitan blocks call them: the attention projections (q, k, v; a fused qkv; MLA's
    q_a, q_b (named q), kv_a, kv_b), the output projection, then the MLP (gate, up, down; a
    fused gate_up; up, down).
    """
    out: list[Matmul] = []
    for t in spec.block.matmuls():
        rows, cols = t.matrix or (0, 0)
        out.append(Matmul(t.role, rows, cols, not t.addmm, t.row))
    return out


def saved_matmuls_of(matmuls: Iterable[Matmul]) -> list[Matmul]:
    """The matmuls whose outputs torchtitan's op-level policy saves: every ``aten.mm`` but
    every second one (counted per block forward), never ``addmm``."""
    saved = []
    count = 0
    for mm in matmuls:
        if mm.plain:
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
    total = sum(m.out * m.inp for m in matmuls)
    kept = sum(m.out * m.inp for m in saved)
    moe = spec.block.moe
    if d["Lm"] and moe is not None:
        # MoE layers: attention as a dense block; the router, the routed experts (grouped
        # GEMMs, always recomputed) and the shared experts replace the dense MLP.
        mlp = {"gate", "up", "down", "gate_up"}
        attn = [m for m in matmuls if m.name not in mlp]
        attn_total = sum(m.out * m.inp for m in attn)
        attn_kept = sum(m.out * m.inp for m in saved if m.name not in mlp)
        router = sum(_size(t.matrix) for t in moe if t.role == "router")
        routed = sum(_size(t.matrix) for t in moe if t.kind is Kind.ROUTED)
        shared = [_size(t.matrix) for t in moe if t.kind is Kind.SHARED and not t.bias]
        # the router's matmul is the first plain mm after the attention's
        router_at = sum(1 for m in attn if m.plain) + 1
        moe_total = attn_total + router + d["k"] * routed + sum(shared)
        moe_kept = attn_kept + (router if router_at % 2 else 0)
        moe_kept += sum(w for i, w in enumerate(shared) if (router_at + 1 + i) % 2)
        dense = d["L"] - d["Lm"]
        total = dense * total + d["Lm"] * moe_total
        kept = dense * kept + d["Lm"] * moe_kept
    return (total - kept) / total if total else 0.0


def _size(matrix: tuple[int, int] | None) -> int:
    return matrix[0] * matrix[1] if matrix is not None else 0
