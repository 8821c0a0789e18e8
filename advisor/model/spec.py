"""Model shapes: published architectures (profiles/models), exact parameter counts, HF configs.

A :class:`ModelSpec` holds the shape of one network as its published ``config.json``
states it. Everything else the advisor needs about a model is derived from those
shapes, exactly: the parameter count (checked against real ``transformers`` models
in the tests), the named tensors of one transformer block (which the calibration
times optimizers on) and those of the embeddings and head.

Counting conventions, the ones the reference implementations use:

* decoders (``arch: decoder``) are counted as the causal-LM model: embeddings, the
  blocks, the final norm and the LM head unless ``tie_word_embeddings``, with the tensors
  transformers 5 builds (checked family by family on the meta device in
  ``tests/test_model_families.py``): Llama 1-3.x, Mistral, Mixtral, Qwen2/2.5, Qwen3 (q/k
  norms), Qwen3-MoE, Gemma 2/3 (four norms per block), Phi-3/4 (fused qkv and gate/up),
  OLMo 2 (post-norms, full-width q/k norms) and DeepSeek-V3 (multi-head latent attention,
  routed + shared experts, dense first layers; buffers such as its router's
  ``e_score_correction_bias`` and the multi-token-prediction layer are not parameters of
  the transformers model and are not counted);
* MoE "active" parameters follow the published figures' convention: everything but the
  routed experts a token is not sent to (see :meth:`ModelSpec.active_parameter_count`);
* encoders (``arch: encoder``, BERT) are counted as the bare encoder as
  ``transformers.BertModel`` builds it: embeddings (+ their LayerNorm), the blocks
  and the pooler when ``pooler``; no pre-training (MLM/NSP) heads;
* CNNs (``arch: cnn``, ResNet) as ``torchvision.models.resnet*``: learnable
  parameters only (BatchNorm running statistics are buffers, not parameters).

Profile ids are kebab-case and may hold dots for version numbers
(``llama-3.1-8b``, ``qwen2.5-0.5b``), see ``_ID``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from advisor.data.cache import cached_by_content, profile_sources
from advisor.data.resources import profiles_dir
from advisor.data.yamlio import YamlError, line_of, load_yaml, yaml_error_line
from advisor.errors import DataError, UserError
from advisor.model.inventory import Inventory
from advisor.units import format_count, parse_count

# NOTE: kebab-case segments of [a-z0-9], each segment may hold dots between alphanumerics
# (version numbers: llama-3.1-8b, qwen2.5-0.5b); no leading, trailing or doubled dots.
_ID = r"^[a-z0-9]+(\.[a-z0-9]+)*(-[a-z0-9]+(\.[a-z0-9]+)*)*$"
_SOURCE = r"^(https?|file|synthetic):"

Shape = tuple[int, ...]
NamedShapes = list[tuple[str, Shape]]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Arch(str, Enum):
    """The kind of network."""

    DECODER = "decoder"
    ENCODER = "encoder"
    CNN = "cnn"


class Mlp(str, Enum):
    """The feed-forward block of a transformer layer."""

    GATED_SILU = "gated-silu"  # SwiGLU: gate, up and down projections (Llama, Mistral, Qwen2)
    GATED_GELU = "gated-gelu"  # GeGLU (tanh GELU), the same three matrices (Gemma 2/3)
    GELU = "gelu"  # two matrices (GPT-2, BERT)
    RELU = "relu"  # two matrices (OPT)


class Norm(str, Enum):
    """The normalisation layers: RMSNorm has a weight, LayerNorm a weight and a bias."""

    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"


class Position(str, Enum):
    """How positions enter the model: rotary (no parameters), a learned table, or not at all."""

    ROPE = "rope"
    LEARNED = "learned"
    NONE = "none"


class QkNorm(str, Enum):
    """RMSNorm on queries and keys before attention (no parameters when ``none``)."""

    NONE = "none"
    HEAD = "head"  # one weight of head_dim, shared by all heads (Qwen3, Gemma 3)
    FULL = "full"  # one weight over the whole projection width (OLMo 2)


class BlockNorms(str, Enum):
    """Where a block's norms sit: the count of hidden-size norm weights per block."""

    PRE = "pre"  # before attention and before the MLP: 2 (Llama, Qwen, Mistral, Phi-3)
    SANDWICH = "sandwich"  # before and after attention and MLP: 4 (Gemma 2, Gemma 3)
    POST = "post"  # after attention and after the MLP: 2 (OLMo 2)


class MlaShape(_Frozen):
    """Multi-head latent attention (DeepSeek-V2/V3, DeepSeek-AI 2024, arXiv:2405.04434).

    Queries (optionally) and keys/values pass through low-rank latents with their own
    RMSNorm; each head's query/key has a position-free part and a RoPE part.
    """

    q_lora_rank: int | None = Field(default=None, gt=0, description="None: a full q_proj")
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)

    @property
    def qk_head_dim(self) -> int:
        """Width of one head's query and key (position-free part + RoPE part)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class CnnBlock(str, Enum):
    """A ResNet block (He et al. 2016): basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1)."""

    BASIC = "basic"
    BOTTLENECK = "bottleneck"


class CnnShape(_Frozen):
    """A ResNet-style CNN: a 7x7 stem, residual stages doubling the width, a linear classifier."""

    block: CnnBlock = CnnBlock.BOTTLENECK
    blocks_per_stage: tuple[int, ...] = Field(min_length=1, description="e.g. [3, 4, 6, 3]")
    base_width: int = Field(default=64, gt=0, description="channels of the first stage")
    num_classes: int = Field(default=1000, gt=0)
    image_size: int = Field(default=224, gt=0, description="training resolution (activations)")
    in_channels: int = Field(default=3, gt=0)

    @property
    def expansion(self) -> int:
        """Output channels of a block relative to its width (4 for bottleneck, 1 for basic)."""
        return 4 if self.block is CnnBlock.BOTTLENECK else 1


_TRANSFORMER_INTS = (
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)
_TRANSFORMER_ENUMS = ("mlp", "norm", "position")
_TRANSFORMER_BOOLS = ("qkv_bias", "out_bias", "mlp_bias", "tie_word_embeddings")
_DECODER_EXTRAS = ("qk_norm", "block_norms", "fused_qkv", "fused_gate_up", "mla")
_MOE_EXTRAS = ("moe_intermediate_size", "shared_experts", "dense_layers")


class ModelSpec(_Frozen):
    """The shape of one model, as its published configuration states it.

    Transformer fields are ``None`` for CNNs (whose shape is in ``cnn``) and required
    for decoders and encoders; ``num_key_value_heads`` defaults to the number of
    heads and ``head_dim`` to ``hidden_size / num_attention_heads``.
    """

    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1)
    family: str = Field(pattern=r"^[a-z0-9]+$", description="llama, mistral, opt, gpt2, bert, ...")
    arch: Arch
    source: str = Field(
        pattern=_SOURCE,
        description="URL of the published config (file:// for a local config.json, "
        "synthetic: for an interpolated shape)",
    )
    published_parameters: int | None = Field(default=None, gt=0)
    published_parameters_source: str | None = Field(
        default=None, description="where published_parameters comes from (model card, paper)"
    )

    hidden_size: int | None = Field(default=None, gt=0)
    num_layers: int | None = Field(default=None, gt=0)
    num_attention_heads: int | None = Field(default=None, gt=0)
    num_key_value_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    intermediate_size: int | None = Field(default=None, gt=0)
    vocab_size: int | None = Field(default=None, gt=0)
    max_position_embeddings: int | None = Field(default=None, gt=0)
    mlp: Mlp | None = None
    norm: Norm | None = None
    position: Position | None = None
    learned_position_offset: int = Field(
        default=0, ge=0, description="extra rows of a learned position table (OPT: 2)"
    )
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    qk_norm: QkNorm = QkNorm.NONE
    block_norms: BlockNorms = BlockNorms.PRE
    fused_qkv: bool = Field(default=False, description="one qkv_proj matrix (Phi-3)")
    fused_gate_up: bool = Field(default=False, description="one gate_up_proj matrix (Phi-3)")
    mla: MlaShape | None = Field(default=None, description="multi-head latent attention")
    rotary_dim: int | None = Field(
        default=None,
        gt=0,
        description="channels of a head RoPE rotates when not all of them (partial rotary: "
        "head_dim x partial_rotary_factor, e.g. Phi-4-mini 0.75); the RoPE tables are this wide",
    )
    num_experts: int = Field(default=1, gt=0, description="routed experts of an MoE layer")
    experts_per_token: int = Field(default=1, gt=0, description="routed experts per token (top-k)")
    moe_intermediate_size: int | None = Field(
        default=None, gt=0, description="width of one expert (default intermediate_size)"
    )
    shared_experts: int = Field(
        default=0,
        ge=0,
        description="experts every token goes through (DeepSeek), each as wide as a routed one",
    )
    dense_layers: tuple[int, ...] = Field(
        default=(),
        description="indices of the layers of an MoE model whose MLP is dense "
        "(intermediate_size wide): DeepSeek-V3's first 3, Qwen3-MoE's mlp_only_layers",
    )
    type_vocab_size: int = Field(default=0, ge=0, description="token-type rows (BERT: 2)")
    pooler: bool = Field(default=False, description="a dense+tanh pooler on [CLS] (BERT)")

    cnn: CnnShape | None = None
    inventory: Inventory | None = Field(
        default=None,
        description="the exact parameter tensors, read from the real module on the meta "
        "device (advisor.model.hfmeta), when the fields above only represent the blocks; counts "
        "and parameter memory come from it, activations from the fields",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        # Arch is a str enum, so this matches both "cnn" from YAML and Arch.CNN from code.
        if not isinstance(data, dict) or data.get("arch") == Arch.CNN:
            return data
        data = dict(data)
        heads, hidden = data.get("num_attention_heads"), data.get("hidden_size")
        if data.get("num_key_value_heads") is None and isinstance(heads, int):
            data["num_key_value_heads"] = heads
        if (
            data.get("head_dim") is None
            and isinstance(heads, int)
            and isinstance(hidden, int)
            and heads > 0
            and hidden % heads == 0
        ):
            data["head_dim"] = hidden // heads
        return data

    @model_validator(mode="after")
    def _check_arch(self) -> ModelSpec:
        problems: list[str] = []
        if self.arch is Arch.CNN:
            if self.cnn is None:
                problems.append("a cnn model needs `cnn` (its stages)")
            given = [
                f for f in (*_TRANSFORMER_INTS, *_TRANSFORMER_ENUMS) if getattr(self, f) is not None
            ]
            given += [f for f in _TRANSFORMER_BOOLS if getattr(self, f)]
            if self.num_experts != 1 or self.pooler or self.type_vocab_size:
                given.append("num_experts/pooler/type_vocab_size")
            given += self._non_default(*_DECODER_EXTRAS, *_MOE_EXTRAS)
            if given:
                problems.append("transformer fields on a cnn model: " + ", ".join(given))
        else:
            if self.cnn is not None:
                problems.append(f"`cnn` on a {self.arch.value} model")
            missing = [
                f for f in (*_TRANSFORMER_INTS, *_TRANSFORMER_ENUMS) if getattr(self, f) is None
            ]
            missing += [f for f in _TRANSFORMER_BOOLS if f not in self.model_fields_set]
            if missing:
                problems.append(
                    f"fields required for a {self.arch.value} model: " + ", ".join(missing)
                )
            heads, kv = self.num_attention_heads, self.num_key_value_heads
            if heads is not None and kv is not None and heads % kv:
                problems.append(
                    f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})"
                )
            if self.experts_per_token > self.num_experts:
                problems.append(
                    f"experts_per_token ({self.experts_per_token}) exceeds "
                    f"num_experts ({self.num_experts})"
                )
            if self.arch is Arch.DECODER and (self.pooler or self.type_vocab_size):
                problems.append("pooler and type_vocab_size are encoder (BERT) features")
            if self.learned_position_offset and self.position is not Position.LEARNED:
                problems.append("learned_position_offset needs position: learned")
            problems += self._check_moe_and_mla()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _non_default(self, *names: str) -> list[str]:
        # By value, not by model_fields_set: model_dump() round trips set every field.
        return [f for f in names if getattr(self, f) != type(self).model_fields[f].get_default()]

    def _check_moe_and_mla(self) -> list[str]:
        problems: list[str] = []
        if self.num_experts == 1:
            extra = self._non_default(*_MOE_EXTRAS)
            if extra:
                problems.append(f"{', '.join(extra)} need num_experts > 1")
        else:
            if self.mlp_bias:
                problems.append("MoE experts with biases are not modelled")
            layers = self.num_layers or 0
            bad = [i for i in self.dense_layers if not 0 <= i < layers]
            if bad or len(set(self.dense_layers)) != len(self.dense_layers):
                problems.append(f"dense_layers must be distinct layer indices below {layers}")
            elif len(self.dense_layers) == layers:
                problems.append("dense_layers lists every layer: not an MoE model")
        if self.arch is not Arch.DECODER and (
            self.mla is not None or self.qk_norm is not QkNorm.NONE
        ):
            problems.append("mla and qk_norm are decoder features")
        if self.mla is not None and (self.fused_qkv or self.qk_norm is not QkNorm.NONE):
            problems.append("mla has its own projections and norms (no fused_qkv, no qk_norm)")
        if self.mla is not None and self.head_dim != self.mla.qk_head_dim:
            problems.append(
                f"with mla, head_dim ({self.head_dim}) is the query/key head width "
                f"qk_nope_head_dim + qk_rope_head_dim ({self.mla.qk_head_dim})"
            )
        return problems

    # --- derived shapes -------------------------------------------------------------

    @property
    def gated_mlp(self) -> bool:
        """Whether the MLP has three matrices (gate, up, down): SwiGLU or GeGLU."""
        return self.mlp in (Mlp.GATED_SILU, Mlp.GATED_GELU)

    @property
    def expert_intermediate_size(self) -> int:
        """Width of one routed (or shared) expert."""
        return self.moe_intermediate_size or _req(self.intermediate_size)

    def moe_layer_count(self) -> int:
        """How many blocks have an MoE MLP (0 for a dense model)."""
        if self.num_experts == 1 or self.cnn is not None:
            return 0
        return _req(self.num_layers) - len(self.dense_layers)

    def layer_groups(self) -> list[tuple[int, NamedShapes]]:
        """The distinct kinds of block, each with how many times it occurs.

        One group for a dense transformer (or a CNN's trunk); an MoE model whose first
        layers are dense (DeepSeek-V3) has two: ``(dense count, dense block)`` and
        ``(MoE count, MoE block)``. ``parameter_count() == sum(count * block params) +
        numel of embedding_shapes()``.
        """
        if self.cnn is not None:
            return [(1, _cnn_trunk(self.cnn))]
        if self.inventory is not None:
            return [
                (g.count, [(t.name, t.shape) for t in g.tensors]) for g in self.inventory.groups
            ]
        moe = self.moe_layer_count()
        groups: list[tuple[int, NamedShapes]] = []
        dense = _req(self.num_layers) - moe
        if dense:
            groups.append((dense, _block_shapes(self, moe=False)))
        if moe:
            groups.append((moe, _block_shapes(self, moe=True)))
        return groups

    def layer_repeats(self) -> int:
        """How many blocks the model has.

        ``num_layers`` for a transformer; 1 for a CNN, whose stages differ in width, so
        its "layer" is the whole residual trunk. For a model whose blocks are all alike,
        ``parameter_count() == layer_repeats() * layer_parameter_count() + (numel of
        embedding_shapes())``; see :meth:`layer_groups` for mixed dense/MoE stacks.
        """
        return 1 if self.cnn is not None else _req(self.num_layers)

    def layer_matrix_shapes(self) -> NamedShapes:
        """The named weight and bias tensors of ONE transformer block, with their true shapes.

        Shapes follow the reference implementation: ``nn.Linear`` weights are
        ``(out_features, in_features)``, GPT-2's ``Conv1D`` weights ``(in, out)`` with a
        fused ``c_attn``. A mixture-of-experts block lists its router and its experts as
        transformers 5 stores them, in 3-D tensors (``experts.gate_up_proj`` of shape
        ``(E, 2 f, h)``, ``experts.down_proj`` ``(E, h, f)``). In a model with dense and
        MoE blocks this is the more frequent kind (the MoE block of DeepSeek-V3), see
        :meth:`layer_groups`. For a CNN: every tensor of the residual trunk (torchvision
        names), see :meth:`layer_repeats`.
        """
        return max(self.layer_groups(), key=lambda g: g[0])[1]

    def embedding_shapes(self) -> NamedShapes:
        """The tensors outside the repeated blocks: embeddings, final norm, LM head, pooler.

        The LM head is absent when ``tie_word_embeddings`` (it shares the token
        embedding) and for encoders. For a CNN: the stem (conv1, bn1) and the classifier.
        """
        if self.cnn is not None:
            return _cnn_outside(self.cnn)
        if self.inventory is not None:
            return [(t.name, t.shape) for t in self.inventory.outside]
        return _outside_shapes(self)

    def layer_parameter_count(self) -> int:
        """Parameters of the block :meth:`layer_matrix_shapes` lists (all its experts)."""
        return sum(math.prod(s) for _, s in self.layer_matrix_shapes())

    def expert_parameter_count(self) -> int:
        """Parameters of one routed MoE expert (its projections); 0 for a dense model."""
        if self.num_experts == 1 or self.cnn is not None:
            return 0
        if self.inventory is not None:
            # Every routed-expert tensor (biases included), per expert, of the commonest MoE block.
            moe = [g for g in self.inventory.groups if any(_routed(t.role) for t in g.tensors)]
            group = max(moe, key=lambda g: g.count)
            return (
                sum(math.prod(t.shape) for t in group.tensors if _routed(t.role))
                // self.num_experts
            )
        matrices = 3 if self.gated_mlp else 2
        return matrices * _req(self.hidden_size) * self.expert_intermediate_size

    @cached_property
    def _counts(self) -> tuple[int, int]:
        # NOTE: computed once per spec; the plan search prices tens of thousands of plans of
        # one model. (Frozen pydantic models keep cached_property values out of their fields.)
        outside = sum(math.prod(s) for _, s in self.embedding_shapes())
        blocks = sum(n * sum(math.prod(s) for _, s in g) for n, g in self.layer_groups())
        return blocks, outside

    def embedding_parameter_count(self) -> int:
        """Parameters outside the blocks (:meth:`embedding_shapes`): embeddings, final norm,
        LM head, pooler; a CNN's stem and classifier."""
        return self._counts[1]

    def parameter_count(self) -> int:
        """Exact number of parameters, counted from the shapes (shared tensors once)."""
        return sum(self._counts)

    def active_parameter_count(self) -> int:
        """Parameters one token goes through: all but the routed experts it is not sent to.

        The convention of the published "activated parameters" figures (Mixtral 12.9B of
        46.7B, Qwen3-30B-A3B 3.3B of 30.5B, DeepSeek-V3 37B of 671B): embeddings, LM head,
        attention, norms, routers, dense MLPs and shared experts count in full, routed
        experts ``experts_per_token`` of ``num_experts`` per MoE layer. Equal to
        :meth:`parameter_count` for dense models.
        """
        idle = self.num_experts - self.experts_per_token
        return (
            self.parameter_count() - self.moe_layer_count() * idle * self.expert_parameter_count()
        )


def _routed(role: str) -> bool:
    return role.startswith("expert_")


def _req(value: int | None) -> int:
    # The after-validator guarantees transformer fields on transformers; this narrows the type.
    if value is None:  # pragma: no cover - excluded by ModelSpec._check_arch
        raise AssertionError("transformer field missing on a validated ModelSpec")
    return value


def _style(spec: ModelSpec) -> str:
    """Which reference implementation's tensor names to use."""
    if spec.family in ("gpt2", "opt", "bert"):
        return spec.family
    return "bert" if spec.arch is Arch.ENCODER else "llama"


def _norm(prefix: str, spec: ModelSpec, h: int) -> NamedShapes:
    out: NamedShapes = [(f"{prefix}.weight", (h,))]
    if spec.norm is Norm.LAYERNORM:
        out.append((f"{prefix}.bias", (h,)))
    return out


def _linear(name: str, out_f: int, in_f: int, bias: bool, conv1d: bool = False) -> NamedShapes:
    # NOTE: GPT-2 stores its projections as Conv1D with the weight transposed: (in, out).
    shape = (in_f, out_f) if conv1d else (out_f, in_f)
    return [(f"{name}.weight", shape)] + ([(f"{name}.bias", (out_f,))] if bias else [])


def _block_shapes(spec: ModelSpec, moe: bool = False) -> NamedShapes:
    h, heads = _req(spec.hidden_size), _req(spec.num_attention_heads)
    kv, hd, ffn = _req(spec.num_key_value_heads), _req(spec.head_dim), _req(spec.intermediate_size)
    q_out, kv_out = heads * hd, kv * hd
    style = _style(spec)
    out: NamedShapes = []
    if style == "gpt2":
        out += _norm("ln_1", spec, h)
        out += _linear("attn.c_attn", q_out + 2 * kv_out, h, spec.qkv_bias, conv1d=True)
        out += _linear("attn.c_proj", h, q_out, spec.out_bias, conv1d=True)
        out += _norm("ln_2", spec, h)
        mlp_names = ("mlp.c_fc", "mlp.c_proj", "mlp.c_gate")
        conv1d = True
    elif style == "bert":
        out += _linear("attention.self.query", q_out, h, spec.qkv_bias)
        out += _linear("attention.self.key", kv_out, h, spec.qkv_bias)
        out += _linear("attention.self.value", kv_out, h, spec.qkv_bias)
        out += _linear("attention.output.dense", h, q_out, spec.out_bias)
        out += _norm("attention.output.LayerNorm", spec, h)
        mlp_names = ("intermediate.dense", "output.dense", "intermediate.gate")
        conv1d = False
    elif style == "opt":
        out += _linear("q_proj", q_out, h, spec.qkv_bias)
        out += _linear("k_proj", kv_out, h, spec.qkv_bias)
        out += _linear("v_proj", kv_out, h, spec.qkv_bias)
        out += _linear("out_proj", h, q_out, spec.out_bias)
        out += _norm("self_attn_layer_norm", spec, h)
        out += _norm("final_layer_norm", spec, h)
        mlp_names = ("fc1", "fc2", "fc_gate")
        conv1d = False
    else:
        out += _attention_shapes(spec)
        norms = {
            BlockNorms.PRE: ("input_layernorm", "post_attention_layernorm"),
            BlockNorms.POST: ("post_attention_layernorm", "post_feedforward_layernorm"),
            BlockNorms.SANDWICH: (
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ),
        }[spec.block_norms]
        for name in norms:
            out += _norm(name, spec, h)
        mlp_names = ("mlp.up_proj", "mlp.down_proj", "mlp.gate_proj")
        conv1d = False

    if moe:
        out += _moe_shapes(spec)
    elif spec.fused_gate_up:
        # Phi-3: gate and up in one matrix, split after the matmul.
        out += _linear("mlp.gate_up_proj", 2 * ffn, h, spec.mlp_bias)
        out += _linear("mlp.down_proj", h, ffn, spec.mlp_bias)
    else:
        up, down, gate = mlp_names
        if spec.gated_mlp:
            out += _linear(gate, ffn, h, spec.mlp_bias, conv1d)
        out += _linear(up, ffn, h, spec.mlp_bias, conv1d)
        out += _linear(down, h, ffn, spec.mlp_bias, conv1d)
    if style == "bert":
        out += _norm("output.LayerNorm", spec, h)
    return out


def _attention_shapes(spec: ModelSpec) -> NamedShapes:
    """Attention of a Llama-style block: q/k/v/o, fused qkv (Phi-3), q/k norms, or MLA."""
    h, heads = _req(spec.hidden_size), _req(spec.num_attention_heads)
    kv, hd = _req(spec.num_key_value_heads), _req(spec.head_dim)
    q_out, kv_out = heads * hd, kv * hd
    out: NamedShapes = []
    mla = spec.mla
    if mla is not None:
        # DeepSeek-V2/V3 MLA as transformers' DeepseekV3Attention builds it; attention_bias
        # puts biases on q_a_proj, kv_a_proj_with_mqa and o_proj.
        qk = heads * mla.qk_head_dim
        if mla.q_lora_rank is None:
            out += _linear("self_attn.q_proj", qk, h, False)
        else:
            out += _linear("self_attn.q_a_proj", mla.q_lora_rank, h, spec.qkv_bias)
            out += [("self_attn.q_a_layernorm.weight", (mla.q_lora_rank,))]
            out += _linear("self_attn.q_b_proj", qk, mla.q_lora_rank, False)
        out += _linear(
            "self_attn.kv_a_proj_with_mqa",
            mla.kv_lora_rank + mla.qk_rope_head_dim,
            h,
            spec.qkv_bias,
        )
        out += [("self_attn.kv_a_layernorm.weight", (mla.kv_lora_rank,))]
        kv_b = heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        out += _linear("self_attn.kv_b_proj", kv_b, mla.kv_lora_rank, False)
        out += _linear("self_attn.o_proj", h, heads * mla.v_head_dim, spec.out_bias)
        return out
    if spec.fused_qkv:
        out += _linear("self_attn.qkv_proj", q_out + 2 * kv_out, h, spec.qkv_bias)
    else:
        out += _linear("self_attn.q_proj", q_out, h, spec.qkv_bias)
        out += _linear("self_attn.k_proj", kv_out, h, spec.qkv_bias)
        out += _linear("self_attn.v_proj", kv_out, h, spec.qkv_bias)
    out += _linear("self_attn.o_proj", h, q_out, spec.out_bias)
    if spec.qk_norm is QkNorm.HEAD:
        out += [("self_attn.q_norm.weight", (hd,)), ("self_attn.k_norm.weight", (hd,))]
    elif spec.qk_norm is QkNorm.FULL:
        out += [("self_attn.q_norm.weight", (q_out,)), ("self_attn.k_norm.weight", (kv_out,))]
    return out


def _moe_shapes(spec: ModelSpec) -> NamedShapes:
    """A sparse MoE MLP as transformers 5 stores it: a bias-free router, the routed experts in
    3-D tensors, and (DeepSeek) the shared experts as one dense MLP of their summed width."""
    h, experts, f = _req(spec.hidden_size), spec.num_experts, spec.expert_intermediate_size
    out: NamedShapes = [("mlp.gate.weight", (experts, h))]
    if spec.gated_mlp:
        out.append(("mlp.experts.gate_up_proj", (experts, 2 * f, h)))
    else:
        out.append(("mlp.experts.up_proj", (experts, f, h)))
    out.append(("mlp.experts.down_proj", (experts, h, f)))
    if spec.shared_experts:
        width = f * spec.shared_experts
        if spec.gated_mlp:
            out += _linear("mlp.shared_experts.gate_proj", width, h, False)
        out += _linear("mlp.shared_experts.up_proj", width, h, False)
        out += _linear("mlp.shared_experts.down_proj", h, width, False)
    return out


_OUTSIDE_NAMES = {
    # style: token table, position table, token types, embedding norm, final norm, head
    "llama": ("embed_tokens", "embed_positions", "token_type_embeddings", "embed_norm", "norm"),
    "opt": (
        "embed_tokens",
        "embed_positions",
        "token_type_embeddings",
        "embed_norm",
        "decoder.final_layer_norm",
    ),
    "gpt2": ("wte", "wpe", "token_type_embeddings", "embed_norm", "ln_f"),
    "bert": (
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        "embeddings.token_type_embeddings",
        "embeddings.LayerNorm",
        "final_norm",
    ),
}


def _outside_shapes(spec: ModelSpec) -> NamedShapes:
    h, vocab = _req(spec.hidden_size), _req(spec.vocab_size)
    tokens, positions, types, emb_norm, final_norm = _OUTSIDE_NAMES[_style(spec)]
    out: NamedShapes = [(f"{tokens}.weight", (vocab, h))]
    if spec.position is Position.LEARNED:
        rows = _req(spec.max_position_embeddings) + spec.learned_position_offset
        out.append((f"{positions}.weight", (rows, h)))
    if spec.type_vocab_size:
        out.append((f"{types}.weight", (spec.type_vocab_size, h)))
    if spec.arch is Arch.ENCODER:
        # BERT normalises the summed embeddings and has no final norm (post-LN blocks).
        out += _norm(emb_norm, spec, h)
    else:
        out += _norm(final_norm, spec, h)
        if not spec.tie_word_embeddings:
            out.append(("lm_head.weight", (vocab, h)))
    if spec.pooler:
        out += _linear("pooler.dense", h, h, True)
    return out


def _bn(name: str, c: int) -> NamedShapes:
    return [(f"{name}.weight", (c,)), (f"{name}.bias", (c,))]


def _cnn_outside(cnn: CnnShape) -> NamedShapes:
    last = cnn.base_width * 2 ** (len(cnn.blocks_per_stage) - 1) * cnn.expansion
    return [
        ("conv1.weight", (cnn.base_width, cnn.in_channels, 7, 7)),
        *_bn("bn1", cnn.base_width),
        ("fc.weight", (cnn.num_classes, last)),
        ("fc.bias", (cnn.num_classes,)),
    ]


def _cnn_trunk(cnn: CnnShape) -> NamedShapes:
    """Every tensor of the residual stages, as torchvision's ResNet builds them (He et al. 2016)."""
    out: NamedShapes = []
    inplanes = cnn.base_width
    for s, blocks in enumerate(cnn.blocks_per_stage):
        width = cnn.base_width * 2**s
        stride = 1 if s == 0 else 2
        for b in range(blocks):
            p = f"layer{s + 1}.{b}"
            if cnn.block is CnnBlock.BOTTLENECK:
                out += [(f"{p}.conv1.weight", (width, inplanes, 1, 1)), *_bn(f"{p}.bn1", width)]
                out += [(f"{p}.conv2.weight", (width, width, 3, 3)), *_bn(f"{p}.bn2", width)]
                out += [(f"{p}.conv3.weight", (width * 4, width, 1, 1))]
                out += _bn(f"{p}.bn3", width * 4)
            else:
                out += [(f"{p}.conv1.weight", (width, inplanes, 3, 3)), *_bn(f"{p}.bn1", width)]
                out += [(f"{p}.conv2.weight", (width, width, 3, 3)), *_bn(f"{p}.bn2", width)]
            planes = width * cnn.expansion
            if b == 0 and (stride != 1 or inplanes != planes):
                out += [(f"{p}.downsample.0.weight", (planes, inplanes, 1, 1))]
                out += _bn(f"{p}.downsample.1", planes)
            inplanes = planes
    return out


# --- profiles ------------------------------------------------------------------------


def _models_dir() -> Path:
    return profiles_dir() / "models"


@cached_by_content("models", profile_sources("models"))
def load_model_profiles(folder: Path | None = None) -> dict[str, ModelSpec]:
    """Load every ``*.yaml`` model profile (one model per file, named after its id).

    Args:
        folder: the folder to read (default: the shipped ``profiles/models``).

    Returns:
        The profiles by id, sorted by id.

    Raises:
        DataError: listing every problem of every file as ``file:line: id: field: message``.
    """
    folder = folder or _models_dir()
    profiles: dict[str, ModelSpec] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            raw = load_yaml(path)
        except OSError as exc:
            problems.append(f"{path}:0: -: file: cannot read: {exc.strerror}")
            continue
        except YamlError as exc:
            msg = str(exc).replace("\n", " ")
            problems.append(f"{path}:{yaml_error_line(exc)}: -: yaml: invalid YAML: {msg}")
            continue
        if not isinstance(raw, dict):
            problems.append(f"{path}:1: -: -: expected a mapping of model fields")
            continue
        ident = str(raw.get("id", path.stem))
        try:
            spec = ModelSpec.model_validate(raw)
        except ValidationError as exc:
            text = path.read_text(encoding="utf-8")
            for err in exc.errors():
                loc = err["loc"]
                field = ".".join(str(p) for p in loc) or "-"
                where = _key_line(text, loc) or line_of(raw, loc) or getattr(raw, "line", 1)
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{path}:{where}: {ident}: {field}: {msg}")
            continue
        if spec.id != path.stem:
            problems.append(
                f"{path}:{line_of(raw, ('id',))}: {spec.id}: id: does not match the file name "
                f"{path.stem!r}"
            )
        if spec.id in profiles:
            problems.append(f"{path}:{line_of(raw, ('id',))}: {spec.id}: id: duplicate profile id")
        profiles[spec.id] = spec
    if problems:
        raise DataError(problems)
    return profiles


def _key_line(text: str, loc: tuple[int | str, ...]) -> int:
    """The line of a top-level scalar key (yamlio knows the lines of containers only)."""
    if len(loc) != 1 or not isinstance(loc[0], str):
        return 0
    m = re.search(rf"^{re.escape(loc[0])}\s*:", text, re.MULTILINE)
    return text.count("\n", 0, m.start()) + 1 if m else 0


def get_model_profile(name: str) -> ModelSpec:
    """Return the shipped model profile called ``name`` (case-insensitive).

    Raises:
        UserError: naming the known profiles when ``name`` is not one.
    """
    profiles = load_model_profiles()
    key = name.strip().lower()
    if key in profiles:
        return profiles[key]
    close = difflib.get_close_matches(key, list(profiles), n=3)
    maybe = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(
        f"unknown model profile {name!r}",
        f"{maybe}known profiles: {', '.join(sorted(profiles))}; "
        "or give a size (--model-size 7B) or a Hugging Face config.json",
    )


# --- sizes -> shapes ---------------------------------------------------------------------

# NOTE: the default family for a bare size. Below 3B: OPT (the only open family with a
# 125M and a 1.3B model of the classic GPT-3 shapes); from 3B up: Llama (Llama 2 7B/13B/70B
# and Llama 3.1 8B/70B/405B), the dense decoder most people fine-tune or pre-train now.
DEFAULT_LADDER = (
    "opt-125m",
    "opt-1.3b",
    "llama-2-7b",
    "llama-3.1-8b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3.1-70b",
    "llama-3.1-405b",
)
# A profile counts as "this size" when its count is within this factor of the request.
NEAREST_TOLERANCE = 1.25


def resolve_model_size(text: str) -> ModelSpec:
    """Turn a bare size (``125M``, ``1.3B``, ``7B``, ``70B``, ``1T``) into a model shape.

    The rule, in order:

    1. Parse the count with :func:`advisor.units.parse_count`.
    2. Sizes below the smallest rung of :data:`DEFAULT_LADDER` (OPT-125M) give that
       profile (its shapes over-estimate such a model; nothing smaller is worth advice).
    3. Otherwise the rung nearest in log-count (OPT below 3B, Llama from 3B up) when its
       count is within a factor :data:`NEAREST_TOLERANCE` of the request: ``125M`` ->
       ``opt-125m``, ``1.3B`` -> ``opt-1.3b``, ``7B`` -> ``llama-2-7b``, ``8B`` ->
       ``llama-3.1-8b``, ``13B`` -> ``llama-2-13b``, ``70B`` -> ``llama-3.1-70b``
       (70.6B, nearer than Llama 2's 69.0B), ``405B`` -> ``llama-3.1-405b``.
    4. Otherwise (gaps such as 3B or 30B, and anything beyond 405B x 1.25, e.g. ``1T``) a
       synthetic Llama-3-style shape, see :func:`interpolate_llama_style`, with id
       ``llama-style-<size>`` (``llama-style-1t``).

    Raises:
        UserError: when the text is not a positive count ("7Q", "-3B", "0").
    """
    count = parse_count(text)
    profiles = load_model_profiles()
    ladder = [profiles[i] for i in DEFAULT_LADDER]
    if count <= ladder[0].parameter_count():
        return ladder[0]
    best = min(ladder, key=lambda p: abs(math.log(p.parameter_count() / count)))
    if max(best.parameter_count() / count, count / best.parameter_count()) <= NEAREST_TOLERANCE:
        return best
    return interpolate_llama_style(count)


def interpolate_llama_style(count: int) -> ModelSpec:
    """A synthetic Llama-3-style decoder with about ``count`` parameters.

    Fixed as in Llama 3.1: head_dim 128, grouped-query attention with 8 key/value
    heads (fewer when the model has fewer heads; from 8 heads on, the hidden size is a
    multiple of 1024 so that the heads split evenly into 8 groups), SwiGLU with an
    intermediate size of 3.5 h rounded to a multiple of 256, RMSNorm, RoPE, vocabulary
    128,256. Embeddings are tied below 5B parameters (as Llama 3.2 1B/3B) and untied
    above (Llama 3.1 8B+). Among hidden sizes and layer counts whose total is within 1% of
    ``count``, the one with the aspect ratio h / layers nearest 128 (Llama 3.1 8B: 128,
    405B: 130) wins; when none is that close, the nearest count.

    Args:
        count: the target number of parameters.

    Returns:
        The spec, id ``llama-style-<size>``, with ``published_parameters`` None.
    """
    tied = count < 5 * 10**9
    vocab = 128_256
    best: tuple[float, float, int, int] | None = None
    h = 128
    # NOTE: the counts below are the closed form of _llama_style's block (checked against
    # ModelSpec.parameter_count in the tests), so the search builds no spec per candidate.
    while True:
        kv = min(8, h // 128)
        ffn = _llama_style_ffn(h)
        per_layer = 2 * h + 2 * h * h + 2 * h * kv * 128 + 3 * h * ffn
        outside = vocab * h * (1 if tied else 2) + h
        if per_layer + outside > count and best is not None:
            break
        layers = max(1, round((count - outside) / per_layer))
        error = abs(outside + layers * per_layer - count) / count
        key = (0.0 if error <= 0.01 else error, abs(math.log(h / layers / 128)), h, layers)
        if best is None or key < best:
            best = key
        # Heads must be a multiple of the 8 key/value heads once there are 8 or more.
        h += 128 if h < 1024 else 1024
    return _llama_style(count, best[2], best[3], tied, vocab)


def _llama_style_ffn(h: int) -> int:
    return max(256, round(3.5 * h / 256) * 256)


def _llama_style(count: int, h: int, layers: int, tied: bool, vocab: int) -> ModelSpec:
    heads = h // 128
    size = format_count(count)
    return ModelSpec(
        id=f"llama-style-{size.lower()}",
        name=f"Llama-style {size} (synthetic: interpolated from the size, not a published model)",
        family="llama",
        arch=Arch.DECODER,
        source="synthetic:advisor.model.spec.interpolate_llama_style",
        hidden_size=h,
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=min(8, heads),
        head_dim=128,
        intermediate_size=_llama_style_ffn(h),
        vocab_size=vocab,
        max_position_embeddings=131_072,
        mlp=Mlp.GATED_SILU,
        norm=Norm.RMSNORM,
        position=Position.ROPE,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_word_embeddings=tied,
    )


# --- Hugging Face config.json ------------------------------------------------------------

_LLAMA_LIKE = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "deepseek_v3",
)
_HF_TYPES = ("bert", "gpt2", "opt", *_LLAMA_LIKE, "gemma3")
# NOTE: what transformers 5 assumes when config.json omits a key (its config classes'
# defaults; tests/test_model_families.py checks this table against them). Real configs
# omit some: Gemma 3's multimodal configs state only a few text_config keys.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "mistral": {"num_key_value_heads": 8},
    "mixtral": {"num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2": {"num_key_value_heads": 32},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128},
    "qwen3_moe": {
        "num_key_value_heads": 4,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "gemma2": {
        "vocab_size": 256_000,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    "gemma3_text": {
        "vocab_size": 262_208,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131_072,
        "tie_word_embeddings": True,
    },
    "deepseek_v3": {
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 2048,
        "first_k_dense_replace": 3,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
    },
}
# NOTE: transformers 5 writes some keys under another name than the released configs use
# (its attribute_map): Qwen3-MoE's num_experts as num_local_experts, and so on.
_HF_ALIASES: dict[str, dict[str, str]] = {
    "mixtral": {"num_local_experts": "num_experts"},
    "qwen3_moe": {"num_experts": "num_local_experts"},
    "deepseek_v3": {"n_routed_experts": "num_local_experts"},
}
_HF_FAMILY = {"qwen3_moe": "qwen3moe", "gemma3_text": "gemma3", "deepseek_v3": "deepseekv3"}
_HF_NAME_FILE = "config.json"
_MAX_LAYERS = 10_000


class UnsupportedModelType(UserError):
    """A ``model_type`` no built-in family reads (the general path, advisor.model.hfmeta, may)."""


def load_hf_config(path: str | Path) -> ModelSpec:
    """Read a local Hugging Face ``config.json``, or the model folder holding one.

    Supported ``model_type`` values: llama (1, 2, 3.x: ``head_dim`` when stated; RoPE
    scaling has no parameters), mistral, mixtral, qwen2, qwen3 (q/k norms), qwen3_moe,
    gemma2, gemma3_text (and gemma3, whose ``text_config`` is read: the text decoder only,
    not the vision tower), phi3 (Phi-3, Phi-4: fused ``qkv_proj`` and ``gate_up_proj``),
    olmo2, deepseek_v3 (MLA, MoE with shared experts and dense first layers; the
    multi-token-prediction layer is not counted, as transformers does not build it), opt
    (``ffn_dim``, ``word_embed_proj_dim``, ``enable_bias``), gpt2 (``n_embd``, ``n_layer``,
    ``n_head``, ``n_inner`` None -> 4 h, ``n_positions``) and bert. A key that config.json
    omits takes the default transformers gives it for that model type.

    The model's name is ``_name_or_path`` when config.json states one; otherwise the
    folder holding ``config.json`` (a model folder, as downloaded), or the file's stem for
    a config saved under another name (``configs/qwen3-8b.json`` -> ``qwen3-8b``).

    Args:
        path: the config file, or a model folder with a ``config.json``.

    Returns:
        The spec, with ``source`` the file's ``file://`` URI and no published count.

    Raises:
        UserError: for a missing or unreadable file, invalid JSON, an unknown
            ``model_type``, a missing or invalid shape field, or an OPT variant with
            projected embeddings (OPT-350m) that is not modelled.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / _HF_NAME_FILE
    hint = "pass a Hugging Face config.json (or the model folder holding it)"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"model config {str(p)!r} not found", hint) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read model config {str(p)!r}: {exc}", hint) from exc
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{p}:{exc.lineno}: invalid JSON: {exc.msg}", "config.json must be a JSON object"
        ) from exc
    return spec_from_hf_config(cfg, p)


def spec_from_hf_config(cfg: Any, p: Path) -> ModelSpec:
    """The spec of a parsed ``config.json`` (see :func:`load_hf_config`); ``p`` is the file
    it was read from (its name and URI). The shell reads the file once, defensively, and
    hands the parsed object here, so nothing reads it a second time.

    Raises:
        UserError: as :func:`load_hf_config`; a shape field of the wrong JSON type (``true``
            or ``"1024"`` for a count) included.
    """
    hint = "pass a Hugging Face config.json (or the model folder holding it)"
    if not isinstance(cfg, dict):
        raise UserError(f"{p}: expected a JSON object, got {type(cfg).__name__}", hint)
    model_type = cfg.get("model_type")
    if model_type not in _HF_TYPES:
        raise UnsupportedModelType(
            f"{p}: unsupported model_type {model_type!r}",
            f"supported: {', '.join(sorted(_HF_TYPES))}; or use a shipped profile (--model) "
            "or a size",
        )
    if model_type == "gemma3":
        # Gemma 3 4B/12B/27B ship as image-text models; their decoder is text_config.
        text_cfg = cfg.get("text_config") or {}
        if not isinstance(text_cfg, dict):
            raise UserError(f"{p}: text_config is not a JSON object", hint)
        cfg = {"tie_word_embeddings": cfg.get("tie_word_embeddings", True), **text_cfg}
        cfg["model_type"] = model_type = "gemma3_text"
    fields = _hf_fields(str(model_type), cfg, p)
    name = _hf_name(cfg, p)
    fields.update(
        id=_slug(name, str(model_type)),
        name=name or str(model_type),
        family=_HF_FAMILY.get(str(model_type), str(model_type)),
        source=p.resolve().as_uri(),
    )
    try:
        # NOTE: strict: JSON's true is not 1 head, and "1024" is not a width (the README
        # calls them errors); enum and tuple fields are built above as their own types.
        return ModelSpec.model_validate(fields, strict=True)
    except ValidationError as exc:
        errs = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '-'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"{p}: invalid model shape: {errs}", hint) from exc


def _hf_name(cfg: dict[str, Any], p: Path) -> str:
    """The model's name: ``_name_or_path``, else the model folder, else the file's stem."""
    stated = cfg.get("_name_or_path")
    if isinstance(stated, str) and stated.strip().strip("/"):
        return stated.strip()
    resolved = p.resolve()
    return resolved.parent.name if resolved.name == _HF_NAME_FILE else resolved.stem


def _get(cfg: dict[str, Any], key: str, p: Path, model_type: str = "") -> Any:
    value = cfg.get(key)
    alias = _HF_ALIASES.get(model_type, {}).get(key)
    if value is None and alias is not None:
        value = cfg.get(alias)
    if value is None:
        value = _HF_DEFAULTS.get(model_type, {}).get(key)
    if value is None:
        raise UserError(f"{p}: {key} missing", "a model's config.json states its shape in full")
    return value


def _opt(cfg: dict[str, Any], key: str, model_type: str, default: Any = None) -> Any:
    """An optional key: its value, else transformers' default for the model type."""
    if key in cfg:
        return cfg[key]
    return _HF_DEFAULTS.get(model_type, {}).get(key, default)


def _int_list(value: Any, key: str, p: Path) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise UserError(f"{p}: {key} must be a list of layer indices", "see the model's config")
    return value


def _int(value: Any, key: str, p: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{p}: {key} must be an integer, got {value!r}", "see the model's config")
    return value


def _llama_like(model_type: str, cfg: dict[str, Any], p: Path) -> dict[str, Any]:
    """Llama and its descendants: one table of differences per model_type (transformers 5)."""

    def g(key: str) -> Any:
        return _get(cfg, key, p, model_type)

    def o(key: str, default: Any = None) -> Any:
        return _opt(cfg, key, model_type, default)

    heads = g("num_attention_heads")
    kv = o("num_key_value_heads")
    bias = bool(o("attention_bias", False))
    layers = _int(g("num_hidden_layers"), "num_hidden_layers", p)
    if not 0 < layers <= _MAX_LAYERS:
        # NOTE: the MoE branches list layer indices; the deepest released decoder has 126.
        raise UserError(
            f"{p}: num_hidden_layers {layers} is outside 1..{_MAX_LAYERS}",
            "a model's config.json states its real depth",
        )
    # NOTE: Qwen2 hard-codes q/k/v biases (and none on o_proj) whatever the config says;
    # Phi-3, Mistral, Mixtral and Gemma have no bias option.
    qkv_bias = {"qwen2": True, "phi3": False, "mistral": False, "mixtral": False}.get(
        model_type, bias
    )
    out_bias = False if model_type in ("qwen2", "phi3", "mistral", "mixtral") else bias
    fields: dict[str, Any] = dict(
        arch=Arch.DECODER,
        hidden_size=g("hidden_size"),
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv if kv is not None else heads,
        head_dim=o("head_dim"),
        intermediate_size=g("intermediate_size"),
        vocab_size=g("vocab_size"),
        max_position_embeddings=g("max_position_embeddings"),
        mlp=Mlp.GATED_GELU if model_type.startswith("gemma") else Mlp.GATED_SILU,
        norm=Norm.RMSNORM,
        position=Position.ROPE,
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=bool(o("mlp_bias", False)) if model_type == "llama" else False,
        tie_word_embeddings=bool(o("tie_word_embeddings", False)),
    )
    if model_type in ("qwen3", "qwen3_moe", "gemma3_text"):
        fields["qk_norm"] = QkNorm.HEAD
    if model_type == "olmo2":
        fields.update(qk_norm=QkNorm.FULL, block_norms=BlockNorms.POST)
    if model_type.startswith("gemma"):
        fields["block_norms"] = BlockNorms.SANDWICH
    if model_type == "phi3":
        fields.update(fused_qkv=True, fused_gate_up=True)
        factor = o("partial_rotary_factor", 1.0)
        if isinstance(factor, (int, float)) and 0 < factor < 1:
            # transformers' Phi3RotaryEmbedding: int(head_dim * partial_rotary_factor).
            hd = o("head_dim") or g("hidden_size") // heads
            fields["rotary_dim"] = int(hd * factor)
    if model_type == "mixtral":
        fields.update(
            num_experts=g("num_local_experts"), experts_per_token=g("num_experts_per_tok")
        )
    if model_type == "qwen3_moe":
        step = _int(g("decoder_sparse_step"), "decoder_sparse_step", p)
        only = set(_int_list(o("mlp_only_layers"), "mlp_only_layers", p))
        experts = _int(g("num_experts"), "num_experts", p)
        # transformers: a layer is sparse when it is not in mlp_only_layers, num_experts > 0
        # and (index + 1) is a multiple of decoder_sparse_step.
        dense = [
            i
            for i in range(layers)
            if i in only or experts <= 0 or step <= 0 or (i + 1) % step != 0
        ]
        fields.update(
            num_experts=experts,
            experts_per_token=g("num_experts_per_tok"),
            moe_intermediate_size=g("moe_intermediate_size"),
            dense_layers=tuple(dense),
        )
        if len(dense) == layers:  # no sparse layer at all: a dense Qwen3
            for key in ("num_experts", "experts_per_token", "moe_intermediate_size"):
                fields.pop(key)
            fields.pop("dense_layers")
    if model_type == "deepseek_v3":
        mla: dict[str, int | None] = {
            key: _int(g(key), key, p)
            for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        }
        q_rank = o("q_lora_rank")  # null: a full q_proj (DeepSeek-V2-Lite)
        mla["q_lora_rank"] = None if q_rank is None else _int(q_rank, "q_lora_rank", p)
        # NOTE: transformers makes layer i an MoE layer when i >= first_k_dense_replace and
        # ignores moe_layer_freq (1 in every released DeepSeek-V2/V3 config).
        first_dense = _int(g("first_k_dense_replace"), "first_k_dense_replace", p)
        fields.update(
            mla=mla,
            head_dim=_int(g("qk_nope_head_dim"), "qk_nope_head_dim", p)
            + _int(g("qk_rope_head_dim"), "qk_rope_head_dim", p),
            num_key_value_heads=heads,  # MLA expands keys and values to every head
            num_experts=g("n_routed_experts"),
            experts_per_token=g("num_experts_per_tok"),
            moe_intermediate_size=g("moe_intermediate_size"),
            shared_experts=o("n_shared_experts") or 0,
            dense_layers=tuple(range(min(first_dense, layers))),
        )
    return fields


def _hf_fields(model_type: str, cfg: dict[str, Any], p: Path) -> dict[str, Any]:
    def g(key: str) -> Any:
        return _get(cfg, key, p)

    if model_type in _LLAMA_LIKE:
        return _llama_like(model_type, cfg, p)
    if model_type == "opt":
        h = g("hidden_size")
        if cfg.get("word_embed_proj_dim", h) != h or not cfg.get("do_layer_norm_before", True):
            raise UserError(
                f"{p}: OPT with projected embeddings or post-LayerNorm (OPT-350m) is not modelled",
                "use opt-125m or opt-1.3b, whose blocks have the same kind",
            )
        bias = bool(cfg.get("enable_bias", True))
        return dict(
            arch=Arch.DECODER,
            hidden_size=h,
            num_layers=g("num_hidden_layers"),
            num_attention_heads=g("num_attention_heads"),
            intermediate_size=g("ffn_dim"),
            vocab_size=g("vocab_size"),
            max_position_embeddings=g("max_position_embeddings"),
            mlp=_act(cfg.get("activation_function", "relu")),
            norm=Norm.LAYERNORM,
            position=Position.LEARNED,
            # OPT's learned position table has 2 extra rows (a fairseq padding offset).
            learned_position_offset=2,
            qkv_bias=bias,
            out_bias=bias,
            mlp_bias=bias,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        )
    if model_type == "gpt2":
        h = g("n_embd")
        return dict(
            arch=Arch.DECODER,
            hidden_size=h,
            num_layers=g("n_layer"),
            num_attention_heads=g("n_head"),
            intermediate_size=cfg.get("n_inner") or 4 * h,
            vocab_size=g("vocab_size"),
            max_position_embeddings=g("n_positions"),
            mlp=_act(cfg.get("activation_function", "gelu_new")),
            norm=Norm.LAYERNORM,
            position=Position.LEARNED,
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        )
    # bert: transformers.BertModel, with its pooler (add_pooling_layer=True by default).
    return dict(
        arch=Arch.ENCODER,
        hidden_size=g("hidden_size"),
        num_layers=g("num_hidden_layers"),
        num_attention_heads=g("num_attention_heads"),
        intermediate_size=g("intermediate_size"),
        vocab_size=g("vocab_size"),
        max_position_embeddings=g("max_position_embeddings"),
        mlp=_act(cfg.get("hidden_act", "gelu")),
        norm=Norm.LAYERNORM,
        position=Position.LEARNED,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        type_vocab_size=cfg.get("type_vocab_size", 2),
        pooler=True,
    )


def _act(name: Any) -> Mlp:
    text = str(name).lower()
    return Mlp.RELU if text.startswith("relu") else Mlp.GELU


def _slug(name: str, model_type: str) -> str:
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9.]+", "-", base)
    slug = re.sub(r"\.{2,}", ".", slug)
    slug = re.sub(r"(^|-)\.|\.(-|$)", r"\1\2", slug).strip("-.")
    slug = re.sub(r"-{2,}", "-", slug)
    return slug if re.fullmatch(_ID, slug) else f"hf-{model_type}"
