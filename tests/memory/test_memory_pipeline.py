"""Pipeline-parallel memory: which blocks each rank holds and what its schedule keeps alive.

The split follows Llama 3 (Dubey et al. 2024, sec. 3.3.2) and torchtitan's default; the
in-flight counts follow 1F1B and interleaved 1F1B (Narayanan et al. 2021). The counts are
checked against a step-by-step replay of each rank's schedule below, which tracks every
forward and backward, not against the closed form they are computed with.
"""

from __future__ import annotations

import pytest

from advisor.config import (
    Attention,
    Checkpointing,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.memory import (
    PipelineRuntime,
    estimate_memory,
    inflight_block_microbatches,
    inflight_chunk_microbatches,
    layer_activation_bytes,
    pipeline_split,
    stage_io_bytes,
)
from advisor.memory.memo import memo_for
from advisor.memory.results import MemoryEstimate
from advisor.memory.stage import estimate_stage
from advisor.model import load_model_profiles
from advisor.rules.taxonomy import load_taxonomy

TAX = {t.id: t for t in load_taxonomy().techniques}
GIB = 2**30


def _replay_peak(split: tuple[tuple[int, ...], ...], rank: int, m: int) -> int:
    """The most block-micro-batches alive on ``rank`` over a whole step, op by op.

    Warm-up forwards, then one forward and one backward per steady step, then the remaining
    backwards (Megatron-LM's ``forward_backward_pipelining_with_interleaving``; torch's
    ``Schedule1F1B`` / ``ScheduleInterleaved1F1B``). Forward ``k`` runs chunk ``(k // N) % v``;
    backward ``k`` runs the chunks in reverse, chunk ``v - 1 - (k // N) % v``.
    """
    return _replay(split, rank, m)[0]


def _replay(split: tuple[tuple[int, ...], ...], rank: int, m: int) -> tuple[int, tuple[int, ...]]:
    """:func:`_replay_peak`, and each chunk's micro-batches alive at the first point that
    reaches the peak (extended over the forwards of chunks without blocks right after it)."""
    pp, v = len(split), len(split[0])
    blocks = split[rank]
    if v == 1:
        group, warmup = m, min(m, pp - rank - 1)
    else:
        group = m // max(1, m // pp)
        warmup = min(v * m, (v - 1) * group + 2 * (pp - rank - 1))
    total = v * m
    live = peak = 0
    fwd = bwd = 0
    alive = [0] * v
    at_peak = tuple(alive)
    extend = True  # the last op reached the peak

    def forward() -> None:
        nonlocal live, peak, fwd, at_peak, extend
        chunk = (fwd // group) % v
        live += blocks[chunk]
        alive[chunk] += 1
        if live > peak or (extend and blocks[chunk] == 0):
            peak, at_peak, extend = live, tuple(alive), True
        else:
            extend = False
        fwd += 1

    def backward() -> None:
        nonlocal live, bwd, extend
        chunk = v - 1 - (bwd // group) % v
        live -= blocks[chunk]
        alive[chunk] -= 1
        bwd += 1
        extend = False

    for _ in range(warmup):
        forward()
    while fwd < total:
        forward()
        backward()
    while bwd < total:
        backward()
    assert live == 0
    assert alive == [0] * v
    return peak, at_peak


def test_llama3_split_has_an_embedding_only_first_chunk_and_a_head_only_last_chunk() -> None:
    """126 layers on 16 stages x 8 chunks: one block per chunk, none in the first chunk of the
    first stage or the last chunk of the last (the paper's words; torchtitan's default split
    counts the embedding and the head as one block each and gives the same)."""
    split = pipeline_split(126, 16, 8)
    assert split[0] == (0, 1, 1, 1, 1, 1, 1, 1)
    assert split[15] == (1, 1, 1, 1, 1, 1, 1, 0)
    assert all(rank == (1,) * 8 for rank in split[1:15])
    assert sum(map(sum, split)) == 126


@pytest.mark.parametrize(
    ("layers", "pp", "v", "expected"),
    [
        (80, 4, 1, ((20,), (20,), (20,), (20,))),  # even: kept (Megatron requires it)
        (126, 8, 1, ((15,), (16,), (16,), (16,), (16,), (16,), (16,), (15,))),
        (30, 4, 1, ((7,), (8,), (8,), (7,))),
        (31, 4, 1, ((8,), (8,), (8,), (7,))),  # the last stage takes the odd one
    ],
)
def test_split_takes_the_missing_blocks_off_the_ends(
    layers: int, pp: int, v: int, expected: tuple[tuple[int, ...], ...]
) -> None:
    assert pipeline_split(layers, pp, v) == expected


def test_a_split_that_leaves_a_middle_stage_empty_is_refused() -> None:
    with pytest.raises(UserError, match="cannot fill"):
        pipeline_split(3, 4, 2)


@pytest.mark.parametrize(
    ("layers", "pp", "v", "m"),
    [
        (126, 16, 8, 32),
        (126, 16, 8, 16),  # m == pp: every forward is warm-up
        (126, 16, 8, 24),
        (80, 4, 1, 2),
        (80, 4, 1, 16),
        (30, 4, 1, 8),
        (48, 2, 2, 8),
        (60, 4, 3, 12),
        (30, 4, 2, 8),
    ],
)
def test_inflight_counts_equal_a_replay_of_the_schedule(
    layers: int, pp: int, v: int, m: int
) -> None:
    split = pipeline_split(layers, pp, v)
    for rank in range(pp):
        assert inflight_block_microbatches(split, rank, m) == _replay_peak(split, rank, m), rank


@pytest.mark.parametrize(
    ("layers", "pp", "v", "m"),
    [
        (126, 16, 8, 32),
        (126, 16, 8, 16),
        (80, 4, 1, 16),
        (48, 2, 2, 8),
        (60, 4, 3, 12),
        (30, 4, 2, 8),
    ],
)
def test_chunk_counts_at_the_peak_equal_the_replay(layers: int, pp: int, v: int, m: int) -> None:
    split = pipeline_split(layers, pp, v)
    for rank in range(pp):
        assert inflight_chunk_microbatches(split, rank, m) == _replay(split, rank, m)[1], rank


@pytest.mark.parametrize("layers", [32, 80, 126])
def test_one_chunk_pipelines_hold_what_the_replay_holds(layers: int) -> None:
    # One chunk per rank takes a closed form, min(m, pp - r) micro-batches, not a replay.
    for pp in (2, 4, 8, 16):
        split = pipeline_split(layers, pp, 1)
        for rank in range(pp):
            for m in (1, 2, 3, pp - 1, pp, pp + 1, 64, 1024):
                got = inflight_block_microbatches(split, rank, m)
                assert got == _replay_peak(split, rank, m), (layers, pp, rank, m)


def test_llama3_405b_ranks_hold_what_the_schedule_keeps() -> None:
    """Interleaved 1F1B, 16 stages x 8 chunks, 32 micro-batches in groups of 16: rank 1
    runs 7 x 16 + 2 x 14 warm-up forwards plus one, all on one-block chunks (141); rank 0
    holds 31 of its 143 on the embedding-only chunk (112); with 16 micro-batches every
    forward is warm-up (8 chunks x 16 = 128)."""
    split = pipeline_split(126, 16, 8)
    assert inflight_block_microbatches(split, 1, 32) == 141
    assert inflight_block_microbatches(split, 0, 32) == 112
    assert inflight_block_microbatches(split, 1, 16) == 128
    # The last rank: 7 x 16 warm-up forwards; its first backwards run the head-only chunk
    # and free nothing, so the next round's first forward tops it up by one.
    assert inflight_block_microbatches(split, 15, 32) == 113


def _llama3_405b(dp: int, microbatches: int) -> TrainingConfig:
    return TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        stack=Stack.FUSED,
        micro_batch=1,
        seq_len=8192,
        grad_accumulation=microbatches,
        gpus=dp,
        sharding=Sharding.ZERO2,
        tensor_parallel=8,
        pipeline_parallel=16,
        virtual_stages=8,
    )


def test_llama3_405b_on_16384_gpus_fits_an_80_gb_h100() -> None:
    """Table 4 of Dubey et al. 2024: TP 8, PP 16, DP 128, 16 sequences of 8,192 per DP group,
    no activation checkpointing, on 80 GB H100s. Rank 1 is the largest (8 blocks, 128
    block-micro-batches), under the device; before the schedule was replayed per rank the
    first stage was charged 1 + 15/128 times 16 micro-batches of 8 blocks and did not fit."""
    spec = load_model_profiles()["llama-3.1-405b"]
    est = estimate_memory(spec, _llama3_405b(128, 16), optimizer=TAX["adamw"])
    assert est.total_bytes < 80 * GIB
    assert any("rank 1 (8 blocks) is the largest" in n for n in est.notes)


def test_the_last_stage_of_an_interleaved_pipeline_holds_more_than_one_microbatch() -> None:
    """Under interleaving the last rank runs (v - 1) N warm-up forwards of its earlier chunks
    before its first backward: not the single micro-batch of plain 1F1B."""
    split = pipeline_split(32, 4, 2)  # 4 blocks a chunk
    assert inflight_block_microbatches(split, 3, 8) == (4 + 1) * 4
    plain = pipeline_split(32, 4, 1)
    assert inflight_block_microbatches(plain, 3, 8) == 8


# ---- what the pipeline runtime keeps of stage inputs and outputs --------------------------


def test_llama3_405b_rank1_chunks_at_the_peak_follow_the_schedule() -> None:
    """Rank 1 of 16 x 8 chunks, 32 micro-batches, rounds of N = 16: the warm-up is
    7 x 16 + 2 x 14 = 140 forwards, forward k on chunk (k // 16) % 8, so chunks 0-7 take 16
    each in the first 128 and chunk 0 another 12; the first steady forward (k = 140) is
    chunk 0's again: 29 + 7 x 16 = 141 micro-batches of one block each at the peak."""
    split = pipeline_split(126, 16, 8)
    assert inflight_chunk_microbatches(split, 1, 32) == (29,) + (16,) * 7
    assert sum(inflight_chunk_microbatches(split, 1, 32)) == 141


def test_plain_1f1b_chunk_count_is_the_warm_up_plus_one() -> None:
    split = pipeline_split(32, 4, 1)
    assert [inflight_chunk_microbatches(split, r, 8) for r in range(4)] == [
        (4,),
        (3,),
        (2,),
        (1,),
    ]
    assert inflight_chunk_microbatches(split, 0, 2) == (2,)  # fewer micro-batches than stages


def test_megatron_keeps_no_stage_input_or_output_beside_the_blocks() -> None:
    """deallocate_output_tensor frees each sent output; the received input is what the first
    block saves: nothing is added, whatever the rank or schedule."""
    for r in range(4):
        assert stage_io_bytes(PipelineRuntime.MEGATRON, 4, 2, r, 8, (5, 3), 1000) == 0


@pytest.mark.parametrize(
    ("rank", "inflight", "expected"),
    [
        # first stage: m gradient buffers + its n in-flight outputs (no activation buffers)
        (0, (4,), 8 + 4),
        # middle: (m - n) activation buffers not already a block's saved input + m gradient
        # buffers + n outputs
        (1, (3,), (8 - 3) + 8 + 3),
        (2, (2,), (8 - 2) + 8 + 2),
        # last: activation buffers only (its output, the logits, is priced with the loss)
        (3, (1,), 8 - 1),
    ],
)
def test_torch_pipelining_keeps_outputs_and_a_buffer_per_microbatch(
    rank: int, inflight: tuple[int, ...], expected: int
) -> None:
    """torch.distributed.pipelining, 4 stages, 8 micro-batches: fwd_cache holds each
    in-flight output; every non-first stage allocates 8 activation receive buffers and every
    non-last stage 8 gradient receive buffers, kept across steps."""
    hidden = 2 * 4 * 8192 * 16384 // 8  # bf16, b = 4, s = 8192, h = 16384, TP 8 (SP shard)
    got = stage_io_bytes(PipelineRuntime.TORCH, 4, 1, rank, 8, inflight, hidden)
    assert got == expected * hidden


def test_torch_pipelining_counts_each_chunk_of_an_interleaved_rank() -> None:
    """Rank 0 of 4 x 2 chunks holds stage 0 (first: m + n) and stage 4 (middle: 2m); rank 3
    holds stage 3 (middle) and stage 7 (last: m - n)."""
    assert stage_io_bytes(PipelineRuntime.TORCH, 4, 2, 0, 8, (6, 5), 1) == (8 + 6) + 2 * 8
    assert stage_io_bytes(PipelineRuntime.TORCH, 4, 2, 3, 8, (4, 1), 1) == 2 * 8 + (8 - 1)


def _tt_405b(v: int) -> TrainingConfig:
    """torchtitan's Table 5 layout (benchmarks/data/gpu_runs.yaml): TP 8, PP 8, local batch 32
    in 8 micro-batches of 4 x 8,192 tokens, full activation checkpointing."""
    return TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.FULL,
        micro_batch=4,
        seq_len=8192,
        grad_accumulation=8,
        gpus=8,
        sharding=Sharding.ZERO1,
        tensor_parallel=8,
        pipeline_parallel=8,
        virtual_stages=v,
    )


@pytest.mark.parametrize("v", [1, 2])
def test_torch_pipelining_adds_its_buffers_to_the_heaviest_rank(v: int) -> None:
    """Llama 3.1 405B on 8 stages: the heaviest rank is a middle one (16 blocks), whose v
    chunks each keep 2 m = 16 hidden states of 4 x 8,192 x 16,384 / 8 bf16 elements (128
    MiB) under torch.distributed.pipelining: 2 GiB per chunk over Megatron-Core's count."""
    spec = load_model_profiles()["llama-3.1-405b"]
    megatron = estimate_memory(spec, _tt_405b(v), optimizer=TAX["adamw"])
    torch_pp = estimate_memory(
        spec, _tt_405b(v), optimizer=TAX["adamw"], pipeline_runtime=PipelineRuntime.TORCH
    )
    hidden = 2 * 4 * 8192 * 16384 // 8
    extra = torch_pp.breakdown["activations"] - megatron.breakdown["activations"]
    assert extra == v * 2 * 8 * hidden
    assert extra == v * 2 * GIB


def test_the_runtime_changes_nothing_without_pipeline_parallelism() -> None:
    spec = load_model_profiles()["llama-3.1-8b"]
    config = _tt_405b(1).with_(pipeline_parallel=1, tensor_parallel=1)
    a = estimate_memory(spec, config, optimizer=TAX["adamw"])
    b = estimate_memory(
        spec, config, optimizer=TAX["adamw"], pipeline_runtime=PipelineRuntime.TORCH
    )
    assert a.total_bytes == b.total_bytes


def test_llama3_405b_rank1_holds_the_schedule_and_no_stage_io() -> None:
    """The 8,192-GPU row (DP 64: 32 micro-batches per step) by hand: rank 1 keeps 141
    block-micro-batches of one block's saves (Megatron-Core frees each stage output once
    sent; the received input is the first block's saved input), and of the model level only
    the RoPE cos/sin tables (2 x 8,192 x 128 bf16): the token ids stay with the embedding on
    rank 0, the final norm with the head on rank 15."""
    spec = load_model_profiles()["llama-3.1-405b"]
    est = estimate_memory(spec, _llama3_405b(64, 32), optimizer=TAX["adamw"])
    assert any("rank 1 (8 blocks) is the largest" in n for n in est.notes)
    block = layer_activation_bytes(
        spec, 1, 8192, Attention.FLASH, Precision.BF16_MIXED, stack=Stack.FUSED, tensor_parallel=8
    )
    assert est.breakdown["activations"] == 141 * block + 2 * 8192 * 128 * 2


def test_only_the_end_stages_keep_the_embedding_ids_and_the_final_norm() -> None:
    """Per rank of a 4-stage 1F1B pipeline of 8 blocks each: the first holds 4 micro-batches
    and the token ids (int64 per token), a middle one 3 (then 2) and neither, the last 1 and
    the final norm before the head (fused: its bf16 input, an fp32 rstd per row and the bf16
    output the head saves). Every stage keeps the RoPE tables (cos and sin, head dim 128)."""
    spec = load_model_profiles()["llama-3.1-8b"]
    b, s, h = 1, 4096, 4096
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        stack=Stack.FUSED,
        micro_batch=b,
        seq_len=s,
        grad_accumulation=8,
        pipeline_parallel=4,
    )
    block = layer_activation_bytes(
        spec, b, s, Attention.FLASH, Precision.BF16_MIXED, stack=Stack.FUSED
    )
    rope = 2 * s * 128 * 2
    memo = memo_for(spec, None)
    expected = {
        "first": 4 * 8 * block + rope + 8 * b * s,
        "middle": 3 * 8 * block + rope,
        "last": 1 * 8 * block + rope + (2 * b * s * h + 4 * b * s + 2 * b * s * h),
    }
    held = {"first": 32, "middle": 24, "last": 8}
    for stage, want in expected.items():
        est = estimate_stage(memo, config, TAX["adamw"], None, frozenset(), stage, 8, held[stage])
        assert isinstance(est, MemoryEstimate)
        assert est.breakdown["activations"] == want, stage
