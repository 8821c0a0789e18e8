"""NCCL's device memory: the communicator buffers a multi-GPU training process holds outside
torch's caching allocator.

NCCL allocates its FIFOs with the CUDA driver (``cuMemCreate`` since NCCL 2.19), not through
torch's allocator: ``torch.cuda.max_memory_reserved`` never sees them, ``nvidia-smi`` does,
and an out-of-memory error counts them. A single-GPU run has no communicator and no term.
The figures are in ``benchmarks/data/nccl_memory.yaml`` with their sources; the terms:

- **A connection's buffers.** Each channel's connection to a peer holds one FIFO per
  protocol: LL ``8 lines x 512 threads x 8 steps x 16 B`` = 512 KiB, LL128 ``120 x 640 x 8 x
  8 B`` = 4,915,200 B, Simple ``NCCL_BUFFSIZE`` = 4 MiB (NCCL ``src/init.cc``
  ``DEFAULT_LL_BUFFSIZE``, ``DEFAULT_LL128_BUFFSIZE``, ``DEFAULT_BUFFSIZE``; ``src/include/
  device.h``; the NCCL docs' ``NCCL_BUFFSIZE`` default). The receiver allocates them (the
  Simple one on the sender under P2P read, A100 NVLink) beside a small send/recv control
  struct, each allocation rounded up to the 2 MiB ``cuMem`` granularity: 2 MiB on the
  sending rank and 10 MiB on the receiving one (or 6 + 6 under read), the two sizes NCCL's
  ALLOC log shows on 8 x H100 (github.com/NVIDIA/nccl/issues/1685). One ring channel gives
  each rank one send and one receive connection: :data:`RING_BYTES_PER_CHANNEL` = 12 MiB.
- **Channels.** A collective communicator (all-reduce, all-gather, reduce-scatter: DDP,
  ZeRO, FSDP, tensor parallelism) runs its rings on the channel count NCCL's topology
  search finds for the GPU's links (:data:`FABRICS`, each from a published NCCL_DEBUG=INFO
  log), the same count for a group whose ranks sit on different nodes. Ring connections
  are counted; the tree algorithm's extra connections (multi-node all-reduce at middle
  sizes) are not.
- **NVLink SHARP (NVLS).** On NVSwitch systems with multicast (Hopper and later), a
  communicator with more than two GPUs on the switch (vllm-project/vllm#9699: "NVLS is only
  enabled for n > 2") binds ``nvlsChannels x 2 x (chunk 128 KiB x 8 steps) x nHeads`` bytes
  of device memory (NCCL ``src/transport/nvls.cc``, ``ncclNvlsBufferSetup``; the chunk
  since NCCL 2.22), ``nHeads`` the GPUs on the switch: 16 x 2 x 1 MiB x 8 = 256 MiB on an
  8-GPU H100 board (16 NVLS channels: github.com/NVIDIA/nccl/issues/1453). NCCL 2.18-2.21
  used the 4 MiB Simple buffer there (2.25 GiB per GPU logged in vllm#9699); the profiles
  assume a current toolchain (torch 2.10, advisor.memory.cuda_context).
- **Point-to-point.** Pipeline parallelism sends activations to two neighbours on
  :data:`P2P_CHANNELS_PER_PEER` channels each. Expert parallelism's all-to-all connects every
  GPU on the NVLink domain on :data:`ALLTOALL_CHANNELS_PER_PEER` channels (32 on 8 x H100,
  issue 1685: its +3.28 GB after the first ``all_to_all_single`` is 7 peers x 32 channels x
  12 MiB = 2.82 GB, 14% under); peers over the network share one buffer per rank (NCCL
  issue 1450), not counted.
- **Communicators.** torch creates one NCCL communicator per process group that
  communicates; each has its own buffers (NCCL issue 986: "More communicators = more memory
  used", unless split with shared resources, torch's default is not). Counted: the data x
  context parallel group (gradients, ZeRO/FSDP), tensor parallelism, context parallelism,
  pipeline neighbours and the expert all-to-all, each where its degree exceeds 1; hybrid
  sharding's shard and replicate groups apart.

Not modelled: NCCL's proxy and host-pinned FIFOs (host memory), DeepEP/NVSHMEM buffers,
RCCL on AMD GPUs (no published figure used: no term). No figure is verified on a GPU in
this repository.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import MoeDispatcher, ParallelLayout, Sharding
from advisor.units import MIB

#: The three protocols' FIFOs of one connection, bytes (NCCL src/init.cc defaults).
LL_BYTES = 8 * 512 * 8 * 16
LL128_BYTES = 120 * 640 * 8 * 8
SIMPLE_BYTES = 4 * MIB
#: The granularity NCCL's cuMem allocations round up to (the ALLOC log's sizes).
CUMEM_GRANULARITY = 2 * MIB
#: NCCL's ncclSendMem / ncclRecvMem control structs: under 4 KiB each (src/include/comm.h);
#: they only matter through the rounding.
CONTROL_BYTES = 4096


def _rounded(n: int) -> int:
    return math.ceil(n / CUMEM_GRANULARITY) * CUMEM_GRANULARITY


#: One rank's share of one ring channel: its send side (control struct) and its receive side
#: (control struct + LL + LL128 + Simple), each rounded to the cuMem granularity: 2 + 10 MiB.
RING_BYTES_PER_CHANNEL = _rounded(CONTROL_BYTES) + _rounded(
    CONTROL_BYTES + LL_BYTES + LL128_BYTES + SIMPLE_BYTES
)
#: NVLS: the chunk (NCCL_NVLS_CHUNKSIZE default 128 KiB) x NCCL_STEPS (8), per channel and
#: direction (reduce, broadcast) and per head.
NVLS_BUFFER_BYTES = 128 * 1024 * 8
#: Point-to-point channels per peer (NCCL_DEBUG=INFO "2 p2p channels per peer" on H100 and
#: H20: github.com/NVIDIA/nccl/issues/1453, /1189).
P2P_CHANNELS_PER_PEER = 2
#: Channels an all-to-all opens per peer on the NVLink domain (32 on 8 x H100: NCCL issue
#: 1685's INIT log, "Channel 00/1 ... 31/1 : 0[0] -> 2[2] via P2P/CUMEM").
ALLTOALL_CHANNELS_PER_PEER = 32
#: NVLS needs more than this many GPUs of a communicator on the switch (vllm#9699).
NVLS_MIN_LOCAL = 3


class NcclFabric(BaseModel):
    """What NCCL's buffers on one GPU read of its links."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int = Field(ge=1, description="collective (ring) channels NCCL opens")
    nvls_channels: int = Field(
        default=0, ge=0, description="NVLS channels (0: no NVLink SHARP multicast)"
    )
    link_domain: int = Field(
        default=8, ge=1, description="GPUs joined by NVLink/the PCIe switch (a node, or a rack)"
    )
    source: str = Field(description="where the channel counts were read")


_H100 = (
    "NCCL_DEBUG=INFO on 8 x H100 SXM: '16 coll channels, 16 collnet channels, 16 nvls "
    "channels, 16 p2p channels, 2 p2p channels per peer' (github.com/NVIDIA/nccl/issues/1453)"
)
_BLACKWELL = (
    _H100 + "; Blackwell keeps Hopper's 18 NVLinks per GPU and 'the number of NCCL channels "
    "is directly related to that' (github.com/NVIDIA/nccl/issues/1429, NVIDIA): Hopper's "
    "counts assumed, no Blackwell log found"
)
_PCIE = (
    "NCCL_DEBUG=INFO on 2 PCIe GPUs: '4 coll channels, ..., 0 nvls channels' "
    "(github.com/NVIDIA/nccl/issues/1706); an upper end where P2P is off (NCCL's SHM "
    "transport keeps its FIFOs in host memory)"
)

#: PCIe-only profiles (no NVLink switch).
_PCIE_IDS = (
    "a100-pcie-80gb",
    "h100-pcie-80gb",
    "a10g",
    "l4",
    "l40s",
    "t4",
    "colab-t4",
    "kaggle-t4x2",
    "rtx-3090",
    "rtx-4090",
    "rtx-a6000",
)
_A100 = NcclFabric(
    channels=24,
    source="NCCL_DEBUG=INFO on HGX A100 (NVSwitch): 'Channel 23/24', P2P/IPC/read "
    "(github.com/NVIDIA/nccl-tests/issues/100)",
)
_HOPPER = NcclFabric(channels=16, nvls_channels=16, source=_H100)
_B = NcclFabric(channels=16, nvls_channels=16, source=_BLACKWELL)

#: The NCCL channel counts of the NVIDIA profiles, by profile id.
FABRICS: dict[str, NcclFabric] = {
    **{pid: NcclFabric(channels=4, source=_PCIE) for pid in _PCIE_IDS},
    "a100-sxm-40gb": _A100,
    "a100-sxm-80gb": _A100,
    "h100-sxm-80gb": _HOPPER,
    "h200": NcclFabric(channels=16, nvls_channels=16, source=_H100 + " (the same board)"),
    "h800": NcclFabric(
        channels=16,
        source="NCCL_DEBUG=INFO on 8 x H800: '16 coll channels, 0 nvls channels' "
        "(github.com/NVIDIA/nccl/issues/892)",
    ),
    "h20": NcclFabric(
        channels=8,
        source="NCCL_DEBUG=INFO on H20: '8 coll channels, 0 collnet channels, 0 nvls "
        "channels, 8 p2p channels, 2 p2p channels per peer' (github.com/NVIDIA/nccl/issues/1189)",
    ),
    "b200": _B,
    "gb200": _B,
    "b300": _B,
    "gb300": _B,
    "v100-32gb": NcclFabric(
        channels=6,
        source="NCCL's graph dump on 4 x V100 (NVLink): nchannels 6 "
        "(github.com/NVIDIA/nccl/issues/713)",
    ),
}


def nccl_fabric(profile_id: str | None, link_domain: int = 8) -> NcclFabric | None:
    """The NCCL fabric of ``profile_id``'s GPU with ``link_domain`` GPUs on its links; None
    for a GPU the table does not know (AMD's RCCL, an unnamed device)."""
    fabric = FABRICS.get(profile_id or "")
    if fabric is None:
        return None
    return fabric.model_copy(update={"link_domain": max(link_domain, 1)})


def _collective(fabric: NcclFabric, size: int, local: int) -> int:
    """One collective communicator of ``size`` ranks, ``local`` of them on the link domain."""
    if size <= 1:
        return 0
    ring = fabric.channels * RING_BYTES_PER_CHANNEL
    nvls = 0
    if fabric.nvls_channels and local >= NVLS_MIN_LOCAL:
        nvls = fabric.nvls_channels * 2 * NVLS_BUFFER_BYTES * local
    return ring + nvls


def nccl_parts(layout: ParallelLayout, fabric: NcclFabric | None) -> dict[str, int]:
    """NCCL's device bytes on one rank of ``layout``, by process group (empty on one GPU or
    a fabric the table does not know).

    The groups are laid out as Megatron-Core and torchtitan order them, tensor parallelism
    innermost, then context, then data parallelism, so a group's ranks on the link domain
    are its degree capped by what the inner groups leave of the domain.
    """
    if fabric is None or layout.world_size == 1:
        return {}
    domain = fabric.link_domain
    tp, cp, pp = layout.tensor_parallel, layout.context_parallel, layout.pipeline_parallel
    ep = layout.expert_parallel
    parts: dict[str, int] = {}
    parts["tensor"] = _collective(fabric, tp, min(tp, domain))
    parts["context"] = _collective(fabric, cp, min(cp, max(domain // tp, 1)))
    dp_cp = layout.dp_cp
    data_local = max(domain // tp, 1)
    shard = layout.shard_group or min(dp_cp, 8)
    if layout.sharding is Sharding.HSDP and 1 < shard < dp_cp:
        # Hybrid sharding: a shard group (gathers, reduce-scatters) and a replicate group
        # (all-reduce across shard groups) are two communicators (torch's 2-D device mesh).
        parts["data"] = _collective(fabric, shard, min(shard, data_local))
        replicate = dp_cp // shard
        parts["replicate"] = _collective(fabric, replicate, min(replicate, data_local // shard))
    else:
        parts["data"] = _collective(fabric, dp_cp, min(dp_cp, data_local))
    # Pipeline neighbours: one send and one receive peer on P2P channels.
    peers = 2 if pp > 2 else 1 if pp == 2 else 0
    parts["pipeline"] = peers * P2P_CHANNELS_PER_PEER * RING_BYTES_PER_CHANNEL
    if ep > 1:
        if layout.moe_dispatcher is MoeDispatcher.ALLTOALL:
            local_peers = min(ep, max(domain // layout.expert_tp, 1)) - 1
            parts["expert"] = local_peers * ALLTOALL_CHANNELS_PER_PEER * RING_BYTES_PER_CHANNEL
        elif layout.moe_dispatcher is MoeDispatcher.ALLGATHER:
            parts["expert"] = _collective(fabric, ep, min(ep, domain))
    return {k: v for k, v in parts.items() if v}


def nccl_bytes(layout: ParallelLayout, fabric: NcclFabric | None) -> int:
    """NCCL's device bytes on one rank of ``layout`` (:func:`nccl_parts` together)."""
    return sum(nccl_parts(layout, fabric).values())


def nccl_note(layout: ParallelLayout, fabric: NcclFabric | None) -> str | None:
    """One line on what the NCCL term counts, or None where it is 0."""
    parts = nccl_parts(layout, fabric)
    if not parts or fabric is None:
        return None
    each = ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in parts.items())
    how = [
        f"{fabric.channels} ring channels x {RING_BYTES_PER_CHANNEL // MIB} MiB per communicator"
    ]
    if fabric.nvls_channels:
        how.append(f"NVLS {fabric.nvls_channels} channels x 2 MiB per GPU on the switch")
    if "expert" in parts and layout.moe_dispatcher is MoeDispatcher.ALLTOALL:
        how.append(
            f"the expert all-to-all {ALLTOALL_CHANNELS_PER_PEER} channels x "
            f"{RING_BYTES_PER_CHANNEL // MIB} MiB per NVLink peer (measured on H100)"
        )
    return (
        f"NCCL buffers outside torch's allocator ({each}): {'; '.join(how)} (advisor.memory.nccl)"
    )
