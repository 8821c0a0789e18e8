"""Optional dependencies missing (issue 25): pytorch-optimizer, bitsandbytes, transformers.

The features that need one say so in one line before any work is done, or leave out the
optimizers they cannot time, with a note. A missing package is simulated (``sys.modules[name]
= None`` makes both ``import`` and ``importlib.util.find_spec`` see no package), never
uninstalled. Each test is named after the cause it guards.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor import notes
from advisor.calibration.optimizers import OPTIMIZERS, QUICK, missing_packages, skip_notes
from advisor.shell.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
PO_IDS = ["lion", "lamb", "lars", "adam-mini", "galore-adamw", "sophia", "adahessian"]
PO_IDS += ["shampoo", "soap"]


@pytest.fixture(autouse=True)
def _sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path / "cache"))
    notes.take()


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _interrupt_before_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the calibration at its first step after the set-up (the CPU-share probe that
    brackets the measurements): what was said by then was said before any work."""
    import advisor.calibration.runner as runner_module

    def stop() -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "CpuShare", stop)


def test_pytorch_optimizer_missing_names_every_optimizer_it_keeps_from_being_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = tuple(OPTIMIZERS)
    assert missing_packages(every, "cpu") == {}  # installed by `make install` (dev extra)
    _without(monkeypatch, "pytorch_optimizer")
    # Exactly the entries whose builders import pytorch_optimizer (psgd-kron and muon have
    # no CPU variant: unsupported on a CPU whatever is installed).
    assert missing_packages(every, "cpu") == {"pytorch-optimizer": PO_IDS}
    assert skip_notes(QUICK, "cpu") == [
        "pytorch-optimizer is not installed: lion will not be timed "
        "(pip install 'optadvise[optimizers]')"
    ]
    assert skip_notes(("sgd", "adamw", "mezo"), "cpu") == []


@pytest.mark.heavy
def test_calibrate_without_pytorch_optimizer_says_so_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without(monkeypatch, "pytorch_optimizer")
    _interrupt_before_measuring(monkeypatch)
    result = runner.invoke(app, ["calibrate", "--model-size", "125M", "--device", "cpu"])
    assert result.exit_code == 130, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "note: pytorch-optimizer is not installed: lion will not be timed "
        "(pip install 'optadvise[optimizers]')"
    ), lines
    assert "Traceback" not in result.output


@pytest.mark.heavy
def test_recommend_calibrating_without_pytorch_optimizer_says_so_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import advisor.shell.cli as cli

    _without(monkeypatch, "pytorch_optimizer")
    _interrupt_before_measuring(monkeypatch)
    monkeypatch.setattr(cli.calibrate, "default_device", lambda: "cpu")
    result = runner.invoke(app, ["recommend", "--model-size", "125M"])
    assert result.exit_code == 130, result.output
    said = [ln for ln in result.stderr.splitlines() if ln.startswith("note: ")]
    assert any("running the quick calibration first" in ln for ln in said), said
    assert said[-1].startswith("note: pytorch-optimizer is not installed: lion will not be")


@pytest.mark.heavy
def test_calibration_without_pytorch_optimizer_never_tries_what_it_cannot_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from advisor.calibration.runner import run_calibration
    from advisor.cost import layer_shape
    from benchmarks.realstep import small_llama

    tiny = small_llama(hidden=128, layers=2, heads=4, intermediate=344, vocab=1000, name="tiny")
    _without(monkeypatch, "pytorch_optimizer")
    said: list[str] = []
    # A spent budget turns every optimizer the run tries into a "skipped: budget spent" row:
    # lion has no row at all, because it is left out up front, not tried and failed.
    cache = run_calibration(
        tiny, optimizers=("sgd", "lion"), seq_lens=[64], budget_s=0.01, say=said.append
    )
    assert said == [
        "pytorch-optimizer is not installed: lion will not be timed "
        "(pip install 'optadvise[optimizers]')"
    ]
    results = cache.results_for(layer_shape(tiny))
    assert results is not None
    assert {o.optimizer for o in results.optimizers} == {"sgd"}
    assert said[0] in cache.warnings  # `calibrate show` says why lion has no timing
    assert notes.take() == []  # said once, through the caller's channel


def test_only_the_calibration_imports_an_optional_package() -> None:
    """The modules that import pytorch-optimizer are the two that say so up front; nothing
    imports transformers or bitsandbytes (the tool counts their models' shapes itself, so no
    --model-config family needs transformers installed)."""
    optional = {"pytorch_optimizer", "transformers", "bitsandbytes"}
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "advisor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                "import_module",
                "find_spec",
            ):
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            for name in names:
                if str(name).split(".")[0] in optional:
                    found.setdefault(str(name).split(".")[0], set()).add(
                        str(path.relative_to(ROOT))
                    )
    assert found == {
        "pytorch_optimizer": {
            "advisor/calibration/optimizers.py",
            "advisor/calibration/convergence.py",
        },
        # The general --model-config path (issue 24): the one reader of configs no built-in
        # family covers; it says in one line when transformers is missing.
        "transformers": {"advisor/model/hfmeta.py"},
    }


def test_transformers_and_bitsandbytes_missing_every_config_family_still_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without(monkeypatch, "transformers", "bitsandbytes")
    families = set()
    for path in sorted((ROOT / "tests" / "fixtures" / "configs").glob("*.json")):
        result = runner.invoke(app, ["estimate", "--model-config", str(path), "--json"])
        if result.exit_code == 0:
            families.add(json.loads(path.read_text())["model_type"])
        else:  # the fixtures meant to be refused are refused in one line, not ImportError
            assert result.exit_code == 2 and result.stderr.startswith("Error: "), result.output
    assert {"llama", "gpt2", "opt", "qwen2", "mistral", "mixtral", "bert"} <= families
    # QLoRA on a GPU profile: bitsandbytes' 4-bit storage is modelled, not imported.
    qlora = runner.invoke(
        app, ["estimate", "--task", "qlora", "--hardware", "a10g", "--model-size", "7B", "--json"]
    )
    assert qlora.exit_code == 0, qlora.output
