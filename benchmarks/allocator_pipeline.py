"""The caching allocator's slack on a pipeline stage: does the single-step share
(advisor.memory.slack.CHURN_SLACK, fitted by benchmarks/allocator_grid.py on one-device
AdamW steps) describe a 1F1B or interleaved-1F1B stage, whose in-flight micro-batches'
activations are allocated warm-up forward by warm-up forward in identical sizes and, in the
steady phase, freed by each backward just before the next forward asks for the same sizes?

Each row is one pipeline rank holding ``v`` model chunks of ``blocks`` Hugging Face
LlamaDecoderLayer blocks each (bf16, GQA, the flash attention kernel as allocator_grid pins
it), traced on the *meta* device (every op allocates its outputs at their real sizes; no
compute), over two training steps of ``m`` micro-batches each. The schedule is the one
advisor.memory.pipeline replays (Narayanan et al. 2021 sec. 2.2; Megatron-Core's
``forward_backward_pipelining_with_interleaving``): ``pp - 1`` warm-up forwards for rank 0
under 1F1B, ``(v - 1) N + 2 (pp - 1)`` under the interleaved schedule, then one forward
and one backward per step, then the cool-down backwards. As Megatron-Core runs it: each
forward's input is a freshly allocated receive buffer (``requires_grad``, saved by the first
block); after the stage's output is "sent", its storage is swapped for a one-element tensor
(``deallocate_output_tensor``) and only its autograd node is kept until the backward, which
runs from it with a freshly allocated received gradient (``custom_backward``: the engine's
``run_backward`` without the shape check); the input's gradient is "sent" and dropped.
Gradients accumulate across micro-batches and stay (``zero_grad(set_to_none=False)``, as
Megatron's persistent gradient buffers do); AdamW (foreach) steps after the cool-down.
Each trace is replayed through advisor.memory.allocator (the CUDA caching allocator's
documented policy) and split at its peak as allocator_grid splits it: resident (parameters,
gradients, optimizer states: alive at the peak and at the end) and churn (the rest).

The last column of the grid is a per-tensor-parallel-rank block of Llama 3 405B (hidden
16384, 128 query / 8 KV heads and FFN 53248 over TP 8: 16 query heads, 1 KV head, FFN 6656;
8192 tokens per micro-batch): its residual stream is kept whole (no sequence parallelism,
which would split it and the norms 8 ways), so its activation mix is heavier in hidden-size
tensors than the real run's.

    python -m benchmarks.allocator_pipeline     # ~30 s on one CPU thread, <1 GB RAM
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from advisor.memory.pipeline import inflight_block_microbatches, pipeline_split
from advisor.memory.slack import CHURN_SLACK
from benchmarks.allocator_grid import _flash_sdpa, trace_and_replay

RESULTS = Path(__file__).parent / "results" / "allocator_pipeline.json"

#: hidden, query heads, KV heads, head dim, FFN, tokens per micro-batch
BLOCKS = {
    "h2048": (2048, 32, 16, 64, 5504, 2048),
    "h4096": (4096, 32, 8, 128, 14336, 4096),
    "h8192": (8192, 64, 8, 128, 28672, 4096),
    "405b-tp8": (16384, 16, 1, 128, 6656, 8192),
}

#: block, blocks per chunk, chunks per rank (v), pipeline stages, micro-batches per step
GRID = [
    ("h2048", 2, 1, 1, 8),  # pp 1: one micro-batch in flight (the single-step case)
    ("h2048", 2, 1, 4, 8),
    ("h2048", 2, 1, 8, 8),
    ("h2048", 4, 1, 1, 16),
    ("h2048", 4, 1, 8, 16),
    ("h4096", 1, 1, 1, 16),
    ("h4096", 1, 1, 2, 16),
    ("h4096", 1, 1, 4, 16),
    ("h4096", 1, 1, 8, 16),
    ("h4096", 1, 1, 16, 16),
    ("h4096", 2, 1, 1, 8),
    ("h4096", 2, 1, 4, 8),
    ("h4096", 1, 2, 1, 8),
    ("h4096", 1, 2, 4, 8),
    ("h4096", 1, 4, 1, 8),
    ("h4096", 1, 4, 4, 8),
    ("h8192", 1, 1, 1, 8),
    ("h8192", 1, 1, 8, 8),
    ("h8192", 1, 4, 1, 8),
    ("h8192", 1, 4, 4, 8),
    ("405b-tp8", 1, 1, 1, 8),
    ("405b-tp8", 1, 1, 8, 8),
    ("405b-tp8", 1, 8, 1, 8),
    ("405b-tp8", 1, 8, 4, 8),
]


def schedule(pp: int, v: int, m: int) -> list[tuple[str, int]]:
    """Rank 0's ops, ("F" | "B", chunk), under 1F1B (v = 1) or interleaved 1F1B: the order
    advisor.memory.pipeline._replay walks (forward k runs chunk (k // N) % v, backward k
    chunk v - 1 - (k // N) % v, N micro-batches per round)."""
    group = m // max(1, m // pp)
    total = v * m
    warmup = min(m, pp - 1) if v == 1 else min(total, (v - 1) * group + 2 * (pp - 1))
    ops = [("F", (k // group) % v) for k in range(warmup)]
    for k in range(total - warmup):
        ops.append(("F", ((warmup + k) // group) % v))
        ops.append(("B", v - 1 - (k // group) % v))
    for k in range(total - warmup, total):
        ops.append(("B", v - 1 - (k // group) % v))
    return ops


def _stage(name: str, blocks: int, v: int, pp: int, m: int, device: str = "meta") -> Any:
    """The rank's chunks and the two steps of its schedule."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.nn.functional.scaled_dot_product_attention = _flash_sdpa
    hidden, heads, kv, head_dim, ffn, tokens = BLOCKS[name]
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=blocks * v,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=tokens,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device(device):
        chunks = [
            torch.nn.ModuleList(LlamaDecoderLayer(cfg, c * blocks + i) for i in range(blocks)).to(
                torch.bfloat16
            )
            for c in range(v)
        ]
        rotary = LlamaRotaryEmbedding(cfg)
    params = [p for c in chunks for p in c.parameters()]
    opt = torch.optim.AdamW(params, foreach=True)
    positions = torch.arange(tokens, device=device)[None]
    ops = schedule(pp, v, m)
    engine = torch.autograd.Variable._execution_engine  # type: ignore[attr-defined]

    def forward(c: int) -> tuple[Any, Any]:
        x = torch.empty((1, tokens, hidden), dtype=torch.bfloat16, device=device)
        x.requires_grad_(True)  # the receive buffer
        h = x
        pe = rotary(h, positions)
        for layer in chunks[c]:
            h = layer(h, position_embeddings=pe)
        # deallocate_output_tensor: keep the autograd node, drop the storage
        h.data = torch.empty((1,), dtype=h.dtype, device=device)
        return x, h

    def step() -> None:
        for _ in range(2):
            inflight: list[list[tuple[Any, Any]]] = [[] for _ in range(v)]
            for kind, c in ops:
                if kind == "F":
                    inflight[c].append(forward(c))
                    continue
                x, out = inflight[c].pop(0)
                grad = torch.empty((1, tokens, hidden), dtype=torch.bfloat16, device=device)
                engine.run_backward(
                    tensors=(out,),
                    grad_tensors=(grad,),
                    keep_graph=False,
                    create_graph=False,
                    inputs=(),
                    allow_unreachable=True,
                    accumulate_grad=True,
                )
                del x, out, grad  # the input's gradient is sent and dropped
            opt.step()
            opt.zero_grad(set_to_none=False)

    return [*params, *(b for c in chunks for b in c.buffers()), *rotary.buffers()], step


def _record(name: str, blocks: int, v: int, pp: int, m: int) -> dict[str, Any]:
    """One row: trace, replay, split at the peak."""
    split, replay, expandable, secs, n_events = trace_and_replay(*_stage(name, blocks, v, pp, m))
    slack = replay.peak_reserved - replay.peak_allocated
    inflight = inflight_block_microbatches(pipeline_split(blocks * v * pp, pp, v), 0, m)
    hidden, heads, kv, head_dim, ffn, tokens = BLOCKS[name]
    return {
        "head_dim": head_dim,
        "row": f"{name}-b{blocks}-v{v}-pp{pp}-m{m}",
        "block": name,
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv,
        "ffn": ffn,
        "tokens_per_microbatch": tokens,
        "blocks_per_chunk": blocks,
        "v": v,
        "pp": pp,
        "microbatches": m,
        "inflight_block_microbatches": inflight,
        "events": n_events,
        "record_s": round(secs, 1),
        **split,
        "peak_reserved": replay.peak_reserved,
        "peak_reserved_expandable": expandable.peak_reserved,
        "slack": slack,
        "slack_per_churn": round(slack / split["churn"], 4) if split["churn"] else None,
        "churn_slack_prediction": round(CHURN_SLACK * split["churn"]),
    }


def run() -> dict[str, Any]:
    """Every GRID row."""
    import torch

    torch.set_num_threads(1)
    rows = []
    for spec in GRID:
        rows.append(_record(*spec))
        print({k: rows[-1][k] for k in ("row", "churn", "slack", "slack_per_churn")}, flush=True)
        gc.collect()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.allocator_pipeline",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "method": (__doc__ or "").split("\n\n")[1],
        "churn_slack": CHURN_SLACK,
        "rows": rows,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each pipelined row beside its one-micro-batch companion (same blocks and chunks,
    pp 1): the measured slack against CHURN_SLACK x the row's churn (every in-flight
    micro-batch counted) and CHURN_SLACK x the companion's churn (one micro-batch's working
    set), both as a share of the row's measured max_memory_reserved."""
    single = {(r["block"], r["blocks_per_chunk"], r["v"]): r for r in rows if r["pp"] == 1}
    pairs = []
    for r in rows:
        if r["pp"] == 1:
            continue
        one = single[(r["block"], r["blocks_per_chunk"], r["v"])]
        pairs.append(
            {
                "row": r["row"],
                "inflight_block_microbatches": r["inflight_block_microbatches"],
                "churn_over_single": round(r["churn"] / one["churn"], 3),
                "slack_over_single": round(r["slack"] / one["slack"], 3),
                "slack_per_churn": r["slack_per_churn"],
                "slack_per_single_churn": round(r["slack"] / one["churn"], 4),
                "reserved_error_churn_model": round(
                    (r["peak_allocated"] + CHURN_SLACK * r["churn"]) / r["peak_reserved"] - 1, 4
                ),
                "reserved_error_single_churn_model": round(
                    (r["peak_allocated"] + CHURN_SLACK * one["churn"]) / r["peak_reserved"] - 1,
                    4,
                ),
            }
        )
    one_share = [r["slack_per_churn"] for r in rows if r["pp"] == 1]
    return {
        "single_slack_per_churn": {
            "median": statistics.median(one_share),
            "range": [min(one_share), max(one_share)],
        },
        "pipelined_slack_per_churn": {
            "median": statistics.median(p["slack_per_churn"] for p in pairs),
            "range": [
                min(p["slack_per_churn"] for p in pairs),
                max(p["slack_per_churn"] for p in pairs),
            ],
        },
        "pipelined_slack_per_single_churn": {
            "median": statistics.median(p["slack_per_single_churn"] for p in pairs),
            "range": [
                min(p["slack_per_single_churn"] for p in pairs),
                max(p["slack_per_single_churn"] for p in pairs),
            ],
        },
        "pairs": pairs,
    }


def main() -> None:
    """Measure and write benchmarks/results/allocator_pipeline.json."""
    out = run()
    out["summary"] = summary(out["rows"])
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
