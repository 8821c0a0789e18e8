"""Pipeline-parallel memory: which blocks each rank holds and what its schedule keeps alive.

The split follows Llama 3 (Dubey et al. 2024, sec. 3.3.2) and torchtitan's default; the
in-flight counts follow 1F1B and interleaved 1F1B (Narayanan et al. 2021). The counts are
checked against a step-by-step replay of each rank's schedule below, which tracks every
forward and backward, not against the closed form they are computed with.
"""

from __future__ import annotations

import pytest

from advisor.config import Precision, Sharding, Stack, Task, TrainingConfig
from advisor.errors import UserError
from advisor.memory import estimate_memory, inflight_block_microbatches, pipeline_split
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

    def forward() -> None:
        nonlocal live, peak, fwd
        live += blocks[(fwd // group) % v]
        peak = max(peak, live)
        fwd += 1

    def backward() -> None:
        nonlocal live, bwd
        live -= blocks[v - 1 - (bwd // group) % v]
        bwd += 1

    for _ in range(warmup):
        forward()
    while fwd < total:
        forward()
        backward()
    while bwd < total:
        backward()
    assert live == 0
    return peak


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
