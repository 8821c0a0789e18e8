"""Per-device peak memory of one training configuration, by named component and by phase.

The model counts what a training step keeps alive on one device, component by component,
in a fixed order (:data:`COMPONENTS`)::

    weights + quantization_constants + weight_cache                   (model)
    gradients + per_sample_gradients                                  (backward)
    master_weights + optimizer_states                                 (optimizer)
    activations + recompute + logits                                  (saved for backward)
    transient                                                         (loss / step temporaries)
    gathered_parameters                                               (ZeRO-3 / FSDP / offload)
    cuda_context + workspace + allocator_reserve                      (device overheads)

Components that never coexist are not added: the peak is the largest of a step's phases
(:data:`PHASES`: forward end, loss backward, layer backward, optimizer step), each the sum of
what is alive in it. ``breakdown`` keeps every component at its full size; ``phases`` lists
what each phase holds (a component may be partly alive, e.g. gradients during backward);
``total_bytes`` is the largest phase, named by ``peak_phase``.

Activation counts depend on the kernel stack (:class:`~advisor.config.Stack`). ``hf`` counts
are derived from the Hugging Face blocks as PyTorch autograd saves them (Llama / Qwen2 /
Mistral / GPT-2 / OPT, no dropout) and are verified by ``tests/test_memory_measured.py``
against ``saved_tensors_hooks``. ``fused`` counts follow the tensors the production kernels
save (FlashAttention, fused RMSNorm/LayerNorm, fused SwiGLU/bias-GELU, fused cross-entropy);
their sources are cited where they are counted, and what runs on a CPU (flash SDPA, a
chunked linear cross-entropy in plain PyTorch) is measured in ``tests/test_memory_stacks.py``.

Parallel layouts divide the per-device share: tensor parallelism with sequence parallelism
splits block matrices, the vocabulary and every activation by ``tp`` (Shoeybi et al. 2019;
Korthikanti et al. 2022); pipeline parallelism places whole blocks on each model chunk
(:func:`pipeline_split`) and each rank holds the activations its schedule keeps in flight
(:func:`inflight_block_microbatches`: 1F1B and interleaved 1F1B, Narayanan et al. 2021);
expert parallelism splits the experts; ZeRO/FSDP shard model states over the
data-parallel (or, hybrid, the shard-group) degree (Rajbhandari et al. 2020; Zhao et al. 2023).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    OptimizerImpl,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.model.inventory import memory_tensors
from advisor.model.spec import ModelSpec
from advisor.rules.taxonomy import OptimizerMemory, StateKind, Technique
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

#: The phases of one training step whose largest sum is the peak, in step order.
PHASES: tuple[str, ...] = ("forward_end", "loss_backward", "layer_backward", "optimizer_step")

#: Components that are fixed device overheads rather than tensors of the model.
OVERHEAD_COMPONENTS: tuple[str, ...] = ("cuda_context", "workspace", "allocator_reserve")

#: LoRA adapts these matrices of every layer by default: the four attention projections.
DEFAULT_LORA_TARGETS: frozenset[str] = frozenset({"q", "k", "v", "o"})

# QLoRA (Dettmers et al. 2023): NF4 codes are 4 bits per weight; one 8-bit absmax per block
# of 64 weights plus, after double quantization, one fp32 constant per 256 such blocks:
# 8/64 + 32/(64*256) = 0.127 bits per parameter.
_NF4_BYTES = 0.5
_NF4_CONSTANT_BITS = 8 / 64 + 32 / (64 * 256)

# bitsandbytes' paged optimizers allocate a state buffer in CUDA unified memory
# (functional.get_paged: cudaMallocManaged) only for parameters of at least 1e5 elements;
# smaller ones, and every block's absmax, are ordinary torch tensors on the device
# (bitsandbytes/optim/optimizer.py, Optimizer8bit.get_state_buffer, 0.43-0.50).
PAGED_MIN_NUMEL = 100_000


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
    dropout_mask_bytes: int | None = Field(
        default=1,
        ge=1,
        description="bytes per element of a dropout mask: CUDA's native_dropout keeps a bool "
        "mask; None: the dropped tensor's dtype, as the CPU kernel keeps it (measured)",
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
        return cls(
            cuda_context_bytes=0,
            workspace_bytes=0,
            allocator_reserve_fraction=0.0,
            dropout_mask_bytes=None,
        )


class Phase(BaseModel):
    """One phase of a training step: the components alive in it and their sum."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="forward_end, loss_backward, layer_backward or optimizer_step")
    components: dict[str, int] = Field(description="component -> bytes alive in this phase")
    total_bytes: int = Field(description="the sum of the components")


class MemoryEstimate(BaseModel):
    """The per-device peak memory of one configuration, by named component and phase."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_bytes: int = Field(description="per-device peak: the largest phase (peak_phase)")
    breakdown: dict[str, int] = Field(
        description="component -> full bytes, in COMPONENTS order (components of different "
        "phases never all coexist, so the sum may exceed total_bytes)"
    )
    phases: list[Phase] = Field(default_factory=list, description="each phase of the step")
    peak_phase: str = Field(default="", description="the phase whose sum is total_bytes")
    stack: Stack = Field(default=Stack.HF, description="the kernel stack the counts assume")
    parameters: int = Field(description="all parameters of the model")
    trainable_parameters: int = Field(description="parameters that get gradients")
    host_bytes: int = Field(default=0, description="what offload keeps in host (CPU) memory")
    nvme_bytes: int = Field(default=0, description="what NVMe offload keeps on NVMe")
    paged_bytes: int = Field(
        default=0,
        description="optimizer states in CUDA unified memory (bitsandbytes' paged optimizers): "
        "not in total_bytes (torch's allocator never sees them); the driver keeps on the device "
        "what the rest leaves free and pages the remainder to host memory (paged_residency)",
    )
    notes: list[str] = Field(default_factory=list, description="assumptions made")

    def phase(self, name: str) -> Phase:
        """The phase called ``name``."""
        return next(p for p in self.phases if p.name == name)

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
    expert: bool = False

    @functools.cached_property
    def numel(self) -> int:
        """Elements of one tensor (computed once: the plan search sums them thousands of
        times)."""
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _per_spec(
    fn: Callable[Concatenate[ModelSpec, _P], _R],
) -> Callable[Concatenate[ModelSpec, _P], _R]:
    """Memoise a pure function of a spec and hashable arguments.

    NOTE: the plan search asks for the same model's activations at the same batch geometry
    under many memory savers and shardings. The key is the spec's identity (the entry keeps
    the spec alive, so its id is not reused) and the other arguments' values; the results
    are ints or frozen models, safe to share.
    """
    memo: dict[tuple[object, ...], tuple[ModelSpec, _R]] = {}

    @functools.wraps(fn)
    def wrapper(spec: ModelSpec, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        key = (id(spec), args, tuple(kwargs.items()))
        hit = memo.get(key)
        if hit is None:
            if len(memo) > 4096:
                memo.clear()
            hit = memo[key] = (spec, fn(spec, *args, **kwargs))
        return hit[1]

    return wrapper


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
    inventory = _get(spec, "inventory", None)
    if inventory is not None:  # the real module's tensors, read by the general HF path
        return [
            ParamTensor(n, s, Role(r), c, hh, p, e)
            for n, s, r, c, hh, p, e in memory_tensors(inventory, d["a"], d["kv"])
        ]
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
    if int(_get(spec, "type_vocab_size", 0)):
        out.append(
            ParamTensor("token_type", (spec.type_vocab_size, h), Role.POSITION, per_layer=False)
        )
    if _get(spec, "pooler", False):
        out.append(ParamTensor("pooler", (h, h), Role.OUTPUT, per_layer=False))
        out.append(ParamTensor("pooler_bias", (h,), Role.VECTOR, per_layer=False))
        # The sequence classifier on the pooled output (BertForSequenceClassification; the
        # pre-training NSP head is the same 2 x h): two labels.
        out.append(ParamTensor("classifier", (2, h), Role.OUTPUT, per_layer=False))
        out.append(ParamTensor("classifier_bias", (2,), Role.VECTOR, per_layer=False))
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


# (ids of the tensors, per_layer) -> (the tensors, their count): see optimizer_state_bytes.
_COUNTS: dict[tuple[object, ...], tuple[tuple[ParamTensor, ...], int]] = {}


def _count(tensors: list[ParamTensor], *, per_layer: bool | None = None) -> int:
    key = (tuple(map(id, tensors)), per_layer)
    hit = _COUNTS.get(key)
    if hit is None:
        if len(_COUNTS) > 4096:
            _COUNTS.clear()
        n = sum(t.numel * t.count for t in tensors if per_layer is None or t.per_layer == per_layer)
        hit = _COUNTS[key] = (tuple(tensors), n)
    return hit[1]


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


def lora_full_tensors(tensors: list[ParamTensor], targets: frozenset[str]) -> list[ParamTensor]:
    """The whole tensors trained beside the adapters: the embedding (``embed``) and the LM
    head (``lm_head``), PEFT's ``modules_to_save``."""
    return [
        t
        for t in tensors
        if (t.role is Role.EMBEDDING and "embed" in targets)
        or (t.role is Role.OUTPUT and len(t.shape) == 2 and "lm_head" in targets)
    ]


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
        fused = bool(targets & _LORA_ALIASES.get(t.name, frozenset()))
        if (t.name in targets or fused) and len(t.shape) == 2 and t.per_layer:
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


# (ids of the signature and the tensors, state dtype) -> (signature, tensors, bytes).
_STATES: dict[tuple[object, ...], tuple[OptimizerMemory, tuple[ParamTensor, ...], int]] = {}


def optimizer_state_bytes(
    mem: OptimizerMemory, tensors: list[ParamTensor], *, state_dtype_bytes: int = 4
) -> int:
    """Bytes of optimizer state for ``tensors``, by the formula of ``mem.state`` (see StateKind).

    Memoised by the identity of its (immutable) inputs, which the entry keeps alive: the plan
    search asks for the same optimizer on the same layout's tensors many times.

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
    key = (id(mem), tuple(map(id, tensors)), state_dtype_bytes)
    hit = _STATES.get(key)
    if hit is None:
        if len(_STATES) > 4096:
            _STATES.clear()
        found = _optimizer_state_bytes(mem, tensors, state_dtype_bytes)
        hit = _STATES[key] = (mem, tuple(tensors), found)
    return hit[2]


def _optimizer_state_bytes(
    mem: OptimizerMemory, tensors: list[ParamTensor], state_dtype_bytes: int
) -> int:
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


def paged_state_bytes(mem: OptimizerMemory, tensors: list[ParamTensor]) -> int:
    """The part of :func:`optimizer_state_bytes` a paged optimizer keeps in unified memory.

    bitsandbytes pages the elementwise state buffers (8-bit: one uint8 per element and
    state) of parameters with at least :data:`PAGED_MIN_NUMEL` elements; the block
    statistics (absmax) and the states of smaller tensors are ordinary device tensors.

    Args:
        mem: the optimizer's state signature (``paged`` set, else nothing is paged).
        tensors: the trainable tensors.

    Returns:
        The paged bytes, before sharding.
    """
    if not mem.paged or mem.state in (StateKind.NONE, StateKind.SEED):
        return 0
    return math.ceil(
        sum(mem.bytes_per_param * t.numel * t.count for t in tensors if t.numel >= PAGED_MIN_NUMEL)
    )


class PagedResidency(NamedTuple):
    """Where a paged optimizer's states live on a device of a given size, and what a step
    moves over the host link."""

    resident_bytes: int  # kept in device memory (what torch's peak leaves free)
    host_bytes: int  # paged out to host memory
    traffic_bytes: int  # migrated host <-> device per optimizer step


def paged_residency(paged_bytes: int, peak_bytes: int, device_bytes: int) -> PagedResidency:
    """How unified memory holds ``paged_bytes`` of states next to a ``peak_bytes`` peak.

    The CUDA driver backs managed memory with whatever device memory the other allocations
    leave (torch's caching allocator keeps its peak reserved, so the peak is what is left
    over from) and evicts the rest to host memory in 2 MiB root chunks, least recently
    migrated first (NVIDIA open-gpu-kernel-modules, kernel-open/nvidia-uvm/uvm_pmm_gpu.c: the
    root-chunk LRU is updated when a chunk is allocated or migrated, not on access).
    bitsandbytes prefetches each parameter's states to the device before its update
    (``Optimizer8bit.prefetch_state``: cudaMemPrefetchAsync) in the same order every step,
    so once the states exceed the free memory that sweep is the LRU worst case: every
    chunk is evicted before it is needed again, and each step migrates all paged states in
    and writes as many evicted (updated) ones back. With room for them all, nothing moves.

    Args:
        paged_bytes: the estimate's ``paged_bytes``.
        peak_bytes: the estimate's ``total_bytes`` (tensors, context and overheads).
        device_bytes: the device's memory.

    Returns:
        Resident and host bytes, and the bytes a step moves over the host link.
    """
    resident = max(0, min(paged_bytes, device_bytes - peak_bytes))
    host = paged_bytes - resident
    return PagedResidency(resident, host, 2 * paged_bytes if host else 0)


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


@functools.cache  # NOTE: a pure function of the enum, called per phase of every estimate
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


def _norm_bytes(
    layernorm: bool,
    t: int,
    h: int,
    c: int,
    out: int,
    res: int,
    fused: bool = False,
    frozen: bool = False,
) -> int:
    """One norm: what autograd keeps of it, its output (the next linear's input) included.

    ``frozen``: the norm's weight gets no gradient (LoRA/QLoRA), so HF RMSNorm's final
    ``weight * normalized`` does not save ``normalized`` (measured with PEFT in
    tests/test_memory_qlora.py); LayerNorm and fused kernels save the same either way."""
    if layernorm or fused:
        # native_layer_norm saves its input and fp32 mean and rstd per row. Fused RMSNorm
        # kernels save the input and an fp32 rstd per row (Liger ``rms_norm`` saves X, W and
        # RSTD; Apex ``FusedRMSNormAffineFunction`` saves input, weight and invvar).
        stats = 8 if layernorm else 4
        return res * t * h + stats * t + out * t * h
    # HF RMSNorm: x.to(fp32) (a copy unless already fp32), rsqrt per row, the normalized
    # tensor cast back to the input dtype, then weight * normalized (the output).
    normalized = 0 if frozen else (res if res == 4 else c)
    return 4 * t * h + 4 * t + normalized * t * h + out * t * h


@_per_spec
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
    stack: Stack = Stack.HF,
    tensor_parallel: int = 1,
    fused_norm: bool = False,
    quantized: bool = False,
    lora_dropout: bool = False,
    mask_bytes: int | None = 1,
    dropout: bool = False,
) -> int:
    """Bytes one transformer block saves for backward (no checkpointing).

    Counted per op of the Hugging Face blocks (``hf``, verified by measurement):

    - norm (RMSNorm): fp32 input copy, rsqrt, normalized, output; LayerNorm: input,
      fp32 mean and rstd, output.
    - attention, eager: Q, K and V expanded to all heads (``repeat_kv``), the fp32 softmax
      ``4·b·a·s²`` (+ its 16-bit copy ``2·b·a·s²`` under 16-bit compute), the output;
      flash / memory-efficient SDPA: Q, K, V (K/V at the KV-head width), output, an fp32
      log-sum-exp per row; no s² term (Dao et al. 2022).
    - MLP: SwiGLU keeps gate output, SiLU output, up output and their product (4·b·s·f);
      GPT-2's tanh GELU (written out in Python) 5·b·s·f; exact GELU 2; ReLU 1.

    Under the ``fused`` stack: FlashAttention always (FA-2 ``_flash_attn_forward`` saves q, k,
    v, out, softmax_lse and the RNG state; Dao 2023), fused norms (input + fp32 row
    statistics), a fused SwiGLU that saves its two inputs and recomputes the SiLU (Liger
    ``LigerSiLUMulFunction`` saves a and b; Megatron ``bias_swiglu``), a fused bias-GELU that
    saves its input (Megatron ``bias_gelu_impl``). Under tensor parallelism with sequence
    parallelism every term is split over ``tensor_parallel`` ranks (Korthikanti et al. 2022,
    sec. 4.2.2: ``sbh(34/t + 5as/h·1/t)`` per layer).

    Args:
        spec: the model's shapes.
        micro_batch: sequences per step on the device (b).
        seq_len: tokens per sequence (s).
        attention: the attention implementation (ignored by the fused stack: flash).
        precision: the precision layout (its compute dtype).
        selective: selective recomputation: the attention core (scores, softmax) is
            recomputed, so no s² term is kept (Korthikanti et al. 2022).
        lora_targets: with LoRA, frozen matrices do not save their inputs; adapters save
            their input and a rank-r intermediate.
        lora_rank: the adapter rank.
        stack: the kernels that run.
        tensor_parallel: the tensor-parallel degree (with sequence parallelism).
        fused_norm: fused norm kernels on the hf stack (torchtitan's Triton
            ``fused_rmsnorm`` saves x, weight and an fp32 rstd per row).
        quantized: QLoRA's 4-bit base (bitsandbytes ``Linear4bit``): its matmul keeps no
            input (``MatMul4Bit`` holds only the packed weight since bitsandbytes 0.43.2,
            PR #1270), and it returns its input's dtype (``.to(inp_dtype)``), so under
            autocast with the fp32 residual of ``prepare_model_for_kbit_training`` the MLP's
            intermediates are fp32 (measured in tests/test_memory_qlora.py).
        lora_dropout: PEFT's ``lora_dropout > 0``: each adapter runs ``lora_A(dropout(x))``
            on its own, keeping its dropout output (where no autocast cast replaces it)
            and the mask, so adapters reading one tensor no longer share it.
        mask_bytes: bytes per mask element (1: CUDA's bool mask; None: the dropped
            tensor's dtype, the CPU kernel's).
        dropout: the model's dropout on (``TrainingConfig.dropout``): the masks of the two
            hidden-state dropouts (their outputs go into a residual add, which keeps
            nothing) and, under eager attention, the probabilities' mask and the dropped
            probabilities the value matmul keeps (measured on BERT in
            tests/test_memory_encoder.py).

    Returns:
        The bytes of one block on one device.
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
    fused = stack is Stack.FUSED
    if fused:
        attention = Attention.FLASH

    def saved_input(*names: str) -> int:
        # A linear with a trainable weight saves its input; a frozen one does not.
        return cl if not frozen or any(n in (lora_targets or ()) for n in names) else 0

    def reads(names: tuple[str, ...], one_matrix: bool) -> int:
        # What the linears reading one tensor save of it. Where they take another dtype
        # than the tensor's (autocast's 16-bit inputs from the fp32 residual stream, fp8
        # inputs from bf16) each casts it itself: autocast caches only casts of leaf
        # weights, so q, k and v keep three copies (measured in
        # tests/test_memory_stacks.py). One fused matrix reads it once.
        kept = [n for n in names if saved_input(n)]
        if not kept:
            return 0
        # Under LoRA dropout each adapter keeps its own dropped-out copy.
        shared = one_matrix or fused or (cl == res and not lora_dropout)
        return cl * (1 if shared else len(kept))

    gpt2 = family == "gpt2"
    norm_out_attn = reads(
        ("q", "k", "v"), gpt2 or bool(_get(spec, "fused_qkv", False)) or bool(d["mla"])
    )
    mlp_kind = _enum_value(spec.mlp)
    norm_out_mlp = reads(
        ("gate", "up"),
        mlp_kind not in ("gated-silu", "gated-gelu")
        or bool(_get(spec, "fused_gate_up", False))
        or bool(d["Lm"]),
    )
    fnorm = fused or fused_norm
    placement = _enum_value(_get(spec, "block_norms", "pre"))
    if placement == "post":
        # OLMo 2 normalises the outputs of attention and of the MLP (h = x + norm(f(x))): the
        # projections read the residual stream itself, and each post-norm's output goes
        # into a residual add, which saves nothing.
        total = (norm_out_attn + norm_out_mlp) * t * h
        total += 2 * _norm_bytes(layernorm, t, h, c, 0, c, fnorm, frozen)
    else:
        total = _norm_bytes(layernorm, t, h, c, norm_out_attn, res, fnorm, frozen)
        total += _norm_bytes(layernorm, t, h, c, norm_out_mlp, res, fnorm, frozen)
        if placement == "sandwich":
            # Gemma 2/3 also normalise both outputs before the residual add.
            total += 2 * _norm_bytes(layernorm, t, h, c, 0, c, fnorm, frozen)
    # Gemma's RMSNorm multiplies by (1 + weight) in fp32 and OLMo 2's by its weight in fp32
    # before casting back: the normalized tensor they keep is fp32 whatever the compute
    # dtype (transformers Gemma3RMSNorm, Olmo2RMSNorm).
    fp32_normalized = (family.startswith("gemma") or family == "olmo2") and not fnorm and not frozen
    if fp32_normalized and not layernorm:
        norms = 4 if placement == "sandwich" else 2
        total += norms * (4 - c) * t * h
    qk_norm = _enum_value(_get(spec, "qk_norm", "none"))
    if qk_norm != "none" and not d["mla"]:
        # Qwen3 / Gemma 3 (per head) and OLMo 2 (over the projection) RMSNorm q and k after
        # their projections; the output feeds RoPE, which saves only its cos/sin tables.
        rows = a if qk_norm == "head" else 1
        total += _norm_bytes(False, t * rows, qd // rows, c, 0, c, fnorm, frozen)
        rows = kv if qk_norm == "head" else 1
        total += _norm_bytes(False, t * rows, kd // rows, c, 0, c, fnorm, frozen)
        if fp32_normalized:
            total += (4 - c) * t * (qd + kd)
    # Attention core.
    o_in = saved_input("o")
    fused_qkv_view = (
        not fused and bool(_get(spec, "fused_qkv", False)) and family != "gpt2" and not d["mla"]
    )
    if d["mla"]:
        eager = attention is Attention.EAGER and not selective
        total += _mla_activation_bytes(d, b, s, c, eager, saved_input("q"), o_in)
    elif attention is Attention.EAGER and not selective:
        total += 3 * c * t * qd  # Q, K and V expanded to all heads (copies for bmm)
        if family == "gpt2" and precision not in (Precision.AMP_FP16, Precision.AMP_BF16):
            # GPT-2's softmax runs in the compute dtype; autocast runs it in fp32 (its fp32
            # op list), like the others below (measured under the CPU's bf16 autocast).
            total += c * b * a * s * s
        else:
            total += 4 * b * a * s * s  # softmax in fp32 (HF eager attention)
            if c != 4:
                total += c * b * a * s * s  # the softmax cast back to the compute dtype
        total += o_in * t * qd  # the output made contiguous, o_proj's input
    else:
        total += c * t * (qd + 2 * kd)  # Q, K, V (K and V at the KV-head width)
        if fused_qkv_view:
            # Phi-3's V, saved by SDPA, is a view of qkv_proj's output (q and k are new
            # tensors after RoPE): the whole fused output stays alive.
            total += c * t * (qd + kd)
        total += 4 * b * a * s  # fp32 log-sum-exp per row and head
        # The kernel's output, saved by SDPA, is o_proj's input too (same storage);
        # a different dtype (fp8) is an extra copy.
        total += c * t * qd + (o_in * t * qd if o_in and o_in != c else 0)
        if quantized and o_in and res != c:
            # NOTE: measured (tests/test_memory_qlora.py): when the 4-bit projections hand
            # SDPA fp32 q, k, v under autocast, o_proj's adapter keeps a contiguous copy of
            # the kernel's output rather than sharing its storage.
            total += o_in * t * qd
        if lora_dropout and o_in:
            total += o_in * t * qd  # o's adapter keeps its dropped-out copy (measured)
    # MLP (per routed expert for MoE). 4-bit gate/up return the norm output's dtype.
    mc = res if quantized else c
    mlp = _enum_value(spec.mlp)
    if mlp in ("gated-silu", "gated-gelu"):  # SiLU and tanh-GELU both save their input
        # hf: gate out, SiLU out, up out (+ product, down's input); fused: gate and up outs.
        mlp_bytes = (2 if fused else 3) * mc * t * f + saved_input("down") * t * f
    elif mlp == "gelu":
        kept = 1 if fused else (4 if family == "gpt2" else 1)
        mlp_bytes = kept * mc * t * f + saved_input("down") * t * f
    else:  # relu saves its output, which is also the next linear's input
        mlp_bytes = mc * t * f
    if d["Lm"]:
        gather = saved_input("gate", "up")  # the experts' first matmul saves its input
        total += _moe_activation_bytes(d, t, c, mlp_bytes, gather, frozen, family)
    else:
        total += mlp_bytes
    if dropout:
        total += 2 * t * h * (mask_bytes or c)
        if attention is Attention.EAGER and not selective and not fused:
            # The dropped probabilities are what the value matmul keeps, unless autocast
            # casts them for it (the cast is counted above): then only the mask is new.
            autocast = precision in (Precision.AMP_FP16, Precision.AMP_BF16)
            probs = 4 if autocast else c
            total += b * a * s * s * ((0 if autocast else c) + (mask_bytes or probs))
    if lora_targets is not None:
        adapted = [n for n in ("q", "k", "v", "o", "gate", "up", "down") if n in lora_targets]
        total += len(adapted) * c * t * lora_rank  # A's output, saved by B
        if lora_dropout:
            # One mask per adapter, as wide as its input: the norm output (q, k, v, gate,
            # up), the attention output (o) or the MLP product (down).
            width = {"o": (qd, c), "down": (f, mc)}
            for n in adapted:
                d_in, dtype = width.get(n, (h, res))
                total += t * d_in * (mask_bytes or dtype)
    return math.ceil(total / tensor_parallel)


def block_matmuls(spec: ModelSpec) -> list[tuple[str, int, int, bool]]:
    """A dense block's weight matmuls in the order its forward runs them.

    Each entry is ``(name, out_width, in_width, plain)``: ``plain`` when the linear has no
    bias, so that ``aten.linear`` on a 3-D input dispatches to ``aten.mm`` (with a bias it
    is ``aten.addmm``), which is what torchtitan's op-level selective checkpointing counts.
    Order as the Hugging Face and torchtitan blocks call them: the attention projections
    (q, k, v; a fused qkv; MLA's q_a, q_b, kv_a, kv_b), the output projection, then the MLP
    (gate, up, down; a fused gate_up; up, down).
    """
    d = _shape_of(spec)
    h, a, kv, hd, f = d["h"], d["a"], d["kv"], d["hd"], d["f"]
    qd, kd = a * hd, kv * hd
    qkv_plain = not spec.qkv_bias
    out: list[tuple[str, int, int, bool]] = []
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
    elif _get(spec, "fused_qkv", False):
        out.append(("qkv", qd + 2 * kd, h, qkv_plain))
    else:
        out += [("q", qd, h, qkv_plain), ("k", kd, h, qkv_plain), ("v", kd, h, qkv_plain)]
    gpt2 = str(spec.family).lower() == "gpt2"
    out.append(("o", h, qd, not spec.out_bias and not gpt2))
    plain = not spec.mlp_bias and not gpt2
    if _get(spec, "fused_gate_up", False):
        out += [("gate_up", 2 * f, h, plain), ("down", h, f, plain)]
    elif _enum_value(spec.mlp) in ("gated-silu", "gated-gelu"):
        out += [("gate", f, h, plain), ("up", f, h, plain), ("down", h, f, plain)]
    else:
        out += [("up", f, h, plain), ("down", h, f, plain)]
    return out


def _saved_matmuls(spec: ModelSpec) -> list[tuple[str, int, int, bool]]:
    """The matmuls whose outputs torchtitan's op-level policy saves: every ``aten.mm`` but
    every second one (counted per block forward), never ``addmm``."""
    saved = []
    count = 0
    for mm in block_matmuls(spec):
        if mm[3]:
            count += 1
            if count % 2:
                saved.append(mm)
    return saved


def selective_op_recompute_share(spec: ModelSpec) -> float:
    """The share of a block's weight-GEMM FLOPs that op-level selective AC recomputes.

    Every matmul whose output is not saved (each second ``aten.mm``, every ``addmm``) runs
    again in backward (torchtitan ``_apply_ac_to_transformer_block``). Dense blocks; an MoE
    block's experts are taken at the same share as its dense projections.

    Args:
        spec: the model's shapes.

    Returns:
        Recomputed FLOPs / forward weight-GEMM FLOPs of one block, in [0, 1].
    """
    total = sum(o * i for _, o, i, _ in block_matmuls(spec))
    kept = sum(o * i for _, o, i, _ in _saved_matmuls(spec))
    d = _shape_of(spec)
    if d["Lm"]:
        # MoE layers: attention as a dense block; the router, the routed experts (grouped
        # GEMMs, always recomputed) and the shared experts replace the dense MLP.
        mlp = {"gate", "up", "down", "gate_up"}
        attn = [m for m in block_matmuls(spec) if m[0] not in mlp]
        attn_total = sum(o * i for _, o, i, _ in attn)
        attn_kept = sum(o * i for n, o, i, _ in _saved_matmuls(spec) if n not in mlp)
        h, fe = d["h"], d["fe"]
        width = (3 if _enum_value(spec.mlp) in ("gated-silu", "gated-gelu") else 2) * h * fe
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


@_per_spec
def selective_op_block_bytes(
    spec: ModelSpec,
    micro_batch: int,
    seq_len: int,
    attention: Attention,
    precision: Precision,
    *,
    stack: Stack = Stack.HF,
    tensor_parallel: int = 1,
) -> int:
    """Bytes one block keeps under torchtitan's op-level selective activation checkpointing.

    The policy (torchtitan ``_apply_ac_to_transformer_block`` with ``selective_ac_option =
    "op"``; ``_save_list``: ``aten.mm``, ``_scaled_dot_product_flash_attention``,
    ``_scaled_dot_product_efficient_attention``, ``reduce_scatter_tensor``, ``max``) keeps
    the outputs of those ops except every second ``mm``, and recomputes everything else.
    What stays alive per block is therefore:

    - the block's input (the non-reentrant checkpoint's argument, kept for the recompute);
    - the outputs of the odd-numbered bias-free matmuls (:func:`block_matmuls`); a
      row-parallel output under tensor parallelism is the full-width partial sum;
    - the fused SDPA's outputs: the attention output and the fp32 log-sum-exp per row and
      head (eager attention's ``bmm``/softmax are not on the list: recomputed);
    - under tensor parallelism with sequence parallelism, the two reduce-scatter outputs.

    Norms, RoPE, the activation function and the residual adds are recomputed, so the
    count does not depend on the kernel stack's norm or MLP kernels.

    NOTE: this is the policy torchtitan's published benchmarks ran (2024). Since 2025
    torchtitan saves every op of PyTorch's compute-intensive list (``addmm`` and ``bmm``
    always), counts ``linear`` with ``mm`` and force-recomputes the MoE router's matmul.

    Args:
        spec: the model's shapes.
        micro_batch: sequences per step on the device (b).
        seq_len: tokens per sequence (s).
        attention: the attention implementation (the fused stack always runs flash).
        precision: the precision layout (its compute and residual dtypes).
        stack: the kernel stack.
        tensor_parallel: the tensor-parallel degree (with sequence parallelism).

    Returns:
        The bytes one block keeps on one device.
    """
    d = _shape_of(spec)
    dt = _dtypes(precision)
    tp = tensor_parallel
    t = micro_batch * seq_len
    total = math.ceil(dt.residual * t * d["h"] / tp)  # the block input (sequence-parallel)
    mlp_names = {"gate", "up", "down", "gate_up"}
    dense_mlp = 0
    for name, width, _, _ in _saved_matmuls(spec):
        local = width if _is_row_parallel(name) else math.ceil(width / tp)
        if name in mlp_names:
            dense_mlp += dt.act * t * local
        else:
            total += dt.act * t * local
    if d["Lm"]:
        # MoE layers as transformers 5 and torchtitan run them: the router's matmul, the
        # routed experts as grouped GEMMs (``grouped_mm``, transformers' default experts
        # implementation; not on the save list, so recomputed), then the shared experts'
        # gate, up and down matmuls.
        gated = _enum_value(spec.mlp) in ("gated-silu", "gated-gelu")
        plain_attn = sum(1 for m in block_matmuls(spec) if m[3] and m[0] not in mlp_names)
        router = plain_attn + 1
        kept = d["E"] if router % 2 else 0
        if d["S"]:
            shared = [d["fe"] * d["S"]] * (2 if gated else 1) + [d["h"]]
            kept += sum(w for i, w in enumerate(shared) if (router + 1 + i) % 2)
        moe_mlp = dt.act * t * kept
        total += math.ceil(((d["L"] - d["Lm"]) * dense_mlp + d["Lm"] * moe_mlp) / d["L"])
    else:
        total += dense_mlp
    if stack is Stack.FUSED or attention is not Attention.EAGER:
        out = d["a"] * (d["dv"] if d["mla"] else d["hd"])
        total += math.ceil((dt.act * t * out + 4 * micro_batch * d["a"] * seq_len) / tp)
    if tp > 1:
        total += 2 * math.ceil(dt.act * t * d["h"] / tp)
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


@_per_spec
def _model_level_activation_bytes(
    spec: ModelSpec,
    b: int,
    s: int,
    precision: Precision,
    attention: Attention,
    full: bool,
    stack: Stack = Stack.HF,
    fused_norm: bool = False,
    frozen: bool = False,
    head_frozen: bool = False,
) -> int:
    """Embedding indices, position ids or tables and the final norm.

    Under full checkpointing the RoPE tables are arguments of the checkpointed blocks (kept
    by reference, not saved); GPT-2 passes its eager attention mask positionally, so the
    checkpoint saves it once. ``frozen``: the final norm's weight gets no gradient (LoRA);
    ``head_frozen``: nor does the LM head, whose matmul then keeps its weight, not its
    input (autograd's mm saves an operand only for the other's gradient).
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
        # cos and sin, shared by all layers, as wide as the rotary part of a head: MLA
        # rotates only its qk_rope_head_dim channels (transformers' DeepseekV3 tables),
        # partial rotary (Phi-4-mini) head_dim x partial_rotary_factor.
        rope = d["dr"] if d["mla"] else int(_get(spec, "rotary_dim", d["hd"]))
        total += 2 * s * rope * dt.act
    if full and family == "gpt2" and attention is Attention.EAGER and stack is Stack.HF:
        total += dt.act * b * s * s  # the additive causal mask
    layernorm = _enum_value(spec.norm) == "layernorm"
    fused = stack is Stack.FUSED or fused_norm
    head_in = 0 if head_frozen else dt.linear_in
    total += _norm_bytes(layernorm, t, d["h"], dt.act, head_in, dt.residual, fused, frozen)
    return total


class LossMemory(BaseModel):
    """What the loss keeps for backward and what it allocates while it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    saved_bytes: int = Field(description="alive from the loss's forward to its backward")
    output_bytes: int = Field(
        default=0,
        description="the model output's logits: alive at the end of the forward, dropped by "
        "the training loop before backward (HF Trainer's compute_loss returns the loss only)",
    )
    transient_bytes: int = Field(description="extra bytes while the loss backward runs")


# The loss of a pipeline rank without the LM head (built once: frozen).
_NO_LOSS = LossMemory(saved_bytes=0, output_bytes=0, transient_bytes=0)


@_per_spec
def loss_memory(
    spec: ModelSpec,
    b: int,
    s: int,
    precision: Precision,
    *,
    stack: Stack = Stack.HF,
    fused_loss: bool = False,
    tensor_parallel: int = 1,
    classify: bool = False,
) -> LossMemory:
    """Bytes of the LM head's output and the cross-entropy loss, per kernel choice.

    - ``hf``: the logits in the compute dtype (the model output), HF's ``ForCausalLMLoss``
      upcasts them to fp32 and log-softmax keeps its fp32 output; nll keeps int64 targets.
      The backward allocates the fp32 gradients of the log-probabilities and of the logits
      (``8·t·V``) before casting back.
    - ``fused`` (in-place fused cross-entropy: flash-attn ``CrossEntropyLoss`` saves logits,
      an fp32 log-sum-exp and labels and writes the gradient into the logits' storage;
      Megatron's vocab-parallel cross-entropy likewise): logits in the compute dtype + 4 B
      per token, no fp32 copy, no extra gradient buffer.
    - fused linear cross-entropy (``fused_loss``, Liger ``LigerFusedLinearCrossEntropy``;
      Hsu et al. 2024): the logits are never materialised. Chunks of
      ``next_pow2(ceil(t / ceil(V/h)))`` tokens are projected, their loss and gradients
      computed in the forward; it keeps ``grad_input`` (t x h, input dtype) and
      ``grad_weight`` (V x h, weight dtype; the LM head's gradient, allocated early). The
      transient is one chunk's logits (the kernel writes their gradient in place), the
      chunk's input gradient and an fp32 loss per token.

    Args:
        spec: the model's shapes.
        b: micro-batch (sequences).
        s: tokens per sequence.
        precision: the precision layout.
        stack: the kernel stack.
        fused_loss: a fused linear cross-entropy (any stack).
        tensor_parallel: vocabulary-parallel degree (Megatron splits the logits over it).
        classify: an encoder fine-tuned for sequence classification: no vocabulary logits.

    Returns:
        The saved and transient bytes on one device.
    """
    d = _shape_of(spec)
    t = b * s
    h, V = d["h"], math.ceil(d["V"] / tensor_parallel)
    dt = _dtypes(precision)
    c = dt.act
    if classify:
        # A sequence classifier on the pooled first token (BertForSequenceClassification):
        # the pooler's tanh output, its two fp32 logits' log-softmax and int64 labels.
        return LossMemory(
            saved_bytes=c * b * h + 4 * b * 2 + 8 * b, output_bytes=c * b * 2, transient_bytes=0
        )
    if fused_loss:
        chunk = min(t, 1 << max(0, math.ceil(math.log2(max(1, math.ceil(t / math.ceil(V / h)))))))
        saved = c * t * h + dt.weight * V * h
        # Liger's kernel computes the softmax gradient into the chunk's logits in place;
        # the fp32 loss per token lives until it is reduced.
        return LossMemory(saved_bytes=saved, transient_bytes=chunk * V * c + chunk * h * c + 4 * t)
    if stack is Stack.FUSED:
        return LossMemory(saved_bytes=c * t * V + 4 * t + 8 * t, transient_bytes=0)
    # NOTE: HF's ForCausalLMLoss upcasts the logits to fp32; cross-entropy's log-softmax
    # keeps its fp32 output for backward; nll_loss keeps int64 targets. The logits
    # themselves are kept by nothing autograd needs (the upcast saves nothing), so once the
    # training loop drops the model output they are gone before backward (measured).
    # Vocabulary-parallel (tensor_parallel > 1): PyTorch's loss_parallel, as torchtitan runs
    # it, computes log-softmax and NLL on each shard and its backward builds zeros_like(x),
    # exp(x), their sum and the product with the incoming gradient, all fp32, while the
    # saved output is alive (torch/distributed/tensor/parallel/loss.py,
    # _nll_loss_and_log_softmax_backward): three fp32 logit-sized temporaries, not two.
    transient = (8 if tensor_parallel == 1 else 12) * t * V
    return LossMemory(
        saved_bytes=4 * t * V + 8 * t + 4, output_bytes=c * t * V, transient_bytes=transient
    )


def _logits_bytes(spec: ModelSpec, b: int, s: int, precision: Precision) -> int:
    """Logits kept in the model output + the fp32 log-softmax the loss saves + targets (hf)."""
    loss = loss_memory(spec, b, s, precision)
    return loss.saved_bytes + loss.output_bytes


# --------------------------------------------------------------------------- the estimate


def _memory_of(optimizer: Technique | OptimizerMemory) -> tuple[OptimizerMemory, str]:
    if isinstance(optimizer, Technique):
        if optimizer.memory is None:
            raise UserError(f"{optimizer.id} is not an optimizer", "pick an optimizer id")
        return optimizer.memory, optimizer.id
    return optimizer, optimizer.state.value


def _check_layout(spec: ModelSpec, config: TrainingConfig, d: dict[str, int]) -> None:
    """Refuse layouts the engines cannot run, with what to change."""
    tp, pp, ep = config.tensor_parallel, config.pipeline_parallel, config.expert_parallel
    if tp > 1 and d["a"] % tp:
        raise UserError(
            f"tensor parallelism {tp} does not divide the {d['a']} attention heads",
            "pick a tensor-parallel degree that divides the number of heads",
        )
    if pp > d["L"]:
        raise UserError(
            f"pipeline parallelism {pp} exceeds the model's {d['L']} layers",
            "pick at most one pipeline stage per layer",
        )
    if ep > 1 and (d["E"] % ep or config.gpus % ep):
        raise UserError(
            f"expert parallelism {ep} must divide the {d['E']} experts and the "
            f"{config.gpus} data-parallel ranks",
            "pick an expert-parallel degree dividing both (1 for dense models)",
        )
    if config.optimizer_in_backward and config.grad_accumulation > 1:
        raise UserError(
            "the optimizer step fused into backward cannot accumulate gradients",
            "use gradient accumulation 1 with per-layer updates (LOMO, GaLore)",
        )


def _is_row_parallel(name: str) -> bool:
    # Megatron splits the output projection and the MLP's down projection along their input
    # (row-parallel); Q/K/V, gate and up along their output (column-parallel).
    return name in ("o", "down") or name.endswith("_down") or name.startswith("down")


# (ids of the input tensors, tp, ep, pp, stage, L, tied, the stage's blocks) -> (the input
# tensors, the result).
_LOCAL: dict[tuple[object, ...], tuple[tuple[ParamTensor, ...], tuple[ParamTensor, ...]]] = {}


def _local_tensors(
    tensors: list[ParamTensor],
    config: TrainingConfig,
    stage: str,
    d: dict[str, int],
    tied: bool,
    stage_layers: int | None = None,
) -> list[ParamTensor]:
    """:func:`_layout_tensors` for ``config``'s layout, memoised.

    NOTE: the plan search asks for the same layout's tensors thousands of times (every batch
    geometry and memory saver of it). The key is the layout alone, which is all that
    :func:`_layout_tensors` is given, and the identity of the input tensors: the entry keeps
    them alive, so their ids cannot be reused while it exists.
    """
    tp, ep, pp = config.tensor_parallel, config.expert_parallel, config.pipeline_parallel
    if stage_layers is None:
        stage_layers = d["L"] if pp == 1 else max(map(sum, pipeline_split(d["L"], pp)))
    key = (tuple(map(id, tensors)), tp, ep, pp, stage, d["L"], tied, stage_layers)
    hit = _LOCAL.get(key)
    if hit is None:
        if len(_LOCAL) > 4096:
            _LOCAL.clear()
        result = _layout_tensors(tensors, tp, ep, pp, stage, d["L"], tied, stage_layers)
        hit = _LOCAL[key] = (tuple(tensors), tuple(result))
    return list(hit[1])


def _layout_tensors(
    tensors: list[ParamTensor],
    tp: int,
    ep: int,
    pp: int,
    stage: str,
    layers: int,
    tied: bool,
    stage_layers: int,
) -> list[ParamTensor]:
    """The parameter tensors one device holds under the layout (before ZeRO sharding).

    ``stage`` is ``only`` without pipeline parallelism, else ``first``, ``middle`` or
    ``last``. Block tensors keep the ``stage_layers`` blocks of the stage
    (:func:`pipeline_split`); the embedding sits on the first stage, the final norm and LM
    head on the last (a tied head keeps a copy of the embedding there, as Megatron does).
    Tensor parallelism splits block matrices and the vocabulary by ``tp`` (norms and the
    router are replicated); expert parallelism splits the experts by ``ep``.
    """
    L = max(layers, 1)
    first, last = stage in ("only", "first"), stage in ("only", "last")
    out: list[ParamTensor] = []
    for t in tensors:
        shape = t.shape
        count = t.count
        if t.per_layer:
            count = math.ceil(count * stage_layers / L)
            if t.expert:
                count = math.ceil(count / ep)
            # The router and MLA's latent down-projections (q_a, kv_a) are replicated
            # across tensor-parallel ranks (Megatron-Core MLASelfAttention builds
            # linear_q_down_proj / linear_kv_down_proj with parallel_mode "duplicated").
            if len(shape) == 2 and tp > 1 and t.name not in ("router", "q_a", "kv_a"):
                if _is_row_parallel(t.name):
                    shape = (shape[0], math.ceil(shape[1] / tp))
                else:
                    shape = (math.ceil(shape[0] / tp), shape[1])
        else:
            head_side = t.role is Role.OUTPUT or t.name == "final_norm"
            if t.role is Role.EMBEDDING:
                keep = first or (last and tied and pp > 1)
            else:
                keep = last if head_side else first
            if not keep:
                continue
            if t.role in (Role.EMBEDDING, Role.OUTPUT) and len(shape) == 2 and tp > 1:
                shape = (math.ceil(shape[0] / tp), shape[1])  # vocabulary-parallel
        heads = math.ceil(t.heads / tp) if t.heads else 0
        out.append(ParamTensor(t.name, shape, t.role, count, heads, t.per_layer, t.expert))
    return out


@functools.lru_cache(maxsize=1024)
def pipeline_split(layers: int, pp: int, v: int = 1) -> tuple[tuple[int, ...], ...]:
    """The blocks of each model chunk: ``split[rank][chunk]`` for virtual stage ``chunk*pp+rank``.

    Layers that divide evenly into the ``pp x v`` chunks are split evenly (Megatron-LM
    requires it). Otherwise torchtitan's default split: the embedding and the LM head count
    as one block each, the ``L + 2`` units are dealt out evenly (the first chunks take the
    remainder) and the first and last chunk give up the unit of the embedding and the head
    (``generate_llm_fqn_per_model_part``, input and output weight 1). For Llama 3 405B's
    126 layers on 16 stages x 8 chunks this is the paper's split: "the first model chunk on
    the first stage has only the embedding, and the last model chunk on the last stage has
    only output projection and loss calculation" (Dubey et al. 2024, sec. 3.3.2).

    Args:
        layers: the model's blocks.
        pp: pipeline stages (ranks).
        v: model chunks per rank (interleaved schedule), 1 for plain 1F1B.

    Raises:
        UserError: when there are fewer units than chunks (torchtitan refuses empty stages).
    """
    chunks = pp * v
    if layers % chunks == 0:
        blocks = [layers // chunks] * chunks
    else:
        per_chunk, extra = divmod(layers + 2, chunks)
        if per_chunk < 1:
            raise UserError(
                f"{layers} layers cannot fill {pp} pipeline stages of {v} chunks each",
                "pick fewer pipeline or virtual stages",
            )
        blocks = [per_chunk + (1 if c < extra else 0) for c in range(chunks)]
        blocks[0] -= 1
        blocks[-1] -= 1
    return tuple(tuple(blocks[c * pp + r] for c in range(v)) for r in range(pp))


@functools.lru_cache(maxsize=4096)
def inflight_block_microbatches(
    split: tuple[tuple[int, ...], ...], rank: int, microbatches: int
) -> int:
    """The most block-micro-batches of activations ``rank`` holds over a step's schedule.

    1F1B (``v = 1``): rank ``r`` runs ``pp - r - 1`` warm-up forwards, then alternates one
    forward and one backward (Narayanan et al. 2021, sec. 2.2.1), so ``min(m, pp - r)``
    micro-batches are in flight. Interleaved 1F1B (``v > 1``) runs its chunks depth-first in
    rounds of ``N`` micro-batches (``N = m // max(1, m // pp)``, torch.distributed.pipelining's
    ``microbatches_per_round``; Megatron-LM's default group is ``pp``): ``(v-1) N + 2 (pp-r-1)``
    warm-up forwards (all ``v m`` when there are not more), then one forward and one backward
    per step. Forward ``k`` runs chunk ``(k // N) % v`` and backward ``k`` chunk
    ``v - 1 - (k // N) % v``, each adding or freeing that chunk's blocks. The schedule is
    replayed: with uneven chunks (Llama 3's embedding-only first chunk, a lighter last one)
    the peak need not be at the end of the warm-up. The steady steps repeat with period
    ``v N`` (both counts advance by ``N`` times the rank's blocks per period), so one period
    is replayed.
    """
    pp, v = len(split), len(split[0])
    blocks = split[rank]
    m = max(microbatches, 1)
    if v == 1:
        # NOTE: one chunk: every steady step adds and frees the same blocks, so the replay's
        # peak is the warm-up's min(m, pp - r - 1) micro-batches plus one (none when the
        # warm-up is all of them): min(m, pp - r), without replaying m steps.
        return min(m, pp - rank) * blocks[0]
    group = m // max(1, m // pp)
    warmup = min(v * m, (v - 1) * group + 2 * (pp - rank - 1))
    live = sum(blocks[(k // group) % v] for k in range(warmup))
    peak = live
    for k in range(min(v * m - warmup, v * group)):
        live += blocks[((warmup + k) // group) % v]
        peak = max(peak, live)
        live -= blocks[v - 1 - (k // group) % v]
    return peak


class _BlockSaves(NamedTuple):
    """What a stage's blocks keep for backward under a checkpointing mode, per micro-batch."""

    per_block: int  # one block's saved bytes (what backward works on at a time)
    per_microbatch: int  # the stage's blocks together
    recompute: int  # the working set of one block recomputed in backward
    note: str


def _block_saves(
    spec: ModelSpec, config: TrainingConfig, stage_layers: int, layer: int
) -> _BlockSaves:
    """The saved activations of ``stage_layers`` blocks of one micro-batch; ``layer`` is one
    block's bytes without checkpointing (:func:`layer_activation_bytes`)."""
    b, s, tp = config.micro_batch, config.seq_len, config.tensor_parallel
    block_input = math.ceil(_dtypes(config.precision).residual * b * s * _shape_of(spec)["h"] / tp)
    ckpt = config.checkpointing
    if ckpt is Checkpointing.FULL or (
        ckpt is Checkpointing.SELECTIVE_LAYER and config.ac_frequency == 1
    ):
        # Each block keeps its input; backward recomputes one block at a time.
        return _BlockSaves(
            block_input,
            stage_layers * block_input,
            layer,
            "full checkpointing: block inputs kept, one block recomputed at a time",
        )
    if ckpt is Checkpointing.SELECTIVE_LAYER:
        # torchtitan's layer-level selective AC wraps the n-th, 2n-th ... block in a full
        # checkpoint (a counter over the blocks, ``_count % ac_freq == 0``); the others keep
        # everything. The first block is checkpointed only when every block is.
        wrapped = stage_layers // config.ac_frequency
        return _BlockSaves(
            layer,
            (stage_layers - wrapped) * layer + wrapped * block_input,
            layer if wrapped else 0,
            f"selective-layer checkpointing: {wrapped} of {stage_layers} blocks fully "
            f"checkpointed (every {config.ac_frequency})",
        )
    if ckpt is Checkpointing.SELECTIVE_OP:
        # Op-level SAC keeps each block's input and the saved ops' outputs; backward
        # recomputes the rest of one block at a time: that block's working set minus what
        # it already keeps (the cached outputs are reused, not recomputed).
        per_block = selective_op_block_bytes(
            spec, b, s, config.attention, config.precision, stack=config.stack, tensor_parallel=tp
        )
        return _BlockSaves(
            per_block,
            stage_layers * per_block,
            max(layer - (per_block - block_input), 0),
            "selective-op checkpointing: block inputs and every other matmul's and the "
            "attention kernel's outputs kept (torchtitan's op-level SAC)",
        )
    return _BlockSaves(layer, stage_layers * layer, 0, "")


def saved_activation_bytes(spec: ModelSpec, config: TrainingConfig, stage_layers: int) -> int:
    """Bytes the ``stage_layers`` blocks of one micro-batch keep for backward under the
    configuration's checkpointing: what activation offloading streams to the host in forward
    and back in backward (the time model prices that traffic with this count).

    Args:
        spec: the model's shapes.
        config: micro-batch, sequence, precision, kernel stack, checkpointing, layout.
        stage_layers: the blocks on the device (all of them without pipeline parallelism).
    """
    adapters = config.task in (Task.LORA, Task.QLORA)
    layer = layer_activation_bytes(
        spec,
        config.micro_batch,
        config.seq_len,
        config.attention,
        config.precision,
        selective=config.checkpointing is Checkpointing.SELECTIVE,
        lora_targets=frozenset(config.lora_targets) if adapters else None,
        lora_rank=config.lora_rank,
        stack=config.stack,
        tensor_parallel=config.tensor_parallel,
        fused_norm=config.fused_norm,
        quantized=config.task is Task.QLORA,
        lora_dropout=adapters and config.lora_dropout > 0,
    )
    return _block_saves(spec, config, stage_layers, layer).per_microbatch


def estimate_memory(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None = None,
    lora_targets: frozenset[str] | None = None,
) -> MemoryEstimate:
    """Estimate the per-device peak memory of training ``spec`` under ``config``.

    The peak is the largest phase of a step (:data:`PHASES`); under pipeline parallelism it
    is the larger of the first stage (most activations in flight) and the last (LM head and
    loss).

    Args:
        spec: the model's shapes.
        config: the training configuration (precision, attention, kernel stack, memory
            savers, layout, micro-batch, sequence length ...).
        optimizer: the taxonomy entry of the optimizer (or its state signature); its
            ``memory`` fields drive the optimizer-state formula, so an extended taxonomy works.
        device: fixed device overheads; ``None`` means a CUDA device with the defaults of
            :class:`DeviceOverheads`; use ``DeviceOverheads.cpu()`` for none.
        lora_targets: what LoRA/QLoRA adapts (default: ``config.lora_targets``).

    Returns:
        The estimate, with every component named (see :data:`COMPONENTS`) and every phase.

    Raises:
        UserError: for a CNN spec, a non-optimizer technique, or a layout the model cannot
            be split into.
    """
    targets = frozenset(config.lora_targets) if lora_targets is None else lora_targets
    m = _estimate(spec, config, optimizer, device, targets, totals_only=False)
    assert isinstance(m, MemoryEstimate)
    return m


def _estimate(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None,
    lora_targets: frozenset[str],
    *,
    totals_only: bool,
) -> MemoryEstimate | MemoryTotals:
    """:func:`estimate_memory`, or with ``totals_only`` its three numbers alone."""
    d = _shape_of(spec)
    _check_layout(spec, config, d)
    pp = config.pipeline_parallel
    if pp == 1:
        return _estimate_stage(
            spec, config, optimizer, device, lora_targets, "only", d["L"], 0, totals_only
        )
    split = pipeline_split(d["L"], pp, config.virtual_stages)
    held = [inflight_block_microbatches(split, r, config.grad_accumulation) for r in range(pp)]
    # The first rank (embedding, most micro-batches in flight) and the last (LM head, loss)
    # are always candidates; a middle rank only when it holds more blocks or more
    # block-micro-batches than the first (Llama 3's lightened first chunk): the heaviest
    # of them, as the middle ranks differ in nothing else.
    ranks = [0, pp - 1]
    middle = max(range(1, pp - 1), key=lambda r: (held[r], sum(split[r])), default=None)
    if middle is not None and (held[middle] > held[0] or sum(split[middle]) > sum(split[0])):
        ranks.insert(1, middle)
    stages = [
        _estimate_stage(
            spec,
            config,
            optimizer,
            device,
            lora_targets,
            "first" if r == 0 else "last" if r == pp - 1 else "middle",
            sum(split[r]),
            held[r],
            totals_only,
        )
        for r in ranks
    ]
    worst = max(range(len(ranks)), key=lambda i: stages[i].total_bytes)
    last = stages[worst]
    if not isinstance(last, MemoryEstimate):
        return last  # memory_totals reads its numbers, not the note
    others = ", ".join(
        f"rank {r}: {est.total_bytes / 2**30:.1f} GiB"
        for i, (r, est) in enumerate(zip(ranks, stages, strict=True))
        if i != worst
    )
    note = (
        f"pipeline {pp} stages: rank {ranks[worst]} ({sum(split[ranks[worst]])} blocks) is the "
        f"largest ({others})"
    )
    return last.model_copy(update={"notes": [*last.notes, note]})


@dataclass(frozen=True)
class _StageStatic:
    """What one pipeline rank holds whatever the micro-batch: the layout's tensors, the
    weights, gradients, master weights and optimizer states (see :func:`_stage_static`)."""

    mem: OptimizerMemory
    opt_id: str
    dt: _Dtypes
    notes: tuple[str, ...]
    params: int
    d: dict[str, int]
    tp: int
    pp: int
    last: bool
    tensors: list[ParamTensor]
    local_params: int
    zeroth: bool
    adapters: bool
    n: int
    stage_zero: int
    bd: dict[str, int]
    p_t: int
    layer_bytes: int
    layer_trainable: int
    head_trainable: int
    head_cache: int  # the LM head's share of bd["weight_cache"]
    adapter_cache: int  # LoRA adapters' share of bd["weight_cache"] (trainable: cached)
    paged: int  # optimizer states in unified memory (not in bd["optimizer_states"])


# The configuration fields :func:`_stage_static` reads, besides whether gradients are
# accumulated (the rest act through activations, the loss, checkpointing, offload and the
# phases: tests/test_search_caches.py holds it).
_STATIC_FIELDS = (
    "task",
    "optimizer",
    "precision",
    "gpus",
    "sharding",
    "shard_group",
    "lora_rank",
    "optimizer_in_backward",
    "tensor_parallel",
    "pipeline_parallel",
    "expert_parallel",
)
_STATIC_VALUES = operator.attrgetter(*_STATIC_FIELDS)  # one C call per key
# (ids of the spec and the optimizer, LoRA targets, stage, its blocks, accumulation or not,
# the fields read) -> (the spec and the optimizer, kept alive so their ids are not reused;
# the rank's fixed part).
_STATIC: dict[tuple[object, ...], tuple[tuple[object, ...], _StageStatic]] = {}


def _static_of(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Technique | OptimizerMemory,
    lora_targets: frozenset[str],
    stage: str,
    stage_layers: int,
) -> _StageStatic:
    """:func:`_stage_static`, memoised.

    NOTE: the plan search estimates each layout and optimizer at many micro-batches and
    memory savers; this part reads none of them (about half of a fit test's work).
    """
    key = (
        id(spec),
        id(optimizer),
        lora_targets,
        stage,
        stage_layers,
        config.grad_accumulation > 1,
        _STATIC_VALUES(config),
    )
    hit = _STATIC.get(key)
    if hit is None:
        if len(_STATIC) > 4096:
            _STATIC.clear()
        value = _stage_static(spec, config, optimizer, lora_targets, stage, stage_layers)
        hit = _STATIC[key] = ((spec, optimizer), value)
    return hit[1]


def _stage_static(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Technique | OptimizerMemory,
    lora_targets: frozenset[str],
    stage: str,
    stage_layers: int,
) -> _StageStatic:
    mem, opt_id = _memory_of(optimizer)
    dt = _dtypes(config.precision)
    notes: list[str] = []
    full_tensors = param_tensors(spec)
    params = _count(full_tensors)
    d = _shape_of(spec)
    L = d["L"]
    tp, pp = config.tensor_parallel, config.pipeline_parallel
    last = stage in ("only", "last")
    tensors = _local_tensors(
        full_tensors, config, stage, d, bool(spec.tie_word_embeddings), stage_layers
    )
    local_params = _count(tensors)
    zeroth = mem.state is StateKind.SEED
    adapters = config.task in (Task.LORA, Task.QLORA)
    if config.sharding is Sharding.HSDP:
        n = config.shard_group or min(config.gpus, 8)
        if config.shard_group is None:
            notes.append(f"hybrid sharding: shard group of {n} devices (one node) assumed")
    else:
        n = config.gpus if config.sharding is not Sharding.NONE else 1
    stage_zero = config.sharding.zero_stage
    if config.sharding is not Sharding.NONE and n == 1:
        notes.append("sharding over 1 device divides nothing")
    # Pipeline engines accumulate a step's micro-batches into unsharded gradients, reduced
    # once at the end. torch.distributed.pipelining (torchtitan) runs every backward but the
    # last with FSDP2's gradient sync and reshard-after-backward off (stage.py,
    # ``backward_maybe_with_nosync``): parameters stay gathered and gradients accumulate
    # unsharded in the reduce dtype (``FSDPParam.to_accumulated_grad_if_needed``; torchtitan
    # reduces in fp32). Megatron-LM accumulates into an fp32 ``main_grad`` buffer
    # (``accumulate_allreduce_grads_in_fp32``, forced on with bf16) and its distributed
    # optimizer shards states and master weights only (ZeRO-1).
    pipelined = (
        pp > 1
        and config.grad_accumulation > 1
        and config.sharding in (Sharding.NONE, Sharding.ZERO1, Sharding.FSDP, Sharding.HSDP)
    )
    if pipelined and stage_zero > 1:
        stage_zero = 1
        notes.append(
            "FSDP under pipeline parallelism: parameters stay gathered and gradients "
            "unsharded across the step's micro-batches (torch.distributed.pipelining)"
        )

    def shard(x: float, from_stage: int) -> int:
        # ZeRO (Rajbhandari et al. 2020): stage 1 partitions optimizer states (and the fp32
        # master copy), stage 2 also gradients, stage 3 also the parameters.
        return math.ceil(x / n) if stage_zero >= from_stage else math.ceil(x)

    bd = dict.fromkeys(COMPONENTS, 0)
    # ---- weights and what is trainable
    if adapters:
        # Adapters follow their blocks onto the pipeline stage (tiny; replicated under TP).
        trainable = [
            ParamTensor(t.name, t.shape, t.role, math.ceil(t.count * stage_layers / max(L, 1)))
            for t in lora_tensors(spec, config.lora_rank, lora_targets)
        ]
        # PEFT's modules_to_save trains a deep copy of the module and keeps the frozen
        # original beside it (peft.utils.other.ModulesToSaveWrapper.update): the copy is
        # counted with the adapters, the original with the base weights.
        full = lora_full_tensors(tensors, lora_targets)
        trainable += full
        p_t = _count(trainable)
        adapter_weights = p_t * dt.weight
        # One block's share: its adapters (the whole tensors trained beside them are not
        # in a block).
        block_adapters = (p_t - _count(full)) * dt.weight
        layer_bytes = _count(tensors, per_layer=True) * dt.weight + block_adapters
        if config.task is Task.QLORA:
            quantized = sum(t.numel * t.count for t in tensors if t.per_layer and t.shape[1:])
            rest = local_params - quantized
            # NOTE: peft's prepare_model_for_kbit_training casts every parameter that is not
            # 4-bit to fp32 (what autocast layouts keep); 16-bit layouts keep them 16-bit.
            bd["weights"] = shard(quantized * _NF4_BYTES + rest * dt.weight + adapter_weights, 3)
            vectors = _count(tensors, per_layer=True) - quantized
            layer_bytes = int(
                quantized * (_NF4_BYTES + _NF4_CONSTANT_BITS / 8)
                + vectors * dt.weight
                + block_adapters
            )
            bd["quantization_constants"] = shard(quantized * _NF4_CONSTANT_BITS / 8, 3)
            notes.append(
                "QLoRA: block matrices in 4-bit NF4 (0.5 B/param) + double-quantized "
                "constants (0.127 bit/param); embeddings, norms, LM head in the weight dtype "
                "(fp32 under autocast: peft's prepare_model_for_kbit_training)"
            )
        else:
            bd["weights"] = shard(local_params * dt.weight + adapter_weights, 3)
        matrices = sorted(n for n in lora_targets if n not in ("embed", "lm_head"))
        notes.append(f"LoRA rank {config.lora_rank} on {', '.join(matrices)} of every layer")
        if full:
            notes.append(
                "trained in full beside the adapters (PEFT modules_to_save, a trainable copy "
                "next to the frozen original): " + ", ".join(t.name for t in full)
            )
    else:
        trainable = tensors
        p_t = local_params
        bd["weights"] = shard(local_params * dt.weight, 3)
        layer_bytes = _count(tensors, per_layer=True) * dt.weight
    p_t_grad = 0 if zeroth else p_t
    if zeroth:
        notes.append("zeroth-order: no gradients, no stored activations (Malladi et al. 2023)")
    # ---- autocast / fp8 weight copies of the linear layers
    head_cache = adapter_cache = 0
    if dt.weight_cache:
        # QLoRA's 4-bit matrices are dequantized inside bitsandbytes' matmul and never
        # kept in 16 bits (MatMul4Bit saves the packed weight); its head is not quantized.
        linear = 0
        if config.task is not Task.QLORA:
            linear = sum(t.numel * t.count for t in tensors if t.per_layer and t.shape[1:])
        # LoRA's adapters are linear weights too (trainable: cast, cached and saved like a
        # full model's; measured with PEFT in tests/test_memory_stacks.py).
        adapter_params = sum(t.numel * t.count for t in trainable if t.per_layer)
        linear += adapter_params if adapters else 0
        # The LM head: its own matrix, or the embedding it is tied to (cast like any other
        # linear weight; measured under autocast for tied GPT-2 and OPT).
        head_role = Role.EMBEDDING if last and spec.tie_word_embeddings else Role.OUTPUT
        head = sum(t.numel * t.count for t in tensors if t.role is head_role)
        # NOTE: autocast casts the weights a block runs with: under ZeRO-3/FSDP the
        # gathered ones. FSDP frees its gathered copy after the block; the cast stays,
        # cached and saved for backward, so it is not divided by the shard group
        # (measured with FSDP2 over 2 gloo ranks: all blocks' unsharded bf16 copies alive
        # at the end of the forward). Transformer Engine's fp8 workspaces follow the
        # parameters' sharding.
        notes.append("autocast keeps 16-bit (fp8: 8-bit) copies of the linear weights")
        autocast = config.precision in (Precision.AMP_FP16, Precision.AMP_BF16)
        every, of_head = (linear + head) * dt.weight_cache, head * dt.weight_cache
        if autocast:
            bd["weight_cache"], head_cache = math.ceil(every), math.ceil(of_head)
            if adapters:
                adapter_cache = math.ceil(adapter_params * dt.weight_cache)
            if stage_zero == 3 and n > 1:
                notes.append(
                    "autocast casts the gathered weights: their 16-bit copies are not sharded "
                    "(cached through the forward, saved for backward); --precision "
                    "bf16-mixed (FSDP's MixedPrecisionPolicy(param_dtype=bf16), DeepSpeed's "
                    "bf16 mode) gathers 16-bit weights instead"
                )
        else:
            bd["weight_cache"], head_cache = shard(every, 3), shard(of_head, 3)
    # ---- gradients, master weights, optimizer states
    layer_trainable = sum(t.numel * t.count for t in trainable if t.per_layer)
    head_trainable = p_t - layer_trainable  # embedding / LM head / final norm of this stage
    grad_bytes = 4 if pipelined and dt.master else dt.grad  # fp32 accumulation (see above)
    grad_full = shard(p_t_grad * grad_bytes, 2)
    if config.optimizer_in_backward and not zeroth:
        # Per-layer updates (LOMO, Lv et al. 2023; GaLore, Zhao et al. 2024): each block's
        # gradients are stepped and freed as soon as they are ready: at most the block being
        # stepped and the next one's, or the embedding / head group, exist at once.
        block = layer_trainable / max(stage_layers, 1) * dt.grad
        bd["gradients"] = math.ceil(max(block, head_trainable * dt.grad) + block)
        notes.append("optimizer step fused into backward: per-layer gradients only")
    else:
        bd["gradients"] = grad_full
    master = p_t * dt.master if not zeroth else 0
    bd["master_weights"] = shard(master, 1)
    state_bytes = optimizer_state_bytes(mem, trainable, state_dtype_bytes=dt.state)
    bd["optimizer_states"] = shard(state_bytes, 1)
    # What a paged optimizer allocates with cudaMallocManaged leaves torch's allocator (and
    # the peak); the small tensors' states and the absmax stay in it.
    paged = min(shard(paged_state_bytes(mem, trainable), 1), bd["optimizer_states"])
    bd["optimizer_states"] -= paged
    return _StageStatic(
        mem=mem,
        opt_id=opt_id,
        dt=dt,
        notes=tuple(notes),
        params=params,
        d=d,
        tp=tp,
        pp=pp,
        last=last,
        tensors=tensors,
        local_params=local_params,
        zeroth=zeroth,
        adapters=adapters,
        n=n,
        stage_zero=stage_zero,
        bd=bd,
        p_t=p_t,
        layer_bytes=layer_bytes,
        layer_trainable=layer_trainable,
        head_trainable=head_trainable,
        head_cache=head_cache,
        adapter_cache=adapter_cache,
        paged=paged,
    )


def _estimate_stage(
    spec: ModelSpec,
    config: TrainingConfig,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None,
    lora_targets: frozenset[str],
    stage: str,
    stage_layers: int,
    held_blocks: int,
    totals_only: bool = False,
) -> MemoryEstimate | MemoryTotals:
    """One pipeline rank's estimate: ``stage_layers`` blocks, ``held_blocks`` block-micro-
    batches of activations in flight (:func:`inflight_block_microbatches`; unused without
    pipeline parallelism)."""
    st = _static_of(spec, config, optimizer, lora_targets, stage, stage_layers)
    mem, opt_id, dt, params, d = st.mem, st.opt_id, st.dt, st.params, st.d
    tp, pp, last, tensors, local_params = st.tp, st.pp, st.last, st.tensors, st.local_params
    zeroth, adapters, n, stage_zero, p_t = st.zeroth, st.adapters, st.n, st.stage_zero, st.p_t
    layer_bytes, layer_trainable, head_trainable = (
        st.layer_bytes,
        st.layer_trainable,
        st.head_trainable,
    )
    notes = list(st.notes)
    bd = dict(st.bd)
    device = device or DeviceOverheads()
    b, s = config.micro_batch, config.seq_len

    def shard(x: float, from_stage: int) -> int:
        # ZeRO (Rajbhandari et al. 2020): as in _stage_static.
        return math.ceil(x / n) if stage_zero >= from_stage else math.ceil(x)

    if config.dp_sgd and not zeroth:
        bd["per_sample_gradients"] = b * p_t * dt.grad
        notes.append("DP-SGD: per-sample gradients b x P_t (Abadi et al. 2016; Opacus)")
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
        stack=config.stack,
        tensor_parallel=tp,
        fused_norm=config.fused_norm,
        quantized=config.task is Task.QLORA,
        lora_dropout=adapters and config.lora_dropout > 0,
        mask_bytes=device.dropout_mask_bytes,
        dropout=config.dropout and not zeroth,
    )
    ckpt = Checkpointing.NONE if zeroth else config.checkpointing
    # Every block wrapped in a full checkpoint (selective-layer with frequency 1 is full).
    full_ckpt = ckpt is Checkpointing.FULL or (
        ckpt is Checkpointing.SELECTIVE_LAYER and config.ac_frequency == 1
    )
    head_frozen = adapters and (
        "embed" not in lora_targets if spec.tie_word_embeddings else "lm_head" not in lora_targets
    )
    model_level = _model_level_activation_bytes(
        spec,
        b,
        s,
        config.precision,
        config.attention,
        full_ckpt,
        config.stack,
        config.fused_norm,
        adapters,
        head_frozen,
    )
    if config.dropout and not zeroth:
        # The embedding output's dropout mask (its output is the first block's input).
        model_level += b * s * d["h"] * (device.dropout_mask_bytes or dt.residual)
    loss = (
        loss_memory(
            spec,
            b,
            s,
            config.precision,
            stack=config.stack,
            fused_loss=config.fused_loss,
            tensor_parallel=tp,
            classify=_enum_value(spec.arch) == "encoder" and config.task is not Task.PRETRAIN,
        )
        if last
        else _NO_LOSS
    )
    # The rank's schedule keeps ``held_blocks`` block-micro-batches of activations alive
    # (inflight_block_microbatches); ``inflight`` is that in micro-batches of the whole stage.
    inflight = 1.0
    if pp > 1:
        inflight = held_blocks / stage_layers if stage_layers else 1.0
        schedule = "interleaved 1F1B" if config.virtual_stages > 1 else "1F1B"
        notes.append(
            f"{schedule}: {held_blocks} block-micro-batches of activations in flight on this "
            f"rank's {stage_layers} blocks"
        )
    if zeroth:
        # Inference-like: one block's forward working set, logits and the fp32 upcast.
        per_block, stored_blocks = layer, layer
    else:
        saved = _block_saves(spec, config, stage_layers, layer)
        per_block = saved.per_block
        stored_blocks = math.ceil(saved.per_microbatch * inflight)
        bd["recompute"] = saved.recompute
        if saved.note:
            notes.append(saved.note)
    if config.activation_offload and not zeroth and stored_blocks > 2 * per_block:
        # Saved activations stream to host memory and back; the device keeps the block in
        # use and the one being prefetched (torchtune / torchao activation offloading).
        kept = 2 * per_block
        host_activations = stored_blocks - kept
        stored_blocks = kept
        notes.append("activations offloaded to host memory: two blocks' worth kept on device")
    else:
        host_activations = 0
    bd["activations"] = stored_blocks + (0 if zeroth else model_level)
    bd["logits"] = loss.saved_bytes + loss.output_bytes
    # ---- transient: the larger of the loss backward and the optimizer step's temporaries
    loss_tr = 0 if zeroth else loss.transient_bytes
    step_tr = 0
    impl = config.optimizer_impl
    if mem.state not in (StateKind.NONE, StateKind.SEED) and not fused_step_on(
        mem, config.stack, impl
    ):
        # NOTE: torch's foreach/multi-tensor steps allocate one temporary per parameter of
        # the local shard (e.g. Adam's denominator) in the dtype of what they step: fp32
        # parameters or masters 4 B, bare 16-bit parameters 2 B (measured in
        # tests/test_memory_stacks.py); stepped per layer in backward, one block's worth.
        # Fused kernels update in place: no temporary.
        step_tr = shard(p_t * dt.state, 1)
        if config.optimizer_in_backward:
            step_tr = math.ceil(
                max(layer_trainable / max(stage_layers, 1), head_trainable) * dt.state
            )
    if (
        dt.master
        and not zeroth
        and not config.optimizer_in_backward
        and config.sharding in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3)
    ):
        # DeepSpeed's ZeRO optimizers step fp32 master partitions with fp32 gradients: right
        # before the step they flatten this rank's 16-bit gradient partition into a new
        # buffer and cast that to fp32, both alive at once beside the 16-bit gradients
        # (runtime/zero/stage_1_and_2.py step: flatten(averaged_gradients).to(fp32);
        # stage3.py likewise): 2 + 4 bytes per parameter of the partition (measured with
        # DeepSpeed 0.19.8 on the CPU, stages 1-3, in tests/test_memory_finetune.py). The
        # 16-bit copy is freed before the optimizer runs beside the fp32 gradients.
        step_tr = max(shard(p_t * (dt.grad + 4), 1), shard(p_t * 4, 1) + step_tr)
    # The gradient flowing through the blocks: the incoming gradient of a block's output
    # and the one it computes for its input, both residual-stream sized (measured on a full
    # checkpointing step: the recomputed block's backward peaks with these two alive).
    block_input = math.ceil(dt.residual * b * s * d["h"] / tp)
    grad_flow = 0 if zeroth else 2 * block_input
    if (
        not zeroth
        and config.stack is Stack.HF
        and str(spec.family).lower() == "gpt2"
        and _enum_value(spec.mlp) == "gelu"
    ):
        # GPT-2's tanh GELU is written out in Python: its backward walks a chain of
        # elementwise ops, each making a b·s·f gradient before the saved inputs it frees
        # (three alive at once, measured on a full step in tests/test_memory_stacks.py).
        grad_flow += math.ceil(3 * dt.act * b * s * d["f"] / tp)
    if config.task is Task.QLORA and not zeroth:
        # bitsandbytes runs a 4-bit matmul of more than 1536 rows as dequantize + F.linear
        # (backends/cuda/ops.py _dequant_linear_fallback; the default backend, the CPU's,
        # always) and dequantizes again for the input gradient (MatMul4Bit.backward): one
        # whole matrix in the compute dtype beside the fp32 block scales double
        # quantization rebuilds (two n/64 tensors) at a time, the largest one's at most.
        n = max((t.numel for t in tensors if t.per_layer and len(t.shape) == 2), default=0)
        grad_flow += math.ceil(n * dt.act + 8 * n / 64)
    bd["transient"] = max(loss_tr, step_tr, grad_flow)
    # ---- offload and ZeRO-3 gathering
    off_host = 0
    fsdp_backward = 0
    layer_weights = layer_bytes // max(stage_layers, 1)  # one block's weights as stored
    gathered_layers = min(2, stage_layers)  # current + prefetched block
    paged = st.paged
    if config.offload is not Offload.NONE:
        # Offloaded states live on the host whether or not the optimizer would page them.
        off_host += bd["master_weights"] + bd["optimizer_states"] + paged
        paged = 0
        if dt.master:
            off_host += shard(p_t * 4, 2)  # fp32 gradients for the CPU step (Ren et al. 2021)
        bd["master_weights"] = bd["optimizer_states"] = 0
        if not config.optimizer_in_backward and not zeroth:
            # ZeRO-Offload streams each reduced gradient bucket to the host as backward makes
            # it (Ren et al. 2021, sec. 4.1; DeepSpeed's reduce bucket, 5e8 elements by
            # default): the device holds one bucket, never the whole gradient.
            bd["gradients"] = min(bd["gradients"], math.ceil(OFFLOAD_BUCKET_ELEMENTS * dt.grad))
        step_tr = 0
        bd["transient"] = max(loss_tr, grad_flow)
        notes.append("optimizer states and master weights offloaded to host memory")
    if config.offload.params:
        off_host += bd["weights"]
        bd["weights"] = 0
        bd["gathered_parameters"] = gathered_layers * layer_weights
        notes.append("parameters offloaded: two blocks' weights on the device at a time")
    elif stage_zero == 3 and n > 1:
        # The non-local part of the gathered blocks (FSDP / ZeRO-3 all-gather buffers).
        bd["gathered_parameters"] = int(gathered_layers * layer_weights * (1 - 1 / n))
        if config.sharding in (Sharding.FSDP, Sharding.HSDP) and pp == 1:
            # FSDP keeps its root unit (what no block owns: embedding, final norm, LM head)
            # unsharded from the forward through the backward: FSDP2's lazy init sets the
            # root's post-forward mesh to None ("for the root, do not reshard after forward",
            # _fsdp_state.py; unconditionally in 2024 releases, by default since), and
            # torchtitan shards the model root last, around those modules.
            # The root's bytes as they are stored (QLoRA keeps them 16-bit beside NF4 blocks).
            root_bytes = dt.weight
            root = (local_params - _count(tensors, per_layer=True)) * root_bytes
            # FSDP2 all-gathers into a full-size buffer beside the local shard, so the whole
            # root is counted. NOTE: the blocks above count only their non-local part.
            bd["gathered_parameters"] += math.ceil(root)
            if not zeroth and not adapters:
                # FSDP2's foreach_reduce copies a block's unsharded gradients into one
                # reduce-scatter input in the reduce dtype (fp32 in torchtitan's mixed
                # precision) before freeing them; the LM head's unsharded gradient waits for
                # the root's reduce-scatter at the end of the backward.
                block_grads = layer_trainable / max(stage_layers, 1)
                reduce = 4 if dt.master else dt.grad
                head = sum(t.numel * t.count for t in tensors if t.role is Role.OUTPUT)
                if spec.tie_word_embeddings:
                    head = sum(t.numel * t.count for t in tensors if t.role is Role.EMBEDDING)
                fsdp_backward = math.ceil(
                    block_grads * (dt.grad + reduce) + head * dt.grad * (1 - 1 / n)
                )
                notes.append(
                    "FSDP: root unit (embedding, LM head) unsharded through the step; one "
                    "block's gradients + reduce-scatter input in backward"
                )
    host = host_activations + (0 if config.offload.nvme else off_host)
    nvme = off_host if config.offload.nvme else 0
    if nvme:
        notes.append("offloaded states live on NVMe (ZeRO-Infinity, Rajbhandari et al. 2021)")
    # ---- phases: what is alive when
    phases = _phases(
        bd,
        config,
        zeroth=zeroth,
        grads_persistent=_grads_persistent(config),
        head_grad=shard(head_trainable * dt.grad, 2) if not zeroth else 0,
        model_level=model_level,
        per_block=per_block,
        loss_tr=loss_tr,
        loss_saved=loss.saved_bytes,
        grad_flow=grad_flow + fsdp_backward,
        step_tr=step_tr,
        inflight=inflight,
        head_cache=st.head_cache,
        adapter_cache=st.adapter_cache,
    )
    peak_tensors = max(sum(p.values()) for p in phases.values())
    bd["cuda_context"] = device.cuda_context_bytes
    bd["workspace"] = device.workspace_bytes
    bd["allocator_reserve"] = int(peak_tensors * device.allocator_reserve_fraction)
    overheads = {k: bd[k] for k in OVERHEAD_COMPONENTS}
    if totals_only:
        # What a fit test reads (memory_totals): every phase carries the same overheads, so
        # the peak is the largest tensor sum plus them. Neither the phases nor the model
        # are built.
        return MemoryTotals(peak_tensors + sum(overheads.values()), host, nvme, paged)
    phase_list = [
        Phase(
            name=name,
            components={**parts, **overheads},
            total_bytes=sum(parts.values()) + sum(overheads.values()),
        )
        for name, parts in phases.items()
    ]
    peak = max(phase_list, key=lambda p: p.total_bytes)
    if paged:
        notes.append(
            f"paged optimizer states: {paged / 2**30:.1f} GiB in CUDA unified memory, outside "
            "the peak (torch's allocator never sees them); the device keeps what the peak "
            "leaves free, the rest moves over PCIe every step"
        )
    notes.append(optimizer_note(opt_id, mem))
    notes.append(
        f"kernel stack {config.stack.value}" + (", fused loss" if config.fused_loss else "")
    )
    return MemoryEstimate(
        total_bytes=peak.total_bytes,
        breakdown=bd,
        phases=phase_list,
        peak_phase=peak.name,
        stack=config.stack,
        parameters=params,
        trainable_parameters=p_t
        if pp == 1 and tp == 1
        else _trainable_total(spec, config, lora_targets),
        host_bytes=host,
        nvme_bytes=nvme,
        paged_bytes=paged,
        notes=notes,
    )


class MemoryTotals(NamedTuple):
    """What a fit test reads of an estimate: its peak and what it offloads."""

    total_bytes: int
    host_bytes: int
    nvme_bytes: int
    paged_bytes: int = 0


def memory_totals(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    optimizer: Technique | OptimizerMemory,
    device: DeviceOverheads | None = None,
    lora_targets: frozenset[str] | None = None,
) -> MemoryTotals:
    """:func:`estimate_memory`'s ``total_bytes``, ``host_bytes`` and ``nvme_bytes``, the
    same numbers, without building the phases (about 40% of the work).

    NOTE: the plan search's binary searches over the micro-batch ask only whether a plan
    fits, thousands of times; most of those plans are never shown.
    """
    targets = frozenset(config.lora_targets) if lora_targets is None else lora_targets
    m = _estimate(spec, config, optimizer, device, targets, totals_only=True)
    assert isinstance(m, MemoryTotals)
    return m


def optimizer_note(opt_id: str, mem: OptimizerMemory) -> str:
    """The note naming the optimizer, the only part of an estimate that reads its id (the
    plan search shares one estimate among optimizers with the same state signature)."""
    return f"optimizer {opt_id}: state {mem.state.value}"


def _trainable_total(spec: ModelSpec, config: TrainingConfig, targets: frozenset[str]) -> int:
    adapters = config.task in (Task.LORA, Task.QLORA)
    return _trainable_count(spec, adapters, config.lora_rank if adapters else 0, targets)


@_per_spec
def _trainable_count(spec: ModelSpec, adapters: bool, rank: int, targets: frozenset[str]) -> int:
    if adapters:
        full = lora_full_tensors(param_tensors(spec), targets)
        return _count(lora_tensors(spec, rank, targets)) + _count(full)
    return _count(param_tensors(spec))


def trainable_parameter_count(spec: ModelSpec, config: TrainingConfig) -> int:
    """Parameters that get gradients: all of them, or LoRA's adapters (on
    ``config.lora_targets``) and the whole tensors trained beside them."""
    return _trainable_total(spec, config, frozenset(config.lora_targets))


# DeepSpeed's default ``reduce_bucket_size`` (elements), the gradient a ZeRO-Offload device
# holds at once (https://www.deepspeed.ai/docs/config-json/, zero_optimization; advisor/export/
# writes the same value into the exported config).
OFFLOAD_BUCKET_ELEMENTS = 500_000_000


def _grads_persistent(config: TrainingConfig) -> bool:
    """Whether gradients stay allocated through the forward pass.

    They do with gradient accumulation (summed across micro-batches), under DDP (gradients
    are views into persistent all-reduce buckets, ``gradient_as_bucket_view``) and under
    ZeRO-1/2 (DeepSpeed's persistent gradient partitions and reduce buckets). A single
    device or FSDP/ZeRO-3 with ``zero_grad(set_to_none=True)`` (torch's default since 2.0)
    frees them after each step.
    """
    if config.optimizer_in_backward:
        return False
    if config.offload is not Offload.NONE:
        return True  # the offload reduce bucket is allocated once and kept
    if config.grad_accumulation > 1:
        return True
    return config.gpus > 1 and config.sharding.zero_stage < 3


def fused_step_on(
    mem: OptimizerMemory, stack: Stack, impl: OptimizerImpl = OptimizerImpl.AUTO
) -> bool:
    """Whether the step runs a fused in-place kernel: bitsandbytes' 8-bit optimizers always
    do (they have no other implementation); torch's ``fused=True`` ones unless foreach is
    asked for (``auto`` is fused where a fused kernel exists, on every stack: see
    :class:`~advisor.config.OptimizerImpl`). ``stack`` is kept for the callers' sake."""
    del stack
    if not mem.fused_step:
        return False
    return mem.state is StateKind.QUANTIZED_BLOCKWISE or impl is not OptimizerImpl.FOREACH


def _phases(
    bd: dict[str, int],
    config: TrainingConfig,
    *,
    zeroth: bool,
    grads_persistent: bool,
    head_grad: int,
    model_level: int,
    per_block: int,
    loss_tr: int,
    loss_saved: int,
    grad_flow: int,
    step_tr: int,
    inflight: float,
    head_cache: int = 0,
    adapter_cache: int = 0,
) -> dict[str, dict[str, int]]:
    """The tensor components alive in each phase of one step (overheads added by the caller).

    Backward walks the blocks from the last to the first: at its start all activations are
    alive and (unless persistent) only the LM head's gradients exist; at its end all
    gradients exist and only the first block's activations (and those of other in-flight
    pipeline micro-batches) remain. The sum is linear in between, so these two ends bound
    the layer-backward phase.

    Autocast's 16-bit weight copies live in its cache until the forward's autocast region
    exits (``torch.autocast.__exit__`` clears it), and after that only as what autograd
    saved: each block's copies until that block's backward, none under full recomputation
    (the recomputed block casts its own; the LM head, never recomputed, keeps its copy
    ``head_cache`` until the loss backward). The optimizer step never sees them (measured in
    tests/test_memory_stacks.py). Transformer Engine's fp8 weight copies are workspaces
    its modules keep from step to step: alive in every phase.
    """
    autocast = config.precision in (Precision.AMP_FP16, Precision.AMP_BF16)
    static = {
        k: bd[k]
        for k in ("weights", "quantization_constants", "master_weights", "optimizer_states")
        if bd[k]
    }
    cache = bd["weight_cache"] if autocast else 0
    if bd["weight_cache"] and not autocast:
        static["weight_cache"] = bd["weight_cache"]
    head_cache = min(head_cache, cache)
    # What autograd saves of the copies: the blocks not recomputed (every one but each
    # ac_frequency-th under selective-layer checkpointing) and the head. The cache holds
    # the casts of trainable weights only (leaves that need gradients): LoRA's frozen
    # matrices live only as saved.
    ckpt = config.checkpointing
    if ckpt is Checkpointing.FULL:
        kept = 0.0
    elif ckpt is Checkpointing.SELECTIVE_LAYER:
        kept = 1 - 1 / config.ac_frequency
    else:
        kept = 1.0
    saved_cache = head_cache + math.ceil((cache - head_cache) * kept)
    adapters = config.task in (Task.LORA, Task.QLORA)
    # Under LoRA the cache holds only the adapters' casts; recomputed blocks' ones are in it
    # until the region exits, though autograd does not keep them.
    forward_cache = saved_cache + math.ceil(adapter_cache * (1 - kept)) if adapters else cache
    # By the layer backward the head's backward has run and freed its copy.
    backward_cache = saved_cache - head_cache
    gathered = (
        {"gathered_parameters": bd["gathered_parameters"]} if bd["gathered_parameters"] else {}
    )
    if zeroth:
        fwd = {**static, "activations": bd["activations"], "logits": bd["logits"], **gathered}
        if forward_cache:
            fwd["weight_cache"] = forward_cache
        return {"forward_end": fwd, "optimizer_step": dict(static)}
    grads = bd["gradients"]
    in_fwd = {"gradients": grads} if grads_persistent and grads else {}
    forward_end = {**static, **in_fwd, "activations": bd["activations"], "logits": bd["logits"]}
    forward_end.update(gathered)
    if forward_cache:
        forward_end["weight_cache"] = forward_cache
    # The model output's logits are dropped before backward; what the loss saved remains.
    loss_backward = {**forward_end, "logits": loss_saved}
    if cache:
        loss_backward["weight_cache"] = saved_cache
    if loss_tr:
        loss_backward["transient"] = loss_tr
    loss_backward = {k: v for k, v in loss_backward.items() if v}
    acts = bd["activations"]
    other_inflight = (acts - model_level) * (1 - 1 / inflight) if inflight > 1 else 0.0
    end_acts = math.ceil(model_level + per_block + other_inflight)
    start_grads = grads if grads_persistent or config.optimizer_in_backward else head_grad
    start = acts + start_grads + backward_cache
    end = end_acts + grads
    extra = {k: bd[k] for k in ("recompute", "per_sample_gradients") if bd[k]}
    extra["transient"] = grad_flow
    if config.optimizer_in_backward and step_tr:
        extra["transient"] += step_tr
    if start >= end:
        backward = {**static, "gradients": start_grads, "activations": acts}
        if cache:
            backward["weight_cache"] = backward_cache
    else:
        backward = {**static, "gradients": grads, "activations": end_acts}
    backward = {k: v for k, v in {**backward, **extra, **gathered}.items() if v}
    step = {**static}
    if not config.optimizer_in_backward:
        step["gradients"] = grads
        if step_tr:
            step["transient"] = step_tr
    step = {k: v for k, v in step.items() if v}
    return {
        "forward_end": forward_end,
        "loss_backward": loss_backward,
        "layer_backward": backward,
        "optimizer_step": step,
    }
