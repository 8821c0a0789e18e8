"""User text is text, and the terminal is not trusted (issue 25): rich markup and escape
sequences from files, paths and the environment print as written; a full or closed stdout
and an ASCII terminal end cleanly; parser errors are one line. Each test is named after
the cause it guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor.shell.cli import app
from tests.paths import ROOT_DIR

runner = CliRunner()
ROOT = ROOT_DIR
HOSTILE_TEXT = "x[/x] [link=http://evil.example]click[/link] \x1b[2J\x1b]0;title\x07 \u202eevil"


@pytest.fixture(autouse=True)
def _sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path / "cache"))


def _clean(result: Any) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    text = result.output
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    return " ".join(text.split())


def _subprocess(args: list[str], tmp_path: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "OPTADVISE_CACHE_DIR": str(tmp_path / "cache"),
        **kw.pop("env", {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "advisor", *args],
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        stderr=subprocess.PIPE,
        **kw,
    )


# --- rich markup and control characters in user text ----------------------------------------


def test_rich_markup_in_a_model_config_name(tmp_path: Path) -> None:
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 1000,
        "max_position_embeddings": 512,
        "_name_or_path": HOSTILE_TEXT,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    for command in (["estimate"], ["recommend", "--no-calibrate", "--top", "1"]):
        out = _clean(runner.invoke(app, [*command, "--model-config", str(path)]))
        assert "x[/x] [link=http://evil.example]click[/link]" in out


def test_rich_markup_in_a_rule_and_its_rules_dir_path(tmp_path: Path) -> None:
    folder = tmp_path / "r[/x]"  # "r[" holding "x]"
    folder.mkdir(parents=True)
    (folder / "mine.yaml").write_text(
        "rules:\n  - id: mine-markup\n"
        f"    title: {json.dumps('A title ' + HOSTILE_TEXT)}\n"
        "    when: {fact: task, eq: finetune}\n"
        f"    then:\n      - advise: {json.dumps('Advice ' + HOSTILE_TEXT)}\n"
        f"    rationale: {json.dumps('Why ' + HOSTILE_TEXT)}\n"
        "    sources:\n      - {authors: Loshchilov and Hutter, year: 2019, title: AdamW}\n"
    )
    d = str(folder)
    shown = _clean(runner.invoke(app, ["rules", "show", "mine-markup", "--rules-dir", d]))
    assert "A title x[/x] [link=http://evil.example]click[/link]" in shown
    assert "r[/x]" in shown and "Why x[/x]" in shown
    _clean(runner.invoke(app, ["rules", "list", "--rules-dir", d]))
    _clean(runner.invoke(app, ["rules", "check", "--rules-dir", d]))
    explained = _clean(
        runner.invoke(
            app,
            ["recommend", "--no-calibrate", "--model-size", "125M", "--rules-dir", d, "--explain"],
        )
    )
    assert "Advice x[/x]" in explained


def test_rich_markup_in_the_cache_dir_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "c[/x]"
    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(folder))
    out = _clean(runner.invoke(app, ["calibrate", "show"]))
    assert f"nocalibrationcachedin{folder}".replace(" ", "") in "".join(out.split())
    folder.mkdir(mode=0o700, parents=True)
    (folder / "cpu-[x].json").write_text("{")
    out = _clean(runner.invoke(app, ["calibrate", "show"]))
    # The console folds long lines wherever the width falls (the temp folder's length varies
    # from run to run), so compare without the whitespace.
    flat = "".join(out.split())
    assert f"{folder}/cpu-[x].json".replace(" ", "") in flat
    assert "thenextcalibrationrebuildsit" in flat


def test_rich_markup_in_an_export_path(tmp_path: Path) -> None:
    out = tmp_path / "o[/x]"
    result = runner.invoke(
        app, ["recommend", "--hardware", "a10g", "--emit", "deepspeed", "--out", str(out)]
    )
    assert f"wrote {out / 'ds_config.json'}" in _clean(result)


# --- the terminal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["taxonomy"],
        ["probe", "--json", "--no-torch"],
        ["rules", "list"],
        ["rules", "check"],
        ["profiles", "list"],
        ["recommend", "--no-calibrate", "--model-size", "7B", "--json"],
        ["estimate", "--model-size", "7B"],
        ["calibrate", "show"],
    ],
    ids=" ".join,
)
def test_a_full_stdout_is_one_line_and_non_zero(args: list[str], tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        result = _subprocess(args, tmp_path, stdout=full)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert lines == ["Error: cannot write the output: No space left on device"]


def test_a_closed_stdout_is_one_line_and_non_zero(tmp_path: Path) -> None:
    def close_stdout() -> None:
        os.close(1)

    result = _subprocess(
        ["recommend", "--no-calibrate", "--json"], tmp_path, preexec_fn=close_stdout
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "Error: standard output is closed; nothing can be reported"
    ]


CLOSED_PIPE_COMMANDS = [
    ["taxonomy"],  # rich
    ["taxonomy", "--json"],  # jsonout
    ["rules", "list", "--json"],  # 200 kB in one write
    ["rules", "check", "--schema"],
    ["recommend", "--no-calibrate", "--model-size", "7B"],
    ["probe", "--json", "--no-torch"],
    ["calibrate", "show"],
    ["--help"],  # typer's own help
]


@pytest.mark.parametrize("args", CLOSED_PIPE_COMMANDS, ids=" ".join)
def test_a_closed_pipe_on_stdout_ends_quietly_with_141(args: list[str], tmp_path: Path) -> None:
    # `optadvise taxonomy | head -1` once head has exited: BrokenPipeError (EPIPE). No
    # traceback, no "Exception ignored ... BrokenPipeError" from Python's flush at exit, no
    # line at all (see EXIT_PIPE in advisor/shell/cli/), and 141 = 128 + SIGPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = _subprocess(args, tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_a_pipe_whose_reader_leaves_mid_report_ends_quietly_with_141(tmp_path: Path) -> None:
    # `optadvise rules list --json | head -c 10`: the reader leaves while one large write is
    # under way (Python's buffered writer used to drop the rest and exit 0).
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "OPTADVISE_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "advisor", "rules", "list", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert os.read(proc.stdout.fileno(), 10).startswith(b"[")
    proc.stdout.close()
    assert (proc.wait(timeout=120), proc.stderr.read()) == (141, b"")


def test_an_ascii_terminal_gets_fallbacks_for_times_and_dash(tmp_path: Path) -> None:
    env = {"LANG": "POSIX", "LC_ALL": "POSIX", "PYTHONIOENCODING": "ascii", "COLUMNS": "200"}
    result = _subprocess(
        ["recommend", "--no-calibrate", "--model-size", "125M"],
        tmp_path,
        env=env,
        stdout=subprocess.PIPE,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii() and "Traceback" not in result.stderr
    # The report's "micro-batch 1 × 2048 tokens" keeps its meaning.
    assert " x " in result.stdout


# --- parser errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["estimate", "--no-such-option"], "No such option: --no-such-option"),
        (["estimate", "--micro-batch", "x"], "Invalid value for '--micro-batch'"),
        (["recommend", "--top"], "Option '--top' requires an argument"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
        (["rules", "show"], "Missing argument"),
        (["estimate", "--model-sizes", "7B"], "No such option: --model-sizes"),
    ],
)
def test_parser_usage_errors_are_one_line_exit_2(args: list[str], words: str) -> None:
    result = runner.invoke(app, args)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 2 and lines[0].startswith("Error: ") and words in lines[0], lines
    assert lines[1].startswith("  hint: see `optadvise") and lines[1].endswith("--help`")


def test_estimate_table_keeps_component_ids_whole_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rich shrinks every column of a table wider than the terminal; the component names are
    # the JSON's keys, so the bar must give way before "overhead: allocator_reserve" is cut.
    monkeypatch.setenv("COLUMNS", "80")
    # Eight GPUs: every overhead, NCCL's buffers included, is non-zero and has a row.
    args = ["estimate", "--model", "llama-3.1-8b", "--hardware", "h100-sxm-80gb"]
    args += ["--gpus", "8", "--sharding", "fsdp"]
    text = runner.invoke(app, args)
    assert text.exit_code in (0, 3), text.output
    report = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert all(report["overhead_breakdown"].values())
    for key in report["overhead_breakdown"]:
        assert f"overhead: {key}" in text.output
    assert "…" not in "".join(
        line.split("│")[1] for line in text.output.splitlines() if "│" in line
    )
