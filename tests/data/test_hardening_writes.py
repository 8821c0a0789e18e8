"""Nothing lost (issue 25): exports never overwrite or follow links, temp files never stay
behind, the calibration cache is merged under a lock, and a measurement that cannot be
written still serves the run. Each test is named after the cause it guards."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from advisor import notes
from advisor.calibration import cache as cal_cache
from advisor.cost.data import CalibrationCache, LayerShape
from advisor.data import safeio
from advisor.shell.cli import app
from tests.paths import ROOT_DIR
from tests.shell.test_cli_measured_default import _measured_cache

runner = CliRunner()
EMIT = ["recommend", "--hardware", "a10g", "--model-size", "125M", "--emit", "deepspeed"]


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
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert lines and lines[0].startswith("Error: "), lines
    return lines[0]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "tmp" in p.name)


# --- exports -------------------------------------------------------------------------------


def test_writes_that_follow_symlinks_a_planted_tmp_link_is_never_written_through(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / "ds_config.json.tmp").symlink_to(victim)
    result = runner.invoke(app, [*EMIT, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"
    assert (out / "ds_config.json").is_file() and not (out / "ds_config.json").is_symlink()


def test_exports_replace_an_existing_file_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "ds_config.json"
    mine.write_text("my own config")
    line = _one_error(runner.invoke(app, [*EMIT, "--out", str(out)]))
    assert "exists" in line and mine.read_text() == "my own config"
    # A link at the target is not written through, nor replaced, without --force.
    mine.unlink()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    mine.symlink_to(victim)
    _one_error(runner.invoke(app, [*EMIT, "--out", str(out)]))
    assert victim.read_text() == "precious"
    forced = runner.invoke(app, [*EMIT, "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert not mine.is_symlink() and victim.read_text() == "precious"
    assert '"train_batch_size"' in mine.read_text()
    assert _temps(out) == []


def test_exports_temp_file_left_when_the_target_is_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "ds_config.json").mkdir(parents=True)
    for extra in ([], ["--force"]):
        _one_error(runner.invoke(app, [*EMIT, "--out", str(out), *extra]))
        assert _temps(out) == []


def test_exports_temp_file_left_after_enospc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safeio.os, "write", full)
    line = _one_error(runner.invoke(app, [*EMIT, "--out", str(out)]))
    assert "No space left on device" in line
    assert list(out.iterdir()) == []


def test_stale_temp_files_are_cleaned_on_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".ds_config.json.{2**22 + 12345}.abcd1234{safeio.TEMP_SUFFIX}"  # no such pid
    dead.write_text("{")
    legacy = out / "ds_config.json.tmp"  # what older versions left after a failure
    legacy.write_text("")
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    alive = out / f".other.{os.getpid()}.abcd1234{safeio.TEMP_SUFFIX}"  # a live writer's
    alive.write_text("")
    mine = out / "notes.tmp"  # the user's own file: never touched
    mine.write_text("")
    result = runner.invoke(app, [*EMIT, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not dead.exists() and not legacy.exists()
    assert alive.exists() and mine.exists()


def test_out_without_emit_is_refused() -> None:
    line = _one_error(runner.invoke(app, ["recommend", "--no-calibrate", "--out", "x"]))
    assert "--out applies to --emit" in line
    line = _one_error(runner.invoke(app, ["recommend", "--no-calibrate", "--force"]))
    assert "--force applies to --emit" in line
    line = _one_error(runner.invoke(app, [*EMIT, "--out", ""]))
    assert "--out is empty" in line


# --- the calibration cache -----------------------------------------------------------------


def _shape(cache: CalibrationCache, hidden: int) -> CalibrationCache:
    shape = cache.shapes[0]
    other = shape.model_copy(update={"shape": shape.shape.model_copy(update={"hidden": hidden})})
    return cache.model_copy(update={"shapes": [other]})


def _hiddens(cache: CalibrationCache | None) -> set[int]:
    assert cache is not None
    return {s.shape.hidden for s in cache.shapes}


def test_two_calibrations_at_once_keep_both_shapes() -> None:
    base = _measured_cache()
    # Both runs read the cache before either wrote (old=None), as two processes would.
    first = cal_cache.save_merged(None, _shape(base, 111))
    second = cal_cache.save_merged(None, _shape(base, 222))
    assert _hiddens(first) == {111}
    assert _hiddens(second) == {111, 222}
    assert _hiddens(cal_cache.load_cache(base.fingerprint)[0]) == {111, 222}


def test_the_cache_merge_waits_for_the_lock(tmp_path: Path) -> None:
    base = _measured_cache()
    folder = cal_cache.cache_path(base.fingerprint).parent
    safeio.private_dir(folder)
    order: list[str] = []
    with safeio.locked(folder / ".lock"):
        worker = threading.Thread(
            target=lambda: (cal_cache.save_merged(None, _shape(base, 333)), order.append("saved"))
        )
        worker.start()
        time.sleep(0.3)
        order.append("released")
    worker.join(10)
    assert order == ["released", "saved"]


_CALIBRATE_SHAPES = """
import sys, time
from pathlib import Path
from advisor.calibration import cache as cal_cache
from advisor.cost.data import CalibrationCache

base = CalibrationCache.model_validate_json(Path(sys.argv[1]).read_text())
first, count, ready, go = int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
real_write = cal_cache.write_json_atomic


def slow_disk(text, path):
    # A slow disk widens the read-merge-write window, so that a race without the lock
    # loses shapes every time instead of now and then.
    time.sleep(0.02)
    return real_write(text, path)


cal_cache.write_json_atomic = slow_disk
ready.touch()
deadline = time.time() + 60
while not go.exists() and time.time() < deadline:
    time.sleep(0.005)
shape = base.shapes[0]
for hidden in range(first, first + count):
    mine = shape.model_copy(update={"shape": shape.shape.model_copy(update={"hidden": hidden})})
    merged = cal_cache.save_merged(None, base.model_copy(update={"shapes": [mine]}))
    assert not merged.warnings, merged.warnings
"""


def test_two_calibrate_processes_for_different_shapes_on_one_cache_keep_both(
    tmp_path: Path,
) -> None:
    # Two real processes (two `calibrate` runs for different shapes at once), each merging
    # its shapes into the same device cache through the runner's last step, save_merged;
    # both read the cache before the other wrote (old=None). Nothing may be lost.
    import subprocess
    import sys

    root = ROOT_DIR
    base = tmp_path / "base.json"
    base.write_text(_measured_cache().model_dump_json())
    go = tmp_path / "go"
    count = 15
    procs = []
    for first in (1000, 2000):
        args = [str(base), str(first), str(count), str(tmp_path / f"ready{first}"), str(go)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _CALIBRATE_SHAPES, *args],
                cwd=root,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{f}").exists() for f in (1000, 2000)):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    expected = set(range(1000, 1000 + count)) | set(range(2000, 2000 + count))
    assert _hiddens(cal_cache.load_cache(_measured_cache().fingerprint)[0]) == expected


def _assert_serves_the_run(folder: Path) -> None:
    cache = _measured_cache()
    merged = cal_cache.save_merged(None, cache)
    assert merged.shapes == cache.shapes  # the measurement is still returned
    assert any("could not write" in w for w in merged.warnings)
    (note,) = notes.take()
    assert str(folder) in note and "serves this run only" in note


def test_measurements_thrown_away_when_the_cache_path_is_a_directory() -> None:
    path = cal_cache.cache_path(_measured_cache().fingerprint)
    path.mkdir(parents=True)
    _assert_serves_the_run(path.parent)
    assert _temps(path.parent) == []


def test_measurements_thrown_away_when_the_cache_folder_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    os.environ["OPTADVISE_CACHE_DIR"] = str(blocker / "cache")  # restored by monkeypatch
    _assert_serves_the_run(blocker / "cache")


def test_measurements_thrown_away_on_a_read_only_or_full_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = cal_cache.cache_dir()
    for code in (errno.EROFS, errno.ENOSPC):

        def failing(*args: Any, _code: int = code) -> int:
            raise OSError(_code, os.strerror(_code))

        monkeypatch.setattr(safeio.os, "write", failing)
        _assert_serves_the_run(folder)
        assert not list(folder.glob(f"*{safeio.TEMP_SUFFIX}"))


def test_recommend_still_uses_a_measurement_it_could_not_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import advisor.calibration.runner as runner_module
    import advisor.shell.cli as cli

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(blocker / "cache"))
    # The runner's last step, after measuring: merge into the cache and write it.
    monkeypatch.setattr(
        runner_module,
        "run_calibration",
        lambda spec, **kw: cal_cache.save_merged(None, _measured_cache()),
    )
    monkeypatch.setattr(cli.calibrate, "default_device", lambda: "cpu")
    result = runner.invoke(app, ["calibrate", "--model-size", "125M"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("note: ")]
    assert len(lines) == 1 and str(blocker / "cache") in lines[0]


def test_measurements_thrown_away_when_xdg_cache_home_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `XDG_CACHE_HOME=<read-only> optadvise recommend --model-size 7B` calibrated for 94 s,
    # then failed with a traceback. The calibration is faked (its last step, the cache write,
    # is real); recommend must rank with the measurement and name the folder in one note.
    import advisor.calibration.runner as runner_module
    import advisor.shell.cli as cli

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: a file is in the way instead
        read_only.chmod(0o755)
        read_only.rmdir()
        read_only.write_text("")
    monkeypatch.delenv("OPTADVISE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only))
    folder = cal_cache.cache_dir()
    assert read_only in folder.parents
    measured = _measured_cache()
    monkeypatch.setattr(
        runner_module, "run_calibration", lambda spec, **kw: cal_cache.save_merged(None, measured)
    )
    monkeypatch.setattr(cli.calibrate, "default_device", lambda: "cpu")
    result = runner.invoke(app, ["recommend", "--model-size", "125M", "--json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "measured on this device" in json.loads(result.stdout)["cost_note"]
    said = [ln for ln in result.stderr.splitlines() if str(folder) in ln]
    assert len(said) == 1 and said[0].startswith("note: could not write the calibration cache")


def test_a_calibration_cache_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    os.environ["OPTADVISE_CACHE_DIR"] = str(shared)
    cache, warning = cal_cache.load_cache(_measured_cache().fingerprint)
    assert cache is None and warning is not None and "other users" in warning
    merged = cal_cache.save_merged(None, _measured_cache())
    assert merged.shapes and not list(shared.glob("*.json"))
    assert any("other users" in n for n in notes.take())


def test_the_cache_temp_files_of_a_killed_run_are_cleaned() -> None:
    folder = cal_cache.cache_dir()
    safeio.private_dir(folder)
    legacy = folder / ".tmp-abc123.json"  # mkstemp's name in older versions
    legacy.write_text("{")
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    dead = folder / f".cpu-x.json.{2**22 + 7}.0000aaaa{safeio.TEMP_SUFFIX}"
    dead.write_text("{")
    cal_cache.save_merged(None, _measured_cache())
    assert not legacy.exists() and not dead.exists()
    assert LayerShape  # the cache module's types are unchanged


# --- calibrate --convergence ---------------------------------------------------------------


def test_convergence_interrupted_before_its_first_run_claims_no_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import advisor.calibration.convergence as conv

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "run_convergence", interrupt)
    result = runner.invoke(app, ["calibrate", "--convergence"])
    assert result.exit_code == 130
    assert "nothing was written" in result.stderr and "kept in" not in result.stderr


def test_convergence_without_pytorch_optimizer_says_so_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    import advisor.calibration.convergence as conv

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pytorch_optimizer" else real(name, *a),
    )
    assert conv.missing_packages() == ["lion", "soap"]
    seen: list[str] = []

    def started(*args: Any, **kwargs: Any) -> Any:
        seen.append("started")
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "run_convergence", started)
    result = runner.invoke(app, ["calibrate", "--convergence"])
    first = result.stderr.splitlines()[0]
    assert first.startswith("note: pytorch-optimizer is not installed: lion, soap")
    assert seen == ["started"]


def test_convergence_skips_what_it_cannot_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import advisor.calibration.convergence as conv
    from advisor.model import resolve_model_size

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pytorch_optimizer" else real(name, *a),
    )
    cache = conv.run_convergence(
        resolve_model_size("125M"), optimizers=("adamw", "lion"), lrs=1, steps=4, budget_s=600
    )
    assert [r.optimizer for r in cache.results] == ["adamw"]
    assert any("lion" in w and "pytorch-optimizer" in w for w in cache.warnings)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--budget", "nan"], "--budget nan"),
        (["--budget", "inf"], "--budget inf"),
        (["--budget", "1e308"], "--budget"),
        (["--device", "bogus"], "invalid --device 'bogus'"),
        (["--device", "cuda:7"], "cuda:7"),
    ],
)
def test_calibrate_flags_are_checked_before_any_work(args: list[str], words: str) -> None:
    # The step calibration, as --convergence below: nan, inf, 1e308 and a bogus or absent
    # device used to reach torch (RuntimeError, AssertionError).
    assert words in _one_error(runner.invoke(app, ["calibrate", *args]))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--budget", "nan"], "--budget nan"),
        (["--budget", "inf"], "--budget inf"),
        (["--budget", "1e308"], "--budget"),
        (["--device", "bogus"], "invalid --device 'bogus'"),
        (["--device", "../../x"], "invalid --device"),
        (["--device", "cuda:x"], "invalid --device"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--model-size", ""], "invalid model size ''"),
    ],
)
def test_convergence_flags_are_checked_before_any_work(args: list[str], words: str) -> None:
    assert words in _one_error(runner.invoke(app, ["calibrate", "--convergence", *args]))


def test_calibrate_device_is_checked_before_torch_work() -> None:
    for device in ("cuda:x", "../../x", "cuda:99999"):
        line = _one_error(runner.invoke(app, ["calibrate", "--device", device]))
        assert "invalid --device" in line
