"""benchmarks/gpu_check.py: without a GPU it says so and writes nothing; ``--dry-run`` runs
every CPU-capable case and the attention sweep on tiny shapes; the prediction paths a GPU
run takes (hardware profile, cost model) answer for a CUDA device; on a real GPU (marker
``gpu``) the measured peaks are within the issue's bounds of the prediction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from benchmarks import gpu_check  # noqa: E402


def test_without_a_gpu_it_measures_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.slow
def test_dry_run_exercises_every_cpu_case(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["dry_run"] and data["device"]["kind"] == "cpu"
    assert {"torch", "transformers", "bitsandbytes"} <= set(data["versions"])
    rows = {r["case"]: r for r in data["finetune"]}
    assert set(rows) == {c.name for c in gpu_check.CASES}
    for name in ("lora-adamw", "full-adamw", "full-adamw-8bit"):
        assert rows[name]["measured"]["step_s"] > 0, name
    for name in ("qlora-adamw", "full-paged-adamw-8bit"):
        assert "CUDA" in rows[name]["skipped"]
    # Adapters train far fewer parameters than the full model: the estimates say so too.
    assert (
        rows["lora-adamw"]["predicted"]["allocated_bytes"]
        < (rows["full-adamw"]["predicted"]["allocated_bytes"])
    )
    kernels = {(r["kernel"], r["seq_len"]) for r in data["attention"] if "measured_s" in r}
    assert ("flash", 128) in kernels and ("eager", 128) in kernels


def test_gpu_predictions_use_the_profile_of_the_device() -> None:
    assert gpu_check.profile_for("NVIDIA H100 80GB HBM3") == "h100-sxm-80gb"
    assert gpu_check.profile_for("NVIDIA H100 PCIe") == "h100-pcie-80gb"
    assert gpu_check.profile_for("NVIDIA H200") == "h200"
    assert gpu_check.profile_for("Some future GPU") is None
    device = {"kind": "cuda", "profile": "h100-sxm-80gb"}
    b, s = gpu_check.GPU_BATCH
    for case in gpu_check.CASES:
        pred = gpu_check.predict(case, gpu_check.GPU_SHAPE, b, s, device)
        assert pred["allocated_bytes"] < pred["reserved_bytes"] < pred["total_bytes"]
        assert pred["step_s"] > 0
    short = gpu_check.predict_attention(1024, 32, 128, "flash", device)
    long = gpu_check.predict_attention(8192, 32, 128, "flash", device)
    assert short is not None and long is not None and 16 < long / short < 64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_peaks_against_the_prediction(tmp_path: Path) -> None:
    """The issue's bar for fine-tuning memory: within 20% of what torch reports."""
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    rows = json.loads(out.read_text())["finetune"]
    measured = [r for r in rows if r.get("measured") and not r["measured"]["oom"]]
    assert measured
    for r in measured:
        assert abs(r["error_pct"]["reserved"]) <= 20, r
