"""Compute time of one micro-batch on one device: the blocks' GEMMs at their real shapes,
attention per kernel and sequence length, elementwise and norm work at memory bandwidth,
FP8 casts, recompute, and the LM head and loss; measured where the calibration timed the
model's shapes, analytic otherwise."""

from __future__ import annotations

import itertools
import math

from advisor.config import Checkpointing, ContextParallelKind, Fp8Recipe, Stack, Task
from advisor.cost.convnet import conv_gemms, elementwise_bytes
from advisor.cost.data import LayerTiming, ShapeResults
from advisor.cost.efficiency import (
    AttentionKernel,
    attention_efficiency,
    gemm_efficiency,
    split_attention,
)
from advisor.cost.expert_overlap import imbalance_detail, rank_straggler
from advisor.cost.fp8recipes import CAST_BYTES, CAST_DETAIL, GEMM_SHARE, cast_bytes
from advisor.cost.hfbytes import hf_bytes
from advisor.cost.result import ComponentTime, Source, merge
from advisor.cost.setting import Setting
from advisor.cost.shape import Gemm, block_gemms
from advisor.memory import selective_op_recompute_share
from advisor.model.convnet import resnet_layers
from advisor.model.spec import Arch

# Elementwise and norm traffic of one block under the fused stack, per token, in units of
# (h-wide, f-wide) activation tensors read or written, forward only (backward moves about
# twice that): fused add+norm (~3 passes each), rotary inside the attention/QKV kernel, fused
# SwiGLU (2 reads, 1 write): Liger/Apex/TE kernels, torch.compile in torchtitan. The hf stack's
# traffic is measured op by op instead (advisor/cost/hfbytes.py, benchmarks/eager_bytes.py).
_FUSED_PASSES = (8.0, 3.0)
# The loss over the logits, bytes per token per vocabulary entry, forward and backward:
#   hf: bf16 logits written, upcast to fp32 (read 2, write 4), log-softmax (read 4, write 4),
#   gradient (write 4, downcast read 4 write 2): ~28 (transformers' ForCausalLMLoss).
#   fused: chunked/fused linear cross-entropy reads the bf16 logits chunk twice and writes
#   its gradient in place (Liger FusedLinearCrossEntropy; torchtune chunked CE): ~6.
LOSS_BYTES = {Stack.HF: 28.0, Stack.FUSED: 6.0}
# Eager attention materialises its scores: bytes moved per score element (forward and
# backward, forward alone). Under the hf stack they are measured (advisor/cost/hfbytes.py:
# transformers' eager_attention_forward, its scale, additive mask, softmax, casts and dropout
# with CUDA autocast's dtypes; e.g. GPT-2 under amp-fp16 with dropout: 33 forward, 41
# backward, plus its fp32 mask). Under the fused stack unfused attention is
# Megatron's core attention (baddbmm into a 16-bit score buffer, FusedScaleMaskSoftmax with
# 16-bit input and output, attention dropout 0.1 by default with a 1-byte CUDA mask;
# Megatron-LM megatron/model/transformer.py CoreAttention, fused_kernels/
# scaled_upper_triang_masked_softmax.h; vTrain's replica src/model/gpt_modeling.py):
# forward: write S 2, softmax read 2 + write 2, dropout read 2 + write 2 + mask 1, PV read 2
# = 13; backward: write dP 2, dV read P 2, dropout read 2 + mask 1 + write 2, softmax read
# dP 2 + P 2 + write dS 2, dQ and dK read dS 2 + 2 = 19.
_FUSED_EAGER_SCORE_BYTES = (32.0, 13.0)
# FlashAttention's backward does 2.5x the forward's matmul FLOPs (5 matmuls vs 2; Dao 2023,
# sec. 4.1): fwd+bwd = 3.5 x forward. Eager: backward = 2 x forward.
_FLASH_FB = 3.5
_EAGER_FB = 3.0
# FP8 training casts every GEMM operand each micro-step: what each scaling recipe moves is
# in advisor/cost/fp8recipes.py (tensorwise: an amax pass and a cast, then transposed FP8
# copies for the backward GEMMs; torchao float8 tensorwise; Transformer Engine's current
# scaling; Micikevicius et al. 2022). Only the blocks' linear layers run in FP8: attention,
# norms and the LM head stay 16-bit (torchtitan's float8 converter skips `output`;
# Megatron's output layer is not a TE module).

_BACKEND = {
    AttentionKernel.EAGER: "math",
    AttentionKernel.FA2: "flash",
    AttentionKernel.FA3: "flash",
    AttentionKernel.CUDNN: "cudnn",
    AttentionKernel.MEM_EFFICIENT: "mem-efficient",
}


def _find_layer(results: ShapeResults | None, dtype: str) -> LayerTiming | None:
    if results is None:
        return None
    want = "fp32" if dtype == "tf32" else dtype
    return next((lt for lt in results.layers if lt.dtype == want), None)


# --- GEMMs ------------------------------------------------------------------------------


def gemm_seconds(
    s: Setting, gemms: list[Gemm], *, low_precision: bool = True
) -> tuple[float, Source]:
    """Seconds of forward GEMMs; ``low_precision=False`` keeps them 16-bit under FP8."""
    total, sources = 0.0, set()
    fp8 = s.fp8 and low_precision and s.eff.gemm_fp8 is not None
    peak = s.peak() if low_precision else s.peak16()
    share = s.eff.gemm_fp8.value if fp8 and s.eff.gemm_fp8 is not None else 1.0
    if fp8 and s.mb.fp8_recipe is not None:
        share *= GEMM_SHARE[s.mb.fp8_recipe]  # relative to tensorwise (the fitted runs')
    for g in gemms:
        # Under FP8 the measured rows are FP8 GEMMs: not what a 16-bit GEMM runs at.
        measured = measured_gemm(s, g) if low_precision or not s.fp8 else None
        if measured is not None:
            total += g.flops / measured
            sources.add(Source.MEASURED)
            continue
        e = gemm_efficiency(s.eff, g.m, g.n, g.k) * share
        total += g.flops / (peak * e) if peak else 0.0
        sources.add(Source.ANALYTIC)
    src = sources.pop() if len(sources) == 1 else Source.MIXED
    return total, src


def measured_gemm(s: Setting, g: Gemm) -> float | None:
    """The measured FLOP/s of a GEMM of ``g``'s widths, interpolated in its token count."""
    if s.results is None:
        return None
    want = "fp32" if s.dtype == "tf32" else s.dtype
    if not s.results.gemms:
        # Older caches: one layer-shaped GEMM per dtype.
        tflops = s.results.matmul_tflops.get(want)
        return tflops * 1e12 if tflops else None
    rows = sorted(
        (r for r in s.results.gemms if r.dtype == want and {r.n, r.k} == {g.n, g.k}),
        key=lambda r: r.m,
    )
    if not rows:
        return None
    # Interpolate the measured throughput in log(m); clamp outside the measured range.
    if g.m <= rows[0].m:
        return (
            rows[0].tflops * 1e12 * g.m / rows[0].m if g.m < rows[0].m else (rows[0].tflops * 1e12)
        )
    for lo, hi in itertools.pairwise(rows):
        if lo.m <= g.m <= hi.m:
            t = math.log(g.m / lo.m) / math.log(hi.m / lo.m) if hi.m > lo.m else 0.0
            return (lo.tflops + t * (hi.tflops - lo.tflops)) * 1e12
    return rows[-1].tflops * 1e12


def layer_gemm(s: Setting) -> tuple[float, float, Source]:
    """(fwd+bwd, fwd) seconds of one block's weight GEMMs for one micro-batch."""
    if s.spec.cnn is not None:
        # A CNN's "layer" is its whole network, a "token" an image (advisor.cost.convnet).
        conv, src = gemm_seconds(s, conv_gemms(resnet_layers(s.spec.cnn), s.tokens))
        return 3 * conv, conv, src
    measured = _find_layer(s.results, s.dtype)
    if measured is not None and s.tp == 1 and s.spec.num_experts == 1:
        fb = measured.seconds_per_token * s.tokens
        fwd = measured.forward_seconds_per_token
        return fb, (fwd * s.tokens if fwd is not None else fb / 3), Source.MEASURED
    fwd, src = gemm_seconds(s, _block_gemms(s))
    # dgrad and wgrad are GEMMs of the same three dimensions: twice the forward.
    return 3 * fwd, fwd, src


def expert_gemm_share(s: Setting) -> float:
    """Share of one block's forward GEMM seconds that its routed experts take (0 for a
    dense model or a block the calibration timed whole)."""
    if s.spec.num_experts <= 1 or s.spec.cnn is not None or layer_measured(s):
        return 0.0
    gemms = _block_gemms(s)
    total, _ = gemm_seconds(s, gemms)
    routed = [g for g, m in zip(gemms, s.matrices, strict=True) if m[3]]
    experts, _ = gemm_seconds(s, routed) if routed else (0.0, Source.ANALYTIC)
    return experts / total if total > 0 else 0.0


def _block_gemms(s: Setting) -> list[Gemm]:
    """One block's weight GEMMs for this setting's tokens, parallel degrees and experts."""
    return block_gemms(
        s.spec,
        s.tokens,
        s.tp,
        s.ep,
        matrices=s.matrices,
        etp=s.etp,
        expert_rows=s.mb.expert_rows,
    )


def layer_measured(s: Setting) -> bool:
    """Whether the calibration timed this block whole (its elementwise work included)."""
    return _find_layer(s.results, s.dtype) is not None and s.tp == 1 and s.spec.num_experts == 1


# --- attention, elementwise, casts ------------------------------------------------------


def attention(s: Setting) -> tuple[float, float, Source]:
    """(fwd+bwd, fwd) seconds of the attention core of one block, one micro-batch.

    Under context parallelism each rank computes ``1 / cp`` of the whole sequence's
    attention: ring attention its queries against every key chunk, with the causal mask
    balanced over ``2 cp`` chunks (Megatron-Core context parallelism; Dubey et al. 2024,
    sec. 3.3.2), in kernel calls on ``seq / cp``-token chunks; Ulysses every token of
    ``heads / cp`` heads in one call on the whole sequence (Jacobs et al. 2023). A CNN has
    no attention.
    """
    if s.spec.cnn is not None:
        return 0.0, 0.0, Source.ANALYTIC
    seq, mb, cp = s.mb.seq_len, s.mb.micro_batch, s.cp
    share = 1.0 / cp
    ring = s.mb.context_parallel_kind is ContextParallelKind.RING
    chunk = seq // cp if cp > 1 and ring else seq
    if s.results is not None:
        want = "fp32" if s.dtype == "tf32" else s.dtype
        fit = next(
            (
                f
                for f in s.results.attention
                if f.backend == _BACKEND[s.kernel] and f.dtype == want and not f.failed
            ),
            None,
        )
        if fit is not None:
            fb = fit.predict(seq) * mb / s.tp * share
            return fb, fb / 3, Source.MEASURED
    if s.hw is None:
        return 0.0, 0.0, Source.ANALYTIC
    heads = (s.spec.num_attention_heads or 1) / s.tp
    d = s.spec.head_dim or (s.sh.hidden // max(s.sh.heads, 1))
    causal = s.spec.arch is Arch.DECODER
    eager = s.kernel is AttentionKernel.EAGER
    # QK^T and PV: 2 matmuls x 2 s^2 d FLOPs per head; fused kernels skip the masked half.
    fwd_flops = 4 * mb * seq * seq * heads * d * (0.5 if causal and not eager else 1.0) * share
    e = attention_efficiency(s.eff, s.kernel, chunk, d, causal)
    fwd = fwd_flops / (s.peak16() * e)
    if split_attention(s.eff, s.kernel):
        # Forward and backward at their own measured throughputs (the backward runs at a
        # lower share of the peak than the forward: FlashAttention-3 paper, Figs. 5-6).
        e_bwd = attention_efficiency(s.eff, s.kernel, chunk, d, causal, backward=True)
        bwd_factor = (_EAGER_FB if eager else _FLASH_FB) - 1.0
        fb = fwd + bwd_factor * fwd_flops / (s.peak16() * e_bwd)
    else:
        fb = fwd * (_EAGER_FB if eager else _FLASH_FB)
    if eager:
        bw, _ = s.bandwidth()
        total_bytes, fwd_bytes = _FUSED_EAGER_SCORE_BYTES
        if s.mb.stack is Stack.HF:
            row = hf_bytes(s.spec.traits.layout, True, s.mb.precision, s.mb.dropout)
            # the additive mask is one batch x s x s tensor every head of the rank reads
            fwd_bytes = row.score_fwd + row.mask_fwd / heads
            total_bytes = fwd_bytes + row.score_bwd + row.mask_bwd / heads
        scores = heads * mb * seq * seq * share / bw
        fb += total_bytes * scores
        fwd += fwd_bytes * scores
    return fb, fwd, Source.ANALYTIC


def elementwise(s: Setting) -> tuple[float, float, Source]:
    """(fwd+bwd, fwd) seconds of norms, residuals, rotary and activations, one block."""
    if s.spec.cnn is not None:
        act = 4 if s.dtype in ("fp32", "tf32") else 2
        bw, src = s.bandwidth()
        fwd = elementwise_bytes(resnet_layers(s.spec.cnn), s.tokens, act) / bw
        return 3 * fwd, fwd, src
    if layer_measured(s):
        return 0.0, 0.0, Source.MEASURED  # inside the measured block
    h = s.sh.hidden
    f = s.spec.intermediate_size or 4 * h
    # Sequence parallelism splits the norm/residual work across TP ranks; the MLP
    # activation is on the TP-sharded width (Korthikanti et al. 2022, sec. 4.2.2).
    width_f = f * s.spec.experts_per_token
    bw, src = s.bandwidth()
    if s.mb.stack is Stack.HF:
        eager = s.kernel is AttentionKernel.EAGER
        row = hf_bytes(s.spec.traits.layout, eager, s.mb.precision, s.mb.dropout)
        fwd_b = (row.h_fwd * h + row.f_fwd * width_f) / s.tp
        bwd_b = (row.h_bwd * h + row.f_bwd * width_f) / s.tp
        return (fwd_b + bwd_b) * s.tokens / bw, fwd_b * s.tokens / bw, src
    act = 4 if s.dtype in ("fp32", "tf32") else 2
    ph, pf = _FUSED_PASSES
    per_token = (ph * h + pf * width_f) * act / s.tp
    fwd = per_token * s.tokens / bw
    return 3 * fwd, fwd, src


def fp8_casts(s: Setting) -> tuple[float, float]:
    """(fwd+bwd, fwd) seconds of one block's FP8 scaling and casts, one micro-batch."""
    if not s.fp8 or s.eff.gemm_fp8 is None or s.hw is None:
        return 0.0, 0.0
    recipe = s.mb.fp8_recipe or Fp8Recipe.TENSORWISE  # MXFP8/NVFP4: priced as tensorwise
    per = CAST_BYTES[recipe]
    fwd_b = bwd_b = 0.0
    gemms = _block_gemms(s)
    if s.tp > 1:
        # Under TP the column-parallel layers' common input (the attention and the MLP
        # block input) is cast once, on its sequence shard, before the FP8 all-gather
        # (torchao float8_tensor_parallel.PrepareFloat8ModuleInput: "the float8 cast
        # happens before the all-gather ... we perform fp8 allgather only once");
        # backward transposes (or re-quantises) the gathered copy once per module.
        shared_input = 2.0 * s.tokens * s.sh.hidden
        fwd_b += per.cast * shared_input / s.tp
        bwd_b += per.activation_bwd * shared_input
    for g, (_n, _k, row, _expert) in zip(gemms, s.matrices, strict=True):
        mk, nk, mn = g.m * g.k * g.count, g.n * g.k * g.count, g.m * g.n * g.count
        # Under TP a column-parallel layer's input was cast above.
        f, b = cast_bytes(recipe, mk, nk, mn, input_cast=s.tp == 1 or row or _expert)
        fwd_b += f
        bwd_b += b
    bw, _ = s.bandwidth()
    return (fwd_b + bwd_b) / bw, fwd_b / bw


# --- one micro-batch's compute terms ----------------------------------------------------


def block_terms(s: Setting, zeroth: bool, parts: dict[str, ComponentTime]) -> float:
    """Add the blocks' terms of one micro-batch on one stage to ``parts`` (GEMMs, attention,
    elementwise, FP8 casts, recompute); return one block's forward seconds."""
    c = s.mb
    L = s.stage_layers
    g_fb, g_fwd, g_src = layer_gemm(s)
    adapters = c.task in (Task.LORA, Task.QLORA)
    if zeroth:
        body = 2 * g_fwd  # two forward passes, no backward (Malladi et al. 2023)
    elif adapters:
        body = g_fb * 2 / 3  # frozen base: activation gradients only
    else:
        body = g_fb
    if c.dp_sgd and not zeroth:
        body *= 4 / 3  # per-sample gradients redo the weight-gradient GEMMs
    parts["forward_backward"] = ComponentTime(seconds=body * L, source=g_src)
    factor = rank_straggler(s)
    if factor > 1.0:
        # The expert GEMMs end when the busiest expert-parallel rank ends.
        extra = body * expert_gemm_share(s) * (factor - 1.0) * L
        parts["expert_imbalance"] = ComponentTime(
            seconds=extra,
            source=g_src,
            detail=f"busiest of EP={s.ep} ranks routed {factor - 1:.1%} over the mean "
            f"({imbalance_detail(s)})",
        )
    a_fb, a_fwd, a_src = attention(s)
    parts["attention"] = ComponentTime(
        seconds=(2 * a_fwd if zeroth else a_fb) * L, source=a_src, detail=s.kernel.value
    )
    e_fb, e_fwd, e_src = elementwise(s)
    if e_fb:
        parts["elementwise"] = ComponentTime(
            seconds=(2 * e_fwd if zeroth else e_fb) * L,
            source=e_src,
            detail=f"{c.stack.value} stack, at memory bandwidth",
        )
    cast_fb, cast_fwd = fp8_casts(s)
    if cast_fb:
        parts["fp8_casts"] = ComponentTime(
            seconds=(cast_fwd if zeroth else cast_fb) * L,
            source=Source.ANALYTIC,
            detail=CAST_DETAIL[s.mb.fp8_recipe or Fp8Recipe.TENSORWISE],
        )
    if not zeroth:
        rec = _recompute(s, (g_fwd, g_src), (a_fwd, a_src), e_fwd)
        if rec is not None:
            parts["recompute"] = rec
    return g_fwd + a_fwd + e_fwd


def _recompute(
    s: Setting, gemm: tuple[float, Source], attn: tuple[float, Source], e_fwd: float
) -> ComponentTime | None:
    """What activation checkpointing re-runs in backward, on one stage."""
    c = s.mb
    L = s.stage_layers
    (g_fwd, g_src), (a_fwd, a_src) = gemm, attn
    if c.checkpointing is Checkpointing.FULL:
        rec = (g_fwd + a_fwd + e_fwd) * L
        return ComponentTime(seconds=rec, source=merge(g_src, a_src))
    if c.checkpointing is Checkpointing.SELECTIVE:
        # Selective recompute re-runs the attention core and the cheap elementwise ops,
        # not the GEMMs (Korthikanti et al. 2022, sec. 5).
        return ComponentTime(seconds=(a_fwd + e_fwd) * L, source=a_src)
    if c.checkpointing is Checkpointing.SELECTIVE_LAYER:
        # torchtitan's layer-level selective AC: every ac_frequency-th block recomputes
        # its whole forward.
        rec = (g_fwd + a_fwd + e_fwd) * (L // c.ac_frequency)
        return ComponentTime(seconds=rec, source=merge(g_src, a_src))
    if c.checkpointing is Checkpointing.SELECTIVE_OP:
        # torchtitan's op-level SAC re-runs every matmul it does not save (each second
        # mm) and every pointwise op; the attention kernel's output is saved.
        share = selective_op_recompute_share(s.spec)
        rec = (g_fwd * share + e_fwd) * L
        return ComponentTime(seconds=rec, source=g_src)
    return None


def head_terms(s: Setting, zeroth: bool, parts: dict[str, ComponentTime]) -> float:
    """Add the LM head, the loss and embedding gradient and QLoRA's dequantisation of one
    micro-batch to ``parts``; return the head's forward seconds."""
    c = s.mb
    adapters = c.task in (Task.LORA, Task.QLORA)
    # The LM head and the loss run on the last pipeline stage, the critical path.
    vocab = s.spec.vocab_size or 0
    head = [Gemm(m=s.tokens, n=max(1, vocab // s.tp), k=s.sh.hidden)]
    head_fwd, head_src = (
        gemm_seconds(s, head, low_precision=False) if vocab else (0.0, Source.ANALYTIC)
    )
    parts["lm_head"] = ComponentTime(seconds=head_fwd * (2 if zeroth else 3), source=head_src)
    bw, bw_src = s.bandwidth()
    cb = 4 if s.dtype in ("fp32", "tf32") else 2
    stack = Stack.FUSED if c.loss_fused else Stack.HF
    per_logit = LOSS_BYTES[stack] * (cb / 2 if stack is Stack.HF else 1.0)
    loss_bytes = s.tokens * vocab / s.tp * (per_logit / 3 * 2 if zeroth else per_logit)
    if not zeroth and not adapters:
        # A dense embedding gradient is zeroed and scattered into (fp32).
        loss_bytes += 2 * vocab * s.sh.hidden * 4 / s.tp
    parts["loss_and_embedding"] = ComponentTime(seconds=loss_bytes / bw, source=bw_src)
    if c.task is Task.QLORA:
        # NF4 dequantisation reads the 4-bit base and writes 16-bit tiles, forward and
        # backward: ~2.5 bytes per weight, twice per micro-step (Dettmers et al. 2023).
        local = s.sh.params / (s.tp * s.pp)
        parts["dequantize"] = ComponentTime(seconds=2 * 2.5 * local / bw, source=bw_src)
    return head_fwd
