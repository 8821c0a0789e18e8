"""`optadvise estimate`: the memory and step time of one explicit configuration."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Annotated, Any

import typer

from advisor.errors import UserError
from advisor.shell.cli.common import (
    JsonOpt,
    SchemaOpt,
    app,
    handle_errors,
    not_blank,
    print_schema,
)
from advisor.shell.cli.modelflags import (
    ModelConfigOpt,
    ModelOpt,
    ModelSizeOpt,
    RopeScalingOpt,
    resolve_model,
)
from advisor.shell.cli.runflags import (
    DatasetTokensOpt,
    EpochsOpt,
    MaxDaysOpt,
    PricePerHourOpt,
    PricesOpt,
    TokensOpt,
)

if TYPE_CHECKING:
    from advisor.app.estimate import EstimateReport
    from advisor.config import TrainingConfig
    from advisor.hardware.target import Target
    from advisor.model.spec import ModelSpec

TaskOpt = Annotated[str, typer.Option("--task", help="pretrain, finetune, lora or qlora.")]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help="A taxonomy optimizer id.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="fp32, tf32, amp-fp16, amp-bf16 (autocast), fp16-mixed, bf16-mixed "
        "(16-bit weights + fp32 master), fp16, bf16 (all 16-bit), fp8-mixed, mxfp8-mixed, "
        "nvfp4-mixed (Blackwell). Default: bf16-mixed, or fp16-mixed on a GPU without bf16.",
    ),
]
Fp8RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--fp8-recipe",
        help="With --precision fp8-mixed: how FP8 operands are scaled: tensorwise (the "
        "default, torchao's), rowwise (torchao), blockwise (DeepSeek-V3's 1x128/128x128, "
        "TE Float8BlockScaling) or delayed (TE DelayedScaling, Megatron's default).",
    ),
]
AttentionOpt = Annotated[
    str | None,
    typer.Option(
        "--attention",
        help="eager, mem-efficient or flash (default; mem-efficient on a GPU without it).",
    ),
]
CheckpointingOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpointing",
        help="Not given: the estimate assumes none and answers with the range over none, "
        "selective and full (recompute_range). none; selective (recompute the attention "
        "core, Korthikanti et al. 2022); "
        "selective-layer (torchtitan: full checkpointing of every --ac-frequency-th "
        "block); selective-op (torchtitan: keep every other matmul's and the attention "
        "kernel's outputs, recompute the rest); full.",
    ),
]
AcFrequencyOpt = Annotated[
    int | None,
    typer.Option(
        "--ac-frequency",
        help="With --checkpointing selective-layer: checkpoint every n-th block "
        "(default 2; torchtitan's selective_ac_option).",
    ),
]
MicroBatchOpt = Annotated[int, typer.Option("--micro-batch", help="Samples per device per pass.")]
SeqLenOpt = Annotated[
    str | None,
    typer.Option(
        "--seq-len",
        help="Tokens per sample, e.g. 2048 or 4k (default: 2048, capped by the model).",
    ),
]
GpusOpt = Annotated[int, typer.Option("--gpus", help="Data-parallel degree.")]
ShardingOpt = Annotated[
    str, typer.Option("--sharding", help="none, zero1, zero2, zero3, fsdp or hsdp.")
]
OffloadOpt = Annotated[
    str,
    typer.Option(
        "--offload",
        help="none, optimizer, optimizer+params (host RAM), optimizer-nvme or "
        "optimizer+params-nvme.",
    ),
]
LoraRankOpt = Annotated[
    int | None, typer.Option("--lora-rank", help="LoRA/QLoRA rank (default 16).")
]
DropoutOpt = Annotated[
    bool,
    typer.Option(
        "--dropout",
        help="The model's own dropout is on (BERT, GPT-2 and OPT publish 0.1): its masks, "
        "and the dropped attention probabilities under eager attention.",
    ),
]
LoraDropoutOpt = Annotated[
    float,
    typer.Option(
        "--lora-dropout",
        help="PEFT's lora_dropout (0 by default): above 0 every adapter keeps its own "
        "dropped-out input and mask.",
    ),
]
OptimizerImplOpt = Annotated[
    str,
    typer.Option(
        "--optimizer-impl",
        help="How the step runs: auto (fused where the optimizer has a fused kernel, as "
        "Hugging Face's Trainer and torchtitan run AdamW), fused or foreach (one "
        "parameter-sized temporary).",
    ),
]
LoraTargetsOpt = Annotated[
    str | None,
    typer.Option(
        "--lora-targets",
        help="What LoRA/QLoRA adapts: attention (q,k,v,o; the default), mlp, all-linear "
        "(PEFT's) or a comma list of q,k,v,o,gate,up,down, plus embed/lm_head to train "
        "them in full.",
    ),
]
DpSgdOpt = Annotated[bool, typer.Option("--dp-sgd", help="Per-sample gradients (DP-SGD).")]
StackOpt = Annotated[
    str,
    typer.Option(
        "--stack",
        help="Kernel stack the memory assumes: hf (Hugging Face modules, the default) or "
        "fused (FlashAttention, fused norms and cross-entropy, as torchtitan/Megatron).",
    ),
]
FusedLossOpt = Annotated[
    bool,
    typer.Option("--fused-loss", help="A fused linear cross-entropy (Liger): no logits."),
]
FusedNormOpt = Annotated[
    bool,
    typer.Option(
        "--fused-norm",
        help="Fused RMSNorm/LayerNorm kernels on the hf stack (torchtitan fused_rmsnorm, "
        "Liger): keep the input and fp32 row statistics only.",
    ),
]
GradAccumulationOpt = Annotated[
    int, typer.Option("--grad-accumulation", help="Micro-batches per optimizer step.")
]
TensorParallelOpt = Annotated[
    int, typer.Option("--tensor-parallel", help="Tensor(+sequence)-parallel degree.")
]
PipelineParallelOpt = Annotated[
    int, typer.Option("--pipeline-parallel", help="Pipeline stages (1F1B).")
]
VirtualStagesOpt = Annotated[
    int, typer.Option("--virtual-stages", help="Interleaved model chunks per stage.")
]
ExpertParallelOpt = Annotated[
    int, typer.Option("--expert-parallel", help="Expert-parallel degree (MoE).")
]
ContextParallelOpt = Annotated[
    int,
    typer.Option(
        "--context-parallel",
        help="Context-parallel degree: ranks that split every sequence (each holds "
        "seq-len / N tokens).",
    ),
]
ContextParallelKindOpt = Annotated[
    str,
    typer.Option(
        "--context-parallel-kind",
        help="ring (ring attention: Megatron p2p, torch context_parallel) or ulysses "
        "(DeepSpeed-Ulysses all-to-all).",
    ),
]
ExpertTensorParallelOpt = Annotated[
    int | None,
    typer.Option(
        "--expert-tensor-parallel",
        help="Tensor parallelism of the routed experts (Megatron "
        "--expert-tensor-parallel-size). Default: --tensor-parallel where expert "
        "parallelism folds with it, else 1.",
    ),
]
MoeDispatcherOpt = Annotated[
    str,
    typer.Option(
        "--moe-dispatcher",
        help="MoE token dispatcher: alltoall, allgather or flex (DeepEP).",
    ),
]
CapacityFactorOpt = Annotated[
    float | None,
    typer.Option(
        "--capacity-factor",
        help="MoE expert capacity factor (tokens beyond it dropped). Default: dropless.",
    ),
]
PadToCapacityOpt = Annotated[
    bool,
    typer.Option("--pad-to-capacity", help="Pad every expert's batch to its capacity."),
]
MoeOverlapOpt = Annotated[
    str,
    typer.Option(
        "--moe-overlap",
        help="What hides the expert all-to-alls under compute: none, a2a-overlap "
        "(Megatron-Core --overlap-moe-expert-parallel-comm --delay-wgrad-compute) or "
        "dualpipe (DeepSeek-V3's DualPipe).",
    ),
]
MoeBalanceOpt = Annotated[
    str,
    typer.Option(
        "--moe-balance",
        help="MoE router load balancing: loss-free (expert bias, DeepSeek-V3) or aux-loss "
        "(load-balancing loss); prices the busiest expert rank's extra load.",
    ),
]
OptimizerInBackwardOpt = Annotated[
    bool,
    typer.Option("--optimizer-in-backward", help="Per-layer updates during backward."),
]
ActivationOffloadOpt = Annotated[
    bool, typer.Option("--activation-offload", help="Saved activations in host memory.")
]
HardwareOpt = Annotated[
    str | None,
    typer.Option("--hardware", help="Profile for the fit check and the analytic step time."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="cuda (context + allocator overheads) or cpu (none). Default: the --hardware "
        "profile's kind, else this machine's device (probed).",
    ),
]


@app.command()
@handle_errors
def estimate(
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    task: TaskOpt = "finetune",
    optimizer: OptimizerOpt = "adamw",
    precision: PrecisionOpt = None,
    fp8_recipe: Fp8RecipeOpt = None,
    attention: AttentionOpt = None,
    checkpointing: CheckpointingOpt = None,
    ac_frequency: AcFrequencyOpt = None,
    micro_batch: MicroBatchOpt = 1,
    seq_len: SeqLenOpt = None,
    rope_scaling: RopeScalingOpt = None,
    gpus: GpusOpt = 1,
    sharding: ShardingOpt = "none",
    offload: OffloadOpt = "none",
    lora_rank: LoraRankOpt = None,
    dropout: DropoutOpt = False,
    lora_dropout: LoraDropoutOpt = 0.0,
    optimizer_impl: OptimizerImplOpt = "auto",
    lora_targets: LoraTargetsOpt = None,
    dp_sgd: DpSgdOpt = False,
    stack: StackOpt = "hf",
    fused_loss: FusedLossOpt = False,
    fused_norm: FusedNormOpt = False,
    grad_accumulation: GradAccumulationOpt = 1,
    tensor_parallel: TensorParallelOpt = 1,
    pipeline_parallel: PipelineParallelOpt = 1,
    virtual_stages: VirtualStagesOpt = 1,
    expert_parallel: ExpertParallelOpt = 1,
    context_parallel: ContextParallelOpt = 1,
    context_parallel_kind: ContextParallelKindOpt = "ring",
    expert_tensor_parallel: ExpertTensorParallelOpt = None,
    moe_dispatcher: MoeDispatcherOpt = "alltoall",
    capacity_factor: CapacityFactorOpt = None,
    pad_to_capacity: PadToCapacityOpt = False,
    moe_overlap: MoeOverlapOpt = "none",
    moe_balance: MoeBalanceOpt = "loss-free",
    optimizer_in_backward: OptimizerInBackwardOpt = False,
    activation_offload: ActivationOffloadOpt = False,
    hardware: HardwareOpt = None,
    device: DeviceOpt = None,
    tokens: TokensOpt = None,
    epochs: EpochsOpt = None,
    dataset_tokens: DatasetTokensOpt = None,
    max_days: MaxDaysOpt = None,
    price_per_hour: PricePerHourOpt = None,
    prices: PricesOpt = None,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Estimate the per-device peak memory of one explicit training configuration."""
    not_blank("--hardware", hardware)
    from advisor.app.estimate import EstimateReport

    if schema:
        print_schema(EstimateReport)
        return
    from advisor.app.limits import resolve_seq_len
    from advisor.app.wholerun import RunOptions

    options = RunOptions.from_flags(
        tokens=tokens,
        epochs=epochs,
        dataset_tokens=dataset_tokens,
        max_days=max_days,
        price_per_hour=price_per_hour,
        prices=prices,
    )
    spec = resolve_model(model_size, model, model_config)
    _check_flags(task, lora_rank, virtual_stages, pipeline_parallel)
    _check_bounds(
        micro_batch,
        gpus,
        lora_rank,
        grad_accumulation,
        tensor_parallel,
        pipeline_parallel,
        virtual_stages,
        expert_parallel,
        context_parallel,
    )
    from advisor.app.limits import check_bound

    check_bound("--expert-tensor-parallel", expert_tensor_parallel)
    check_bound("--capacity-factor", capacity_factor)
    settings: dict[str, Any] = dict(
        task=task,
        optimizer=optimizer,
        precision=precision or "bf16-mixed",
        fp8_recipe=fp8_recipe,
        attention=attention or "flash",
        checkpointing=checkpointing or "none",
        ac_frequency=ac_frequency,
        micro_batch=micro_batch,
        seq_len=resolve_seq_len(spec, seq_len, rope_scaling),
        gpus=gpus,
        sharding=sharding,
        offload=offload,
        lora_rank=16 if lora_rank is None else lora_rank,
        lora_targets=lora_targets,
        lora_dropout=lora_dropout,
        dropout=dropout,
        optimizer_impl=optimizer_impl,
        dp_sgd=dp_sgd,
        stack=stack,
        fused_loss=fused_loss,
        fused_norm=fused_norm,
        grad_accumulation=grad_accumulation,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        virtual_stages=virtual_stages,
        expert_parallel=expert_parallel,
        context_parallel=context_parallel,
        context_parallel_kind=context_parallel_kind,
        expert_tensor_parallel=expert_tensor_parallel,
        moe_dispatcher=moe_dispatcher,
        capacity_factor=capacity_factor,
        pad_to_capacity=pad_to_capacity,
        moe_overlap=moe_overlap,
        moe_balance=moe_balance,
        optimizer_in_backward=optimizer_in_backward,
        activation_offload=activation_offload,
    )
    report = _estimate(
        spec,
        settings,
        ac_frequency,
        precision,
        attention,
        hardware,
        device,
        checkpointing is None and spec.cnn is None,
    )
    if options.tokens is not None:
        from advisor.app.wholerun import estimate_with_run

        report = estimate_with_run(report, options, hardware)
    from advisor.shell import render

    if json_out:
        # NOTE: `run` appears only with a budget, so a report without one reads as before.
        render.print_json(report, exclude={"run": True} if report.run is None else None)
    else:
        render.render_estimate(report)
        if report.run is not None:
            from advisor.shell.render.wholerun import render_estimate_run

            render_estimate_run(report.run)


def _check_flags(
    task: str, lora_rank: int | None, virtual_stages: int, pipeline_parallel: int
) -> None:
    """The flags that only apply beside another one."""
    if lora_rank is not None and task not in ("lora", "qlora"):
        raise UserError(
            f"--lora-rank applies to --task lora or qlora, not {task!r}", "drop --lora-rank"
        )
    if virtual_stages != 1 and pipeline_parallel == 1:
        raise UserError(
            "--virtual-stages interleaves pipeline stages, but --pipeline-parallel is 1",
            "give --pipeline-parallel 2 or more, or drop --virtual-stages",
        )


def _check_bounds(
    micro_batch: int,
    gpus: int,
    lora_rank: int | None,
    grad_accumulation: int,
    tensor_parallel: int,
    pipeline_parallel: int,
    virtual_stages: int,
    expert_parallel: int,
    context_parallel: int = 1,
) -> None:
    """Every count flag within its bounds (advisor.app.limits), the world size too."""
    from advisor.app.limits import check_bound

    for flag, value in (
        ("--micro-batch", micro_batch),
        ("--gpus", gpus),
        ("--lora-rank", lora_rank),
        ("--grad-accumulation", grad_accumulation),
        ("--tensor-parallel", tensor_parallel),
        ("--pipeline-parallel", pipeline_parallel),
        ("--virtual-stages", virtual_stages),
        ("--expert-parallel", expert_parallel),
        ("--context-parallel", context_parallel),
    ):
        check_bound(flag, value)
    check_bound("world size", gpus * tensor_parallel * pipeline_parallel * context_parallel)


def _estimate(
    spec: ModelSpec,
    settings: dict[str, Any],
    ac_frequency: int | None,
    precision: str | None,
    attention: str | None,
    hardware: str | None,
    device: str | None,
    unstated_recompute: bool = False,
) -> EstimateReport:
    """The report for the checked flags, on the --hardware profile or this machine (probed
    once: its target and calibration serve the device checks and the step time); with
    --checkpointing unstated, answered as the range over none, selective and full."""
    from advisor.app.environment import local_step_time, probe_environment
    from advisor.app.estimate import build_config, estimate_report
    from advisor.app.limits import check_bound

    config = build_config(**settings)
    check_bound("--ac-frequency", ac_frequency)  # after build_config's own n >= 1 check
    import psutil

    env = None if hardware else probe_environment()
    local = None if env is None else env.local_target
    config = _config_for_device(settings, precision, attention, hardware, device, local)
    if device is None:
        # NOTE: a CPU profile or this CPU-only machine has no CUDA context to count.
        device = "cpu" if local is not None and local.device_kind.value == "cpu" else "cuda"

    def report_for(cfg: TrainingConfig) -> EstimateReport:
        return estimate_report(
            spec,
            cfg,
            hardware=hardware,
            device=device,
            host_memory_bytes=None if hardware else psutil.virtual_memory().total,
            step_time=local_step_time(spec, cfg, hardware, env),
            local_device=((f"{local.name} (probe)", local.device_memory_bytes) if local else None),
        )

    report = report_for(config)
    if not unstated_recompute:
        return report
    from advisor.app.estimate import RecomputeCase, with_recompute_range
    from advisor.config import Checkpointing

    cases = []
    reports = []
    for level in (Checkpointing.NONE, Checkpointing.SELECTIVE, Checkpointing.FULL):
        r = report if level is Checkpointing.NONE else report_for(config.with_(checkpointing=level))
        reports.append(r)
        cases.append(
            RecomputeCase(
                checkpointing=level,
                total_bytes=r.total_bytes,
                fits=r.fits,
                step_seconds=r.step_time.seconds if r.step_time is not None else None,
            )
        )
    # NOTE: a run that ran had at least the recompute that fits: its figures are the honest
    # central answer, not the no-recompute ones (a 64k-token 7B run is priced with full
    # recompute, which it cannot run without).
    chosen = next((r for r, c in zip(reports, cases, strict=True) if c.fits), report)
    return with_recompute_range(chosen, cases)


def _config_for_device(
    settings: dict[str, Any],
    precision: str | None,
    attention: str | None,
    hardware: str | None,
    device: str | None,
    local: Target | None,
) -> TrainingConfig:
    """The configuration with the defaults the device can run (see the NOTE below)."""
    from advisor.app.estimate import build_config

    # NOTE: the defaults follow the device: a GPU below compute capability 8 (a T4, a V100)
    # has no bf16 and no FlashAttention kernel, so fp16-mixed and the memory-efficient
    # kernel stand in for the flags not given; what was given is checked as given.
    last: UserError | None = None
    for prec, attn in itertools.product(
        [precision] if precision else ["bf16-mixed", "fp16-mixed"],
        [attention] if attention else ["flash", "mem-efficient"],
    ):
        config = build_config(**{**settings, "precision": prec, "attention": attn})
        try:
            _check_estimate_device(config, hardware, device, local)
        except UserError as exc:
            last = exc  # NOTE: the last try keeps the fewest defaults: its error is the user's
            continue
        if (prec, attn) != (precision or "bf16-mixed", attention or "flash"):
            from advisor import notes

            notes.post(
                f"defaults for this device: --precision {prec} --attention {attn} (no bf16 "
                "or FlashAttention below compute capability 8)"
            )
        return config
    assert last is not None
    raise last


def _check_estimate_device(
    config: TrainingConfig, hardware: str | None, device: str | None, local: Target | None
) -> None:
    """Refuse what the device cannot run, as `recommend` does: an --device that contradicts
    the --hardware profile, and techniques the device lacks (fp8 on a T4, QLoRA on a CPU)."""
    from advisor.app.estimate import check_hardware_support

    if hardware:
        from advisor.hardware.profiles import get_hardware_profile

        profile = get_hardware_profile(hardware)
        kind = profile.kind.value
        if device is not None and device != kind:
            raise UserError(
                f"--device {device} contradicts --hardware {hardware}, a {kind} device",
                "drop --device: the profile's kind sets it",
            )
        check_hardware_support(
            config,
            device_kind=kind,
            compute_capability=profile.cc or None,
            where=f"the {hardware} profile",
        )
        return
    assert local is not None  # planned for this machine: the caller probed it
    target = local
    probed = target.device_kind.value
    # NOTE: --device cuda on a machine without a GPU is a what-if: only the kind is checked.
    kind = device or probed
    cc = target.compute_capability or None if kind == probed else None
    check_hardware_support(
        config,
        device_kind=kind,
        compute_capability=cc,
        where="this machine" if kind == probed else f"--device {device}",
    )
