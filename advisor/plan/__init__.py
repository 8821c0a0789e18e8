"""The plan search behind `optadvise recommend`: its public face, one module per stage.

Data flows one way: target (advisor.hardware.target) -> layout and plan space
(advisor.plan.layout, advisor.plan.space) -> search (advisor.plan.search, which drives the
screens of cores and layouts, advisor.plan.screens, and the saver-ladder walk of
advisor.plan.planner over the ladders and their bounds, advisor.plan.ladders and
advisor.plan.bounds, the batch geometry, advisor.plan.geometry, the rule and compatibility
filters, advisor.plan.constraints, and the memoised models, advisor.plan.evaluator) ->
ranking (advisor.plan.rank) -> explanation (advisor.plan.explain) -> report
(advisor.plan.report).
This module re-exports the names the app layer (advisor.app) and the benchmarks use.
"""

from __future__ import annotations

from advisor.hardware.target import (
    HostOverride,
    Target,
    closest_gpu_profile,
    cpu_profile_from_probe,
    match_gpu_profile,
    target_from_probe,
    target_from_profile,
)
from advisor.plan.evaluator import CostFn
from advisor.plan.layout import Layout, enumerate_layouts
from advisor.plan.models import (
    HardwareSummary,
    Reason,
    Recommendation,
    RecommendReport,
    Rejection,
    SearchStats,
    StepCost,
    Suggestion,
    WhyNot,
    WorkloadSummary,
)
from advisor.plan.report import build_report
from advisor.plan.space import (
    HOST_SAFETY_MARGIN,
    MEMORY_SAFETY_MARGIN,
    RULE_WEIGHT,
    Context,
    GlobalBatch,
    Objective,
    Privacy,
    Workload,
    baseline_config,
    derive_facts,
    describe_config,
    estimate,
    objective_score,
    resolve_global_batch,
    usable_memory,
)

__all__ = [
    "HOST_SAFETY_MARGIN",
    "MEMORY_SAFETY_MARGIN",
    "RULE_WEIGHT",
    "Context",
    "CostFn",
    "GlobalBatch",
    "HardwareSummary",
    "HostOverride",
    "Layout",
    "Objective",
    "Privacy",
    "Reason",
    "RecommendReport",
    "Recommendation",
    "Rejection",
    "SearchStats",
    "StepCost",
    "Suggestion",
    "Target",
    "WhyNot",
    "Workload",
    "WorkloadSummary",
    "baseline_config",
    "build_report",
    "closest_gpu_profile",
    "cpu_profile_from_probe",
    "derive_facts",
    "describe_config",
    "enumerate_layouts",
    "estimate",
    "match_gpu_profile",
    "objective_score",
    "resolve_global_batch",
    "target_from_probe",
    "target_from_profile",
    "usable_memory",
]
