"""`optadvise estimate`: the memory (and step time) of one explicit configuration."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.hardware import DeviceKind, get_hardware_profile
from advisor.memory import OVERHEAD_COMPONENTS, DeviceOverheads, estimate_memory
from advisor.modelspec import ModelSpec
from advisor.taxonomy import Category, load_taxonomy

E = TypeVar("E", bound=Enum)


class StepTimeReport(BaseModel):
    """Predicted time of one training step, by component."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: str = Field(description="measured, analytic or mixed")
    components: dict[str, Any]


class EstimateReport(BaseModel):
    """What `optadvise estimate --json` prints (a stable contract)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = 1
    model: str
    model_id: str
    config: TrainingConfig
    total_bytes: int = Field(description="per-device peak memory, bytes")
    breakdown: dict[str, int] = Field(
        description="component -> bytes; sums to total_bytes. `overhead` is the sum of the "
        "named fixed terms in overhead_breakdown"
    )
    overhead_breakdown: dict[str, int] = Field(
        description="the fixed per-device terms: CUDA context, cuBLAS workspace, allocator reserve"
    )
    parameters: int
    trainable_parameters: int
    host_bytes: int = Field(description="bytes offload keeps in host memory")
    notes: list[str]
    device: str = Field(description="overheads assumed: cuda or cpu")
    hardware: str | None = Field(default=None, description="profile the fit was checked against")
    device_name: str | None = Field(
        default=None,
        description="the device the fit was checked against: the profile's name, or the probed "
        "device when no --hardware is given",
    )
    device_memory_bytes: int | None = None
    host_memory_bytes: int | None = None
    fits: bool | None = Field(default=None, description="peak <= device memory (None: no device)")
    host_fits: bool | None = None
    step_time: StepTimeReport | None = None


def _enum(kind: type[E], value: str, flag: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(v.value) for v in kind)  # type: ignore[attr-defined]
        raise UserError(f"invalid {flag} {value!r}", f"use one of: {allowed}") from None


def build_config(
    *,
    task: str,
    optimizer: str,
    precision: str,
    attention: str,
    checkpointing: str,
    micro_batch: int,
    seq_len: int,
    gpus: int,
    sharding: str,
    offload: str,
    lora_rank: int,
    dp_sgd: bool,
) -> TrainingConfig:
    """Validate flag values into a configuration.

    Raises:
        UserError: naming the flag and its allowed values.
    """
    tax = load_taxonomy()
    optimizers = [t.id for t in tax.by_category(Category.OPTIMIZER)]
    if optimizer not in optimizers:
        tax.get(optimizer)  # raises with "did you mean"
        raise UserError(
            f"{optimizer!r} is not an optimizer", "use one of: " + ", ".join(optimizers)
        )
    try:
        return TrainingConfig(
            task=_enum(Task, task, "--task"),
            optimizer=optimizer,
            precision=_enum(Precision, precision, "--precision"),
            attention=_enum(Attention, attention, "--attention"),
            checkpointing=_enum(Checkpointing, checkpointing, "--checkpointing"),
            micro_batch=micro_batch,
            seq_len=seq_len,
            gpus=gpus,
            sharding=_enum(Sharding, sharding, "--sharding"),
            offload=_enum(Offload, offload, "--offload"),
            lora_rank=lora_rank,
            dp_sgd=dp_sgd,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(
            f"invalid {err['loc'][0]}: {err['msg']}", "see optadvise estimate --help"
        ) from None


def estimate_report(
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    hardware: str | None = None,
    device: str = "cuda",
    host_memory_bytes: int | None = None,
    step_time: StepTimeReport | None = None,
    local_device: tuple[str, int] | None = None,
) -> EstimateReport:
    """The memory of one configuration, checked against a profile when one is named, else
    against ``local_device`` (the probed device's name and memory) when given.

    Raises:
        UserError: for an unknown optimizer, profile or device kind.
    """
    profile = get_hardware_profile(hardware) if hardware else None
    if device not in ("cuda", "cpu"):
        raise UserError(f"invalid --device {device!r}", "use cuda or cpu")
    on_cpu = device == "cpu" or (profile is not None and profile.kind is DeviceKind.CPU)
    overheads = DeviceOverheads.cpu() if on_cpu else DeviceOverheads()
    tech = load_taxonomy().get(config.optimizer)
    m = estimate_memory(spec, config, optimizer=tech, device=overheads)
    device_mem = profile.memory_bytes if profile else None
    device_name = profile.name if profile else None
    if profile is None and local_device is not None:
        device_name, device_mem = local_device
    host = host_memory_bytes
    if profile is not None and profile.host_memory_gib is not None:
        host = int(profile.host_memory_gib * 1024**3)
    return EstimateReport(
        model=spec.name,
        model_id=spec.id,
        config=config,
        total_bytes=m.total_bytes,
        breakdown=_with_overhead(m.breakdown),
        overhead_breakdown={k: m.breakdown[k] for k in OVERHEAD_COMPONENTS},
        parameters=m.parameters,
        trainable_parameters=m.trainable_parameters,
        host_bytes=m.host_bytes,
        notes=m.notes,
        device="cpu" if on_cpu else "cuda",
        hardware=profile.id if profile else None,
        device_name=device_name,
        device_memory_bytes=device_mem,
        host_memory_bytes=host,
        fits=None if device_mem is None else m.total_bytes <= device_mem,
        host_fits=None if host is None or m.host_bytes == 0 else m.host_bytes <= host,
        step_time=step_time,
    )


def _with_overhead(breakdown: dict[str, int]) -> dict[str, int]:
    """The breakdown with the fixed terms folded into one named `overhead` entry."""
    out = {k: v for k, v in breakdown.items() if k not in OVERHEAD_COMPONENTS}
    out["overhead"] = sum(breakdown[k] for k in OVERHEAD_COMPONENTS)
    return out
