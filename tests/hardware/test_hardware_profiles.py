"""The shipped hardware profiles: every required id, datasheet figures, and loader errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from advisor.data.resources import profiles_dir
from advisor.errors import DataError, UserError
from advisor.hardware.profiles import (
    DeviceKind,
    HardwareProfile,
    get_hardware_profile,
    load_hardware_profiles,
)

FOLDER = profiles_dir() / "hardware"

# A contract: other modules and the README name these ids.
REQUIRED_IDS = frozenset(
    {
        "h100-sxm-80gb",
        "h100-pcie-80gb",
        "h200",
        "a100-sxm-40gb",
        "a100-sxm-80gb",
        "a10g",
        "l4",
        "l40s",
        "t4",
        "v100-32gb",
        "rtx-4090",
        "rtx-3090",
        "mi300x",
        "cpu-laptop",
        "colab-t4",
        "kaggle-t4x2",
    }
    | {"b200", "b300", "gb200", "gb300", "h800", "h20", "mi325x", "mi355x"}
)
# The 2026 profiles (issue 24): every datasheet figure carries its own source.
FIGURE_SOURCED = ("b200", "b300", "gb200", "gb300", "h800", "h20", "mi325x", "mi355x")

PROFILES = load_hardware_profiles()
ALL_IDS = sorted(PROFILES)
CUDA_IDS = sorted(i for i, p in PROFILES.items() if p.kind is DeviceKind.CUDA)

# PCIe x16 bidirectional bandwidth per generation, GB/s (PCI-SIG: ~2 GB/s per lane per
# direction at Gen4, doubling each generation).
PCIE_X16_GB_S = {"Gen3": 32.0, "Gen4": 64.0, "Gen5": 128.0}


def test_every_required_id_loads() -> None:
    missing = REQUIRED_IDS - set(PROFILES)
    assert not missing, f"required hardware profiles missing: {sorted(missing)}"


def test_every_yaml_file_was_loaded_and_counted() -> None:
    # NOTE: count what was checked (torchtune's config test silently checked 3 of 197).
    files = sorted(FOLDER.glob("*.yaml"))
    assert len(files) == len(PROFILES) == 26
    assert {f.stem for f in files} == set(PROFILES)
    assert not list(FOLDER.glob("*.yml")), "use .yaml: the loader ignores .yml files"


@pytest.mark.parametrize("hw_id", ALL_IDS)
def test_profile_cites_a_web_source(hw_id: str) -> None:
    sources = PROFILES[hw_id].sources
    assert any(s.startswith(("https://", "http://")) for s in sources)
    assert all(" " not in s for s in sources)


@pytest.mark.parametrize("hw_id", ALL_IDS)
def test_profile_explains_itself(hw_id: str) -> None:
    # Every profile makes at least one judgment call (dense vs sparse, GiB vs GB, per-GPU
    # host RAM); the notes must say which.
    assert len(PROFILES[hw_id].notes) > 100


@pytest.mark.parametrize("hw_id", ALL_IDS)
def test_throughput_ordering_follows_the_datasheet_logic(hw_id: str) -> None:
    p = PROFILES[hw_id].peak_tflops
    # Tensor-core TF32 is never slower than non-tensor FP32.
    if p.tf32 is not None:
        assert p.tf32 >= p.fp32
    # 16-bit paths, where present, are at least FP32 speed on every listed accelerator.
    for value in (p.fp16, p.bf16):
        if value is not None:
            assert value >= p.fp32
    # FP8 doubles the 16-bit rate on Hopper, Ada and CDNA 3.
    if p.fp8 is not None:
        assert p.bf16 is not None
        assert p.fp8 == pytest.approx(2 * p.bf16, rel=0.01)


@pytest.mark.parametrize("hw_id", CUDA_IDS)
def test_nvidia_precision_support_follows_compute_capability(hw_id: str) -> None:
    prof = PROFILES[hw_id]
    p = prof.peak_tflops
    assert prof.compute_capability is not None
    if prof.cc >= 8.0:
        # Ampere+ has TF32 and BF16 tensor cores, BF16 at twice the TF32 rate.
        assert p.tf32 is not None and p.bf16 is not None
        assert p.bf16 >= p.tf32
        assert p.bf16 == pytest.approx(2 * p.tf32, rel=0.01)
        assert p.fp16 == p.bf16
    else:
        # Volta and Turing: FP16 tensor cores only.
        assert p.tf32 is None and p.bf16 is None and p.fp8 is None
        assert p.fp16 is not None
    # FP8 tensor cores arrived with Ada (8.9) and Hopper (9.0).
    assert (p.fp8 is not None) == (prof.cc >= 8.9)


@pytest.mark.parametrize("hw_id", ALL_IDS)
def test_fp8_only_on_ada_hopper_blackwell_or_cdna3_and_newer(hw_id: str) -> None:
    prof = PROFILES[hw_id]
    if prof.peak_tflops.fp8 is not None:
        gen = prof.efficiency.generation.value if prof.efficiency else ""
        assert prof.cc >= 8.9 or (prof.vendor == "AMD" and gen in ("cdna3", "cdna4"))


@pytest.mark.parametrize("hw_id", ALL_IDS)
def test_block_scaled_and_4_bit_formats_only_on_blackwell_and_cdna4(hw_id: str) -> None:
    # MXFP8/FP6/FP4 tensor paths arrived with Blackwell (cc 10.x) and CDNA 4; Blackwell runs
    # MXFP8 and FP6 at the FP8 rate and FP4 at twice it or more (HGX/NVL72 tables); CDNA 4
    # runs MXFP6 at the MXFP4 rate, twice FP8 (AMD's MI355X table).
    prof = PROFILES[hw_id]
    p = prof.peak_tflops
    new_formats = (p.mxfp8, p.fp6, p.fp4)
    gen = prof.efficiency.generation.value if prof.efficiency else ""
    if gen not in ("blackwell", "cdna4"):
        assert new_formats == (None, None, None)
        return
    assert p.fp4 is not None and p.fp6 is not None and p.fp8 is not None
    assert p.fp4 >= 2 * p.fp8 * 0.999  # rounded datasheet figures
    if prof.kind is DeviceKind.CUDA:
        assert prof.cc >= 10.0 and p.mxfp8 == p.fp8 and p.fp6 == p.fp8
    else:
        assert p.fp6 == p.fp4


@pytest.mark.parametrize("hw_id", FIGURE_SOURCED)
def test_every_datasheet_figure_has_its_source(hw_id: str) -> None:
    prof = PROFILES[hw_id]
    figures = prof.datasheet_figures()
    # NOTE: count what is checked: memory, bandwidth, >= 4 peaks, both links, TDP, domain.
    assert len(figures) >= 10
    assert prof.unsourced_figures() == []
    for figure in figures:
        said = prof.figure_sources[figure]
        # A document and a date (a year), or an explicit assumption.
        assert said.startswith("assumption:") or any(
            y in said for y in ("2023", "2024", "2025", "2026")
        )
    # Tensor peaks are dense: each source says so or halves a sparse figure.
    for figure in figures:
        if figure.startswith("peak_tflops.") and figure not in ("peak_tflops.fp32",):
            said = prof.figure_sources[figure]
            assert "dense" in said or "FP8 tensor-core path" in said, figure


@pytest.mark.parametrize("hw_id", FIGURE_SOURCED)
def test_new_generations_say_how_their_efficiencies_were_obtained(hw_id: str) -> None:
    # No Blackwell or CDNA 4 end-to-end measurement is fitted: their blocks are carried over,
    # and every constant's source says from where, except the GEMM ceiling of a part with its
    # own measured maximum matmul throughput (MAMF), whose source names it.
    eff = PROFILES[hw_id].efficiency
    assert eff is not None
    sources = [
        getattr(eff, n).source
        for n in ("gemm_max", "gemm_m0", "gemm_n0", "bandwidth", "comm_intra", "comm_inter")
    ] + [a.source for a in eff.attention.values()]
    if eff.generation.value in ("blackwell", "cdna4"):
        assert all(s.startswith(("carried over from the ", "MAMF ")) for s in sources)
        assert "carried over" in PROFILES[hw_id].notes
    else:
        assert not any("carried over" in s for s in sources)


def test_nvlink_domains_follow_the_systems() -> None:
    # HGX boards join 8 GPUs; an NVL72 rack joins 72 across its 4-GPU compute trays.
    for hw_id in ("b200", "b300", "h800", "h20", "mi325x", "mi355x"):
        assert PROFILES[hw_id].link_domain() == 8
    for hw_id in ("gb200", "gb300"):
        prof = PROFILES[hw_id]
        assert prof.link_domain() == 72
        assert prof.efficiency is not None and prof.efficiency.gpus_per_node == 4
    # Without the field, the domain is the node (every profile before 2026).
    assert PROFILES["h100-sxm-80gb"].link_domain() == 8


def test_figure_sources_must_name_figures_the_profile_sets(tmp_path: Path) -> None:
    bad = _raw("h800")
    sources = bad["figure_sources"]
    assert isinstance(sources, dict)
    bad["figure_sources"] = sources | {"peak_tflops.fp4": "a datasheet, 2025"}
    path = _write(tmp_path, "h800.yaml", bad)
    with pytest.raises(DataError) as info:
        load_hardware_profiles(tmp_path)
    assert any(str(path) in p and "peak_tflops.fp4" in p for p in info.value.problems)


@pytest.mark.parametrize("hw_id", ALL_IDS)
def test_compute_capability_is_a_cuda_notion(hw_id: str) -> None:
    prof = PROFILES[hw_id]
    assert (prof.compute_capability is not None) == (prof.kind is DeviceKind.CUDA)


@pytest.mark.parametrize("hw_id", ALL_IDS)
def test_interconnects_are_plausible(hw_id: str) -> None:
    prof = PROFILES[hw_id]
    intra, inter = prof.intra_node, prof.inter_node
    if intra is not None:
        for gen, gb_s in PCIE_X16_GB_S.items():
            if intra.name.startswith(f"PCIe {gen} x16"):
                assert intra.bandwidth_gb_s == gb_s
    if intra is not None and inter is not None:
        # The network out of a node is slower than the links inside it.
        assert inter.bandwidth_gb_s < intra.bandwidth_gb_s
    if prof.host_memory_gib is not None:
        # A node holds at least as much host RAM per GPU as the GPU has memory.
        assert prof.host_memory_gib >= prof.memory_gib


# Published figures, restated from the vendor pages (sources in each YAML). NVIDIA prints
# Hopper/Ada tensor figures "with sparsity": the dense value is half the printed one.
PUBLISHED = [
    # id, memory GiB, bandwidth GB/s, fp32, bf16 (dense)
    ("h100-sxm-80gb", 80, 3350, 67, 1979 / 2),
    ("h100-pcie-80gb", 80, 2000, 51, 1513 / 2),
    ("h200", 141, 4800, 67, 1979 / 2),
    ("a100-sxm-40gb", 40, 1555, 19.5, 312),
    ("a100-sxm-80gb", 80, 2039, 19.5, 312),
    ("l4", 24, 300, 30.3, 242 / 2),
    ("l40s", 48, 864, 91.6, 733 / 2),
    ("rtx-4090", 24, 1008, 82.6, 330.4 / 2),
    ("rtx-3090", 24, 936, 35.6, 142 / 2),
    ("mi300x", 192, 5300, 163.4, 2614.9 / 2),
    # 2026 parts: HGX/NVL72 tables print 8- or 72-GPU totals with sparsity (NVIDIA); AMD
    # prints dense per-GPU figures.
    ("b200", 180, 8000, 600 / 8, 36_000 / 8 / 2),
    ("b300", 270, 8000, 600 / 8, 36_000 / 8 / 2),
    ("gb200", 186, 8000, 5760 / 72, 360_000 / 72 / 2),
    ("gb300", 279, 8000, 80, 360_000 / 72 / 2),
    ("h800", 80, 3350, 67, 1979 / 2),
    ("h20", 96, 4000, 44, 148),
    ("mi325x", 256, 6000, 163.4, 1307.4),
    ("mi355x", 288, 8000, 157.3, 2516.6),
]


@pytest.mark.parametrize(("hw_id", "mem", "bw", "fp32", "bf16"), PUBLISHED)
def test_published_figures(hw_id: str, mem: float, bw: float, fp32: float, bf16: float) -> None:
    prof = PROFILES[hw_id]
    assert prof.memory_gib == mem
    assert prof.memory_bandwidth_gb_s == bw
    assert prof.peak_tflops.fp32 == pytest.approx(fp32)
    assert prof.peak_tflops.bf16 == pytest.approx(bf16, rel=0.002)


def test_pre_ampere_parts_have_fp16_tensor_cores_only() -> None:
    # T4 datasheet: 8.1 TFLOPS FP32, 65 TFLOPS mixed precision; V100 SXM2: 15.7 and 125.
    t4, v100 = PROFILES["t4"], PROFILES["v100-32gb"]
    assert (t4.memory_gib, t4.peak_tflops.fp32, t4.peak_tflops.fp16) == (16, 8.1, 65)
    assert (v100.memory_gib, v100.peak_tflops.fp32, v100.peak_tflops.fp16) == (32, 15.7, 125)


def test_hbm_80gb_parts_are_80_gib_not_80e9_bytes() -> None:
    # nvidia-smi reports 81,559 MiB on an H100 80GB (the probe tests' FakeGpu total), i.e.
    # "80GB" means about 80 GiB; 80e9 bytes would be only 74.5 GiB.
    h100 = PROFILES["h100-sxm-80gb"]
    assert h100.memory_bytes == 80 * 2**30
    assert 85_520_809_984 / h100.memory_bytes == pytest.approx(1.0, abs=0.005)


def test_cpu_laptop_is_an_avx2_machine_without_a_16_bit_fast_path() -> None:
    cpu = PROFILES["cpu-laptop"]
    assert cpu.kind is DeviceKind.CPU
    assert (cpu.cores, cpu.memory_gib) == (8, 16)
    # cores x 1.9 GHz base x 32 FP32 FLOP/cycle (two 256-bit FMA pipes).
    assert cpu.peak_tflops.fp32 == pytest.approx(8 * 1.9e9 * 32 / 1e12)
    # Dual-channel DDR4-3200: 2 x 8 bytes x 3.2 GT/s.
    assert cpu.memory_bandwidth_gb_s == pytest.approx(2 * 8 * 3.2)
    assert cpu.peak_tflops.bf16 is None and cpu.peak_tflops.fp16 is None
    assert cpu.intra_node is None and cpu.inter_node is None


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(UserError) as info:
        get_hardware_profile("nope")
    assert "nope" in info.value.message
    for hw_id in REQUIRED_IDS:
        assert hw_id in info.value.hint


def test_known_profile_is_returned() -> None:
    assert get_hardware_profile("a10g") == PROFILES["a10g"]


# --- loader errors, on copies written to tmp_path ---


def _raw(hw_id: str) -> dict[str, object]:
    data = yaml.safe_load((FOLDER / f"{hw_id}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _write(folder: Path, name: str, data: object) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_copy_of_a_shipped_profile_loads_from_another_folder(tmp_path: Path) -> None:
    _write(tmp_path, "t4.yaml", _raw("t4"))
    loaded = load_hardware_profiles(tmp_path)
    assert loaded == {"t4": PROFILES["t4"]}


def test_broken_profile_names_the_file_and_the_field(tmp_path: Path) -> None:
    _write(tmp_path, "t4.yaml", _raw("t4"))
    bad = _raw("l4") | {"memory_gib": -24}
    path = _write(tmp_path, "l4.yaml", bad)
    with pytest.raises(DataError) as info:
        load_hardware_profiles(tmp_path)
    problems = info.value.problems
    assert len(problems) == 1
    assert str(path) in problems[0]
    assert "memory_gib" in problems[0]


def test_two_broken_files_are_both_reported(tmp_path: Path) -> None:
    first = _write(tmp_path, "a10g.yaml", _raw("a10g") | {"vram": 24})  # unknown field
    second_data = _raw("mi300x")
    peak = second_data["peak_tflops"]
    assert isinstance(peak, dict)
    second_data["peak_tflops"] = {k: v for k, v in peak.items() if k != "fp32"}
    second = _write(tmp_path, "mi300x.yaml", second_data)
    with pytest.raises(DataError) as info:
        load_hardware_profiles(tmp_path)
    problems = info.value.problems
    assert any(str(first) in p and "vram" in p for p in problems)
    assert any(str(second) in p and "peak_tflops.fp32" in p for p in problems)
    assert "and 1 more" in str(info.value)


def test_every_problem_in_one_file_is_reported(tmp_path: Path) -> None:
    bad = _raw("l40s") | {"kind": "tpu", "compute_capability": "eight", "sources": []}
    path = _write(tmp_path, "l40s.yaml", bad)
    with pytest.raises(DataError) as info:
        load_hardware_profiles(tmp_path)
    problems = info.value.problems
    assert all(str(path) in p for p in problems)
    for field in ("kind", "compute_capability", "sources"):
        assert any(f": {field}: " in p for p in problems), field


def test_invalid_yaml_and_id_mismatch_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("id: [unclosed\n")
    _write(tmp_path, "rtx-4090.yaml", _raw("rtx-3090"))  # id does not match the file
    with pytest.raises(DataError) as info:
        load_hardware_profiles(tmp_path)
    problems = info.value.problems
    assert any("broken.yaml" in p and "invalid YAML" in p for p in problems)
    assert any("rtx-4090.yaml" in p and "id:" in p and "rtx-3090" in p for p in problems)


def test_profiles_are_frozen() -> None:
    with pytest.raises(ValueError):
        PROFILES["t4"].memory_gib = 32  # type: ignore[misc]
    assert isinstance(PROFILES["t4"], HardwareProfile)
