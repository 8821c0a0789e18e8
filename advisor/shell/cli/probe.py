"""`optadvise probe`: this machine, or one datasheet profile."""

from __future__ import annotations

from typing import Annotated

import typer

from advisor.shell.cli.common import (
    JsonOpt,
    SchemaOpt,
    app,
    handle_errors,
    not_blank,
    print_schema,
)


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
    not_blank("--hardware", hardware)
    from advisor.hardware.profiles import HardwareProfile, ProbeReport

    if schema:
        print_schema(HardwareProfile if hardware else ProbeReport)
        return
    from advisor.shell import render

    if hardware:
        from advisor.hardware.profiles import get_hardware_profile

        profile = get_hardware_profile(hardware)
        if json_out:
            render.print_json(profile)
        else:
            render.render_hardware_profile(profile)
        return
    from advisor.hardware.probe import probe_hardware

    if json_out:
        render.print_json(probe_hardware(with_torch=not no_torch))
        return
    with render.console.status("Probing hardware…"):
        report = probe_hardware(with_torch=not no_torch)
    render.render_probe(report)
