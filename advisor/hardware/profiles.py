"""Hardware data: datasheet profiles (profiles/hardware/*.yaml) and the probe's report."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from advisor.data.cache import cached_by_content, profile_sources
from advisor.data.resources import profiles_dir
from advisor.data.yamlio import YamlError, parse_yaml
from advisor.errors import DataError, UserError
from advisor.units import GIB

_ID = r"^[a-z0-9]+(-[a-z0-9]+)*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class DeviceKind(str, Enum):
    """The kind of device a training step runs on."""

    CPU = "cpu"
    CUDA = "cuda"
    ROCM = "rocm"
    MPS = "mps"


class PeakTflops(_Frozen):
    """Dense (no structured sparsity) peak throughput in TFLOP/s, per datatype."""

    fp32: float = Field(gt=0)
    tf32: float | None = Field(default=None, gt=0)
    fp16: float | None = Field(default=None, gt=0)
    bf16: float | None = Field(default=None, gt=0)
    fp8: float | None = Field(default=None, gt=0)
    mxfp8: float | None = Field(
        default=None, gt=0, description="OCP MXFP8 (block-scaled FP8; Blackwell, CDNA 4)"
    )
    fp6: float | None = Field(default=None, gt=0, description="FP6/MXFP6 (Blackwell, CDNA 4)")
    fp4: float | None = Field(
        default=None, gt=0, description="FP4: NVFP4 on Blackwell, MXFP4 on CDNA 4"
    )


class Interconnect(_Frozen):
    """A link between devices, with its datasheet bandwidth."""

    name: str
    bandwidth_gb_s: float = Field(
        gt=0, description="aggregate bidirectional bandwidth per device, GB/s (datasheet)"
    )


class Host(_Frozen):
    """The typical machine a profile's devices sit in: what offload plans are judged against.

    Per node; the planner divides it among the GPUs it plans on that node.
    """

    name: str
    memory_gib: float = Field(gt=0, description="host RAM of the node, GiB")
    nvme_tb: float | None = Field(
        default=None, ge=0, description="local NVMe of the node, TB (ZeRO-Infinity offload)"
    )
    gpus: int = Field(default=1, ge=1, description="accelerators that share this host")
    source: str = Field(min_length=3, description="the vendor page, or 'assumption: ...'")


class Generation(str, Enum):
    """A GPU architecture generation: the step-time model's efficiencies are fitted per one."""

    VOLTA = "volta"
    TURING = "turing"
    AMPERE = "ampere"
    ADA = "ada"
    HOPPER = "hopper"
    BLACKWELL = "blackwell"
    CDNA3 = "cdna3"
    CDNA4 = "cdna4"
    CPU = "cpu"


class Fitted(_Frozen):
    """One constant of the step-time model, with where it comes from."""

    value: float = Field(gt=0)
    source: str = Field(min_length=1, description="the measurement or fit it comes from")


class AttentionEfficiency(_Frozen):
    """An attention kernel's throughput as a share of the dense peak:
    ``max x s / (s + s0)`` (``s0_causal`` for causal masks), scaled by head dimension
    ``d / (d + d0)`` relative to d = 128 (FlashAttention-2/3 papers' kernel figures).

    Without ``bwd_max`` the curve is the forward+backward pass's (FLOPs counted as 3.5x the
    forward's). With it, (max, s0, s0_causal, d0) are the forward pass's and the ``bwd_*``
    fields the backward pass's, each fitted to the kernel's own forward and backward figures.
    """

    max: float = Field(gt=0, le=1)
    s0: float = Field(ge=0, description="sequence length at half of max, no mask")
    s0_causal: float = Field(ge=0, description="sequence length at half of max, causal")
    d0: float = Field(default=32.0, ge=0, description="head dimension at half of max")
    bwd_max: float | None = Field(
        default=None, gt=0, le=1, description="backward pass's share of the peak at long s"
    )
    bwd_s0: float | None = Field(
        default=None, ge=0, description="backward: sequence length at half of bwd_max, no mask"
    )
    bwd_s0_causal: float | None = Field(
        default=None, ge=0, description="backward: sequence length at half of bwd_max, causal"
    )
    bwd_d0: float | None = Field(
        default=None, ge=0, description="backward: head dimension at half of bwd_max"
    )
    source: str = Field(min_length=1)


class GpuEfficiency(_Frozen):
    """Achievable fractions of a GPU's datasheet figures, fitted per device generation to
    public measurements (benchmarks/gpu_fit.py writes them; each names its source)."""

    generation: Generation
    gemm_max: Fitted = Field(description="dense GEMM share of the peak at large shapes")
    gemm_m0: Fitted = Field(description="tokens (GEMM rows) at which efficiency halves")
    gemm_n0: Fitted = Field(description="layer width (GEMM columns/depth) at which it halves")
    bandwidth: Fitted = Field(
        description="share of the datasheet memory bandwidth that "
        "elementwise, norm and optimizer kernels reach"
    )
    comm_intra: Fitted = Field(description="NCCL bus bandwidth / unidirectional link, in a node")
    comm_inter: Fitted = Field(description="NCCL bus bandwidth / per-GPU NIC, across nodes")
    overlap: Fitted = Field(description="share of overlappable compute that hides collectives")
    tp_overlap: Fitted | None = Field(
        default=None,
        description="share of the tensor-parallel collectives that overlapped (async) TP "
        "hides behind the dependent GEMMs (absent: all exposed)",
    )
    gemm_fp8: Fitted | None = Field(
        default=None,
        description="share of the BF16 GEMM efficiency that FP8 GEMMs keep at the FP8 peak "
        "(absent: FP8 GEMMs are assumed no faster than BF16)",
    )
    attention: dict[str, AttentionEfficiency] = Field(
        description="per kernel: fa2, fa3, cudnn, mem-efficient, eager"
    )
    gpus_per_node: int = Field(default=8, ge=1, description="devices one node (host) holds")

    def carried_over(self) -> str:
        """One sentence when these constants were carried over from another generation (no
        measurement of this one is fitted; benchmarks/gpu_fit.py says so in each source),
        else an empty string."""
        prefix = "carried over from the "
        # The shape saturation is always carried over; the GEMM ceiling may name a
        # measurement of this part (its MAMF).
        said = self.gemm_m0.source
        if not said.startswith(prefix):
            return ""
        origin = said[len(prefix) :].split(" ", 1)[0]
        return (
            f"step-time efficiencies carried over from the {origin} block: none is fitted on "
            f"{self.generation.value} (benchmarks/gpu_fit.py)"
        )


class HardwareProfile(_Frozen):
    """One accelerator (or CPU machine) as its datasheet describes it."""

    id: str = Field(pattern=_ID)
    name: str
    kind: DeviceKind
    vendor: str
    memory_gib: float = Field(gt=0, description="device memory (GPU) or RAM (CPU), GiB")
    memory_bandwidth_gb_s: float = Field(gt=0, description="peak memory bandwidth, GB/s")
    peak_tflops: PeakTflops
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    cores: int | None = Field(default=None, gt=0, description="CPU cores (CPU profiles)")
    intra_node: Interconnect | None = None
    inter_node: Interconnect | None = None
    host_memory_gib: float | None = Field(
        default=None, gt=0, description="host RAM of a typical node, for offload planning"
    )
    tdp_watts: float | None = Field(default=None, gt=0)
    nvlink_domain: int | None = Field(
        default=None,
        ge=1,
        description="GPUs one scale-up fabric (NVLink/NVSwitch, Infinity Fabric) joins at the "
        "intra_node bandwidth: 8 on an HGX board, 72 in an NVL72 rack (default: the "
        "efficiency block's gpus_per_node)",
    )
    host: Host | None = Field(default=None, description="the typical node's host RAM and NVMe")
    notes: str = ""
    sources: list[str] = Field(min_length=1)
    figure_sources: dict[str, str] = Field(
        default_factory=dict,
        description="per datasheet figure (memory_gib, memory_bandwidth_gb_s, "
        "peak_tflops.<dtype>, intra_node, inter_node, tdp_watts, nvlink_domain): where it is "
        "printed (URL, document title, date) and whether it is dense",
    )
    efficiency: GpuEfficiency | None = Field(
        default=None, description="fitted step-time efficiencies (GPU profiles)"
    )

    @model_validator(mode="after")
    def _check_figure_sources(self) -> HardwareProfile:
        unknown = sorted(set(self.figure_sources) - set(self.datasheet_figures()))
        if unknown:
            raise ValueError(f"figure_sources names figures the profile does not set: {unknown}")
        return self

    def datasheet_figures(self) -> list[str]:
        """The datasheet figures this profile sets, as ``figure_sources`` keys."""
        figures = ["memory_gib", "memory_bandwidth_gb_s"]
        peaks = self.peak_tflops.model_dump(exclude_none=True)
        figures += [f"peak_tflops.{k}" for k in peaks]
        for name in ("intra_node", "inter_node", "tdp_watts", "nvlink_domain"):
            if getattr(self, name) is not None:
                figures.append(name)
        return figures

    def unsourced_figures(self) -> list[str]:
        """The datasheet figures ``figure_sources`` says nothing about."""
        return [f for f in self.datasheet_figures() if f not in self.figure_sources]

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    def gpu_efficiency(self) -> GpuEfficiency:
        """The fitted efficiencies a GPU step time needs.

        Raises:
            UserError: when the profile has none (a GPU step time cannot be predicted).
        """
        if self.efficiency is None:
            raise UserError(
                f"hardware profile {self.id!r} has no fitted step-time constants"
                " (an `efficiency:` block)",
                "add one for its device generation (see benchmarks/gpu_fit.py) or pick a"
                " profile that has one (optadvise profiles list)",
            )
        return self.efficiency

    def link_domain(self) -> int:
        """GPUs joined at the ``intra_node`` bandwidth: tensor and expert parallelism inside
        it run at that speed, beyond it over ``inter_node``."""
        if self.nvlink_domain is not None:
            return self.nvlink_domain
        return self.efficiency.gpus_per_node if self.efficiency is not None else 1

    @property
    def cc(self) -> float:
        """Compute capability as a number (0.0 for non-CUDA devices)."""
        return float(self.compute_capability) if self.compute_capability else 0.0


@cached_by_content("hardware", profile_sources("hardware"))
def load_hardware_profiles(folder: Path | None = None) -> dict[str, HardwareProfile]:
    """Load every ``*.yaml`` in ``profiles/hardware``.

    Raises:
        DataError: listing every invalid file, not just the first.
    """
    folder = folder or profiles_dir() / "hardware"
    profiles: dict[str, HardwareProfile] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            raw = parse_yaml(path.read_text())
            profile = HardwareProfile.model_validate(raw)
        except YamlError as exc:
            problems.append(f"{path}: invalid YAML: {exc}")
            continue
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                problems.append(f"{path}: {loc}: {err['msg']}")
            continue
        if profile.id != path.stem:
            problems.append(f"{path}: id: {profile.id!r} does not match the file name")
        if profile.id in profiles:
            problems.append(f"{path}: id: duplicate profile id {profile.id!r}")
        profiles[profile.id] = profile
    if problems:
        raise DataError(problems)
    return profiles


def get_hardware_profile(name: str) -> HardwareProfile:
    """Return the profile called ``name``.

    Raises:
        UserError: naming the known profiles when ``name`` is not one.
    """
    profiles = load_hardware_profiles()
    if name not in profiles:
        import difflib

        close = difflib.get_close_matches(name.strip().lower(), list(profiles), n=3)
        maybe = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"unknown hardware profile {name!r}",
            f"{maybe}run `optadvise profiles list` to see them: " + ", ".join(sorted(profiles)),
        )
    return profiles[name]


# --- The probe's report (filled by advisor.hardware.probe; pure data for the core to read) ---


class CpuInfo(_Frozen):
    """The host CPU as the kernel and torch see it."""

    model: str
    physical_cores: int | None
    logical_cores: int
    usable_cores: int = Field(description="CPUs this process may run on (affinity)")
    cgroup_cpu_limit: float | None = Field(
        default=None, description="CPU quota from the cgroup, in cores (None: unlimited)"
    )
    features: dict[str, bool] = Field(
        description="ISA features that matter to torch kernels: avx2, avx512f, avx512_bf16, "
        "avx512_fp16, amx_bf16, amx_fp16, amx_tile"
    )
    fast_bf16: bool = Field(
        description="bf16 matrix multiply is at least 0.9x as fast as fp32 (measured when torch is "
        "available and the measurement is decisive and agrees with the ISA, else from the "
        "avx512_bf16/AMX flags); without it bf16 can be 100x slower"
    )
    fast_fp16: bool = Field(
        default=False, description="the same for fp16 (avx512_fp16/amx_fp16 flags)"
    )
    fast_16bit_source: str = Field(
        default="isa flags",
        description="'measured' (interleaved GEMMs per dtype, decisive) or 'isa flags' (the "
        "measurement was too near the threshold or contradicted the ISA); per dtype when "
        "they differ",
    )
    gemm_gflops: dict[str, float] = Field(
        default_factory=dict,
        description="measured 256x256 GEMM throughput per dtype on one thread, GFLOP/s (the "
        "fastest of interleaved rounds)",
    )
    gemm_vs_fp32: dict[str, list[float]] = Field(
        default_factory=dict,
        description="each 16-bit dtype's GEMM speed relative to fp32 over interleaved rounds: "
        "[lower quartile, median, upper quartile]",
    )
    gemm_disturbance: float | None = Field(
        default=None,
        description="share of wall time the GEMM check did not get the CPU (0 = undisturbed; "
        "other processes were running when it is high)",
    )
    torch_capability: str | None = Field(
        default=None, description="torch.backends.cpu.get_cpu_capability()"
    )
    torch_threads: int | None = Field(default=None, description="torch intra-op threads")


class MemoryInfo(_Frozen):
    """Host memory and the limit that really applies to this process."""

    total_bytes: int
    available_bytes: int
    cgroup_version: str | None = Field(description="'v1', 'v2' or None when no cgroup is found")
    cgroup_limit_bytes: int | None = Field(
        description="the cgroup's memory limit (None: unlimited)"
    )
    effective_limit_bytes: int = Field(
        description="the smaller of physical RAM and the cgroup limit"
    )
    effective_available_bytes: int
    limit_source: str = Field(description="which limit applies: physical RAM or the cgroup file")


class GpuInfo(_Frozen):
    """One accelerator."""

    index: int
    name: str
    backend: str = Field(description="nvml, torch.cuda or mps: where the facts came from")
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_used_bytes: int | None = None
    compute_capability: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    power_limit_w: float | None = None
    power_draw_w: float | None = Field(
        default=None, description="power draw when probed, watts (NVML nvmlDeviceGetPowerUsage)"
    )
    idle_power_w: float | None = Field(
        default=None,
        description="the draw when probed while the GPU ran no kernel (NVML utilisation 0), "
        "watts: the idle figure whole-run energy estimates use",
    )
    pcie_generation: int | None = None
    pcie_width: int | None = None
    nvlink_links: int | None = Field(default=None, description="active NVLink links")
    bf16: bool = False
    tf32: bool = False
    fp8: bool = False
    flash_attention_2: bool = Field(
        default=False, description="FlashAttention-2 eligible: CUDA cc >= 8.0, fp16/bf16 only"
    )


class SoftwareInfo(_Frozen):
    """The Python and torch stack."""

    python: str
    torch_version: str | None = None
    torch_build: str | None = Field(default=None, description="cpu, cuda or rocm")
    cuda_version: str | None = None
    cudnn_version: str | None = None
    sdpa_backends: dict[str, list[str]] = Field(
        default_factory=dict,
        description="device -> SDPA backends that ran a tiny forward pass there",
    )


class ProbeReport(_Frozen):
    """Everything `optadvise probe` found out about this machine."""

    schema_version: int = 1
    hostname: str
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: list[GpuInfo]
    accelerator: str = Field(description="cuda, rocm, mps or none")
    software: SoftwareInfo
    warnings: list[str] = Field(default_factory=list)
    seconds: float = Field(description="wall time the probe took")
