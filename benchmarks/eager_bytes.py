"""Measure the bytes each ATen op of a Hugging Face block reads and writes in one training
step, as the step runs on a CUDA GPU: attention scores per element, hidden-state elementwise
traffic per token.

``advisor.cost.compute`` prices the Hugging Face (``hf``) stack's eager attention and its
unfused norms, activations, residuals, casts and dropout at memory bandwidth. This benchmark
counts what really runs instead of guessing pass counts:

- ``transformers`` GPT-2, Llama, OPT and BERT (random weights, tiny widths chosen so that no two of
  tokens, hidden width, FFN width, vocabulary and sequence length coincide) run one forward
  (with ``labels``) and one backward under a ``TorchDispatchMode`` that records, for every
  ATen op, the bytes of each input and output tensor (the storage a view spans: broadcast
  dimensions, stride 0, count once). Each model runs with 1 and 2 layers: the difference
  is one block. Views, metadata and allocations move nothing (``host_ops.METADATA_OPS``).
- Each tensor is *score*-shaped (its last two dimensions are sequence x sequence: the
  attention scores, probabilities, the additive mask and their gradients), *hidden*-shaped
  (its footprint is a whole multiple of the token count: it is per token) or *weight*-shaped
  (everything else: parameters, their gradients and 16-bit copies). Hidden tensors whose
  per-token width is a multiple of the FFN width are *f*-wide, the others *h*-wide.
- Dtypes are those of a CUDA GPU under ``torch.autocast(device_type="cuda")``, not the
  CPU's: a ``TorchFunctionMode`` applies the CUDA autocast op lists to the model's calls
  (matmul, linear, addmm, bmm, baddbmm, SDPA, ... cast to the 16-bit type; pow, rsqrt, exp,
  log, layer_norm, nll_loss, ... to fp32; softmax, log_softmax, sum, cumsum ... run with
  ``dtype=torch.float32`` unless a dtype is given), caching the 16-bit copies of leaf
  weights for the forward as autocast does. Lists: https://docs.pytorch.org/docs/stable/
  amp.html#cuda-ops-that-can-autocast-to-float16 and ...-to-float32, and
  aten/src/ATen/autocast_mode.cpp (KERNEL_CUDA entries, incl. scaled_dot_product_attention
  and the fp32_set_opt_dtype softmax). The CPU's autocast lists differ (softmax, layer_norm
  and pow stay 16-bit there), so CPU autocast is not used.
- CUDA kernels the CPU runs differently are run as CUDA runs them: dropout as
  ``native_dropout`` (one kernel, a 1-byte bool mask; the CPU's ``dropout`` multiplies by a
  full-width noise tensor), ``softmax(x_fp16, dtype=float32)`` as one kernel that reads fp16
  and writes fp32 (and its backward writes fp16 directly: ATen SoftMax.cpp's
  ``half_to_float`` path, CUDA only; bf16 takes a separate cast), SDPA with dropout as the
  fused kernel (dropout inside the kernel: no extra traffic).
- Modes: ``amp-fp16`` / ``amp-bf16`` (fp32 weights, autocast), ``bf16`` / ``fp16`` (the
  model in 16-bit, no autocast: DeepSpeed/Megatron-style ``*-mixed`` runs of HF modules),
  ``fp32``.

    python -m benchmarks.eager_bytes --out benchmarks/results/eager_bytes.json

About 10 s on one thread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.host_ops import METADATA_OPS, tiny_hf_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "eager_bytes.json"

# Tiny widths, pairwise distinct, so that a tensor's shape says what it is: tokens = 60,
# hidden 48 (4 heads of 12), FFN 176 (not a multiple of 48), vocabulary 101, sequence 20.
BATCH, SEQ, WIDTH, HEADS, FFN, VOCAB, POSITIONS = 3, 20, 48, 4, 176, 101, 32
TOKENS = BATCH * SEQ
FAMILIES = ("gpt2", "llama", "opt", "bert")
MODES = ("amp-fp16", "amp-bf16", "fp16", "bf16", "fp32")
GEMM_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"})
ATTENTION_PREFIX = ("_scaled_dot_product", "_flash_attention", "_efficient_attention")
# Ops that overwrite their first argument without reading it.
WRITE_ONLY_SELF = frozenset(
    {"copy_", "fill_", "zero_", "normal_", "uniform_", "bernoulli_", "random_", "full"}
)

# CUDA autocast policies by the name of the Python-level call (autocast_mode.cpp).
_LOWER = frozenset(
    {
        "matmul",
        "__matmul__",
        "__rmatmul__",
        "linear",
        "addmm",
        "addmv",
        "addr",
        "mm",
        "mv",
        "bmm",
        "baddbmm",
        "addbmm",
        "einsum",
        "chain_matmul",
        "multi_dot",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "prelu",
        "scaled_dot_product_attention",
    }
)
_FP32 = frozenset(
    {
        "acos",
        "asin",
        "cosh",
        "erfinv",
        "exp",
        "expm1",
        "log",
        "log10",
        "log2",
        "log1p",
        "reciprocal",
        "rsqrt",
        "sinh",
        "tan",
        "pow",
        "__pow__",
        "__rpow__",
        "softplus",
        "layer_norm",
        "group_norm",
        "nll_loss",
        "kl_div",
        "l1_loss",
        "smooth_l1_loss",
        "huber_loss",
        "mse_loss",
        "binary_cross_entropy_with_logits",
        "cdist",
        "dist",
        "logsumexp",
        "cosine_similarity",
        "renorm",
    }
)
_FP32_SET_DTYPE = frozenset({"softmax", "log_softmax", "sum", "prod", "cumsum", "cumprod"})


def _footprint(t: Any) -> int:
    """Bytes of the storage a tensor view spans, broadcast (stride-0) dimensions once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _kind(t: Any) -> str:
    """``score``, ``mask``, ``hidden_h``, ``hidden_f`` or ``weight`` (module docstring)."""
    if t.dim() >= 2 and tuple(t.shape[-2:]) == (SEQ, SEQ):
        # one mask shared by every head (the additive causal mask): per batch x s x s
        return "score" if _footprint(t) // t.element_size() % (HEADS * SEQ * SEQ) == 0 else "mask"
    elems = _footprint(t) // t.element_size()
    if elems and elems % TOKENS == 0:
        width = elems // TOKENS
        return "hidden_f" if width % FFN == 0 else "hidden_h"
    return "weight"


def _tensors(x: Any) -> list[Any]:
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for y in x for t in _tensors(y)]
    return []


def _base(func: Any) -> str:
    return str(getattr(func, "__name__", func)).split(".")[0]


class _Recorder:
    """Per-op bytes read and written, by tensor kind and phase (forward/backward)."""

    def __init__(self, fp16_softmax_fused: bool) -> None:
        self.phase = "forward"
        self.ops: list[dict[str, Any]] = []
        self.fused = fp16_softmax_fused

    def mode(self) -> Any:
        from torch.utils._python_dispatch import TorchDispatchMode

        rec = self

        class _Mode(TorchDispatchMode):  # type: ignore[misc]
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                rec.record(func, args, kwargs or {}, out)
                return out

        return _Mode()

    def record(self, func: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        name = _base(func)
        if name in METADATA_OPS:
            return
        ins = _tensors(list(args) + list(kwargs.values()))
        if name in WRITE_ONLY_SELF and ins:
            ins = ins[1:]
        outs = _tensors(out)
        if not ins and not outs:
            return
        rw = [(t, "read") for t in ins] + [(t, "write") for t in outs]
        entry: dict[str, Any] = {"op": name, "phase": self.phase, "bytes": {}, "dtypes": []}
        for t, way in rw:
            key = _kind(t)
            entry["bytes"][key] = entry["bytes"].get(key, 0) + _footprint(t)
            entry["dtypes"].append(f"{way[0]}:{key}:{str(t.dtype).removeprefix('torch.')}")
        self.ops.append(entry)

    def fuse_fp16_softmax(self) -> None:
        """CUDA's softmax(x_fp16, dtype=float32) is one kernel (read fp16, write fp32) and
        its backward writes fp16 directly (ATen SoftMax.cpp, half_to_float): merge the
        CPU's separate cast into it."""
        if not self.fused:
            return
        merged: list[dict[str, Any]] = []
        fused_forward = 0
        for e in self.ops:
            prev = merged[-1] if merged else None
            fwd_cast = (
                e["op"] in ("_softmax", "_log_softmax")
                and prev is not None
                and prev["op"] == "_to_copy"
                and prev["dtypes"] == ["r:score:float16", "w:score:float32"]
            )
            bwd_cast = (
                fused_forward > 0
                and prev is not None
                and prev["op"] in ("_softmax_backward_data", "_log_softmax_backward_data")
                and e["op"] == "_to_copy"
                and e["dtypes"] == ["r:score:float32", "w:score:float16"]
            )
            if fwd_cast and prev is not None:
                # cast r2 w4 + softmax r4 w4 -> softmax r2 w4: drop the cast and half the read
                half = prev["bytes"]["score"] // 3  # the cast's fp16 read
                e = dict(e, bytes=dict(e["bytes"], score=e["bytes"]["score"] - half))
                e["fused_cast"] = True
                e["dtypes"] = ["r:score:float16", "w:score:float32"]
                merged[-1] = e
                fused_forward += 1
                continue
            if bwd_cast and prev is not None:
                # softmax_bwd r4 r4 w4 + cast r4 w2 -> r4 r4 w2
                fp32_out = e["bytes"]["score"] * 2 // 3
                prev = dict(
                    prev, bytes=dict(prev["bytes"], score=prev["bytes"]["score"] - fp32_out // 2)
                )
                prev["fused_cast"] = True
                prev["dtypes"] = [*prev["dtypes"][:-1], "w:score:float16"]
                merged[-1] = prev
                fused_forward -= 1
                continue
            merged.append(e)
        self.ops = merged


def _autocast_mode(low: Any) -> tuple[Any, Callable[[], None]]:
    """A TorchFunctionMode applying CUDA autocast's op lists with 16-bit type ``low``."""
    import torch
    from torch.overrides import TorchFunctionMode

    cache: dict[int, Any] = {}

    def cast(x: Any, to: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return type(x)(cast(y, to) for y in x)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        if x.dtype in (to, torch.float64):
            return x
        if to is not torch.float32 and x.is_leaf and x.requires_grad:
            # autocast caches the 16-bit copy of a leaf weight for the region
            if id(x) not in cache:
                cache[id(x)] = x.to(to)
            return cache[id(x)]
        return x.to(to)

    class _Autocast(TorchFunctionMode):  # type: ignore[misc]
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = dict(kwargs or {})
            name = getattr(func, "__name__", "")
            if name == "dropout" and func is torch.nn.functional.dropout:
                # CUDA's aten::dropout is the fused native_dropout (1-byte mask)
                x = args[0]
                p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                train = kwargs.get("training", args[2] if len(args) > 2 else True)
                if train and 0 < p < 1:
                    return torch.native_dropout(x, p, True)[0]
                return x
            if name == "scaled_dot_product_attention":
                # the fused CUDA kernels draw the dropout mask inside the kernel
                kwargs["dropout_p"] = 0.0
                args = args[:5]
            if low is None:
                return func(*args, **kwargs)
            if name in _LOWER:
                return func(*cast(args, low), **{k: cast(v, low) for k, v in kwargs.items()})
            if name in _FP32:
                f32 = torch.float32
                return func(*cast(args, f32), **{k: cast(v, f32) for k, v in kwargs.items()})
            if name in _FP32_SET_DTYPE and kwargs.get("dtype") is None:
                t = args[0] if args else None
                if isinstance(t, torch.Tensor) and t.is_floating_point() and len(args) < 3:
                    kwargs["dtype"] = torch.float32
            return func(*args, **kwargs)

    return _Autocast(), cache.clear


def _model(family: str, layers: int, dropout: bool, attn: str, dtype: Any) -> Any:
    # The families' default dropout, 0.1 on the hidden states and the attention
    # probabilities (GPT2Config, OPTConfig, BertConfig); Llama has none by default.
    p = 0.1 if dropout and family != "llama" else 0.0
    model = tiny_hf_model(
        family,
        layers,
        attn,
        width=WIDTH,
        heads=HEADS,
        ffn=FFN,
        vocab=VOCAB,
        positions=POSITIONS,
        hidden_dropout=p,
        attention_dropout=p,
    ).to(dtype)
    for p_ in model.parameters():
        assert (p_.numel() % TOKENS) != 0, "a weight would read as per-token"
    return model


def _run(family: str, layers: int, dropout: bool, attn: str, mode: str) -> list[dict[str, Any]]:
    import torch

    low = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}.get(mode)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode, torch.float32)
    torch.manual_seed(0)
    model = _model(family, layers, dropout, attn, dtype)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    rec = _Recorder(fp16_softmax_fused=mode in ("amp-fp16", "fp16"))
    ac, clear = _autocast_mode(low)
    for counting in (False, True):  # a warm-up first: lazy initialisations run ops of their own
        rec.ops, rec.phase = [], "forward"
        with rec.mode() if counting else _null():
            with ac:
                out = model(input_ids=ids, labels=ids)
            clear()
            rec.phase = "backward"
            out.loss.backward()
        model.zero_grad(set_to_none=True)
    rec.fuse_fp16_softmax()
    return rec.ops


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _sum(ops: list[dict[str, Any]], phase: str, kind: str, skip_gemm: bool) -> int:
    total = 0
    for e in ops:
        if e["phase"] != phase:
            continue
        if skip_gemm and (e["op"] in GEMM_OPS or e["op"].startswith(ATTENTION_PREFIX)):
            continue
        total += e["bytes"].get(kind, 0)
    return total


def _signature(e: dict[str, Any]) -> str:
    return e["op"] + "(" + ",".join(e["dtypes"]) + ")"


def _block_ops(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ops the second layer adds: two's multiset minus one's, by op, dtypes and phase."""
    left: dict[str, int] = {}
    for e in one:
        k = e["phase"] + _signature(e)
        left[k] = left.get(k, 0) + 1
    extra = []
    for e in two:
        k = e["phase"] + _signature(e)
        if left.get(k, 0) > 0:
            left[k] -= 1
            continue
        extra.append(e)
    return extra


def measure_case(family: str, attn: str, mode: str, dropout: bool) -> dict[str, Any]:
    """Bytes of one block: per score element and per token (h- and f-wide)."""
    one = _run(family, 1, dropout, attn, mode)
    two = _run(family, 2, dropout, attn, mode)
    block = _block_ops(one, two)
    scores = BATCH * HEADS * SEQ * SEQ
    res: dict[str, Any] = {
        "family": family,
        "attention": attn,
        "mode": mode,
        "dropout": dropout,
    }
    for phase in ("forward", "backward"):
        res[f"score_bytes_per_element_{phase}"] = _sum(block, phase, "score", False) / scores
        # the head-shared mask, per batch x s x s element (divide by heads per score element)
        res[f"mask_bytes_per_element_{phase}"] = _sum(block, phase, "mask", False) / (
            BATCH * SEQ * SEQ
        )
        for kind in ("hidden_h", "hidden_f"):
            res[f"{kind}_elementwise_bytes_per_token_{phase}"] = (
                _sum(block, phase, kind, True) / TOKENS
            )
            res[f"{kind}_gemm_bytes_per_token_{phase}"] = (
                _sum(block, phase, kind, False) - _sum(block, phase, kind, True)
            ) / TOKENS
    # per-token bytes in units of the hidden width and of the FFN width
    for phase in ("forward", "backward"):
        res[f"h_units_{phase}"] = res[f"hidden_h_elementwise_bytes_per_token_{phase}"] / WIDTH
        res[f"f_units_{phase}"] = res[f"hidden_f_elementwise_bytes_per_token_{phase}"] / FFN
    res["block_ops"] = [
        f"{e['phase']} {e['op']}({', '.join(e['dtypes'])}) "
        + " ".join(f"{k}={v}" for k, v in sorted(e["bytes"].items()))
        + (" [CUDA's fused cast]" if e.get("fused_cast") else "")
        for e in block
    ]
    return res


def measure() -> dict[str, Any]:
    import torch
    import transformers

    torch.set_num_threads(1)
    cases = [
        measure_case(f, a, m, d)
        for f in FAMILIES
        for a in ("eager", "sdpa")
        for m in MODES
        for d in ((False,) if f == "llama" else (True, False))
    ]
    for c in cases:
        # the op lists of the amp-fp16 cases with the families' default dropout are kept
        # (the file stays small)
        if not (c["mode"] == "amp-fp16" and (c["dropout"] or c["family"] == "llama")):
            c.pop("block_ops")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.eager_bytes --out benchmarks/results/eager_bytes.json",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "shape": {
            "batch": BATCH,
            "seq": SEQ,
            "width": WIDTH,
            "heads": HEADS,
            "ffn": FFN,
            "vocab": VOCAB,
        },
        "note": "bytes each ATen op of one block reads and writes (tensor footprints), one "
        "forward + backward of transformers' GPT-2/Llama, dtypes as CUDA autocast makes them "
        "(see benchmarks/eager_bytes.py); block = 2 layers - 1 layer. score: per element "
        "of batch x heads x seq x seq, every op (GEMMs included); mask: the additive mask every "
        "head shares, per element of batch x seq x seq; hidden_h/hidden_f "
        "elementwise: per token, every op but GEMMs and fused attention kernels; h_units = "
        "hidden_h bytes / hidden width, f_units = hidden_f bytes / FFN width. block_ops: "
        "every op of the block: phase, op(r/w:kind:dtype of each tensor), bytes per kind, "
        "for the amp-fp16 cases with the family's default dropout.",
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    result = measure()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    for c in result["cases"]:
        print(
            f"{c['family']:5} {c['attention']:5} {c['mode']:8} dropout={c['dropout']!s:5} "
            f"score fwd {c['score_bytes_per_element_forward']:5.1f} "
            f"bwd {c['score_bytes_per_element_backward']:5.1f}  "
            f"h-units fwd {c['h_units_forward']:5.1f} bwd {c['h_units_backward']:5.1f}  "
            f"f-units fwd {c['f_units_forward']:5.1f} bwd {c['f_units_backward']:5.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
