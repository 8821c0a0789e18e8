"""The CUDA context a training process holds on each device, per GPU: the driver's and
runtime's own structures, the local-memory reservation that scales with the GPU's SM count,
and the kernel images a training step loads (lazily since CUDA 11.7).

Nothing here is a tensor: ``torch.cuda.max_memory_reserved`` never sees it, ``nvidia-smi``
does, and an out-of-memory error counts it. The terms and their sources:

- **Local memory.** The driver reserves each thread's local memory (its stack) for every
  thread the device can hold at once: ``max resident threads per SM x SMs x bytes per
  thread`` (NVIDIA developer forum, "Local memory management", answer by NVIDIA staff:
  forums.developer.nvidia.com/t/local-memory-management/289339/9; ``cuCtxCreate``'s
  ``CU_CTX_LMEM_RESIZE_TO_MAX``), with the default stack of 1,024 bytes per thread
  (``cudaLimitStackSize``, CUDA Runtime API ``cudaDeviceGetLimit``). Resident threads per
  SM by compute capability: CUDA C++ Programming Guide, "Technical Specifications per
  Compute Capability"; SM counts: each GPU's whitepaper or datasheet (:data:`GPU_SMS`).
- **The bare context** (driver structures, the runtime, torch's first kernels) beyond that
  reservation, from two published ``nvidia-smi`` readings of a process that made one CUDA
  call and allocated nothing: 256 MiB on an RTX 3090 (82 SMs x 1,536 threads: 123 MiB of
  it local memory), torch 2.7.1+cu128 (github.com/invoke-ai/InvokeAI/issues/9413), and
  426 MiB on an RTX 6000 Ada (142 SMs x 1,536: 213 MiB), torch 2.10.0+cu130
  (github.com/unslothai/unsloth-zoo/pull/1053). The residuals are 133 and 213 MiB; the
  newer toolchain's 213 MiB is used.
- **Kernel images of a training step.** With lazy loading (CUDA 11.7+, torch sets
  ``CUDA_MODULE_LOADING=LAZY`` since 1.13; the driver's default since CUDA 12.2) a module
  is loaded on its first launch. A training step launches GEMMs, attention, norms,
  optimizer and communication kernels a bare context has not loaded; at most it loads
  what eager loading loads at start-up: 666,632,192 - 287,047,680 = 379,584,512 bytes in
  torch's measurement of the two modes (github.com/pytorch/pytorch/pull/86509). That
  upper end is counted: the fit test reads the whole context.

**cuBLAS workspaces** (inside torch's allocator, so in allocated and reserved): torch gives
each (cuBLAS handle, stream) pair its own workspace, ``CUBLAS_WORKSPACE_CONFIG``'s default
``:4096:8`` = 32 MiB on compute capability 9.0 and ``:4096:2:16:8`` = 8 MiB + 128 KiB on
every other GPU, and a 1 MiB cuBLASLt workspace per pair (``CUBLASLT_WORKSPACE_SIZE``
default) (pytorch ``aten/src/ATen/cuda/CublasHandlePool.cpp``: ``parseChosenWorkspaceSize``,
``parseCUDABlasLtWorkspaceSize``, ``setWorkspaceForHandle``). Handles are reserved per
thread, and autograd runs a CUDA backward on its own device thread: a training step holds
:data:`TRAINING_BLAS_HANDLES` pairs, the forward's (and the optimizer step's) and the
backward's, on the default stream.

Before CUDA 11.7 (eager loading) the context was over 1,000 MB (PyTorch issue 107667,
ptrblck); every profile here runs a CUDA 12 toolchain. AMD GPUs (ROCm/HIP) have no
published measurement the model uses: their context keeps the former 500 MiB assumption.
No figure here is verified on a GPU in this repository (``benchmarks/gpu_check.py``
measures it where one is lent).
"""

from __future__ import annotations

from typing import NamedTuple

from advisor.memory.nccl import nccl_fabric
from advisor.memory.results import DeviceOverheads
from advisor.units import MIB

#: Default per-thread stack (``cudaLimitStackSize``), bytes.
STACK_BYTES_PER_THREAD = 1024

#: Bare context beyond the local-memory reservation, bytes (see the module docstring).
BARE_CONTEXT_BYTES = 213 * MIB

#: Kernel images a training step may load lazily, bytes: eager minus lazy start-up.
STEP_KERNEL_IMAGE_BYTES = 666_632_192 - 287_047_680

#: Context assumed for a GPU this table does not know (AMD, or an unnamed device).
UNKNOWN_CONTEXT_BYTES = 500 * MIB

#: torch's cuBLAS workspace per (handle, stream): ``:4096:8`` on compute capability 9.0,
#: ``:4096:2:16:8`` elsewhere (CublasHandlePool.cpp ``parseChosenWorkspaceSize``).
CUBLAS_WORKSPACE_SM90 = 4096 * 1024 * 8
CUBLAS_WORKSPACE_OTHER = 4096 * 1024 * 2 + 16 * 1024 * 8
#: torch's cuBLASLt workspace per (handle, stream) (``CUBLASLT_WORKSPACE_SIZE`` 1024 KiB).
CUBLASLT_WORKSPACE = 1 * MIB
#: (handle, stream) pairs of a training step: the main thread's and autograd's device thread's.
TRAINING_BLAS_HANDLES = 2


class GpuSms(NamedTuple):
    """What the local-memory reservation of one GPU reads: SMs and resident threads (and
    whether it is compute capability 9.0, for torch's cuBLAS workspace)."""

    sms: int
    threads_per_sm: int
    source: str
    sm90: bool = False


_GUIDE = "CUDA C++ Programming Guide, Technical Specifications per Compute Capability"

#: SM counts and resident threads per SM of the NVIDIA profiles, by profile id.
GPU_SMS: dict[str, GpuSms] = {
    "v100-32gb": GpuSms(80, 2048, "NVIDIA Tesla V100 whitepaper (2017): 80 SMs; " + _GUIDE),
    "t4": GpuSms(40, 1024, "NVIDIA Turing architecture whitepaper (2018): T4 40 SMs; " + _GUIDE),
    "a100-sxm-40gb": GpuSms(108, 2048, "NVIDIA A100 whitepaper (2020): 108 SMs; " + _GUIDE),
    "a100-sxm-80gb": GpuSms(108, 2048, "NVIDIA A100 whitepaper (2020): 108 SMs; " + _GUIDE),
    "a100-pcie-80gb": GpuSms(108, 2048, "NVIDIA A100 whitepaper (2020): 108 SMs; " + _GUIDE),
    "a10g": GpuSms(80, 1536, "AWS G5 / NVIDIA A10G (GA102): 80 SMs; " + _GUIDE),
    "rtx-3090": GpuSms(82, 1536, "NVIDIA Ampere GA102 whitepaper (2020): 82 SMs; " + _GUIDE),
    "rtx-a6000": GpuSms(84, 1536, "NVIDIA Ampere GA102 whitepaper (2020): 84 SMs; " + _GUIDE),
    "rtx-4090": GpuSms(128, 1536, "NVIDIA Ada Lovelace whitepaper (2022): 128 SMs; " + _GUIDE),
    "l4": GpuSms(58, 1536, "NVIDIA Ada Lovelace whitepaper (2022): L4 58 SMs; " + _GUIDE),
    "l40s": GpuSms(142, 1536, "NVIDIA Ada Lovelace whitepaper (2022): 142 SMs; " + _GUIDE),
    "h100-sxm-80gb": GpuSms(
        132, 2048, "NVIDIA H100 whitepaper (2022): SXM5 132 SMs; " + _GUIDE, sm90=True
    ),
    "h100-pcie-80gb": GpuSms(
        114, 2048, "NVIDIA H100 whitepaper (2022): PCIe 114 SMs; " + _GUIDE, sm90=True
    ),
    "h200": GpuSms(132, 2048, "NVIDIA H200 (the H100 SXM5 die, 132 SMs); " + _GUIDE, sm90=True),
    "h800": GpuSms(
        132, 2048, "NVIDIA H800 SXM5 (the H100 SXM5 die, 132 SMs); " + _GUIDE, sm90=True
    ),
    "h20": GpuSms(
        78, 2048, "NVIDIA H20 (GH100, 78 SMs as deviceQuery reports); " + _GUIDE, sm90=True
    ),
    "b200": GpuSms(148, 2048, "NVIDIA B200 (two dies, 148 SMs as deviceQuery reports); " + _GUIDE),
    "gb200": GpuSms(148, 2048, "NVIDIA GB200's B200 GPUs (148 SMs each); " + _GUIDE),
    "b300": GpuSms(160, 2048, "NVIDIA Blackwell Ultra technical blog (2025): 160 SMs; " + _GUIDE),
    "gb300": GpuSms(160, 2048, "NVIDIA Blackwell Ultra technical blog (2025): 160 SMs; " + _GUIDE),
}


def local_memory_bytes(gpu: GpuSms) -> int:
    """The context's local-memory reservation: resident threads x the default stack."""
    return gpu.sms * gpu.threads_per_sm * STACK_BYTES_PER_THREAD


def cuda_context_bytes(profile_id: str | None) -> int:
    """The CUDA context of a training process on the GPU of ``profile_id``, bytes.

    Args:
        profile_id: a hardware profile's id; None or an id not in :data:`GPU_SMS` (AMD, a
            probed device) gets :data:`UNKNOWN_CONTEXT_BYTES`.
    """
    gpu = GPU_SMS.get(profile_id or "")
    if gpu is None:
        return UNKNOWN_CONTEXT_BYTES
    return BARE_CONTEXT_BYTES + local_memory_bytes(gpu) + STEP_KERNEL_IMAGE_BYTES


def blas_workspace_bytes(profile_id: str | None) -> int:
    """torch's cuBLAS + cuBLASLt workspaces of a training step on ``profile_id``'s GPU; a GPU
    the table does not know keeps :class:`DeviceOverheads`' default."""
    gpu = GPU_SMS.get(profile_id or "")
    if gpu is None:
        return int(DeviceOverheads.model_fields["workspace_bytes"].default)
    cublas = CUBLAS_WORKSPACE_SM90 if gpu.sm90 else CUBLAS_WORKSPACE_OTHER
    return TRAINING_BLAS_HANDLES * (cublas + CUBLASLT_WORKSPACE)


def gpu_overheads(profile_id: str | None, link_domain: int = 8) -> DeviceOverheads:
    """A CUDA device's fixed overheads with the context and cuBLAS workspaces of
    ``profile_id``'s GPU and its NCCL fabric (``link_domain`` GPUs on its NVLink or PCIe
    switch; advisor.memory.nccl)."""
    return DeviceOverheads(
        cuda_context_bytes=cuda_context_bytes(profile_id),
        workspace_bytes=blas_workspace_bytes(profile_id),
        nccl=nccl_fabric(profile_id, link_domain),
    )
