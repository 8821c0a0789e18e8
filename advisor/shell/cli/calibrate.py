"""`optadvise calibrate` (and `show`, `--convergence`): measure this device, cached."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from advisor.errors import UserError
from advisor.shell.cli.common import (
    JsonOpt,
    SchemaOpt,
    calibrate_app,
    clip,
    handle_errors,
    not_blank,
    print_schema,
    stderr_line,
)
from advisor.shell.cli.modelflags import (
    ModelConfigOpt,
    ModelOpt,
    ModelSizeOpt,
    resolve_model,
)


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
    from advisor.cost.data import CalibrationCache

    if schema:
        print_schema(CalibrationCache)
        return
    from advisor.app.limits import check_bound

    check_bound("--budget", budget)
    from advisor.calibration.runner import run_calibration
    from advisor.shell import render

    spec = resolve_model(
        model_size
        if model_size is not None or model is not None or model_config is not None
        else "125M",
        model,
        model_config,
    )
    _check_device_flag(device)
    if device is None:
        device = default_device()
    with render.calibration_progress(enabled=not json_out) as progress:
        cache = run_calibration(
            spec,
            device=device,
            mode="full" if full else "quick",
            budget_s=budget,
            force=force,
            progress=progress,
            say=render.note,
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
    import time

    from advisor.app.limits import check_bound

    check_bound("--budget", budget)
    _check_device_flag(device)
    from advisor.calibration.convergence import (
        cache_file,
        family_key,
        missing_packages,
        run_convergence,
    )
    from advisor.shell import render

    spec = resolve_model(
        model_size if model_size is not None or model or model_config else "125M",
        model,
        model_config,
    )
    skipped = missing_packages()
    if skipped:
        render.note(
            f"pytorch-optimizer is not installed: {', '.join(skipped)} will not be measured "
            "(pip install 'optadvise[optimizers]')"
        )
    path = cache_file(device or "cpu", family_key(spec))
    started = time.time()
    try:
        with render.calibration_progress(enabled=not json_out) as progress:
            cache = run_convergence(
                spec, device=device or "cpu", budget_s=budget, force=force, progress=progress
            )
    except KeyboardInterrupt:
        try:
            written = path.stat().st_mtime >= started - 1
        except OSError:
            written = False
        stderr_line(
            f"interrupted: the runs finished so far are kept in {path}"
            if written
            else "interrupted before the first run finished: nothing was written"
        )
        raise typer.Exit(130) from None
    if json_out:
        render.print_json(cache)
    else:
        render.render_convergence(cache)


def _check_device_flag(device: str | None) -> None:
    """--device names cpu, mps or cuda[:N]; whether that device exists is checked with torch."""
    import re

    not_blank("--device", device)
    if device is not None and not re.fullmatch(r"cpu|mps|cuda(:\d{1,3})?", device):
        raise UserError(f"invalid --device {clip(device, 60)!r}", "use cpu, cuda:N or mps")


def default_device() -> str:
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
    from advisor.calibration.cache import cache_dir, list_caches
    from advisor.shell import render

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
        render.console.print(
            f"no calibration cached in {render.safe(cache_dir())}; run `optadvise calibrate`"
        )
        return
    for path, cache, error in caches:
        render.console.print(f"[bold]{render.safe(path)}[/]")
        if cache is None:
            render.console.print(
                f"  [red]{render.safe(error)}[/]; the next calibration rebuilds it"
            )
        else:
            render.render_calibration(cache)
