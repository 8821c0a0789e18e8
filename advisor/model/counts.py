"""Exact parameter counts: the named tensors of the embeddings and head, and of a CNN, with
their true shapes, as the reference implementations build them (one transformer block's
tensors are the block inventory, :mod:`advisor.model.blocks`).

:class:`advisor.model.spec.ModelSpec` sums these lists (``parameter_count`` and friends);
the tests check them against real ``transformers`` and ``torchvision`` models.
"""

from __future__ import annotations

from typing import Protocol

from advisor.model.shape import (
    Arch,
    BlockNorms,
    CnnBlock,
    CnnShape,
    MlaShape,
    Mlp,
    NamedShapes,
    Norm,
    Position,
    QkNorm,
    VisionShape,
)
from advisor.model.traits import FamilyTraits, ModuleLayout


class ShapeSource(Protocol):
    """What the tensor lists read of a model (a :class:`advisor.model.spec.ModelSpec`)."""

    @property
    def arch(self) -> Arch: ...
    @property
    def traits(self) -> FamilyTraits: ...
    @property
    def hidden_size(self) -> int | None: ...
    @property
    def num_attention_heads(self) -> int | None: ...
    @property
    def num_key_value_heads(self) -> int | None: ...
    @property
    def head_dim(self) -> int | None: ...
    @property
    def intermediate_size(self) -> int | None: ...
    @property
    def vocab_size(self) -> int | None: ...
    @property
    def max_position_embeddings(self) -> int | None: ...
    @property
    def mlp(self) -> Mlp | None: ...
    @property
    def norm(self) -> Norm | None: ...
    @property
    def position(self) -> Position | None: ...
    @property
    def learned_position_offset(self) -> int: ...
    @property
    def qkv_bias(self) -> bool: ...
    @property
    def out_bias(self) -> bool: ...
    @property
    def mlp_bias(self) -> bool: ...
    @property
    def tie_word_embeddings(self) -> bool: ...
    @property
    def qk_norm(self) -> QkNorm: ...
    @property
    def block_norms(self) -> BlockNorms: ...
    @property
    def fused_qkv(self) -> bool: ...
    @property
    def fused_gate_up(self) -> bool: ...
    @property
    def mla(self) -> MlaShape | None: ...
    @property
    def num_experts(self) -> int: ...
    @property
    def shared_experts(self) -> int: ...
    @property
    def type_vocab_size(self) -> int: ...
    @property
    def pooler(self) -> bool: ...
    @property
    def vision(self) -> VisionShape | None: ...
    @property
    def gated_mlp(self) -> bool: ...
    @property
    def expert_intermediate_size(self) -> int: ...


def required(value: int | None) -> int:
    """``value``, narrowed: the spec's validator guarantees transformer fields on transformers."""
    if value is None:  # pragma: no cover - excluded by ModelSpec._check_arch
        raise AssertionError("transformer field missing on a validated ModelSpec")
    return value


def _norm(prefix: str, spec: ShapeSource, h: int) -> NamedShapes:
    out: NamedShapes = [(f"{prefix}.weight", (h,))]
    if spec.norm is Norm.LAYERNORM:
        out.append((f"{prefix}.bias", (h,)))
    return out


def _linear(name: str, out_f: int, in_f: int, bias: bool, conv1d: bool = False) -> NamedShapes:
    # NOTE: GPT-2 stores its projections as Conv1D with the weight transposed: (in, out).
    shape = (in_f, out_f) if conv1d else (out_f, in_f)
    return [(f"{name}.weight", shape)] + ([(f"{name}.bias", (out_f,))] if bias else [])


_OUTSIDE_NAMES: dict[ModuleLayout, tuple[str, str, str, str, str]] = {
    # style: token table, position table, token types, embedding norm, final norm, head
    ModuleLayout.LLAMA: (
        "embed_tokens",
        "embed_positions",
        "token_type_embeddings",
        "embed_norm",
        "norm",
    ),
    ModuleLayout.OPT: (
        "embed_tokens",
        "embed_positions",
        "token_type_embeddings",
        "embed_norm",
        "decoder.final_layer_norm",
    ),
    ModuleLayout.GPT2: ("wte", "wpe", "token_type_embeddings", "embed_norm", "ln_f"),
    ModuleLayout.BERT: (
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        "embeddings.token_type_embeddings",
        "embeddings.LayerNorm",
        "final_norm",
    ),
}


def outside_shapes(spec: ShapeSource) -> NamedShapes:
    if spec.vision is not None:
        return vit_outside(spec, spec.vision)
    h, vocab = required(spec.hidden_size), required(spec.vocab_size)
    tokens, positions, types, emb_norm, final_norm = _OUTSIDE_NAMES[spec.traits.layout]
    out: NamedShapes = [(f"{tokens}.weight", (vocab, h))]
    if spec.position is Position.LEARNED:
        rows = required(spec.max_position_embeddings) + spec.learned_position_offset
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


def vit_outside(spec: ShapeSource, vision: VisionShape) -> NamedShapes:
    """A Vision Transformer's tensors outside the blocks, as torchvision's
    ``VisionTransformer`` builds them: the patch projection (a convolution with a bias), the
    class token, the position table (one row per token), the final LayerNorm and the
    classifier head."""
    h, p = required(spec.hidden_size), vision.patch_size
    return [
        ("conv_proj.weight", (h, vision.in_channels, p, p)),
        ("conv_proj.bias", (h,)),
        ("class_token", (1, 1, h)),
        ("encoder.pos_embedding", (1, vision.tokens, h)),
        *_norm("encoder.ln", spec, h),
        ("heads.head.weight", (vision.num_classes, h)),
        ("heads.head.bias", (vision.num_classes,)),
    ]


def _bn(name: str, c: int) -> NamedShapes:
    return [(f"{name}.weight", (c,)), (f"{name}.bias", (c,))]


def cnn_outside(cnn: CnnShape) -> NamedShapes:
    last = cnn.base_width * 2 ** (len(cnn.blocks_per_stage) - 1) * cnn.expansion
    return [
        ("conv1.weight", (cnn.base_width, cnn.in_channels, 7, 7)),
        *_bn("bn1", cnn.base_width),
        ("fc.weight", (cnn.num_classes, last)),
        ("fc.bias", (cnn.num_classes,)),
    ]


def cnn_trunk(cnn: CnnShape) -> NamedShapes:
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
