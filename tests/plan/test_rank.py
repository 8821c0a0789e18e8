"""Ranking (advisor.plan.rank): objective order, dominance, folding of equivalent plans.

Plans are built by hand with the times and peaks each test needs; the ranking reads only a
plan's configuration, time per token, peak, rule score and whether it reaches the batch.
The trades asserted are the documented ones: "balanced" gives up at most ~10% of time to
target for memory (advisor.plan.space.BALANCED_MEMORY_TRADE), full-parameter training
ranks above adapters under "quality" (Biderman et al. 2024), and dropping the fp32 master
weights of full-parameter training is never folded into mixed precision (Micikevicius et
al. 2018).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from advisor.config import Precision, Task
from advisor.plan.evaluator import EQUIVALENT, Evaluator, Plan
from advisor.plan.rank import prune_dominated, rank_plans, row_cutoff
from advisor.plan.space import BALANCED_MEMORY_TRADE, Objective, objective_score
from advisor.units import GIB
from tests.plan.scenarios import context, hand_plan

CTX, COST = context("gpt2", "l4", task=Task.FINETUNE, seq_len=1024)
EV = Evaluator(CTX, COST)
USABLE = 20 * GIB
BATCH = 128
SEQ = 1024


def plan(seconds: float, peak: int, **kw: Any) -> Plan:
    """A plan training BATCH samples of SEQ tokens per step in ``seconds``."""
    return hand_plan(EV, seconds, peak, batch=BATCH, seq_len=SEQ, **kw)


def picks(plans: list[Plan], objective: Objective) -> Plan:
    return rank_plans(plans, objective, USABLE)[0].plan


# -- objectives ----------------------------------------------------------------------------


def test_speed_memory_and_balanced_pick_by_their_own_measure() -> None:
    fast = plan(1.00, int(0.9 * USABLE), optimizer="adamw")
    lean = plan(1.05, int(0.3 * USABLE), optimizer="adafactor")
    assert picks([fast, lean], Objective.SPEED) is fast
    assert picks([fast, lean], Objective.MEMORY) is lean
    # 5% slower for 60% of the usable memory: within balanced's 10% trade.
    assert picks([fast, lean], Objective.BALANCED) is lean


@pytest.mark.parametrize("slowdown", [1.02, 1.05, 1.08, 1.095, 1.105, 1.12, 1.3, 2.0])
def test_balanced_gives_up_at_most_ten_percent_of_speed_for_memory(slowdown: float) -> None:
    # The leanest (almost nothing) against the fullest plan (all of the usable memory).
    full = plan(1.0, USABLE, optimizer="adamw")
    lean = plan(slowdown, 1, optimizer="adafactor")
    assert math.exp(BALANCED_MEMORY_TRADE) == pytest.approx(1.10)
    expected = lean if slowdown < 1.10 else full
    assert picks([full, lean], Objective.BALANCED) is expected


def test_rows_are_in_ascending_objective_score() -> None:
    plans = [
        plan(1.0 + i / 7, int((0.95 - i / 10) * USABLE), optimizer=o, rule=r)
        for i, (o, r) in enumerate([("adamw", 0), ("adafactor", 2), ("lion", -1), ("sgd", 5)])
    ]
    for objective in (Objective.SPEED, Objective.MEMORY, Objective.BALANCED):
        rows = rank_plans(plans, objective, USABLE)
        scores = [
            objective_score(
                objective, r.plan.seconds_per_token, r.plan.peak_bytes, USABLE, r.plan.rule_score
            )
            for r in rows
        ]
        assert scores == sorted(scores)
        assert [r.score for r in rows] == pytest.approx(scores)


def test_a_plan_that_reaches_the_global_batch_ranks_above_a_faster_one_that_does_not() -> None:
    short = plan(0.5, USABLE // 4, optimizer="adamw", exact=False)
    exact = plan(1.0, USABLE // 2, optimizer="adafactor")
    for objective in Objective:
        assert picks([short, exact], objective) is exact


def test_quality_ranks_full_fine_tuning_above_faster_leaner_adapters() -> None:
    full = plan(2.0, int(0.9 * USABLE), optimizer="adamw")
    lora = plan(1.0, int(0.2 * USABLE), optimizer="adamw", task=Task.LORA)
    assert picks([full, lora], Objective.QUALITY) is full
    assert picks([full, lora], Objective.SPEED) is lora
    assert picks([full, lora], Objective.MEMORY) is lora


# -- dominance -----------------------------------------------------------------------------


def test_a_plan_beaten_in_time_memory_and_rules_is_dropped() -> None:
    best = plan(1.0, 10 * GIB, rule=2, optimizer="adamw")
    worse = plan(1.5, 12 * GIB, rule=1, optimizer="lion")
    tie_but_slower = plan(1.2, 10 * GIB, rule=2, optimizer="sgd")
    kept = prune_dominated([worse, best, tie_but_slower])
    assert best in kept and worse not in kept and tie_but_slower not in kept


def test_plans_that_win_on_one_measure_are_kept() -> None:
    best = plan(1.0, 10 * GIB, rule=0, optimizer="adamw")
    leaner = plan(1.5, 8 * GIB, rule=0, optimizer="adafactor")
    preferred = plan(1.5, 12 * GIB, rule=3, optimizer="lion")
    assert set(map(id, prune_dominated([best, leaner, preferred]))) == {
        id(best),
        id(leaner),
        id(preferred),
    }


def test_dominance_never_compares_different_tasks_batches_or_step_counts() -> None:
    full = plan(1.0, 10 * GIB, rule=5, optimizer="adamw")
    lora = plan(2.0, 12 * GIB, rule=0, optimizer="adamw", task=Task.LORA)
    short = plan(2.0, 12 * GIB, rule=0, optimizer="lion", exact=False)
    more_steps = plan(2.0, 12 * GIB, rule=0, optimizer="sgd")
    steps = {id(full): 1.0, id(lora): 1.0, id(short): 1.0, id(more_steps): 3.0}
    kept = prune_dominated([full, lora, short, more_steps], steps)
    assert len(kept) == 4
    # Without the step counts, the same optimizer kind is compared: sgd loses to adamw.
    assert more_steps not in prune_dominated([full, more_steps])


# -- folding -------------------------------------------------------------------------------


def test_equivalent_plans_fold_into_one_row_naming_only_what_differs() -> None:
    a = plan(1.0, 10 * GIB, rule=1, optimizer="adamw")
    # A hair faster but less preferred: neither dominates the other.
    b = plan(1.0 * (1 - EQUIVALENT / 2), 10 * GIB, optimizer="adam", aliases=("fsdp",))
    rows = rank_plans([a, b], Objective.BALANCED, USABLE)
    assert len(rows) == 1
    assert rows[0].plan is a  # the better rule score labels the row
    # "full fine-tune", the precision and the attention are shared: only the optimizer and
    # the aliases folded into the other plan are named.
    assert rows[0].also == ["adam", "fsdp"]


def test_plans_apart_in_time_or_memory_stay_separate_rows() -> None:
    a = plan(1.0, 10 * GIB, optimizer="adamw")
    slower = plan(1.0 * (1 + 3 * EQUIVALENT), 10 * GIB, rule=1, optimizer="adam")
    fuller = plan(1.0, int(10 * GIB * (1 + 3 * EQUIVALENT)), rule=1, optimizer="lion")
    assert len(rank_plans([a, slower], Objective.BALANCED, USABLE)) == 2
    assert len(rank_plans([a, fuller], Objective.BALANCED, USABLE)) == 2


@pytest.mark.parametrize("task", [Task.FINETUNE, Task.PRETRAIN])
def test_full_parameter_bare_16_bit_never_folds_into_mixed_precision(task: Task) -> None:
    # Same memory and time (master weights offloaded, say), but without the fp32 master
    # copy full-parameter training learns something else (Micikevicius et al. 2018).
    mixed = plan(1.0, 10 * GIB, task=task, precision=Precision.BF16_MIXED)
    bare = plan(1.0, 10 * GIB, task=task, precision=Precision.BF16)
    rows = rank_plans([mixed, bare], Objective.BALANCED, USABLE)
    assert len(rows) == 2
    assert all(r.also == [] for r in rows)


def test_adapters_in_bare_16_bit_fold_into_mixed_precision() -> None:
    # An adapter's few trainable weights are not at stake: the same row.
    mixed = plan(1.0, 10 * GIB, task=Task.LORA, precision=Precision.BF16_MIXED)
    bare = plan(1.0, 10 * GIB, task=Task.LORA, precision=Precision.BF16)
    rows = rank_plans([mixed, bare], Objective.BALANCED, USABLE)
    assert len(rows) == 1 and len(rows[0].also) == 1


# -- the cutoff the branch and bound cuts by -------------------------------------------------


def test_row_cutoff_is_infinite_with_fewer_plans_than_rows_shown() -> None:
    plans = [plan(1.0 + i / 4, (10 - i) * GIB, optimizer=o) for i, o in enumerate(["adamw", "sgd"])]
    assert row_cutoff(plans, Objective.BALANCED, USABLE, top=3) == float("inf")


def test_row_cutoff_is_the_score_of_the_last_row_shown() -> None:
    opts = ["adamw", "adafactor", "lion", "sgd"]
    # Each slower plan is leaner (none dominated): under speed the second fastest is row 2.
    plans = [plan(1.0 + i / 4, (8 - i) * GIB, optimizer=o) for i, o in enumerate(opts)]
    scores = [
        objective_score(Objective.SPEED, p.seconds_per_token, p.peak_bytes, USABLE, 0.0)
        for p in plans
    ]
    assert row_cutoff(plans, Objective.SPEED, USABLE, top=2) == pytest.approx(scores[1])
    # The plans below it score above the cutoff: the search may cut such ladders.
    assert min(scores[2:]) > row_cutoff(plans, Objective.SPEED, USABLE, top=2)


def test_row_cutoff_is_infinite_where_rows_may_not_reach_the_batch_or_under_quality() -> None:
    opts = ["adamw", "adafactor", "lion"]
    short = [plan(1 + i / 4, (8 - i) * GIB, optimizer=o, exact=False) for i, o in enumerate(opts)]
    exact = [plan(1 + i / 4, (8 - i) * GIB, optimizer=o) for i, o in enumerate(opts)]
    assert row_cutoff(exact, Objective.SPEED, USABLE, top=2) < float("inf")
    assert row_cutoff(short, Objective.SPEED, USABLE, top=2) == float("inf")
    # Quality ranks full-parameter plans above adapters whatever their score: no cutoff.
    assert row_cutoff(exact, Objective.QUALITY, USABLE, top=2) == float("inf")
