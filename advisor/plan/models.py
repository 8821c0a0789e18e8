"""What the plan search reports (the ``recommend --json`` contract), as frozen data."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from advisor.config import TrainingConfig
from advisor.cost.convergence import StepsBand, StepsSource
from advisor.cost.run import RunEstimate, WholeRun

# NOTE: every field carries a description: `optadvise recommend --schema` is the contract
# scripts read (tests/plan/test_report_schema.py walks it and fails on an undescribed field).


def _d(text: str, **kw: Any) -> Any:
    """A field with its description (the JSON Schema's)."""
    return Field(description=text, **kw)


class StepCost(BaseModel):
    """The predicted time of one optimizer step (over the global batch), by component."""

    model_config = ConfigDict(frozen=True)

    seconds: float = _d("seconds per optimizer step")
    source: str = _d("measured, analytic or mixed")
    components: dict[str, float] = _d("seconds per step by component (compute, comms, ...)")


class Reason(BaseModel):
    """Why a candidate ranks where it does: a fired rule and its sources."""

    model_config = ConfigDict(frozen=True)

    rule: str = _d("the rule id (rules/*.yaml; requires-<technique>: a hardware requirement)")
    effect: str = _d("what the rule does to this plan, e.g. 'prefers adamw (+3)'")
    rationale: str = _d("why, in the rule's words")
    sources: list[str] = _d("the publications the rule rests on")


class Recommendation(BaseModel):
    """One ranked plan: a configuration, its layout and batch geometry."""

    model_config = ConfigDict(frozen=True)

    rank: int = _d("1 = the pick")
    optimizer: str = _d("the optimizer's taxonomy id")
    order: str = _d("the optimizer's order: zeroth, first or second")
    precision: str = _d("the precision recipe, e.g. bf16-mixed (16-bit compute, fp32 master)")
    attention: str = _d("the attention kernel: flash, mem-efficient or eager")
    techniques: list[str] = _d("every taxonomy technique id the plan uses")
    sharding: str = _d("data-parallel sharding: none, zero1, zero2, zero3, fsdp or hsdp")
    task: str = _d("pretrain, finetune (every weight), lora or qlora")
    checkpointing: str = _d("activation recomputation: none, selective(-op/-layer) or full")
    offload: str = _d("what is offloaded: none, optimizer, optimizer+params (host or NVMe)")
    micro_batch: int = _d("samples per device per forward/backward pass")
    grad_accumulation: int = _d("micro-batches per optimizer step")
    data_parallel: int = _d("data-parallel degree (replicas)")
    tensor_parallel: int = _d("tensor(+sequence)-parallel degree")
    pipeline_parallel: int = _d("pipeline stages")
    virtual_stages: int = _d("interleaved model chunks per pipeline rank", default=1)
    expert_parallel: int = _d("MoE expert-parallel degree", default=1)
    context_parallel: int = _d(
        "context-parallel degree: ranks that split every sequence (1: none)", default=1
    )
    context_parallel_kind: str = _d(
        "how context-parallel ranks exchange keys and values: ring (ring attention) or "
        "ulysses (all-to-all)",
        default="ring",
    )
    expert_tensor_parallel: int = _d(
        "MoE: the routed experts' tensor-parallel degree (Megatron's default: the TP degree)",
        default=1,
    )
    moe_dispatcher: str = _d(
        "MoE token dispatcher: alltoall, allgather or flex (DeepEP)", default="alltoall"
    )
    moe_overlap: str | None = _d(
        "MoE with expert parallelism: what hides the expert all-to-alls, none, a2a-overlap "
        "(Megatron-Core's batch-level overlap) or dualpipe (DeepSeek-V3's DualPipe), searched "
        "unless --moe-overlap pins it; absent for plans without expert parallelism",
        default=None,
    )
    moe_overlap_reason: str | None = _d(
        "why the plan uses its moe_overlap: the exposed all-to-all seconds per step and each "
        "other schedule's step time relative to it (or why it cannot run or does not fit); "
        "absent with moe_overlap",
        default=None,
    )
    layout: str = _d("the parallel layout in short: tp8 pp16 dp1 ...")
    stack: str = _d("kernel stack the memory and time assume: hf or fused")
    fp8_recipe: str | None = _d(
        "an fp8-mixed plan's FP8 scaling recipe where --fp8-recipe chose one (tensorwise, "
        "rowwise, blockwise or delayed); absent otherwise (fp8-mixed runs tensorwise)",
        default=None,
    )
    memory_savers: list[str] = _d("technique ids of the memory savers in use")
    global_batch: int = _d("samples per optimizer step this plan trains with")
    global_batch_note: str = _d(
        "why the global batch differs from the requested one, if it does", default=""
    )
    also: list[str] = Field(
        default_factory=list,
        description="equivalent plans (same memory, time and quality) folded into this row",
    )
    peak_memory_bytes: int = _d(
        "predicted peak memory per device, bytes: reserved_memory_bytes plus the CUDA context "
        "and NCCL's buffers (what nvidia-smi shows)"
    )
    allocated_memory_bytes: int = _d(
        "torch.cuda.max_memory_allocated's equivalent at the peak, bytes", default=0
    )
    reserved_memory_bytes: int = _d(
        "torch.cuda.max_memory_reserved's equivalent at the peak (allocated plus the caching "
        "allocator's slack), bytes",
        default=0,
    )
    headroom_bytes: int = _d("device memory minus the peak, bytes (before the safety margin)")
    host_memory_bytes: int = _d("host RAM (or NVMe) the offloaded states take per device, bytes")
    fits: bool = _d("the peak is within the usable memory (always true for a ranked plan)")
    step_time_s: float = _d("predicted seconds per optimizer step (the whole global batch)")
    tokens_per_s: float = _d("tokens per second over all devices")
    images_per_s: float | None = _d(
        "images per second over all devices, for an image model (global batch / step time; "
        "a CNN's tokens_per_s counts images too, a ViT's counts its 197 tokens per image); "
        "None for a text model",
        default=None,
    )
    cost_source: str = _d("where the step time comes from: measured, analytic or mixed")
    cost_components: dict[str, float] = _d("seconds per step by component")
    memory_breakdown: dict[str, int] = _d("bytes per device by memory term (weights, ...)")
    rule_score: float = _d(
        "sum of the fired rules' prefer (+weight) and avoid (-weight) actions that name its "
        "techniques, each action counted once"
    )
    score: float = _d(
        "the objective's score, lower is better (rows are sorted by it): "
        "log(seconds per token x steps to AdamW's loss) plus, under balanced, "
        "log(1.10) x the share of usable memory the plan fills, minus 0.02 x rule_score "
        "(speed and time-to-target: 0.01 x log of that share; memory: log of the share "
        "first; quality: steps first, rules x 0.5); see README 'Objectives'"
    )
    reasons: list[Reason] = _d("the fired rules that prefer, avoid or require its techniques")
    config: TrainingConfig = _d("the full configuration (what optadvise estimate takes)")
    # Time to target (advisor/cost/convergence.py): steps to AdamW's loss relative to AdamW, where
    # that figure comes from, and steps x step time over the same layout's AdamW step time.
    steps_vs_adamw: StepsBand | None = _d(
        "steps to AdamW's loss relative to AdamW (low, central, high)", default=None
    )
    steps_source: StepsSource | None = _d("where the step figure comes from", default=None)
    steps_extrapolated: bool = _d(
        "the step figure is extrapolated beyond its sources' model sizes", default=False
    )
    steps_proxy: float | None = _d("measured-proxy ratio", default=None)
    time_to_target_rel: float | None = _d(
        "steps x step time over the same layout's AdamW plan (1 = as fast as AdamW)",
        default=None,
    )
    run: RunEstimate | None = _d(
        "the whole run under --tokens (or --epochs x --dataset-tokens): steps, wall time, "
        "GPU-hours, energy, cost; absent without a budget",
        default=None,
    )

    @model_serializer(mode="wrap")
    def _recipe_if_chosen(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for key in ("fp8_recipe", "moe_overlap", "moe_overlap_reason"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


RejectionKind = Literal["rule", "memory", "host-memory", "incompatible", "batch"]


class Rejection(BaseModel):
    """A configuration that was considered and dropped, and why."""

    model_config = ConfigDict(frozen=True)

    configuration: str = _d("the configuration in short")
    optimizer: str = _d("its optimizer's taxonomy id")
    techniques: list[str] = _d("its technique ids")
    reason: str = _d("why it was dropped")
    kind: RejectionKind = _d("rule (a rule excludes it), memory, host-memory, incompatible, batch")
    peak_memory_bytes: int | None = _d("its peak per device where memory decided", default=None)
    config: TrainingConfig = _d("the full configuration")


class WhyNot(BaseModel):
    """An option a user would expect, and why it is not the pick."""

    model_config = ConfigDict(frozen=True)

    option: str = _d("the option, e.g. 'AdamW full fine-tuning in bf16-mixed'")
    verdict: str = _d("why it is not the pick: what it needs, or where it ranks")


class Suggestion(BaseModel):
    """When nothing fits: the smallest change that would."""

    model_config = ConfigDict(frozen=True)

    change: str = _d("the change, e.g. '8 devices with ZeRO-3'")
    detail: str = _d("what it would need")


class HardwareSummary(BaseModel):
    """The hardware facts the ranking used."""

    model_config = ConfigDict(frozen=True)

    name: str = _d("the device's name")
    source: str = _d("profile or probe")
    device_kind: str = _d("cuda, rocm, mps or cpu")
    device_memory_bytes: int = _d("memory per device, bytes")
    usable_memory_bytes: int = _d("what a plan may use: device memory x safety_margin, bytes")
    host_memory_bytes: int = _d("host RAM per device for offload, bytes")
    nvme_bytes: int = _d("NVMe per device for offload, bytes", default=0)
    host_source: str = Field(default="", description="which host the offload plans assume")
    compute_capability: float = _d("CUDA compute capability (0 elsewhere)")
    fast_bf16: bool = _d("bf16 runs at 16-bit speed")
    gpus_per_node: int = _d("devices per node")
    nodes: int = _d("nodes")
    interconnect_gb_s: float = _d("the data-parallel link's bandwidth, GB/s")
    safety_margin: float = _d("share of device memory a plan may fill")


class WorkloadSummary(BaseModel):
    """The workload the ranking used."""

    model_config = ConfigDict(frozen=True)

    model: str = _d("the model's name")
    model_id: str = _d("the model's profile id (or the size it resolved from)")
    parameters: int = _d("parameter count")
    task: str = _d("pretrain, finetune, lora or qlora")
    seq_len: int = _d("tokens per sample")
    image_size: int | None = _d(
        "an image model's input resolution in pixels (its samples are images, batches count "
        "images, rows report images_per_s); None for a text model",
        default=None,
    )
    micro_batch: int = _d("the pick's micro-batch (the requested one when nothing fits)")
    global_batch: int = _d("samples per optimizer step")
    global_batch_tokens: int = _d("tokens per optimizer step", default=0)
    global_batch_source: str = _d("where the global batch comes from", default="")
    grad_accumulation: int = _d("the pick's accumulation steps")
    world_size: int = _d("devices in all")
    stack: str = _d("kernel stack: hf or fused", default="hf")
    privacy: str = _d("none or dp")
    objective: str = _d("the --objective ranked by")


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
    memory_evaluations: int = _d("configurations whose memory was computed")
    time_evaluations: int = _d("configurations whose step time was computed")
    rows_collapsed: int = Field(description="equivalent plans folded into shown rows")
    notes: list[str] = Field(default_factory=list, description="what the search left out")


Verdict = Literal["ok", "nothing-fits"]


class RecommendReport(BaseModel):
    """Everything `optadvise recommend` says (the --json contract)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = _d("3: fits, verdict, trade, rejected_counts added", default=3)
    fits: bool = _d(
        "whether any plan fits; false exits with status 3 (EXIT_NOTHING_FITS)", default=True
    )
    verdict: Verdict = _d("ok, or nothing-fits (then see suggestions)", default="ok")
    trade: str = _d(
        "what the pick gives up, in one line, when it is not the fastest ranked plan to the "
        "target ('' when it is)",
        default="",
    )
    recommendations: list[Recommendation] = _d("the ranked plans, best first (--top)")
    rejected: list[Rejection] = _d(
        "the configurations dropped, each with why (listed with --show-rejected; "
        "rejected_counts always counts them)"
    )
    rejected_counts: dict[str, int] = _d(
        "how many configurations were dropped, by kind", default_factory=dict
    )
    why_not: list[WhyNot] = _d("the options a practitioner expects that are not the pick")
    suggestions: list[Suggestion] = _d("when nothing fits: the smallest changes that would")
    hardware: HardwareSummary = _d("the hardware ranked for")
    workload: WorkloadSummary = _d("the workload ranked for")
    facts: dict[str, Any] = _d("the facts the rules saw (rules/facts.yaml)")
    fired_rules: list[Reason] = _d("every rule that fired, with its effect")
    advice: list[Reason] = _d("advice the fired rules attach")
    candidates_considered: int = _d("size of the plan space")
    search: SearchStats | None = _d("how much of the plan space was evaluated", default=None)
    cost_note: str = _d("where the costs come from (measured or analytic)")
    whole_run: WholeRun | None = _d(
        "the pick's whole run and whether it is practical: present with --tokens/--epochs, "
        "and without them when even the shortest published fine-tune exceeds --max-days",
        default=None,
    )
