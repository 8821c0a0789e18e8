"""Count the ATen ops an eager training step dispatches, per block, per head and per
optimizer parameter tensor, and time the host's dispatch of each op on this CPU.

An eager PyTorch step (no torch.compile, no CUDA graphs) costs the host Python, autograd,
the dispatcher and a kernel launch for every ATen op; on a GPU whose kernels are shorter
than that, the device waits for the host. ``advisor.cost.host`` prices that host time from
the counts this benchmark measures:

- Hugging Face ``transformers`` models (random weights, tiny widths: the op count of a block
  does not depend on its widths) run one forward (with ``labels``, so the loss is the
  model's own) and one backward under a ``TorchDispatchMode`` that counts every ATen op.
  Each model is counted at 1 and 2 layers: the difference is one block, the rest is the
  embeddings, the final norm, the LM head and the loss. Per family (GPT-2, Llama, OPT,
  BERT), per attention implementation (``eager``, ``sdpa``) and with dropout on and off.
- ``torch.optim.AdamW`` steps in its three implementations (``foreach=False`` for-loop,
  ``foreach=True``, ``fused=True``) over 1 and 2 parameter tensors: the difference is the
  ops per tensor, the rest the ops per parameter group; likewise
  ``clip_grad_norm_`` (Hugging Face's Trainer clips at 1.0 by default).
- Ops are split into *kernel* ops (ones that launch device work) and *metadata* ops (views,
  ``detach``, ``empty``-like allocations: no kernel on a GPU).
- The host's time per dispatched op: the same forward + backward at tiny widths (1 token,
  width 64: the CPU kernels are negligible beside the dispatch) timed on one thread,
  divided by the op count. That is this CPU's dispatcher + autograd + Python cost, without
  a CUDA launch.

    python -m benchmarks.host_ops --out benchmarks/results/host_ops.json

About 3 minutes on one thread (it imports transformers and PEFT and compiles one Llama block
with Inductor's CPU backend). ``cpu`` in the JSON is ``platform.processor()``; the machine of
the 2026-12-07 run was a 2-core Intel Xeon VM (``/proc/cpuinfo``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "host_ops.json"

# ATen ops that launch no kernel on a GPU: views and aliases, metadata, allocations whose
# contents are written by the next op. Everything else is counted as a kernel op.
METADATA_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "_reshape_alias",
        "reshape",
        "t",
        "transpose",
        "permute",
        "expand",
        "unsqueeze",
        "squeeze",
        "slice",
        "select",
        "as_strided",
        "detach",
        "alias",
        "split",
        "split_with_sizes",
        "unbind",
        "chunk",
        "narrow",
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "lift_fresh",
        "_to_copy_view",
        "is_same_size",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "diagonal",
        "movedim",
        "view_as",
        "_has_compatible_shallow_copy_type",
        # AdamW's step counters are CPU tensors (capturable=False, the default): reading one
        # with .item() launches nothing on a GPU.
        "_local_scalar_dense",
    }
)
# GEMM-class and attention-class ops: what a fused (compiled or Megatron) stack still launches
# one by one.
GEMM_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"})
ATTENTION_OPS_PREFIX = ("_scaled_dot_product", "_flash_attention", "_efficient_attention")

FAMILIES = ("gpt2", "llama", "opt", "bert")
WIDTH, HEADS, FFN, VOCAB, SEQ, BATCH = 64, 4, 256, 128, 16, 2


def _base_name(func: Any) -> str:
    """``aten.addmm.default`` -> ``addmm``."""
    name = getattr(func, "__name__", str(func))
    return name.split(".")[0]


def _counting_mode() -> tuple[Any, Counter[str]]:
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: Counter[str] = Counter()

    class _Count(TorchDispatchMode):  # type: ignore[misc]
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            counts[_base_name(func)] += 1
            return func(*args, **(kwargs or {}))

    return _Count(), counts


def tiny_hf_model(
    family: str,
    layers: int,
    attn: str,
    *,
    width: int,
    heads: int,
    ffn: int,
    vocab: int,
    positions: int,
    hidden_dropout: float,
    attention_dropout: float,
) -> Any:
    """A random-weight ``transformers`` model of ``family`` (gpt2, llama, opt, bert) in
    training mode, with ``attn`` as its attention implementation; also what
    benchmarks/eager_bytes.py measures. Llama has no hidden-state dropout."""
    import transformers as tf

    p, pa = hidden_dropout, attention_dropout
    if family == "gpt2":
        cfg: Any = tf.GPT2Config(
            n_embd=width,
            n_head=heads,
            n_inner=ffn,
            n_layer=layers,
            n_positions=positions,
            vocab_size=vocab,
            resid_pdrop=p,
            embd_pdrop=p,
            attn_pdrop=pa,
        )
        cls: Any = tf.GPT2LMHeadModel
    elif family == "llama":
        cfg = tf.LlamaConfig(
            hidden_size=width,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            vocab_size=vocab,
            max_position_embeddings=positions,
            attention_dropout=pa,
        )
        cls = tf.LlamaForCausalLM
    elif family == "opt":
        cfg = tf.OPTConfig(
            hidden_size=width,
            num_attention_heads=heads,
            ffn_dim=ffn,
            num_hidden_layers=layers,
            vocab_size=vocab,
            max_position_embeddings=positions,
            word_embed_proj_dim=width,
            dropout=p,
            attention_dropout=pa,
            activation_dropout=0.0,
        )
        cls = tf.OPTForCausalLM
    elif family == "bert":
        cfg = tf.BertConfig(
            hidden_size=width,
            num_attention_heads=heads,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            vocab_size=vocab,
            max_position_embeddings=positions,
            hidden_dropout_prob=p,
            attention_probs_dropout_prob=pa,
        )
        cls = tf.BertForMaskedLM
    else:
        raise ValueError(family)
    cfg._attn_implementation = attn
    model = cls(cfg)
    model.train()
    return model


def _model(family: str, layers: int, attn: str, dropout: str) -> Any:
    """A random-weight model; ``dropout`` is ``none``, ``all`` (the families' 0.1 on the
    hidden states and the attention probabilities) or ``hidden`` (0.1 on the hidden states
    only: what SDPA's fused kernels launch on a GPU, where the attention dropout runs inside
    the kernel; CPU SDPA falls back to the math path when the attention dropout is on)."""
    return tiny_hf_model(
        family,
        layers,
        attn,
        width=WIDTH,
        heads=HEADS,
        ffn=FFN,  # GPT-2's default inner width, 4 x WIDTH
        vocab=VOCAB,
        positions=SEQ,
        hidden_dropout=0.1 if dropout != "none" else 0.0,
        attention_dropout=0.1 if dropout == "all" else 0.0,
    )


def _step(
    model: Any, batch: int, seq: int, autocast: bool = False, backward: bool = True
) -> Callable[[], None]:
    import torch

    ids = torch.randint(0, VOCAB, (batch, seq))

    def run() -> None:
        # autocast as Hugging Face's Trainer runs bf16=True (amp-bf16): the forward under
        # autocast, the backward outside it.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        if backward:
            out.loss.backward()
            model.zero_grad(set_to_none=True)

    return run


def _count(run: Callable[[], None]) -> Counter[str]:
    run()  # warm-up: lazy initialisations dispatch ops of their own
    mode, counts = _counting_mode()
    with mode:
        run()
    return counts


def _split(counts: Counter[str]) -> dict[str, int]:
    total = sum(counts.values())
    meta = sum(n for op, n in counts.items() if op in METADATA_OPS)
    gemm = sum(n for op, n in counts.items() if op in GEMM_OPS)
    attn = sum(n for op, n in counts.items() if op.startswith(ATTENTION_OPS_PREFIX))
    return {"all": total, "kernel": total - meta, "gemm": gemm, "attention": attn}


def _minus(a: Counter[str], b: Counter[str]) -> Counter[str]:
    out = Counter(a)
    out.subtract(b)
    return Counter({k: v for k, v in out.items() if v})


def count_model(family: str, attn: str, dropout: str, autocast: bool = False) -> dict[str, Any]:
    """Ops of one block and of the rest (embeddings, final norm, head, loss), fwd + bwd."""
    import torch

    torch.manual_seed(0)
    one = _count(_step(_model(family, 1, attn, dropout), BATCH, SEQ, autocast))
    two = _count(_step(_model(family, 2, attn, dropout), BATCH, SEQ, autocast))
    block = _minus(two, one)
    rest = _minus(one, block)
    fwd_one = _count(_step(_model(family, 1, attn, dropout), BATCH, SEQ, autocast, False))
    fwd_two = _count(_step(_model(family, 2, attn, dropout), BATCH, SEQ, autocast, False))
    return {
        "family": family,
        "attention": attn,
        "dropout": dropout,
        "autocast": autocast,
        "block": _split(block),
        "rest": _split(rest),
        "block_forward": _split(_minus(fwd_two, fwd_one)),
        "rest_forward": _split(_minus(fwd_one, _minus(fwd_two, fwd_one))),
        "block_ops": dict(sorted(block.items())),
    }


def count_optimizer(impl: str) -> dict[str, Any]:
    """AdamW's ops per step: per parameter tensor and per group (the rest)."""
    import torch

    def ops(n_tensors: int) -> Counter[str]:
        params = [torch.nn.Parameter(torch.randn(8, 8)) for _ in range(n_tensors)]
        kw = {"foreach": False} if impl == "for-loop" else {impl: True}
        opt = torch.optim.AdamW(params, lr=1e-3, **kw)

        def run() -> None:
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()

        run()
        run()
        for p in params:
            p.grad = torch.ones_like(p)
        mode, counts = _counting_mode()
        with mode:
            opt.step()
        return counts

    one, two = ops(1), ops(2)
    per_tensor = _minus(two, one)
    group = _minus(one, per_tensor)
    return {
        "optimizer": "adamw",
        "impl": impl,
        "per_tensor": _split(per_tensor),
        "per_group": _split(group),
        "per_tensor_ops": dict(sorted(per_tensor.items())),
    }


def count_bnb_optimizers() -> list[dict[str, Any]]:
    """bitsandbytes' 8-bit optimizers (AdamW8bit, Lion8bit): ops per step, per parameter
    tensor and per group. They loop over the tensors in Python, one blockwise update op
    (``torch.ops.bitsandbytes.optimizer_update_8bit_blockwise``) each; 128 x 128 tensors
    (above bitsandbytes' 4096-element ``min_8bit_size``)."""
    import bitsandbytes as bnb
    import torch

    out = []
    for cls in (bnb.optim.AdamW8bit, bnb.optim.Lion8bit):

        def ops(n_tensors: int, cls: Any = cls) -> Counter[str]:
            params = [torch.nn.Parameter(torch.randn(128, 128)) for _ in range(n_tensors)]
            opt = cls(params, lr=1e-3)
            for _ in range(2):
                for p in params:
                    p.grad = torch.ones_like(p)
                opt.step()
            for p in params:
                p.grad = torch.ones_like(p)
            mode, counts = _counting_mode()
            with mode:
                opt.step()
            return counts

        one, two = ops(1), ops(2)
        per_tensor = _minus(two, one)
        out.append(
            {
                "optimizer": cls.__name__,
                "bitsandbytes": bnb.__version__,
                "per_tensor": _split(per_tensor),
                "per_group": _split(_minus(one, per_tensor)),
                "per_tensor_ops": dict(sorted(per_tensor.items())),
            }
        )
    return out


def count_clip() -> dict[str, Any]:
    """``torch.nn.utils.clip_grad_norm_`` (foreach, the default): per tensor and fixed."""
    import torch

    def ops(n_tensors: int) -> Counter[str]:
        params = [torch.nn.Parameter(torch.randn(8, 8)) for _ in range(n_tensors)]
        for p in params:
            p.grad = torch.ones_like(p)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        mode, counts = _counting_mode()
        with mode:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        return counts

    one, two = ops(1), ops(2)
    per_tensor = _minus(two, one)
    return {
        "per_tensor": _split(per_tensor),
        "fixed": _split(_minus(one, per_tensor)),
    }


# LoRA target sets per family: (the attention projections, every linear of the block), as
# PEFT names the modules.
_LORA_TARGETS = {
    "llama": (
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
    "gpt2": (["c_attn"], ["c_attn", "c_proj", "c_fc"]),
}


def count_lora(family: str, autocast: bool) -> dict[str, Any]:
    """A block's ops under PEFT LoRA (rank 8, no LoRA dropout, SDPA, the model's dropout off),
    at two target sets: their difference over the difference in adapted matrices is the ops
    one adapter adds, the rest the frozen block's own (its weight gradients are never made).
    GPT-2's ``c_proj`` names both the attention output and the MLP output: 1 and 4 matrices."""
    import peft
    import torch

    few, many = _LORA_TARGETS[family]
    n_few, n_many = (4, 7) if family == "llama" else (1, 4)

    def block(targets: list[str]) -> Counter[str]:
        counts = []
        for layers in (1, 2):
            torch.manual_seed(0)
            base = _model(family, layers, "sdpa", "none")
            cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
            model = peft.get_peft_model(base, cfg)
            model.train()
            counts.append(_count(_step(model, BATCH, SEQ, autocast)))
        return _minus(counts[1], counts[0])

    a, b = _split(block(few)), _split(block(many))
    per = {k: (b[k] - a[k]) / (n_many - n_few) for k in a}
    frozen = {k: a[k] - n_few * per[k] for k in a}
    return {
        "family": family,
        "autocast": autocast,
        "targets": [few, many],
        "adapted_matrices": [n_few, n_many],
        "blocks": [a, b],
        "per_adapter": per,
        "frozen_block": frozen,
    }


def count_compiled_block() -> dict[str, Any]:
    """Kernels Inductor generates for one Llama block, forward + backward, when the block is
    compiled (torchtitan's per-block ``torch.compile``, default mode: no CUDA graphs), and the
    GEMM and attention calls it leaves to extern kernels (cuBLAS, SDPA). Counted with
    Inductor's CPU backend (C++ kernels): the fusion decisions are the scheduler's, shared
    with the Triton backend."""
    import torch
    from torch._inductor import metrics

    torch._dynamo.reset()
    metrics.reset()
    torch.manual_seed(0)
    model = _model("llama", 1, "sdpa", "none")
    for layer in model.model.layers:
        layer.compile()
    _step(model, BATCH, SEQ)()
    eager = count_model("llama", "sdpa", "none")["block"]
    return {
        "family": "llama",
        "generated_kernels": metrics.generated_kernel_count,
        "extern_gemm": eager["gemm"],
        "extern_attention": eager["attention"],
        "kernel": metrics.generated_kernel_count + eager["gemm"] + eager["attention"],
        "backend": "inductor cpu (cpp)",
    }


def time_dispatch(family: str, rounds: int = 7, reps: int = 20) -> dict[str, Any]:
    """Seconds of host time per dispatched op: one block-sized step at 1 token of width 64
    (the kernels are negligible beside the dispatch), thread CPU time over the op count."""
    import torch

    torch.manual_seed(0)
    model = _model(family, 2, "sdpa", "none")
    run = _step(model, 1, 1)
    n_ops = sum(_count(run).values())
    per_op = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(reps):
            run()
        per_op.append((time.thread_time() - t0) / reps / n_ops)
    return {
        "family": family,
        "ops_per_step": n_ops,
        "seconds_per_op_median": statistics.median(per_op),
        "seconds_per_op_min": min(per_op),
        "seconds_per_op_max": max(per_op),
        "rounds": rounds,
        "clock": "thread CPU time, 1 thread",
    }


def measure() -> dict[str, Any]:
    """Every count and timing above, with the versions that produced them."""
    import torch
    import transformers

    torch.set_num_threads(1)
    models = [
        count_model(f, a, d, amp)
        for f in FAMILIES
        for a in ("eager", "sdpa")
        for d in (("none", "all", "hidden") if f != "llama" else ("none",))
        for amp in (False, True)
        if not (a == "eager" and d == "hidden")
    ]
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.host_ops --out benchmarks/results/host_ops.json",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "load_avg": os.getloadavg(),
        "shape": {"width": WIDTH, "heads": HEADS, "ffn": FFN, "vocab": VOCAB, "seq": SEQ},
        "note": "ATen ops dispatched by one forward (with labels: the model's own loss) and "
        "one backward, counted with a TorchDispatchMode on the CPU; block = 2 layers - 1 "
        "layer, rest = 1 layer - block; block_forward: the same without the backward. "
        "kernel = all - views/metadata/allocations "
        "(METADATA_OPS). Llama has no dropout on its hidden states (attention_dropout only, "
        "0 by default): counted without. autocast: the forward under CPU bf16 autocast "
        "(amp-bf16); the CUDA autocast op lists cast the same matmul inputs.",
        "models": models,
        "optimizers": [count_optimizer(i) for i in ("for-loop", "foreach", "fused")],
        "bnb_optimizers": count_bnb_optimizers(),
        "clip_grad_norm": count_clip(),
        "compiled_block": count_compiled_block(),
        "lora": [count_lora(f, amp) for f in ("llama", "gpt2") for amp in (False, True)],
        "dispatch_timing": [time_dispatch(f) for f in FAMILIES],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument(
        "--only-bnb",
        action="store_true",
        help="measure only bitsandbytes' optimizers and add them to --out's existing JSON",
    )
    args = parser.parse_args(argv)
    if args.only_bnb:
        assert args.out is not None, "--only-bnb adds to the JSON named by --out"
        result = json.loads(args.out.read_text())
        result["bnb_optimizers"] = count_bnb_optimizers()
        result["bnb_optimizers_date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["bnb_optimizers"], indent=1))
        return 0
    result = measure()
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    for m in result["models"]:
        print(
            f"{m['family']:6} {m['attention']:5} dropout={m['dropout']:6} amp={m['autocast']!s:5} "
            f"block {m['block']} rest {m['rest']}"
        )
    for o in result["optimizers"]:
        print(f"adamw {o['impl']:8} per tensor {o['per_tensor']} per group {o['per_group']}")
    print("clip", result["clip_grad_norm"])
    for t in result["dispatch_timing"]:
        print(
            f"{t['family']}: {t['seconds_per_op_median'] * 1e6:.1f} us/op ({t['ops_per_step']} ops)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
