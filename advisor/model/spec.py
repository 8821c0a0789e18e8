"""The model spec: one network's shape as its published ``config.json`` states it, and the
exact parameter counts derived from it.

A :class:`ModelSpec` holds the shape of one network as its published ``config.json``
states it. Everything else the advisor needs about a model is derived from those
shapes, exactly: the parameter count (checked against real ``transformers`` models
in the tests), the block inventory (:mod:`advisor.model.blocks`: every tensor of one
transformer block with its role, HF name, shape and tensor-parallel split, which counts,
memory and cost derive their lists from; the calibration times optimizers on it) and the
tensors of the embeddings and head (listed by :mod:`advisor.model.counts`). Family
behaviour the shapes do not say is a declared trait (:mod:`advisor.model.traits`), never a
test of the family's name.

Counting conventions, the ones the reference implementations use:

* decoders (``arch: decoder``) are counted as the causal-LM model: embeddings, the
  blocks, the final norm and the LM head unless ``tie_word_embeddings``, with the tensors
  transformers 5 builds (checked family by family on the meta device in
  ``tests/model/test_model_families.py``): Llama 1-3.x, Mistral, Mixtral, Qwen2/2.5, Qwen3 (q/k
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
(``llama-3.1-8b``, ``qwen2.5-0.5b``), see ``ID_PATTERN``.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

from pydantic import Field, model_validator

from advisor.model.blocks import BlockInventory, Kind, block_inventory
from advisor.model.counts import (
    cnn_outside,
    cnn_trunk,
    outside_shapes,
    required,
)
from advisor.model.inventory import Inventory
from advisor.model.shape import (
    Arch,
    BlockNorms,
    CnnBlock,
    CnnShape,
    FrozenModel,
    MlaShape,
    Mlp,
    NamedShapes,
    Norm,
    Position,
    QkNorm,
    Shape,
    SsmShape,
    TransformerShape,
)
from advisor.model.traits import FamilyTraits, ModuleLayout, family_traits

__all__ = [
    "ID_PATTERN",
    "Arch",
    "BlockNorms",
    "CnnBlock",
    "CnnShape",
    "FamilyTraits",
    "MlaShape",
    "Mlp",
    "ModelSpec",
    "ModuleLayout",
    "NamedShapes",
    "Norm",
    "Position",
    "QkNorm",
    "Shape",
    "SsmShape",
    "TransformerShape",
]

# NOTE: kebab-case segments of [a-z0-9], each segment may hold dots between alphanumerics
# (version numbers: llama-3.1-8b, qwen2.5-0.5b); no leading, trailing or doubled dots.
ID_PATTERN = r"^[a-z0-9]+(\.[a-z0-9]+)*(-[a-z0-9]+(\.[a-z0-9]+)*)*$"
_SOURCE = r"^(https?|file|synthetic):"


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
_DECODER_EXTRAS = (
    "ssm",
    "qk_norm",
    "block_norms",
    "parallel_residual",
    "fused_qkv",
    "fused_gate_up",
    "mla",
)
_MOE_EXTRAS = ("moe_intermediate_size", "shared_experts", "dense_layers")


class ModelSpec(FrozenModel):
    """The shape of one model, as its published configuration states it.

    Transformer fields are ``None`` for CNNs (whose shape is in ``cnn``) and required
    for decoders and encoders; ``num_key_value_heads`` defaults to the number of
    heads and ``head_dim`` to ``hidden_size / num_attention_heads``.
    """

    id: str = Field(pattern=ID_PATTERN)
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
    parallel_residual: bool = Field(
        default=False,
        description="attention and the MLP both read the block's input and add to one "
        "residual, x + attn(norm(x)) + mlp(norm(x)) (GPT-J; GPT-NeoX use_parallel_residual, "
        "Falcon parallel_attn, Phi-1/2)",
    )
    fused_qkv: bool = Field(default=False, description="one qkv_proj matrix (Phi-3)")
    fused_gate_up: bool = Field(default=False, description="one gate_up_proj matrix (Phi-3)")
    mla: MlaShape | None = Field(default=None, description="multi-head latent attention")
    ssm: SsmShape | None = Field(
        default=None,
        description="the Mamba-2 mixer of a state-space or hybrid model (read from its "
        "config.json; the inventory says which blocks have one)",
    )
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
    traits: FamilyTraits = Field(
        default_factory=FamilyTraits,
        description="what the family's reference implementation does beyond these shapes "
        "(advisor.model.traits); filled from ``family`` when not stated",
    )

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
        if data.get("traits") is None and isinstance(data.get("family"), str):
            data["traits"] = family_traits(data["family"], data.get("arch", Arch.DECODER))
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

    @cached_property
    def shape(self) -> TransformerShape:
        """The integer dimensions of a transformer, typed (see :class:`TransformerShape`;
        ``shape.as_dict()`` is the memory model's dict keyed ``"h"``, ``"L"``, ``"Lm"``).

        Raises:
            AssertionError: for a CNN, which has no transformer dimensions.
        """
        h, a = required(self.hidden_size), required(self.num_attention_heads)
        f, layers, mla = required(self.intermediate_size), required(self.num_layers), self.mla
        experts = self.num_experts
        return TransformerShape(
            hidden=h,
            layers=layers,
            heads=a,
            kv_heads=self.num_key_value_heads if self.num_key_value_heads is not None else a,
            head_dim=self.head_dim if self.head_dim is not None else h // a,
            ffn=f,
            vocab=required(self.vocab_size),
            experts=experts,
            experts_per_token=self.experts_per_token,
            positions=self.max_position_embeddings or 0,
            moe_layers=layers - len(self.dense_layers) if experts > 1 else 0,
            expert_ffn=self.moe_intermediate_size if self.moe_intermediate_size else f,
            shared_experts=self.shared_experts,
            mla=int(mla is not None),
            q_lora_rank=(mla.q_lora_rank or 0) if mla is not None else 0,
            kv_lora_rank=mla.kv_lora_rank if mla is not None else 0,
            qk_nope_head_dim=mla.qk_nope_head_dim if mla is not None else 0,
            qk_rope_head_dim=mla.qk_rope_head_dim if mla is not None else 0,
            v_head_dim=mla.v_head_dim if mla is not None else 0,
        )

    @cached_property
    def block(self) -> BlockInventory:
        """The block inventory: every tensor of one block with its role, shape, split and
        HF name (:mod:`advisor.model.blocks`), the one list counts, memory and cost derive
        theirs from.

        Raises:
            AssertionError: for a CNN, which has no transformer blocks.
        """
        if self.cnn is not None:
            raise AssertionError("a CNN has no transformer blocks")
        layers = required(self.num_layers)
        return block_inventory(self, layers, self.moe_layer_count(), self.inventory)

    @property
    def gated_mlp(self) -> bool:
        """Whether the MLP has three matrices (gate, up, down): SwiGLU or GeGLU."""
        return self.mlp in (Mlp.GATED_SILU, Mlp.GATED_GELU)

    @property
    def expert_intermediate_size(self) -> int:
        """Width of one routed (or shared) expert."""
        return self.moe_intermediate_size or required(self.intermediate_size)

    def moe_layer_count(self) -> int:
        """How many blocks have an MoE MLP (0 for a dense model)."""
        if self.num_experts == 1 or self.cnn is not None:
            return 0
        return required(self.num_layers) - len(self.dense_layers)

    def layer_groups(self) -> list[tuple[int, NamedShapes]]:
        """The distinct kinds of block, each with how many times it occurs.

        One group for a dense transformer (or a CNN's trunk); an MoE model whose first
        layers are dense (DeepSeek-V3) has two: ``(dense count, dense block)`` and
        ``(MoE count, MoE block)``. ``parameter_count() == sum(count * block params) +
        numel of embedding_shapes()``.
        """
        if self.cnn is not None:
            return [(1, cnn_trunk(self.cnn))]
        return [(g.count, [(t.name, t.shape) for t in g.tensors]) for g in self.block.groups]

    def layer_repeats(self) -> int:
        """How many blocks the model has.

        ``num_layers`` for a transformer; 1 for a CNN, whose stages differ in width, so
        its "layer" is the whole residual trunk. For a model whose blocks are all alike,
        ``parameter_count() == layer_repeats() * layer_parameter_count() + (numel of
        embedding_shapes())``; see :meth:`layer_groups` for mixed dense/MoE stacks.
        """
        return 1 if self.cnn is not None else required(self.num_layers)

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
            return cnn_outside(self.cnn)
        if self.inventory is not None:
            return [(t.name, t.shape) for t in self.inventory.outside]
        return outside_shapes(self)

    def layer_parameter_count(self) -> int:
        """Parameters of the block :meth:`layer_matrix_shapes` lists (all its experts)."""
        return sum(math.prod(s) for _, s in self.layer_matrix_shapes())

    def expert_parameter_count(self) -> int:
        """Parameters of one routed MoE expert (its projections); 0 for a dense model."""
        if self.num_experts == 1 or self.cnn is not None:
            return 0
        if self.inventory is not None:
            # Every routed-expert tensor (biases included), per expert, of the commonest MoE block.
            moe = [g for g in self.block.groups if any(_routed(t.kind) for t in g.tensors)]
            group = max(moe, key=lambda g: g.count)
            return (
                sum(math.prod(t.shape) for t in group.tensors if _routed(t.kind))
                // self.num_experts
            )
        matrices = 3 if self.gated_mlp else 2
        return matrices * required(self.hidden_size) * self.expert_intermediate_size

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


def _routed(kind: Kind) -> bool:
    return kind is Kind.ROUTED
