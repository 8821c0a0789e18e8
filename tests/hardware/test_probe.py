"""The hardware probe against faked NVML and cgroup files, and against this machine's real CPU."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from advisor.hardware import probe
from advisor.hardware.fast16 import Spread, contradicts, decisive, isa_expectation
from advisor.hardware.profiles import ProbeReport
from tests.conftest import FakeGpu, FakeNVML, make_cgroup_v1, make_cgroup_v2

GIB = 1024**3


def test_nvml_several_gpus_are_reported_with_derived_capabilities() -> None:
    nvml = FakeNVML(
        gpus=[
            FakeGpu(),
            FakeGpu(name="NVIDIA A100-SXM4-40GB", total=42_949_672_960, cc=(8, 0), nvlinks=12),
            FakeGpu(
                name="Tesla T4",
                total=16_106_127_360,
                cc=(7, 5),
                power_mw=70_000,
                pcie=(3, 16),
                nvlinks=0,
            ),
        ],
        driver=b"535.104.05",  # old pynvml returns bytes
    )
    gpus, warning = probe.probe_nvml(nvml)
    assert warning is None
    assert nvml.shutdown_called
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla T4"]
    h100, a100, t4 = gpus
    assert (h100.compute_capability, h100.fp8, h100.bf16, h100.flash_attention_2) == (
        "9.0",
        True,
        True,
        True,
    )
    assert (a100.fp8, a100.bf16, a100.tf32, a100.flash_attention_2) == (False, True, True, True)
    assert (t4.bf16, t4.tf32, t4.fp8, t4.flash_attention_2) == (False, False, False, False)
    assert h100.driver_version == "535.104.05" and h100.cuda_driver_version == "12.4"
    assert h100.memory_free_bytes == h100.memory_total_bytes - h100.memory_used_bytes  # type: ignore[operator]
    assert h100.power_limit_w == 700.0 and t4.power_limit_w == 70.0
    assert (t4.pcie_generation, t4.pcie_width) == (3, 16)
    assert h100.nvlink_links == 18 and a100.nvlink_links == 12 and t4.nvlink_links is None


@pytest.mark.parametrize(
    ("code", "expect_warning", "words"),
    [
        (12, False, ""),  # library missing: simply no NVIDIA GPU, not worth a warning
        (9, True, "driver is not loaded"),
        (4, True, "permission denied"),
        (18, True, "version mismatch"),
        (999, True, "NVML error 999"),
    ],
)
def test_nvml_init_failures_become_one_line(code: int, expect_warning: bool, words: str) -> None:
    gpus, warning = probe.probe_nvml(FakeNVML(init_error=code))
    assert gpus == []
    if expect_warning:
        assert warning is not None and words in warning and "\n" not in warning
    else:
        assert warning is None


def test_nvml_query_failing_midway_keeps_what_was_read() -> None:
    nvml = FakeNVML(gpus=[FakeGpu(broken_memory=True)])
    gpus, warning = probe.probe_nvml(nvml)
    assert warning is None and gpus[0].memory_total_bytes is None and gpus[0].name


def test_nvml_device_count_raising_is_a_warning_not_a_crash() -> None:
    class Exploding(FakeNVML):
        def nvmlDeviceGetCount(self) -> int:
            from tests.conftest import FakeNVMLError

            raise FakeNVMLError(4)

    gpus, warning = probe.probe_nvml(Exploding())
    assert gpus == [] and warning is not None and "permission denied" in warning


def test_cgroup_v2_limit_below_ram_applies(tmp_path: Path, proc_cgroup_root: Path) -> None:
    root = make_cgroup_v2(tmp_path / "cg", memory_max=str(4 * GIB), memory_current=GIB)
    mem = probe.probe_memory(root, proc_cgroup_root)
    assert mem.cgroup_version == "v2"
    assert mem.cgroup_limit_bytes == 4 * GIB
    assert mem.effective_limit_bytes == min(4 * GIB, psutil.virtual_memory().total)
    assert mem.effective_available_bytes <= 3 * GIB
    assert "cgroup v2" in mem.limit_source


def test_cgroup_v2_max_is_unlimited(tmp_path: Path, proc_cgroup_root: Path) -> None:
    root = make_cgroup_v2(tmp_path / "cg", memory_max="max")
    mem = probe.probe_memory(root, proc_cgroup_root)
    assert mem.cgroup_limit_bytes is None
    assert mem.effective_limit_bytes == psutil.virtual_memory().total
    assert mem.limit_source.startswith("physical RAM")


def test_cgroup_v2_nested_path_from_proc_self_cgroup(tmp_path: Path) -> None:
    root = make_cgroup_v2(tmp_path / "cg", memory_max="max")
    nested = root / "system.slice" / "job.scope"
    nested.mkdir(parents=True)
    (nested / "memory.max").write_text(f"{2 * GIB}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/job.scope\n")
    mem = probe.probe_memory(root, proc)
    assert mem.cgroup_limit_bytes == 2 * GIB


def test_cgroup_v1_long_max_is_unlimited(tmp_path: Path, proc_cgroup_root: Path) -> None:
    # The value measured on this machine kind: page-aligned LONG_MAX.
    root = make_cgroup_v1(tmp_path / "cg", limit=9223372036854771712)
    mem = probe.probe_memory(root, proc_cgroup_root)
    assert mem.cgroup_version == "v1" and mem.cgroup_limit_bytes is None


def test_cgroup_v1_limit_applies(tmp_path: Path, proc_cgroup_root: Path) -> None:
    root = make_cgroup_v1(tmp_path / "cg", limit=3 * GIB, usage=GIB)
    mem = probe.probe_memory(root, proc_cgroup_root)
    assert mem.effective_limit_bytes == 3 * GIB and "cgroup v1" in mem.limit_source
    assert mem.effective_available_bytes <= 2 * GIB


def test_no_cgroup_at_all(tmp_path: Path, proc_cgroup_root: Path) -> None:
    mem = probe.probe_memory(tmp_path / "nothing", proc_cgroup_root)
    assert mem.cgroup_version is None and mem.effective_limit_bytes == psutil.virtual_memory().total


def test_cgroup_cpu_quota(tmp_path: Path) -> None:
    assert (
        probe.read_cgroup_cpu_limit(make_cgroup_v2(tmp_path / "a", "max", cpu_max="150000 100000"))
        == 1.5
    )
    assert probe.read_cgroup_cpu_limit(make_cgroup_v2(tmp_path / "b", "max")) is None
    assert probe.read_cgroup_cpu_limit(make_cgroup_v1(tmp_path / "c", 1, quota=200000)) == 2.0
    assert probe.read_cgroup_cpu_limit(make_cgroup_v1(tmp_path / "d", 1, quota=-1)) is None


def test_real_cpu_matches_proc_cpuinfo() -> None:
    cpu = probe.probe_cpu()
    text = Path("/proc/cpuinfo").read_text()
    flags = (
        next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split()
    )
    assert cpu.features["avx2"] == ("avx2" in flags)
    assert cpu.features["avx512_bf16"] == ("avx512_bf16" in flags)
    assert cpu.logical_cores == psutil.cpu_count()
    assert cpu.model in text


def test_cpuinfo_parser_on_arm_style_file(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\nCPU part\t: 0xd0c\n")
    model, flags = probe.read_cpuinfo(f)
    assert "bf16" in flags and "avx2" not in flags and model


def test_full_probe_on_this_machine_with_fake_nvml(fake_nvml: FakeNVML) -> None:
    report = probe.probe_hardware(with_torch=True, nvml=FakeNVML(init_error=12))
    assert report.gpus == [] and report.accelerator == "none"
    # The only warning the probe may add here is a GEMM figure the ISA contradicted.
    assert all("ISA" in w for w in report.warnings), report.warnings
    assert report.software.torch_version and report.software.torch_build == "cpu"
    # On CPU, MATH and FLASH SDPA exist and EFFICIENT_ATTENTION does not
    # (benchmarks/cpu_efficiency.py finds no CPU kernel for it).
    assert "math" in report.software.sdpa_backends["cpu"]
    assert "mem-efficient" not in report.software.sdpa_backends["cpu"]
    assert set(report.cpu.gemm_gflops) == {"fp32", "bf16", "fp16"}
    assert set(report.cpu.gemm_vs_fp32) == {"bf16", "fp16"}
    # A measured verdict is one the spread decides; otherwise the ISA flags decided.
    expected = isa_expectation({f for f, on in report.cpu.features.items() if on})
    for dtype, fast in (("bf16", report.cpu.fast_bf16), ("fp16", report.cpu.fast_fp16)):
        low, median, high = report.cpu.gemm_vs_fp32[dtype]
        assert low <= median <= high
        if decisive(Spread(low, median, high, 7)) and not contradicts(
            Spread(low, median, high, 7), expected[dtype]
        ):
            assert fast is (median >= 0.9), (dtype, report.cpu.fast_16bit_source)
        else:
            assert fast is bool(expected[dtype]), (dtype, report.cpu.fast_16bit_source)
    ProbeReport.model_validate_json(report.model_dump_json())


def test_probe_with_gpus_from_nvml(fake_nvml: FakeNVML) -> None:
    report = probe.probe_hardware(with_torch=False, nvml=fake_nvml)
    assert report.accelerator == "cuda" and len(report.gpus) == 1


class _FakeProps:
    name = "NVIDIA L4"
    major, minor = 8, 9
    total_memory = 23_034_000_000


class _FakeCuda:
    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 2

    @staticmethod
    def get_device_properties(i: int) -> _FakeProps:
        return _FakeProps()

    @staticmethod
    def mem_get_info(i: int) -> tuple[int, int]:
        return (20_000_000_000, 23_034_000_000)


def test_torch_cuda_fallback_when_nvml_is_missing() -> None:
    from types import SimpleNamespace

    fake_torch = SimpleNamespace(
        cuda=_FakeCuda(),
        version=SimpleNamespace(hip=None, cuda="12.4"),
        backends=SimpleNamespace(mps=None),
    )
    gpus = probe.probe_torch_gpus(fake_torch)
    assert len(gpus) == 2 and gpus[0].backend == "torch.cuda"
    assert gpus[0].compute_capability == "8.9" and gpus[0].fp8 and gpus[0].flash_attention_2
    assert gpus[0].memory_used_bytes == 3_034_000_000


def test_mps_is_reported_when_present() -> None:
    from types import SimpleNamespace

    fake_torch = SimpleNamespace(
        cuda=SimpleNamespace(is_available=lambda: False),
        version=SimpleNamespace(hip=None, cuda=None),
        backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: True)),
    )
    gpus = probe.probe_torch_gpus(fake_torch)
    assert [g.backend for g in gpus] == ["mps"]


def test_capabilities_by_compute_capability() -> None:
    assert probe.capabilities("8.9") == {
        "bf16": True,
        "tf32": True,
        "fp8": True,
        "flash_attention_2": True,
    }
    assert probe.capabilities("8.6")["fp8"] is False
    assert probe.capabilities("7.0") == {
        "bf16": False,
        "tf32": False,
        "fp8": False,
        "flash_attention_2": False,
    }
    assert probe.capabilities(None)["bf16"] is False
