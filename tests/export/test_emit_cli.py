"""`recommend --emit` writes every engine's file, and names the plan a file sets up when an
engine cannot set up the ranked one, with that plan's memory and step time."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor.app.export import expressed_plan_note, write_emitted
from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.config import Offload, Sharding
from advisor.errors import UserError
from advisor.export import EmitTarget, emit_config, same_plan
from advisor.model import resolve_model_size
from advisor.plan import RecommendReport
from advisor.shell.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

runner = CliRunner()
HARDWARE = "h100-sxm-80gb"


@pytest.fixture(scope="module")
def report() -> RecommendReport:
    # One ranked report for the module: planning is the slow part, not the exports.
    request = RecommendRequest.from_flags(
        spec=resolve_model_size("1B"),
        task="pretrain",
        micro_batch=1,
        hardware=HARDWARE,
        gpus=8,
        calibrate=False,
    )
    return run_recommend(request)


def test_recommend_emit_megatron_through_the_cli(tmp_path: Path) -> None:
    args = ["recommend", "--model-size", "1B", "--hardware", HARDWARE, "--gpus", "8"]
    args += ["--task", "pretrain", "--no-calibrate", "--emit", "megatron", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "megatron_args.sh").read_text()
    assert "--tensor-model-parallel-size" in text and "--global-batch-size" in text
    assert "megatron_args.sh" in " ".join(result.stdout.split())


def test_write_emitted_torchtitan(report: RecommendReport, tmp_path: Path) -> None:
    spec = resolve_model_size("1B")
    path, notes = write_emitted(
        report, "torchtitan", tmp_path, nodes=1, spec=spec, hardware=HARDWARE, force=True
    )
    doc = tomllib.loads(path.read_text())
    best = report.recommendations[0].config
    assert doc["parallelism"]["tensor_parallel_degree"] == best.layout.tensor_parallel
    emission = emit_config(EmitTarget.TORCHTITAN, best, num_layers=spec.num_layers)
    # write_emitted puts the priced note first exactly when the export differs.
    assert emission.differs is notes[0].startswith("this file sets up")


def test_a_file_that_sets_up_another_plan_is_refused_without_force(
    report: RecommendReport, tmp_path: Path
) -> None:
    spec = resolve_model_size("1B")
    best = report.recommendations[0].config
    # ZeRO-3 with parameters offloaded: torchtitan's TOML has no key for host offload.
    offloaded = best.with_(offload=Offload.OPTIMIZER_PARAMS, sharding=Sharding.ZERO3)
    assert emit_config(EmitTarget.TORCHTITAN, offloaded, num_layers=spec.num_layers).differs
    first = report.recommendations[0].model_copy(update={"config": offloaded})
    other = report.model_copy(update={"recommendations": [first]})
    with pytest.raises(UserError, match="cannot set up the ranked plan"):
        write_emitted(other, "torchtitan", tmp_path, nodes=1, spec=spec, hardware=HARDWARE)
    assert not list(tmp_path.iterdir()), "nothing half-written"
    path, notes = write_emitted(
        other, "torchtitan", tmp_path, nodes=1, spec=spec, hardware=HARDWARE, force=True
    )
    assert path.exists() and notes[0].startswith("this file sets up")


def test_unknown_emit_kind_names_the_new_ones() -> None:
    result = runner.invoke(app, ["recommend", "--emit", "yaml"])
    assert result.exit_code == 2
    assert "torchtitan" in result.stderr and "megatron" in result.stderr


def test_a_different_plan_is_priced_next_to_the_ranked_one(report: RecommendReport) -> None:
    spec = resolve_model_size("1B")
    best = report.recommendations[0]
    # A plan the report did not rank: the ranked one with parameters offloaded too.
    other = best.config.with_(offload=Offload.OPTIMIZER_PARAMS, sharding=Sharding.ZERO3)
    note = expressed_plan_note(report, other, spec, HARDWARE)
    assert re.search(
        r"another plan: [\d.]+ \w+/device \((fits|does NOT fit)\), [\d.]+ \w*s/step", note
    ), note
    assert "ranked plan:" in note
    # A plan the report ranked is named by its rank, with the report's own figures.
    distinct = [
        rec
        for rec in report.recommendations
        if not any(same_plan(rec.config, r.config) for r in report.recommendations[: rec.rank - 1])
    ]
    assert len(distinct) > 1
    named = expressed_plan_note(report, distinct[1].config, spec, None)
    assert f"plan #{distinct[1].rank} instead" in named


def test_the_export_note_reuses_the_jobs_probe_and_calibration_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 21: one command probes the machine and reads the calibration cache once; the note
    # on a plan the file sets up instead used to probe and read both a second time.
    import advisor.calibration.cache as cal_cache
    import advisor.hardware.probe as probe
    from advisor.app.recommend import plan_recommendation
    from advisor.config import Checkpointing

    calls = {"probe": 0, "cache": 0}
    probe_hardware, load_cache_for = probe.probe_hardware, cal_cache.load_cache_for

    def counted_probe(*args: Any, **kwargs: Any) -> Any:
        calls["probe"] += 1
        return probe_hardware(*args, **kwargs)

    def counted_cache(*args: Any, **kwargs: Any) -> Any:
        calls["cache"] += 1
        return load_cache_for(*args, **kwargs)

    monkeypatch.setattr(probe, "probe_hardware", counted_probe)
    monkeypatch.setattr(cal_cache, "load_cache_for", counted_cache)
    spec = resolve_model_size("125M")
    run = plan_recommendation(RecommendRequest.from_flags(spec=spec, calibrate=False))
    best = run.report.recommendations[0].config
    other = best.with_(checkpointing=Checkpointing.FULL, micro_batch=3)
    note = expressed_plan_note(run.report, other, spec, None, run.environment)
    assert note.startswith("this file sets up another plan: ")
    assert calls == {"probe": 1, "cache": 1}
