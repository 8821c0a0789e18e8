"""Measured by default: `recommend` on this machine calibrates first when the cache lacks the shape.

The calibration runner is replaced by a fake that records how it was called and returns a
cache with measured figures at the model's layer shape (a real quick calibration of a 7B
layer takes about a minute; the runner has its own tests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor.cost import layer_shape
from advisor.cost.data import (
    AttentionFit,
    CalibrationCache,
    Fingerprint,
    LayerTiming,
    OptimizerTiming,
    ShapeResults,
    Timing,
)
from advisor.model import resolve_model_size
from advisor.shell.cli import app

runner = CliRunner()
SPEC = resolve_model_size("125M")


def _measured_cache(device: str = "cpu") -> CalibrationCache:
    t = Timing(median_s=0.05, iqr_s=0.001, repeats=5)
    fits = [
        AttentionFit(
            backend=b,
            dtype=d,
            a=1e-9,
            b=1e-6,
            c=1e-4,
            seq_lens=[512, 1024, 2048],
            seconds=[0.0, 0.0, 0.0],
            max_rel_residual=0.01,
        )
        for b in ("flash", "math")
        for d in ("fp32", "bf16")
    ]
    optimizers = [
        OptimizerTiming(
            optimizer=o,
            variant="fused",
            steady=Timing(median_s=0.004, iqr_s=0, repeats=5),
            layer_parameters=SPEC.layer_parameter_count(),
        )
        for o in ("sgd", "adamw", "adam", "lion", "adafactor")
    ]
    results = ShapeResults(
        shape=layer_shape(SPEC),
        layers=[LayerTiming(dtype=d, tokens=512, timing=t) for d in ("fp32", "bf16")],
        attention=fits,
        optimizers=optimizers,
    )
    fp = Fingerprint(
        device=device, device_name="fake", torch_version="2.13.0", torch_build="cpu", threads=2
    )
    return CalibrationCache(
        fingerprint=fp,
        created_at="2026-11-30T00:00:00+00:00",
        mode="quick",
        fast_bf16=True,
        copy_gb_s=20.0,
        shapes=[results],
    )


@pytest.fixture
def fake_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record calls to the calibration runner; an empty calibration cache folder."""
    import advisor.calibration.runner as runner_module

    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[dict[str, Any]] = []

    def fake_run_calibration(spec: Any, **kwargs: Any) -> CalibrationCache:
        calls.append({"spec": spec.id, **kwargs})
        progress = kwargs.get("progress")
        if progress is not None:
            for i, label in enumerate(("GEMM", "layer", "attention", "optimizers")):
                progress(label, (i + 1) / 4)
        return _measured_cache(kwargs.get("device", "cpu"))

    monkeypatch.setattr(runner_module, "run_calibration", fake_run_calibration)
    return calls


def test_first_recommend_on_this_machine_calibrates_then_ranks_by_measured_cost(
    fake_runner: list[dict[str, Any]],
) -> None:
    result = runner.invoke(app, ["recommend", "--model-size", "125M"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    (call,) = fake_runner
    assert call["spec"] == SPEC.id and call["mode"] == "quick" and call["device"] == "cpu"
    assert call.get("budget_s") is None  # the quick default budget (QUICK_DEFAULT_BUDGET_S)
    assert callable(call["progress"])  # the bar is drawn on stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert "running the quick calibration first" in notes[0]
    assert "at most 120 s" in notes[0] and "--no-calibrate" in notes[0]
    assert "costs: measured on this device (quick calibration, cpu)" in result.stdout


def test_json_output_is_measured_too_and_stays_clean(fake_runner: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["recommend", "--model-size", "125M", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the note went to stderr, not into the JSON
    assert data["cost_note"].startswith("costs: measured")
    assert any(r["cost_source"] in ("measured", "mixed") for r in data["recommendations"])
    assert len(fake_runner) == 1 and fake_runner[0]["progress"] is None


def test_a_cache_with_the_shape_is_used_without_calibrating(
    fake_runner: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from advisor.calibration import cache as cal_cache

    monkeypatch.setattr(cal_cache, "load_cache_for", lambda *a, **k: (_measured_cache(), None))
    result = runner.invoke(app, ["recommend", "--model-size", "125M"])
    assert result.exit_code == 0, result.output
    assert fake_runner == []
    assert "note:" not in result.stderr
    assert "costs: measured on this device (calibration cache" in result.stdout


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--no-calibrate"], "costs: analytic (--no-calibrate)"),
        (["--hardware", "a100-sxm-80gb"], "costs: analytic, from the a100-sxm-80gb datasheet"),
    ],
)
def test_no_calibrate_and_hardware_stay_analytic(
    fake_runner: list[dict[str, Any]], flags: list[str], words: str
) -> None:
    result = runner.invoke(app, ["recommend", "--model-size", "125M", *flags, "--json"])
    assert result.exit_code == 0, result.output
    assert fake_runner == []
    assert json.loads(result.stdout)["cost_note"].startswith(words)


def test_without_torch_it_says_so_and_stays_analytic(
    fake_runner: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from advisor.app import recommend as advise

    monkeypatch.setattr(advise, "torch_installed", lambda: False)
    result = runner.invoke(app, ["recommend", "--model-size", "125M", "--json"])
    assert result.exit_code == 0, result.output
    assert fake_runner == []
    assert "torch is not installed" in json.loads(result.stdout)["cost_note"]
