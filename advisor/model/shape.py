"""A model's typed shape: the kinds of its parts (enums), MLA and CNN shapes, and the
integer dimensions every estimate reads (:class:`TransformerShape`).

This module owns the vocabulary the spec is written in; :mod:`advisor.model.spec` builds
on it, and :mod:`advisor.model.counts` lists named tensors from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

Shape = tuple[int, ...]
NamedShapes = list[tuple[str, Shape]]


class FrozenModel(BaseModel):
    """A frozen pydantic record that forbids unknown fields (every model/ data type)."""

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
    # One norm whose output both attention and the MLP read, side by side on one residual:
    # 1 (GPT-J, Phi-1/1.5/2, Falcon-7B; transformers PhiDecoderLayer, FalconDecoderLayer).
    SINGLE = "single"


class SsmShape(FrozenModel):
    """A Mamba-2 mixer (Dao & Gu 2024, arXiv:2405.21060, sec. 7): in_proj to the gate z, x,
    B, C (n_groups x state_size each) and one dt per head; a depthwise causal conv over x, B
    and C; the chunked state-space scan; a gated RMSNorm per group; out_proj."""

    num_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    state_size: int = Field(gt=0, description="N: the state per head channel")
    n_groups: int = Field(gt=0, description="groups sharing B and C (and the gated norm's)")
    conv_kernel: int = Field(gt=0, description="the causal conv's window")
    chunk_size: int = Field(gt=0, description="the scan's chunk (the reference pads to it)")

    @property
    def inner(self) -> int:
        """The mixer's inner width (num_heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """The conv's channels: x, B and C."""
        return self.inner + 2 * self.n_groups * self.state_size

    @property
    def in_proj(self) -> int:
        """in_proj's output width: z, x, B, C and dt."""
        return self.inner + self.conv_dim + self.num_heads


class MlaShape(FrozenModel):
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


class CnnShape(FrozenModel):
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


@dataclass(frozen=True)
class TransformerShape:
    """The integer dimensions of a transformer, typed (the memory model's ``dict`` keyed
    ``"h"``, ``"L"``, ``"Lm"``, ... by name; :meth:`as_dict` gives that dict).

    MoE and MLA dimensions are 0 (and ``experts`` 1) for a model without them.
    """

    hidden: int  # h
    layers: int  # L
    heads: int  # a
    kv_heads: int  # kv
    head_dim: int  # hd
    ffn: int  # f: the dense MLP's width
    vocab: int  # V
    experts: int  # E: routed experts of an MoE layer (1: dense)
    experts_per_token: int  # k
    positions: int  # P: max_position_embeddings
    moe_layers: int  # Lm: layers with an MoE MLP
    expert_ffn: int  # fe: one expert's width
    shared_experts: int  # S: shared experts per MoE layer
    # Multi-head latent attention (DeepSeek-V2/V3): latent ranks and head widths.
    mla: int  # 1 with MLA, else 0
    q_lora_rank: int  # rq
    kv_lora_rank: int  # rkv
    qk_nope_head_dim: int  # dn
    qk_rope_head_dim: int  # dr
    v_head_dim: int  # dv

    def as_dict(self) -> dict[str, int]:
        """The shape under the memory model's short keys (``h``, ``L``, ``a``, ``kv``, ...)."""
        return {_SHORT[k]: v for k, v in asdict(self).items()}


_SHORT = {
    "hidden": "h",
    "layers": "L",
    "heads": "a",
    "kv_heads": "kv",
    "head_dim": "hd",
    "ffn": "f",
    "vocab": "V",
    "experts": "E",
    "experts_per_token": "k",
    "positions": "P",
    "moe_layers": "Lm",
    "expert_ffn": "fe",
    "shared_experts": "S",
    "mla": "mla",
    "q_lora_rank": "rq",
    "kv_lora_rank": "rkv",
    "qk_nope_head_dim": "dn",
    "qk_rope_head_dim": "dr",
    "v_head_dim": "dv",
}
