"""NVML power readings (faked): the enforced limit, the draw, and the idle draw the whole-run
energy model uses; older bindings without those queries still probe."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from advisor.app.wholerun import probed_power, profile_power
from advisor.cost.run import device_watts
from advisor.hardware import probe
from advisor.hardware.profiles import get_hardware_profile
from tests.conftest import FakeGpu, FakeNVML, FakeNVMLError


@dataclass
class PowerGpu(FakeGpu):
    enforced_mw: int | None = 650_000
    usage_mw: int | None = 72_000
    util: int = 0


class PowerNVML(FakeNVML):
    """FakeNVML plus the power queries of nvidia-ml-py."""

    def nvmlDeviceGetEnforcedPowerLimit(self, h: PowerGpu) -> int:
        if h.enforced_mw is None:
            raise FakeNVMLError(3)  # NOT_SUPPORTED
        return h.enforced_mw

    def nvmlDeviceGetPowerUsage(self, h: PowerGpu) -> int:
        if h.usage_mw is None:
            raise FakeNVMLError(3)
        return h.usage_mw

    def nvmlDeviceGetUtilizationRates(self, h: PowerGpu) -> Any:
        return SimpleNamespace(gpu=h.util, memory=0)


def test_an_idle_gpu_reports_its_enforced_limit_and_idle_draw() -> None:
    gpus, warning = probe.probe_nvml(PowerNVML(gpus=[PowerGpu()]))
    assert warning is None
    g = gpus[0]
    # An administrator's cap (650 W) wins over the 700 W management limit.
    assert g.power_limit_w == 650 and g.power_draw_w == 72 and g.idle_power_w == 72


def test_a_busy_gpu_has_no_idle_figure() -> None:
    gpus, _ = probe.probe_nvml(PowerNVML(gpus=[PowerGpu(util=87, usage_mw=610_000)]))
    assert gpus[0].power_draw_w == 610 and gpus[0].idle_power_w is None


def test_unsupported_queries_fall_back_to_the_management_limit() -> None:
    gpus, warning = probe.probe_nvml(PowerNVML(gpus=[PowerGpu(enforced_mw=None, usage_mw=None)]))
    assert warning is None
    assert gpus[0].power_limit_w == 700 and gpus[0].power_draw_w is None


def test_an_old_binding_without_power_queries_still_probes(fake_nvml: FakeNVML) -> None:
    gpus, warning = probe.probe_nvml(fake_nvml)
    assert warning is None and gpus[0].power_limit_w == 700 and gpus[0].idle_power_w is None


@pytest.mark.parametrize("busy", [0.0, 0.4, 1.0])
def test_measured_power_feeds_the_linear_model_and_stays_under_the_tdp_bound(busy: float) -> None:
    gpus, _ = probe.probe_nvml(PowerNVML(gpus=[PowerGpu()]))
    g = gpus[0]
    tdp = profile_power(get_hardware_profile("h100-sxm-80gb"))
    measured = probed_power(g.power_limit_w, g.idle_power_w, tdp)
    watts, basis = device_watts(measured, busy)
    assert watts == pytest.approx(72 + (650 - 72) * busy)
    assert "NVML" in basis
    bound, _ = device_watts(tdp, busy)
    assert bound == 700 and watts is not None and watts <= bound
    # No NVML limit: the profile's TDP stands.
    assert probed_power(None, None, tdp) is tdp


def test_the_probe_table_shows_the_idle_draw() -> None:
    from advisor.shell.render.probe import _power

    assert _power(650, 72, 72) == "650 W (72 W idle)"
    assert _power(650, 610, None) == "650 W (610 W now)"
    assert _power(None, None, None) == "-"
