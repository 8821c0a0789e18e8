"""What start-up and the plan search skip, and that skipping it changes no answer.

Times are measured in benchmarks/ (startup.py, search_speed.py), never asserted here: these
tests check the mechanisms (what a command imports, what the memoised models return).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from advisor.config import Attention, Checkpointing, Offload, Precision, Sharding, Task
from advisor.config import TrainingConfig as Config
from advisor.data.yamlio import YamlError, parse_yaml, yaml_error_line
from advisor.errors import DataError
from advisor.hardware.probe import nvml_library_loads
from advisor.hardware.profiles import load_hardware_profiles
from advisor.memory import MemoryEstimate, MemoryMemo, estimate_memory
from advisor.model import resolve_model_size
from advisor.rules.taxonomy import load_taxonomy
from tests.paths import ROOT_DIR

ROOT = ROOT_DIR

# Runs a command in-process and prints the top-level packages it imported.
_MODULES = """
import json, sys
sys.argv = ["optadvise", *sys.argv[1:]]
import advisor.shell.cli
try:
    advisor.shell.cli.main()
except SystemExit:
    pass
print("MODULES " + json.dumps(sorted(sys.modules)))
"""


def _imported(args: list[str], cache: Path, **env: str) -> set[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    full_env.update(OPTADVISE_CACHE_DIR=str(cache), NO_COLOR="1", **env)
    argv = [sys.executable, "-c", _MODULES, *args]
    subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, check=True)  # fills the cache
    out = subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


def test_rules_check_with_a_warm_cache_imports_no_yaml_search_or_plugin_scan(
    tmp_path: Path,
) -> None:
    mods = _imported(["rules", "check"], tmp_path)
    assert "yaml" not in mods  # the data cache answered: nothing was parsed
    assert "importlib.metadata" not in mods  # no pydantic plugin scan (advisor.shell.bootstrap)
    assert not {m for m in mods if m.startswith("advisor.plan")}  # no plan search
    assert "advisor.export" not in mods and "torch" not in mods


def test_recommend_json_loads_neither_rich_nor_yaml_nor_emit(tmp_path: Path) -> None:
    mods = _imported(["recommend", "--model-size", "7B", "--no-calibrate", "--json"], tmp_path)
    assert "rich" not in mods  # --json never loads the terminal renderer
    assert "yaml" not in mods and "advisor.export" not in mods and "torch" not in mods
    assert "importlib.metadata" not in mods
    if not nvml_library_loads():
        assert "pynvml" not in mods  # no NVIDIA driver here: NVML's bindings are not loaded


def test_a_users_own_plugin_setting_is_respected(tmp_path: Path) -> None:
    # Naming particular plugins to leave out is pydantic's business: its loader runs.
    mods = _imported(["rules", "check"], tmp_path, PYDANTIC_DISABLE_PLUGINS="logfire")
    assert "importlib.metadata" in mods


def test_the_stand_in_loader_answers_no_plugins_and_defers_everything_else() -> None:
    code = (
        "import os, sys\n"
        "os.environ.pop('PYDANTIC_DISABLE_PLUGINS', None)\n"
        "from advisor.shell.bootstrap import skip_pydantic_plugins\n"
        "skip_pydantic_plugins()  # what the CLI's main() does first\n"
        "from pydantic import BaseModel\n"
        "class M(BaseModel):\n"
        "    x: int\n"
        "assert M(x='3').x == 3\n"
        "from pydantic.plugin import _loader\n"
        "assert tuple(_loader.get_plugins()) == ()\n"
        "assert 'importlib.metadata' not in sys.modules\n"
        "assert _loader.PYDANTIC_ENTRY_POINT_GROUP == 'pydantic'  # from the real loader\n"
        "assert os.environ['PYDANTIC_DISABLE_PLUGINS'] == '__all__'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_importing_advisor_as_a_library_leaves_pydantic_plugins_alone() -> None:
    code = (
        "import os, sys\n"
        "os.environ.pop('PYDANTIC_DISABLE_PLUGINS', None)\n"
        "import gc, advisor.shell.cli, advisor.rules.taxonomy, advisor.plan.search\n"
        "assert gc.isenabled()\n"
        "assert 'PYDANTIC_DISABLE_PLUGINS' not in os.environ\n"
        "assert hasattr(sys.modules['pydantic.plugin._loader'], '__file__')  # pydantic's own\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_main_pauses_the_cyclic_gc_and_torch_work_turns_it_back_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from advisor.shell import cli
    from advisor.torchload import import_torch

    monkeypatch.setattr(cli.common, "app", lambda: None)
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        # main() ends with sys.exit (a full or closed stdout changes the status: issue 25).
        with pytest.raises(SystemExit) as done:
            cli.main()
        assert done.value.code == 0
        assert not gc.isenabled()
        import_torch()
        assert gc.isenabled()
    finally:
        gc.enable()


# --- YAML errors without importing PyYAML up front ---------------------------------------------


def test_yaml_errors_keep_pyyamls_message_and_line() -> None:
    import yaml

    text = "a: 1\nb: [2\nc: 3\n"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # what advisor.data.yamlio uses
    with pytest.raises(yaml.YAMLError) as original:
        yaml.load(text, Loader=loader)
    with pytest.raises(YamlError) as ours:
        parse_yaml(text)
    # PyYAML's context, problem, line and column, in one line (issue 25: an error is one line;
    # its marks' `in "<unicode string>"` say nothing to the user).
    err: Any = original.value
    mark = err.problem_mark
    assert str(ours.value) == (
        f"{err.context}: {err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    )
    assert yaml_error_line(ours.value) == mark.line + 1 > 0


def test_an_invalid_hardware_profile_is_reported_as_before(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("id: x\npeak: [1\n")
    with pytest.raises(DataError) as exc:
        load_hardware_profiles(tmp_path)
    assert any("broken.yaml: invalid YAML: " in p for p in exc.value.problems)


def test_parse_yaml_is_safe() -> None:
    with pytest.raises(YamlError):
        parse_yaml("!!python/object/apply:os.system ['true']")


# --- the memoised memory model -------------------------------------------------------------


def _configs() -> list[Config]:
    out = []
    for micro, ckpt, off, (tp, pp), sharding, task, precision in itertools.product(
        (1, 3),
        (Checkpointing.NONE, Checkpointing.FULL),
        (Offload.NONE, Offload.OPTIMIZER),
        ((1, 1), (2, 1), (2, 4)),
        (Sharding.NONE, Sharding.ZERO3),
        (Task.PRETRAIN, Task.LORA),
        (Precision.BF16_MIXED, Precision.FP32),
    ):
        if (task is Task.LORA and (off is not Offload.NONE or pp > 1)) or (
            off is not Offload.NONE and pp > 1
        ):
            continue
        out.append(
            Config(
                task=task,
                precision=precision,
                attention=Attention.FLASH,
                micro_batch=micro,
                grad_accumulation=4,
                seq_len=1024,
                gpus=8,
                tensor_parallel=tp,
                pipeline_parallel=pp,
                sharding=sharding,
                checkpointing=ckpt,
                offload=off,
            )
        )
    return out


@pytest.mark.parametrize(
    "optimizer", ["adamw", "adafactor", "adam-mini", "adamw-8bit", "galore-adamw", "shampoo"]
)
def test_memoised_estimates_equal_fresh_ones_in_any_order(optimizer: str) -> None:
    tax = load_taxonomy()
    if optimizer not in tax:
        pytest.skip(f"{optimizer} is not in the taxonomy")
    opt = tax.get(optimizer)
    spec = resolve_model_size("1.3B")
    configs = _configs()
    # Without a memo every estimate starts from nothing; one memo held over the configs in
    # the other order serves the later ones from what the earlier ones left.
    fresh = [estimate_memory(spec, c, optimizer=opt).model_dump_json() for c in configs]
    memo = MemoryMemo(spec)
    warm = [
        estimate_memory(spec, c, optimizer=opt, memo=memo).model_dump_json()
        for c in reversed(configs)
    ]
    assert warm[::-1] == fresh
    assert len(memo) > 0  # the second pass was served from the memo


def test_estimates_from_shared_pieces_round_trip_through_validation() -> None:
    # The memoised pieces are shared between estimates: an estimate must still be a plain,
    # fully typed value (ints, not floats that would print as "3.0" in --json).
    tax = load_taxonomy()
    spec = resolve_model_size("7B")
    for c in _configs():
        for opt in ("adamw", "sgd"):
            e = estimate_memory(spec, c, optimizer=tax.get(opt))
            again = MemoryEstimate.model_validate(e.model_dump())
            assert again.model_dump_json() == e.model_dump_json()
            assert all(type(v) is int for v in e.breakdown.values())
            assert all(type(v) is int for p in e.phases for v in p.components.values())
