"""One transformer block's tensors, listed once: the block inventory.

Every consumer of a block's tensors derives its list from here: the exact parameter counts
(:meth:`advisor.model.spec.ModelSpec.layer_groups`), the memory model's parameter tensors
and their tensor-parallel split (:mod:`advisor.memory.params`,
:mod:`advisor.memory.sharding`), the block's matmuls in forward order and op-level
selective checkpointing's plain-``mm`` share (:mod:`advisor.memory.matmuls`), and the
cost model's weight GEMMs (:mod:`advisor.cost.shape`).

Each :class:`BlockTensor` is one parameter tensor as the reference implementation stores
it (Hugging Face name and shape), with its role (the short name the memory model and
LoRA use: ``q``, ``k``, ``v``, ``o``, ``qkv``, ``gate``, ``up``, ``down``, ``gate_up``,
``q_a``, ``kv_a``, ``kv_b``, ``router``, ``shared_gate`` ..., ``norm``, ``q_norm`` ...;
MLA's ``q_b_proj`` is ``q``: it makes the queries), whether it is a bias, whether tensor
parallelism splits it along its input (row-parallel) or output, whether it belongs to the
routed experts, the shared experts or the dense block, and whether its linear runs as
``addmm`` (a bias, or GPT-2's Conv1D). Matrices are listed in the order the forward runs
them.

Two sources fill it. A spec built from shape fields gets its blocks from those fields
(:func:`field_block`, as the reference implementations build them; checked against real
``transformers`` models in ``tests/model/test_model_families.py``). A spec from the general
Hugging Face path carries the real module's parameter inventory
(:mod:`advisor.model.inventory`); its exact blocks are that inventory's groups, placed by
:func:`inventory_groups` (the adapter), while its fields still give one representative
dense block (:attr:`BlockInventory.dense`) for the matmul list and activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from advisor.model.counts import ShapeSource, required
from advisor.model.inventory import Inventory
from advisor.model.shape import BlockNorms, Norm, QkNorm, Shape
from advisor.model.traits import ModuleLayout


class Kind(str, Enum):
    """Which part of a block a tensor belongs to."""

    DENSE = "dense"  # attention, norms, a dense MLP, the router
    ROUTED = "routed"  # the routed experts (expert parallelism splits them)
    SHARED = "shared"  # DeepSeek's shared experts (replicated, every token)


#: Roles whose matrices tensor parallelism splits along their input (row-parallel): the
#: attention output and the MLP's down projections; the others along their output
#: (column-parallel) (Shoeybi et al. 2019, sec. 3). The general path's state-space mixer
#: output (``down_ssm``) and cross-attention output (``down_cross``) read an inner width
#: too.
ROW_PARALLEL_ROLES = frozenset({"o", "down", "shared_down", "down_ssm", "down_cross"})


@dataclass(frozen=True, slots=True)
class BlockTensor:
    """One parameter tensor of one block (see the module docstring).

    Attributes:
        role: the short name (``q``, ``gate_up``, ``norm``, ``router`` ...); a bias has its
            matrix's role.
        name: the reference implementation's parameter name inside the block.
        shape: the shape as stored: ``nn.Linear`` ``(out, in)``, GPT-2's Conv1D
            ``(in, out)``, routed experts of transformers 5 ``(experts, out, in)``.
        kind: dense block, routed experts or shared experts.
        bias: a bias vector.
        row: tensor parallelism splits it along its input (row-parallel).
        addmm: its linear adds a bias in the matmul (``aten.addmm``, not ``aten.mm``).
        stacked: one tensor holds every expert, first dimension the experts.
        conv1d: stored ``(in, out)`` (GPT-2's Conv1D).
    """

    role: str
    name: str
    shape: Shape
    kind: Kind = Kind.DENSE
    bias: bool = False
    row: bool = False
    addmm: bool = False
    stacked: bool = False
    conv1d: bool = False

    @property
    def matrix(self) -> tuple[int, int] | None:
        """``(out, in)`` of the weight matrix (one expert's when stacked); None for a
        vector or a bias."""
        s = self.shape[1:] if self.stacked else self.shape
        if self.bias or len(s) != 2:
            return None
        return (s[1], s[0]) if self.conv1d else (s[0], s[1])

    @property
    def gemm(self) -> tuple[int, int] | None:
        """``(n, k)`` of the weight GEMM the cost model times: every tensor of two or more
        dimensions as stored, a routed expert's without the expert dimension, trailing
        dimensions folded into ``k``; None for a vector."""
        if len(self.shape) < 2:
            return None
        s = self.shape[1:] if self.kind is Kind.ROUTED else self.shape
        if self.conv1d and len(s) == 2:
            return s[1], s[0]
        return s[0], math.prod(s[1:])


@dataclass(frozen=True, slots=True)
class BlockGroup:
    """One kind of block and how many times the stack repeats it."""

    count: int
    tensors: tuple[BlockTensor, ...]


@dataclass(frozen=True, slots=True)
class BlockInventory:
    """The blocks of one transformer (see the module docstring).

    Attributes:
        groups: the distinct kinds of block with their counts, every parameter tensor
            exact (a dense model: one group; DeepSeek-V3: 3 dense, 58 MoE).
        dense: one dense block as the shape fields describe it, also for an MoE model
            whose blocks are all MoE (its MLP is ``intermediate_size`` wide).
        moe: one MoE block as the fields describe it, for an MoE model.
    """

    groups: tuple[BlockGroup, ...]
    dense: tuple[BlockTensor, ...]
    moe: tuple[BlockTensor, ...] | None

    @property
    def common(self) -> BlockGroup:
        """The most frequent kind of block (the first of equals)."""
        return max(self.groups, key=lambda g: g.count)

    def matmuls(self) -> list[BlockTensor]:
        """The dense block's weight matrices in the order the forward runs them."""
        return [t for t in self.dense if t.matrix is not None]


def block_inventory(
    spec: ShapeSource, layers: int, moe_layers: int, inventory: Inventory | None = None
) -> BlockInventory:
    """The :class:`BlockInventory` of a transformer spec with ``layers`` blocks, of which
    ``moe_layers`` have an MoE MLP; ``inventory``: the real module's tensors (general path)."""
    dense = field_block(spec, moe=False)
    moe = field_block(spec, moe=True) if moe_layers else None
    if inventory is not None:
        return BlockInventory(inventory_groups(inventory, spec.traits.conv1d), dense, moe)
    groups: list[BlockGroup] = []
    if layers - moe_layers:
        groups.append(BlockGroup(layers - moe_layers, dense))
    if moe is not None:
        groups.append(BlockGroup(moe_layers, moe))
    return BlockInventory(tuple(groups), dense, moe)


class _Builder:
    """Collects one block's tensors in the reference implementation's order."""

    def __init__(self, spec: ShapeSource) -> None:
        self.spec = spec
        self.out: list[BlockTensor] = []

    def norm(self, name: str, role: str = "norm", width: int | None = None) -> None:
        n = width if width is not None else required(self.spec.hidden_size)
        self.out.append(BlockTensor(role, f"{name}.weight", (n,)))
        if self.spec.norm is Norm.LAYERNORM and role == "norm":
            self.out.append(BlockTensor(role, f"{name}.bias", (n,), bias=True))

    def linear(
        self,
        role: str,
        name: str,
        out_f: int,
        in_f: int,
        bias: bool,
        conv1d: bool = False,
        kind: Kind = Kind.DENSE,
    ) -> None:
        # NOTE: GPT-2 stores its projections as Conv1D with the weight transposed: (in, out);
        # a Conv1D always adds its bias in the matmul (addmm), whatever the bias flags say.
        shape = (in_f, out_f) if conv1d else (out_f, in_f)
        row, addmm = role in ROW_PARALLEL_ROLES, bias or conv1d
        self.out.append(
            BlockTensor(role, f"{name}.weight", shape, kind, False, row, addmm, False, conv1d)
        )
        if bias:
            self.out.append(BlockTensor(role, f"{name}.bias", (out_f,), kind, bias=True))


def field_block(spec: ShapeSource, moe: bool = False) -> tuple[BlockTensor, ...]:
    """One block's tensors as the reference implementation builds them from the fields."""
    h, heads = required(spec.hidden_size), required(spec.num_attention_heads)
    kv, hd = required(spec.num_key_value_heads), required(spec.head_dim)
    q_out, kv_out = heads * hd, kv * hd
    style = spec.traits.layout
    b = _Builder(spec)
    conv1d = False
    if style is ModuleLayout.GPT2:
        conv1d = spec.traits.conv1d
        b.norm("ln_1")
        b.linear("qkv", "attn.c_attn", q_out + 2 * kv_out, h, spec.qkv_bias, conv1d)
        b.linear("o", "attn.c_proj", h, q_out, spec.out_bias, conv1d)
        b.norm("ln_2")
        mlp_names = ("mlp.c_fc", "mlp.c_proj", "mlp.c_gate")
    elif style is ModuleLayout.BERT:
        b.linear("q", "attention.self.query", q_out, h, spec.qkv_bias)
        b.linear("k", "attention.self.key", kv_out, h, spec.qkv_bias)
        b.linear("v", "attention.self.value", kv_out, h, spec.qkv_bias)
        b.linear("o", "attention.output.dense", h, q_out, spec.out_bias)
        b.norm("attention.output.LayerNorm")
        mlp_names = ("intermediate.dense", "output.dense", "intermediate.gate")
    elif style is ModuleLayout.OPT:
        b.linear("q", "q_proj", q_out, h, spec.qkv_bias)
        b.linear("k", "k_proj", kv_out, h, spec.qkv_bias)
        b.linear("v", "v_proj", kv_out, h, spec.qkv_bias)
        b.linear("o", "out_proj", h, q_out, spec.out_bias)
        b.norm("self_attn_layer_norm")
        b.norm("final_layer_norm")
        mlp_names = ("fc1", "fc2", "fc_gate")
    else:
        _attention(b)
        norms = {
            BlockNorms.PRE: ("input_layernorm", "post_attention_layernorm"),
            BlockNorms.SINGLE: ("input_layernorm",),
            BlockNorms.POST: ("post_attention_layernorm", "post_feedforward_layernorm"),
            BlockNorms.SANDWICH: (
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ),
        }[spec.block_norms]
        for name in norms:
            b.norm(name)
        mlp_names = ("mlp.up_proj", "mlp.down_proj", "mlp.gate_proj")
    if moe:
        _moe(b)
    elif spec.fused_gate_up:
        # Phi-3: gate and up in one matrix, split after the matmul.
        ffn = required(spec.intermediate_size)
        b.linear("gate_up", "mlp.gate_up_proj", 2 * ffn, h, spec.mlp_bias)
        b.linear("down", "mlp.down_proj", h, ffn, spec.mlp_bias)
    else:
        ffn = required(spec.intermediate_size)
        up, down, gate = mlp_names
        if spec.gated_mlp:
            b.linear("gate", gate, ffn, h, spec.mlp_bias, conv1d)
        b.linear("up", up, ffn, h, spec.mlp_bias, conv1d)
        b.linear("down", down, h, ffn, spec.mlp_bias, conv1d)
    if style is ModuleLayout.BERT:
        b.norm("output.LayerNorm")
    return tuple(b.out)


def _attention(b: _Builder) -> None:
    """Attention of a Llama-style block: q/k/v/o, fused qkv (Phi-3), q/k norms, or MLA."""
    spec = b.spec
    h, heads = required(spec.hidden_size), required(spec.num_attention_heads)
    kv, hd = required(spec.num_key_value_heads), required(spec.head_dim)
    q_out, kv_out = heads * hd, kv * hd
    mla = spec.mla
    if mla is not None:
        # DeepSeek-V2/V3 MLA as transformers' DeepseekV3Attention builds it; attention_bias
        # puts biases on q_a_proj, kv_a_proj_with_mqa and o_proj.
        qk = heads * mla.qk_head_dim
        if mla.q_lora_rank is None:
            b.linear("q", "self_attn.q_proj", qk, h, False)
        else:
            b.linear("q_a", "self_attn.q_a_proj", mla.q_lora_rank, h, spec.qkv_bias)
            b.norm("self_attn.q_a_layernorm", "q_a_norm", mla.q_lora_rank)
            b.linear("q", "self_attn.q_b_proj", qk, mla.q_lora_rank, False)
        kv_a = mla.kv_lora_rank + mla.qk_rope_head_dim
        b.linear("kv_a", "self_attn.kv_a_proj_with_mqa", kv_a, h, spec.qkv_bias)
        b.norm("self_attn.kv_a_layernorm", "kv_a_norm", mla.kv_lora_rank)
        kv_b = heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        b.linear("kv_b", "self_attn.kv_b_proj", kv_b, mla.kv_lora_rank, False)
        b.linear("o", "self_attn.o_proj", h, heads * mla.v_head_dim, spec.out_bias)
        return
    if spec.fused_qkv:
        b.linear("qkv", "self_attn.qkv_proj", q_out + 2 * kv_out, h, spec.qkv_bias)
    else:
        b.linear("q", "self_attn.q_proj", q_out, h, spec.qkv_bias)
        b.linear("k", "self_attn.k_proj", kv_out, h, spec.qkv_bias)
        b.linear("v", "self_attn.v_proj", kv_out, h, spec.qkv_bias)
    b.linear("o", "self_attn.o_proj", h, q_out, spec.out_bias)
    if spec.qk_norm is QkNorm.HEAD:
        b.norm("self_attn.q_norm", "q_norm", hd)
        b.norm("self_attn.k_norm", "k_norm", hd)
    elif spec.qk_norm is QkNorm.FULL:
        b.norm("self_attn.q_norm", "q_norm", q_out)
        b.norm("self_attn.k_norm", "k_norm", kv_out)


def _moe(b: _Builder) -> None:
    """A sparse MoE MLP as transformers 5 stores it: a bias-free router, the routed experts in
    3-D tensors, and (DeepSeek) the shared experts as one dense MLP of their summed width."""
    spec = b.spec
    h, experts, f = required(spec.hidden_size), spec.num_experts, spec.expert_intermediate_size
    b.linear("router", "mlp.gate", experts, h, False)
    routed = [("gate_up", 2 * f, h)] if spec.gated_mlp else [("up", f, h)]
    for role, out_f, in_f in [*routed, ("down", h, f)]:
        b.out.append(
            BlockTensor(
                role,
                f"mlp.experts.{role}_proj",
                (experts, out_f, in_f),
                Kind.ROUTED,
                row=role in ROW_PARALLEL_ROLES,
                stacked=True,
            )
        )
    if spec.shared_experts:
        width = f * spec.shared_experts
        shared = "mlp.shared_experts."
        if spec.gated_mlp:
            b.linear("shared_gate", shared + "gate_proj", width, h, False, kind=Kind.SHARED)
        b.linear("shared_up", shared + "up_proj", width, h, False, kind=Kind.SHARED)
        b.linear("shared_down", shared + "down_proj", h, width, False, kind=Kind.SHARED)


def _inventory_role(role: str) -> str:
    """The short name of a general-path inventory role (:mod:`advisor.model.inventory`)."""
    base = role.removeprefix("expert_").removesuffix("_bias")
    if base.startswith("shared_"):
        return base
    return {
        "mla_q_a": "q_a",
        "mla_q_b": "q",
        "mla_kv_a": "kv_a",
        "mla_kv_b": "kv_b",
        "mla_q_a_norm": "q_a_norm",
        "mla_kv_a_norm": "kv_a_norm",
        "ssm_out": "down_ssm",  # reads the mixer's inner width (row-parallel, see above)
        "cross_o": "down_cross",
    }.get(base, base)


def inventory_groups(inv: Inventory, conv1d: bool) -> tuple[BlockGroup, ...]:
    """The adapter: a general-path inventory's groups as block tensors.

    Roles become the short names above; a tensor inside the routed experts is ``ROUTED``
    (``stacked`` when one tensor holds every expert, named by its projection), inside the
    shared experts ``SHARED``; ``addmm`` is not read on this path (its matmul list comes
    from the representative fields).
    """
    groups = []
    for g in inv.groups:
        tensors = []
        for t in g.tensors:
            routed = t.role.startswith("expert_")
            role = _inventory_role(t.role)
            bias = t.role.endswith("_bias")
            leaf = t.name.rsplit(".", 1)[-1]
            tensors.append(
                BlockTensor(
                    role=role,
                    name=t.name,
                    shape=t.shape,
                    kind=Kind.ROUTED
                    if routed
                    else (Kind.SHARED if role.startswith("shared_") else Kind.DENSE),
                    bias=bias,
                    row=role in ROW_PARALLEL_ROLES and not bias,
                    stacked=routed and leaf not in ("weight", "bias"),
                    conv1d=conv1d and len(t.shape) == 2 and not routed,
                )
            )
        groups.append(BlockGroup(g.count, tuple(tensors)))
    return tuple(groups)
