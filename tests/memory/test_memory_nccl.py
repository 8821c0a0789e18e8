"""NCCL's communicator buffers (advisor.memory.nccl) against NCCL's source defaults, the
allocation sizes and channel counts NCCL's own logs print, and one published measurement of
an all-to-all's device memory (benchmarks/data/nccl_memory.yaml); a single GPU has none."""

from __future__ import annotations

import json

import pytest
import yaml

from advisor.config import ParallelLayout
from advisor.memory.nccl import (
    CONTROL_BYTES,
    FABRICS,
    LL128_BYTES,
    LL_BYTES,
    RING_BYTES_PER_CHANNEL,
    SIMPLE_BYTES,
    _rounded,
    nccl_bytes,
    nccl_fabric,
    nccl_parts,
)
from advisor.units import MIB
from tests.paths import ROOT_DIR as ROOT

DATA = yaml.safe_load((ROOT / "benchmarks" / "data" / "nccl_memory.yaml").read_text())


def test_every_figure_has_a_source_with_a_url() -> None:
    sources = DATA["sources"]
    assert all(s["url"].startswith("https://") for s in sources.values())
    rows = [*DATA["channels"], *DATA["measurements"]]
    assert len(rows) == 8
    assert all(r["source"] in sources for r in rows)


def test_protocol_buffers_are_nccls_defaults() -> None:
    buffers = DATA["protocol_buffers"]
    nccl_defaults = (buffers["ll"], buffers["ll128"], buffers["simple"])
    assert nccl_defaults == (LL_BYTES, LL128_BYTES, SIMPLE_BYTES)


def test_a_connection_allocates_the_sizes_nccls_alloc_log_prints() -> None:
    # Sender: its control struct; receiver: control + LL + LL128 + Simple; each rounded.
    send = _rounded(CONTROL_BYTES)
    recv = _rounded(CONTROL_BYTES + LL_BYTES + LL128_BYTES + SIMPLE_BYTES)
    assert sorted([recv, send], reverse=True) == DATA["alloc_sizes"]
    assert RING_BYTES_PER_CHANNEL == send + recv == 12 * MIB
    # Under P2P read (A100 NVLink) Simple moves to the sender: the same 12 MiB together.
    read = _rounded(CONTROL_BYTES + SIMPLE_BYTES) + _rounded(CONTROL_BYTES + LL_BYTES + LL128_BYTES)
    assert read == RING_BYTES_PER_CHANNEL


@pytest.mark.parametrize("row", DATA["channels"], ids=lambda r: r["gpu"])
def test_channel_counts_are_the_logged_ones(row: dict) -> None:
    gpu = "a100-pcie-80gb" if row["gpu"] == "pcie" else row["gpu"]
    fabric = FABRICS[gpu]
    assert (fabric.channels, fabric.nvls_channels) == (row["coll"], row["nvls"])
    assert row["source"].split("-")[-1] in fabric.source


def test_an_all_to_all_on_8_h100s_against_its_measured_memory() -> None:
    m = next(r for r in DATA["measurements"] if r["id"] == "h100-alltoall-8gpu")
    layout = ParallelLayout(data_parallel=m["ranks"], expert_parallel=m["ranks"])
    expert = nccl_parts(layout, nccl_fabric(m["gpu"]))["expert"]
    assert expert == (m["ranks"] - 1) * m["channels_per_peer"] * RING_BYTES_PER_CHANNEL
    measured = (m["after_gb"] - m["before_gb"]) * 1e9
    # The P2P FIFOs are a lower bound of what the first all-to-all added (NCCL's device
    # work structures and proxy-mapped memory come with them): 14% under the measured
    # 3.28 GB, 20% under if the user's "GB" were GiB.
    assert 0.78 * measured <= expert <= measured


def test_one_a100_communicator_stays_under_its_published_reading() -> None:
    # NVIDIA/nccl#964 measured a whole process group (NCCL's kernels and work structures,
    # PyTorch's side) after one all-reduce; the model counts the ring FIFOs alone: 55% and
    # 44% of the two readings.
    m = next(r for r in DATA["measurements"] if r["id"] == "a100-allreduce-4gpu")
    a100 = nccl_fabric(m["gpu"], link_domain=4)
    for ranks, measured_mb in ((2, m["ranks_2_mb"]), (4, m["ranks_more_mb"])):
        one = nccl_bytes(ParallelLayout(data_parallel=ranks), a100)
        assert 0.4 * measured_mb * 1e6 <= one <= measured_mb * 1e6


def test_a_single_gpu_has_no_nccl_term_and_unknown_gpus_none() -> None:
    assert nccl_bytes(ParallelLayout(), nccl_fabric("h100-sxm-80gb")) == 0
    assert nccl_bytes(ParallelLayout(data_parallel=8), nccl_fabric("mi300x")) == 0
    assert nccl_bytes(ParallelLayout(data_parallel=8), None) == 0


def test_nvls_only_with_more_than_two_gpus_on_the_switch() -> None:
    h100 = nccl_fabric("h100-sxm-80gb")
    ring = 16 * RING_BYTES_PER_CHANNEL
    assert nccl_bytes(ParallelLayout(data_parallel=2), h100) == ring
    # 16 NVLS channels x 2 directions x (128 KiB chunk x 8 steps) x 8 heads (nvls.cc).
    assert nccl_bytes(ParallelLayout(data_parallel=8), h100) == ring + 16 * 2 * MIB * 8
    a100 = nccl_fabric("a100-sxm-80gb")
    assert nccl_bytes(ParallelLayout(data_parallel=8), a100) == 24 * RING_BYTES_PER_CHANNEL


def test_each_communicating_group_has_its_own_buffers() -> None:
    a100 = nccl_fabric("a100-sxm-80gb")
    parts = nccl_parts(
        ParallelLayout(data_parallel=4, tensor_parallel=8, pipeline_parallel=4), a100
    )
    assert set(parts) == {"tensor", "data", "pipeline"}
    assert parts["tensor"] == parts["data"] == 24 * RING_BYTES_PER_CHANNEL
    assert parts["pipeline"] == 2 * 2 * RING_BYTES_PER_CHANNEL


def test_hybrid_sharding_has_a_shard_and_a_replicate_communicator() -> None:
    from advisor.config import Sharding

    a100 = nccl_fabric("a100-sxm-80gb")
    hsdp = ParallelLayout(data_parallel=32, sharding=Sharding.HSDP, shard_group=8)
    assert nccl_parts(hsdp, a100) == {
        "data": 24 * RING_BYTES_PER_CHANNEL,
        "replicate": 24 * RING_BYTES_PER_CHANNEL,
    }


def test_estimate_counts_nccl_outside_the_allocator_and_in_fits() -> None:
    from typer.testing import CliRunner

    from advisor.shell.cli import app

    base = ["estimate", "--model-size", "7B", "--task", "finetune", "--hardware", "a100-sxm-80gb"]
    runner = CliRunner()
    one = json.loads(runner.invoke(app, [*base, "--json"]).stdout)
    assert one["overhead_breakdown"]["nccl"] == 0
    out = runner.invoke(app, [*base, "--gpus", "8", "--sharding", "fsdp", "--json"])
    assert out.exit_code == 0, out.output
    eight = json.loads(out.stdout)
    over = eight["overhead_breakdown"]
    assert over["nccl"] == 24 * RING_BYTES_PER_CHANNEL
    # nvidia-smi's figure (total) holds it; torch's reserved does not.
    assert eight["total_bytes"] - eight["reserved_bytes"] == over["cuda_context"] + over["nccl"]
    assert eight["fits"] == (eight["total_bytes"] <= eight["device_memory_bytes"])


def test_cublas_workspaces_are_torchs_defaults_per_handle_and_stream() -> None:
    from advisor.memory.cuda_context import TRAINING_BLAS_HANDLES, blas_workspace_bytes

    ws = DATA["cublas_workspaces"]
    assert ws["source"]["url"].startswith("https://github.com/pytorch/pytorch/blob/")
    # The forward's thread and autograd's backward thread each hold a handle.
    assert TRAINING_BLAS_HANDLES == 2
    hopper = 2 * (ws["cublas_sm90"] + ws["cublaslt"])
    other = 2 * (ws["cublas_other"] + ws["cublaslt"])
    assert {p: blas_workspace_bytes(p) for p in ("h100-sxm-80gb", "h20", "a100-sxm-80gb")} == {
        "h100-sxm-80gb": hopper,
        "h20": hopper,
        "a100-sxm-80gb": other,
    }
    # Blackwell (compute capability 10.x) is not sm90: the smaller default.
    assert blas_workspace_bytes("b200") == other
