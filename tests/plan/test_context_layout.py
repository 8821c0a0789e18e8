"""Context parallelism as a layout dimension: the configuration's degree, the layouts the
search enumerates, and the pins it refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from advisor.config import (
    FLAT_FIELDS,
    ContextParallelKind,
    ParallelLayout,
    Sharding,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.model import resolve_model_size
from advisor.model.profiles import get_model_profile
from advisor.plan import Layout, enumerate_layouts
from advisor.plan.layout import CP_MIN_RANK_TOKENS, CP_MIN_SEQ, context_degrees

LLAMA8 = get_model_profile("llama-3.1-8b")  # 32 heads, 8 key/value heads


def test_world_size_counts_context_parallel_ranks() -> None:
    layout = ParallelLayout(
        data_parallel=4, tensor_parallel=2, pipeline_parallel=2, context_parallel=8
    )
    assert layout.world_size == 4 * 2 * 2 * 8
    # Gradients are reduced and ZeRO/FSDP shards kept over data x context parallel ranks.
    assert layout.dp_cp == 32
    assert ParallelLayout().context_parallel == 1
    assert ParallelLayout().context_parallel_kind is ContextParallelKind.RING


def test_the_flat_view_names_the_new_fields() -> None:
    c = TrainingConfig(context_parallel=4, context_parallel_kind="ulysses", seq_len=65536)
    assert c.layout.context_parallel == 4
    flat = c.model_dump(mode="json")
    assert flat["context_parallel"] == 4 and flat["context_parallel_kind"] == "ulysses"
    assert FLAT_FIELDS["context_parallel"] == ("layout", "context_parallel")
    assert c.with_(context_parallel=2).layout.context_parallel == 2
    with pytest.raises(ValidationError):
        TrainingConfig(context_parallel=0)
    with pytest.raises(ValidationError):
        TrainingConfig(context_parallel_kind="allgather")


def test_layout_validates_the_world_with_context_parallel() -> None:
    ok = Layout(
        world_size=16,
        gpus_per_node=8,
        parallel=ParallelLayout(data_parallel=2, context_parallel=8),
    )
    assert ok.label == "cp8 dp2"
    with pytest.raises(ValidationError, match="cp 8"):
        Layout(
            world_size=8,
            gpus_per_node=8,
            parallel=ParallelLayout(data_parallel=2, context_parallel=8),
        )
    # One data-parallel replica split over context-parallel ranks can still shard its states
    # over them (torchtitan's FSDP over dp_shard_cp).
    sharded = Layout(
        world_size=4,
        gpus_per_node=8,
        parallel=ParallelLayout(context_parallel=4, sharding=Sharding.FSDP),
    )
    assert sharded.parallel.dp_cp == 4
    ulysses = ParallelLayout(
        data_parallel=2, context_parallel=4, context_parallel_kind=ContextParallelKind.ULYSSES
    )
    assert Layout(world_size=8, gpus_per_node=8, parallel=ulysses).label == "cp4 ulysses dp2"


def test_short_sequences_enumerate_the_same_layouts() -> None:
    """Below CP_MIN_SEQ the search space is what it was: no context-parallel layout."""
    for seq in (2048, 8192, CP_MIN_SEQ - 1):
        layouts = enumerate_layouts(LLAMA8, world_size=32, gpus_per_node=8, seq_len=seq)
        assert all(lay.parallel.context_parallel == 1 for lay in layouts)
        assert len(layouts) == len(enumerate_layouts(LLAMA8, world_size=32, gpus_per_node=8))


def test_long_sequences_explore_ring_and_ulysses() -> None:
    seq = 131072
    layouts = enumerate_layouts(LLAMA8, world_size=64, gpus_per_node=8, seq_len=seq)
    degrees = {
        (lay.parallel.context_parallel, lay.parallel.context_parallel_kind) for lay in layouts
    }
    ring, ulysses = ContextParallelKind.RING, ContextParallelKind.ULYSSES
    # Llama 3's 128K stage ran CP 16 (Dubey et al. 2024, sec. 3.3.2): it is among them.
    assert (16, ring) in degrees and (1, ring) in degrees
    # Every rank keeps at least CP_MIN_RANK_TOKENS tokens and 2 x cp chunks split the sequence.
    for cp, _kind in degrees:
        assert seq // cp >= CP_MIN_RANK_TOKENS and seq % (2 * cp) == 0
    # Ulysses needs the heads per tensor-parallel rank to split: 32 heads, 8 KV heads.
    for lay in layouts:
        p = lay.parallel
        if p.context_parallel_kind is ulysses and p.context_parallel > 1:
            heads = 32 // p.tensor_parallel
            kv = 8 // p.tensor_parallel
            assert heads % p.context_parallel == 0
            assert kv % p.context_parallel == 0 or p.context_parallel % kv == 0
        assert p.world_size == 64
    assert any(k is ulysses for _, k in degrees)


def test_context_degrees_honour_the_pins() -> None:
    ring, ulysses = ContextParallelKind.RING, ContextParallelKind.ULYSSES
    assert context_degrees(LLAMA8, 4096, 8, 1, 2, None) == [(2, ring)]
    assert context_degrees(LLAMA8, 4096, 8, 1, 2, ulysses) == [(2, ulysses)]
    # A pinned kind without a degree restricts what long sequences explore.
    kinds = {k for _, k in context_degrees(LLAMA8, 65536, 16, 1, None, ulysses)}
    assert kinds == {ulysses}
    # 64 Ulysses ranks cannot split 32 heads: not enumerated even when pinned.
    assert context_degrees(LLAMA8, 262144, 64, 1, 64, ulysses) == []


def test_pinned_degree_that_does_not_divide_the_devices_is_refused() -> None:
    with pytest.raises(UserError, match="--context-parallel 3"):
        enumerate_layouts(LLAMA8, world_size=8, gpus_per_node=8, seq_len=4096, cp=3)
    spec = resolve_model_size("7B")
    pinned = enumerate_layouts(spec, world_size=16, gpus_per_node=8, seq_len=8192, cp=4)
    assert pinned and all(lay.parallel.context_parallel == 4 for lay in pinned)
