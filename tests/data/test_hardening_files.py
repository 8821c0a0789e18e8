"""Files opened once and checked as opened (issue 25): --rules-dir YAML, --model-config and
cache files that are FIFOs, devices, symlink loops, alias bombs, not UTF-8, or too many.
Each test is named after the cause it guards; the ones that used to hang run in a
subprocess with a timeout, so a regression fails instead of stalling the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor import notes
from advisor.calibration import cache as cal_cache
from advisor.shell.cli import app
from tests.paths import ROOT_DIR
from tests.shell.test_cli_measured_default import _measured_cache

runner = CliRunner()
ROOT = ROOT_DIR

RULE = """\
  - id: {id}
    title: A rule of the user's own
    when: {{fact: task, eq: finetune}}
    then:
      - prefer: [adamw]
    rationale: written for a test
    sources:
      - {{authors: Loshchilov and Hutter, year: 2019, title: Decoupled Weight Decay}}
"""


@pytest.fixture(autouse=True)
def _sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path / "cache"))
    notes.take()


def _one_error(result: Any) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert lines and lines[0].startswith("Error: "), lines
    assert len(lines) <= 2 and all(ln.startswith("  hint: ") for ln in lines[1:]), lines
    return lines[0]


def _cli(args: list[str], tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "OPTADVISE_CACHE_DIR": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "advisor", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


# --- --rules-dir YAML ------------------------------------------------------------------------


def _alias_bomb() -> str:
    lines = ["rules:", "  - id: alias-bomb", "    title: An alias bomb in when", "    when:"]
    lines.append('      a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]')
    for i in range(1, 10):
        lines.append(f"      a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    lines += ["    then:", "      - advise: nine to the tenth nodes"]
    return "\n".join(lines) + "\n"


def _rules_dir(tmp_path: Path, name: str) -> Path:
    """A --rules-dir holding the hostile file ``name``."""
    d = tmp_path / name
    d.mkdir()
    f = d / "mine.yaml"
    if name == "non-utf8":
        f.write_bytes(b"rules:\n  - id: caf\xe9\n")
    elif name == "symlink-loop":
        f.symlink_to(f.name)
    elif name == "unhashable-key":
        f.write_text("rules:\n  ? [a, b]\n  : 1\n")
    elif name == "dev-zero":
        f.symlink_to("/dev/zero")
    elif name == "fifo":
        os.mkfifo(f)
    elif name == "folder":
        f.mkdir()
    elif name == "alias-bomb":
        f.write_text(_alias_bomb())
    elif name == "recursive-alias":
        f.write_text("rules: &r\n  - *r\n")
    elif name == "deep-nesting":
        f.write_text("rules: " + "[" * 50_000 + "]" * 50_000 + "\n")
    elif name == "too-large":
        f.write_text("rules:\n" + "# padding\n" * 400_000)  # 4 MB
    elif name == "too-many-rules":
        f.write_text("rules:\n" + "".join(RULE.format(id=f"mine-{i}") for i in range(1_100)))
    elif name == "twenty-thousand-rules":  # the 20,000 rules in 4 MB
        f.write_text("rules:\n" + "".join(RULE.format(id=f"m{i}") for i in range(20_000)))
    return d


HOSTILE_YAML = {
    "non-utf8": "not UTF-8",
    "symlink-loop": "symbolic link loop",
    "unhashable-key": "unhashable key",
    "dev-zero": "character device",
    "fifo": "a FIFO",
    "folder": "a folder",
    "alias-bomb": "expands to more than",
    "recursive-alias": "its own anchor",
    "deep-nesting": "invalid YAML",
    "too-large": "limit",
    "too-many-rules": "past 1,000 rules",
    "twenty-thousand-rules": "limit",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_rules_dir_yaml_hostile_file_is_one_line_exit_2(name: str, tmp_path: Path) -> None:
    d = _rules_dir(tmp_path, name)
    result = _cli(["rules", "list", "--rules-dir", str(d)], tmp_path)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"Error: {d / 'mine.yaml'}:") and HOSTILE_YAML[name] in lines[0]
    assert lines[1:] == ["  hint: fix the file(s) named above"]
    # rules check: a file it cannot read as YAML at all is bad input, as for rules list (one
    # line, exit 2, in seconds), not a defect of the rule base (exit 1).
    check = _cli(["rules", "check", "--rules-dir", str(d)], tmp_path)
    assert check.returncode == 2, (check.stdout, check.stderr)
    assert check.stderr.splitlines() == result.stderr.splitlines()
    assert check.stdout == ""


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("rules: [\n", 2),  # invalid YAML: bad input
        ("- just a list\n", 1),  # well-formed YAML that is not a rule file: a defect
        ("rules: []\nextra: 1\n", 1),  # an unknown top-level key: a defect
    ],
)
def test_rules_check_exit_2_for_unreadable_yaml_1_for_defects_in_well_formed_files(
    text: str, code: int, tmp_path: Path
) -> None:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "mine.yaml").write_text(text)
    result = runner.invoke(app, ["rules", "check", "--rules-dir", str(d)])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code == 2:
        assert _one_error(result).startswith(f"Error: {d / 'mine.yaml'}:")
    else:
        assert str(d / "mine.yaml") in " ".join(result.stdout.split())


def test_rules_dir_yaml_within_the_bounds_still_loads(tmp_path: Path) -> None:
    d = tmp_path / "ok"
    d.mkdir()
    (d / "mine.yaml").write_text(
        "rules:\n" + "".join(RULE.format(id=f"mine-{i}") for i in range(50))
    )
    # Anchors and aliases within the bound are fine.
    anchored = RULE.format(id="mine-anchored").replace("when: {", "when: &ft {")
    aliased = RULE.format(id="mine-aliased").replace(
        "when: {fact: task, eq: finetune}", "when: *ft"
    )
    (d / "anchors.yaml").write_text("rules:\n" + anchored + aliased)
    result = runner.invoke(app, ["rules", "list", "--rules-dir", str(d), "--json"])
    assert result.exit_code == 0, result.output
    ids = {r["rule"]["id"] for r in json.loads(result.stdout)}
    assert {f"mine-{i}" for i in range(50)} | {"mine-anchored", "mine-aliased"} <= ids


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "--rules-dir is empty"),
        ("~nosuchuser/rules", "no user 'nosuchuser'"),
        ("/no/such/folder", "does not exist"),
    ],
)
def test_rules_dir_flag_that_does_nothing_or_cannot_work(value: str, words: str) -> None:
    for command in (["rules", "list"], ["rules", "check"], ["recommend", "--no-calibrate"]):
        assert words in _one_error(runner.invoke(app, [*command, "--rules-dir", value]))


def test_rules_dir_facts_and_taxonomy_files_are_noted_not_skipped_silently(
    tmp_path: Path,
) -> None:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "facts.yaml").write_text("facts: {}\n")
    (d / "taxonomy.yaml").write_text("techniques: []\n")
    result = runner.invoke(app, ["rules", "list", "--rules-dir", str(d)])
    assert result.exit_code == 0, result.output
    found = [ln for ln in result.stderr.splitlines() if ln.startswith("note: ")]
    assert len(found) == 2 and all("is not read" in ln for ln in found)


# --- --model-config --------------------------------------------------------------------------

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_attention_heads", True),
        ("vocab_size", True),
        ("vocab_size", "1024"),
        ("intermediate_size", "1024"),
        ("intermediate_size", True),
        ("max_position_embeddings", "1024"),
        ("max_position_embeddings", True),
        ("hidden_size", 64.0),
    ],
)
def test_wrong_types_in_config_json_are_errors(field: str, value: Any, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA, field: value}))
    line = _one_error(runner.invoke(app, ["estimate", "--model-config", str(path)]))
    assert field in line


def test_config_json_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import advisor.model.hf_config as hf_config

    def second_read(*args: object) -> None:
        raise AssertionError("config.json was read a second time, past the checks")

    monkeypatch.setattr(hf_config, "load_hf_config", second_read)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA))
    result = runner.invoke(app, ["estimate", "--model-config", str(path), "--json"])
    assert result.exit_code == 0, result.output


def _config_path(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name / "config.json"
    p.parent.mkdir()
    if name == "fifo":
        os.mkfifo(p)
    elif name == "dev-zero":
        p.symlink_to("/dev/zero")
    elif name == "symlink-loop":
        p.symlink_to("config.json")
    elif name == "folder-named-config":
        p.mkdir()
    return p


@pytest.mark.parametrize("name", ["fifo", "dev-zero", "symlink-loop", "folder-named-config"])
def test_config_json_that_is_not_a_regular_file(name: str, tmp_path: Path) -> None:
    p = _config_path(tmp_path, name)
    result = _cli(["estimate", "--model-config", str(p)], tmp_path, timeout=60)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    # A folder named config.json is a model folder without a config.json inside.
    words = "not found" if name == "folder-named-config" else "cannot read model config"
    assert lines[0].startswith("Error: ") and words in lines[0]


def test_paths_under_an_unreadable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NOTE: the tests may run as root, whom permission bits do not stop: the refusal is
    # simulated where Path.is_dir() raised it before the `try`.
    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", denied)
    line = _one_error(runner.invoke(app, ["estimate", "--model-config", str(tmp_path / "c")]))
    assert "Permission denied" in line


def test_paths_naming_a_user_that_does_not_exist() -> None:
    line = _one_error(runner.invoke(app, ["estimate", "--model-config", "~nosuchuser/c.json"]))
    assert "no user 'nosuchuser'" in line
    line = _one_error(
        runner.invoke(
            app, ["recommend", "--hardware", "t4", "--emit", "torch", "--out", "~nosuchuser/o"]
        )
    )
    assert "no user 'nosuchuser'" in line


# --- the calibration cache -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep-nesting", "folder"])
def test_calibration_cache_file_that_hangs_or_recurses(kind: str, tmp_path: Path) -> None:
    fp = _measured_cache().fingerprint
    path = cal_cache.cache_path(fp)
    path.parent.mkdir(parents=True, mode=0o700)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "deep-nesting":
        path.write_text("[" * 100_000)
    else:
        path.mkdir()
    show = _cli(["calibrate", "show"], tmp_path, timeout=60)
    assert show.returncode == 0 and "Traceback" not in show.stderr, show.stderr
    assert "the next calibration rebuilds it" in " ".join(show.stdout.split())
    cache, warning = cal_cache.load_cache(fp)
    assert cache is None and warning is not None
    if kind != "folder":  # a folder in the way is noted instead (test_hardening_writes)
        rebuilt = cal_cache.save_merged(None, _measured_cache())
        assert cal_cache.load_cache(fp)[0] == rebuilt
