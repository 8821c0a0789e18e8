"""2026 hardware (issue 24, point 1): Blackwell, H800/H20 and MI325X/MI355X profiles at work,
and the NVLink domain as a layout constraint and a priced boundary.

Structure only (no absolute time): TP beyond the NVLink domain costs what the slower link's
bandwidth says, a rack-scale domain keeps TP/EP and data parallelism on NVLink, and the
search keeps tensor parallelism inside the domain.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor.config import Checkpointing, ParallelLayout, Precision, Stack, Task, TrainingConfig
from advisor.cost import AttentionKernel, attention_kernel, comm, predict_step_time
from advisor.cost.comm import A2A_NIC_SHARE, A2A_NVLINK_SHARE
from advisor.errors import UserError
from advisor.hardware.profiles import HardwareProfile, get_hardware_profile, load_hardware_profiles
from advisor.hardware.target import match_gpu_profile, target_from_profile
from advisor.model import get_model_profile
from advisor.plan.layout import Layout, enumerate_layouts
from advisor.shell.cli import app
from advisor.units import GIB

runner = CliRunner()
NEW_IDS = ("b200", "b300", "gb200", "gb300", "h800", "h20", "mi325x", "mi355x")
B200 = get_hardware_profile("b200")
GB200 = get_hardware_profile("gb200")
LLAMA70 = get_model_profile("llama-3.1-70b")


def test_profiles_list_shows_every_new_id_uncut() -> None:
    result = runner.invoke(app, ["profiles", "list"], env={"NO_COLOR": "1", "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    ids = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│")}
    assert set(NEW_IDS) <= ids


# --- the NVLink domain in the cost model ---------------------------------------------------


def _tp_comm(hw: HardwareProfile, tp: int) -> float:
    config = TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        micro_batch=1,
        seq_len=4096,
        stack=Stack.FUSED,
        checkpointing=Checkpointing.FULL,
        tensor_parallel=tp,
        tp_comm_overlap=False,
    )
    st = predict_step_time(LLAMA70, config, calibration=None, hardware=hw)
    return st.components["tensor_parallel_comm"].seconds


def _bus(hw: HardwareProfile, across: bool, per_node: int = 1) -> float:
    """Achievable one-way bus bandwidth from the datasheet links and the comm shares: across
    domains a ring enters each through the NICs of the group's ``per_node`` members there."""
    eff = hw.gpu_efficiency()
    assert hw.intra_node is not None and hw.inter_node is not None
    intra = hw.intra_node.bandwidth_gb_s / 2 * eff.comm_intra.value
    inter = hw.inter_node.bandwidth_gb_s / 2 * eff.comm_inter.value
    return min(intra, per_node * inter) if across else intra


@pytest.fixture
def no_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """The collectives' bytes alone (their NCCL latency is the same inside and across)."""
    monkeypatch.setattr(comm, "RING_LATENCY_S", {2: 0.0, 4: 0.0, 8: 0.0})


@pytest.mark.usefixtures("no_latency")
def test_tp_beyond_the_nvlink_domain_is_priced_at_the_inter_node_link() -> None:
    # The same TP16 on the same GPU: within a 16-GPU domain its collectives run at NVLink
    # speed, beyond an 8-GPU board at the 8 members' NICs (vTrain measured TP16 on two
    # A100 nodes at 2.1x TP8's step, not the 10x one NIC would give: tests/test_gpu_cv.py);
    # the cost scales by the bandwidth ratio.
    wide = B200.model_copy(update={"nvlink_domain": 16})
    inside, beyond = _tp_comm(wide, 16), _tp_comm(B200, 16)
    assert beyond > inside > 0
    assert beyond / inside == pytest.approx(_bus(B200, False) / _bus(B200, True, 8), rel=1e-6)
    # TP8 fits the board either way: the domain does not change its price.
    assert _tp_comm(wide, 8) == pytest.approx(_tp_comm(B200, 8))


@pytest.mark.usefixtures("no_latency")
def test_an_nvl72_rack_runs_tp16_at_nvlink_speed() -> None:
    # GB200's domain of 72 spans its 4-GPU trays: TP16 costs the NVLink price, as it would
    # inside one node; limited to the tray it would cost its 4 members' NICs.
    tray = GB200.model_copy(update={"nvlink_domain": 4})
    assert _tp_comm(tray, 16) / _tp_comm(GB200, 16) == pytest.approx(
        _bus(GB200, False) / _bus(GB200, True, 4), rel=1e-6
    )


def test_expert_parallelism_beyond_the_domain_is_priced_at_the_inter_node_link() -> None:
    # Qwen3-30B-A3B (128 experts) at EP16: all-to-alls inside a 16-GPU domain run at NVLink
    # speed; across two 8-GPU boards the 8 remote ranks' share crosses the NIC while the 7
    # local ones' crosses NVLink at the same time, at DeepEP's measured shares of each link
    # (docs/legacy.md: 153 of ~160 GB/s NVLink, 43 of 50 GB/s RDMA at EP16).
    spec = get_model_profile("qwen3-30b-a3b")
    config = TrainingConfig(
        task=Task.PRETRAIN, precision=Precision.BF16_MIXED, gpus=16, expert_parallel=16
    )

    def a2a(hw: HardwareProfile) -> float:
        st = predict_step_time(spec, config, calibration=None, hardware=hw)
        return st.components["expert_all_to_all"].seconds

    def one_way(hw: HardwareProfile, link: str) -> float:
        value = getattr(hw, link).bandwidth_gb_s
        return value / 2 * (A2A_NVLINK_SHARE if link == "intra_node" else A2A_NIC_SHARE)

    wide = B200.model_copy(update={"nvlink_domain": 16})
    # Inside the domain: 15/16 of the copies at NVLink; across boards: 8/16 at the NIC.
    expected = (8 / 15) * one_way(B200, "intra_node") / one_way(B200, "inter_node")
    assert a2a(B200) / a2a(wide) == pytest.approx(expected, rel=1e-6)
    assert 0.86 <= A2A_NIC_SHARE <= 1.0 and 153 / 160 <= A2A_NVLINK_SHARE <= 158 / 160
    tray = GB200.model_copy(update={"nvlink_domain": 4})
    assert a2a(tray) > a2a(GB200)


def test_new_gpus_are_matched_by_their_nvml_names() -> None:
    # "GB200" contains "B200" and "H200" contains "H20": the longer model name wins.
    profiles = load_hardware_profiles().values()
    for name, gib, expected in (
        ("NVIDIA B200", 179, "b200"),
        ("NVIDIA GB200", 185, "gb200"),
        ("NVIDIA B300 SXM6 AC", 268, "b300"),
        ("NVIDIA GB300", 277, "gb300"),
        ("NVIDIA H20", 95, "h20"),
        ("NVIDIA H200", 140, "h200"),
        ("NVIDIA H800", 79, "h800"),
        ("NVIDIA H100 80GB HBM3", 79, "h100-sxm-80gb"),
    ):
        found = match_gpu_profile(name, gib * GIB, profiles)
        assert found is not None and found.id == expected, name


def test_blackwell_fused_attention_is_cudnn_not_fa3() -> None:
    # FlashAttention-3 is written for sm90 only (Shah et al. 2024).
    config = TrainingConfig(stack=Stack.FUSED)
    assert attention_kernel(config.kernels, B200) is AttentionKernel.CUDNN
    assert attention_kernel(config.kernels, get_hardware_profile("h800")) is AttentionKernel.FA3


# --- the NVLink domain as a layout constraint ----------------------------------------------


def test_tp_spans_an_nvl72_rack_but_not_an_hgx_node() -> None:
    # Llama 3.1 70B: 64 heads, 8 KV heads, so TP <= 8 by the heads; on 4-GPU trays alone
    # TP would stop at 4.
    rack = enumerate_layouts(LLAMA70, world_size=72, gpus_per_node=4, nvlink_domain=72)
    trays = enumerate_layouts(LLAMA70, world_size=72, gpus_per_node=4)
    assert max(lay.parallel.tensor_parallel for lay in rack) == 8
    assert max(lay.parallel.tensor_parallel for lay in trays) == 4
    # Every TP group tiles the domain: 72 GPUs take TP 1, 2, 4, 8 (not 16).
    assert {lay.parallel.tensor_parallel for lay in rack} == {1, 2, 4, 8}


def test_layouts_keep_tp_inside_the_domain() -> None:
    with pytest.raises(ValueError):
        Layout(
            world_size=144,
            gpus_per_node=4,
            parallel=ParallelLayout(data_parallel=9, tensor_parallel=16),
            nvlink_domain=72,
        )
    ok = Layout(
        world_size=144,
        gpus_per_node=4,
        parallel=ParallelLayout(data_parallel=18, tensor_parallel=8),
        nvlink_domain=72,
    )
    assert ok.fast_group == 72
    # A world smaller than the domain is one domain: TP 16 over 64 GPUs of a rack.
    assert (
        Layout(
            world_size=64,
            gpus_per_node=4,
            parallel=ParallelLayout(data_parallel=4, tensor_parallel=16),
            nvlink_domain=72,
        ).parallel.tensor_parallel
        == 16
    )
    with pytest.raises(UserError) as info:
        enumerate_layouts(LLAMA70, world_size=16, gpus_per_node=8, tp=16)
    assert "NVLink domain of 8" in info.value.message


def test_targets_know_whether_the_domain_spans_nodes() -> None:
    # 18 trays of 4 GB200s are one NVLink domain: data parallelism inside it never uses a
    # NIC. Two racks (36 trays) do; an HGX B200 board's domain is its node.
    rack = target_from_profile(GB200, gpus=4, nodes=18, memory_budget=None)
    assert rack.nvlink_domain == 72
    assert GB200.intra_node is not None and GB200.inter_node is not None
    assert rack.interconnect_gb_s == GB200.intra_node.bandwidth_gb_s
    two = target_from_profile(GB200, gpus=4, nodes=36, memory_budget=None)
    assert two.interconnect_gb_s == GB200.inter_node.bandwidth_gb_s
    hgx = target_from_profile(B200, gpus=4, nodes=2, memory_budget=None)
    assert hgx.nvlink_domain == 0
    assert B200.inter_node is not None
    assert hgx.interconnect_gb_s == B200.inter_node.bandwidth_gb_s


def test_a_rack_planned_as_one_node_gives_each_gpu_its_own_trays_host_share() -> None:
    # 72 GB200s over 18 trays: each GPU shares one tray's Grace memory with 3 others, however
    # the rack is written on the command line.
    assert GB200.host is not None
    per_gpu = int(GB200.host.memory_gib * GIB) // GB200.host.gpus
    for gpus, nodes in ((72, 1), (4, 18)):
        t = target_from_profile(GB200, gpus=gpus, nodes=nodes, memory_budget=None)
        assert t.host_memory_bytes == pytest.approx(per_gpu, abs=72)


# --- the commands the issue names -----------------------------------------------------------


def _json(args: list[str]) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_estimate_70b_pretraining_on_an_nvl72_rack() -> None:
    data = _json(
        [
            "estimate",
            "--model-size",
            "70B",
            "--task",
            "pretrain",
            "--hardware",
            "gb200",
            "--gpus",
            "72",
            "--sharding",
            "fsdp",
            "--checkpointing",
            "full",
        ]
    )
    # ~16 B/param of model states over 72 FSDP ranks is ~15.7 GiB each: it fits 186 GiB.
    assert data["fits"] is True
    assert data["total_bytes"] < 186 * GIB
    comm = data["step_time"]["components"]["communication"]
    assert "72 ranks" in comm["detail"] and "NVLink" in comm["detail"]
    assert any("carried over from the hopper block" in n for n in data["notes"])


def test_recommend_70b_pretraining_on_an_hgx_b200() -> None:
    data = _json(
        [
            "recommend",
            "--model-size",
            "70B",
            "--task",
            "pretrain",
            "--hardware",
            "b200",
            "--gpus",
            "8",
            "--no-calibrate",
        ]
    )
    recs = data["recommendations"]
    assert recs
    assert "carried over from the hopper block" in data["cost_note"]
    for r in recs:
        assert r["fits"] is True
        assert r["tensor_parallel"] * r["pipeline_parallel"] * r["data_parallel"] == 8
        assert r["peak_memory_bytes"] <= 0.9 * 180 * GIB
        # No plan beats the B200's dense BF16/FP8 peak: 6 x params FLOPs per token.
        peak = 4500e12 if r["precision"] == "fp8-mixed" else 2250e12
        assert r["tokens_per_s"] * 6 * LLAMA70.parameter_count() < 8 * peak


def test_a_profile_shows_its_domain_formats_and_where_its_efficiencies_come_from() -> None:
    result = runner.invoke(
        app, ["probe", "--hardware", "gb200"], env={"NO_COLOR": "1", "COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "72 GPUs at the intra-node link" in out
    assert "fp4 10000" in out and "mxfp8 5000" in out
    assert "carried over from the hopper block" in out
    hopper = runner.invoke(app, ["probe", "--hardware", "h800"], env={"NO_COLOR": "1"})
    assert "carried over" not in hopper.stdout


def test_a_pinned_tp_may_span_trays_inside_an_nvl72_rack_but_not_hgx_boards() -> None:
    args = ["recommend", "--model-size", "70B", "--task", "pretrain", "--no-calibrate"]
    rack = runner.invoke(
        app, [*args, "--hardware", "gb200", "--gpus", "4", "--nodes", "18", "--tp", "8", "--json"]
    )
    assert rack.exit_code == 0, rack.output
    assert {r["tensor_parallel"] for r in json.loads(rack.stdout)["recommendations"]} == {8}
    boards = runner.invoke(
        app, [*args, "--hardware", "b200", "--gpus", "8", "--nodes", "2", "--tp", "16"]
    )
    assert boards.exit_code == 2
    assert "NVLink domain of 8" in boards.output and "Traceback" not in boards.output
