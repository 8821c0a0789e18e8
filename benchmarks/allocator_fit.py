"""The caching allocator's slack on real training steps: record each step's allocation trace
on the CPU, replay it through the CUDA caching allocator's policy (advisor.memory.allocator)
and report what it reserves beyond what it allocates.

A trace is every storage an ATen op creates (a TorchDispatchMode sees each op's outputs)
and the moment it dies (a finalizer on the storage), in order, after the model's parameters
(allocated first, as ``model.to("cuda")`` does). Steps are Llama-shaped (Hugging Face's
LlamaForCausalLM, random weights), bf16 weights, AdamW (foreach), LoRA and full
fine-tuning, two steps each (the first creates the optimizer states).

The fit: ``reserved = allocated x (1 + f)``, f the mean slack over the recorded steps of
the widest shape (hidden 4096, a Llama 7B block: the slack falls as tensors grow past the
2/20 MiB segments, so the widest shape recorded is the nearest to real models); written to
benchmarks/results/allocator_fit.json. Kept as a measurement: the estimate's slack is now
advisor.memory.slack's churn model, fitted by benchmarks/allocator_grid.py (this single
share, fitted on 2-layer 512-token steps, under-predicted fine-tuning-shaped steps).

    python -m benchmarks.allocator_fit            # ~2-6 min on 2 CPU cores, ~8 GB RAM
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "allocator_fit.json"


def record_trace(params: list[Any], step: Any) -> list[tuple[str, int, int]]:
    """The allocation trace of ``step()`` after ``params`` exist (their allocations first).

    Args:
        params: tensors alive before the step (allocated first, in order).
        step: a callable running the training step(s) on the CPU.

    Returns:
        ("alloc", id, bytes) and ("free", id, 0) events in order.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    events: list[tuple[str, int, int]] = []
    live: dict[int, int] = {}  # data_ptr -> id
    counter = [0]

    def _free(ptr: int) -> None:
        key = live.pop(ptr, None)
        if key is not None:
            events.append(("free", key, 0))

    def _track(t: Any) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in live:
            counter[0] += 1
            live[ptr] = counter[0]
            events.append(("alloc", counter[0], storage.nbytes()))
            weakref.finalize(storage, _free, ptr)

    class _Mode(TorchDispatchMode):  # type: ignore[misc]
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    _track(t)
            return out

    for p in params:
        _track(p)
    with _Mode():
        step()
        gc.collect()
    return events


def llama_model(
    hidden: int, layers: int, seq: int, lora: bool, *, vocab: int = 32000, device: str = "cpu"
) -> Any:
    """A Llama-shaped bf16 model built on ``device`` (seed 0; GQA with 128-wide KV groups),
    wrapped in PEFT LoRA r 16 on q, k, v, o when ``lora``: the model every allocator
    benchmark records (allocator_fit, allocator_recompute, allocator_grid)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
        vocab_size=vocab,
        max_position_embeddings=seq,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        )
    return model


def _llama_step(hidden: int, layers: int, seq: int, lora: bool) -> tuple[list[Any], Any, int]:
    """A Llama-shaped bf16 model and two AdamW steps over it; its parameter count."""
    import torch

    model = llama_model(hidden, layers, seq, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    ids = torch.randint(0, model.config.vocab_size, (1, seq))

    def step() -> None:
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss

    params = [*model.parameters(), *model.buffers()]
    return params, step, sum(p.numel() for p in model.parameters())


SHAPES = [  # hidden, layers, seq
    (512, 2, 256),
    (1024, 2, 512),
    (2048, 2, 512),
    (4096, 2, 512),
]


def run() -> dict[str, Any]:
    """Record and replay every shape x (LoRA, full); the rows and the fitted slack."""
    import torch

    from advisor.memory.allocator import CachingAllocator

    rows = []
    for hidden, layers, seq in SHAPES:
        for lora in (True, False):
            params, step, n = _llama_step(hidden, layers, seq, lora)
            t0 = time.perf_counter()
            events = record_trace(params, step)
            secs = time.perf_counter() - t0
            del params, step
            gc.collect()
            default = CachingAllocator().replay(events)
            expandable = CachingAllocator(expandable_segments=True).replay(events)
            rows.append(
                {
                    "hidden": hidden,
                    "layers": layers,
                    "seq": seq,
                    "task": "lora" if lora else "full",
                    "parameters": n,
                    "events": len(events),
                    "record_s": round(secs, 2),
                    "peak_requested": default.peak_requested,
                    "peak_allocated": default.peak_allocated,
                    "peak_reserved": default.peak_reserved,
                    "slack": round(default.peak_reserved / default.peak_allocated - 1, 4),
                    "peak_reserved_expandable": expandable.peak_reserved,
                    "slack_expandable": round(
                        expandable.peak_reserved / expandable.peak_allocated - 1, 4
                    ),
                }
            )
            print(rows[-1], flush=True)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "method": __doc__.split("\n\n")[0] if __doc__ else "",
        "rows": rows,
        "fit": fit(rows),
    }


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The slack constants: the mean over the widest shape's rows (LoRA and full alike)."""
    widest = max(r["hidden"] for r in rows)
    wide = [r for r in rows if r["hidden"] == widest]
    return {
        "slack": round(sum(r["slack"] for r in wide) / len(wide), 4),
        "slack_expandable": round(sum(r["slack_expandable"] for r in wide) / len(wide), 4),
        "slack_max": max(r["slack"] for r in wide),
        "rows": len(wide),
        "rule": f"the mean slack over the rows of the widest shape (hidden {widest})",
    }


def main() -> None:
    """Measure and write benchmarks/results/allocator_fit.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refit", action="store_true", help="refit the committed rows only")
    args = parser.parse_args()
    if args.refit:
        out = json.loads(RESULTS.read_text())
        out["fit"] = fit(out["rows"])
    else:
        out = run()
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["fit"]))


if __name__ == "__main__":
    main()
