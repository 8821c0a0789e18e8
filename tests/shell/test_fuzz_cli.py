"""Fuzz the command line: hundreds of hostile invocations, zero tracebacks.

The cases come from a seeded generator (the same list on every run and machine): each
takes a command with valid flags and spoils one to three of them with hostile values (huge,
negative, non-finite and non-ASCII numbers, empty and whitespace strings, control
characters, bidi marks, option-looking values, unknown ids), repeats an option, adds an
unknown one, or points --model-config at a hostile file. Every run must end with exit
status 0, 1 or 2 and no traceback; a crash lists the arguments that caused it.

Runs in-process (typer's CliRunner) and never does torch work: recommend runs analytic
(--no-calibrate or a CPU profile) and the calibration runner and default device are fakes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor.shell.cli import app
from tests.shell.test_cli_hardening import _hostile_files
from tests.shell.test_cli_measured_default import _measured_cache

SEED = 20261130
CASES = 420

# Values no option should choke on; some happen to be valid for some options.
HOSTILE = [
    "",
    " ",
    "\t\n",
    "0",
    "-0",
    "-1",
    "-99999999999999999999",
    "1" * 30,
    "9" * 400,
    "9" * 5000,
    "1e308",
    "1e999",
    "-1e999",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1.5",
    "0.0000001",
    "0x10",
    "1_000",
    "1,000",
    "７",  # fullwidth seven
    "٣",  # Arabic-Indic three: int() accepts it
    "²",
    "7B",
    "7b",
    "1.3B",
    "0B",
    "-7B",
    "7Q",
    "1e5",
    "70B ",
    "4k",
    "4K",
    "4kk",
    "24GB",
    "0GB",
    "-24GB",
    "lots",
    "héllo",
    "💥",
    "\u202eevil",
    "a\x00b",
    "line\nbreak",
    "x" * 10_000,
    "--json",
    "-",
    "--",
    "null",
    "[1, 2]",
    "{}",
    "../../etc/passwd",
    "/dev/null",
    "h100-sxm-80gb",
    "h100x",
    "llama-2-7b",
    "llama-9",
    "adamw",
    "adamx",
    "flash",
    "fp64",
    "zero3",
    "zero7",
    "cpu",
    "cuda:99",
    "tpu",
]

BASE: dict[str, list[str]] = {
    "estimate": ["estimate", "--model-size", "125M"],
    "estimate-hw": ["estimate", "--model-size", "7B", "--hardware", "t4"],
    "recommend": ["recommend", "--model-size", "125M", "--no-calibrate", "--top", "2"],
    "recommend-cpu": ["recommend", "--model-size", "125M", "--hardware", "cpu-laptop"],
    "calibrate": ["calibrate", "--model-size", "125M"],
    "probe": ["probe", "--no-torch", "--json"],
    "probe-hw": ["probe", "--hardware", "h200"],
    "rules-show": ["rules", "show", "adamw-for-transformers"],
    "rules-check": ["rules", "check", "--json"],
    "rules-list": ["rules", "list"],
    "taxonomy": ["taxonomy"],
    "profiles": ["profiles", "list"],
    "calibrate-show": ["calibrate", "show"],
}
# The options each command takes a value for (the targets of spoiling).
VALUED: dict[str, list[str]] = {
    "estimate": [
        "--model-size",
        "--model",
        "--task",
        "--optimizer",
        "--precision",
        "--attention",
        "--checkpointing",
        "--micro-batch",
        "--seq-len",
        "--rope-scaling",
        "--gpus",
        "--sharding",
        "--offload",
        "--lora-rank",
        "--hardware",
        "--device",
        "--stack",
        "--grad-accumulation",
        "--tensor-parallel",
        "--pipeline-parallel",
        "--virtual-stages",
        "--expert-parallel",
    ],
    "recommend": [
        "--model-size",
        "--model",
        "--task",
        "--seq-len",
        "--rope-scaling",
        "--micro-batch",
        "--global-batch",
        "--hardware",
        "--gpus",
        "--nodes",
        "--memory-budget",
        "--objective",
        "--privacy",
        "--top",
        "--emit",
        "--out",
        "--rules-dir",
    ],
    "calibrate": ["--model-size", "--model", "--budget", "--device"],
    "probe": ["--hardware"],
}
VALUED["estimate-hw"] = VALUED["estimate"]
VALUED["recommend-cpu"] = VALUED["recommend"]
VALUED["probe-hw"] = VALUED["probe"]
FLAGS = [
    "--json",
    "--schema",
    "--explain",
    "--dp-sgd",
    "--sparse-features",
    "--force",
    "--full",
    "--fused-loss",
    "--optimizer-in-backward",
    "--activation-offload",
]
# Slow but valid: a GPU profile makes recommend search a large layout space (seconds).
_SLOW_HARDWARE = {"h100-sxm-80gb"}


def _spoil(rng: random.Random, args: list[str], options: list[str]) -> list[str]:
    out = list(args)
    for _ in range(rng.randint(1, 3)):
        option = rng.choice(options)
        value = rng.choice(HOSTILE)
        if option == "--hardware" and value in _SLOW_HARDWARE and out[0] == "recommend":
            value = "h100x"
        if option in out and option != "--rules-dir":
            i = out.index(option)
            out[i + 1] = value
        else:
            out += [option, value] if rng.random() < 0.8 else [f"{option}={value}"]
    return out


def generate(config_files: list[Path]) -> list[list[str]]:
    """The hostile invocations, the same on every run."""
    rng = random.Random(SEED)
    cases: list[list[str]] = []
    names = sorted(BASE)
    while len(cases) < CASES:
        name = rng.choice(names)
        args = list(BASE[name])
        roll = rng.random()
        options = VALUED.get(name, [])
        if options and roll < 0.55:
            args = _spoil(rng, args, options)
        elif roll < 0.65:
            i = rng.randrange(1, len(args) + 1)
            args = [*args[:i], rng.choice(args[1:] or ["--json"]), *args[i:]]  # repeat one
        elif roll < 0.75:
            args = [*args, rng.choice([*FLAGS, "--no-such-option", "-x", "--model-sizes"])]
        elif roll < 0.9 and name in ("estimate", "recommend", "calibrate"):
            drop = {"--model-size", "125M"}
            args = [a for a in args if a not in drop]
            args += ["--model-config", str(rng.choice(config_files))]
        elif rng.random() < 0.3:
            args = [rng.choice(HOSTILE), *args[1:]]  # a hostile command name
        else:
            args = [*args, rng.choice(HOSTILE)]  # a stray argument
        assert args != BASE[name]
        cases.append(args)
    return cases


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Caches in tmp, a fake calibration runner and device, the hostile config files."""
    import advisor.calibration.runner as runner_module
    import advisor.shell.cli as cli

    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # --emit writes its default folder here
    monkeypatch.setattr(runner_module, "run_calibration", lambda spec, **kw: _measured_cache())
    monkeypatch.setattr(cli.calibrate, "default_device", lambda: "cpu")
    # NOTE: CliRunner rebuilds the click command tree from the typer app on every invoke
    # (~50 ms); building it once keeps 400 runs well inside CI's minute.
    import functools

    import typer.testing

    monkeypatch.setattr(typer.testing, "_get_command", functools.cache(typer.testing._get_command))
    files: list[Path] = []
    for name, data in sorted(_hostile_files().items()):
        path = tmp_path / "configs" / name / "config.json"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        files.append(path)
    good = tmp_path / "configs" / "good"
    good.mkdir()
    (good / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 128,
                "vocab_size": 1000,
                "max_position_embeddings": 512,
            }
        )
    )
    return [*files, good, good / "config.json", tmp_path / "missing.json", tmp_path]


def test_hostile_command_lines_never_crash(sandbox: list[Path]) -> None:
    runner = CliRunner()
    cases = generate(sandbox)
    assert len(cases) >= 300
    rng = random.Random(SEED)
    crashes: list[str] = []
    statuses: dict[int, int] = {}
    for args in cases:
        env = {"NO_COLOR": "1", "COLUMNS": str(rng.choice([20, 40, 80, 200]))}
        result = runner.invoke(app, args, env=env)
        statuses[result.exit_code] = statuses.get(result.exit_code, 0) + 1
        exc: Any = result.exception
        if (
            result.exit_code not in (0, 1, 2)
            or "Traceback" in result.output
            or (exc is not None and not isinstance(exc, SystemExit))
        ):
            crashes.append(f"{args!r}: exit {result.exit_code}, {exc!r}")
    assert not crashes, "\n".join(crashes[:20])
    # The generator must exercise both outcomes, not only the parser's rejections.
    assert statuses.get(0, 0) >= 20 and statuses.get(2, 0) >= 200, statuses
