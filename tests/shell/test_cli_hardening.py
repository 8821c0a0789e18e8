"""No rough edges: uncut ids, the probed device's fit, bounds, repeated options, hostile files."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor.app.limits import BOUNDS, MAX_SEQ_LEN
from advisor.hardware.profiles import load_hardware_profiles
from advisor.model import load_model_profiles
from advisor.rules.ruleset import load_rules
from advisor.rules.taxonomy import load_taxonomy
from advisor.shell.cli import app
from tests.paths import ROOT_DIR

runner = CliRunner()
ROOT = ROOT_DIR


def _present(ident: str, text: str) -> bool:
    """``ident`` appears whole: not cut, not folded across lines, not glued to more."""
    return re.search(rf"(?<![\w.-]){re.escape(ident)}(?![\w.-])", text) is not None


def _usage_error(result: object) -> list[str]:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert lines and lines[0].startswith("Error: ")
    assert len(lines) <= 2 and all(ln.startswith("  hint: ") for ln in lines[1:])
    return lines


# --- ids are never truncated -----------------------------------------------------------------

HARDWARE_IDS = sorted(load_hardware_profiles())
MODEL_IDS = sorted(load_model_profiles())
RULE_IDS = [lr.rule.id for lr in load_rules([], technique_ids=set(load_taxonomy().ids())).rules]


@pytest.mark.parametrize("columns", ["120", "80", "40", "20"])
def test_profiles_and_rules_lists_show_every_id_whole(columns: str) -> None:
    env = {"COLUMNS": columns, "NO_COLOR": "1"}
    profiles = runner.invoke(app, ["profiles", "list"], env=env)
    assert profiles.exit_code == 0, profiles.output
    assert "…" not in profiles.stdout
    missing = [i for i in HARDWARE_IDS + MODEL_IDS if not _present(i, profiles.stdout)]
    assert not missing, f"cut at {columns} columns: {missing}"
    rules = runner.invoke(app, ["rules", "list"], env=env)
    assert rules.exit_code == 0, rules.output
    assert "…" not in rules.stdout
    assert [i for i in RULE_IDS if not _present(i, rules.stdout)] == []


@pytest.mark.parametrize("columns", ["100", "40", "24"])
def test_the_taxonomy_shows_every_id_whole(columns: str) -> None:
    result = runner.invoke(app, ["taxonomy"], env={"COLUMNS": columns, "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert [i for i in load_taxonomy().ids() if not _present(i, result.stdout)] == []


@pytest.mark.parametrize("columns", ["100", "80", "40"])
def test_the_ranking_shows_its_technique_ids_whole(columns: str) -> None:
    args = ["recommend", "--model-size", "7B", "--hardware", "a100-sxm-80gb", "--top", "8"]
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    ids = {r[k] for r in data["recommendations"] for k in ("optimizer", "precision", "attention")}
    result = runner.invoke(app, args, env={"COLUMNS": columns, "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    table = result.stdout.split("Why #1")[0]
    assert "…" not in table
    assert [i for i in sorted(ids) if not _present(i, table)] == []


def test_calibration_tables_show_optimizer_ids_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from advisor.shell import render
    from tests.shell.test_cli_measured_default import _measured_cache

    cache = _measured_cache()
    for width in (100, 40, 16):
        console = Console(width=width, no_color=True, record=True, file=io.StringIO())
        monkeypatch.setattr(render.common, "console", console)
        render.render_calibration(cache)
        text = console.export_text()
        for shape in cache.shapes:
            for o in shape.optimizers:
                assert _present(o.optimizer, text), (width, o.optimizer)
            for f in shape.attention:
                assert _present(f.backend, text), (width, f.backend)


def test_piped_output_keeps_ids_whole() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(
        [sys.executable, "-m", "advisor", "profiles", "list"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    ).stdout
    assert "…" not in out
    assert [i for i in HARDWARE_IDS + MODEL_IDS if not _present(i, out)] == []


# --- estimate on this machine ----------------------------------------------------------------


def test_estimate_without_hardware_uses_the_probed_device_and_says_if_it_fits() -> None:
    from advisor.hardware.probe import probe_hardware

    on_gpu = bool(probe_hardware(with_torch=False).gpus)
    result = runner.invoke(app, ["estimate", "--model-size", "125M", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["hardware"] is None and data["device_name"].endswith("(probe)")
    assert isinstance(data["fits"], bool) and data["device_memory_bytes"] > 0
    assert data["fits"] == (data["total_bytes"] <= data["device_memory_bytes"])
    if not on_gpu:
        # A CPU has no CUDA context, cuBLAS workspace or caching-allocator reserve.
        assert data["device"] == "cpu"
        assert set(data["overhead_breakdown"].values()) == {0}
    text = runner.invoke(app, ["estimate", "--model-size", "125M"], env={"NO_COLOR": "1"})
    verdict = "fits on " if data["fits"] else "does not fit on "
    assert verdict + data["device_name"] in " ".join(text.stdout.split())
    # An explicit --device is a what-if and wins over the probe.
    cuda = json.loads(
        runner.invoke(
            app, ["estimate", "--model-size", "125M", "--device", "cuda", "--json"]
        ).stdout
    )
    assert cuda["device"] == "cuda" and cuda["overhead_breakdown"]["cuda_context"] > 0


# --- bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["estimate", "--seq-len", "99999999999999999999999"], "--seq-len"),
        (["estimate", "--seq-len", str(MAX_SEQ_LEN + 1)], "out of range"),
        (["estimate", "--seq-len", "9" * 5000], "invalid sequence length"),
        (["estimate", "--seq-len", ""], "invalid sequence length"),
        (["estimate", "--seq-len", "8k"], "exceeds Llama 2 7B's 4,096 token context"),
        (["estimate", "--model", "gpt2", "--seq-len", "2048"], "1,024 learned positions"),
        (["estimate", "--model", "gpt2", "--rope-scaling", "2"], "--rope-scaling applies"),
        (["estimate", "--seq-len", "64k", "--rope-scaling", "8"], "4,096 x 8 token context"),
        (["estimate", "--rope-scaling", "0.5"], "--rope-scaling 0.5 is out of range"),
        (["estimate", "--rope-scaling", "nan"], "--rope-scaling nan is out of range"),
        (["estimate", "--micro-batch", "0"], "--micro-batch 0 is out of range"),
        (["estimate", "--micro-batch", "10000000"], "--micro-batch"),
        (["estimate", "--gpus", "99999999999"], "--gpus"),
        (["estimate", "--lora-rank", "1000000"], "--lora-rank"),
        (["estimate", "--tensor-parallel", "0"], "--tensor-parallel 0"),
        (["estimate", "--pipeline-parallel", "99999"], "--pipeline-parallel"),
        (["estimate", "--grad-accumulation", "-3"], "--grad-accumulation -3"),
        (["estimate", "--expert-parallel", "9" * 40], "--expert-parallel"),
        (["estimate", "--gpus", "65536", "--tensor-parallel", "64"], "world size"),
        (["estimate", "--model-size", "1000000T"], "--model-size"),
        (["estimate", "--model-size", "1" * 400], "invalid model size"),
        (["estimate", "--model-size", ""], "invalid model size ''"),
        (["recommend", "--no-calibrate", "--seq-len", "99999999999999999999999"], "--seq-len"),
        (["recommend", "--no-calibrate", "--nodes", "0"], "--nodes 0"),
        (
            ["recommend", "--hardware", "h100-sxm-80gb", "--gpus", "8", "--nodes", "200000"],
            "--nodes",
        ),
        (
            ["recommend", "--hardware", "h100-sxm-80gb", "--gpus", "64", "--nodes", "65536"],
            "--gpus",
        ),
        (["recommend", "--no-calibrate", "--global-batch", str(2**30)], "--global-batch"),
        (["recommend", "--no-calibrate", "--top", "0"], "--top 0"),
        (["recommend", "--no-calibrate", "--memory-budget", "9999999TB"], "--memory-budget"),
        (["recommend", "--no-calibrate", "--memory-budget", ""], "--memory-budget"),
        (["calibrate", "--budget", "nan"], "--budget nan"),
        (["calibrate", "--budget", "-1"], "--budget -1"),
        (["calibrate", "--budget", "1e9"], "--budget"),
        (["calibrate", "--model-size", ""], "invalid model size ''"),
        (["calibrate", "--device", " "], "--device is empty"),
        (["recommend", "--hardware", ""], "--hardware is empty"),
        (["estimate", "--hardware", " "], "--hardware is empty"),
        (["probe", "--hardware", ""], "--hardware is empty"),
        (["estimate", "--model", ""], "unknown model profile ''"),
    ],
)
def test_every_length_size_and_count_is_bounded(args: list[str], words: str) -> None:
    lines = _usage_error(runner.invoke(app, args))
    assert words in lines[0]


def test_rope_scaling_extends_the_context() -> None:
    result = runner.invoke(
        app,
        [
            "estimate",
            "--seq-len",
            "16k",
            "--rope-scaling",
            "4",
            "--hardware",
            "h100-sxm-80gb",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["seq_len"] == 16384


def test_every_bound_has_a_reason() -> None:
    for flag, bound in BOUNDS.items():
        assert bound.low < bound.high and len(bound.why) > 10, flag


# --- repeated options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["estimate", "--model-size", "7B", "--model-size", ""], "--model-size"),
        (["estimate", "--model-size=7B", "--model-size", "13B"], "--model-size"),
        (["estimate", "--seq-len", "1k", "--micro-batch", "2", "--seq-len", "2k"], "--seq-len"),
        (["recommend", "--calibrate", "--no-calibrate"], "--calibrate/--no-calibrate"),
        (["recommend", "--json", "--json"], "--json"),
        (["rules", "check", "--json", "--json"], "--json"),
        (["calibrate", "--full", "--quick"], "--full/--quick"),
        (["probe", "--hardware", "h200", "--hardware", "t4"], "--hardware"),
    ],
)
def test_a_single_valued_option_given_twice_is_an_error(args: list[str], named: str) -> None:
    lines = _usage_error(runner.invoke(app, args))
    assert lines == [
        f"Error: {named} is given more than once; give each option once (only --rules-dir repeats)"
    ]


def test_values_and_arguments_are_not_counted_as_options() -> None:
    import typer.main

    from advisor.shell.cli.common import repeated_option

    group = typer.main.get_command(app)
    ctx = group.make_context("optadvise", ["--version"], resilient_parsing=True)
    # A value that looks like an option is the previous option's value.
    assert repeated_option(group, ctx, ["estimate", "--model", "--json", "--json"]) is None
    # After "--" everything is an argument.
    assert repeated_option(group, ctx, ["rules", "show", "--json", "--", "--json"]) is None
    # --rules-dir is the one repeatable option.
    assert (
        repeated_option(group, ctx, ["rules", "list", "--rules-dir", "a", "--rules-dir", "b"])
        is None
    )
    # The same flag in two subcommand levels is not a repeat ("--help" is per command).
    assert repeated_option(group, ctx, ["rules", "check", "--json"]) is None
    assert repeated_option(group, ctx, ["rules", "check", "--json", "--json"]) == "--json"


# --- hostile model configs -------------------------------------------------------------------

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}


def _hostile_files() -> dict[str, bytes]:
    def cfg(**changes: object) -> bytes:
        return json.dumps({**LLAMA, **changes}).encode()

    return {
        "empty": b"",
        "whitespace": b"  \n\t ",
        "binary": bytes(range(256)),
        "nul": b'{"model_type": "llama"\x00}',
        "latin-1": b'{"model_type": "llam\xe9"}',
        "bom": b"\xef\xbb\xbf" + cfg(),
        "deep-100k": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "deep-500": b'{"a":' + b"[" * 500 + b"]" * 500 + b"}",
        "deep-objects": b'{"a":' + b'{"b":' * 200 + b"1" + b"}" * 200 + b"}",
        "nan": cfg().replace(b'"hidden_size": 64', b'"hidden_size": NaN'),
        "infinity": cfg().replace(b'"hidden_size": 64', b'"hidden_size": -Infinity'),
        "float-overflow": cfg().replace(b'"hidden_size": 64', b'"hidden_size": 1e999'),
        "5000-digits": cfg().replace(b'"hidden_size": 64', b'"hidden_size": ' + b"9" * 5000),
        "huge-width": cfg(hidden_size=10**14, intermediate_size=10**14),
        "huge-vocab": cfg(vocab_size=10**13),
        "string-width": cfg(hidden_size="4096x"),
        "list-width": cfg(hidden_size=[64]),
        "bool-width": cfg(hidden_size=True),
        "bool-heads": cfg(num_attention_heads=True),
        "string-vocab": cfg(vocab_size="1024"),
        "bool-intermediate": cfg(intermediate_size=True),
        "string-positions": cfg(max_position_embeddings="1024"),
        "null-width": cfg(hidden_size=None),
        "zero-heads": cfg(num_attention_heads=0),
        "negative-layers": cfg(num_hidden_layers=-2),
        "float-layers": cfg(num_hidden_layers=2.5),
        "gpt2-string-width": json.dumps(
            {"model_type": "gpt2", "n_embd": "x", "n_layer": 2, "n_head": 2, "vocab_size": 10}
        ).encode(),
        "gpt2-list-width": json.dumps(
            {"model_type": "gpt2", "n_embd": [8], "n_layer": 2, "n_head": 2, "vocab_size": 10}
        ).encode(),
        "unknown-type": cfg(model_type="not-a-model"),
        "type-not-string": cfg(model_type=["llama"]),
        "array": b"[1, 2, 3]",
        "string": b'"config"',
        "truncated": cfg()[:-10],
        "yaml-not-json": b"model_type: llama\nhidden_size: 64\n",
    }


@pytest.mark.parametrize("name", sorted(_hostile_files()))
def test_a_hostile_model_config_is_one_line_and_exit_2(name: str, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(_hostile_files()[name])
    for command in (["estimate"], ["recommend", "--no-calibrate"]):
        _usage_error(runner.invoke(app, [*command, "--model-config", str(path)]))


def test_a_sane_model_config_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA))
    result = runner.invoke(app, ["estimate", "--model-config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    folder = runner.invoke(app, ["estimate", "--model-config", str(tmp_path), "--json"])
    assert folder.exit_code == 0, folder.output


# --- did you mean ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "typo", "meant"),
    [
        (["recommend"], "h100-sxm", "h100-sxm-80gb"),
        (["estimate"], "rtx4090", "rtx-4090"),
        (["probe"], "A100-SXM-80GB", "a100-sxm-80gb"),
    ],
)
def test_hardware_ids_get_did_you_mean(command: list[str], typo: str, meant: str) -> None:
    lines = _usage_error(runner.invoke(app, [*command, "--hardware", typo]))
    assert lines[0] == f"Error: unknown hardware profile {typo!r}"
    assert lines[1].startswith(f"  hint: did you mean {meant}")
