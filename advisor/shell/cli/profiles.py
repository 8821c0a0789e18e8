"""`optadvise profiles list`: the hardware and model profiles."""

from __future__ import annotations

from advisor.shell.cli.common import (
    JsonOpt,
    handle_errors,
    profiles_app,
)


@profiles_app.command("list")
@handle_errors
def profiles_list(json_out: JsonOpt = False) -> None:
    """List the hardware profiles (--hardware) and model profiles (--model)."""
    from advisor.hardware.profiles import load_hardware_profiles
    from advisor.shell import render

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
        from advisor.model import load_model_profiles
    except ImportError:
        return []
    specs = load_model_profiles()
    return [
        (s.id, s.name, s.arch.value, s.parameter_count())
        for s in sorted(specs.values(), key=lambda s: (s.family, s.parameter_count()))
    ]
