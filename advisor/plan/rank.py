"""Ranking: one objective score per plan, and distinct rows (equivalent plans fold together).

All scoring lives here (``objective_score``), so that further terms (time to target) have
one place to go.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from advisor.config import Precision, Task
from advisor.plan.evaluator import EQUIVALENT, Plan
from advisor.plan.space import Objective, describe_config, objective_score


@dataclass(frozen=True)
class Row:
    """One shown row: a plan, its score, and the equivalent plans folded into it."""

    plan: Plan
    score: float
    also: list[str]


# NOTE: offloading states or parameters to NVMe (ZeRO-Infinity) is a last resort: it ranks
# below any plan that fits without it unless its time to target is more than ~10% shorter
# by these models. Its predicted speed rests on one assumed drive rate (cost/offload.py:
# NVME_GB_S), it writes the optimizer states to the SSD every step, and DeepSpeed's own
# guidance orders ZeRO-3 with offload last for speed and advises offloading only what does
# not fit (huggingface.co/docs/transformers/deepspeed, "How to choose which ZeRO stage and
# offloads to use for best performance"). Objectives that weigh time pay it; "memory" and
# "quality" do not.
NVME_LAST_RESORT = math.log(1.10)
_TIMED = frozenset({Objective.SPEED, Objective.BALANCED, Objective.TIME_TO_TARGET})


def last_resort_penalty(objective: Objective, plan: Plan) -> float:
    """What an NVMe-offloading plan adds to its score under objectives that weigh time."""
    return NVME_LAST_RESORT if objective in _TIMED and plan.config.savers.offload.nvme else 0.0


def _quality_class(objective: Objective, plan: Plan) -> int:
    # Under "quality", full-parameter training ranks above adapters whenever it fits in some
    # layout: LoRA trails full fine-tuning on harder tasks (Biderman et al. 2024).
    if objective is Objective.QUALITY:
        return 0 if plan.config.task in (Task.PRETRAIN, Task.FINETUNE) else 1
    return 0


def rank_plans(
    plans: list[Plan],
    objective: Objective,
    usable: int,
    steps_of: Callable[[Plan], float] | None = None,
) -> list[Row]:
    """Every plan, best first, with equivalent plans folded into one row.

    Plans that reach the requested global batch rank above those that cannot (per-layer
    updates without accumulation), then by objective score. Two plans are the same row when
    they train the same way (task, precision and the batch) at the same memory and time:
    FSDP and ZeRO-3 at equal cost, or optimizers that differ by megabytes on adapters. The
    row shows its best-scored member and lists the others: preferences pick the label, but
    never split equivalent plans into separate rows.
    """
    steps = {id(p): (steps_of(p) if steps_of else 1.0) for p in plans}
    plans = prune_dominated(plans, steps)
    scored = sorted(
        (
            (
                _quality_class(objective, p),
                0 if p.exact_batch else 1,
                objective_score(
                    objective,
                    p.seconds_per_token,
                    p.peak_bytes,
                    usable,
                    p.rule_score,
                    steps[id(p)],
                )
                + last_resort_penalty(objective, p),
                p.seconds_per_token,
                p.peak_bytes,
                describe_config(p.config),
                p,
            )
            for p in plans
        ),
        key=lambda x: x[:6],
    )
    rows: list[tuple[Plan, float, list[Plan]]] = []
    for *_, score, _t, _m, _d, p in scored:
        for _i, (head, _head_score, members) in enumerate(rows):
            if _same_row(head, p) and _same_steps(steps[id(head)], steps[id(p)]):
                members.append(p)
                break
        else:
            rows.append((p, score, []))
    out = []
    for head, score, members in rows:
        group = [head, *members]
        # The row shows its best-scored member; the others are listed, never ranked apart.
        shown = head
        label = describe_config(shown.config)
        # Each member is named by what differs from the shown plan, not by its whole label.
        parts = set(label.split(", "))
        others = [
            ", ".join(x for x in describe_config(p.config).split(", ") if x not in parts)
            for p in group
            if p is not shown
        ]
        others = [o for o in others if o]
        also = sorted(set(others + [a for p in group for a in p.aliases]))
        out.append(Row(plan=shown, score=score, also=also))
    return out


def row_cutoff(
    plans: Sequence[Plan],
    objective: Objective,
    usable: int,
    top: int,
    steps_of: Callable[[Plan], float] | None = None,
) -> float:
    """The score of the ``top``-th row :func:`rank_plans` makes of ``plans``, when it and
    every row above it reach the global batch (+inf otherwise): a plan scoring above it
    cannot be shown (the search's branch and bound cuts ladders by it)."""
    if objective is Objective.QUALITY or len(plans) < top:
        return float("inf")
    rows = rank_plans(list(plans), objective, usable, steps_of)
    if len(rows) < top or not rows[top - 1].plan.exact_batch:
        return float("inf")
    return rows[top - 1].score


def prune_dominated(plans: list[Plan], steps: dict[int, float] | None = None) -> list[Plan]:
    """Drop plans another plan of the same kind (task, whether it reaches the batch, steps
    to the target) beats or matches in time, memory and rule score at once, without
    offloading to NVMe where they do not: no objective can prefer them."""
    steps = steps or {}
    kinds: dict[tuple[object, bool, float], list[Plan]] = {}
    for p in plans:
        key = (p.config.task, p.exact_batch, round(steps.get(id(p), 1.0), 6))
        kinds.setdefault(key, []).append(p)
    out = []
    for group in kinds.values():
        # Sorted by time, a plan is dominated when an earlier (no slower) one also has no
        # more memory and no lower rule score.
        group = sorted(group, key=lambda p: (p.seconds_per_token, p.peak_bytes))
        for i, a in enumerate(group):
            if not any(
                b.seconds_per_token <= a.seconds_per_token
                and b.peak_bytes <= a.peak_bytes
                and b.rule_score >= a.rule_score
                # NVMe offload is a last resort (NVME_LAST_RESORT): it never stands in for
                # a plan without it.
                and (a.config.savers.offload.nvme or not b.config.savers.offload.nvme)
                and (
                    b.seconds_per_token < a.seconds_per_token
                    or b.peak_bytes < a.peak_bytes
                    or b.rule_score > a.rule_score
                )
                for b in group[:i]
            ):
                out.append(a)
    return out


def _same_steps(a: float, b: float) -> bool:
    # Plans that need different numbers of steps to the target do not train the same way,
    # even at the same step time and memory (LAMB past the critical batch is not AdamW).
    return abs(a - b) <= EQUIVALENT * max(a, b)


def _bare_16_bit(precision: Precision) -> bool:
    return precision in (Precision.BF16, Precision.FP16)


def _same_row(a: Plan, b: Plan) -> bool:
    ca, cb = a.config, b.config
    if (ca.task, a.exact_batch) != (cb.task, b.exact_batch):
        return False
    # Dropping the fp32 master weights of full-parameter training changes what is learnt
    # (Micikevicius et al. 2018), even where it changes neither memory nor time (master
    # weights offloaded). Adapters' few weights are not at stake.
    full = ca.task in (Task.PRETRAIN, Task.FINETUNE)
    if full and _bare_16_bit(ca.precision) != _bare_16_bit(cb.precision):
        return False
    close_t = abs(a.seconds_per_token - b.seconds_per_token) <= EQUIVALENT * a.seconds_per_token
    ma, mb = a.peak_bytes, b.peak_bytes
    close_m = abs(ma - mb) <= EQUIVALENT * max(ma, mb)
    return close_t and close_m
