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
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
