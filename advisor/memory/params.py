"""The model's parameter tensors as the memory model enumerates them: dimensions by short
name, every tensor with its role and multiplicity, counts, and LoRA's adapters."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from advisor.errors import UserError
from advisor.model.inventory import memory_tensors
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
    """

    name: str
    shape: tuple[int, ...]
    role: Role
    count: int = 1
    heads: int = 0
    per_layer: bool = True
    expert: bool = False

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

    Follows the Hugging Face module layout: separate Q/K/V/O projections (GPT-2 and Phi-3
    fuse Q, K and V in one matrix; DeepSeek's multi-head latent attention has its latent
    down/up projections), gated MLPs as gate/up/down (Phi-3 fuses gate and up), the block's
    norms (2, Gemma's 4) and Qwen3/Gemma 3/OLMo 2's q/k norms, a final norm, an untied LM
    head unless ``tie_word_embeddings``; OPT's learned positions carry an offset of 2 rows.
    MoE layers hold a router, every routed expert (each expert's matrices as separate
    tensors, which is how optimizers see them per expert) and the shared experts; an MoE
    model's dense layers (DeepSeek-V3's first 3) a dense MLP.

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
        return [
            ParamTensor(n, s, Role(r), c, hh, p, e)
            for n, s, r, c, hh, p, e in memory_tensors(inventory, d["a"], d["kv"])
        ]
    h, L, a, kv, hd, V = d["h"], d["L"], d["a"], d["kv"], d["hd"], d["V"]
    qd, kd = a * hd, kv * hd
    layernorm = enum_value(spec.norm) == "layernorm"
    gated = enum_value(spec.mlp) in ("gated-silu", "gated-gelu")
    out: list[ParamTensor] = [ParamTensor("embed", (V, h), Role.EMBEDDING, per_layer=False)]
    if enum_value(spec.position) == "learned":
        rows = d["P"] + int(spec_value(spec, "learned_position_offset", 0))
        out.append(ParamTensor("pos_embed", (rows, h), Role.POSITION, per_layer=False))
    if d["mla"]:
        out += _mla_tensors(d, bool(spec.qkv_bias))
        qd = a * d["dv"]  # o_proj reads the value heads
    elif str(spec.family).lower() == "gpt2" or spec_value(spec, "fused_qkv", False):
        # GPT-2's c_attn and Phi-3's qkv_proj are one fused matrix, one tensor to optimizers.
        out.append(ParamTensor("qkv", (qd + 2 * kd, h), Role.LAYER_MATRIX, L))
        if spec.qkv_bias:
            out.append(ParamTensor("qkv_bias", (qd + 2 * kd,), Role.VECTOR, L))
    else:
        out += [
            ParamTensor("q", (qd, h), Role.ATTENTION_QK, L, heads=a),
            ParamTensor("k", (kd, h), Role.ATTENTION_QK, L, heads=kv),
            ParamTensor("v", (kd, h), Role.LAYER_MATRIX, L),
        ]
        if spec.qkv_bias:
            out += [
                ParamTensor("q_bias", (qd,), Role.VECTOR, L),
                ParamTensor("k_bias", (kd,), Role.VECTOR, L),
                ParamTensor("v_bias", (kd,), Role.VECTOR, L),
            ]
    qk_norm = enum_value(spec_value(spec, "qk_norm", "none"))
    if qk_norm == "head":  # one head_dim weight each for q and k (Qwen3, Gemma 3)
        out.append(ParamTensor("qk_norms", (hd,), Role.VECTOR, 2 * L))
    elif qk_norm == "full":  # over the whole projection width (OLMo 2)
        out.append(ParamTensor("q_norm", (qd,), Role.VECTOR, L))
        out.append(ParamTensor("k_norm", (kd,), Role.VECTOR, L))
    out += [
        ParamTensor("o", (h, qd), Role.LAYER_MATRIX, L),
    ]
    if spec.out_bias:
        out.append(ParamTensor("o_bias", (h,), Role.VECTOR, L))
    out += _mlp_tensors(spec, d, gated)
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
    norm_tensors = 2 if layernorm else 1
    block_norms = 4 if enum_value(spec_value(spec, "block_norms", "pre")) == "sandwich" else 2
    out.append(ParamTensor("norms", (h,), Role.VECTOR, block_norms * L * norm_tensors))
    out.append(ParamTensor("final_norm", (h,), Role.VECTOR, norm_tensors, per_layer=False))
    if not spec.tie_word_embeddings and arch == "decoder":
        out.append(ParamTensor("lm_head", (V, h), Role.OUTPUT, per_layer=False))
    return out


def _mlp_tensors(spec: ModelSpec, d: dict[str, int], gated: bool) -> list[ParamTensor]:
    """The MLP's tensors: a dense MLP on dense layers; routed experts, the router and
    shared experts on MoE layers (see :func:`enumerate_tensors`)."""
    h, L, f, E, Lm, fe = d["h"], d["L"], d["f"], d["E"], d["Lm"], d["fe"]
    out: list[ParamTensor] = []
    dense = L - Lm
    if spec_value(spec, "fused_gate_up", False):
        mlp = [("gate_up", (2 * f, h)), ("down", (h, f))]
    elif gated:
        mlp = [("gate", (f, h)), ("up", (f, h)), ("down", (h, f))]
    else:
        mlp = [("up", (f, h)), ("down", (h, f))]
    for name, shape in mlp if dense else []:
        out.append(ParamTensor(name, shape, Role.LAYER_MATRIX, dense))
        if spec.mlp_bias:
            out.append(ParamTensor(name + "_bias", (shape[0],), Role.VECTOR, dense))
    if Lm:
        # Routed experts: the same names as a dense MLP, one tensor per expert and layer;
        # expert parallelism splits these (the router and shared experts are replicated).
        names = ("gate", "up", "down") if gated else ("up", "down")
        for name in names:
            shape = (h, fe) if name == "down" else (fe, h)
            out.append(ParamTensor(name, shape, Role.LAYER_MATRIX, Lm * E, expert=True))
        out.append(ParamTensor("router", (E, h), Role.LAYER_MATRIX, Lm))
        if d["S"]:
            # DeepSeek's shared experts: one dense MLP of their summed width per MoE layer.
            fs = fe * d["S"]
            for name in names:
                shape = (h, fs) if name == "down" else (fs, h)
                out.append(ParamTensor("shared_" + name, shape, Role.LAYER_MATRIX, Lm))
    return out


def _mla_tensors(d: dict[str, int], bias: bool) -> list[ParamTensor]:
    """Multi-head latent attention's tensors (DeepSeek-AI 2024, arXiv:2405.04434), as
    transformers' DeepseekV3Attention builds them; ``o`` is added by the caller."""
    h, L, a, rq, rkv = d["h"], d["L"], d["a"], d["rq"], d["rkv"]
    qk = a * (d["dn"] + d["dr"])
    out: list[ParamTensor] = []
    if rq:
        out += [
            ParamTensor("q_a", (rq, h), Role.LAYER_MATRIX, L),
            ParamTensor("q_a_norm", (rq,), Role.VECTOR, L),
            ParamTensor("q", (qk, rq), Role.ATTENTION_QK, L, heads=a),
        ]
        if bias:
            out.append(ParamTensor("q_a_bias", (rq,), Role.VECTOR, L))
    else:
        out.append(ParamTensor("q", (qk, h), Role.ATTENTION_QK, L, heads=a))
    out += [
        ParamTensor("kv_a", (rkv + d["dr"], h), Role.LAYER_MATRIX, L),
        ParamTensor("kv_a_norm", (rkv,), Role.VECTOR, L),
        # Keys (position-free part) and values of every head, expanded from the latent.
        ParamTensor("kv_b", (a * (d["dn"] + d["dv"]), rkv), Role.ATTENTION_QK, L, heads=a),
    ]
    if bias:
        out.append(ParamTensor("kv_a_bias", (rkv + d["dr"],), Role.VECTOR, L))
    return out


def count(tensors: Iterable[ParamTensor], *, per_layer: bool | None = None) -> int:
    """Elements of ``tensors`` (each times its count); ``per_layer`` keeps only block
    tensors (True) or only the others (False)."""
    return sum(t.numel * t.count for t in tensors if per_layer is None or t.per_layer == per_layer)


def is_row_parallel(name: str) -> bool:
    """Whether tensor parallelism splits the matrix ``name`` along its input (rows)."""
    # Megatron splits the output projection and the MLP's down projection along their input
    # (row-parallel); Q/K/V, gate and up along their output (column-parallel).
    return name in ("o", "down") or name.endswith("_down") or name.startswith("down")


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
