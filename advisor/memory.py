"""Per-device peak memory of one training configuration, as named byte components.

The model counts what a training step keeps alive on one device, component by component,
in a fixed order (:data:`COMPONENTS`)::

    peak = weights + quantization_constants + weight_cache            (model)
         + gradients + per_sample_gradients                           (backward)
         + master_weights + optimizer_states                          (optimizer)
         + activations + recompute + logits                           (saved for backward)
         + transient                                                  (max of loss / step)
         + gathered_parameters                                        (ZeRO-3 / FSDP / offload)
         + cuda_context + workspace + allocator_reserve               (device overheads)

NOTE: ``total_bytes`` is the sum of the breakdown. It is an upper bound in one respect:
gradients are counted in full while the activations are at their forward-end maximum
(in reality gradients grow as activations are freed), the convention of the ZeRO paper's
model-state accounting plus residual states (Rajbhandari et al. 2020).

Activation counts are derived from the real blocks as PyTorch autograd saves them (the
Hugging Face Llama / Qwen2 / Mistral / GPT-2 / OPT implementations, no dropout) and are
verified by ``tests/test_memory_measured.py`` against ``saved_tensors_hooks`` counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.modelspec import ModelSpec
from advisor.taxonomy import OptimizerMemory, StateKind, Technique
from advisor.units import MIB

#: The breakdown's keys, in the order every estimate reports them.
COMPONENTS: tuple[str, ...] = (
    "weights",
    "quantization_constants",
    "weight_cache",
    "gradients",
    "per_sample_gradients",
    "master_weights",
    "optimizer_states",
    "activations",
    "recompute",
    "logits",
    "transient",
    "gathered_parameters",
    "cuda_context",
    "workspace",
    "allocator_reserve",
)

#: Components that are fixed device overheads rather than tensors of the model.
OVERHEAD_COMPONENTS: tuple[str, ...] = ("cuda_context", "workspace", "allocator_reserve")

#: LoRA adapts these matrices of every layer by default: the four attention projections.
DEFAULT_LORA_TARGETS: frozenset[str] = frozenset({"q", "k", "v", "o"})

# QLoRA (Dettmers et al. 2023): NF4 codes are 4 bits per weight; one 8-bit absmax per block
# of 64 weights plus, after double quantization, one fp32 constant per 256 such blocks:
# 8/64 + 32/(64*256) = 0.127 bits per parameter.
_NF4_BYTES = 0.5
_NF4_CONSTANT_BITS = 8 / 64 + 32 / (64 * 256)


class DeviceOverheads(BaseModel):
    """Fixed per-device memory that is not a tensor of the model.

    The defaults describe a CUDA device; :meth:`cpu` gives zeros.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cuda_context_bytes: int = Field(
        default=500 * MIB,
        ge=0,
        description=(
            "CUDA context + kernel images loaded by torch: ~300 MiB (lazy module loading, "
            "CUDA 12) to ~500 MiB (H100, cuDNN/cuBLAS loaded); 500 MiB is the safe end"
        ),
    )
    workspace_bytes: int = Field(
        default=32 * MIB + 1 * MIB,
        ge=0,
        description=(
            "cuBLAS workspace (torch default on Hopper :4096:8 = 32 MiB; 8 MiB before) "
            "plus the 1 MiB cuBLASLt workspace"
        ),
    )
    allocator_reserve_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description=(
            "caching-allocator slack (block rounding, fragmentation) as a fraction of the "
            "tensor bytes; an assumption, 5% by default"
        ),
    )

    @classmethod
    def cpu(cls) -> DeviceOverheads:
        """No context, no workspace, no allocator slack: what the CPU tests measure."""
        return cls(cuda_context_bytes=0, workspace_bytes=0, allocator_reserve_fraction=0.0)


class MemoryEstimate(BaseModel):
    """The per-device peak memory of one configuration, by named component."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_bytes: int = Field(description="per-device peak: the sum of the breakdown")
    breakdown: dict[str, int] = Field(description="component -> bytes, in COMPONENTS order")
    parameters: int = Field(description="all parameters of the model")
    trainable_parameters: int = Field(description="parameters that get gradients")
    host_bytes: int = Field(default=0, description="what offload keeps in host (CPU) memory")
    notes: list[str] = Field(default_factory=list, description="assumptions made")

    @property
    def overhead_bytes(self) -> int:
        """The fixed device overheads (context, workspace, allocator reserve) together."""
        return sum(self.breakdown[k] for k in OVERHEAD_COMPONENTS)


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

    @property
    def numel(self) -> int:
        """Elements of one tensor."""
        return math.prod(self.shape)


# --------------------------------------------------------------------------- structure


def _get(spec: Any, name: str, default: Any) -> Any:
    value = getattr(spec, name, default)
    return default if value is None else value


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def _req(spec: ModelSpec, name: str) -> int:
    value = getattr(spec, name, None)
    if value is None:
        raise UserError(
            f"model {spec.id} has no {name}",
            "a transformer profile needs hidden_size, num_layers, num_attention_heads, "
            "intermediate_size and vocab_size",
        )
    return int(value)


_SHAPES: dict[int, tuple[ModelSpec, dict[str, int], list[ParamTensor]]] = {}


def _cached(spec: ModelSpec) -> tuple[dict[str, int], list[ParamTensor]]:
    """Shape and tensors of a spec, computed once per spec object (the recommender asks
    thousands of times for the same model). The spec is kept so its id stays unique."""
    hit = _SHAPES.get(id(spec))
    if hit is None or hit[0] is not spec:
        if len(_SHAPES) > 64:
            _SHAPES.clear()
        hit = (spec, _shape_of_uncached(spec), _param_tensors_uncached(spec))
        _SHAPES[id(spec)] = hit
    return hit[1], hit[2]


def _shape_of(spec: ModelSpec) -> dict[str, int]:
    return dict(_cached(spec)[0])


def _shape_of_uncached(spec: ModelSpec) -> dict[str, int]:
    h = _req(spec, "hidden_size")
    a = _req(spec, "num_attention_heads")
    hd = int(_get(spec, "head_dim", h // a))
    L = _req(spec, "num_layers")
    f = _req(spec, "intermediate_size")
    E = int(_get(spec, "num_experts", 1)) or 1
    mla = _get(spec, "mla", None)
    return {
        "h": h,
        "L": L,
        "a": a,
        "kv": int(_get(spec, "num_key_value_heads", a)),
        "hd": hd,
        "f": f,
        "V": _req(spec, "vocab_size"),
        "E": E,
        "k": int(_get(spec, "experts_per_token", 1)) or 1,
        "P": int(_get(spec, "max_position_embeddings", 0)),
        # MoE: layers with an MoE MLP, one expert's width, shared experts per MoE layer.
        "Lm": L - len(_get(spec, "dense_layers", ())) if E > 1 else 0,
        "fe": int(_get(spec, "moe_intermediate_size", f)),
        "S": int(_get(spec, "shared_experts", 0)),
        # Multi-head latent attention (DeepSeek-V2/V3): latent ranks and head widths.
        "mla": int(mla is not None),
        "rq": int(_get(mla, "q_lora_rank", 0)) if mla is not None else 0,
        "rkv": int(mla.kv_lora_rank) if mla is not None else 0,
        "dn": int(mla.qk_nope_head_dim) if mla is not None else 0,
        "dr": int(mla.qk_rope_head_dim) if mla is not None else 0,
        "dv": int(mla.v_head_dim) if mla is not None else 0,
    }


def param_tensors(spec: ModelSpec) -> list[ParamTensor]:
    """The parameter tensors of a transformer ``spec`` (cached per spec object)."""
    return list(_cached(spec)[1])


def _param_tensors_uncached(spec: ModelSpec) -> list[ParamTensor]:
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
    arch = _enum_value(spec.arch)
    if arch == "cnn":
        raise UserError(
            f"the memory model covers transformers; {spec.id} is a CNN",
            "pick a transformer profile (decoder or encoder)",
        )
    d = _shape_of_uncached(spec)
    h, L, a, kv, hd, f, V = d["h"], d["L"], d["a"], d["kv"], d["hd"], d["f"], d["V"]
    qd, kd = a * hd, kv * hd
    layernorm = _enum_value(spec.norm) == "layernorm"
    gated = _enum_value(spec.mlp) in ("gated-silu", "gated-gelu")
    E, Lm, fe = d["E"], d["Lm"], d["fe"]
    out: list[ParamTensor] = [ParamTensor("embed", (V, h), Role.EMBEDDING, per_layer=False)]
    if _enum_value(spec.position) == "learned":
        rows = d["P"] + int(_get(spec, "learned_position_offset", 0))
        out.append(ParamTensor("pos_embed", (rows, h), Role.POSITION, per_layer=False))
    if d["mla"]:
        out += _mla_tensors(d, bool(spec.qkv_bias))
        qd = a * d["dv"]  # o_proj reads the value heads
    elif str(spec.family).lower() == "gpt2" or _get(spec, "fused_qkv", False):
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
    qk_norm = _enum_value(_get(spec, "qk_norm", "none"))
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
    dense = L - Lm
    if _get(spec, "fused_gate_up", False):
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
        # Routed experts: the same names as a dense MLP, one tensor per expert and layer.
        names = ("gate", "up", "down") if gated else ("up", "down")
        for name in names:
            shape = (h, fe) if name == "down" else (fe, h)
            out.append(ParamTensor(name, shape, Role.LAYER_MATRIX, Lm * E))
        out.append(ParamTensor("router", (E, h), Role.LAYER_MATRIX, Lm))
        if d["S"]:
            # DeepSeek's shared experts: one dense MLP of their summed width per MoE layer.
            fs = fe * d["S"]
            for name in names:
                shape = (h, fs) if name == "down" else (fs, h)
                out.append(ParamTensor("shared_" + name, shape, Role.LAYER_MATRIX, Lm))
    if int(_get(spec, "type_vocab_size", 0)):
        out.append(
            ParamTensor("token_type", (spec.type_vocab_size, h), Role.POSITION, per_layer=False)
        )
    if _get(spec, "pooler", False):
        out.append(ParamTensor("pooler", (h, h), Role.OUTPUT, per_layer=False))
        out.append(ParamTensor("pooler_bias", (h,), Role.VECTOR, per_layer=False))
    norm_tensors = 2 if layernorm else 1
    block_norms = 4 if _enum_value(_get(spec, "block_norms", "pre")) == "sandwich" else 2
    out.append(ParamTensor("norms", (h,), Role.VECTOR, block_norms * L * norm_tensors))
    out.append(ParamTensor("final_norm", (h,), Role.VECTOR, norm_tensors, per_layer=False))
    if not spec.tie_word_embeddings and arch == "decoder":
        out.append(ParamTensor("lm_head", (V, h), Role.OUTPUT, per_layer=False))
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


def _count(tensors: list[ParamTensor], *, per_layer: bool | None = None) -> int:
    return sum(t.numel * t.count for t in tensors if per_layer is None or t.per_layer == per_layer)


def lora_tensors(
    spec: ModelSpec, rank: int, targets: frozenset[str] = DEFAULT_LORA_TARGETS
) -> list[ParamTensor]:
    """LoRA adapters: ``A`` (r x d_in), ``B`` (d_out x r) per adapted matrix (Hu et al. 2021).

    Args:
        spec: the model's shapes.
        rank: the adapter rank r.
        targets: which per-layer matrices are adapted (default q, k, v, o).

    Returns:
        The adapter tensors; each adapted matrix adds ``r * (d_in + d_out)`` parameters.
    """
    out = []
    for t in param_tensors(spec):
        fused = t.name == "qkv" and bool(targets & {"q", "k", "v"})
        if (t.name in targets or fused) and len(t.shape) == 2:
            d_out, d_in = t.shape
            out.append(ParamTensor(f"lora_A_{t.name}", (rank, d_in), Role.LAYER_MATRIX, t.count))
            out.append(ParamTensor(f"lora_B_{t.name}", (d_out, rank), Role.LAYER_MATRIX, t.count))
    return out


# --------------------------------------------------------------------------- optimizer state


def _blocks(d: int, block: int | None) -> Iterator[int]:
    if not block or block >= d:
        yield d
        return
    full, rest = divmod(d, block)
    yield from [block] * full
    if rest:
        yield rest


def optimizer_state_bytes(
    mem: OptimizerMemory, tensors: list[ParamTensor], *, state_dtype_bytes: int = 4
) -> int:
    """Bytes of optimizer state for ``tensors``, by the formula of ``mem.state`` (see StateKind).

    Args:
        mem: the optimizer's state signature from the taxonomy.
        tensors: the trainable tensors.
        state_dtype_bytes: 4 when states are fp32 (the taxonomy's reference); 2 when the
            parameters themselves are 16-bit with no master copy (bare fp16/bf16), where
            the implementations allocate states like the parameter, so every state element
            is capped at 2 bytes.

    Returns:
        The state bytes, before sharding.
    """

    if mem.state is StateKind.BLOCK_MEAN:
        # NOTE: Adam-mini allocates its states in fp32 whatever the parameter dtype.
        state_dtype_bytes = 4

    def cap(per_element: float) -> float:
        # fp32 layouts keep the reference dtypes (bf16 momentum included) unchanged.
        return per_element if state_dtype_bytes >= 4 else min(per_element, state_dtype_bytes)

    states = max(mem.states, 1)
    bpp = cap(mem.bytes_per_param / states) * states if mem.bytes_per_param else 0.0
    fallback = mem.fallback_bytes_per_param
    fb = bpp if fallback is None else cap(fallback / max(states, 1)) * max(states, 1)
    if fallback is not None and mem.state is StateKind.FACTORED:
        fb = cap(fallback)
    # NOTE: under bare 16-bit, factor / projection / preconditioner matrices follow the
    # parameter dtype as in torch Adafactor, GaLore and SOAP (measured); ScalableShampoo
    # is the exception (fp32 statistics): set factor_bytes accordingly in its entry.
    fbytes = cap(mem.factor_bytes or 4.0)
    total = 0.0
    kind = mem.state
    for t in tensors:
        n, c = t.numel, t.count
        matrix = len(t.shape) >= 2
        if kind in (StateKind.NONE, StateKind.SEED):
            per = 0.0
        elif kind is StateKind.ELEMENTWISE:
            per = bpp * n
        elif kind is StateKind.FACTORED:
            # Shazeer & Stern 2018: row and column statistics of the second moment.
            per = bpp * n + fbytes * (t.shape[0] + t.shape[1]) if matrix else fb * n
        elif kind is StateKind.QUANTIZED_BLOCKWISE:
            small = mem.min_quantized_numel is not None and n < mem.min_quantized_numel
            block = mem.block_size or 2048
            per = fb * n if small else bpp * n + math.ceil(n / block) * (mem.block_stat_bytes or 0)
        elif kind is StateKind.BLOCK_MEAN:
            # Adam-mini (Zhang et al. 2024): embeddings and output keep Adam's full v.
            if t.role in (Role.EMBEDDING, Role.OUTPUT):
                per = fb * n
            elif t.role is Role.POSITION:
                per = bpp * n + (mem.block_stat_bytes or 4)
            else:
                blocks = t.heads if t.role is Role.ATTENTION_QK and t.heads else t.shape[0]
                per = bpp * n + blocks * (mem.block_stat_bytes or 4)
        elif kind is StateKind.LOW_RANK_PROJECTED:
            # GaLore (Zhao et al. 2024) projects the block matrices (attention, MLP);
            # embeddings, LM head and vectors run plain Adam.
            rank = mem.rank or 128
            if matrix and t.role in (Role.ATTENTION_QK, Role.LAYER_MATRIX):
                r = min(rank, *t.shape)
                per = bpp * r * max(t.shape) + fbytes * r * min(t.shape)
            else:
                per = fb * n
        elif kind is StateKind.BLOCK_PRECONDITIONER:
            if not matrix and fallback is not None:
                per = fb * n
            else:
                per = bpp * n + _preconditioner_elements(mem, t.shape) * fbytes
        else:  # KFAC_FACTORS: Martens & Grosse 2015, per linear layer A (in x in), G (out x out)
            per = bpp * n
            if matrix and t.role in (Role.ATTENTION_QK, Role.LAYER_MATRIX):
                d_out, d_in = t.shape
                per += (mem.factor_matrices or 2) * fbytes * (d_in**2 + d_out**2)
        total += per * c
    return math.ceil(total)


def _preconditioner_elements(mem: OptimizerMemory, shape: tuple[int, ...]) -> int:
    """Elements of the per-block preconditioner matrices of one tensor (Gupta et al. 2018)."""
    copies = mem.factor_matrices or 2
    limit = mem.max_preconditioned_dim
    # The tensor is cut into a grid of blocks of block_size along every dimension; each
    # block keeps, per dimension, `copies` square matrices of its side.
    per_dim = [list(_blocks(d, mem.block_size)) for d in shape]
    n_blocks = math.prod(len(b) for b in per_dim)
    elements = 0
    for sides in per_dim:
        others = n_blocks // len(sides)
        elements += others * sum(side * side for side in sides if not limit or side <= limit)
    return copies * elements


# --------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class _Dtypes:
    weight: int  # bytes of a weight element on the device
    grad: int
    master: int  # 0 when there is no fp32 master copy
    act: int  # compute (activation) dtype
    linear_in: int  # what a linear layer saves of its input (1 under fp8)
    residual: int  # the residual stream (fp32 under autocast)
    state: int  # cap on optimizer state element bytes
    weight_cache: float  # bytes per linear weight of 16-bit / fp8 copies


def _dtypes(precision: Precision) -> _Dtypes:
    if precision in (Precision.FP32, Precision.TF32):
        return _Dtypes(4, 4, 0, 4, 4, 4, 4, 0)
    if precision in (Precision.AMP_FP16, Precision.AMP_BF16):
        return _Dtypes(4, 4, 0, 2, 2, 4, 4, 2)
    if precision in (Precision.FP16_MIXED, Precision.BF16_MIXED):
        return _Dtypes(2, 2, 4, 2, 2, 2, 4, 0)
    if precision is Precision.FP8_MIXED:
        # NOTE: Transformer Engine keeps bf16 weights plus an fp8 copy of each linear weight
        # and saves fp8 inputs of the linear layers; everything else stays bf16.
        return _Dtypes(2, 2, 4, 2, 1, 2, 4, 1)
    return _Dtypes(2, 2, 0, 2, 2, 2, 2, 0)  # bare fp16 / bf16


def _norm_bytes(layernorm: bool, t: int, h: int, c: int, out: int, res: int) -> int:
    """One norm: what autograd keeps of it, its output (the next linear's input) included."""
    if layernorm:
        # native_layer_norm saves its input and fp32 mean and rstd per row.
        return res * t * h + 8 * t + out * t * h
    # HF RMSNorm: x.to(fp32) (a copy unless already fp32), rsqrt per row, the normalized
    # tensor cast back to the input dtype, then weight * normalized (the output).
    normalized = res if res == 4 else c
    return 4 * t * h + 4 * t + normalized * t * h + out * t * h


def layer_activation_bytes(
    spec: ModelSpec,
    micro_batch: int,
    seq_len: int,
    attention: Attention,
    precision: Precision,
    *,
    selective: bool = False,
    lora_targets: frozenset[str] | None = None,
    lora_rank: int = 0,
) -> int:
    """Bytes one transformer block saves for backward (no checkpointing).

    Counted per op of the Hugging Face blocks (verified by measurement):

    - norm (RMSNorm): fp32 input copy, rsqrt, normalized, output; LayerNorm: input,
      fp32 mean and rstd, output.
    - attention, eager: Q, K and V expanded to all heads (``repeat_kv``), the fp32 softmax
      ``4·b·a·s²`` (+ its 16-bit copy ``2·b·a·s²`` under 16-bit compute), the output;
      flash / memory-efficient SDPA: Q, K, V (K/V at the KV-head width), output, an fp32
      log-sum-exp per row; no s² term (Dao et al. 2022).
    - MLP: SwiGLU keeps gate output, SiLU output, up output and their product (4·b·s·f);
      GPT-2's tanh GELU (written out in Python) 5·b·s·f; exact GELU 2; ReLU 1.

    Args:
        spec: the model's shapes.
        micro_batch: sequences per step on the device (b).
        seq_len: tokens per sequence (s).
        attention: the attention implementation.
        precision: the precision layout (its compute dtype).
        selective: selective recomputation: the attention core (scores, softmax) is
            recomputed, so no s² term is kept (Korthikanti et al. 2022).
        lora_targets: with LoRA, frozen matrices do not save their inputs; adapters save
            their input and a rank-r intermediate.
        lora_rank: the adapter rank.

    Returns:
        The bytes of one block.
    """
    d = _shape_of(spec)
    h, a, kv, hd, f = d["h"], d["a"], d["kv"], d["hd"], d["f"]
    b, s = micro_batch, seq_len
    t = b * s
    dt = _dtypes(precision)
    c, cl, res = dt.act, dt.linear_in, dt.residual
    layernorm = _enum_value(spec.norm) == "layernorm"
    family = str(spec.family).lower()
    qd, kd = a * hd, kv * hd
    frozen = lora_targets is not None

    def saved_input(*names: str) -> int:
        # A linear with a trainable weight saves its input; a frozen one does not.
        return cl if not frozen or any(n in (lora_targets or ()) for n in names) else 0

    norm_out_attn = saved_input("q", "k", "v")
    norm_out_mlp = saved_input("gate", "up")
    total = _norm_bytes(layernorm, t, h, c, norm_out_attn, res)
    total += _norm_bytes(layernorm, t, h, c, norm_out_mlp, res)
    # Attention core.
    o_in = saved_input("o")
    if d["mla"]:
        eager = attention is Attention.EAGER and not selective
        total += _mla_activation_bytes(d, b, s, c, eager, saved_input("q"), o_in)
    elif attention is Attention.EAGER and not selective:
        total += 3 * c * t * qd  # Q, K and V expanded to all heads (copies for bmm)
        if family == "gpt2":
            total += c * b * a * s * s  # GPT-2's softmax runs in the compute dtype
        else:
            total += 4 * b * a * s * s  # softmax in fp32 (HF eager attention)
            if c != 4:
                total += c * b * a * s * s  # the softmax cast back to the compute dtype
        total += o_in * t * qd  # the output made contiguous, o_proj's input
    else:
        total += c * t * (qd + 2 * kd)  # Q, K, V (K and V at the KV-head width)
        total += 4 * b * a * s  # fp32 log-sum-exp per row and head
        # The kernel's output, saved by SDPA, is o_proj's input too (same storage);
        # a different dtype (fp8) is an extra copy.
        total += c * t * qd + (o_in * t * qd if o_in and o_in != c else 0)
    # MLP (per routed expert for MoE).
    mlp = _enum_value(spec.mlp)
    if mlp in ("gated-silu", "gated-gelu"):  # SiLU and tanh-GELU both save their input
        mlp_bytes = 3 * c * t * f + saved_input("down") * t * f
    elif mlp == "gelu":
        mlp_bytes = (4 if family == "gpt2" else 1) * c * t * f + saved_input("down") * t * f
    else:  # relu saves its output, which is also the next linear's input
        mlp_bytes = c * t * f
    if d["Lm"]:
        gather = saved_input("gate", "up")  # the experts' first matmul saves its input
        total += _moe_activation_bytes(d, t, c, mlp_bytes, gather, frozen, family)
    else:
        total += mlp_bytes
    if lora_targets is not None:
        adapted = [n for n in ("q", "k", "v", "o", "gate", "up", "down") if n in lora_targets]
        total += len(adapted) * c * t * lora_rank  # A's output, saved by B
    return total


def _mla_activation_bytes(
    d: dict[str, int], b: int, s: int, c: int, eager: bool, q_in: int, o_in: int
) -> int:
    """What one multi-head latent attention saves (transformers' DeepseekV3Attention).

    Derived op by op from its forward (DeepSeek-AI 2024, arXiv:2405.04434, eq. 1-11):
    q_a_layernorm and kv_a_layernorm are RMSNorms over the latents (fp32 copy, rsqrt,
    normalized, output = the input of q_b_proj / kv_b_proj); RoPE multiplies by cos/sin,
    which need no gradient, so it saves no per-token tensor; ``torch.cat`` builds the
    query and a copy builds the key (both ``a * (d_nope + d_rope)`` wide per token); the
    value is a view of kv_b_proj's output, so saving it keeps that whole output
    (``a * (d_nope + d_v)``) alive. Then the attention kernel as for other models: SDPA's
    output and fp32 log-sum-exp, or eager's fp32 softmax (+ its 16-bit cast) and the
    contiguous output.
    """
    t, a = b * s, d["a"]
    total = 0
    if d["rq"]:
        total += _norm_bytes(False, t, d["rq"], c, q_in, c)
    total += _norm_bytes(False, t, d["rkv"], c, q_in, c)
    qk = a * (d["dn"] + d["dr"])
    total += 2 * c * t * qk  # query (cat) and key (copy)
    total += c * t * a * (d["dn"] + d["dv"])  # kv_b_proj's output, kept by the value view
    out = a * d["dv"]
    if eager:
        total += 4 * b * a * s * s + (c * b * a * s * s if c != 4 else 0)
        total += o_in * t * out
    else:
        total += 4 * b * a * s + c * t * out + (o_in * t * out if o_in and o_in != c else 0)
    return total


def _moe_activation_bytes(
    d: dict[str, int], t: int, c: int, mlp_bytes: int, gather: int, frozen: bool, family: str
) -> int:
    """An MoE model's MLP activations per block, averaged over its dense and MoE blocks.

    transformers 5's experts loop (Qwen3MoeExperts, DeepseekV3Experts, Mixtral's) runs
    each routed token through ``experts_per_token`` experts: per token-expert pair it saves
    what a dense MLP of the expert's width saves, the gathered input of the expert
    (``hidden_states[token_idx]``), the expert's output multiplied by its routing weight
    (kept while the router trains), and int64 token and slot indices. The router saves
    its fp32 probabilities (softmax; DeepSeek-V3: sigmoid, after an fp32 copy of the
    input) and the top-k indices. Shared experts are one dense MLP of their summed width.
    A model with dense first layers (DeepSeek-V3) gets the average over its blocks, so
    ``num_layers x`` this figure is the whole stack.
    """
    L, Lm, k, E, h, f, fe = d["L"], d["Lm"], d["k"], d["E"], d["h"], d["f"], d["fe"]
    per_width = mlp_bytes // f  # the MLP's bytes are linear in its width
    routed = k * (per_width * fe + gather * t * h + (0 if frozen else c * t * h) + 16 * t)
    router = 4 * t * E + 8 * t * k
    if family == "deepseekv3":
        router += 4 * t * h  # F.linear(hidden.float(), ...): the fp32 input copy
    shared = per_width * fe * d["S"]
    moe = routed + router + shared
    return -(-((L - Lm) * mlp_bytes + Lm * moe) // L)


def _model_level_activation_bytes(
    spec: ModelSpec, b: int, s: int, precision: Precision, attention: Attention, full: bool
) -> int:
    """Embedding indices, position ids or tables and the final norm.

    Under full checkpointing the RoPE tables are arguments of the checkpointed blocks (kept
    by reference, not saved); GPT-2 passes its eager attention mask positionally, so the
    checkpoint saves it once.
    """
    d = _shape_of(spec)
    dt = _dtypes(precision)
    t = b * s
    total = 8 * t  # token ids (int64) for the embedding backward
    position = _enum_value(spec.position)
    family = str(spec.family).lower()
    if position == "learned":
        total += 8 * (s if family == "gpt2" else t)  # position ids (GPT-2: one row)
    elif position == "rope" and not full:
        total += 2 * s * d["hd"] * dt.act  # cos and sin, shared by all layers
    if full and family == "gpt2" and attention is Attention.EAGER:
        total += dt.act * b * s * s  # the additive causal mask
    layernorm = _enum_value(spec.norm) == "layernorm"
    total += _norm_bytes(layernorm, t, d["h"], dt.act, dt.linear_in, dt.residual)
    return total


def _logits_bytes(spec: ModelSpec, b: int, s: int, precision: Precision) -> int:
    """Logits kept in the model output + the fp32 log-softmax the loss saves + targets."""
    d = _shape_of(spec)
    t = b * s
    c = _dtypes(precision).act
    # NOTE: HF's ForCausalLMLoss upcasts the logits to fp32; cross-entropy's log-softmax
    # keeps its fp32 output for backward; nll_loss keeps int64 targets.
    return c * t * d["V"] + 4 * t * d["V"] + 8 * t + 4


# --------------------------------------------------------------------------- the estimate


def _memory_of(optimizer: Technique | OptimizerMemory) -> tuple[OptimizerMemory, str]:
    if isinstance(optimizer, Technique):
        if optimizer.memory is None:
            raise UserError(f"{optimizer.id} is not an optimizer", "pick an optimizer id")
        return optimizer.memory, optimizer.id
    return optimizer, optimizer.state.value


def estimate_memory(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None = None,
    lora_targets: frozenset[str] = DEFAULT_LORA_TARGETS,
) -> MemoryEstimate:
    """Estimate the per-device peak memory of training ``spec`` under ``config``.

    Args:
        spec: the model's shapes.
        config: the training configuration (precision, attention, checkpointing, sharding,
            offload, task, micro-batch, sequence length ...).
        optimizer: the taxonomy entry of the optimizer (or its state signature); its
            ``memory`` fields drive the optimizer-state formula, so an extended taxonomy works.
        device: fixed device overheads; ``None`` means a CUDA device with the defaults of
            :class:`DeviceOverheads`; use ``DeviceOverheads.cpu()`` for none.
        lora_targets: the per-layer matrices LoRA/QLoRA adapt (default q, k, v, o).

    Returns:
        The estimate, with every component named (see :data:`COMPONENTS`).

    Raises:
        UserError: for a CNN spec, or a non-optimizer technique.
    """
    mem, opt_id = _memory_of(optimizer)
    device = device or DeviceOverheads()
    dt = _dtypes(config.precision)
    notes: list[str] = []
    tensors = param_tensors(spec)
    params = _count(tensors)
    d = _shape_of(spec)
    L, b, s = d["L"], config.micro_batch, config.seq_len
    zeroth = mem.state is StateKind.SEED
    adapters = config.task in (Task.LORA, Task.QLORA)
    n = config.gpus if config.sharding is not Sharding.NONE else 1
    stage = config.sharding.zero_stage
    if config.sharding is not Sharding.NONE and config.gpus == 1:
        notes.append("sharding over 1 device divides nothing")

    def shard(x: float, from_stage: int) -> int:
        # ZeRO (Rajbhandari et al. 2020): stage 1 partitions optimizer states (and the fp32
        # master copy), stage 2 also gradients, stage 3 also the parameters.
        return math.ceil(x / n) if stage >= from_stage else math.ceil(x)

    bd = dict.fromkeys(COMPONENTS, 0)
    # ---- weights and what is trainable
    if adapters:
        trainable = lora_tensors(spec, config.lora_rank, lora_targets)
        p_t = _count(trainable)
        adapter_weights = p_t * dt.weight
        layer_bytes = _count(tensors, per_layer=True) * dt.weight + adapter_weights
        if config.task is Task.QLORA:
            quantized = sum(t.numel * t.count for t in tensors if t.per_layer and t.shape[1:])
            rest = params - quantized
            bd["weights"] = shard(quantized * _NF4_BYTES + rest * 2 + adapter_weights, 3)
            vectors = _count(tensors, per_layer=True) - quantized
            layer_bytes = int(
                quantized * (_NF4_BYTES + _NF4_CONSTANT_BITS / 8) + vectors * 2 + adapter_weights
            )
            bd["quantization_constants"] = shard(quantized * _NF4_CONSTANT_BITS / 8, 3)
            notes.append(
                "QLoRA: block matrices in 4-bit NF4 (0.5 B/param) + double-quantized "
                "constants (0.127 bit/param); embeddings, norms, LM head 16-bit"
            )
        else:
            bd["weights"] = shard(params * dt.weight + adapter_weights, 3)
        notes.append(
            f"LoRA rank {config.lora_rank} on {', '.join(sorted(lora_targets))} of every layer"
        )
    else:
        trainable = tensors
        p_t = params
        bd["weights"] = shard(params * dt.weight, 3)
        layer_bytes = _count(tensors, per_layer=True) * dt.weight
    if zeroth:
        p_t_grad = 0
        notes.append("zeroth-order: no gradients, no stored activations (Malladi et al. 2023)")
    else:
        p_t_grad = p_t
    # ---- autocast / fp8 weight copies of the linear layers
    if dt.weight_cache:
        linear = sum(t.numel * t.count for t in tensors if t.per_layer and t.shape[1:])
        if not spec.tie_word_embeddings:
            linear += d["V"] * d["h"]
        bd["weight_cache"] = shard(linear * dt.weight_cache, 3)
        notes.append("autocast keeps 16-bit (fp8: 8-bit) copies of the linear weights")
    # ---- gradients, master weights, optimizer states
    bd["gradients"] = shard(p_t_grad * dt.grad, 2)
    if config.dp_sgd and not zeroth:
        bd["per_sample_gradients"] = b * p_t * dt.grad
        notes.append("DP-SGD: per-sample gradients b x P_t (Abadi et al. 2016; Opacus)")
    master = p_t * dt.master if not zeroth else 0
    bd["master_weights"] = shard(master, 1)
    state_bytes = optimizer_state_bytes(mem, trainable, state_dtype_bytes=dt.state)
    bd["optimizer_states"] = shard(state_bytes, 1)
    # ---- activations, logits
    lt = lora_targets if adapters else None
    layer = layer_activation_bytes(
        spec,
        b,
        s,
        config.attention,
        config.precision,
        selective=config.checkpointing is Checkpointing.SELECTIVE,
        lora_targets=lt,
        lora_rank=config.lora_rank,
    )
    model_level = _model_level_activation_bytes(
        spec,
        b,
        s,
        config.precision,
        config.attention,
        config.checkpointing is Checkpointing.FULL and not zeroth,
    )
    logits = _logits_bytes(spec, b, s, config.precision)
    if zeroth:
        # Inference-like: one block's forward working set, logits and the fp32 upcast.
        bd["activations"] = layer
        bd["logits"] = logits
    elif config.checkpointing is Checkpointing.FULL:
        # Each block keeps its input; backward recomputes one block at a time.
        bd["activations"] = L * dt.residual * b * s * d["h"] + model_level
        bd["recompute"] = layer
        bd["logits"] = logits
        notes.append("full checkpointing: block inputs kept, one block recomputed at a time")
    else:
        bd["activations"] = L * layer + model_level
        bd["logits"] = logits
    # ---- transient: the larger of the loss backward and the optimizer step's temporaries
    loss_tr = 0 if zeroth else 8 * b * s * d["V"]  # fp32 grads of log-probs and of logits
    step_tr = 0
    if mem.state not in (StateKind.NONE, StateKind.SEED):
        # NOTE: torch's foreach/multi-tensor steps allocate one fp32 temporary per
        # parameter of the local shard (e.g. Adam's denominator).
        step_tr = shard(p_t * 4, 1)
    bd["transient"] = max(loss_tr, step_tr)
    # ---- offload and ZeRO-3 gathering
    host = 0
    layer_weights = layer_bytes // max(L, 1)  # one block's weights as stored
    gathered_layers = min(2, L)  # current + prefetched block
    if config.offload is not Offload.NONE:
        host += bd["master_weights"] + bd["optimizer_states"]
        if dt.master:
            host += shard(p_t * 4, 2)  # fp32 gradients for the CPU step (Ren et al. 2021)
        bd["master_weights"] = bd["optimizer_states"] = 0
        bd["transient"] = loss_tr
        notes.append("optimizer states and master weights offloaded to host memory")
    if config.offload.params:
        host += bd["weights"]
        bd["weights"] = 0
        bd["gathered_parameters"] = gathered_layers * layer_weights
        notes.append("parameters offloaded: two blocks' weights on the device at a time")
    elif stage == 3 and n > 1:
        # The non-local part of the gathered blocks (FSDP / ZeRO-3 all-gather buffers).
        bd["gathered_parameters"] = int(gathered_layers * layer_weights * (1 - 1 / n))
    # ---- device overheads
    tensor_bytes = sum(bd.values())
    bd["cuda_context"] = device.cuda_context_bytes
    bd["workspace"] = device.workspace_bytes
    bd["allocator_reserve"] = int(tensor_bytes * device.allocator_reserve_fraction)
    notes.append(f"optimizer {opt_id}: state {mem.state.value}")
    return MemoryEstimate(
        total_bytes=sum(bd.values()),
        breakdown=bd,
        parameters=params,
        trainable_parameters=p_t,
        host_bytes=host,
        notes=notes,
    )
