"""A small real calibration on this CPU: structure, cache round trip, corruption, budget, interrupt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advisor.calibration import cache as cal_cache
from advisor.calibration.layers import fit_quadratic
from advisor.calibration.runner import run_calibration
from advisor.calibration.timing import measure, summarize
from advisor.cost import layer_shape
from advisor.cost.data import CACHE_SCHEMA_VERSION, CalibrationCache
from advisor.errors import UserError
from benchmarks.realstep import small_llama

TINY = small_llama(hidden=128, layers=2, heads=4, intermediate=344, vocab=1000, name="tiny")
SMALL_RUN = dict(optimizers=("sgd", "adamw", "mezo", "adamw-8bit"), seq_lens=[64, 128, 256])


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cal_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def calibrated(cache_dir: Path) -> CalibrationCache:
    return run_calibration(TINY, **SMALL_RUN)  # type: ignore[arg-type]


def test_structure_of_a_real_calibration(calibrated: CalibrationCache) -> None:
    c = calibrated
    assert c.schema_version == CACHE_SCHEMA_VERSION and not c.partial and c.mode == "quick"
    assert c.fingerprint.device == "cpu" and c.fingerprint.threads >= 1
    assert set(c.gemm_gflops) == {"fp32", "bf16", "fp16"} and c.copy_gb_s and c.copy_gb_s > 0
    results = c.results_for(layer_shape(TINY))
    assert results is not None
    fp32 = next(lt for lt in results.layers if lt.dtype == "fp32")
    assert fp32.timing.repeats >= 3 and fp32.seconds_per_token > 0
    backends = {(f.backend, f.dtype): f for f in results.attention}
    # MATH and FLASH run on CPU; memory-efficient does not (benchmarks/cpu_efficiency.py).
    assert not backends["math", "fp32"].failed and not backends["flash", "fp32"].failed
    assert backends["mem-efficient", "fp32"].failed == "not available on cpu"
    assert backends["math", "fp32"].seq_lens == [64, 128, 256]
    by_id = {(o.optimizer, o.variant): o for o in results.optimizers}
    fused = by_id["adamw", "fused"]
    assert fused.status == "ok" and fused.steady and fused.steady.repeats >= 3
    assert fused.layer_parameters == TINY.layer_parameter_count()
    assert by_id["mezo", "seeded"].status == "ok"
    assert by_id["adamw-8bit", ""].status == "unsupported"
    assert "CUDA" in by_id["adamw-8bit", ""].detail


def test_cache_round_trip_and_reuse(calibrated: CalibrationCache, cache_dir: Path) -> None:
    files = list(cache_dir.glob("*.json"))
    assert len(files) == 1
    loaded, warning = cal_cache.load_cache_for("cpu")
    assert warning is None and loaded == calibrated
    # A second call with the same shape answers from the cache without measuring.
    again = run_calibration(TINY, **SMALL_RUN)  # type: ignore[arg-type]
    assert again.created_at == calibrated.created_at


def test_corrupt_cache_is_reported_and_rebuilt(
    calibrated: CalibrationCache, cache_dir: Path
) -> None:
    (path,) = cache_dir.glob("*.json")
    path.write_text('{"schema_version": 1, "fingerprint": ')
    cache, warning = cal_cache.load_cache_for("cpu")
    assert cache is None and warning is not None and "corrupt" in warning
    rebuilt = run_calibration(TINY, **SMALL_RUN)  # type: ignore[arg-type]
    assert any("corrupt" in w for w in rebuilt.warnings)
    assert cal_cache.load_cache_for("cpu")[0] is not None


def test_foreign_version_is_reported(calibrated: CalibrationCache, cache_dir: Path) -> None:
    (path,) = cache_dir.glob("*.json")
    data = json.loads(path.read_text())
    data["schema_version"] = 999
    path.write_text(json.dumps(data))
    cache, warning = cal_cache.load_cache_for("cpu")
    assert cache is None and warning is not None and "999" in warning


def test_budget_stops_cleanly_and_keeps_partial_results(cache_dir: Path) -> None:
    c = run_calibration(TINY, budget_s=0.01, **SMALL_RUN)  # type: ignore[arg-type]
    assert c.partial
    results = c.results_for(layer_shape(TINY))
    assert results is not None
    assert any(o.status == "skipped" for o in results.optimizers)
    assert cal_cache.load_cache_for("cpu")[0] == c  # partial results are saved, marked


def test_interrupt_leaves_the_previous_cache_intact(
    calibrated: CalibrationCache, cache_dir: Path
) -> None:
    (path,) = cache_dir.glob("*.json")
    before = path.read_bytes()
    calls = 0

    def ctrl_c(label: str, fraction: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_calibration(TINY, force=True, progress=ctrl_c, **SMALL_RUN)  # type: ignore[arg-type]
    assert path.read_bytes() == before
    # No temp file left behind (the lock file of the read-merge-write stays).
    assert [p.name for p in cache_dir.iterdir() if p.name != ".lock"] == [path.name]


def test_unknown_device_and_mode_are_user_errors(cache_dir: Path) -> None:
    with pytest.raises(UserError, match="no CUDA GPU"):
        run_calibration(TINY, device="cuda:0")
    with pytest.raises(UserError, match="invalid --device"):
        run_calibration(TINY, device="tpu")
    with pytest.raises(UserError, match="calibration mode"):
        run_calibration(TINY, mode="slow")


def test_quadratic_fit_recovers_a_known_curve() -> None:
    xs = [128.0, 256.0, 512.0, 1024.0, 2048.0]
    ys = [3e-8 * x * x + 2e-5 * x + 1e-3 for x in xs]
    a, b, c = fit_quadratic(xs, ys)
    assert a == pytest.approx(3e-8, rel=1e-6) and b == pytest.approx(2e-5, rel=1e-5)
    assert c == pytest.approx(1e-3, rel=1e-4)


def test_timing_statistics() -> None:
    t = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t.median_s == 3.0 and t.iqr_s == 2.0 and t.repeats == 5
    calls: list[str] = []
    m = measure(lambda: calls.append("f"), lambda: calls.append("s"), repeats=5, warmup=2)
    assert calls.count("f") == 7 and m.repeats == 5
    # after the warm-up, every timed call sits between two synchronisations
    assert calls[:2] == ["f", "f"] and calls[2:] == ["s", "f", "s"] * 5


def test_fingerprint_needs_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from advisor.calibration.cache import device_fingerprint; "
        "fp = device_fingerprint('cpu'); assert 'torch' not in sys.modules; print(fp.torch_version)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("2.")
