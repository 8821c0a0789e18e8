"""The caching allocator's replay, the CUDA context per GPU, and allocated vs reserved in the
estimate: checked against PyTorch's documented allocator policy, published context
readings, and a real training step's trace recorded on the CPU."""

from __future__ import annotations

import json

import pytest

from advisor.memory import CachingAllocator, cuda_context_bytes
from advisor.memory.allocator import round_size, segment_size
from advisor.memory.cuda_context import (
    BARE_CONTEXT_BYTES,
    GPU_SMS,
    STEP_KERNEL_IMAGE_BYTES,
    UNKNOWN_CONTEXT_BYTES,
    GpuSms,
    local_memory_bytes,
)
from advisor.units import MIB
from tests.paths import ROOT_DIR as ROOT

# PyTorch docs, "CUDA semantics / Memory management" and CUDACachingAllocator.cpp's comments:
# requests round to 512 bytes; <= 1 MiB from 2 MiB segments; 1-10 MiB from 20 MiB segments;
# larger ones rounded up to 2 MiB.


@pytest.mark.parametrize(
    ("request_bytes", "rounded", "segment"),
    [
        (1, 512, 2 * MIB),
        (513, 1024, 2 * MIB),
        (MIB, MIB, 2 * MIB),
        (MIB + 1, MIB + 512, 20 * MIB),
        (10 * MIB - 512, 10 * MIB - 512, 20 * MIB),
        (10 * MIB, 10 * MIB, 10 * MIB),
        (11 * MIB + 1, 11 * MIB + 512, 12 * MIB),
    ],
)
def test_rounding_and_segments_follow_the_documented_policy(
    request_bytes: int, rounded: int, segment: int
) -> None:
    assert round_size(request_bytes) == rounded
    assert segment_size(round_size(request_bytes)) == segment


def test_blocks_split_reuse_and_merge_within_a_segment() -> None:
    a = CachingAllocator()
    a.malloc(1, 4 * MIB)  # one 20 MiB segment, split: 16 MiB stays cached
    a.malloc(2, 8 * MIB)  # fits the cached 16 MiB remainder: no new segment
    assert a.reserved == 20 * MIB
    a.free(1)
    a.free(2)  # both merge back into one 20 MiB block
    a.malloc(3, 19 * MIB)
    assert a.reserved == 20 * MIB
    # A remainder of at most 1 MiB in the large pool is not split off: handed out whole.
    a.free(3)
    a.malloc(4, 19 * MIB + 512)
    assert a.allocated == 20 * MIB
    # Small requests never come from the large pool.
    a.malloc(5, 4096)
    assert a.reserved == 22 * MIB


def test_freed_segments_are_cached_not_returned() -> None:
    a = CachingAllocator()
    a.malloc(1, 100 * MIB)
    a.free(1)
    a.malloc(2, 50 * MIB)  # best fit reuses the cached 100 MiB segment
    assert a.reserved == 100 * MIB and a.peak_reserved == 100 * MIB


def test_expandable_segments_reserve_the_high_water_mark_in_pages() -> None:
    a = CachingAllocator(expandable_segments=True)
    for i in range(10):
        a.malloc(i, 3 * MIB)  # a fixed segment allocator would take 20 MiB at a time
    assert a.reserved == 30 * MIB
    b = CachingAllocator()
    for i in range(10):
        b.malloc(i, 3 * MIB)
    assert b.reserved == 40 * MIB  # 20 MiB segments: six 3 MiB blocks in each


def test_a_recorded_step_replays_to_the_live_peak_it_measured() -> None:
    """The trace recorder sees what the live-bytes counter sees: the replay's requested
    peak equals LiveBytes' peak on the same training step; rounding and caching only add."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks.allocator_fit import _llama_step, record_trace
    from tests.livemem import LiveBytes

    params, step, _ = _llama_step(256, 1, 64, lora=False)
    events = record_trace(params, step)
    replay = CachingAllocator().replay(events)
    params2, step2, _ = _llama_step(256, 1, 64, lora=False)
    base = sum(p.untyped_storage().nbytes() for p in params2)
    live = LiveBytes()
    live.hold(params2)
    with live:
        step2()
    assert replay.peak_requested == base + live.peak
    assert replay.peak_requested <= replay.peak_allocated <= replay.peak_reserved
    assert torch.is_tensor(params[0])


def test_the_slack_constants_are_the_committed_fit() -> None:
    from advisor.memory.slack import CHURN_SLACK, CHURN_SLACK_RECOMPUTE_CPU

    fit = json.loads((ROOT / "benchmarks/results/allocator_grid.json").read_text())["fit"]
    assert fit["default/none"]["churn_coefficient"] == CHURN_SLACK
    assert fit["default/full"]["churn_coefficient"] == CHURN_SLACK_RECOMPUTE_CPU


def test_churn_slack_predicts_held_out_replays() -> None:
    """Each recorded shape's replayed max_memory_reserved, predicted with the coefficients
    fitted on the other shapes (leave one shape out): median within 7%, none beyond 25%,
    and better than no slack at all (the replays are of real CPU traces, not the model)."""
    from benchmarks.allocator_grid import fit

    rows = json.loads((ROOT / "benchmarks/results/allocator_grid.json").read_text())["rows"]
    for mode, part in fit(rows).items():
        if not mode.startswith("default/"):
            continue
        assert part["loso_error_on_reserved"]["median_abs"] <= 0.07, mode
        assert part["loso_error_on_reserved"]["max_abs"] <= 0.25, mode
        assert (
            part["loso_error_on_reserved"]["median_abs"] < part["no_slack_error"]["median_abs"]
        ), mode
    # Recompute leaves more slack per churned byte than a step that keeps its activations.
    replays = [r for r in rows if r["task"] == "lora"]
    by_ckpt = {
        c: sum(r["peak_reserved"] - r["peak_allocated"] for r in replays if r["checkpointing"] == c)
        / sum(r["churn"] for r in replays if r["checkpointing"] == c)
        for c in ("none", "full")
    }
    assert by_ckpt["full"] > by_ckpt["none"]


def test_estimate_slack_is_the_peak_phases_churn_share() -> None:
    from advisor.config import TrainingConfig
    from advisor.memory import estimate_memory
    from advisor.memory.slack import RESIDENT_COMPONENTS, slack_share
    from tests.memory.test_memory import TAX, llama2_7b

    shares = []
    for ckpt in ("none", "full"):
        cfg = TrainingConfig(checkpointing=ckpt, task="lora")
        e = estimate_memory(llama2_7b(), cfg, optimizer=TAX["adamw"])  # type: ignore[arg-type]
        peak = e.phase(e.peak_phase).components
        churn = sum(
            v
            for k, v in peak.items()
            if k not in (*RESIDENT_COMPONENTS, "cuda_context", "workspace", "allocator_reserve")
        )
        assert e.breakdown["allocator_reserve"] == int(churn * slack_share(cfg))
        assert e.reserved_bytes - e.allocated_bytes == e.breakdown["allocator_reserve"]
        shares.append(slack_share(cfg))
    # One share with and without recompute (slack.CHURN_SLACK_RECOMPUTE_CPU says why).
    assert 0 < shares[0] == shares[1]


def test_bare_context_model_against_published_readings() -> None:
    """Bare contexts (one CUDA call, nothing allocated): 256 MiB on an RTX 3090 (InvokeAI
    issue 9413, torch 2.7.1+cu128) and 426 MiB on an RTX 6000 Ada (unsloth-zoo PR 1053,
    torch 2.10+cu130). The model's bare part must land within 80 MiB of both."""
    rtx3090 = BARE_CONTEXT_BYTES + local_memory_bytes(GPU_SMS["rtx-3090"])
    rtx6000ada = BARE_CONTEXT_BYTES + local_memory_bytes(GpuSms(142, 1536, "Ada whitepaper"))
    assert abs(rtx3090 - 256 * MIB) <= 80 * MIB
    assert abs(rtx6000ada - 426 * MIB) <= 80 * MIB


def test_context_grows_with_the_gpu_and_lazy_loading_keeps_it_under_eager() -> None:
    # torch's own measurement (PR 86509): eager loading 666.6 MB at start-up, lazy 287.0 MB;
    # a training step loads at most eager's images on top of a lazy start.
    assert STEP_KERNEL_IMAGE_BYTES == 666_632_192 - 287_047_680
    assert cuda_context_bytes("t4") < cuda_context_bytes("a100-sxm-80gb")
    assert cuda_context_bytes("a100-sxm-80gb") < cuda_context_bytes("h100-sxm-80gb")
    assert cuda_context_bytes("h100-sxm-80gb") < cuda_context_bytes("b300")
    # Before lazy loading (CUDA < 11.7) contexts were over 1,000 MB (PyTorch issue 107667):
    # no profile's lazily loaded context reaches that.
    assert all(cuda_context_bytes(p) < 1000 * 10**6 for p in GPU_SMS)
    assert cuda_context_bytes("mi300x") == UNKNOWN_CONTEXT_BYTES


def test_estimate_json_reports_allocated_reserved_and_fits_on_the_total() -> None:
    from typer.testing import CliRunner

    from advisor.shell.cli import app

    args = ["estimate", "--model-size", "7B", "--task", "lora", "--hardware", "h100-sxm-80gb"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    alloc, reserved, total = out["allocated_bytes"], out["reserved_bytes"], out["total_bytes"]
    assert 0 < alloc < reserved < total
    over = out["overhead_breakdown"]
    assert total - reserved == over["cuda_context"] == cuda_context_bytes("h100-sxm-80gb")
    assert reserved - alloc == over["allocator_reserve"]
    assert out["fits"] == (total <= out["device_memory_bytes"])
