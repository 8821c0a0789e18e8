"""The hardware probe: CPU, memory limits (cgroups), GPUs (NVML, torch.cuda, MPS), the torch stack.

Missing NVML or no GPU is a fact, not an error: every failure becomes one warning line.
torch is imported lazily, only when the caller asks for torch facts.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from advisor.hardware.fast16 import check_gemms, isa_expectation, read_cpuinfo
from advisor.hardware.profiles import CpuInfo, GpuInfo, MemoryInfo, ProbeReport, SoftwareInfo
from advisor.torchload import import_torch

# NOTE: cgroup v1 writes "unlimited" as a page-aligned LONG_MAX (9223372036854771712);
# anything at or above 2^62 is no limit at all.
UNLIMITED_THRESHOLD = 2**62
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")

# NVML error codes (nvml.h) that deserve their own words.
_NVML_CAUSES = {
    3: "not supported on this device",
    4: "permission denied (check the /dev/nvidia* permissions)",
    9: "the NVIDIA driver is not loaded",
    12: "the NVML library (libnvidia-ml.so) is not installed",
    18: "driver/library version mismatch (reboot or reload the NVIDIA kernel module)",
}


# --- CPU ------------------------------------------------------------------------------


def probe_cpu(
    cpuinfo: Path = Path("/proc/cpuinfo"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> CpuInfo:
    """The CPU's model, cores, the ISA features torch kernels use, and any cgroup CPU quota."""
    model, flags = read_cpuinfo(cpuinfo)
    features = {f: f in flags for f in _ISA_FLAGS}
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = psutil.cpu_count() or 1
    return CpuInfo(
        model=model,
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count() or 1,
        usable_cores=usable,
        cgroup_cpu_limit=read_cgroup_cpu_limit(cgroup_root),
        features=features,
        fast_bf16=bool(isa_expectation(flags)["bf16"]),
        fast_fp16=bool(isa_expectation(flags)["fp16"]),
    )


def read_cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPU quota in cores from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` (None: none)."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            period = int(fields[1]) if len(fields) > 1 else 100_000
            return int(fields[0]) / period
        if fields:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


# --- Memory -----------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= UNLIMITED_THRESHOLD else value


def _cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and v1 memory-controller path, from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def read_cgroup_memory(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> tuple[str | None, int | None, int | None, str]:
    """The cgroup memory limit that applies to this process.

    Returns:
        (version, limit bytes or None, current usage bytes or None, the file it came from).
    """
    v2_path, v1_path = _cgroup_paths(proc_cgroup)
    # cgroup v2: the unified hierarchy has cgroup.controllers at its root.
    if (root / "cgroup.controllers").exists():
        candidates = [root / (v2_path or "/").lstrip("/"), root]
        for d in candidates:
            if (d / "memory.max").exists():
                return (
                    "v2",
                    _read_int(d / "memory.max"),
                    _read_int(d / "memory.current"),
                    str(d / "memory.max"),
                )
        return "v2", None, None, ""
    mem = root / "memory"
    if mem.is_dir():
        candidates = [mem / (v1_path or "/").lstrip("/"), mem]
        for d in candidates:
            f = d / "memory.limit_in_bytes"
            if f.exists():
                return "v1", _read_int(f), _read_int(d / "memory.usage_in_bytes"), str(f)
        return "v1", None, None, ""
    return None, None, None, ""


def probe_memory(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> MemoryInfo:
    """Physical memory and the effective limit (psutil alone ignores cgroups)."""
    vm = psutil.virtual_memory()
    version, limit, usage, source = read_cgroup_memory(root, proc_cgroup)
    if limit is not None and limit < vm.total:
        avail = max(0, min(vm.available, limit - (usage or 0)))
        return MemoryInfo(
            total_bytes=vm.total,
            available_bytes=vm.available,
            cgroup_version=version,
            cgroup_limit_bytes=limit,
            effective_limit_bytes=limit,
            effective_available_bytes=avail,
            limit_source=f"cgroup {version} ({source})",
        )
    return MemoryInfo(
        total_bytes=vm.total,
        available_bytes=vm.available,
        cgroup_version=version,
        cgroup_limit_bytes=limit,
        effective_limit_bytes=vm.total,
        effective_available_bytes=vm.available,
        limit_source="physical RAM" + (" (cgroup limit is higher or unlimited)" if version else ""),
    )


# --- GPUs -------------------------------------------------------------------------------


def capabilities(cc: str | None) -> dict[str, bool]:
    """What a CUDA compute capability allows: bf16/tf32 (Ampere, 8.0+), fp8 (Ada/Hopper, 8.9+),
    FlashAttention-2 (8.0+, fp16/bf16; Dao 2023)."""
    if not cc:
        return {"bf16": False, "tf32": False, "fp8": False, "flash_attention_2": False}
    major, minor = (int(x) for x in cc.split("."))
    v = major + minor / 10
    return {"bf16": v >= 8.0, "tf32": v >= 8.0, "fp8": v >= 8.9, "flash_attention_2": v >= 8.0}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_cause(exc: BaseException) -> str:
    """One line naming why NVML failed."""
    code = getattr(exc, "value", None)
    if isinstance(code, int) and code in _NVML_CAUSES:
        return _NVML_CAUSES[code]
    return str(exc) or type(exc).__name__


def nvml_library_loads() -> bool:
    """Whether the NVML library of the driver can be loaded, as pynvml would load it.

    NOTE: importing pynvml costs ~20 ms (thousands of ctypes declarations), most of a
    CPU-only `recommend`'s probe; dlopen of a missing library fails in microseconds. Outside
    Windows pynvml loads exactly ``libnvidia-ml.so.1`` (nvmlInit then fails with
    NVML_ERROR_LIBRARY_NOT_FOUND, code 12, when it is absent), so asking first changes no
    answer. On Windows, where pynvml searches several folders, it is left to pynvml.
    """
    if sys.platform.startswith("win"):
        return True
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def probe_nvml(nvml: Any | None = None) -> tuple[list[GpuInfo], str | None]:
    """GPUs through NVML.

    Args:
        nvml: the ``pynvml`` module (tests pass a fake).

    Returns:
        (gpus, warning): the warning names the cause when NVML is unusable, None otherwise.
    """
    if nvml is None:
        if importlib.util.find_spec("pynvml") is None:
            return [], "nvidia-ml-py is not installed; GPUs were looked for through torch only"
        if not nvml_library_loads():
            return [], None  # no NVIDIA driver: simply no NVIDIA GPU here (NVML code 12)
        import pynvml

        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:
        code = getattr(exc, "value", None)
        if code in (12, 9):  # no library / no driver: simply no NVIDIA GPU here
            return [], None if code == 12 else f"NVML: {nvml_cause(exc)}"
        return [], f"NVML: {nvml_cause(exc)}; GPU facts from torch.cuda only"
    gpus: list[GpuInfo] = []
    warning = None
    try:
        driver_raw = _optional(nvml.nvmlSystemGetDriverVersion)
        driver = _s(driver_raw) if driver_raw is not None else None
        cuda_raw = _optional(nvml.nvmlSystemGetCudaDriverVersion)
        cuda = (
            f"{cuda_raw // 1000}.{(cuda_raw % 1000) // 10}" if isinstance(cuda_raw, int) else None
        )
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = _optional(nvml.nvmlDeviceGetMemoryInfo, h)
            cc_pair = _optional(nvml.nvmlDeviceGetCudaComputeCapability, h)
            cc = f"{cc_pair[0]}.{cc_pair[1]}" if cc_pair else None
            # NOTE: the enforced limit is what the board runs under (an administrator's cap
            # included); the management limit is read where the enforced one is unsupported.
            power = _optional_named(nvml, "nvmlDeviceGetEnforcedPowerLimit", h)
            if not isinstance(power, (int, float)):
                power = _optional(nvml.nvmlDeviceGetPowerManagementLimit, h)
            draw, idle = _power_draw(nvml, h)
            links = _count_nvlinks(nvml, h)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=_s(nvml.nvmlDeviceGetName(h)),
                    backend="nvml",
                    memory_total_bytes=int(mem.total) if mem else None,
                    memory_free_bytes=int(mem.free) if mem else None,
                    memory_used_bytes=int(mem.used) if mem else None,
                    compute_capability=cc,
                    driver_version=driver,
                    cuda_driver_version=cuda,
                    power_limit_w=power / 1000 if isinstance(power, (int, float)) else None,
                    power_draw_w=draw,
                    idle_power_w=idle,
                    pcie_generation=_optional(nvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
                    pcie_width=_optional(nvml.nvmlDeviceGetCurrPcieLinkWidth, h),
                    nvlink_links=links,
                    **capabilities(cc),
                )
            )
    except Exception as exc:
        warning = f"NVML: {nvml_cause(exc)} while reading devices; partial GPU facts"
    finally:
        _optional(nvml.nvmlShutdown)
    return gpus, warning


def _power_draw(nvml: Any, handle: Any) -> tuple[float | None, float | None]:
    """The board's draw now (watts), and the same figure as its idle draw when the GPU ran
    no kernel over NVML's last sample period (utilisation 0), else None."""
    mw = _optional_named(nvml, "nvmlDeviceGetPowerUsage", handle)
    if not isinstance(mw, (int, float)) or mw <= 0:
        return None, None
    draw = mw / 1000
    rates = _optional_named(nvml, "nvmlDeviceGetUtilizationRates", handle)
    busy = getattr(rates, "gpu", None)
    return draw, draw if busy == 0 else None


def _optional_named(nvml: Any, name: str, *args: Any) -> Any:
    """:func:`_optional` for a query an older binding may not have at all."""
    fn = getattr(nvml, name, None)
    return None if fn is None else _optional(fn, *args)


def _optional(fn: Callable[..., Any], *args: Any) -> Any:
    """Call an NVML query that a device may not support; None when it raises."""
    try:
        return fn(*args)
    except Exception:
        return None


def _count_nvlinks(nvml: Any, handle: Any) -> int | None:
    max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
    active = 0
    for link in range(max_links):
        state = _optional(nvml.nvmlDeviceGetNvLinkState, handle, link)
        if state is None:
            return active if link else None
        active += int(bool(state))
    return active


def probe_torch_gpus(torch: Any) -> list[GpuInfo]:
    """GPUs through torch.cuda (NVML missing) or Apple MPS."""
    gpus: list[GpuInfo] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cc = f"{p.major}.{p.minor}"
            free = total = None
            try:
                free, total = torch.cuda.mem_get_info(i)
            except RuntimeError:
                total = int(p.total_memory)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=str(p.name),
                    backend="torch.cuda",
                    memory_total_bytes=int(total) if total is not None else None,
                    memory_free_bytes=int(free) if free is not None else None,
                    memory_used_bytes=int(total - free) if free is not None and total else None,
                    compute_capability=cc if not getattr(torch.version, "hip", None) else None,
                    **capabilities(None if getattr(torch.version, "hip", None) else cc),
                )
            )
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        gpus.append(GpuInfo(index=0, name="Apple MPS", backend="mps", bf16=True))
    return gpus


# --- torch --------------------------------------------------------------------------------


def sdpa_backends(torch: Any, device: str) -> list[str]:
    """The SDPA backends that really run a tiny forward pass on ``device``."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return []
    names = {
        "MATH": "math",
        "FLASH_ATTENTION": "flash",
        "EFFICIENT_ATTENTION": "mem-efficient",
        "CUDNN_ATTENTION": "cudnn",
    }
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    q = torch.zeros(1, 2, 16, 64, device=device, dtype=dtype)
    found = []
    for attr, label in names.items():
        backend = getattr(SDPBackend, attr, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            found.append(label)
        except (RuntimeError, NotImplementedError):
            continue
    return found


def probe_torch(gpus: list[GpuInfo]) -> tuple[SoftwareInfo, dict[str, Any], list[str]]:
    """torch version/build, SDPA backends, CPU capability and threads; and torch-found GPUs."""
    warnings: list[str] = []
    try:
        torch = import_torch()
    except ImportError:
        return (
            SoftwareInfo(python=platform.python_version()),
            {},
            ["torch is not installed: no SDPA or torch facts (pip install torch)"],
        )
    build = (
        "rocm" if getattr(torch.version, "hip", None) else ("cuda" if torch.version.cuda else "cpu")
    )
    cudnn = None
    try:
        if torch.backends.cudnn.is_available():
            cudnn = str(torch.backends.cudnn.version())
    except RuntimeError:
        cudnn = None
    extra: dict[str, Any] = {
        "capability": _optional(torch.backends.cpu.get_cpu_capability),
        "threads": torch.get_num_threads(),
        "torch_gpus": [],
        "gemm": check_gemms(torch, flags=read_cpuinfo()[1]),
    }
    if not gpus:
        try:
            extra["torch_gpus"] = probe_torch_gpus(torch)
        except RuntimeError as exc:
            warnings.append(f"torch.cuda: {exc}".splitlines()[0])
    devices = ["cpu"]
    if gpus or extra["torch_gpus"]:
        if torch.cuda.is_available():
            devices.append("cuda:0")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            devices.append("mps")
    backends = {}
    for dev in devices:
        try:
            backends[dev] = sdpa_backends(torch, dev)
        except RuntimeError as exc:
            warnings.append(f"SDPA on {dev}: {str(exc).splitlines()[0]}")
    info = SoftwareInfo(
        python=platform.python_version(),
        torch_version=torch.__version__,
        torch_build=build,
        cuda_version=torch.version.cuda or getattr(torch.version, "hip", None),
        cudnn_version=cudnn,
        sdpa_backends=backends,
    )
    return info, extra, warnings


def probe_hardware(*, with_torch: bool = True, nvml: Any | None = None) -> ProbeReport:
    """Probe this machine.

    Args:
        with_torch: also import torch for its build, SDPA backends, CPU capability and threads
            (about a second); without it the report holds the psutil/NVML facts only.
        nvml: a ``pynvml``-like module (tests pass fakes).

    Returns:
        The report; every failure is a warning line inside it, never an exception.
    """
    start = time.perf_counter()
    warnings: list[str] = []
    cpu = probe_cpu()
    memory = probe_memory()
    gpus, nvml_warning = probe_nvml(nvml)
    if nvml_warning:
        warnings.append(nvml_warning)
    software = SoftwareInfo(python=platform.python_version())
    if with_torch:
        software, extra, torch_warnings = probe_torch(gpus)
        warnings.extend(torch_warnings)
        gpus = gpus or extra.get("torch_gpus", [])
        update: dict[str, Any] = {
            "torch_capability": extra.get("capability"),
            "torch_threads": extra.get("threads"),
        }
        gemm = extra.get("gemm")
        if gemm is not None:
            bf16, fp16 = gemm.verdicts["bf16"], gemm.verdicts["fp16"]
            update |= {
                "gemm_gflops": gemm.gflops,
                "gemm_vs_fp32": {
                    d: [round(s.low, 3), round(s.median, 3), round(s.high, 3)]
                    for d, s in gemm.spreads.items()
                },
                "gemm_disturbance": gemm.disturbance,
                "fast_bf16": bf16.fast,
                "fast_fp16": fp16.fast,
                "fast_16bit_source": (
                    bf16.source
                    if bf16.source == fp16.source
                    else f"bf16: {bf16.source}; fp16: {fp16.source}"
                ),
            }
            warnings.extend(gemm.notes)
        cpu = cpu.model_copy(update=update)
    accelerator = "none"
    if gpus:
        backend = gpus[0].backend
        if backend == "mps":
            accelerator = "mps"
        elif software.torch_build == "rocm":
            accelerator = "rocm"
        else:
            accelerator = "cuda"
    return ProbeReport(
        hostname=socket.gethostname(),
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        accelerator=accelerator,
        software=software,
        warnings=warnings,
        seconds=round(time.perf_counter() - start, 3),
    )
