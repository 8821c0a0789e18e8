"""What the plan search reports (the ``recommend --json`` contract), as frozen data."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import TrainingConfig
from advisor.convergence import StepsBand, StepsSource


class StepCost(BaseModel):
    """The predicted time of one optimizer step (over the global batch), by component."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: str
    components: dict[str, float]


class Reason(BaseModel):
    """Why a candidate ranks where it does: a fired rule and its sources."""

    model_config = ConfigDict(frozen=True)

    rule: str
    effect: str
    rationale: str
    sources: list[str]


class Recommendation(BaseModel):
    """One ranked plan: a configuration, its layout and batch geometry."""

    model_config = ConfigDict(frozen=True)

    rank: int
    optimizer: str
    order: str
    precision: str
    attention: str
    techniques: list[str]
    sharding: str
    task: str
    checkpointing: str
    offload: str
    micro_batch: int
    grad_accumulation: int
    data_parallel: int
    tensor_parallel: int
    pipeline_parallel: int
    virtual_stages: int = 1
    expert_parallel: int = 1
    layout: str = Field(description="the parallel layout in short: tp8 pp16 dp1 ...")
    stack: str
    memory_savers: list[str] = Field(description="technique ids of the memory savers in use")
    global_batch: int = Field(description="samples per optimizer step this plan trains with")
    global_batch_note: str = Field(
        default="", description="why the global batch differs from the requested one, if it does"
    )
    also: list[str] = Field(
        default_factory=list,
        description="equivalent plans (same memory, time and quality) folded into this row",
    )
    peak_memory_bytes: int
    headroom_bytes: int
    host_memory_bytes: int
    fits: bool
    step_time_s: float
    tokens_per_s: float
    cost_source: str
    cost_components: dict[str, float]
    memory_breakdown: dict[str, int]
    rule_score: float
    score: float
    reasons: list[Reason]
    config: TrainingConfig
    # Time to target (advisor/convergence.py): steps to AdamW's loss relative to AdamW, where
    # that figure comes from, and steps x step time over the same layout's AdamW step time.
    steps_vs_adamw: StepsBand | None = None
    steps_source: StepsSource | None = None
    steps_extrapolated: bool = False
    steps_proxy: float | None = Field(default=None, description="measured-proxy ratio")
    time_to_target_rel: float | None = None


RejectionKind = Literal["rule", "memory", "host-memory", "incompatible", "batch"]


class Rejection(BaseModel):
    """A configuration that was considered and dropped, and why."""

    model_config = ConfigDict(frozen=True)

    configuration: str
    optimizer: str
    techniques: list[str]
    reason: str
    kind: RejectionKind
    peak_memory_bytes: int | None = None
    config: TrainingConfig


class WhyNot(BaseModel):
    """An option a user would expect, and why it is not the pick."""

    model_config = ConfigDict(frozen=True)

    option: str
    verdict: str


class Suggestion(BaseModel):
    """When nothing fits: the smallest change that would."""

    model_config = ConfigDict(frozen=True)

    change: str
    detail: str


class HardwareSummary(BaseModel):
    """The hardware facts the ranking used."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    device_kind: str
    device_memory_bytes: int
    usable_memory_bytes: int
    host_memory_bytes: int
    nvme_bytes: int = 0
    host_source: str = Field(default="", description="which host the offload plans assume")
    compute_capability: float
    fast_bf16: bool
    gpus_per_node: int
    nodes: int
    interconnect_gb_s: float
    safety_margin: float


class WorkloadSummary(BaseModel):
    """The workload the ranking used."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_id: str
    parameters: int
    task: str
    seq_len: int
    micro_batch: int
    global_batch: int
    global_batch_tokens: int = 0
    global_batch_source: str = ""
    grad_accumulation: int
    world_size: int
    stack: str = "hf"
    privacy: str
    objective: str


class SearchStats(BaseModel):
    """How much of the plan space the search looked at."""

    model_config = ConfigDict(frozen=True)

    plans_considered: int = Field(description="size of the plan space (every dimension)")
    plans_evaluated: int = Field(description="plans whose memory and time were computed")
    plans_pruned: int = Field(
        description="plans skipped as dominated, equivalent, or bounded out (below)"
    )
    ladders_bounded: int = Field(
        default=0,
        description="saver ladders (one core on one layout) not walked: a lower bound on "
        "their score is above the last shown row's (branch and bound)",
    )
    memory_evaluations: int
    time_evaluations: int
    rows_collapsed: int = Field(description="equivalent plans folded into shown rows")
    notes: list[str] = Field(default_factory=list, description="what the search left out")


class RecommendReport(BaseModel):
    """Everything `optadvise recommend` says (the --json contract)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = 2
    recommendations: list[Recommendation]
    rejected: list[Rejection]
    why_not: list[WhyNot]
    suggestions: list[Suggestion]
    hardware: HardwareSummary
    workload: WorkloadSummary
    facts: dict[str, Any]
    fired_rules: list[Reason]
    advice: list[Reason]
    candidates_considered: int
    search: SearchStats | None = None
    cost_note: str
