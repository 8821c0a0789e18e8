"""Write the recommend job's first pick as an engine's config file (--emit).

The engines themselves are advisor.export's; this module decides what is written where,
refuses a file that would set up another plan than the ranked one (unless --force), and
prices that other plan for the note that says so.
"""

from __future__ import annotations

from pathlib import Path

from advisor.app.environment import Environment, local_step_time
from advisor.config import TrainingConfig
from advisor.errors import UserError
from advisor.model.spec import ModelSpec
from advisor.plan import RecommendReport
from advisor.rules.taxonomy import load_taxonomy


def write_emitted(
    report: RecommendReport,
    kind: str,
    out: Path,
    *,
    nodes: int,
    spec: ModelSpec | None = None,
    hardware: str | None = None,
    force: bool = False,
    environment: Environment | None = None,
) -> tuple[Path, list[str]]:
    """Write the first pick as a DeepSpeed JSON, Accelerate YAML, torchtitan TOML,
    Megatron-LM arguments or a PyTorch snippet.

    When the engine cannot set up the ranked plan, the file sets up the nearest plan it can;
    the first note then names that plan with its memory and step time beside the ranked one's
    (from the report when it priced that plan, else from the memory and cost models).

    Args:
        environment: the machine the job planned for, probed and with its calibration
            (advisor.app.recommend.RecommendRun); None probes it here when needed.

    Returns:
        The file written and the notes to show (engines reject unknown keys, so what a
        config file cannot say is said here).

    Raises:
        UserError: when nothing fits (nothing to emit), the engine cannot express the plan's
            layout, the file would set up another plan than the ranked one or already exists
            (both without ``force``), or the folder cannot be written.
    """
    if not report.recommendations:
        raise UserError("nothing fits, so there is no configuration to emit", "see the suggestions")
    from advisor.export import EmitTarget, emit_config

    best = report.recommendations[0]
    impl = load_taxonomy().get(best.optimizer).implementation
    cpu = report.hardware.device_kind == "cpu"
    emission = emit_config(
        EmitTarget(kind),
        best.config,
        nodes=nodes,
        optimizer_implementation=impl,
        cpu=cpu,
        num_layers=spec.num_layers if spec is not None else None,
    )
    notes = list(emission.notes)
    if emission.differs:
        expressed = expressed_plan_note(
            report, emission.expressed_config, spec, hardware, environment
        )
        if not force:
            # A config file that silently sets up another plan is not the pick: refuse.
            raise UserError(
                f"the {kind} file cannot set up the ranked plan: {expressed}",
                "pass --force to write that plan anyway, or try another --emit engine",
            )
        notes.insert(0, expressed)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create {out}: {exc.strerror}", "pass another --out folder"
        ) from None
    path = out / emission.filename
    _atomic_write(path, emission.text, force)
    return path, notes


def expressed_plan_note(
    report: RecommendReport,
    expressed: TrainingConfig,
    spec: ModelSpec | None,
    hardware: str | None,
    environment: Environment | None = None,
) -> str:
    """The memory and time of the plan an export sets up instead of the ranked one."""
    from advisor.export import same_plan
    from advisor.units import format_bytes, format_seconds

    best = report.recommendations[0]
    ranked = (
        f"ranked plan: {format_bytes(best.peak_memory_bytes)}/device, "
        f"{format_seconds(best.step_time_s)}/step"
    )
    for rec in report.recommendations:
        if same_plan(rec.config, expressed):
            return (
                f"this file sets up plan #{rec.rank} instead: "
                f"{format_bytes(rec.peak_memory_bytes)}/device, "
                f"{format_seconds(rec.step_time_s)}/step ({ranked})"
            )
    if spec is None:
        return f"this file sets up another plan than the ranked one ({ranked}); see below"
    from advisor.memory import DeviceOverheads, estimate_memory

    tech = load_taxonomy().get(expressed.optimizer)
    overheads = DeviceOverheads.cpu() if report.hardware.device_kind == "cpu" else None
    memory = estimate_memory(spec, expressed, optimizer=tech, device=overheads)
    step = local_step_time(spec, expressed, hardware, environment)
    fits = "fits" if memory.total_bytes <= report.hardware.usable_memory_bytes else "does NOT fit"
    return (
        f"this file sets up another plan: {format_bytes(memory.total_bytes)}/device ({fits}), "
        f"{format_seconds(step.seconds)}/step ({ranked})"
    )


def _atomic_write(path: Path, text: str, force: bool = False) -> None:
    """Write through an exclusive temp file (see advisor.data.safeio); replace only with force."""
    from advisor.data.safeio import describe, remove_stale_temps, write_atomic

    # NOTE: older versions wrote <name>.tmp beside the file and left it on failures.
    remove_stale_temps(path.parent, legacy=(path.name + ".tmp",))
    try:
        write_atomic(path, text.encode(), overwrite=force)
    except FileExistsError:
        raise UserError(
            f"{path} exists; not overwriting it", "pass --force to replace it, or another --out"
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot write {path}: {describe(exc)}", "pass another --out folder"
        ) from None
