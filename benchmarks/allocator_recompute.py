"""The caching allocator's slack on fine-tuning-shaped steps: more layers, more tokens per
step, with and without activation checkpointing (a measurement beside
benchmarks/allocator_fit.py, which fits ALLOCATOR_SLACK on 2-layer, 512-token steps).

Each row is a Hugging Face LlamaForCausalLM (random weights, bf16, sdpa), LoRA r 16 on
q,k,v,o or full fine-tuning, AdamW (foreach), two steps, recorded on the CPU with
allocator_fit.record_trace and replayed through advisor.memory.allocator.CachingAllocator
(the documented CUDA policy). ``gradient_checkpointing_enable`` (non-reentrant) for the
checkpointed rows. Reported: peak allocated and reserved, the slack (reserved / allocated - 1)
and the slack over the bytes that are not the model's weights.

Nothing in advisor/ reads this file's output: it is evidence for issue 23's fine-tuning
memory check (benchmarks/ftmem.py: nvidia-smi readings sit above the predicted device
footprint), not a fit.

    python -m benchmarks.allocator_recompute     # ~5 min on one CPU thread, ~4 GB RAM
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "allocator_recompute.json"

#: hidden, layers, sequence, micro-batch
SHAPES = [(1024, 8, 1024, 2), (2048, 4, 1024, 2)]


def _step(hidden: int, layers: int, seq: int, batch: int, lora: bool, ckpt: bool) -> Any:
    import torch

    from benchmarks.allocator_fit import llama_model

    model = llama_model(hidden, layers, seq, lora)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))

    def step() -> None:
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss

    params = [*model.parameters(), *model.buffers()]
    return params, step, sum(p.untyped_storage().nbytes() for p in params)


def run() -> dict[str, Any]:
    """Record and replay every shape x (LoRA, full) x (checkpointing, none)."""
    import torch

    from advisor.memory.allocator import CachingAllocator
    from benchmarks.allocator_fit import record_trace

    torch.set_num_threads(1)
    rows = []
    for hidden, layers, seq, batch in SHAPES:
        for lora in (True, False):
            for ckpt in (False, True):
                params, step, weights = _step(hidden, layers, seq, batch, lora, ckpt)
                t0 = time.perf_counter()
                events = record_trace(params, step)
                secs = time.perf_counter() - t0
                del params, step
                gc.collect()
                r = CachingAllocator().replay(events)
                rows.append(
                    {
                        "hidden": hidden,
                        "layers": layers,
                        "seq": seq,
                        "micro_batch": batch,
                        "task": "lora" if lora else "full",
                        "checkpointing": "full" if ckpt else "none",
                        "weight_bytes": weights,
                        "record_s": round(secs, 1),
                        "peak_allocated": r.peak_allocated,
                        "peak_reserved": r.peak_reserved,
                        "slack": round(r.peak_reserved / r.peak_allocated - 1, 4),
                        "slack_over_non_weights": round(
                            (r.peak_reserved - r.peak_allocated)
                            / max(1, r.peak_allocated - weights),
                            4,
                        ),
                    }
                )
                print(rows[-1], flush=True)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.allocator_recompute",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "method": __doc__.split("\n\n")[1] if __doc__ else "",
        "rows": rows,
    }


def main() -> None:
    """Run and write benchmarks/results/allocator_recompute.json."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
