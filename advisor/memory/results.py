"""The memory model's result types and its vocabulary: the components and phases every
estimate names, the device's fixed overheads, one phase, the estimate and its totals."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import Stack
from advisor.memory.nccl import NcclFabric
from advisor.units import MIB

COMPONENTS: tuple[str, ...] = (
    "weights",
    "quantization_constants",
    "weight_cache",
    "gradients",
    "per_sample_gradients",
    "master_weights",
    "optimizer_states",
    "activations",
    "recompute",
    "logits",
    "transient",
    "gathered_parameters",
    "cuda_context",
    "nccl",
    "workspace",
    "allocator_reserve",
)

#: Components an estimate names only when a schedule keeps them (after :data:`COMPONENTS`
#: in the breakdown, absent otherwise): DualPipe's second copy of the model parameters
#: (DeepSeek-V3 report, arXiv:2412.19437, sec. 3.2.1 and Table 2; advisor.memory.pipeline).
SCHEDULE_COMPONENTS: tuple[str, ...] = ("dualpipe_weights",)

#: The phases of one training step whose largest sum is the peak, in step order.
PHASES: tuple[str, ...] = ("forward_end", "loss_backward", "layer_backward", "optimizer_step")

#: Components that are fixed device overheads rather than tensors of the model.
OVERHEAD_COMPONENTS: tuple[str, ...] = ("cuda_context", "nccl", "workspace", "allocator_reserve")

#: Overheads outside torch's caching allocator: nvidia-smi counts them, max_memory_reserved
#: does not.
OUTSIDE_ALLOCATOR: tuple[str, ...] = ("cuda_context", "nccl")


class DeviceOverheads(BaseModel):
    """Fixed per-device memory that is not a tensor of the model.

    The defaults describe a CUDA device; :meth:`cpu` gives zeros.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cuda_context_bytes: int = Field(
        default=500 * MIB,
        ge=0,
        description=(
            "CUDA context + kernel images a training step loads; per GPU from "
            "advisor.memory.cuda_context.cuda_context_bytes (500 MiB where the GPU is unknown)"
        ),
    )
    nccl: NcclFabric | None = Field(
        default=None,
        description=(
            "the GPU's NCCL channel counts and link domain (advisor.memory.nccl): sizes the "
            "communicator buffers of a multi-GPU layout; None: no NCCL term"
        ),
    )
    workspace_bytes: int = Field(
        default=32 * MIB + 1 * MIB,
        ge=0,
        description=(
            "torch's cuBLAS + cuBLASLt workspaces (inside its allocator); per GPU from "
            "advisor.memory.cuda_context.blas_workspace_bytes: two (handle, stream) pairs "
            "(forward and autograd's backward thread) x (32 MiB on compute capability 9.0, "
            "8 MiB + 128 KiB elsewhere, + 1 MiB cuBLASLt); 33 MiB where the GPU is unknown"
        ),
    )
    dropout_mask_bytes: int | None = Field(
        default=1,
        ge=1,
        description="bytes per element of a dropout mask: CUDA's native_dropout keeps a bool "
        "mask; None: the dropped tensor's dtype, as the CPU kernel keeps it (measured)",
    )
    caching_allocator: bool = Field(
        default=True,
        description=(
            "whether torch's CUDA caching allocator holds the tensors: its slack (reserved "
            "minus allocated: segment caching, fragmentation) is a share of the step's churn, "
            "advisor.memory.slack (fitted by benchmarks/allocator_grid.py); False on a CPU"
        ),
    )

    @classmethod
    def cpu(cls) -> DeviceOverheads:
        """No context, no workspace, no allocator slack: what the CPU tests measure."""
        return cls(
            cuda_context_bytes=0,
            workspace_bytes=0,
            caching_allocator=False,
            dropout_mask_bytes=None,
        )


class Phase(BaseModel):
    """One phase of a training step: the components alive in it and their sum."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="forward_end, loss_backward, layer_backward or optimizer_step")
    components: dict[str, int] = Field(description="component -> bytes alive in this phase")
    total_bytes: int = Field(description="the sum of the components")


class MemoryEstimate(BaseModel):
    """The per-device peak memory of one configuration, by named component and phase."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_bytes: int = Field(
        description="per-device peak: the largest phase (peak_phase), context included: "
        "reserved_bytes + cuda_context + nccl (what nvidia-smi shows; what the device must "
        "hold; what a fit test reads)"
    )
    allocated_bytes: int = Field(
        default=0,
        description="torch.cuda.max_memory_allocated's equivalent: the largest phase's tensors "
        "and the cuBLAS workspace (both from torch's caching allocator)",
    )
    reserved_bytes: int = Field(
        default=0,
        description="torch.cuda.max_memory_reserved's equivalent: allocated_bytes plus the "
        "caching allocator's slack (allocator_reserve); total_bytes minus the CUDA context and "
        "NCCL's buffers",
    )
    breakdown: dict[str, int] = Field(
        description="component -> full bytes, in COMPONENTS order, then any of "
        "SCHEDULE_COMPONENTS the schedule keeps (dualpipe_weights: DualPipe's second copy of "
        "the stage's parameters); components of different phases never all coexist, so the "
        "sum may exceed total_bytes"
    )
    phases: list[Phase] = Field(default_factory=list, description="each phase of the step")
    peak_phase: str = Field(default="", description="the phase whose sum is total_bytes")
    stack: Stack = Field(default=Stack.HF, description="the kernel stack the counts assume")
    parameters: int = Field(description="all parameters of the model")
    trainable_parameters: int = Field(description="parameters that get gradients")
    host_bytes: int = Field(default=0, description="what offload keeps in host (CPU) memory")
    nvme_bytes: int = Field(default=0, description="what NVMe offload keeps on NVMe")
    paged_bytes: int = Field(
        default=0,
        description="optimizer states in CUDA unified memory (bitsandbytes' paged optimizers): "
        "not in total_bytes (torch's allocator never sees them); the driver keeps on the device "
        "what the rest leaves free and pages the remainder to host memory (paged_residency)",
    )
    notes: list[str] = Field(default_factory=list, description="assumptions made")

    def phase(self, name: str) -> Phase:
        """The phase called ``name``."""
        return next(p for p in self.phases if p.name == name)

    @property
    def overhead_bytes(self) -> int:
        """The fixed device overheads (context, NCCL, workspace, allocator reserve) together."""
        return sum(self.breakdown[k] for k in OVERHEAD_COMPONENTS)


class MemoryTotals(NamedTuple):
    """What a fit test reads of an estimate: its peak and what it offloads."""

    total_bytes: int
    host_bytes: int
    nvme_bytes: int
    paged_bytes: int = 0
