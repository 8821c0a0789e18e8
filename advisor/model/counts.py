"""Exact parameter counts: the named tensors of one block, of the embeddings and head, and
of a CNN, with their true shapes, as the reference implementations build them.

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


def block_shapes(spec: ShapeSource, moe: bool = False) -> NamedShapes:
    h, heads = required(spec.hidden_size), required(spec.num_attention_heads)
    kv, hd, ffn = (
        required(spec.num_key_value_heads),
        required(spec.head_dim),
        required(spec.intermediate_size),
    )
    q_out, kv_out = heads * hd, kv * hd
    style = spec.traits.layout
    out: NamedShapes = []
    if style is ModuleLayout.GPT2:
        conv1d = spec.traits.conv1d
        out += _norm("ln_1", spec, h)
        out += _linear("attn.c_attn", q_out + 2 * kv_out, h, spec.qkv_bias, conv1d=conv1d)
        out += _linear("attn.c_proj", h, q_out, spec.out_bias, conv1d=conv1d)
        out += _norm("ln_2", spec, h)
        mlp_names = ("mlp.c_fc", "mlp.c_proj", "mlp.c_gate")
    elif style is ModuleLayout.BERT:
        out += _linear("attention.self.query", q_out, h, spec.qkv_bias)
        out += _linear("attention.self.key", kv_out, h, spec.qkv_bias)
        out += _linear("attention.self.value", kv_out, h, spec.qkv_bias)
        out += _linear("attention.output.dense", h, q_out, spec.out_bias)
        out += _norm("attention.output.LayerNorm", spec, h)
        mlp_names = ("intermediate.dense", "output.dense", "intermediate.gate")
        conv1d = False
    elif style is ModuleLayout.OPT:
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
    if style is ModuleLayout.BERT:
        out += _norm("output.LayerNorm", spec, h)
    return out


def _attention_shapes(spec: ShapeSource) -> NamedShapes:
    """Attention of a Llama-style block: q/k/v/o, fused qkv (Phi-3), q/k norms, or MLA."""
    h, heads = required(spec.hidden_size), required(spec.num_attention_heads)
    kv, hd = required(spec.num_key_value_heads), required(spec.head_dim)
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


def _moe_shapes(spec: ShapeSource) -> NamedShapes:
    """A sparse MoE MLP as transformers 5 stores it: a bias-free router, the routed experts in
    3-D tensors, and (DeepSeek) the shared experts as one dense MLP of their summed width."""
    h, experts, f = required(spec.hidden_size), spec.num_experts, spec.expert_intermediate_size
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
