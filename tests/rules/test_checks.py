"""`rules check`: one deliberately broken rule set per defect kind; the shipped rules pass."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor.rules.checks import CheckReport, DefectKind, check_rules
from advisor.shell.cli import app
from tests.paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "rulesets"
CANDIDATES = {"sgd", "adamw", "fp8-mixed"}


def run(case: str, extra: list[Path] | None = None) -> CheckReport:
    return check_rules(extra or [], base_dir=FIXTURES / case, candidate_ids=CANDIDATES)


def kinds(report: CheckReport) -> set[DefectKind]:
    return {d.kind for d in report.defects}


def test_consistent_fixture_passes_and_counts_what_it_checked() -> None:
    report = run("ok")
    assert report.ok, [str(d) for d in report.defects]
    assert (
        report.rules_checked == 2 and report.techniques_checked == 4 and report.facts_declared == 5
    )
    assert len(report.rule_files) == 1 and report.scenarios_explored > 0


def _defect(
    report: CheckReport, kind: DefectKind, rule: str | None = None, technique: str | None = None
):  # type: ignore[no-untyped-def]
    found = [
        d
        for d in report.defects
        if d.kind is kind
        and (rule is None or d.rule == rule)
        and (technique is None or d.technique == technique)
    ]
    assert found, f"no {kind.value} for {rule or technique}: {[str(d) for d in report.defects]}"
    return found[0]


def test_schema_errors_name_file_line_and_field() -> None:
    report = run("schema")
    two = _defect(report, DefectKind.SCHEMA, rule="two-verbs")
    assert (
        two.file.endswith("schema/broken.yaml")
        and two.line == 6
        and "exactly one of" in two.message
    )
    bad = _defect(report, DefectKind.SCHEMA, rule="bad-operator")
    assert bad.line == 12 and "exactly one operator" in bad.message


def test_duplicate_ids_are_reported_with_both_places() -> None:
    d = _defect(run("duplicate"), DefectKind.DUPLICATE_ID, rule="adamw-for-finetuning")
    assert d.file.endswith("duplicate/optimizers.yaml") or d.file.endswith("duplicate/more.yaml")
    assert "first at" in d.message and d.line == 2


def test_a_users_folder_is_checked_alongside_the_base(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "mine.yaml").write_text((FIXTURES / "duplicate" / "more.yaml").read_text())
    d = _defect(run("ok", [user]), DefectKind.DUPLICATE_ID, rule="adamw-for-finetuning")
    assert str(user) in d.file or str(user) in d.message


def test_dangling_fact_and_technique() -> None:
    report = run("dangling")
    msgs = [d.message for d in report.defects if d.kind is DefectKind.DANGLING_REFERENCE]
    assert any("undeclared fact 'gpu_count'" in m for m in msgs)
    assert any("unknown technique 'adamw-16bit'" in m for m in msgs)
    assert all(d.line == 2 for d in report.defects if d.kind is DefectKind.DANGLING_REFERENCE)


def test_dead_rules_including_through_an_invariant() -> None:
    report = run("dead")
    assert _defect(report, DefectKind.DEAD_RULE, rule="never-fires").line == 2
    assert _defect(report, DefectKind.DEAD_RULE, rule="fp8-on-cpu").line == 12
    assert not any(d.rule == "adamw-for-finetuning" for d in report.defects)


def test_required_and_excluded_in_one_scenario() -> None:
    d = _defect(
        run("contradiction"), DefectKind.CONTRADICTION, rule="require-adamw-when-finetuning"
    )
    assert d.technique == "adamw" and "exclude-adamw-when-tight" in d.message
    assert d.scenario is not None
    assert d.scenario["task"] == "finetune" and float(d.scenario["memory_headroom"]) < 1


def test_two_optimizers_required_at_once() -> None:
    d = _defect(run("two-optimizers"), DefectKind.CONTRADICTION)
    assert {"require-sgd-when-private", "require-adamw-on-cuda"} & {
        d.rule
    } and "one optimizer" in d.message
    assert d.scenario == {
        "compute_capability": d.scenario["compute_capability"],
        "device_kind": "cuda",
        "private": True,
    }


def test_hard_constraints_that_leave_no_optimizer() -> None:
    d = _defect(run("no-optimizer"), DefectKind.NO_FEASIBLE_OPTIMIZER)
    assert "no-sgd-when-private" in d.message and "no-adamw-when-tight" in d.message
    assert d.scenario is not None and d.scenario["private"] is True


def test_unreachable_techniques() -> None:
    report = run("unreachable")
    assert _defect(report, DefectKind.UNREACHABLE_TECHNIQUE, technique="sgd").line == 2
    groupnorm = _defect(report, DefectKind.UNREACHABLE_TECHNIQUE, technique="groupnorm")
    assert groupnorm.file.endswith("taxonomy.yaml") and "no live rule prefers" in groupnorm.message


def test_rules_without_rationale_or_sources() -> None:
    report = run("undocumented")
    assert _defect(report, DefectKind.MISSING_RATIONALE, rule="no-reasons-given").line == 2
    assert _defect(report, DefectKind.MISSING_SOURCES, rule="no-reasons-given").line == 2


def test_invariants_keep_a_hardware_requirement_from_looking_like_a_contradiction() -> None:
    # fp8-mixed needs CUDA and cc >= 8.9 (a taxonomy requirement rule excludes it elsewhere);
    # requiring it where cc >= 8.9 is consistent only because a CPU's cc is 0 (the invariant).
    report = run("invariant-guarded")
    assert report.ok, [str(d) for d in report.defects]


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["rules", "check", "--json"])
    assert ok.exit_code == 0, ok.stdout
    data = json.loads(ok.stdout)
    assert data["ok"] is True and data["rules_checked"] >= 40
    user = tmp_path / "broken"
    user.mkdir()
    (user / "x.yaml").write_text((FIXTURES / "dangling" / "broken.yaml").read_text())
    bad = runner.invoke(app, ["rules", "check", "--rules-dir", str(user)], env={"COLUMNS": "200"})
    assert bad.exit_code == 1
    assert f"{user / 'x.yaml'}:2: names-unknown-things: dangling-reference" in bad.stdout


def test_shipped_rules_pass_and_rules_check_does_not_import_torch() -> None:
    code = (
        "import sys; from advisor.rules.checks import check_rules; r = check_rules(); "
        "assert 'torch' not in sys.modules; print(r.ok, r.rules_checked)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "True", out.stdout
    assert time.perf_counter() - start > 0  # timing is reported in the notes, not asserted


@pytest.mark.parametrize("case", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_every_fixture_is_exercised(case: str) -> None:
    report = run(case)
    assert report.ok is (case in {"ok", "invariant-guarded"})
