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


class GpuSms(NamedTuple):
    """What the local-memory reservation of one GPU reads: SMs and resident threads."""

    sms: int
    threads_per_sm: int
    source: str


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
    "h100-sxm-80gb": GpuSms(132, 2048, "NVIDIA H100 whitepaper (2022): SXM5 132 SMs; " + _GUIDE),
    "h100-pcie-80gb": GpuSms(114, 2048, "NVIDIA H100 whitepaper (2022): PCIe 114 SMs; " + _GUIDE),
    "h200": GpuSms(132, 2048, "NVIDIA H200 (the H100 SXM5 die, 132 SMs); " + _GUIDE),
    "h800": GpuSms(132, 2048, "NVIDIA H800 SXM5 (the H100 SXM5 die, 132 SMs); " + _GUIDE),
    "h20": GpuSms(78, 2048, "NVIDIA H20 (GH100, 78 SMs as deviceQuery reports); " + _GUIDE),
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


def gpu_overheads(profile_id: str | None, link_domain: int = 8) -> DeviceOverheads:
    """A CUDA device's fixed overheads with the context of ``profile_id``'s GPU and its NCCL
    fabric (``link_domain`` GPUs on its NVLink or PCIe switch; advisor.memory.nccl)."""
    return DeviceOverheads(
        cuda_context_bytes=cuda_context_bytes(profile_id),
        nccl=nccl_fabric(profile_id, link_domain),
    )
