"""Small plan-search scenarios on datasheet profiles, shared by the tests of advisor.plan.

Each builds the real Context (model profile, workload, target from a cited hardware profile,
the shipped taxonomy and rules) and the analytic step-time model on the profile's datasheet
figures, as ``optadvise recommend --hardware ... --no-calibrate`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advisor.app.recommend import cost_function
from advisor.config import Task, TrainingConfig
from advisor.hardware.profiles import get_hardware_profile
from advisor.hardware.target import HostOverride, target_from_profile
from advisor.model import get_model_profile, resolve_model_size
from advisor.plan.evaluator import CostFn, Evaluator, Plan
from advisor.plan.layout import Layout
from advisor.plan.models import StepCost
from advisor.plan.rank import Row, rank_plans
from advisor.plan.report import ranking_decision
from advisor.plan.search import SearchResult, search
from advisor.plan.space import (
    Context,
    Workload,
    build_space,
    derive_facts,
    plan_step_factor,
    resolve_global_batch,
    usable_memory,
)
from advisor.rules.engine import Decision, decide
from advisor.rules.ruleset import load_rules
from advisor.rules.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy()
RULES = load_rules([], technique_ids=set(TAXONOMY.ids()))


def context(
    model: str,
    hardware: str,
    *,
    gpus: int = 1,
    nodes: int = 1,
    host: HostOverride | None = None,
    **workload: Any,
) -> tuple[Context, CostFn]:
    """The context of one scenario (global batch resolved) and its analytic cost model."""
    spec = get_model_profile(model) if not model[0].isdigit() else resolve_model_size(model)
    profile = get_hardware_profile(hardware)
    target = target_from_profile(profile, gpus=gpus, nodes=nodes, memory_budget=None, host=host)
    w = Workload(gpus=gpus, nodes=nodes, **workload)
    ctx = Context(spec=spec, workload=w, target=target, taxonomy=TAXONOMY, ruleset=RULES)
    ctx = ctx.model_copy(update={"batch": resolve_global_batch(spec, w)})
    return ctx, cost_function(ctx, None, profile)


@dataclass(frozen=True)
class Searched:
    """One scenario searched and ranked, as build_report does before it explains."""

    ctx: Context
    cost: CostFn
    decision: Decision
    found: SearchResult
    rows: list[Row]

    @property
    def plans(self) -> list[Plan]:
        return self.found.plans


def searched(model: str, hardware: str, **kw: Any) -> Searched:
    """Search a scenario without branch and bound, and rank what it finds with each plan's
    steps to AdamW's loss (as build_report does)."""
    ctx, cost = context(model, hardware, **kw)
    optimizers = [t for t in TAXONOMY.optimizers() if t.implementation]
    decision = ranking_decision(ctx, decide(RULES, TAXONOMY, derive_facts(ctx, optimizers)))  # type: ignore[arg-type]
    found = search(ctx, decision, cost, build_space(ctx, optimizers))
    rows = rank_plans(
        found.plans,
        ctx.workload.objective,
        usable_memory(ctx.target),
        lambda p: plan_step_factor(ctx, p.config),
    )
    return Searched(ctx, cost, decision, found, rows)


def hand_plan(
    ev: Evaluator,
    seconds: float,
    peak: int,
    *,
    rule: float = 0.0,
    exact: bool = True,
    batch: int = 128,
    aliases: tuple[str, ...] = (),
    techniques: tuple[str, ...] = (),
    **config: Any,
) -> Plan:
    """A stand-in plan with the step time and peak a test needs (``batch`` samples of the
    configuration's sequence length per step); its configuration defaults to full
    fine-tuning with AdamW at 1024 tokens."""
    c = TrainingConfig(**{"task": Task.FINETUNE, "seq_len": 1024, **config})
    return Plan(
        config=c,
        layout=Layout(world_size=1, gpus_per_node=1),
        techniques=list(techniques or (c.optimizer,)),
        peak_bytes=peak,
        cost=StepCost(seconds=seconds, source="analytic", components={"compute": seconds}),
        rule_score=rule,
        global_batch=batch,
        exact_batch=exact,
        evaluator=ev,
        aliases=list(aliases),
    )
