"""The hardware a plan is for: datasheet profiles and the probe, with the host they share.

Figures come from the profiles' cited datasheets (DGX H100: 2 TiB of RAM and 30.72 TB of
NVMe for 8 GPUs; NVLink 4 at 900 GB/s per H100) and from the probe's faked NVML answers.
"""

from __future__ import annotations

import pytest

from advisor.errors import UserError
from advisor.hardware import probe
from advisor.hardware.profiles import DeviceKind, load_hardware_profiles
from advisor.hardware.target import (
    HostOverride,
    cpu_profile_from_probe,
    host_for,
    target_from_probe,
    target_from_profile,
)
from advisor.units import GIB
from tests.conftest import FakeGpu, FakeNVML

PROFILES = load_hardware_profiles()
H100 = PROFILES["h100-sxm-80gb"]


def test_one_gpu_planned_on_a_dgx_may_use_the_whole_host() -> None:
    # ZeRO-Offload's single-GPU runs used the whole server's RAM (Ren et al. 2021).
    one = target_from_profile(H100, gpus=1, nodes=1, memory_budget=None)
    eight = target_from_profile(H100, gpus=8, nodes=1, memory_budget=None)
    assert one.host_memory_bytes == 2048 * GIB
    assert eight.host_memory_bytes == 2048 * GIB // 8
    assert eight.nvme_bytes == int(30.72e12) // 8
    assert "DGX H100" in eight.host_source


def test_host_flags_replace_the_profiles_host_and_are_shared_per_gpu() -> None:
    host = HostOverride(memory_bytes=512 * GIB, nvme_bytes=4 * 10**12)
    t = target_from_profile(H100, gpus=4, nodes=1, memory_budget=None, host=host)
    assert t.host_memory_bytes == 128 * GIB and t.nvme_bytes == 10**12
    assert t.host_source == "--host-memory, --nvme"


def test_links_one_gpu_none_one_node_nvlink_several_nodes_the_nic() -> None:
    single = target_from_profile(H100, gpus=1, nodes=1, memory_budget=None)
    node = target_from_profile(H100, gpus=8, nodes=1, memory_budget=None)
    cluster = target_from_profile(H100, gpus=8, nodes=4, memory_budget=None)
    assert single.interconnect_gb_s == 0.0 and single.intra_node_gb_s == 0.0
    assert node.interconnect_gb_s == node.intra_node_gb_s == 900
    assert H100.inter_node is not None
    assert cluster.interconnect_gb_s == H100.inter_node.bandwidth_gb_s < 900
    assert cluster.intra_node_gb_s == 900


def test_a_memory_budget_replaces_the_device_memory_and_is_marked() -> None:
    t = target_from_profile(H100, gpus=1, nodes=1, memory_budget=24 * GIB)
    assert t.device_memory_bytes == 24 * GIB and t.memory_budget_applied
    assert not target_from_profile(H100, gpus=1, nodes=1, memory_budget=None).memory_budget_applied


def test_a_cpu_profile_cannot_be_planned_on_several_devices() -> None:
    with pytest.raises(UserError, match="CPU profile"):
        target_from_profile(PROFILES["cpu-laptop"], gpus=2, nodes=1, memory_budget=None)
    t = target_from_profile(PROFILES["cpu-laptop"], gpus=1, nodes=1, memory_budget=None)
    assert t.device_kind is DeviceKind.CPU and t.host_memory_bytes == 0


def test_the_16_bit_verdict_follows_the_datasheet() -> None:
    # V100: fp16 tensor cores (125 TFLOP/s) but no bf16; an H100 has both.
    v100 = target_from_profile(PROFILES["v100-32gb"], gpus=1, nodes=1, memory_budget=None)
    h100 = target_from_profile(H100, gpus=1, nodes=1, memory_budget=None)
    assert v100.fast_fp16 and not v100.fast_bf16
    assert h100.fast_fp16 and h100.fast_bf16


def _cpu_report(avx512: bool, fast_bf16: bool) -> probe.ProbeReport:
    report = probe.probe_hardware(with_torch=False, nvml=FakeNVML(gpus=[]))
    features = {**report.cpu.features, "avx512f": avx512}
    cpu = report.cpu.model_copy(
        update={
            "physical_cores": 2,
            "logical_cores": 2,
            "usable_cores": 2,
            "features": features,
            "fast_bf16": fast_bf16,
            "fast_fp16": False,
        }
    )
    return report.model_copy(update={"cpu": cpu})


def test_the_local_cpus_analytic_peak_is_cores_clock_and_fma_lanes() -> None:
    # Two FMA units of 16 fp32 lanes (AVX-512) = 64 FLOP/cycle; AVX2: 32.
    wide = cpu_profile_from_probe(_cpu_report(avx512=True, fast_bf16=True), clock_ghz=2.5)
    narrow = cpu_profile_from_probe(_cpu_report(avx512=False, fast_bf16=False), clock_ghz=2.5)
    assert wide.peak_tflops.fp32 == pytest.approx(2 * 2.5 * 64 / 1000)
    assert narrow.peak_tflops.fp32 == pytest.approx(2 * 2.5 * 32 / 1000)
    assert wide.peak_tflops.bf16 == wide.peak_tflops.fp32
    assert narrow.peak_tflops.bf16 == pytest.approx(narrow.peak_tflops.fp32 / 100)


def test_a_machine_without_gpus_plans_its_cpu_and_refuses_several_devices() -> None:
    report = _cpu_report(avx512=True, fast_bf16=True)
    t = target_from_probe(report, PROFILES, gpus=None, nodes=1, memory_budget=None)
    assert t.device_kind is DeviceKind.CPU and t.source == "probe"
    assert t.device_memory_bytes == report.memory.effective_available_bytes
    with pytest.raises(UserError, match="no GPU found"):
        target_from_probe(report, PROFILES, gpus=2, nodes=1, memory_budget=None)


def test_more_gpus_than_the_node_has_need_another_profile() -> None:
    report = probe.probe_hardware(with_torch=False, nvml=FakeNVML(gpus=[FakeGpu(), FakeGpu()]))
    with pytest.raises(UserError, match="this machine has 2"):
        target_from_probe(report, PROFILES, gpus=4, nodes=1, memory_budget=None)
    t = target_from_probe(report, PROFILES, gpus=None, nodes=1, memory_budget=None)
    assert t.host_memory_bytes == report.memory.effective_available_bytes // 2


# -- the host of n devices, and the free-tier hosts ------------------------------------------


@pytest.mark.parametrize("hw_id", ["t4", "h100-sxm-80gb", "rtx-4090", "kaggle-t4x2", "l4"])
@pytest.mark.parametrize("planned", [1, 2, 8])
def test_the_host_of_n_devices_is_what_planning_n_devices_gives(hw_id: str, planned: int) -> None:
    # A g4dn.12xlarge (192 GiB, 4 T4s, aws.amazon.com/ec2/instance-types/g4/): one planned
    # T4 has all of it, 8 planned T4s (two hosts) 48 GiB each, whatever was planned first.
    profile = PROFILES[hw_id]
    t = target_from_profile(profile, gpus=planned, nodes=1, memory_budget=None)
    for n in (1, 2, 4, 8, 16):
        direct = target_from_profile(profile, gpus=n, nodes=1, memory_budget=None)
        assert host_for(t, n) == (direct.host_memory_bytes, direct.nvme_bytes), n


def test_eight_t4s_have_a_quarter_of_a_g4dn_hosts_ram_each() -> None:
    one = target_from_profile(PROFILES["t4"], gpus=1, nodes=1, memory_budget=None)
    assert one.host_memory_bytes == 192 * GIB
    assert host_for(one, 8)[0] == 48 * GIB and host_for(one, 2)[0] == 96 * GIB


def test_free_tier_t4s_offload_into_their_own_small_hosts() -> None:
    # Colab's free T4 runtime shows 12.7 GB of RAM; Kaggle's T4 x2 VM 31.36 GiB, 29 left to
    # training; nvidia-smi/torch report 15360 MiB per T4 there (ECC on); cc 7.5, no bf16.
    colab = target_from_profile(PROFILES["colab-t4"], gpus=1, nodes=1, memory_budget=None)
    kaggle = target_from_profile(PROFILES["kaggle-t4x2"], gpus=2, nodes=1, memory_budget=None)
    assert colab.host_memory_bytes == int(12.7 * GIB) and colab.nvme_bytes == 0
    assert kaggle.host_memory_bytes == 29 * GIB // 2 and kaggle.nvme_bytes == 0
    for t in (colab, kaggle):
        assert t.device_memory_bytes == 15 * GIB
        assert t.compute_capability == 7.5 and not t.fast_bf16 and t.fast_fp16
