"""`optadvise recommend`: ranked training plans for a model on this machine or a profile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from advisor.errors import EXIT_NOTHING_FITS, UserError
from advisor.shell.cli.common import (
    JsonOpt,
    RulesDirOpt,
    SchemaOpt,
    app,
    handle_errors,
    not_blank,
    print_schema,
    rules_dirs,
    user_path,
)
from advisor.shell.cli.estimate import MoeBalanceOpt
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
    from advisor.app.recommend import RecommendRequest, RecommendRun
    from advisor.model.spec import ModelSpec
    from advisor.plan import RecommendReport

TaskOpt = Annotated[
    str, typer.Option("--task", help="pretrain, finetune (default), lora or qlora.")
]
SeqLenOpt = Annotated[
    str | None,
    typer.Option("--seq-len", help="Tokens per sample (default: 2048, capped by the model)."),
]
StackOpt = Annotated[
    str,
    typer.Option(
        "--stack",
        help="Kernel stack: hf (Hugging Face modules, the default) or fused "
        "(FlashAttention, fused norms and cross-entropy, as torchtitan/Megatron).",
    ),
]
MicroBatchOpt = Annotated[
    int | None,
    typer.Option("--micro-batch", help="Samples per device per pass (default: searched)."),
]
GlobalBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--global-batch",
        help="Samples per optimizer step (default: a published batch for the task and size).",
    ),
]
GlobalBatchTokensOpt = Annotated[
    str | None,
    typer.Option("--global-batch-tokens", help="Tokens per optimizer step, e.g. 4M or 512k."),
]
HostMemoryOpt = Annotated[
    str | None,
    typer.Option("--host-memory", help="Host RAM of each node, e.g. 1TiB (offload plans)."),
]
NvmeOpt = Annotated[
    str | None, typer.Option("--nvme", help="NVMe of each node for offload, e.g. 4TB.")
]
TpOpt = Annotated[int | None, typer.Option("--tp", help="Pin the tensor-parallel degree.")]
PpOpt = Annotated[int | None, typer.Option("--pp", help="Pin the pipeline-parallel degree.")]
CpOpt = Annotated[
    int | None,
    typer.Option(
        "--context-parallel",
        help="Pin the context-parallel degree (ranks per sequence; explored from 16k tokens).",
    ),
]
CpKindOpt = Annotated[
    str | None,
    typer.Option(
        "--context-parallel-kind",
        help="Pin ring (ring attention) or ulysses (DeepSpeed-Ulysses all-to-all).",
    ),
]
EpOpt = Annotated[
    int | None, typer.Option("--expert-parallel", help="Pin the expert-parallel degree (MoE).")
]
EtpOpt = Annotated[
    int | None,
    typer.Option("--expert-tensor-parallel", help="Pin the experts' tensor-parallel degree (MoE)."),
]
MoeOverlapOpt = Annotated[
    str | None,
    typer.Option(
        "--moe-overlap",
        help="Pin what hides the expert all-to-alls: none, a2a-overlap or dualpipe "
        "(default: searched per layout; see estimate --help).",
    ),
]
HardwareOpt = Annotated[
    str | None,
    typer.Option(
        "--hardware",
        help="Plan for a profile instead of this machine (profiles list); a,b,c compares "
        "profiles for the same job by time and cost to finish.",
    ),
]
GpusOpt = Annotated[
    int | None, typer.Option("--gpus", help="Devices per node (default: all local GPUs, or 1).")
]
NodesOpt = Annotated[int, typer.Option("--nodes", help="Machines.")]
MemoryBudgetOpt = Annotated[
    str | None,
    typer.Option("--memory-budget", help="Device memory to plan with, e.g. 24GB (overrides)."),
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective",
        help="speed (step time), memory, balanced (default), quality or time-to-target "
        "(steps to AdamW's loss x step time).",
    ),
]
PrivacyOpt = Annotated[str, typer.Option("--privacy", help="none or dp (DP-SGD).")]
Fp8RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--fp8-recipe",
        help="The scaling recipe fp8-mixed plans run: tensorwise (the default), rowwise, "
        "blockwise (DeepSeek-V3's 1x128/128x128) or delayed.",
    ),
]
LoraTargetsOpt = Annotated[
    str | None,
    typer.Option(
        "--lora-targets",
        help="What LoRA/QLoRA plans adapt: attention (the default), mlp, all-linear or a "
        "comma list (see estimate --help).",
    ),
]
SparseFeaturesOpt = Annotated[
    bool, typer.Option("--sparse-features", help="The model learns sparse features.")
]
TopOpt = Annotated[int, typer.Option("--top", help="How many configurations to show.")]
CalibrateOpt = Annotated[
    bool | None,
    typer.Option(
        "--calibrate/--no-calibrate",
        help="Rank by cost measured on this device (the default without --hardware): the "
        "quick calibration runs first when the cache lacks the model's layer shape. "
        "--no-calibrate: never touch torch; analytic costs.",
    ),
]
ExplainOpt = Annotated[bool, typer.Option("--explain", help="Show every rule that fired.")]
EmitOpt = Annotated[
    str | None,
    typer.Option(
        "--emit",
        help="Write the first pick as deepspeed, accelerate, torch, torchtitan or megatron config.",
    ),
]
OutOpt = Annotated[
    str | None, typer.Option("--out", help="Folder for --emit (default: optadvise-out).")
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="With --emit: replace a file that exists, and write the nearest plan the "
        "engine can express when its file cannot set up the ranked plan (refused otherwise).",
    ),
]
SortOpt = Annotated[
    str | None,
    typer.Option(
        "--sort",
        help="With --hardware a,b,c: rank the hardware by time or cost to finish (default: "
        "cost where every option has a price, else time).",
    ),
]
ShowRejectedOpt = Annotated[
    bool,
    typer.Option(
        "--show-rejected", help="List every rejected configuration with its reason (--json)."
    ),
]


@app.command()
@handle_errors
def recommend(
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    task: TaskOpt = "finetune",
    seq_len: SeqLenOpt = None,
    stack: StackOpt = "hf",
    rope_scaling: RopeScalingOpt = None,
    micro_batch: MicroBatchOpt = None,
    global_batch: GlobalBatchOpt = None,
    global_batch_tokens: GlobalBatchTokensOpt = None,
    host_memory: HostMemoryOpt = None,
    nvme: NvmeOpt = None,
    tp: TpOpt = None,
    pp: PpOpt = None,
    context_parallel: CpOpt = None,
    context_parallel_kind: CpKindOpt = None,
    expert_parallel: EpOpt = None,
    expert_tensor_parallel: EtpOpt = None,
    moe_overlap: MoeOverlapOpt = None,
    moe_balance: MoeBalanceOpt = "loss-free",
    hardware: HardwareOpt = None,
    gpus: GpusOpt = None,
    nodes: NodesOpt = 1,
    memory_budget: MemoryBudgetOpt = None,
    objective: ObjectiveOpt = "balanced",
    privacy: PrivacyOpt = "none",
    lora_targets: LoraTargetsOpt = None,
    fp8_recipe: Fp8RecipeOpt = None,
    sparse_features: SparseFeaturesOpt = False,
    top: TopOpt = 5,
    calibrate: CalibrateOpt = None,
    explain: ExplainOpt = False,
    emit: EmitOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    show_rejected: ShowRejectedOpt = False,
    tokens: TokensOpt = None,
    epochs: EpochsOpt = None,
    dataset_tokens: DatasetTokensOpt = None,
    max_days: MaxDaysOpt = None,
    price_per_hour: PricePerHourOpt = None,
    prices: PricesOpt = None,
    sort: SortOpt = None,
    rules_dir: RulesDirOpt = None,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Recommend how to train: ranked configurations with reasons, by measured cost.

    --hardware a,b,c compares hardware for the same job: each option's best plan, ranked by
    time and cost to finish (--tokens, or the shortest published fine-tune).

    Exit status: 0 a plan fits, 2 bad input, 3 nothing fits (the report still prints, with
    suggestions; --json says "fits": false).
    """
    not_blank("--hardware", hardware)
    compare = hardware is not None and "," in hardware
    if schema:
        from advisor.app.compare import CompareReport
        from advisor.plan import RecommendReport

        print_schema(CompareReport if compare else RecommendReport)
        return
    from advisor.app.recommend import RecommendRequest
    from advisor.app.wholerun import RunOptions

    _check_flags(tp, pp, emit, out, force, context_parallel)
    if sort is not None and not compare:
        raise UserError("--sort ranks hardware options", "give --hardware a,b,c, or drop --sort")
    if compare and (explain or show_rejected):
        given = "--explain" if explain else "--show-rejected"
        raise UserError(
            f"{given} explains one ranking, and --hardware a,b,c compares several",
            f"run one profile with --hardware NAME {given}",
        )
    options = RunOptions.from_flags(
        tokens=tokens,
        epochs=epochs,
        dataset_tokens=dataset_tokens,
        max_days=max_days,
        price_per_hour=price_per_hour,
        prices=prices,
    )
    spec = resolve_model(model_size, model, model_config)
    if compare:
        from advisor.shell.cli.compare import compare_hardware

        compare_hardware(
            hardware or "",
            spec=spec,
            options=options,
            sort=sort,
            emit=emit,
            json_out=json_out,
            request_flags={
                "task": task,
                "seq_len": seq_len,
                "micro_batch": micro_batch,
                "global_batch": global_batch,
                "gpus": gpus,
                "nodes": nodes,
                "memory_budget": memory_budget,
                "objective": objective,
                "privacy": privacy,
                "sparse_features": sparse_features,
                "stack": stack,
                "rope_scaling": rope_scaling,
                "global_batch_tokens": global_batch_tokens,
                "host_memory": host_memory,
                "nvme": nvme,
                "tp": tp,
                "pp": pp,
                "lora_targets": lora_targets,
                "fp8_recipe": fp8_recipe,
                "calibrate": calibrate,
                "moe_overlap": moe_overlap,
                "moe_balance": moe_balance,
            },
            rules=rules_dirs(rules_dir) if rules_dir else None,
        )
        return
    request = RecommendRequest.from_flags(
        spec=spec,
        task=task,
        seq_len=seq_len,
        micro_batch=micro_batch,
        global_batch=global_batch,
        hardware=hardware,
        gpus=gpus,
        nodes=nodes,
        memory_budget=memory_budget,
        objective=objective,
        privacy=privacy,
        sparse_features=sparse_features,
        top=top,
        calibrate=calibrate,
        stack=stack,
        rope_scaling=rope_scaling,
        global_batch_tokens=global_batch_tokens,
        host_memory=host_memory,
        nvme=nvme,
        tp=tp,
        pp=pp,
        lora_targets=lora_targets,
        fp8_recipe=fp8_recipe,
        context_parallel=context_parallel,
        context_parallel_kind=context_parallel_kind,
        expert_parallel=expert_parallel,
        expert_tensor_parallel=expert_tensor_parallel,
        moe_overlap=moe_overlap,
        moe_balance=moe_balance,
    )
    if rules_dir:
        request = request.model_copy(update={"rules_dirs": rules_dirs(rules_dir)})
    run = _plan(request, calibrate, hardware, json_out)
    from advisor.app.wholerun import finish_report

    report = finish_report(run, request, options)
    if report.hardware.device_kind == "cpu":
        _note_unused_offload_flags(host_memory, nvme)
    if emit is not None and report.fits:
        _emit(run, emit, out, nodes, spec, hardware, force, json_out)
    _show(report, json_out=json_out, show_rejected=show_rejected, explain=explain)
    if not report.fits:
        if emit is not None:
            typer.echo(f"nothing fits: no {emit} file written", err=True)
        raise typer.Exit(EXIT_NOTHING_FITS)


def _check_flags(
    tp: int | None,
    pp: int | None,
    emit: str | None,
    out: str | None,
    force: bool,
    cp: int | None = None,
) -> None:
    """The pinned degrees within bounds, and --emit's flags only with --emit."""
    from advisor.app.limits import check_bound

    for flag, pinned in (("--tp", tp), ("--pp", pp), ("--context-parallel", cp)):
        check_bound(flag, pinned)
    emit_kinds = ("deepspeed", "accelerate", "torch", "torchtitan", "megatron")
    if emit is not None and emit not in emit_kinds:
        raise UserError(f"invalid --emit {emit!r}", f"use {', '.join(emit_kinds)}")
    if emit is None and (out is not None or force):
        given = "--out" if out is not None else "--force"
        raise UserError(f"{given} applies to --emit, which is not given", f"drop {given}")
    not_blank("--out", out)


def _plan(
    request: RecommendRequest, calibrate: bool | None, hardware: str | None, json_out: bool
) -> RecommendRun:
    """Run the recommend job, with a progress bar and notes when it may calibrate."""
    from advisor.app.recommend import plan_recommendation

    if calibrate is False or hardware is not None:
        # NOTE: analytic costs: no calibration runs, so there is no progress bar or note to
        # show, and the terminal renderer (rich) loads only to print the report (never for
        # --json). That is ~25 ms of start-up.
        return plan_recommendation(request)
    from advisor.shell import render

    with render.calibration_progress(enabled=not json_out) as progress:
        return plan_recommendation(request, progress=progress, notify=render.note)


def _note_unused_offload_flags(host_memory: str | None, nvme: str | None) -> None:
    """--host-memory and --nvme size offload from a GPU: a note when the plan runs on a CPU."""
    from advisor import notes as user_notes

    for flag, value in (("--host-memory", host_memory), ("--nvme", nvme)):
        if value is not None:
            user_notes.post(
                f"{flag} is not used: it sizes offload from a GPU to its host, and this "
                "plan runs on a CPU"
            )


def _emit(
    run: RecommendRun,
    emit: str,
    out: str | None,
    nodes: int,
    spec: ModelSpec,
    hardware: str | None,
    force: bool,
    json_out: bool,
) -> None:
    """Write the first pick's --emit file; say where (and what it cannot say) unless --json."""
    from advisor.app.export import write_emitted

    path, notes = write_emitted(
        run.report,
        emit,
        user_path(out or "optadvise-out", "--out"),
        nodes=nodes,
        spec=spec,
        hardware=hardware,
        force=force,
        environment=run.environment,
    )
    if not json_out:
        from advisor.shell import render

        render.console.print(f"wrote {render.safe(path)}", soft_wrap=True)
        for note in notes:
            render.console.print(f"  note: {render.safe(note)}")


def _show(report: RecommendReport, *, json_out: bool, show_rejected: bool, explain: bool) -> None:
    """The report on stdout: JSON (rejections only with --show-rejected) or the tables."""
    if json_out:
        from advisor.shell.jsonout import print_json

        shown = report if show_rejected else report.model_copy(update={"rejected": []})
        # NOTE: the whole-run fields appear only where there is a run to report (a budget, or
        # an impractical pick), so a report without them reads as before.
        exclude: dict[str, object] = {}
        if shown.whole_run is None:
            exclude["whole_run"] = True
        if all(r.run is None for r in shown.recommendations):
            exclude["recommendations"] = {"__all__": {"run"}}
        print_json(shown, exclude=exclude or None)
    else:
        from advisor.shell import render

        render.render_recommend(report, explain=explain)
