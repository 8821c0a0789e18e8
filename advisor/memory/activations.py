"""Activations a transformer block saves for backward, op by op (Hugging Face blocks as
autograd saves them, or the fused kernels' saves), and the model-level tensors outside the
blocks (token and position ids, RoPE tables, the final norm)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from advisor.config import Attention, Precision, Stack
from advisor.memory.convnet import cnn_model_level_bytes, trunk_activation_bytes
from advisor.memory.derived import MemoryModel, as_model
from advisor.memory.dtypes import Dtypes, dtypes
from advisor.memory.params import enum_value, spec_value
from advisor.memory.ssm import ATTENTION, MOE, SSM, mamba_mixer_bytes
from advisor.model.spec import ModelSpec, VisionShape
from advisor.model.traits import FamilyTraits, MoeKernel


def _norm_bytes(
    layernorm: bool,
    t: int,
    h: int,
    c: int,
    out: float,
    res: int,
    fused: bool = False,
    frozen: bool = False,
) -> int:
    """One norm: what autograd keeps of it, its output (the next linear's input) included.

    ``frozen``: the norm's weight gets no gradient (LoRA/QLoRA), so HF RMSNorm's final
    ``weight * normalized`` does not save ``normalized`` (measured with PEFT in
    tests/memory/test_memory_qlora.py); LayerNorm and fused kernels save the same either way."""
    if layernorm or fused:
        # native_layer_norm saves its input and fp32 mean and rstd per row. Fused RMSNorm
        # kernels save the input and an fp32 rstd per row (Liger ``rms_norm`` saves X, W and
        # RSTD; Apex ``FusedRMSNormAffineFunction`` saves input, weight and invvar).
        stats = 8 if layernorm else 4
        return res * t * h + stats * t + math.ceil(out * t * h)
    # HF RMSNorm: x.to(fp32) (a copy unless already fp32), rsqrt per row, the normalized
    # tensor cast back to the input dtype, then weight * normalized (the output).
    normalized = 0 if frozen else (res if res == 4 else c)
    return 4 * t * h + 4 * t + normalized * t * h + math.ceil(out * t * h)


def layer_activation_bytes(
    spec: ModelSpec | MemoryModel,
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
    expert_rows: float = 1.0,
    expert_gather: int = 1,
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
        spec: the model's shapes (or its :class:`~advisor.memory.derived.MemoryModel`).
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
            intermediates are fp32 (measured in tests/memory/test_memory_qlora.py).
        lora_dropout: PEFT's ``lora_dropout > 0``: each adapter runs ``lora_A(dropout(x))``
            on its own, keeping its dropout output (where no autocast cast replaces it)
            and the mask, so adapters reading one tensor no longer share it.
        mask_bytes: bytes per mask element (1: CUDA's bool mask; None: the dropped
            tensor's dtype, the CPU kernel's).
        dropout: the model's dropout on (``TrainingConfig.dropout``): the masks of the two
            hidden-state dropouts (their outputs go into a residual add, which keeps
            nothing) and, under eager attention, the probabilities' mask and the dropped
            probabilities the value matmul keeps (measured on BERT in
            tests/memory/test_memory_encoder.py).

        expert_rows: an MoE block's routed rows relative to dropless balanced routing
            (the capacity factor when padded; :func:`advisor.memory.moe.capacity_scale`).
        expert_gather: the expert tensor-parallel degree (Megatron's
            ``--expert-tensor-parallel-size``): each of its ranks runs the rows of its
            whole expert tensor group, so the per-row hidden-width terms of the routed
            experts (gathered input, weighted output, indices) are ``etp`` times what the
            ``tensor_parallel`` split of the block leaves, while the expert-width terms
            (split ``etp`` ways) keep it (:mod:`advisor.memory.moe`).

    Returns:
        The bytes of one block on one device.
    """
    model = as_model(spec)
    if model.convnet is not None:
        # A CNN's one "layer" is its residual trunk; a "token" is an image.
        return trunk_activation_bytes(model.convnet, micro_batch * seq_len, dtypes(precision))
    spec, d = model.spec, model.shape
    h, a, f = d["h"], d["a"], d["f"]
    b, s = micro_batch, seq_len
    t = b * s
    dt = dtypes(precision)
    c, res = dt.act, dt.residual
    fused = stack is Stack.FUSED
    if fused:
        attention = Attention.FLASH
    k = _Block(
        spec,
        d,
        b,
        s,
        dt,
        attention,
        precision,
        selective,
        lora_targets,
        fused,
        fused_norm,
        quantized,
        lora_dropout,
        expert_rows,
        expert_gather,
    )
    mixers = model.block_mixers
    if mixers is not None:
        total = _hybrid_activation_bytes(k, mixers)
    else:
        total = _norm_activation_bytes(k) + _attention_activation_bytes(k)
        total += _mlp_activation_bytes(k)
    qd, mc = a * d["hd"], res if quantized else c
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


@dataclass(frozen=True)
class _Block:
    """What :func:`layer_activation_bytes`'s parts read: the model, the batch geometry,
    the dtypes and the kernels, and which linears are trained."""

    spec: ModelSpec
    d: Mapping[str, int]
    b: int
    s: int
    dt: Dtypes
    attention: Attention  # flash under the fused stack
    precision: Precision
    selective: bool
    lora_targets: frozenset[str] | None
    fused: bool  # the fused kernel stack
    fused_norm: bool
    quantized: bool
    lora_dropout: bool
    expert_rows: float = 1.0  # routed rows relative to dropless balanced routing
    expert_gather: int = 1  # hidden-width routed rows gathered over the expert tensor group

    @property
    def t(self) -> int:
        return self.b * self.s

    @property
    def cl(self) -> float:
        return self.dt.linear_in

    @property
    def res(self) -> int:
        return self.dt.residual

    @property
    def frozen(self) -> bool:
        return self.lora_targets is not None

    def saved_input(self, *names: str) -> float:
        # A linear with a trainable weight saves its input; a frozen one does not.
        cl, frozen, targets = self.cl, self.frozen, self.lora_targets
        return cl if not frozen or any(n in (targets or ()) for n in names) else 0

    def reads(self, names: tuple[str, ...], one_matrix: bool) -> float:
        # What the linears reading one tensor save of it. Where they take another dtype
        # than the tensor's (autocast's 16-bit inputs from the fp32 residual stream, fp8
        # inputs from bf16) each casts it itself: autocast caches only casts of leaf
        # weights, so q, k and v keep three copies (measured in
        # tests/memory/test_memory_stacks.py). One fused matrix reads it once.
        kept = [n for n in names if self.saved_input(n)]
        if not kept:
            return 0
        # Under LoRA dropout each adapter keeps its own dropped-out copy.
        cl, res = self.cl, self.res
        shared = one_matrix or self.fused or (cl == res and not self.lora_dropout)
        return cl * (1 if shared else len(kept))


def _norm_activation_bytes(k: _Block) -> float:
    """The block's norms (and Qwen3 / Gemma 3 / OLMo 2's q/k norms), their outputs read by
    the projections included."""
    spec, d, t, c, res, frozen = k.spec, k.d, k.t, k.dt.act, k.res, k.frozen
    h, a, kv, qd, kd = d["h"], d["a"], d["kv"], d["a"] * d["hd"], d["kv"] * d["hd"]
    layernorm = enum_value(spec.norm) == "layernorm"
    fused, fused_norm, reads = k.fused, k.fused_norm, k.reads
    norm_out_attn = reads(
        ("q", "k", "v"),
        spec.traits.conv1d or bool(spec_value(spec, "fused_qkv", False)) or bool(d["mla"]),
    )
    mlp_kind = enum_value(spec.mlp)
    norm_out_mlp = reads(
        ("gate", "up"),
        mlp_kind not in ("gated-silu", "gated-gelu")
        or bool(spec_value(spec, "fused_gate_up", False))
        or bool(d["Lm"]),
    )
    fnorm = fused or fused_norm
    placement = enum_value(spec_value(spec, "block_norms", "pre"))
    if placement == "post":
        # OLMo 2 normalises the outputs of attention and of the MLP (h = x + norm(f(x))): the
        # projections read the residual stream itself, and each post-norm's output goes
        # into a residual add, which saves nothing.
        total = (norm_out_attn + norm_out_mlp) * t * h
        total += 2 * _norm_bytes(layernorm, t, h, c, 0, c, fnorm, frozen)
    elif placement == "single":
        # One norm feeds attention and the MLP side by side (Phi-1/2, Falcon-7B): its output
        # is one tensor all the projections read, unless each casts its own copy.
        shared = fused or (k.cl == res and not k.lora_dropout)
        out = max(norm_out_attn, norm_out_mlp) if shared else norm_out_attn + norm_out_mlp
        total = _norm_bytes(layernorm, t, h, c, out, res, fnorm, frozen)
    else:
        total = _norm_bytes(layernorm, t, h, c, norm_out_attn, res, fnorm, frozen)
        total += _norm_bytes(layernorm, t, h, c, norm_out_mlp, res, fnorm, frozen)
        if bool(spec_value(spec, "parallel_residual", False)):
            # Both norms read the block's input (GPT-NeoX, Falcon-40B): LayerNorm and the
            # fused kernels save that one tensor; HF RMSNorm's fp32 copy is the input itself
            # only when the residual is fp32 already, else each norm makes its own.
            total -= res * t * h if layernorm or fnorm else (4 * t * h if res == 4 else 0)
        if placement == "sandwich":
            # Gemma 2/3 also normalise both outputs before the residual add.
            total += 2 * _norm_bytes(layernorm, t, h, c, 0, c, fnorm, frozen)
    # Gemma's RMSNorm multiplies by (1 + weight) in fp32 and OLMo 2's by its weight in fp32
    # before casting back: the normalized tensor they keep is fp32 whatever the compute
    # dtype (transformers Gemma3RMSNorm, Olmo2RMSNorm).
    fp32_normalized = spec.traits.fp32_norm_output and not fnorm and not frozen
    if fp32_normalized and not layernorm:
        norms = 4 if placement == "sandwich" else 2
        total += norms * (4 - c) * t * h
    qk_norm = enum_value(spec_value(spec, "qk_norm", "none"))
    if qk_norm != "none" and not d["mla"]:
        # Qwen3 / Gemma 3 (per head) and OLMo 2 (over the projection) RMSNorm q and k after
        # their projections; the output feeds RoPE, which saves only its cos/sin tables.
        rows = a if qk_norm == "head" else 1
        total += _norm_bytes(False, t * rows, qd // rows, c, 0, c, fnorm, frozen)
        rows = kv if qk_norm == "head" else 1
        total += _norm_bytes(False, t * rows, kd // rows, c, 0, c, fnorm, frozen)
        if fp32_normalized:
            total += (4 - c) * t * (qd + kd)
    if spec.traits.qk_l2_norm and not d["mla"]:
        # Llama 4's weightless L2 norm of the rotated q and k (Llama4TextL2Norm): their fp32
        # copy (the tensor itself in fp32) and an fp32 rsqrt per head and row. NoPE layers
        # skip it; the per-block figure counts it on every block.
        total += 4 * t * (qd + kd) + 4 * t * (a + kv)
    return total


def _attention_activation_bytes(k: _Block) -> float:
    """The attention core: Q, K, V, scores (eager) or log-sum-exp (SDPA), the output."""
    spec, d, b, s, t, c, res = k.spec, k.d, k.b, k.s, k.t, k.dt.act, k.res
    a, qd, kd = d["a"], d["a"] * d["hd"], d["kv"] * d["hd"]
    attention, selective, precision, fused = k.attention, k.selective, k.precision, k.fused
    quantized, lora_dropout, saved_input = k.quantized, k.lora_dropout, k.saved_input
    total: float = 0
    # Attention core.
    o_in = saved_input("o")
    fused_qkv_view = (
        not fused
        and bool(spec_value(spec, "fused_qkv", False))
        and not spec.traits.conv1d
        and not d["mla"]
        # Without RoPE (a ViT) q and k stay views of the fused output too: nothing extra.
        and enum_value(spec.position) == "rope"
    )
    if d["mla"]:
        eager = attention is Attention.EAGER and not selective
        total += _mla_activation_bytes(d, b, s, c, eager, saved_input("q"), o_in)
    elif attention is Attention.EAGER and not selective:
        total += 3 * c * t * qd  # Q, K and V expanded to all heads (copies for bmm)
        if spec.traits.attention_sinks:
            # gpt-oss: the softmax spans the scores and a sink column (s + 1), in the
            # logits' dtype, after subtracting the row max, whose int64 indices are kept.
            total += c * b * a * s * (s + 1) + 8 * b * a * s
        elif not spec.traits.eager_softmax_fp32 and precision not in (
            Precision.AMP_FP16,
            Precision.AMP_BF16,
        ):
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
            # NOTE: measured (tests/memory/test_memory_qlora.py): when the 4-bit projections hand
            # SDPA fp32 q, k, v under autocast, o_proj's adapter keeps a contiguous copy of
            # the kernel's output rather than sharing its storage.
            total += o_in * t * qd
        if lora_dropout and o_in:
            total += o_in * t * qd  # o's adapter keeps its dropped-out copy (measured)
    return total


def _dense_mlp_bytes(k: _Block) -> float:
    """A dense MLP of the model's intermediate width (per routed expert: linear in it)."""
    spec, d, t, c, res = k.spec, k.d, k.t, k.dt.act, k.res
    f, fused, saved_input = d["f"], k.fused, k.saved_input
    # 4-bit gate/up return the norm output's dtype.
    mc = res if k.quantized else c
    mlp = enum_value(spec.mlp)
    if mlp in ("gated-silu", "gated-gelu"):  # SiLU and tanh-GELU both save their input
        # hf: gate out, SiLU out, up out (+ product, down's input); fused: gate and up outs.
        return (2 if fused else 3) * mc * t * f + saved_input("down") * t * f
    if mlp == "gelu":
        kept = 1 if fused else (4 if spec.traits.python_gelu else 1)
        return kept * mc * t * f + saved_input("down") * t * f
    # relu saves its output, which is also the next linear's input; a squared ReLU
    # (transformers ReLUSquaredActivation: square(relu(x))) keeps the square too.
    return (2 if spec.traits.squared_relu else 1) * mc * t * f


def _moe_bytes(k: _Block, mlp_bytes: float) -> float:
    """One MoE block's MLP (:func:`_moe_layer_bytes` with this block's dtypes)."""
    gather = k.saved_input("gate", "up")  # the experts' first matmul saves its input
    return _moe_layer_bytes(
        k.d,
        k.t,
        k.dt.act,
        mlp_bytes,
        gather,
        k.frozen,
        k.spec.traits,
        expert_rows=k.expert_rows,
        expert_gather=k.expert_gather,
    )


def _mlp_activation_bytes(k: _Block) -> float:
    """The MLP; an MoE model's averaged over its dense and MoE blocks, so ``num_layers x``
    this figure is the whole stack (DeepSeek-V3's first 3 blocks are dense)."""
    d = k.d
    mlp_bytes = _dense_mlp_bytes(k)
    if not d["Lm"]:
        return mlp_bytes
    L, Lm = d["L"], d["Lm"]
    return -(-((L - Lm) * mlp_bytes + Lm * _moe_bytes(k, mlp_bytes)) // L)


def _hybrid_activation_bytes(k: _Block, mixers: tuple[tuple[int, frozenset[str]], ...]) -> float:
    """A block of a state-space or hybrid model, averaged over its blocks: each block's
    mixers (Mamba-2, attention, MLP, MoE), each behind its own pre-norm (Nemotron-H: one
    per block; Mamba-2: the SSM alone)."""
    spec, d, t, c, res, frozen = k.spec, k.d, k.t, k.dt.act, k.res, k.frozen
    layernorm = enum_value(spec.norm) == "layernorm"
    fnorm = k.fused or k.fused_norm
    gated = enum_value(spec.mlp) in ("gated-silu", "gated-gelu")
    fused_qkv = spec.traits.conv1d or bool(spec_value(spec, "fused_qkv", False)) or bool(d["mla"])
    total: float = 0
    layers = 0
    for count, kinds in mixers:
        block: float = 0
        for kind in sorted(kinds):
            if kind == SSM and spec.ssm is not None:
                out = k.saved_input("ssm_in")
                body = mamba_mixer_bytes(
                    spec.ssm, k.b, k.s, c, fused=k.fused, out_proj_in=k.saved_input("ssm_out")
                )
            elif kind == ATTENTION:
                out = k.reads(("q", "k", "v"), fused_qkv)
                body = _attention_activation_bytes(k)
            elif kind == MOE:
                out = k.reads(("gate", "up"), True)
                body = _moe_bytes(k, _dense_mlp_bytes(k))
            else:
                one = not gated or bool(spec_value(spec, "fused_gate_up", False))
                out = k.reads(("gate", "up"), one)
                body = _dense_mlp_bytes(k)
            block += _norm_bytes(layernorm, t, d["h"], c, out, res, fnorm, frozen) + body
            if spec.traits.fp32_norm_output and not (fnorm or frozen or layernorm):
                block += (4 - c) * t * d["h"]  # Nemotron-H's norm keeps an fp32 product
        total += count * block
        layers += count
    return -(-total // max(layers, 1))


def _mla_activation_bytes(
    d: Mapping[str, int], b: int, s: int, c: int, eager: bool, q_in: float, o_in: float
) -> float:
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
    total: float = 0
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


def _moe_layer_bytes(
    d: Mapping[str, int],
    t: int,
    c: int,
    mlp_bytes: float,
    gather: float,
    frozen: bool,
    traits: FamilyTraits,
    *,
    expert_rows: float = 1.0,
    expert_gather: int = 1,
) -> float:
    """One MoE block's MLP activations.

    transformers 5's experts loop (Qwen3MoeExperts, DeepseekV3Experts, Mixtral's) runs
    each routed token through ``experts_per_token`` experts: per token-expert pair it saves
    what a dense MLP of the expert's width saves, the gathered input of the expert
    (``hidden_states[token_idx]``), the expert's output multiplied by its routing weight
    (kept while the router trains), and int64 token and slot indices. The router saves
    its fp32 probabilities (softmax; DeepSeek-V3: sigmoid, after an fp32 copy of the
    input) and the top-k indices. Shared experts are one dense MLP of their summed width.

    Megatron layouts (:mod:`advisor.memory.moe`): ``expert_rows`` scales the routed terms
    by the padded (or dropped) share of a capacity factor; ``expert_gather`` multiplies the
    per-row hidden-width terms (gathered input, weighted output, indices) by the expert
    tensor group's rows over the tensor split; the expert-width terms keep the tensor split
    (rows x etp / tp, width / etp).
    """
    k, E, h, f, fe = d["k"], d["E"], d["h"], d["f"], d["fe"]
    eg = expert_gather
    per_width = mlp_bytes // f  # the MLP's bytes are linear in its width
    if traits.moe_kernel is MoeKernel.DENSE:
        # Llama 4: every expert runs on every token. The input repeated per expert times
        # the scores (both kept while the router trains), the product (the first bmm's
        # input), the expert MLP; the router keeps its fp32 sigmoid over all experts.
        routed = E * (per_width * fe + gather * t * h + (0 if frozen else c * t * h) + c * t)
        router = 4 * t * E + 8 * t * k
    elif traits.moe_kernel is MoeKernel.GROUPED:
        # Token-expert pairs sorted by expert, one grouped_mm per projection (gpt-oss,
        # Nemotron-H). Per pair: its gathered input; the expert MLP (gpt-oss's clamped
        # SwiGLU keeps the gate_up output, the clamped gate, sigmoid(alpha * gate), up + 1,
        # their product and the down input: 7 expert widths); the output times its routing
        # weight (fp32 from an fp32 router); int64 gather, weight and inverse-permutation
        # indices (and gpt-oss's expert-bias rows).
        expert = 7 * c * fe if traits.clamped_swiglu else per_width // t * fe
        weight = 4 if traits.router_fp32_input else c
        indices = 8 * (4 if traits.clamped_swiglu else 3)
        pair = (gather * h + (0 if frozen else c * h + weight) + indices) * eg + expert
        routed = k * t * pair + 4 * E
        # gpt-oss softmaxes the top-k logits only; Nemotron-H takes an fp32 sigmoid of all.
        router = (c * t * k if traits.router_topk_softmax else 4 * t * E) + 8 * t * k
    else:
        pair_rows = (gather * t * h + (0 if frozen else c * t * h) + 16 * t) * eg
        routed = k * (per_width * fe + pair_rows)
        router = 4 * t * E + 8 * t * k
    if expert_rows != 1.0:
        routed = math.ceil(routed * expert_rows)
    if traits.router_fp32_input:
        router += 4 * t * h  # F.linear(hidden.float(), ...): the fp32 input copy
    shared = per_width * fe * d["S"]
    return routed + router + shared


def model_level_activation_bytes(
    model: MemoryModel,
    b: int,
    s: int,
    precision: Precision,
    attention: Attention,
    full: bool,
    stack: Stack = Stack.HF,
    fused_norm: bool = False,
    frozen: bool = False,
    head_frozen: bool = False,
    *,
    embedding: bool = True,
    head: bool = True,
) -> int:
    """Embedding indices, position ids or tables and the final norm.

    ``embedding`` / ``head``: whether the device runs the embedding (token and learned
    position ids) and the final norm before the LM head. A pipeline's first stage holds the
    embedding and its last the final norm and head (Megatron-Core's ``pre_process`` /
    ``post_process``, torchtitan's split sets ``tok_embeddings`` / ``norm`` to ``None``
    elsewhere); the RoPE tables and an eager mask go to every stage's blocks.

    Under full checkpointing the RoPE tables are arguments of the checkpointed blocks (kept
    by reference, not saved); GPT-2 passes its eager attention mask positionally, so the
    checkpoint saves it once. ``frozen``: the final norm's weight gets no gradient (LoRA);
    ``head_frozen``: nor does the LM head, whose matmul then keeps its weight, not its
    input (autograd's mm saves an operand only for the other's gradient).
    """
    spec, d = model.spec, model.shape
    dt = dtypes(precision)
    t = b * s
    if model.convnet is not None:
        return cnn_model_level_bytes(model.convnet, t, dt)
    vision = spec_value(spec, "vision", None)
    if vision is not None:
        return _vit_model_level(vision, b, s, d["h"], dt, frozen, head_frozen)
    total = 8 * t if embedding else 0  # token ids (int64) for the embedding backward
    position = enum_value(spec.position)
    if position == "learned" and embedding:
        total += 8 * (s if spec.traits.position_ids_one_row else t)  # position ids (GPT-2: one row)
    elif position == "rope" and not full:
        # cos and sin, shared by all layers, as wide as the rotary part of a head: MLA
        # rotates only its qk_rope_head_dim channels (transformers' DeepseekV3 tables),
        # partial rotary (Phi-4-mini) head_dim x partial_rotary_factor.
        rope = d["dr"] if d["mla"] else int(spec_value(spec, "rotary_dim", d["hd"]))
        total += 2 * s * rope * dt.act
    if (
        full
        and spec.traits.eager_causal_mask
        and attention is Attention.EAGER
        and stack is Stack.HF
    ):
        total += dt.act * b * s * s  # the additive causal mask
    if not head:
        return total
    layernorm = enum_value(spec.norm) == "layernorm"
    fused = stack is Stack.FUSED or fused_norm
    head_in = 0 if head_frozen else dt.linear_in
    total += _norm_bytes(layernorm, t, d["h"], dt.act, head_in, dt.residual, fused, frozen)
    return total


def _vit_model_level(
    vision: VisionShape, b: int, s: int, h: int, dt: Dtypes, frozen: bool, head_frozen: bool
) -> int:
    """A ViT's model level (torchvision ``VisionTransformer``, measured in
    ``tests/memory/test_memory_vision.py``): the patch convolution keeps its input images
    (in the compute dtype: autocast's copy) for its weight gradient; the class token's
    concatenation and the position add keep nothing; the final LayerNorm runs over every
    token, and the head reads the class token's row of its output: a slice of it under
    one dtype (the slice keeps the whole output alive), autocast's own copy of the row
    otherwise."""
    image = b * vision.in_channels * vision.image_size**2
    total = 0 if frozen else dt.linear_in * image
    t = b * s
    head_in = 0 if head_frozen else dt.linear_in * (t if dt.linear_in == dt.residual else b) * h
    return math.ceil(total + head_in) + _norm_bytes(True, t, h, dt.act, 0, dt.residual)
