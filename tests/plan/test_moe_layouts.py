"""The search's MoE layouts follow Megatron-Core's parallel folding
(megatron/core/parallel_state.py): expert tensor x expert parallelism divides the tensor x
data parallel ranks of a stage, expert parallelism the experts; expert tensor parallelism is
TP (Megatron's default) or 1; pinned degrees that do not fold are refused."""

from __future__ import annotations

import pytest

from advisor.config import MoeDispatcher, ParallelLayout
from advisor.errors import UserError
from advisor.model import load_model_profiles
from advisor.plan.layout import choose_dispatcher, enumerate_layouts

PROFILES = load_model_profiles()


def _triples(model: str, world: int, **pins: int) -> set[tuple[int, int, int, int, int]]:
    spec = PROFILES[model]
    out = set()
    for lay in enumerate_layouts(spec, world_size=world, gpus_per_node=8, **pins):  # type: ignore[arg-type]
        p = lay.parallel
        out.add(
            (
                p.tensor_parallel,
                p.pipeline_parallel,
                p.expert_parallel,
                p.expert_tp,
                p.data_parallel,
            )
        )
    return out


def test_every_enumerated_layout_folds_as_megatron_requires() -> None:
    spec = PROFILES["deepseek-v3"]
    layouts = enumerate_layouts(spec, world_size=1024, gpus_per_node=8)
    assert layouts
    for lay in layouts:
        p = lay.parallel
        world = p.tensor_parallel * p.pipeline_parallel * p.data_parallel
        # Megatron: world % (etp x ep x pp) == 0 (RuntimeError otherwise) and experts % ep.
        assert world % (p.expert_tp * p.expert_parallel * p.pipeline_parallel) == 0
        assert spec.num_experts % p.expert_parallel == 0
        assert p.expert_tp in (1, p.tensor_parallel)


def test_the_published_layouts_are_in_the_search() -> None:
    # DeepSeek-V3: TP2 PP16 EP64 DP32 (1024 GPUs), expert tensor parallelism 1.
    assert (2, 16, 64, 1, 32) in _triples("deepseek-v3", 1024, tp=2, pp=16)
    # Qwen3-235B-A22B: TP2 PP8 EP32 DP16 (256 GPUs).
    assert (2, 8, 32, 1, 16) in _triples("qwen3-235b-a22b", 256, tp=2, pp=8)
    # Mixtral 8x7B on one node: EP 8 over 8 ranks, and TP-only expert layouts.
    mixtral = _triples("mixtral-8x7b", 8)
    assert (1, 1, 8, 1, 8) in mixtral and (8, 1, 1, 8, 1) in mixtral


def test_pinned_expert_degrees() -> None:
    got = _triples("deepseek-v3", 1024, tp=2, pp=16, ep=64, etp=1)
    assert got == {(2, 16, 64, 1, 32)}
    with pytest.raises(
        UserError, match="folds --expert-parallel 128 with --expert-tensor-parallel 2"
    ):
        enumerate_layouts(
            PROFILES["deepseek-v3"], world_size=1024, gpus_per_node=8, tp=2, pp=16, ep=128, etp=2
        )
    with pytest.raises(UserError, match="folds --expert-parallel 2"):
        enumerate_layouts(PROFILES["llama-3.1-8b"], world_size=8, gpus_per_node=8, ep=2)


def test_expert_search_stays_small() -> None:
    """At most four expert layouts per (TP, PP, DP, sharding): the search time grows by a
    small factor only (benchmarks/search_speed.py)."""
    spec = PROFILES["deepseek-v3"]
    dense = enumerate_layouts(PROFILES["llama-3.1-405b"], world_size=1024, gpus_per_node=8)
    moe = enumerate_layouts(spec, world_size=1024, gpus_per_node=8)
    assert len(moe) <= 4 * len(dense) + 64


def test_dispatcher_choice_follows_megatron_s_advice() -> None:
    """Megatron's README: all-gather "when only tensor parallelism is used or when the
    top-k value is very large", all-to-all "if expert parallelism is applied"."""
    mixtral = PROFILES["mixtral-8x7b"]
    assert choose_dispatcher(mixtral, tp=8, ep=1, etp=8) is MoeDispatcher.ALLGATHER
    assert choose_dispatcher(mixtral, tp=1, ep=8, etp=1) is MoeDispatcher.ALLTOALL
    assert choose_dispatcher(PROFILES["deepseek-v3"], tp=2, ep=64, etp=1) is MoeDispatcher.ALLTOALL
    assert ParallelLayout().moe_dispatcher is MoeDispatcher.ALLTOALL
