"""The hardware a plan is for: from a datasheet profile or the local probe, with its host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from advisor.errors import UserError
from advisor.hardware.profiles import DeviceKind, HardwareProfile, PeakTflops, ProbeReport
from advisor.units import GIB


class Target(BaseModel):
    """The hardware a recommendation is for, per device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: Literal["probe", "profile"]
    device_kind: DeviceKind
    device_memory_bytes: int
    host_memory_bytes: int = Field(description="host RAM available per device for offload")
    nvme_bytes: int = Field(default=0, description="NVMe available per device for offload")
    host_source: str = Field(default="", description="where the host figures come from")
    host_gpus: int = Field(
        default=1, ge=1, description="devices that share one host's RAM and NVMe (its node)"
    )
    compute_capability: float = 0.0
    fast_bf16: bool
    fast_fp16: bool
    gpus_per_node: int
    nodes: int = 1
    interconnect_gb_s: float = Field(description="slowest link of the all-reduce, per device")
    intra_node_gb_s: float = Field(default=0.0, description="the link inside a node, per device")
    nvlink_domain: int = Field(
        default=0,
        ge=0,
        description="devices joined at intra_node_gb_s across nodes (an NVL72 rack); 0: the node",
    )
    profile: HardwareProfile = Field(description="datasheet figures for analytic costs")
    memory_budget_applied: bool = False


class HostOverride(BaseModel):
    """``--host-memory`` / ``--nvme``: the planned node's host, replacing the profile's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_bytes: int | None = Field(default=None, ge=0, description="host RAM per node")
    nvme_bytes: int | None = Field(default=None, ge=0, description="NVMe per node")


def host_for(target: Target, devices: int) -> tuple[int, int]:
    """Host RAM and NVMe per device when ``devices`` devices are planned on hosts like the
    target's: a host is shared by as many of them as it holds (a 4-GPU g4dn.12xlarge gives
    one planned T4 all of its 192 GiB, each of 8 planned T4s a quarter)."""
    sharing = min(max(target.gpus_per_node, 1), target.host_gpus)
    ram, nvme = target.host_memory_bytes * sharing, target.nvme_bytes * sharing
    share = min(max(devices, 1), target.host_gpus)
    return ram // share, nvme // share


def _host_of(
    profile: HardwareProfile, gpus: int, override: HostOverride | None
) -> tuple[int, int, str]:
    """Host RAM and NVMe per planned device, and the sentence saying where they come from.

    The node's host is shared by the GPUs planned on it: one GPU planned on an 8-GPU server
    may use all of its RAM (as ZeRO-Offload's single-GPU runs did, Ren et al. 2021).
    """
    share = max(gpus, 1)
    override = override or HostOverride()
    host = profile.host
    if host is not None:
        # NOTE: a planned node larger than the host (an NVL72 rack as --gpus 72 over 4-GPU
        # trays) holds several hosts; each GPU still shares only its own host.
        hosts = max(1.0, share / host.gpus)
        ram, nvme = int(host.memory_gib * GIB * hosts), int((host.nvme_tb or 0) * 1e12 * hosts)
        said = f"{host.name}: {host.memory_gib:g} GiB RAM, {host.nvme_tb or 0:g} TB NVMe"
        said += f" ({host.source})"
    elif profile.host_memory_gib is not None:
        ram, nvme = int(profile.host_memory_gib * GIB * share), 0
        said = f"{profile.host_memory_gib:g} GiB of host RAM per GPU (profile)"
    else:
        # NOTE: no documented host: assume twice the device memory per GPU, and say so.
        ram, nvme = int(profile.memory_gib * 2 * GIB * share), 0
        said = "assumed 2x device memory of host RAM per GPU (the profile names no host)"
    if override.memory_bytes is not None:
        ram, said = override.memory_bytes, "--host-memory"
    if override.nvme_bytes is not None:
        nvme = override.nvme_bytes
        said += ", --nvme"
    return ram // share, nvme // share, said


def target_from_profile(
    profile: HardwareProfile,
    *,
    gpus: int,
    nodes: int,
    memory_budget: int | None,
    host: HostOverride | None = None,
) -> Target:
    """A target from a datasheet profile (``--hardware``), on the profile's documented host
    unless ``host`` overrides it."""
    kind = profile.kind
    if kind is DeviceKind.CPU and (gpus > 1 or nodes > 1):
        raise UserError(
            f"--gpus/--nodes plan accelerators, but {profile.id} is a CPU profile",
            "drop --gpus/--nodes, or pick a GPU profile (optadvise profiles list)",
        )
    domain = _nvlink_domain(profile)
    # NOTE: a data-parallel group inside one multi-node NVLink domain never touches a NIC.
    link = _interconnect(profile, 1 if gpus * nodes <= domain else nodes)
    ram, nvme, said = _host_of(profile, gpus, host)
    # How many devices one such host holds: the profile's host's GPUs, the planned node's
    # under --host-memory (given per node), one where the profile gives RAM per GPU.
    host_gpus = profile.host.gpus if profile.host is not None else 1
    if host is not None and host.memory_bytes is not None:
        host_gpus = max(gpus, 1)
    if kind is DeviceKind.CPU:
        ram, nvme, said = 0, 0, "none: on a CPU the device memory is the host memory"
    cc = profile.cc if kind is DeviceKind.CUDA else 0.0
    return Target(
        name=profile.name,
        source="profile",
        device_kind=kind,
        device_memory_bytes=profile.memory_bytes if memory_budget is None else memory_budget,
        host_memory_bytes=ram,
        nvme_bytes=nvme,
        host_source=said,
        host_gpus=host_gpus,
        compute_capability=cc,
        fast_bf16=_fast(profile.peak_tflops.bf16, profile.peak_tflops.fp32),
        fast_fp16=_fast(profile.peak_tflops.fp16, profile.peak_tflops.fp32),
        gpus_per_node=0 if kind is DeviceKind.CPU else gpus,
        nodes=nodes,
        interconnect_gb_s=link if gpus * nodes > 1 else 0.0,
        intra_node_gb_s=_interconnect(profile, 1) if gpus > 1 else 0.0,
        nvlink_domain=domain,
        profile=profile,
        memory_budget_applied=memory_budget is not None,
    )


def _nvlink_domain(profile: HardwareProfile) -> int:
    """The profile's NVLink domain where it spans nodes (an NVL72 rack: 72 GPUs over 4-GPU
    trays), else 0: a board's domain is its node, so fewer GPUs planned per node leave only
    those on NVLink. Profiles without ``nvlink_domain`` keep the node as their domain."""
    if profile.nvlink_domain is None or profile.efficiency is None:
        return 0
    if profile.nvlink_domain > profile.efficiency.gpus_per_node:
        return profile.nvlink_domain
    return 0


def _fast(peak16: float | None, fp32: float) -> bool:
    return peak16 is not None and peak16 >= 0.9 * fp32


def _interconnect(profile: HardwareProfile, nodes: int) -> float:
    if nodes > 1 and profile.inter_node is not None:
        return profile.inter_node.bandwidth_gb_s
    if profile.intra_node is not None:
        return profile.intra_node.bandwidth_gb_s
    return 25.0  # NOTE: 100 GbE, bidirectional, when a profile names no link


# NOTE: analytic CPU peak = cores x clock x fp32 FLOPs per cycle per core: two FMA units of
# 8 (AVX2) or 16 (AVX-512) lanes give 32 or 64 FLOPs/cycle. Memory bandwidth is not
# readable without measuring; 10 GB/s per core is a conservative assumption (a one-thread
# 1 GiB copy ran at 13.1 GB/s on this machine kind under load, 2026-12-07:
# benchmarks/results/cpu_efficiency.json). Both are labelled analytic.
_CPU_GB_S_PER_CORE = 10.0


def cpu_profile_from_probe(report: ProbeReport, clock_ghz: float | None) -> HardwareProfile:
    """A synthetic datasheet for the local CPU (used only for analytic costs)."""
    cores = report.cpu.physical_cores or report.cpu.logical_cores
    cores = min(cores, report.cpu.usable_cores)
    lanes = 64 if report.cpu.features.get("avx512f") else 32
    ghz = clock_ghz or 2.5
    fp32 = cores * ghz * lanes / 1000
    bf16 = fp32 if report.cpu.fast_bf16 else fp32 / 100
    fp16 = fp32 if report.cpu.fast_fp16 else fp32 / 100
    return HardwareProfile(
        id="local-cpu",
        name=f"{report.cpu.model} ({cores} cores)",
        kind=DeviceKind.CPU,
        vendor="local",
        memory_gib=report.memory.effective_limit_bytes / GIB,
        memory_bandwidth_gb_s=_CPU_GB_S_PER_CORE * cores,
        peak_tflops=PeakTflops(fp32=fp32, bf16=bf16, fp16=fp16),
        cores=cores,
        notes=f"synthetic: {cores} cores x {ghz:g} GHz x {lanes} FLOP/cycle",
        sources=["probe"],
    )


def match_gpu_profile(
    name: str, memory_bytes: int | None, profiles: Iterable[HardwareProfile]
) -> HardwareProfile | None:
    """The datasheet profile of a probed GPU, from its NVML name and memory size.

    Every model token of the profile id must appear in the name ("h100", "a100", "4090");
    the form factor decides between variants: NVML names PCIe cards "... PCIe" and leaves it
    out for SXM parts ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB").
    """
    lowered = name.lower().replace("nvidia", "").replace("geforce", "").replace("-", " ")
    squashed = lowered.replace(" ", "")
    pcie = "pcie" in squashed
    best: tuple[int, str, HardwareProfile] | None = None
    for p in profiles:
        if p.kind is DeviceKind.CPU:
            continue
        tokens = [t for t in p.id.split("-") if not t.endswith("gb")]
        model = [t for t in tokens if t not in ("sxm", "pcie")]
        if not model or not all(t in squashed for t in model):
            continue
        score = 2 * len(model)
        if "pcie" in tokens:
            score += 2 if pcie else -3
        elif "sxm" in tokens:
            score += -3 if pcie else 2
        if memory_bytes and abs(p.memory_bytes - memory_bytes) / p.memory_bytes < 0.1:
            score += 2
        if best is None or (score, p.id) > (best[0], best[1]):
            best = (score, p.id, p)
    return best[2] if best else None


def closest_gpu_profile(
    compute_capability: str | None, memory_bytes: int | None, profiles: Iterable[HardwareProfile]
) -> HardwareProfile | None:
    """The GPU profile of the same architecture (compute capability) nearest in memory size,
    for a local GPU no profile names."""
    if not compute_capability:
        return None
    cc = float(compute_capability)
    gpus = [p for p in profiles if p.kind is DeviceKind.CUDA and p.compute_capability]
    if not gpus:
        return None
    mem = memory_bytes or 0
    return min(gpus, key=lambda p: (abs(p.cc - cc), abs(p.memory_bytes - mem), p.id))


def target_from_probe(
    report: ProbeReport,
    profiles: dict[str, HardwareProfile],
    *,
    gpus: int | None,
    nodes: int,
    memory_budget: int | None,
    clock_ghz: float | None = None,
    host: HostOverride | None = None,
) -> Target:
    """A target from the local probe (GPU 0 stands for every GPU of the node); the host is
    this machine's real RAM unless ``host`` overrides it."""
    host = host or HostOverride()
    ram = report.memory.effective_available_bytes
    if not report.gpus:
        if (gpus or 1) > 1 or nodes > 1:
            raise UserError(
                "no GPU found on this machine, so --gpus/--nodes cannot be planned here",
                "use --hardware NAME to plan for another machine (optadvise profiles list)",
            )
        profile = cpu_profile_from_probe(report, clock_ghz)
        return Target(
            name=profile.name,
            source="probe",
            device_kind=DeviceKind.CPU,
            device_memory_bytes=memory_budget or ram,
            host_memory_bytes=0,
            host_source="none: on a CPU the device memory is the host memory",
            fast_bf16=report.cpu.fast_bf16,
            fast_fp16=report.cpu.fast_fp16,
            gpus_per_node=0,
            interconnect_gb_s=0.0,
            profile=profile,
            memory_budget_applied=memory_budget is not None,
        )
    g = report.gpus[0]
    count = gpus or len(report.gpus)
    if count > len(report.gpus) and nodes == 1:
        raise UserError(
            f"--gpus {count} but this machine has {len(report.gpus)}",
            "use --hardware NAME to plan for a bigger machine",
        )
    matched = match_gpu_profile(g.name, g.memory_total_bytes, profiles.values())
    name = g.name
    if matched is None:
        matched = closest_gpu_profile(g.compute_capability, g.memory_total_bytes, profiles.values())
        if matched is None:
            raise UserError(
                f"no datasheet profile is close to the local GPU {g.name!r}",
                "pass --hardware NAME for the closest profile (optadvise profiles list)",
            )
        # NOTE: said in the report's hardware name, so analytic costs are never passed off
        # as this GPU's own datasheet.
        name = f"{g.name} (analytic costs from the {matched.id} datasheet)"
    profile = matched
    kind = (
        DeviceKind.MPS
        if g.backend == "mps"
        else (DeviceKind.ROCM if report.accelerator == "rocm" else DeviceKind.CUDA)
    )
    cc = float(g.compute_capability) if g.compute_capability else 0.0
    link = _interconnect(profile, nodes)
    node_ram = ram if host.memory_bytes is None else host.memory_bytes
    # NOTE: the probe cannot see free NVMe space meant for offload; only --nvme grants it.
    node_nvme = host.nvme_bytes or 0
    said = "this machine (probe)" if host.memory_bytes is None else "--host-memory"
    return Target(
        name=name,
        source="probe",
        device_kind=kind,
        device_memory_bytes=memory_budget or g.memory_total_bytes or profile.memory_bytes,
        host_memory_bytes=node_ram // max(count, 1),
        nvme_bytes=node_nvme // max(count, 1),
        host_source=said,
        host_gpus=max(count, 1),
        compute_capability=cc,
        fast_bf16=g.bf16 or kind is not DeviceKind.CUDA,
        fast_fp16=True,
        gpus_per_node=count,
        nodes=nodes,
        interconnect_gb_s=link if count * nodes > 1 else 0.0,
        intra_node_gb_s=_interconnect(profile, 1) if count > 1 else 0.0,
        profile=profile,
        memory_budget_applied=memory_budget is not None,
    )
