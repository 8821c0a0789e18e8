"""Shared fakes: NVML (several GPUs, missing, raising), cgroup trees, torch.cuda answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

# NOTE: rich reads COLUMNS once, when a Console is made. The shell's consoles are made here,
# at collection, before any test's CliRunner sets COLUMNS; made later, inside an invoke, they
# would keep that invoke's width for every later test.
import advisor.shell.render  # noqa: F401


class FakeNVMLError(Exception):
    """Mimics pynvml.NVMLError: carries the nvml.h error code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = 85_520_809_984
    used: int = 1_048_576_000
    cc: tuple[int, int] = (9, 0)
    power_mw: int = 700_000
    pcie: tuple[int, int] = (5, 16)
    nvlinks: int = 18
    broken_memory: bool = False


@dataclass
class FakeNVML:
    """A pynvml stand-in: the calls advisor.hardware.probe makes, answered from FakeGpu records."""

    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    init_error: int | None = None
    driver: bytes | str = "550.54.15"
    cuda: int = 12040
    NVML_NVLINK_MAX_LINKS: int = 18
    shutdown_called: bool = False

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown_called = True

    def nvmlSystemGetDriverVersion(self) -> bytes | str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return h.name

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        if h.broken_memory:
            raise FakeNVMLError(3)
        return SimpleNamespace(total=h.total, used=h.used, free=h.total - h.used)

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        return h.cc

    def nvmlDeviceGetPowerManagementLimit(self, h: FakeGpu) -> int:
        return h.power_mw

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: FakeGpu) -> int:
        return h.pcie[0]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: FakeGpu) -> int:
        return h.pcie[1]

    def nvmlDeviceGetNvLinkState(self, h: FakeGpu, link: int) -> int:
        if h.nvlinks == 0:
            raise FakeNVMLError(3)  # NOT_SUPPORTED: a PCIe card without NVLink
        return 1 if link < h.nvlinks else 0


@pytest.fixture
def fake_nvml() -> FakeNVML:
    return FakeNVML()


def make_cgroup_v2(
    root: Path, memory_max: str, memory_current: int = 0, cpu_max: str = "max 100000"
) -> Path:
    """A cgroup v2 unified tree with this process at its root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "memory.max").write_text(memory_max + "\n")
    (root / "memory.current").write_text(f"{memory_current}\n")
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def make_cgroup_v1(root: Path, limit: int, usage: int = 0, quota: int = -1) -> Path:
    """A cgroup v1 tree with memory and cpu controllers."""
    (root / "memory").mkdir(parents=True, exist_ok=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    return root


@pytest.fixture
def proc_cgroup_root(tmp_path: Path) -> Path:
    p = tmp_path / "proc_self_cgroup"
    p.write_text("0::/\n")
    return p


# --- The fast tier (`make test-fast`): no engine imports, no measured torch ----------------

# Files whose tests run real torch work (measured bytes or steps, real models) or load the
# engines (DeepSpeed, Accelerate, transformers, bitsandbytes). Tests elsewhere that do the
# same carry @pytest.mark.heavy themselves.
HEAVY_FILES = {
    "test_benchmarks.py",
    "test_calibration.py",
    "test_cli_measured_default.py",
    "test_convergence.py",
    "test_emit.py",
    "test_golden.py",
    "test_emit_engines.py",
    "test_gpu_check.py",
    "test_hf_general.py",
    "test_memory_allocator.py",
    "test_memory_encoder.py",
    "test_memory_finetune.py",
    "test_memory_qlora.py",
    "test_memory_lm_loss.py",
    "test_memory_architectures.py",
    "test_memory_bnb.py",
    "test_memory_checkpointing.py",
    "test_memory_fsdp.py",
    "test_memory_measured.py",
    "test_memory_stacks.py",
    "test_model_families.py",
    "test_packaging.py",
    "test_zeroth_order.py",
}
_ENGINES = ("deepspeed", "accelerate", "transformers", "bitsandbytes")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The fast tier does not even import the heavy files (their module-level imports load
    # torch models and the engines).
    if config.getoption("markexpr", "") == "not heavy" and collection_path.name in HEAVY_FILES:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in HEAVY_FILES:
            item.add_marker(pytest.mark.heavy)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # The fast tier keeps its promise: a test that loads an engine there belongs in the
    # heavy tier (mark it, or list its file above).
    import sys

    if session.config.getoption("markexpr", "") == "not heavy" and exitstatus == 0:
        loaded = [m for m in _ENGINES if m in sys.modules]
        if loaded:
            session.exitstatus = 1
            print(f"\nfast tier imported {', '.join(loaded)}: mark the test heavy", flush=True)
