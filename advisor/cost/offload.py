"""Host-link traffic: offloaded gradients, parameters and activations over PCIe (or NVMe),
and the migrations of paged optimizer states; with the link and host rates they run at."""

from __future__ import annotations

import math

from advisor.config import TrainingConfig
from advisor.cost.result import ComponentTime, Source
from advisor.cost.setting import (
    Setting,
    grad_bytes,
    shard,
    trainable_local,
    weight_bytes,
)
from advisor.memory import saved_activation_bytes

# Offloaded optimizer steps and transfers: PCIe 4.0 x16 sustains ~25 GB/s one way (PCIe 5.0
# on Hopper hosts ~50), and a host CPU Adam step runs at ~50 GB/s of state traffic per GPU's
# share of the host (ZeRO-Offload, Ren et al. 2021, sec. 5: CPU-Adam 6x faster than
# PyTorch's, ~1.5 ns/param for 16 bytes of states).
PCIE_GB_S = 25.0
PCIE5_GB_S = 50.0
HOST_STEP_GB_S = 50.0
# NVMe offload: one PCIe 4.0 NVMe drive per GPU reads ~6-7 GB/s (ZeRO-Infinity,
# Rajbhandari et al. 2021, sec. 6: 1.6-3 GB/s per GPU of a DGX-2 with its NVMe array; 6 GB/s
# is a modern drive's sequential rate).
NVME_GB_S = 6.0


def pcie(s: Setting) -> float:
    """Bytes/s one way over the host link (PCIe 5.0 on Hopper and later hosts)."""
    return (PCIE5_GB_S if s.hw is not None and s.hw.cc >= 9.0 else PCIE_GB_S) * 1e9


def offload(s: Setting, c: TrainingConfig, fwd: float, bwd: float) -> ComponentTime:
    """Gradients down and updated parameters up every step over PCIe; streamed weights
    every micro-step when the parameters live off the device, prefetched under compute
    (ZeRO-Offload, Ren et al. 2021; ZeRO-Infinity, Rajbhandari et al. 2021)."""
    savers = c.savers
    local = trainable_local(s, c)
    link = pcie(s)
    seconds = local * (grad_bytes(c.precision) + weight_bytes(c.precision)) / link
    if savers.optimizer_in_backward:
        seconds = max(seconds / max(s.stage_layers, 1.0), seconds - bwd)
    if savers.offload.params:
        wb = weight_bytes(c.precision)
        params = s.sh.params / (s.tp * s.pp) / shard(s, c, 3)
        source_bw = min(link, NVME_GB_S * 1e9) if savers.offload.nvme else link
        per_micro = 2 * params * wb / source_bw
        hidden = s.eff.overlap.value * (fwd + bwd)
        seconds += max(per_micro / max(s.stage_layers, 1.0), per_micro - hidden) * (
            c.batch.grad_accumulation
        )
    return ComponentTime(seconds=seconds, source=Source.ANALYTIC, detail="PCIe transfers")


def activation_offload(s: Setting, c: TrainingConfig, fwd: float, bwd: float) -> ComponentTime:
    """Saved activations to the host and back, what one micro-batch's compute does not hide,
    over the step's micro-batches."""
    # What the blocks save for backward goes to host memory in forward and comes
    # back in backward on a side stream (torchao/torchtune activation offloading):
    # the block inputs under full recomputation, everything a block keeps without it
    # (the memory model's count).
    act = saved_activation_bytes(s.spec, c, math.ceil(s.stage_layers), memo=s.memory_memo)
    moved = 2 * act / pcie(s)
    exposed = max(0.0, moved - s.eff.overlap.value * (fwd + bwd))
    return ComponentTime(
        seconds=exposed * c.batch.grad_accumulation,
        source=Source.ANALYTIC,
        detail="PCIe, overlapped",
    )


def paged_states(s: Setting, paged_traffic: float) -> ComponentTime:
    """A paged optimizer's state migrations between host and device in one step."""
    # bitsandbytes syncs the stream after every parameter's update (sync_gpu), so the
    # migrations of its paged states are not hidden behind compute.
    return ComponentTime(
        seconds=paged_traffic / pcie(s),
        source=Source.ANALYTIC,
        detail="unified-memory migration of paged optimizer states over PCIe",
    )
