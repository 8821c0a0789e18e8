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
from advisor.errors import EXIT_USAGE, DataError, UserError

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
profiles_app = typer.Typer(help="Hardware and model profiles for what-if planning.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


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
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """optadvise: ranked, explained training recommendations by measured cost."""


@app.command()
@handle_errors
def probe(
    hardware: Annotated[
        str | None,
        typer.Option("--hardware", help="Show a datasheet profile instead of probing (see `profiles list`)."),
    ] = None,
    no_torch: Annotated[
        bool, typer.Option("--no-torch", help="Skip torch (faster): no SDPA, GEMM or torch.cuda facts.")
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
