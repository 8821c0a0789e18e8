"""The `optadvise` command line: parse flags, call the core, render. The only place that exits."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from advisor import __version__
from advisor.errors import EXIT_FINDINGS, EXIT_USAGE, DataError, UserError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="optadvise",
    help=(
        "Decide how to train a model on the hardware you have: optimizer, precision, attention,\n"
        "memory savers and sharding, ranked by cost measured on your own device."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
profiles_app = typer.Typer(
    help="Hardware and model profiles for what-if planning.", no_args_is_help=True
)
app.add_typer(profiles_app, name="profiles")
rules_app = typer.Typer(help="Browse and check the rule base.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")

RulesDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--rules-dir",
        help="A folder of your own rule files, used alongside the shipped ones (repeatable).",
        exists=True,
        file_okay=False,
    ),
]


def handle_errors(fn: F) -> F:
    """Turn user errors into one line on stderr and exit status 2; let bugs raise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DataError as exc:
            from advisor.render import err_console

            for problem in exc.problems:
                err_console.print(f"Error: {problem}", markup=False)
            if exc.hint:
                err_console.print(f"  hint: {exc.hint}", markup=False)
            raise typer.Exit(EXIT_USAGE) from None
        except UserError as exc:
            from advisor.render import err_console

            err_console.print(f"Error: {exc.message}", markup=False)
            if exc.hint:
                err_console.print(f"  hint: {exc.hint}", markup=False)
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            from advisor.render import err_console

            err_console.print("Error: interrupted; nothing was written", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _print_schema(model: type[Any]) -> None:
    sys.stdout.write(json.dumps(model.model_json_schema(), indent=2) + "\n")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable schema, see --schema).")]
SchemaOpt = Annotated[
    bool, typer.Option("--schema", help="Print the JSON Schema of --json's output and exit.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"optadvise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = None,
) -> None:
    """optadvise: ranked, explained training recommendations by measured cost."""


@app.command()
@handle_errors
def probe(
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware", help="Show a datasheet profile instead of probing (see `profiles list`)."
        ),
    ] = None,
    no_torch: Annotated[
        bool,
        typer.Option("--no-torch", help="Skip torch (faster): no SDPA, GEMM or torch.cuda facts."),
    ] = False,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Report this machine: CPU, memory limits (cgroups), GPUs, and the torch stack."""
    from advisor.hardware import HardwareProfile, ProbeReport

    if schema:
        _print_schema(HardwareProfile if hardware else ProbeReport)
        return
    from advisor import render

    if hardware:
        from advisor.hardware import get_hardware_profile

        profile = get_hardware_profile(hardware)
        if json_out:
            render.print_json(profile)
        else:
            render.render_hardware_profile(profile)
        return
    from advisor.probe import probe_hardware

    if json_out:
        render.print_json(probe_hardware(with_torch=not no_torch))
        return
    with render.console.status("Probing hardware…"):
        report = probe_hardware(with_torch=not no_torch)
    render.render_probe(report)


@profiles_app.command("list")
@handle_errors
def profiles_list(json_out: JsonOpt = False) -> None:
    """List the hardware profiles (--hardware) and model profiles (--model)."""
    from advisor import render
    from advisor.hardware import load_hardware_profiles

    hardware = sorted(load_hardware_profiles().values(), key=lambda p: p.id)
    models = _model_rows()
    if json_out:
        render.print_json(
            {
                "hardware": [p.model_dump(mode="json") for p in hardware],
                "models": [
                    {"id": i, "name": n, "arch": a, "parameters": c} for i, n, a, c in models
                ],
            }
        )
        return
    render.render_profiles(hardware, models)


def _model_rows() -> list[tuple[str, str, str, int]]:
    try:
        from advisor.modelspec import load_model_profiles
    except ImportError:
        return []
    specs = load_model_profiles()
    return [
        (s.id, s.name, s.arch.value, s.parameter_count())
        for s in sorted(specs.values(), key=lambda s: (s.family, s.parameter_count()))
    ]


@app.command()
@handle_errors
def taxonomy(json_out: JsonOpt = False, schema: SchemaOpt = False) -> None:
    """Draw the taxonomy of training techniques: category, order, references."""
    from advisor.taxonomy import Taxonomy, load_taxonomy

    if schema:
        _print_schema(Taxonomy)
        return
    from advisor import render

    tax = load_taxonomy()
    if json_out:
        render.print_json(tax)
    else:
        render.render_taxonomy(tax)


def _load_ruleset(rules_dir: list[Path] | None) -> Any:
    from advisor.ruleset import load_rules
    from advisor.taxonomy import load_taxonomy

    return load_rules(rules_dir or [], technique_ids=set(load_taxonomy().ids()))


@rules_app.command("list")
@handle_errors
def rules_list(rules_dir: RulesDirOpt = None, json_out: JsonOpt = False) -> None:
    """List every rule: id, title, actions, file and line."""
    from advisor import render

    ruleset = _load_ruleset(rules_dir)
    if json_out:
        render.print_json([lr for lr in ruleset.rules])
    else:
        render.render_rules_list(ruleset.rules)


@rules_app.command("show")
@handle_errors
def rules_show(
    rule_id: Annotated[str, typer.Argument(help="The rule id (see `optadvise rules list`).")],
    rules_dir: RulesDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one rule: its condition, actions, rationale and sources."""
    import difflib

    from advisor import render

    ruleset = _load_ruleset(rules_dir)
    lr = ruleset.get(rule_id)
    if lr is None:
        close = difflib.get_close_matches(rule_id, [r.rule.id for r in ruleset.rules], n=3)
        raise UserError(
            f"unknown rule {rule_id!r}",
            f"did you mean {', '.join(close)}?" if close else "see `optadvise rules list`",
        )
    if json_out:
        render.print_json(lr)
    else:
        render.render_rule(lr)


@rules_app.command("check")
@handle_errors
def rules_check(
    rules_dir: RulesDirOpt = None, json_out: JsonOpt = False, schema: SchemaOpt = False
) -> None:
    """Prove the rule base consistent: schema, references, dead rules, contradictions,
    infeasible optimizer sets, unreachable techniques, missing rationale or sources.

    Exits 0 when consistent, 1 with the defects otherwise.
    """
    from advisor.checks import CheckReport, check_rules

    if schema:
        _print_schema(CheckReport)
        return
    from advisor import render

    report = check_rules(rules_dir or [])
    if json_out:
        render.print_json(report)
    else:
        render.render_check(report)
    if not report.ok:
        raise typer.Exit(EXIT_FINDINGS)


# --- model and workload flags shared by estimate, calibrate and recommend ------------------

ModelSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--model-size",
        help="Parameter count such as 125M, 1.3B, 7B, 70B or 1T; resolves to a canonical "
        "decoder shape (see `optadvise profiles list`).",
    ),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="A model profile id, e.g. llama-2-7b.")
]
ModelConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-config",
        help="A local Hugging Face config.json (Llama, Mistral, Qwen2, OPT, GPT-2 fields).",
    ),
]


def _resolve_model(model_size: str | None, model: str | None, model_config: Path | None) -> Any:
    from advisor.modelspec import get_model_profile, load_hf_config, resolve_model_size

    given = [
        n
        for n, v in (
            ("--model-size", model_size),
            ("--model", model),
            ("--model-config", model_config),
        )
        if v
    ]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both name a model", "give only one of them")
    if model_config is not None:
        return load_hf_config(model_config)
    if model is not None:
        return get_model_profile(model)
    return resolve_model_size(model_size or "7B")


def _positive(value: int | None, flag: str) -> int | None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be a positive integer, got {value}", f"e.g. {flag} 1")
    return value


@app.command()
@handle_errors
def estimate(
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    task: Annotated[
        str, typer.Option("--task", help="pretrain, finetune, lora or qlora.")
    ] = "finetune",
    optimizer: Annotated[
        str, typer.Option("--optimizer", help="A taxonomy optimizer id.")
    ] = "adamw",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fp32, tf32, amp-fp16, amp-bf16 (autocast), fp16-mixed, bf16-mixed "
            "(16-bit weights + fp32 master), fp16, bf16 (all 16-bit), fp8-mixed.",
        ),
    ] = "bf16-mixed",
    attention: Annotated[
        str, typer.Option("--attention", help="eager, mem-efficient or flash.")
    ] = "flash",
    checkpointing: Annotated[
        str, typer.Option("--checkpointing", help="none, selective or full.")
    ] = "none",
    micro_batch: Annotated[
        int, typer.Option("--micro-batch", help="Samples per device per pass.")
    ] = 1,
    seq_len: Annotated[
        str, typer.Option("--seq-len", help="Tokens per sample, e.g. 2048 or 4k.")
    ] = "2048",
    gpus: Annotated[int, typer.Option("--gpus", help="Data-parallel degree.")] = 1,
    sharding: Annotated[
        str, typer.Option("--sharding", help="none, zero1, zero2, zero3, fsdp or hsdp.")
    ] = "none",
    offload: Annotated[
        str,
        typer.Option(
            "--offload",
            help="none, optimizer, optimizer+params (host RAM), optimizer-nvme or "
            "optimizer+params-nvme.",
        ),
    ] = "none",
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="LoRA/QLoRA rank.")] = 16,
    dp_sgd: Annotated[
        bool, typer.Option("--dp-sgd", help="Per-sample gradients (DP-SGD).")
    ] = False,
    stack: Annotated[
        str,
        typer.Option(
            "--stack",
            help="Kernel stack the memory assumes: hf (Hugging Face modules, the default) or "
            "fused (FlashAttention, fused norms and cross-entropy, as torchtitan/Megatron).",
        ),
    ] = "hf",
    fused_loss: Annotated[
        bool,
        typer.Option("--fused-loss", help="A fused linear cross-entropy (Liger): no logits."),
    ] = False,
    grad_accumulation: Annotated[
        int, typer.Option("--grad-accumulation", help="Micro-batches per optimizer step.")
    ] = 1,
    tensor_parallel: Annotated[
        int, typer.Option("--tensor-parallel", help="Tensor(+sequence)-parallel degree.")
    ] = 1,
    pipeline_parallel: Annotated[
        int, typer.Option("--pipeline-parallel", help="Pipeline stages (1F1B).")
    ] = 1,
    virtual_stages: Annotated[
        int, typer.Option("--virtual-stages", help="Interleaved model chunks per stage.")
    ] = 1,
    expert_parallel: Annotated[
        int, typer.Option("--expert-parallel", help="Expert-parallel degree (MoE).")
    ] = 1,
    optimizer_in_backward: Annotated[
        bool,
        typer.Option("--optimizer-in-backward", help="Per-layer updates during backward."),
    ] = False,
    activation_offload: Annotated[
        bool, typer.Option("--activation-offload", help="Saved activations in host memory.")
    ] = False,
    hardware: Annotated[
        str | None,
        typer.Option("--hardware", help="Profile for the fit check and the analytic step time."),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cuda (context + allocator overheads) or cpu (none).")
    ] = "cuda",
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Estimate the per-device peak memory of one explicit training configuration."""
    from advisor.estimate import EstimateReport, build_config, estimate_report

    if schema:
        _print_schema(EstimateReport)
        return
    from advisor import render
    from advisor.units import parse_length

    spec = _resolve_model(model_size, model, model_config)
    for flag, value in (
        ("--micro-batch", micro_batch),
        ("--gpus", gpus),
        ("--lora-rank", lora_rank),
        ("--grad-accumulation", grad_accumulation),
        ("--tensor-parallel", tensor_parallel),
        ("--pipeline-parallel", pipeline_parallel),
        ("--virtual-stages", virtual_stages),
        ("--expert-parallel", expert_parallel),
    ):
        _positive(value, flag)
    config = build_config(
        task=task,
        optimizer=optimizer,
        precision=precision,
        attention=attention,
        checkpointing=checkpointing,
        micro_batch=micro_batch,
        seq_len=parse_length(seq_len),
        gpus=gpus,
        sharding=sharding,
        offload=offload,
        lora_rank=lora_rank,
        dp_sgd=dp_sgd,
        stack=stack,
        fused_loss=fused_loss,
        grad_accumulation=grad_accumulation,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        virtual_stages=virtual_stages,
        expert_parallel=expert_parallel,
        optimizer_in_backward=optimizer_in_backward,
        activation_offload=activation_offload,
    )
    import psutil

    from advisor.advise import local_step_time

    report = estimate_report(
        spec,
        config,
        hardware=hardware,
        device=device,
        host_memory_bytes=None if hardware else psutil.virtual_memory().total,
        step_time=local_step_time(spec, config, hardware),
    )
    if json_out:
        render.print_json(report)
    else:
        render.render_estimate(report)


@app.command()
@handle_errors
def recommend(
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    task: Annotated[
        str, typer.Option("--task", help="pretrain, finetune (default), lora or qlora.")
    ] = "finetune",
    seq_len: Annotated[
        str | None,
        typer.Option("--seq-len", help="Tokens per sample (default: 2048, capped by the model)."),
    ] = None,
    micro_batch: Annotated[
        int, typer.Option("--micro-batch", help="Samples per device per pass.")
    ] = 1,
    global_batch: Annotated[
        int | None,
        typer.Option("--global-batch", help="Samples per optimizer step (sets accumulation)."),
    ] = None,
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware", help="Plan for a profile instead of this machine (profiles list)."
        ),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="Devices per node (default: all local GPUs, or 1).")
    ] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Machines.")] = 1,
    memory_budget: Annotated[
        str | None,
        typer.Option("--memory-budget", help="Device memory to plan with, e.g. 24GB (overrides)."),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="speed (step time), memory, balanced (default), quality or time-to-target "
            "(steps to AdamW's loss x step time).",
        ),
    ] = "balanced",
    privacy: Annotated[str, typer.Option("--privacy", help="none or dp (DP-SGD).")] = "none",
    sparse_features: Annotated[
        bool, typer.Option("--sparse-features", help="The model learns sparse features.")
    ] = False,
    top: Annotated[int, typer.Option("--top", help="How many configurations to show.")] = 5,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="--calibrate: run a quick calibration first. --no-calibrate: never touch torch; "
            "analytic costs. Default: use this device's calibration cache when there is one.",
        ),
    ] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Show every rule that fired.")] = False,
    emit: Annotated[
        str | None,
        typer.Option(
            "--emit", help="Write the first pick as deepspeed, accelerate or torch config."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for --emit.")] = Path("optadvise-out"),
    rules_dir: RulesDirOpt = None,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Recommend how to train: ranked configurations with reasons, by measured cost."""
    from advisor.recommend import RecommendReport

    if schema:
        _print_schema(RecommendReport)
        return
    from advisor import render
    from advisor.advise import RecommendRequest, run_recommend

    for flag, value in (
        ("--micro-batch", micro_batch),
        ("--global-batch", global_batch),
        ("--gpus", gpus),
        ("--nodes", nodes),
        ("--top", top),
    ):
        _positive(value, flag)
    if emit is not None and emit not in ("deepspeed", "accelerate", "torch"):
        raise UserError(f"invalid --emit {emit!r}", "use deepspeed, accelerate or torch")
    spec = _resolve_model(model_size, model, model_config)
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
    )
    if rules_dir:
        request = request.model_copy(update={"rules_dirs": list(rules_dir)})
    with render.calibration_progress(enabled=not json_out) as progress:
        report = run_recommend(request, progress=progress)
    if emit is not None:
        from advisor.advise import write_emitted

        path, notes = write_emitted(report, emit, out, nodes=nodes)
        if not json_out:
            render.console.print(f"wrote {path}")
            for note in notes:
                render.console.print(f"  note: {note}", markup=False)
    if json_out:
        render.print_json(report)
    else:
        render.render_recommend(report, explain=explain)


calibrate_app = typer.Typer(
    help="Time short real optimizer, attention and layer steps on this device (cached).",
)
app.add_typer(calibrate_app, name="calibrate")


@calibrate_app.callback(invoke_without_command=True)
@handle_errors
def calibrate(
    ctx: typer.Context,
    full: Annotated[
        bool,
        typer.Option(
            "--full/--quick",
            help="--quick (default): a representative subset, about a minute; --full: every "
            "optimizer, longer sequences, all-reduce bandwidth.",
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option("--device", help="cpu, cuda:N or mps (default: the GPU if any, else cpu)."),
    ] = None,
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            help="Stop after this many seconds; keep partial results (quick default: 120).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Measure again even if cached.")] = False,
    convergence: Annotated[
        bool,
        typer.Option(
            "--convergence",
            help="Instead of timing steps, train a tiny proxy of the model's family with each "
            "optimizer (short LR sweep, fixed steps) and measure steps to AdamW's loss "
            "(default budget 180 s).",
        ),
    ] = False,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Measure this device for a model's layer shape (default: 125M) and cache the results."""
    if ctx.invoked_subcommand is not None:
        return
    if convergence:
        _calibrate_convergence(model_size, model, model_config, device, budget, force, json_out)
        return
    from advisor.costdata import CalibrationCache

    if schema:
        _print_schema(CalibrationCache)
        return
    if budget is not None and budget <= 0:
        raise UserError(f"--budget must be positive, got {budget:g}", "e.g. --budget 60")
    from advisor import render
    from advisor.calibration.runner import run_calibration

    spec = _resolve_model(
        model_size or ("125M" if not (model or model_config) else None), model, model_config
    )
    if device is None:
        device = _default_device()
    with render.calibration_progress(enabled=not json_out) as progress:
        cache = run_calibration(
            spec,
            device=device,
            mode="full" if full else "quick",
            budget_s=budget,
            force=force,
            progress=progress,
        )
    if json_out:
        render.print_json(cache)
    else:
        render.render_calibration(cache, spec_key=_shape_key(spec))


def _calibrate_convergence(
    model_size: str | None,
    model: str | None,
    model_config: Path | None,
    device: str | None,
    budget: float | None,
    force: bool,
    json_out: bool,
) -> None:
    """`calibrate --convergence`: the measured proxy of steps to AdamW's loss."""
    if budget is not None and budget <= 0:
        raise UserError(f"--budget must be positive, got {budget:g}", "e.g. --budget 60")
    from advisor import render
    from advisor.calibration.convergence import run_convergence

    spec = _resolve_model(
        model_size or ("125M" if not (model or model_config) else None), model, model_config
    )
    try:
        with render.calibration_progress(enabled=not json_out) as progress:
            cache = run_convergence(
                spec, device=device or "cpu", budget_s=budget, force=force, progress=progress
            )
    except KeyboardInterrupt:
        from advisor.calibration.convergence import cache_file, family_key

        path = cache_file(device or "cpu", family_key(spec))
        render.err_console.print(
            f"interrupted: the runs finished so far are kept in {path}", markup=False
        )
        raise typer.Exit(130) from None
    if json_out:
        render.print_json(cache)
    else:
        render.render_convergence(cache)


def _default_device() -> str:
    """The first GPU when torch sees one, Apple MPS when present, else the CPU."""
    from advisor.torchload import import_torch

    torch = import_torch()
    if torch.cuda.is_available():
        return "cuda:0"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _shape_key(spec: Any) -> str:
    from advisor.cost import layer_shape

    return str(layer_shape(spec).key())


@calibrate_app.command("show")
@handle_errors
def calibrate_show(json_out: JsonOpt = False) -> None:
    """Show what is cached: one file per device fingerprint."""
    from advisor import render
    from advisor.calibration.cache import cache_dir, list_caches

    caches = list_caches()
    if json_out:
        render.print_json(
            {
                "cache_dir": str(cache_dir()),
                "caches": [
                    {"path": str(p), "cache": c.model_dump(mode="json") if c else None, "error": e}
                    for p, c, e in caches
                ],
            }
        )
        return
    if not caches:
        render.console.print(f"no calibration cached in {cache_dir()}; run `optadvise calibrate`")
        return
    for path, cache, error in caches:
        render.console.print(f"[bold]{path}[/]")
        if cache is None:
            render.console.print(f"  [red]{error}[/]; the next calibration rebuilds it")
        else:
            render.render_calibration(cache)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
