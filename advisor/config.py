"""One training configuration: the shared vocabulary of the memory model, cost model and ranking."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Task(str, Enum):
    """What the user trains: all weights from scratch or from a checkpoint, or adapters."""

    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
    LORA = "lora"
    QLORA = "qlora"


class Precision(str, Enum):
    """Where each tensor lives in which dtype.

    ``amp-*``: PyTorch autocast — fp32 weights, gradients and optimizer states, 16-bit
    activations, plus autocast's cache of 16-bit weight copies.
    ``*-mixed``: DeepSpeed/Megatron layout — 16-bit weights and gradients, fp32 master
    weights and optimizer states (Micikevicius et al. 2018).
    bare ``fp16``/``bf16``: everything 16-bit, no master copy.
    """

    FP32 = "fp32"
    TF32 = "tf32"
    AMP_FP16 = "amp-fp16"
    AMP_BF16 = "amp-bf16"
    FP16_MIXED = "fp16-mixed"
    BF16_MIXED = "bf16-mixed"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8_MIXED = "fp8-mixed"


class Attention(str, Enum):
    """The attention implementation (SDPA backend or eager matmul-softmax-matmul)."""

    EAGER = "eager"
    MEM_EFFICIENT = "mem-efficient"
    FLASH = "flash"


class Checkpointing(str, Enum):
    """Activation checkpointing (Chen et al. 2016; selective: Korthikanti et al. 2022)."""

    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class Sharding(str, Enum):
    """Data-parallel sharding of model states (Rajbhandari et al. 2020; Zhao et al. 2023)."""

    NONE = "none"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO3 = "zero3"
    FSDP = "fsdp"

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 (and FSDP's full
        shard) also parameters (Rajbhandari et al. 2020; Zhao et al. 2023)."""
        return {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[self.value]


class Offload(str, Enum):
    """What moves to host memory (ZeRO-Offload, Ren et al. 2021)."""

    NONE = "none"
    OPTIMIZER = "optimizer"
    OPTIMIZER_PARAMS = "optimizer+params"


class TrainingConfig(BaseModel):
    """One explicit training configuration, per data-parallel replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = Task.FINETUNE
    optimizer: str = Field(default="adamw", pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    precision: Precision = Precision.BF16_MIXED
    attention: Attention = Attention.FLASH
    checkpointing: Checkpointing = Checkpointing.NONE
    micro_batch: int = Field(default=1, ge=1)
    seq_len: int = Field(default=2048, ge=1)
    gpus: int = Field(default=1, ge=1, description="data-parallel degree N_d")
    sharding: Sharding = Sharding.NONE
    offload: Offload = Offload.NONE
    lora_rank: int = Field(default=16, ge=1)
    dp_sgd: bool = False
    grad_accumulation: int = Field(default=1, ge=1)
