"""The assembled report (advisor.plan.report.build_report) on small datasheet scenarios.

Published facts checked: an L4 has 24 GiB and compute capability 8.9 (Ada, fast bf16;
profiles/hardware/l4.yaml cites NVIDIA's datasheet); GPT-2 small has 124M parameters
(Radford et al. 2019); GPT-3's Table 2.1 pre-trains models below 1B parameters at 0.5M
tokens per step and Alpaca fine-tunes at 128 sequences per step (the global batch defaults).
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.config import Task
from advisor.errors import UserError
from advisor.hardware.target import HostOverride
from advisor.plan.explain import effect
from advisor.plan.models import RecommendReport
from advisor.plan.report import build_report
from advisor.plan.space import MEMORY_SAFETY_MARGIN, Objective
from advisor.units import GIB
from tests.plan.scenarios import context

NO_HOST = HostOverride(memory_bytes=0, nvme_bytes=0)


def report(model: str, hardware: str, top: int = 5, **flags: Any) -> RecommendReport:
    ctx, cost = context(model, hardware, **flags)
    return build_report(ctx, cost, top=top, cost_note="costs: analytic (test)")


def test_a_small_case_fits_with_rows_in_objective_order() -> None:
    r = report("gpt2", "l4", task=Task.PRETRAIN, seq_len=1024)
    assert r.fits and r.verdict == "ok" and r.suggestions == []
    recs = r.recommendations
    assert 1 < len(recs) <= 5
    assert [x.rank for x in recs] == list(range(1, len(recs) + 1))
    assert [x.score for x in recs] == sorted(x.score for x in recs)
    usable = r.hardware.usable_memory_bytes
    for x in recs:
        assert x.fits and 0 < x.peak_memory_bytes <= usable
        assert x.headroom_bytes == r.hardware.device_memory_bytes - x.peak_memory_bytes
        assert x.micro_batch * x.grad_accumulation * x.data_parallel == x.global_batch
        assert x.tokens_per_s == pytest.approx(x.global_batch * 1024 / x.step_time_s)
        assert x.config.batch.micro_batch == x.micro_batch and x.config.optimizer == x.optimizer
    assert r.cost_note == "costs: analytic (test)"


def test_the_hardware_summary_is_the_targets_with_the_safety_margin() -> None:
    r = report("gpt2", "l4", task=Task.PRETRAIN, seq_len=1024)
    h = r.hardware
    assert h.device_memory_bytes == 24 * GIB
    assert h.safety_margin == MEMORY_SAFETY_MARGIN == 0.9
    assert h.usable_memory_bytes == int(24 * GIB * 0.9)
    assert h.compute_capability == pytest.approx(8.9) and h.fast_bf16
    assert (h.gpus_per_node, h.nodes, h.device_kind, h.source) == (1, 1, "cuda", "profile")
    assert r.facts["fast_bf16"] is True


def test_the_workload_summary_states_the_published_default_batch() -> None:
    pre = report("gpt2", "l4", task=Task.PRETRAIN, seq_len=1024).workload
    assert 124e6 <= pre.parameters < 125e6  # GPT-2 small
    assert pre.global_batch == 2**19 // 1024 and pre.global_batch_tokens == 2**19
    assert "GPT-3" in pre.global_batch_source and pre.world_size == 1
    fine = report("gpt2", "l4", task=Task.FINETUNE, seq_len=1024)
    assert fine.workload.global_batch == 128 and "Alpaca" in fine.workload.global_batch_source
    pick = fine.recommendations[0]
    assert (fine.workload.micro_batch, fine.workload.grad_accumulation) == (
        pick.micro_batch,
        pick.grad_accumulation,
    )


def test_counts_and_explanations_agree_with_the_lists_they_summarise() -> None:
    ctx, cost = context("gpt2", "l4", task=Task.FINETUNE, seq_len=1024)
    r = build_report(ctx, cost)
    assert sum(r.rejected_counts.values()) == len(r.rejected)
    assert r.search is not None
    assert r.search.plans_pruned == r.search.plans_considered - r.search.plans_evaluated
    assert r.candidates_considered == r.search.plans_considered
    assert {f.rule for f in r.fired_rules} and all(
        f.effect == effect(ctx, f.rule) for f in r.fired_rules
    )
    for x in r.recommendations:
        assert all(reason.effect.split()[1] in x.techniques for reason in x.reasons)


def test_speed_picks_no_slower_and_memory_no_fuller_than_the_other() -> None:
    flags = dict(task=Task.PRETRAIN, seq_len=1024)
    speed = report("125M", "l4", objective=Objective.SPEED, **flags).recommendations[0]
    memory = report("125M", "l4", objective=Objective.MEMORY, **flags).recommendations[0]
    assert speed.tokens_per_s >= memory.tokens_per_s
    assert memory.peak_memory_bytes <= speed.peak_memory_bytes
    assert memory.peak_memory_bytes < speed.peak_memory_bytes or (
        memory.tokens_per_s == speed.tokens_per_s
    )


def test_fewer_rows_shown_are_the_first_rows_of_more() -> None:
    flags = dict(task=Task.FINETUNE, seq_len=1024)
    five = report("gpt2", "l4", top=5, **flags).recommendations
    two = report("gpt2", "l4", top=2, **flags).recommendations
    assert len(two) == 2
    assert [(x.config, x.score) for x in two] == [(x.config, x.score) for x in five[:2]]


def test_nothing_fits_gives_the_verdict_and_suggestions() -> None:
    # 13B pretraining on one 16 GB T4 without host RAM: even AdamW in 16 bits needs
    # ~16 bytes per parameter of states; the suggestions say what would fit.
    r = report("13B", "t4", task=Task.PRETRAIN, host=NO_HOST)
    assert not r.fits and r.verdict == "nothing-fits" and r.recommendations == []
    changes = [s.change for s in r.suggestions]
    assert any("ZeRO-3" in c for c in changes) and "QLORA fine-tuning" in changes
    assert r.trade == "" and r.rejected and r.rejected_counts.get("memory", 0) > 0
    assert (r.workload.micro_batch, r.workload.grad_accumulation) == (1, 1)
    assert r.hardware.host_memory_bytes == 0


def test_a_requested_global_batch_is_met_exactly() -> None:
    r = report("gpt2", "l4", task=Task.FINETUNE, seq_len=1024, gpus=2, global_batch=8)
    assert r.workload.global_batch == 8 and r.workload.global_batch_source == "--global-batch"
    for x in r.recommendations:
        assert x.global_batch == 8
        assert x.micro_batch * x.grad_accumulation * x.data_parallel == 8


def test_a_global_batch_no_replica_count_divides_is_a_user_error() -> None:
    # Data parallelism only (--tp 1 --pp 1) over 2 devices: 3 samples split over 2 replicas.
    flags = dict(task=Task.FINETUNE, seq_len=1024, gpus=2, tensor_parallel=1, pipeline_parallel=1)
    with pytest.raises(UserError, match="cannot be split evenly"):
        report("gpt2", "l4", global_batch=3, **flags)


def test_a_global_batch_smaller_than_the_replicas_is_a_user_error() -> None:
    flags = dict(task=Task.FINETUNE, seq_len=1024, gpus=2, tensor_parallel=1, pipeline_parallel=1)
    with pytest.raises(UserError, match="smaller than the 2 devices"):
        report("gpt2", "l4", global_batch=1, **flags)
