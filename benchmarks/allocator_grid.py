"""What the caching allocator's slack depends on: record training-step allocation traces over
a grid of shapes (width 512 to 8192, 2 to 40 layers, 512 to 16k tokens per step, vocab 32k
and 128k; LoRA/full; with and without activation checkpointing), replay each through the
CUDA caching allocator's documented policy (advisor.memory.allocator, default and
``expandable_segments``) and fit the slack model that advisor.memory.slack uses, with
leave-one-shape-out errors.

Each row is a Hugging Face LlamaForCausalLM (bf16, vocab as listed), LoRA r 16 on q,k,v,o
or full fine-tuning, AdamW (foreach), two steps, its trace being every storage an ATen op
creates and the moment it dies. The steps run on the *meta* device: every op allocates its
outputs with their real sizes and no compute is done, so Llama 7B-70B widths trace in
seconds; ``scaled_dot_product_attention`` is pinned to the flash kernel (output and
log-sum-exp kept, as on a GPU; the meta dispatcher would pick the math path). The first
shape is also traced on the CPU with real tensors: the replays must be identical
("cpu_check"). A trace's bytes are split, at the moment of peak allocation, into the
*resident* bytes (storages that outlive the step: weights and optimizer states) and the
*churn* (everything allocated and freed within a step: activations, recomputed
activations, logits, gradients, temporaries). The slack ``reserved - allocated`` is fitted
as ``churn x c`` (c per checkpointing mode): resident storages are allocated once, back to
back, and leave no holes; the holes are left by the churn, whose blocks die in another
order and with other sizes than the next phase asks for (checkpointing's recompute
allocates each block's activations again in the middle of backward, between gradients
that stay).

    python -m benchmarks.allocator_grid            # ~5 min on one CPU thread, ~2 GB RAM
    python -m benchmarks.allocator_grid --refit    # refit the committed rows only
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from advisor.memory.allocator import CachingAllocator, round_size

RESULTS = Path(__file__).parent / "results" / "allocator_grid.json"

#: hidden, layers, micro-batch, sequence, vocabulary: small widths (tensors near the 2 MiB
#: and 20 MiB segment sizes) up to Llama 2 7B / 13B and Llama 3 8B / 70B widths, 512 to
#: 16k tokens per step
SHAPES = [
    (512, 2, 1, 512, 32000),
    (1024, 6, 1, 512, 32000),
    (2048, 3, 2, 1024, 32000),
    (2048, 16, 1, 4096, 32000),
    (4096, 8, 1, 2048, 32000),
    (4096, 32, 1, 4096, 32000),
    (4096, 32, 2, 8192, 128256),
    (5120, 40, 1, 4096, 32000),
    (8192, 8, 1, 4096, 128256),
    (8192, 4, 4, 4096, 128256),
]

#: The shape traced on the CPU as well, to check the meta device's trace against real
#: allocations (identical replays expected).
CPU_CHECK = SHAPES[0]

#: The single share of allocated bytes the estimate used before this model
#: (benchmarks/allocator_fit.py's fit, ALLOCATOR_SLACK), reported for comparison.
PREVIOUS_SLACK = 0.0388


def split_at_peak(events: list[tuple[str, int, int]], resident_before: int) -> dict[str, int]:
    """Peak allocated bytes (rounded as the allocator rounds) and their resident/churn split.

    Args:
        events: a trace from record_trace.
        resident_before: how many of the first alloc events are the parameters.

    Returns:
        peak_allocated, resident (alive at the peak and at the trace's end, or a parameter),
        churn (peak_allocated - resident), largest (the largest single request).
    """
    survivors = {k for kind, k, _ in events if kind == "alloc"}
    for kind, k, _ in events:
        if kind == "free":
            survivors.discard(k)
    params = {k for kind, k, _ in events[:resident_before] if kind == "alloc"}
    sizes: dict[int, int] = {}
    alive = peak = largest = 0
    at_peak: set[int] = set()
    live: set[int] = set()
    for kind, k, size in events:
        if kind == "alloc":
            sizes[k] = round_size(size)
            largest = max(largest, sizes[k])
            live.add(k)
            alive += sizes[k]
            if alive > peak:
                peak = alive
                at_peak = set(live)
        else:
            live.discard(k)
            alive -= sizes[k]
    resident = sum(sizes[k] for k in at_peak if k in survivors or k in params)
    return {
        "peak_allocated": peak,
        "resident": resident,
        "churn": peak - resident,
        "largest": largest,
    }


def record_trace(params: list[Any], step: Any) -> list[tuple[str, int, int]]:
    """As benchmarks.allocator_fit.record_trace, with storages keyed by their StorageImpl
    (``_cdata``) so that meta tensors (no data pointer) are traced too; returns a copy (the
    finalizers go on appending frees when the model dies)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    events: list[tuple[str, int, int]] = []
    live: dict[int, int] = {}  # StorageImpl -> id
    counter = [0]

    def _free(key: int) -> None:
        i = live.pop(key, None)
        if i is not None:
            events.append(("free", i, 0))

    def _track(t: Any) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in live:
            counter[0] += 1
            live[key] = counter[0]
            events.append(("alloc", counter[0], storage.nbytes()))
            weakref.finalize(storage, _free, key)

    class _Mode(TorchDispatchMode):  # type: ignore[misc]
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    _track(t)
            return out

    for p in params:
        _track(p)
    with _Mode():
        step()
        gc.collect()
    return list(events)


def _flash_sdpa(
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Any = None,
    enable_gqa: bool = False,
) -> Any:
    """``scaled_dot_product_attention`` as the CPU picks it (the flash kernel: output and
    log-sum-exp saved, no s x s scores), also on the meta device, whose dispatcher would
    take the math path and materialise the scores a GPU's flash kernel never holds."""
    import torch

    assert attn_mask is None, "causal masks only"
    if enable_gqa and k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, scale=scale
    )[0]


def _step(
    shape: tuple[int, int, int, int, int], lora: bool, ckpt: bool, device: str = "meta"
) -> Any:
    """A Llama-shaped bf16 model (LoRA r 16 on q,k,v,o or full) and two AdamW steps."""
    import torch
    import transformers.masking_utils as masking

    from benchmarks.allocator_fit import llama_model

    # Packed-sequence detection reads a tensor's value (.item()), which meta tensors lack;
    # the inputs here are never packed.
    masking.find_packed_sequence_indices = lambda *a, **k: None
    torch.nn.functional.scaled_dot_product_attention = _flash_sdpa
    hidden, layers, batch, seq, vocab = shape
    model = llama_model(hidden, layers, seq, lora, vocab=vocab, device=device)
    if ckpt:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False, "preserve_rng_state": False}
        )
        if lora:
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq)).to(device)

    def step() -> None:
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss

    return [*model.parameters(), *model.buffers()], step


def trace_and_replay(params: list[Any], step: Any) -> tuple[dict[str, Any], Any, Any, float, int]:
    """Trace ``step`` (``params`` are the resident storages), replay the trace through the
    default and the ``expandable_segments`` allocator, and split it at its peak: (the split,
    the default replay, the expandable replay, the tracing seconds, the trace's events). The split's
    ``peak_allocated`` is the allocator's own count (a large block is handed out whole when
    less than 1 MiB would remain; the rounded-size peak is kept as ``peak_rounded``), and its
    ``churn`` is what of that is not resident."""
    n_params = len({p.untyped_storage()._cdata for p in params})
    t0 = time.perf_counter()
    events = record_trace(params, step)
    secs = time.perf_counter() - t0
    del params, step
    gc.collect()
    split = split_at_peak(events, n_params)
    default = CachingAllocator().replay(events)
    expandable = CachingAllocator(expandable_segments=True).replay(events)
    split["peak_rounded"] = split.pop("peak_allocated")
    split["peak_allocated"] = default.peak_allocated
    split["churn"] = default.peak_allocated - split["resident"]
    return split, default, expandable, secs, len(events)


def _record(shape: tuple[int, int, int, int, int], lora: bool, ckpt: bool, device: str) -> Any:
    """One row: the trace of a step on ``device`` replayed both ways, split at its peak."""
    split, default, expandable, secs, n_events = trace_and_replay(*_step(shape, lora, ckpt, device))
    hidden, layers, batch, seq, vocab = shape
    return {
        "shape": f"h{hidden}-l{layers}-b{batch}-s{seq}-v{vocab}",
        "hidden": hidden,
        "layers": layers,
        "micro_batch": batch,
        "seq": seq,
        "vocab": vocab,
        "task": "lora" if lora else "full",
        "checkpointing": "full" if ckpt else "none",
        "device": device,
        "events": n_events,
        "record_s": round(secs, 1),
        **split,
        "peak_reserved": default.peak_reserved,
        "peak_reserved_expandable": expandable.peak_reserved,
    }


def run() -> dict[str, Any]:
    """Record and replay every shape x (LoRA, full) x (no checkpointing, full) on the meta
    device, and the CPU_CHECK shape on the CPU too."""
    import torch

    torch.set_num_threads(1)
    rows = []
    cpu_check = []
    for shape in SHAPES:
        for lora in (True, False):
            for ckpt in (False, True):
                rows.append(_record(shape, lora, ckpt, "meta"))
                print(rows[-1], flush=True)
                if shape == CPU_CHECK:
                    cpu = _record(shape, lora, ckpt, "cpu")
                    keys = ("events", "peak_allocated", "peak_reserved", "resident")
                    cpu_check.append(
                        {
                            "task": cpu["task"],
                            "checkpointing": cpu["checkpointing"],
                            "cpu": {k: cpu[k] for k in keys},
                            "meta": {k: rows[-1][k] for k in keys},
                            "identical": all(cpu[k] == rows[-1][k] for k in keys),
                        }
                    )
                    print(cpu_check[-1], flush=True)
                gc.collect()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.allocator_grid",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "method": (__doc__ or "").split("\n\n")[1],
        "cpu_check": cpu_check,
        "rows": rows,
    }


def _coef(rows: list[dict[str, Any]], reserved: str) -> float:
    """Least squares through the origin: slack bytes = c x churn."""
    num = sum((r[reserved] - r["peak_allocated"]) * r["churn"] for r in rows)
    den = sum(r["churn"] ** 2 for r in rows)
    return num / den if den else 0.0


def _predict(r: dict[str, Any], c: float) -> float:
    return r["peak_allocated"] + c * r["churn"]


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (allocator mode, checkpointing): the churn coefficient, its leave-one-shape-out
    error on reserved bytes, and the same for the old model (one share of allocated)."""
    out: dict[str, Any] = {}
    shapes = sorted({r["shape"] for r in rows})
    for reserved in ("peak_reserved", "peak_reserved_expandable"):
        mode = "expandable" if reserved.endswith("expandable") else "default"
        for ckpt in ("none", "full"):
            sub = [r for r in rows if r["checkpointing"] == ckpt]
            c = _coef(sub, reserved)
            loso: list[float] = []
            old: list[float] = []
            flat: list[float] = []
            shipped: list[float] = []
            for s in shapes:
                train = [r for r in sub if r["shape"] != s]
                test = [r for r in sub if r["shape"] == s]
                if not test:
                    continue
                ct = _coef(train, reserved)
                # the old model: reserved = allocated x (1 + f), f the train rows' mean slack
                f = statistics.mean(r[reserved] / r["peak_allocated"] - 1 for r in train)
                for r in test:
                    loso.append(_predict(r, ct) / r[reserved] - 1)
                    old.append(r["peak_allocated"] * (1 + f) / r[reserved] - 1)
                    flat.append(r["peak_allocated"] / r[reserved] - 1)
                    shipped.append(r["peak_allocated"] * (1 + PREVIOUS_SLACK) / r[reserved] - 1)

            def _summ(errs: list[float]) -> dict[str, float]:
                a = [abs(e) for e in errs]
                return {
                    "median_abs": round(statistics.median(a), 4),
                    "max_abs": round(max(a), 4),
                    "bias": round(statistics.mean(errs), 4),
                }

            out[f"{mode}/{ckpt}"] = {
                "churn_coefficient": round(c, 4),
                "rows": len(sub),
                "loso_error_on_reserved": _summ(loso),
                "old_model_loso_error": _summ(old),
                "no_slack_error": _summ(flat),
                "previous_constant_error": _summ(shipped),
            }
    return out


def main() -> None:
    """Measure (or refit) and write benchmarks/results/allocator_grid.json."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--refit", action="store_true", help="refit the committed rows only")
    args = parser.parse_args()
    out = json.loads(RESULTS.read_text()) if args.refit else run()
    out["fit"] = fit(out["rows"])
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["fit"], indent=1))


if __name__ == "__main__":
    main()
