"""Family behaviour as declared traits: what a family's reference implementation does that
its shape fields do not say (tensor layout, Conv1D projections, activation and attention
quirks), so that shared code branches on a trait, never on a family's name.

A family without an entry in :data:`FAMILY_TRAITS` behaves as Llama (decoders) or BERT
(encoders) does in transformers 5. The spec takes its traits from this table where it is
built (:class:`advisor.model.spec.ModelSpec` fills them from ``family`` unless stated).
"""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from advisor.model.shape import Arch, FrozenModel


class ModuleLayout(str, Enum):
    """Which reference implementation's module tree (and tensor names) a model follows."""

    LLAMA = "llama"  # transformers' LlamaDecoderLayer and its descendants
    OPT = "opt"  # OPTDecoderLayer: q/k/v/out_proj, fc1/fc2, learned positions
    GPT2 = "gpt2"  # GPT2Block: fused c_attn, Conv1D projections, wte/wpe
    BERT = "bert"  # BertLayer: post-LN, embeddings.LayerNorm, pooler


class MoeKernel(str, Enum):
    """How the reference implementation runs its routed experts (transformers 5)."""

    LOOP = "loop"  # a loop over experts, each on its routed tokens (Mixtral, Qwen3-MoE, DeepSeek)
    DENSE = "dense"  # every expert on every token, weighted by a zero-outside-top-k score
    # (Llama4TextMoe: hidden.repeat(num_experts) * router scores, one bmm per projection)
    GROUPED = "grouped"  # token-expert pairs sorted by expert, one grouped_mm per projection,
    # a clamped SwiGLU (GptOssExperts: gate.clamp, gate * sigmoid(alpha * gate), (up + 1))


class FamilyTraits(FrozenModel):
    """What a family's reference implementation does beyond its shape fields."""

    layout: ModuleLayout = ModuleLayout.LLAMA
    conv1d: bool = Field(
        default=False,
        description="projections are Conv1D (GPT-2): weights stored (in, out), always with "
        "a bias (one addmm whatever the bias flags say), q, k and v one fused c_attn matrix",
    )
    python_gelu: bool = Field(
        default=False,
        description="the GELU is written out in Python (GPT-2's tanh GELU, NewGELUActivation): "
        "its forward keeps more intermediates and its backward walks a chain of elementwise ops",
    )
    eager_softmax_fp32: bool = Field(
        default=True,
        description="eager attention runs its softmax in fp32 and casts back (HF's default); "
        "False: in the compute dtype (GPT-2)",
    )
    position_ids_one_row: bool = Field(
        default=False,
        description="learned position ids are one row broadcast over the batch (GPT-2)",
    )
    eager_causal_mask: bool = Field(
        default=False,
        description="the eager attention path materialises an additive b x s x s causal mask "
        "(GPT-2 under the HF stack)",
    )
    fp32_norm_output: bool = Field(
        default=False,
        description="the RMSNorm normalises in fp32 and keeps that fp32 tensor for backward "
        "whatever the compute dtype (Gemma's (1 + weight), OLMo 2's weight: transformers "
        "GemmaRMSNorm, Gemma3RMSNorm, Olmo2RMSNorm)",
    )
    router_fp32_input: bool = Field(
        default=False,
        description="the MoE router reads an fp32 copy of the hidden states "
        "(DeepSeek-V3's F.linear(hidden.float(), ...))",
    )
    squared_relu: bool = Field(
        default=False,
        description="the MLP's activation is a squared ReLU (Nemotron-H's relu2: "
        "square(relu(x)), keeping both)",
    )
    moe_kernel: MoeKernel = Field(
        default=MoeKernel.LOOP, description="how the routed experts run (MoeKernel)"
    )
    clamped_swiglu: bool = Field(
        default=False,
        description="the experts' SwiGLU clamps gate and up and adds 1 to up, with biased "
        "expert projections (gpt-oss: GptOssExperts)",
    )
    router_topk_softmax: bool = Field(
        default=False,
        description="the router takes the top-k logits first and softmaxes only those "
        "(gpt-oss: GptOssTopKRouter)",
    )
    qk_l2_norm: bool = Field(
        default=False,
        description="a weightless L2 norm on q and k after RoPE, in fp32 (Llama 4's "
        "use_qk_norm: Llama4TextL2Norm)",
    )
    attention_sinks: bool = Field(
        default=False,
        description="a learned sink logit per head joins eager attention's softmax, which "
        "then spans s + 1 columns after a max subtraction (gpt-oss: GptOssAttention)",
    )


_GPT2 = FamilyTraits(
    layout=ModuleLayout.GPT2,
    conv1d=True,
    python_gelu=True,
    eager_softmax_fp32=False,
    position_ids_one_row=True,
    eager_causal_mask=True,
)
# NOTE: the families whose reference implementation differs from Llama's (decoders) or
# BERT's (encoders); every other family behaves as those two.
FAMILY_TRAITS: dict[str, FamilyTraits] = {
    "gpt2": _GPT2,
    "opt": FamilyTraits(layout=ModuleLayout.OPT),
    "bert": FamilyTraits(layout=ModuleLayout.BERT),
}


def family_traits(family: str, arch: Arch | str) -> FamilyTraits:
    """The traits of a family (:data:`FAMILY_TRAITS`), else those of its architecture's
    reference: BERT's for an encoder, Llama's for a decoder; with the numerics quirks of
    the Gemma generations, OLMo 2 and DeepSeek-V3 (:func:`_numerics`)."""
    known = FAMILY_TRAITS.get(family)
    if known is None:
        known = FAMILY_TRAITS["bert"] if arch == Arch.ENCODER else FamilyTraits()
    quirks = _numerics(family.lower())
    return FamilyTraits(**{**known.model_dump(), **quirks}) if quirks else known


def _numerics(family: str) -> dict[str, object]:
    """Quirks of a family's reference numerics. Every Gemma generation (gemma, gemma2,
    gemma3, gemma3_text, as configs name them), OLMo 2 and gpt-oss keep an fp32 normalised
    tensor (gpt-oss: ``(weight * hidden.float()).to(dtype)``; Nemotron-H likewise); the
    DeepSeek-V3 and Nemotron-H routers cast their input to fp32; Llama 4, gpt-oss and
    Nemotron-H run their experts their own way (:class:`MoeKernel`), Llama 4's eager softmax
    stays in the compute dtype and gpt-oss's attention has sinks."""
    quirks: dict[str, object] = {}
    if family.startswith("gemma") or family in ("olmo2", "gptoss", "nemotronh"):
        quirks["fp32_norm_output"] = True
    if family in ("deepseekv3", "nemotronh"):
        quirks["router_fp32_input"] = True
    if family == "nemotronh":
        # NemotronHExperts: relu2 experts on sorted token-expert pairs (grouped_mm).
        quirks["moe_kernel"] = MoeKernel.GROUPED
    if family.startswith("llama4"):
        # Llama 4's eager attention runs its softmax in the compute dtype (eager_attention_
        # forward in modeling_llama4: softmax(attn_weights, dim=-1), no fp32).
        quirks.update(moe_kernel=MoeKernel.DENSE, eager_softmax_fp32=False)
    if family == "gptoss":
        quirks.update(
            moe_kernel=MoeKernel.GROUPED,
            attention_sinks=True,
            clamped_swiglu=True,
            router_topk_softmax=True,
        )
    return quirks
