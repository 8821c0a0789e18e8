"""Time real training steps of a small torch.nn decoder built to a ModelSpec and a TrainingConfig.

The model is what the cost model describes, built from plain torch.nn: token embedding,
``num_layers`` blocks of norm -> q/k/v/o projections -> ``scaled_dot_product_attention``
(causal, under an explicit ``sdpa_kernel`` backend) -> norm -> MLP, a final norm, the LM
head and cross-entropy on random tokens. One timed step is the whole optimizer step:
every micro-batch's forward and backward, the optimizer step and zeroing the gradients
(MeZO: its two forwards and four perturbation passes, through ``step(closure)``).

NOTE: rotary position embeddings are left out: they are elementwise work (< 1% of a step at
these widths) that the cost model does not price either, and leaving them out keeps the
model a few lines long.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from advisor.calibration.optimizers import OPTIMIZERS
from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.model.spec import Mlp, ModelSpec, Norm

_BACKENDS = {
    Attention.EAGER: SDPBackend.MATH,
    Attention.FLASH: SDPBackend.FLASH_ATTENTION,
    Attention.MEM_EFFICIENT: SDPBackend.EFFICIENT_ATTENTION,
}
# NOTE: a static loss scale for the fp16 layouts; dynamic scaling only adds an inf check,
# which is noise next to a step at these sizes.
_FP16_LOSS_SCALE = 1024.0
LORA_ALPHA = 32


class Unsupported(Exception):
    """A configuration this benchmark cannot run on this device (e.g. QLoRA without CUDA)."""


class StepTiming(BaseModel):
    """Measured seconds of one full training step: median and spread of the repeats."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    median_s: float
    iqr_s: float
    repeats: int
    samples: list[float]
    warmup_s: list[float]
    optimizer_variant: str
    capped: bool = False  # the time cap stopped it before the requested repeats
    trainable_parameters: int
    parameters: int


def small_llama(
    *,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    vocab: int,
    kv_heads: int | None = None,
    name: str = "bench",
) -> ModelSpec:
    """A llama-style decoder spec (SwiGLU, RMSNorm, RoPE, no biases, untied head)."""
    return ModelSpec(
        id=f"{name}-h{hidden}-l{layers}",
        name=f"{name} h{hidden} L{layers}",
        family="llama",
        arch="decoder",
        source="synthetic:benchmark",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        max_position_embeddings=8192,
        mlp="gated-silu",
        norm="rmsnorm",
        position="rope",
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )


class _LoRALinear(nn.Module):  # type: ignore[misc]
    """A frozen Linear plus a rank-r update B·A (Hu et al. 2021), B initialised to zero."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.a = nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = LORA_ALPHA / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.a), self.b) * self.scale


def _norm(spec: ModelSpec, width: int) -> nn.Module:
    return nn.LayerNorm(width) if spec.norm is Norm.LAYERNORM else nn.RMSNorm(width, eps=1e-6)


class _Block(nn.Module):  # type: ignore[misc]
    def __init__(self, spec: ModelSpec, checkpointing: Checkpointing) -> None:
        super().__init__()
        h = spec.hidden_size or 0
        self.heads = spec.num_attention_heads or 1
        self.kv_heads = spec.num_key_value_heads or self.heads
        self.head_dim = spec.head_dim or h // self.heads
        q, kv, f = self.heads * self.head_dim, self.kv_heads * self.head_dim, spec.intermediate_size
        assert f is not None
        self.norm1 = _norm(spec, h)
        self.q = nn.Linear(h, q, bias=spec.qkv_bias)
        self.k = nn.Linear(h, kv, bias=spec.qkv_bias)
        self.v = nn.Linear(h, kv, bias=spec.qkv_bias)
        self.o = nn.Linear(q, h, bias=spec.out_bias)
        self.norm2 = _norm(spec, h)
        self.gated = spec.mlp is Mlp.GATED_SILU
        self.gate = nn.Linear(h, f, bias=spec.mlp_bias) if self.gated else None
        self.up = nn.Linear(h, f, bias=spec.mlp_bias)
        self.down = nn.Linear(f, h, bias=spec.mlp_bias)
        self.act = F.relu if spec.mlp is Mlp.RELU else F.gelu
        self.selective = checkpointing is Checkpointing.SELECTIVE

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        y = self.norm1(x)
        q = self.q(y).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(y).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(y).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.selective:
            # Selective recomputation keeps the projections and recomputes only the
            # attention core in the backward pass (Korthikanti et al. 2022).
            a = checkpoint(self._core, q, k, v, use_reentrant=False)
        else:
            a = self._core(q, k, v)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, -1))
        y = self.norm2(x)
        m = F.silu(self.gate(y)) * self.up(y) if self.gate is not None else self.act(self.up(y))
        return x + self.down(m)


class FusedLinearCrossEntropy(torch.autograd.Function):  # type: ignore[misc]
    """Mean cross-entropy of ``h @ weight.T`` that never holds the whole logits matrix.

    The way Liger's fused linear cross-entropy works (liger_kernel/ops/
    fused_linear_cross_entropy.py, Hsu et al. 2024): the forward walks the tokens in chunks,
    computes each chunk's logits, loss and logits gradient (softmax minus one-hot) at once,
    and turns that gradient straight into the gradients of ``h`` and ``weight``; backward
    only scales them. Chunks as Liger sizes them: ``ceil(V / H)`` chunks' worth of tokens
    each hold about as many logits as ``h`` has elements, rounded to a power of two.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        n, width = h.shape
        vocab = weight.shape[0]
        factor = -(-vocab // width)
        chunk = 1 << max(0, (-(-n // factor) - 1).bit_length())
        w = weight.to(h.dtype)
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 softmax for 16-bit inputs
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=acc)
        total = torch.zeros((), dtype=acc)
        for start in range(0, n, chunk):
            hc, tc = h[start : start + chunk], targets[start : start + chunk]
            logits = (hc @ w.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            g = torch.softmax(logits, dim=-1)  # the chunk's logits gradient, in place
            g[torch.arange(len(tc)), tc] -= 1.0
            g /= n
            g16 = g.to(h.dtype)
            grad_h[start : start + chunk] = g16 @ w
            grad_w += (g16.t() @ hc).to(acc)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None


class Decoder(nn.Module):  # type: ignore[misc]
    """The benchmark decoder: embedding, blocks, final norm, LM head, mean cross-entropy."""

    def __init__(self, spec: ModelSpec, config: TrainingConfig) -> None:
        super().__init__()
        h, vocab = spec.hidden_size or 0, spec.vocab_size or 0
        self.embed = nn.Embedding(vocab, h)
        self.blocks = nn.ModuleList(
            _Block(spec, config.savers.checkpointing) for _ in range(spec.num_layers or 0)
        )
        self.norm = _norm(spec, h)
        self.head = nn.Linear(h, vocab, bias=False)
        if spec.tie_word_embeddings:
            self.head.weight = self.embed.weight
        self.full_checkpoint = config.savers.checkpointing is Checkpointing.FULL
        self.fused_loss = config.kernels.loss_fused

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            if self.full_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.fused_loss and torch.is_grad_enabled():
            out: torch.Tensor = FusedLinearCrossEntropy.apply(
                self.norm(x).flatten(0, 1), self.head.weight, targets.flatten()
            )
            return out
        logits = self.head(self.norm(x))
        # The loss in fp32, as Hugging Face models upcast their logits before it.
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def _check_supported(config: TrainingConfig) -> None:
    if config.layout.data_parallel > 1 or config.layout.sharding is not Sharding.NONE:
        raise Unsupported("data-parallel configurations need several devices")
    if config.savers.offload is not Offload.NONE:
        raise Unsupported("offload moves states from an accelerator to the host: no accelerator")
    if config.task is Task.QLORA:
        raise Unsupported("QLoRA's 4-bit base (bitsandbytes) needs CUDA")
    if config.precision is Precision.FP8_MIXED:
        raise Unsupported("fp8 matrix multiplies need Hopper-class GPUs")
    if config.dp_sgd:
        raise Unsupported("per-sample gradients (DP-SGD) are not built into this benchmark")
    if config.kernels.attention is Attention.MEM_EFFICIENT:
        raise Unsupported("the memory-efficient SDPA backend does not exist on CPU")
    if config.savers.activation_offload:
        raise Unsupported("activation offload moves activations from an accelerator to the host")
    if config.savers.optimizer_in_backward and config.batch.grad_accumulation > 1:
        raise Unsupported("per-layer updates cannot accumulate gradients (Lv et al. 2023)")
    if config.layout.tensor_parallel > 1 or config.layout.pipeline_parallel > 1:
        raise Unsupported("tensor and pipeline parallelism need several devices")


_LAYOUT = {
    # precision -> (model dtype, autocast dtype, fp32 master copies)
    Precision.FP32: (torch.float32, None, False),
    Precision.TF32: (torch.float32, None, False),
    Precision.AMP_BF16: (torch.float32, torch.bfloat16, False),
    Precision.AMP_FP16: (torch.float32, torch.float16, False),
    Precision.BF16_MIXED: (torch.bfloat16, None, True),
    Precision.FP16_MIXED: (torch.float16, None, True),
    Precision.BF16: (torch.bfloat16, None, False),
    Precision.FP16: (torch.float16, None, False),
}


def unsupported_reason(config: TrainingConfig) -> str | None:
    """Why this benchmark cannot run ``config`` on a CPU (None: it can)."""
    try:
        _check_supported(config)
    except Unsupported as exc:
        return str(exc)
    entry = OPTIMIZERS.get(config.optimizer)
    if not [v for v in (entry.variants if entry else []) if "cpu" in v.devices]:
        return f"no CPU implementation of {config.optimizer}"
    mixed = _LAYOUT[config.precision][2]
    if config.optimizer == "adam-mini" and (mixed or config.savers.optimizer_in_backward):
        return "Adam-mini needs the module, not detached fp32 master copies or single tensors"
    if (
        config.savers.optimizer_in_backward
        and entry
        and any(v.needs in ("hessian", "closure") for v in entry.variants)
    ):
        return "per-layer updates need a first-order optimizer stepping one tensor at a time"
    if mixed and entry and any(v.needs == "hessian" for v in entry.variants):
        return "Hessian-vector products need the graph, not fp32 master copies of the gradients"
    return None


def build_step(
    spec: ModelSpec, config: TrainingConfig, *, seed: int = 0
) -> tuple[Callable[[], None], str, Decoder]:
    """Build the model, data and optimizer; return one full training step as a closure.

    Args:
        spec: the decoder's shape.
        config: precision, attention, checkpointing, task (LoRA), batch, sequence,
            accumulation and optimizer (``OPTIMIZERS[id]``'s first CPU variant).
        seed: seeds the weights and the random tokens.

    Returns:
        (step, optimizer variant name, model).

    Raises:
        Unsupported: for configurations that cannot run on a CPU.
    """
    reason = unsupported_reason(config)
    if reason is not None:
        raise Unsupported(reason)
    entry = OPTIMIZERS[config.optimizer]
    variant = next(v for v in entry.variants if "cpu" in v.devices)
    torch.manual_seed(seed)
    model = Decoder(spec, config)
    if config.task is Task.LORA:
        for p in model.parameters():
            p.requires_grad_(False)
        for block in model.blocks:
            for name in ("q", "k", "v", "o"):
                setattr(block, name, _LoRALinear(getattr(block, name), config.adapters.lora_rank))
    dtype, autocast_dtype, mixed = _LAYOUT[config.precision]
    model.to(dtype)
    trainable = [p for p in model.parameters() if p.requires_grad]
    master = [nn.Parameter(p.detach().float().clone()) for p in trainable] if mixed else trainable
    if config.savers.optimizer_in_backward:
        fused_step = _in_backward_step(config, model, trainable, master, variant, spec)
        return fused_step, variant.name, model
    optimizer = _build_optimizer(variant, spec, config, master, model)
    vocab, a = spec.vocab_size or 0, config.batch.grad_accumulation
    shape = (a, config.batch.micro_batch, config.batch.seq_len)
    tokens = torch.randint(vocab, shape)
    targets = torch.randint(vocab, shape)
    scale = _FP16_LOSS_SCALE if dtype == torch.float16 else 1.0
    backend = _BACKENDS[config.kernels.attention]

    def amp() -> contextlib.AbstractContextManager[Any]:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        ctx: contextlib.AbstractContextManager[Any] = torch.autocast("cpu", dtype=autocast_dtype)
        return ctx

    def loss_of(i: int) -> torch.Tensor:
        with amp():
            loss: torch.Tensor = model(tokens[i], targets[i])
        return loss

    if variant.needs == "closure":  # zeroth order: forwards only

        def closure() -> torch.Tensor:
            return sum(loss_of(i) for i in range(a)) / a  # type: ignore[return-value]

        def zeroth_step() -> None:
            with sdpa_kernel([backend]):
                optimizer.step(closure)

        return zeroth_step, variant.name, model

    def step() -> None:
        with sdpa_kernel([backend]):
            for i in range(a):
                loss = loss_of(i) / a
                (loss * scale).backward(create_graph=variant.needs == "hessian")
        if mixed:
            for m, p in zip(master, trainable, strict=True):
                m.grad = p.grad.float().div_(scale) if p.grad is not None else None
                p.grad = None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mixed:
            with torch.no_grad():
                for m, p in zip(master, trainable, strict=True):
                    p.copy_(m)

    return step, variant.name, model


def _in_backward_step(
    config: TrainingConfig,
    model: Decoder,
    trainable: list[Any],
    master: list[Any],
    variant: Any,
    spec: ModelSpec,
) -> Callable[[], None]:
    """One step with the optimizer fused into backward: each parameter is stepped and its
    gradient freed as soon as it is accumulated (LOMO, Lv et al. 2023; PyTorch's
    ``register_post_accumulate_grad_hook`` recipe), one optimizer per tensor."""
    dtype, autocast_dtype, mixed = _LAYOUT[config.precision]
    scale = _FP16_LOSS_SCALE if dtype == torch.float16 else 1.0
    vocab = spec.vocab_size or 0
    tokens = torch.randint(vocab, (config.batch.micro_batch, config.batch.seq_len))
    targets = torch.randint(vocab, (config.batch.micro_batch, config.batch.seq_len))
    backend = _BACKENDS[config.kernels.attention]
    for p, m in zip(trainable, master, strict=True):
        opt = _build_optimizer(variant, spec, config, [m], model)

        def hook(p: torch.Tensor, m: torch.Tensor = m, opt: Any = opt) -> None:
            if mixed:
                m.grad = p.grad.float().div_(scale)
                p.grad = None
            opt.step()
            opt.zero_grad(set_to_none=True)
            if mixed:
                with torch.no_grad():
                    p.copy_(m)

        p.register_post_accumulate_grad_hook(hook)

    amp: contextlib.AbstractContextManager[Any] = (
        torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )

    def step() -> None:
        with sdpa_kernel([backend]):
            with amp:
                loss: torch.Tensor = model(tokens, targets)
            (loss * scale).backward()

    return step


def _build_optimizer(
    variant: Any, spec: ModelSpec, config: TrainingConfig, params: list[Any], model: nn.Module
) -> Any:
    if config.optimizer == "adam-mini":
        # NOTE: the calibration table builds Adam-mini with num_embeds=1, num_heads=4, which
        # pytorch-optimizer 4.1 rejects ("1 must be divisible by 4"); a real model passes
        # its own hidden size and head count.
        import pytorch_optimizer

        return pytorch_optimizer.AdamMini(
            model,
            lr=1e-4,
            num_embeds=spec.hidden_size or 0,
            num_heads=spec.num_attention_heads or 1,
            num_query_groups=spec.num_key_value_heads,
        )
    try:
        return variant.build(torch, params, model)
    except (ImportError, RuntimeError, TypeError, ValueError) as exc:
        raise Unsupported(f"{config.optimizer} cannot be built: {exc}") from exc


def time_step(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    repeats: int = 5,
    warmup: int = 2,
    max_seconds: float = 60.0,
    seed: int = 0,
) -> StepTiming:
    """Median and IQR of ``repeats`` (at least 5) full training steps after warm-up.

    Args:
        spec: the decoder's shape.
        config: the configuration to run.
        repeats: timed steps (raised to 5 when lower).
        warmup: untimed steps first (the first SDPA call and allocator growth are slow).
        max_seconds: the time cap for this configuration: no new repeat starts once it is
            spent, but at least 5 steps are always timed unless one warm-up step alone
            exceeds the cap / 6, in which case that step is the only sample (``capped``).
        seed: seeds weights and tokens.

    Returns:
        The timing, with every sample.

    Raises:
        Unsupported: for configurations that cannot run on a CPU.
    """
    repeats = max(repeats, 5)
    step, variant, model = build_step(spec, config, seed=seed)
    start = time.perf_counter()
    warm = []
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        step()
        warm.append(time.perf_counter() - t0)
        if warm[-1] > max_seconds / 6:
            break
    samples: list[float] = []
    capped = warm[-1] > max_seconds / 6
    if capped:
        samples = [warm[-1]]
    else:
        while len(samples) < repeats or (
            len(samples) < 2 * repeats and _iqr(samples) > 0.1 * statistics.median(samples)
        ):
            # NOTE: a noisy run (IQR > 10% of the median) gets up to twice the repeats,
            # while the cap allows: a shared 2-core machine has bursts of other work.
            if len(samples) >= 5 and time.perf_counter() - start > max_seconds:
                capped = len(samples) < repeats
                break
            t0 = time.perf_counter()
            step()
            samples.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return StepTiming(
        median_s=statistics.median(samples),
        iqr_s=_iqr(samples),
        repeats=len(samples),
        samples=[round(s, 6) for s in samples],
        warmup_s=[round(s, 6) for s in warm],
        optimizer_variant=variant,
        capped=capped,
        trainable_parameters=train,
        parameters=params,
    )


def _iqr(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    """Kendall's tau-b between two rankings (ties in either count as neither agreement
    nor disagreement; Kendall 1945)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError("kendall_tau needs two sequences of the same length >= 2")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else 0.0


def use_threads(n: int) -> None:
    """Run torch on ``n`` intra-op threads, and say so where the calibration fingerprint reads it.

    NOTE: the benchmarks default to one thread. On a machine shared with other work, two
    OpenMP threads on two cores stall whenever one core is taken (every parallel region
    waits for the descheduled thread): steps measured 10-20x slower, while one thread
    only loses its share. Calibration and measurement must use the same count.
    """
    import os

    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def other_cpu_share() -> Any:
    """A meter of the CPU time other processes use (``.other_share()`` when done)."""
    from advisor.calibration.timing import CpuShare

    return CpuShare()


@contextlib.contextmanager
def cache_dir(path: str) -> Iterator[None]:
    """Point the calibration cache at ``path`` for the duration (never the user's cache)."""
    import os

    old = os.environ.get("OPTADVISE_CACHE_DIR")
    os.environ["OPTADVISE_CACHE_DIR"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OPTADVISE_CACHE_DIR", None)
        else:
            os.environ["OPTADVISE_CACHE_DIR"] = old
