"""The model's parameter tensors as the memory model enumerates them: dimensions by short
name, every tensor with its role and multiplicity, counts, and LoRA's adapters."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from advisor.errors import UserError
from advisor.model.blocks import BlockGroup, BlockInventory, BlockTensor, Kind
from advisor.model.inventory import Inventory
from advisor.model.spec import ModelSpec

#: LoRA adapts these matrices of every layer by default: the four attention projections.
DEFAULT_LORA_TARGETS: frozenset[str] = frozenset({"q", "k", "v", "o"})

# QLoRA (Dettmers et al. 2023): NF4 codes are 4 bits per weight; one 8-bit absmax per block
# of 64 weights plus, after double quantization, one fp32 constant per 256 such blocks:
# 8/64 + 32/(64*256) = 0.127 bits per parameter.
NF4_BYTES = 0.5
NF4_CONSTANT_BITS = 8 / 64 + 32 / (64 * 256)


class Role(str, Enum):
    """Where a parameter tensor sits; structured optimizers treat roles differently."""

    EMBEDDING = "embedding"
    POSITION = "position"
    OUTPUT = "output"
    ATTENTION_QK = "attention-qk"
    LAYER_MATRIX = "layer-matrix"
    VECTOR = "vector"


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor of the model, as the estimator enumerates it.

    Attributes:
        name: short role name (``q``, ``gate``, ``embed`` ...).
        shape: ``(out, in)`` for matrices, ``(n,)`` for vectors.
        role: how optimizers and LoRA treat it.
        count: how many identical tensors (one per layer, per expert ...).
        heads: attention heads the rows split into (Adam-mini blocks of Q and K).
        per_layer: whether it belongs to a transformer block (ZeRO-3 gathers per layer).
        expert: a routed expert's (expert parallelism splits these).
        row: tensor parallelism splits it along its input (row-parallel; from the block
            inventory, :mod:`advisor.model.blocks`).
    """

    name: str
    shape: tuple[int, ...]
    role: Role
    count: int = 1
    heads: int = 0
    per_layer: bool = True
    expert: bool = False
    row: bool = False

    @functools.cached_property
    def numel(self) -> int:
        """Elements of one tensor (computed once: the plan search sums them thousands of
        times)."""
        return math.prod(self.shape)


def spec_value(spec: Any, name: str, default: Any) -> Any:
    """``spec.name``, or ``default`` where it is missing or None."""
    value = getattr(spec, name, default)
    return default if value is None else value


def enum_value(value: Any) -> str:
    """An enum's value (or the string itself)."""
    return str(getattr(value, "value", value))


def _required(spec: ModelSpec, name: str) -> int:
    value = getattr(spec, name, None)
    if value is None:
        raise UserError(
            f"model {spec.id} has no {name}",
            "a transformer profile needs hidden_size, num_layers, num_attention_heads, "
            "intermediate_size and vocab_size",
        )
    return int(value)


def shape_of(spec: ModelSpec) -> dict[str, int]:
    """The model's dimensions by short name (h, L, a, kv, hd, f, V; MoE and MLA widths)."""
    h = _required(spec, "hidden_size")
    a = _required(spec, "num_attention_heads")
    hd = int(spec_value(spec, "head_dim", h // a))
    L = _required(spec, "num_layers")
    f = _required(spec, "intermediate_size")
    E = int(spec_value(spec, "num_experts", 1)) or 1
    mla = spec_value(spec, "mla", None)
    return {
        "h": h,
        "L": L,
        "a": a,
        "kv": int(spec_value(spec, "num_key_value_heads", a)),
        "hd": hd,
        "f": f,
        "V": _required(spec, "vocab_size"),
        "E": E,
        "k": int(spec_value(spec, "experts_per_token", 1)) or 1,
        "P": int(spec_value(spec, "max_position_embeddings", 0)),
        # MoE: layers with an MoE MLP, one expert's width, shared experts per MoE layer.
        "Lm": L - len(spec_value(spec, "dense_layers", ())) if E > 1 else 0,
        "fe": int(spec_value(spec, "moe_intermediate_size", f)),
        "S": int(spec_value(spec, "shared_experts", 0)),
        # Multi-head latent attention (DeepSeek-V2/V3): latent ranks and head widths.
        "mla": int(mla is not None),
        "rq": int(spec_value(mla, "q_lora_rank", 0)) if mla is not None else 0,
        "rkv": int(mla.kv_lora_rank) if mla is not None else 0,
        "dn": int(mla.qk_nope_head_dim) if mla is not None else 0,
        "dr": int(mla.qk_rope_head_dim) if mla is not None else 0,
        "dv": int(mla.v_head_dim) if mla is not None else 0,
    }


def enumerate_tensors(spec: ModelSpec) -> list[ParamTensor]:
    """Enumerate the parameter tensors of a transformer ``spec``.

    The block's tensors come from the block inventory (:attr:`ModelSpec.block
    <advisor.model.spec.ModelSpec.block>`): separate Q/K/V/O projections (GPT-2 and Phi-3
    fuse Q, K and V in one matrix; DeepSeek's multi-head latent attention has its latent
    down/up projections), gated MLPs as gate/up/down (Phi-3 fuses gate and up), the block's
    norms (2, Gemma's 4) and Qwen3/Gemma 3/OLMo 2's q/k norms; outside the blocks a final
    norm, an untied LM head unless ``tie_word_embeddings``, OPT's learned positions with an
    offset of 2 rows. MoE layers hold a router, every routed expert (each expert's matrices
    as separate tensors, which is how optimizers see them per expert) and the shared
    experts; an MoE model's dense layers (DeepSeek-V3's first 3) a dense MLP.

    Args:
        spec: the model's shapes.

    Returns:
        The tensors, each with a multiplicity (``count``).

    Raises:
        UserError: for a CNN, whose shapes a ModelSpec does not describe tensor by tensor.
    """
    arch = enum_value(spec.arch)
    if arch == "cnn":
        raise UserError(
            f"the memory model covers transformers; {spec.id} is a CNN",
            "pick a transformer profile (decoder or encoder)",
        )
    d = shape_of(spec)
    inventory = spec_value(spec, "inventory", None)
    if inventory is not None:  # the real module's tensors, read by the general HF path
        return inventory_tensors(spec.block.groups, inventory, d["a"], d["kv"])
    h, L, V = d["h"], d["L"], d["V"]
    layernorm = enum_value(spec.norm) == "layernorm"
    out: list[ParamTensor] = [ParamTensor("embed", (V, h), Role.EMBEDDING, per_layer=False)]
    if enum_value(spec.position) == "learned":
        rows = d["P"] + int(spec_value(spec, "learned_position_offset", 0))
        out.append(ParamTensor("pos_embed", (rows, h), Role.POSITION, per_layer=False))
    head_norms = enum_value(spec_value(spec, "qk_norm", "none")) == "head"
    out += _attention_tensors(spec.block.dense, d, head_norms)
    out += _mlp_tensors(spec.block, d)
    if int(spec_value(spec, "type_vocab_size", 0)):
        out.append(
            ParamTensor("token_type", (spec.type_vocab_size, h), Role.POSITION, per_layer=False)
        )
    if spec_value(spec, "pooler", False):
        out.append(ParamTensor("pooler", (h, h), Role.OUTPUT, per_layer=False))
        out.append(ParamTensor("pooler_bias", (h,), Role.VECTOR, per_layer=False))
        # The sequence classifier on the pooled output (BertForSequenceClassification; the
        # pre-training NSP head is the same 2 x h): two labels.
        out.append(ParamTensor("classifier", (2, h), Role.OUTPUT, per_layer=False))
        out.append(ParamTensor("classifier_bias", (2,), Role.VECTOR, per_layer=False))
    vision = spec_value(spec, "vision", None)
    if vision is not None:
        # A ViT (torchvision): "embed" is the patch projection (V = its patch width), beside
        # it the projection's bias and the class token, and the classifier head.
        out.append(ParamTensor("patch_bias_cls", (h,), Role.VECTOR, 2, per_layer=False))
        classes = int(vision.num_classes)
        out.append(ParamTensor("classifier", (classes, h), Role.OUTPUT, per_layer=False))
        out.append(ParamTensor("classifier_bias", (classes,), Role.VECTOR, per_layer=False))
    norm_tensors = 2 if layernorm else 1
    # The block norms (weights and LayerNorm biases, every block alike) as one entry.
    block_norms = sum(1 for t in spec.block.dense if t.role == "norm")
    out.append(ParamTensor("norms", (h,), Role.VECTOR, block_norms * L))
    out.append(ParamTensor("final_norm", (h,), Role.VECTOR, norm_tensors, per_layer=False))
    if not spec.tie_word_embeddings and arch == "decoder":
        out.append(ParamTensor("lm_head", (V, h), Role.OUTPUT, per_layer=False))
    return out


# Heads the rows of a query/key matrix split into (Adam-mini's blocks): "a" all heads,
# "kv" the key/value heads.
_QK_HEADS = {"q": "a", "k": "kv", "kv_b": "a"}
# The attention's tensors in the memory model's order: the input projections (MLA: the
# query side, then the key/value side; each section's biases after its weights), the q/k
# norms, the output projection.
_SECTION = {
    **dict.fromkeys(("q_a", "q_a_norm", "q", "k", "v", "qkv"), 0),
    **dict.fromkeys(("kv_a", "kv_a_norm", "kv_b"), 1),
    **dict.fromkeys(("q_norm", "k_norm"), 2),
    "o": 3,
}


def _param(t: BlockTensor, count: int, d: Mapping[str, int]) -> ParamTensor:
    """One block tensor as the memory model's tensor, ``count`` times."""
    name = t.role + "_bias" if t.bias else t.role
    if t.bias or t.matrix is None:
        return ParamTensor(name, t.shape, Role.VECTOR, count)
    heads = _QK_HEADS.get(t.role)
    role = Role.LAYER_MATRIX if heads is None else Role.ATTENTION_QK
    return ParamTensor(name, t.matrix, role, count, d[heads] if heads else 0, row=t.row)


def _attention_tensors(
    block: Sequence[BlockTensor], d: Mapping[str, int], head_norms: bool
) -> list[ParamTensor]:
    """The attention's tensors of every layer (dense and MoE blocks share them); per-head
    q/k norms (Qwen3, Gemma 3: one ``head_dim`` weight each) as one entry."""
    L = d["L"]
    attention = sorted(
        (t for t in block if t.role in _SECTION), key=lambda t: (_SECTION[t.role], t.bias)
    )
    out: list[ParamTensor] = []
    for t in attention:
        if head_norms and t.role in ("q_norm", "k_norm"):
            if t.role == "q_norm":
                out.append(ParamTensor("qk_norms", t.shape, Role.VECTOR, 2 * L))
            continue
        out.append(_param(t, L, d))
    return out


_MLP_ROLES = frozenset({"gate", "up", "down", "gate_up"})


def _mlp_tensors(blocks: BlockInventory, d: Mapping[str, int]) -> list[ParamTensor]:
    """The MLP's tensors: a dense MLP on dense layers; routed experts, the router and
    shared experts on MoE layers (see :func:`enumerate_tensors`)."""
    L, E, Lm = d["L"], d["E"], d["Lm"]
    dense = L - Lm
    out: list[ParamTensor] = []
    if dense:
        out += [_param(t, dense, d) for t in blocks.dense if t.role in _MLP_ROLES]
    if Lm and blocks.moe is not None:
        # Routed experts: the same names as a dense MLP, one tensor per expert and layer
        # (transformers 5 stores gate and up in one tensor of all experts; optimizers see
        # them per expert); expert parallelism splits these (the router and shared experts
        # are replicated).
        for t in blocks.moe:
            if t.kind is Kind.ROUTED and t.matrix is not None:
                rows, cols = t.matrix
                halves = ("gate", "up") if t.role == "gate_up" else (t.role,)
                shape = (rows // len(halves), cols)
                for name in halves:
                    out.append(
                        ParamTensor(name, shape, Role.LAYER_MATRIX, Lm * E, expert=True, row=t.row)
                    )
        out += [_param(t, Lm, d) for t in blocks.moe if t.role == "router"]
        # DeepSeek's shared experts: one dense MLP of their summed width per MoE layer.
        out += [_param(t, Lm, d) for t in blocks.moe if t.kind is Kind.SHARED]
    return out


def inventory_tensors(
    groups: Iterable[BlockGroup], inv: Inventory, heads: int, kv_heads: int
) -> list[ParamTensor]:
    """The general path's tensors (:func:`~advisor.model.blocks.inventory_groups`, outside
    tensors from the inventory), with the memory model's short names.

    Routed experts' 3-D tensors ``(E, a, b)`` become ``E`` tensors each, as optimizers and
    expert parallelism see them; their matrices are written ``(out, in)`` so that the
    tensor-parallel split (column for up/gate, row for down) is on the right side.
    """
    out: list[ParamTensor] = []
    hidden = next(t.shape[1] for t in inv.outside if t.role == "embed")
    for g in groups:
        for t in g.tensors:
            name = t.role + "_bias" if t.bias else t.role
            shape, count, expert = t.shape, g.count, t.kind is Kind.ROUTED
            if expert and len(shape) == 3:
                count, shape = g.count * shape[0], shape[1:]
                if len(shape) == 2 and name in ("gate", "up", "gate_up", "down"):
                    other = shape[0] if shape[1] == hidden else shape[1]
                    shape = (hidden, other) if name == "down" else (other, hidden)
            if len(shape) == 1 or t.bias:
                role = Role.VECTOR
            elif name in ("q", "k", "kv_b", "cross_q", "cross_k"):
                role = Role.ATTENTION_QK
            elif name == "relpos":
                role = Role.POSITION
            else:
                role = Role.LAYER_MATRIX
            h = (
                (heads if name in ("q", "kv_b", "cross_q") else kv_heads)
                if role is Role.ATTENTION_QK
                else 0
            )
            out.append(ParamTensor(name, shape, role, count, h, True, expert, t.row))
    for o in inv.outside:
        kind = {"embed": Role.EMBEDDING, "position": Role.POSITION, "lm_head": Role.OUTPUT}
        name = {"final_norm": "final_norm", "final_norm_bias": "final_norm"}.get(o.role, o.role)
        out.append(ParamTensor(name, o.shape, kind.get(o.role, Role.VECTOR), 1, 0, False))
    return out


def count(tensors: Iterable[ParamTensor], *, per_layer: bool | None = None) -> int:
    """Elements of ``tensors`` (each times its count); ``per_layer`` keeps only block
    tensors (True) or only the others (False)."""
    return sum(t.numel * t.count for t in tensors if per_layer is None or t.per_layer == per_layer)


# Fused and latent projections adapted when any of the matrices they stand for is a target
# (PEFT targets the module: GPT-2's c_attn and Phi-3's qkv_proj hold q, k and v, Phi-3's
# gate_up_proj gate and up; MLA's q_a_proj feeds the queries, kv_a/kv_b_proj keys and values).
_LORA_ALIASES: dict[str, frozenset[str]] = {
    "qkv": frozenset({"q", "k", "v"}),
    "gate_up": frozenset({"gate", "up"}),
    "q_a": frozenset({"q"}),
    "kv_a": frozenset({"k", "v"}),
    "kv_b": frozenset({"k", "v"}),
    "shared_gate": frozenset({"gate"}),
    "shared_up": frozenset({"up"}),
    "shared_down": frozenset({"down"}),
}


def lora_full_tensors(tensors: Iterable[ParamTensor], targets: frozenset[str]) -> list[ParamTensor]:
    """The whole tensors trained beside the adapters: the embedding (``embed``) and the LM
    head (``lm_head``), PEFT's ``modules_to_save``."""
    return [
        t
        for t in tensors
        if (t.role is Role.EMBEDDING and "embed" in targets)
        or (t.role is Role.OUTPUT and len(t.shape) == 2 and "lm_head" in targets)
    ]


def adapter_tensors(
    tensors: Iterable[ParamTensor], rank: int, targets: frozenset[str] = DEFAULT_LORA_TARGETS
) -> list[ParamTensor]:
    """LoRA adapters: ``A`` (r x d_in), ``B`` (d_out x r) per adapted matrix (Hu et al. 2021).

    Args:
        tensors: the model's parameter tensors.
        rank: the adapter rank r.
        targets: which per-layer matrices are adapted (default q, k, v, o).

    Returns:
        The adapter tensors; each adapted matrix adds ``r * (d_in + d_out)`` parameters.
    """
    out = []
    for t in tensors:
        fused = bool(targets & _LORA_ALIASES.get(t.name, frozenset()))
        if (t.name in targets or fused) and len(t.shape) == 2 and t.per_layer:
            d_out, d_in = t.shape
            out.append(ParamTensor(f"lora_A_{t.name}", (rank, d_in), Role.LAYER_MATRIX, t.count))
            out.append(ParamTensor(f"lora_B_{t.name}", (d_out, rank), Role.LAYER_MATRIX, t.count))
    return out
