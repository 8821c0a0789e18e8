"""What an export returns: the engines `--emit` writes for, and one emitted file with the plan
it really sets up."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from advisor.config import TrainingConfig


class EmitTarget(str, Enum):
    """The engines `optadvise recommend --emit` writes a configuration for."""

    DEEPSPEED = "deepspeed"
    ACCELERATE = "accelerate"
    TORCH = "torch"
    TORCHTITAN = "torchtitan"
    MEGATRON = "megatron"


class Emission(BaseModel):
    """One emitted file: what to write, where, what the user must know, and which plan it is.

    ``notes`` carry everything the target format cannot say (DeepSpeed and Accelerate
    reject or ignore unknown keys, so no comments go into those files). ``expressed_config``
    is the plan the file sets up; ``differs`` is true when it is not the ranked plan (other
    memory or time), and ``reason`` says why, so the caller can price and show that plan.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: EmitTarget
    filename: str
    text: str
    notes: tuple[str, ...] = ()
    expressed_config: TrainingConfig
    differs: bool = False
    reason: str = ""
