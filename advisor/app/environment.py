"""This machine as one command sees it: probed once, its calibration cache read at most once.

The app layer builds one :class:`Environment` per command and hands it down (the recommend
job, the export's note on another plan, `estimate`'s device checks and step time), so no
step probes the machine or reads the calibration cache a second time. Building one never
imports torch: the probe runs without it and the cache is plain JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from advisor.config import TrainingConfig
from advisor.cost.data import CalibrationCache
from advisor.hardware.profiles import DeviceKind, HardwareProfile, ProbeReport
from advisor.hardware.target import HostOverride, Target, target_from_probe
from advisor.model.spec import ModelSpec

if TYPE_CHECKING:
    from advisor.app.estimate import StepTimeReport


class StoredCalibration(NamedTuple):
    """The calibration cache of this device as stored, or None with why it was not usable."""

    cache: CalibrationCache | None
    warning: str | None


def calibration_device(kind: DeviceKind) -> str:
    """The device a calibration of a ``kind`` target runs on (and its cache is named by)."""
    return "cpu" if kind.value == "cpu" else "cuda:0"


def cpu_clock_ghz() -> float | None:
    """The nominal clock from /proc/cpuinfo ("cpu MHz"), for the analytic CPU peak."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class Environment:
    """This machine for one command: the probe (without torch), the datasheet profiles it
    is matched against, the CPU clock, and the calibration this command measured, if any.

    The stored calibration cache is read on first use and kept (a ``cached_property``: its
    owner lives for one command), so the recommend job and the export's note share one read.
    """

    probe: ProbeReport
    profiles: dict[str, HardwareProfile]
    clock_ghz: float | None
    measured: CalibrationCache | None = None

    @property
    def gpu_name(self) -> str:
        """The first GPU's name as NVML reports it ("" without a GPU): the cache's key."""
        return self.probe.gpus[0].name if self.probe.gpus else ""

    def target(
        self,
        *,
        gpus: int | None = None,
        nodes: int = 1,
        memory_budget: int | None = None,
        host: HostOverride | None = None,
    ) -> Target:
        """This machine as a planning target (see advisor.hardware.target.target_from_probe).

        Raises:
            UserError: for --gpus/--nodes this machine cannot have, or a GPU no profile is
                close to.
        """
        return target_from_probe(
            self.probe,
            self.profiles,
            gpus=gpus,
            nodes=nodes,
            memory_budget=memory_budget,
            clock_ghz=self.clock_ghz,
            host=host,
        )

    @cached_property
    def local_target(self) -> Target:
        """This machine as it is: one node, its own GPUs and memory, no overrides."""
        return self.target(gpus=None, nodes=1, memory_budget=None)

    @cached_property
    def stored_calibration(self) -> StoredCalibration:
        """This device's calibration cache, read once."""
        from advisor.calibration import cache as cal_cache

        # NOTE: the runner names a GPU by torch.cuda.get_device_name, which reports the same
        # marketing name NVML does; the fingerprint must match for the cache to be found.
        device = calibration_device(self.local_target.device_kind)
        cache, warning = cal_cache.load_cache_for(device, gpu_name=self.gpu_name)
        return StoredCalibration(cache, warning)

    @property
    def calibration(self) -> CalibrationCache | None:
        """The calibration as this command leaves it: the one it measured, else the cache."""
        return self.measured if self.measured is not None else self.stored_calibration.cache

    def with_measured(self, calibration: CalibrationCache) -> Environment:
        """The same machine after this command measured ``calibration``."""
        return dataclasses.replace(self, measured=calibration)


def probe_environment(profiles: dict[str, HardwareProfile] | None = None) -> Environment:
    """Probe this machine once (without torch) for one command.

    Args:
        profiles: the datasheet profiles, when the caller loaded them already.
    """
    from advisor.hardware.probe import probe_hardware
    from advisor.hardware.profiles import load_hardware_profiles

    if profiles is None:
        profiles = load_hardware_profiles()
    report = probe_hardware(with_torch=False)
    return Environment(probe=report, profiles=profiles, clock_ghz=cpu_clock_ghz())


def local_step_time(
    spec: ModelSpec,
    config: TrainingConfig,
    hardware: str | None,
    environment: Environment | None = None,
) -> StepTimeReport:
    """Step time of one configuration for `optadvise estimate` and the export's note:
    measured from this device's calibration cache when it holds the model's layer shape,
    else analytic from the --hardware profile or the probed machine's peak figures. Never
    imports torch.

    Args:
        environment: this machine, probed once for the command (and its calibration read
            once); None probes it here when ``hardware`` is not given.
    """
    from advisor.app.estimate import StepTimeReport
    from advisor.cost import predict_for_optimizer
    from advisor.hardware.profiles import get_hardware_profile
    from advisor.rules.taxonomy import load_taxonomy

    calibration = None
    link = None
    if hardware:
        profile = get_hardware_profile(hardware)
        if config.layout.data_parallel > 1 and profile.intra_node is not None:
            link = profile.intra_node.bandwidth_gb_s
    else:
        env = environment or probe_environment()
        profile = env.local_target.profile
        calibration = env.calibration
    st = predict_for_optimizer(
        spec,
        config,
        load_taxonomy().get(config.optimizer),
        calibration=calibration,
        hardware=profile,
        interconnect_gb_s=link,
    )
    return StepTimeReport(
        seconds=st.seconds,
        source=st.source.value,
        components={
            k: {"seconds": v.seconds, "source": v.source.value, "detail": v.detail}
            for k, v in st.components.items()
        },
    )
