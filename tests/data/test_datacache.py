"""The content-keyed cache of the shipped data: hits, invalidation, unwritable, corrupt and
planted caches (nothing in a cache file ever runs), private folders."""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from advisor.data import cache as datacache
from advisor.data.cache import cached_by_content, clear_memory, data_cache_dir


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(datacache.CACHE_ENV, str(tmp_path / "cache"))
    clear_memory()
    yield tmp_path / "cache" / "data"
    clear_memory()


def _counting_loader(calls: list[str]) -> Any:
    @cached_by_content("toy", lambda a: ([Path(a["path"])], ""))
    def load(path: Path) -> str:
        text = path.read_text()
        calls.append(text)
        return text

    return load


def test_shipped_data_is_written_once_then_read_back(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from advisor.rules import taxonomy as tax_module

    first = tax_module.load_taxonomy()
    files = sorted(p.name for p in cache.glob("taxonomy-*.json"))
    assert len(files) == 1
    clear_memory()

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached taxonomy was parsed again")

    monkeypatch.setattr(tax_module.Technique, "model_validate", no_parsing)
    again = tax_module.load_taxonomy()
    assert again == first and again is not first
    assert sorted(p.name for p in cache.glob("taxonomy-*.json")) == files


def test_an_edit_that_keeps_size_and_mtime_still_invalidates(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datacache, "is_shipped", lambda files: True)
    calls: list[str] = []
    load = _counting_loader(calls)
    src = tmp_path / "data.yaml"
    src.write_text("aaaa")
    stat = src.stat()
    assert load(src) == "aaaa"
    assert load(src) == "aaaa" and calls == ["aaaa"]  # served from memory
    clear_memory()
    assert load(src) == "aaaa" and calls == ["aaaa"]  # served from disk
    src.write_text("bbbb")
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert src.stat().st_size == stat.st_size and src.stat().st_mtime_ns == stat.st_mtime_ns
    clear_memory()
    assert load(src) == "bbbb"
    assert calls == ["aaaa", "bbbb"]


def test_a_code_change_invalidates(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datacache, "is_shipped", lambda files: True)
    calls: list[str] = []
    load = _counting_loader(calls)
    src = tmp_path / "data.yaml"
    src.write_text("x")
    load(src)
    clear_memory()
    monkeypatch.setattr(datacache, "code_digest", lambda: b"another version of the code")
    load(src)
    assert calls == ["x", "x"]


def test_a_corrupt_or_foreign_cache_file_is_ignored_and_rewritten(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datacache, "is_shipped", lambda files: True)
    calls: list[str] = []
    load = _counting_loader(calls)
    src = tmp_path / "data.yaml"
    src.write_text("good")
    load(src)
    (entry,) = cache.glob("toy-*.json")
    header = entry.read_bytes().partition(b"\n")[0]
    garbage = [
        b"",
        b"\x80\x05garbage",
        pickle.dumps(("wrong key", "evil")),
        b"\x00" * 100,
        b'{"format": 2, "key": "wrong key"}\n"evil"',
        header + b"\n" + b"[" * 100_000,  # the right key, then a RecursionError
        header + b"\n" + b'["M", 1, ["L", 1], 1]',  # an unhashable key
        header + b"\n" + b'{"not": "tagged"}',
    ]
    for data in garbage:
        entry.write_bytes(data)
        clear_memory()
        assert load(src) == "good"
    assert len(calls) == 1 + len(garbage)
    meta, _, body = entry.read_bytes().partition(b"\n")
    assert json.loads(body) == "good" and json.loads(meta)["key"] != "wrong key"


def test_an_unwritable_cache_folder_costs_only_the_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # NOTE: the tests may run as root, for whom permission bits do not stop a write; a
    # cache "folder" below a plain file cannot be created by anyone.
    monkeypatch.setenv(datacache.CACHE_ENV, str(blocker / "cache"))
    clear_memory()
    from advisor.hardware.profiles import load_hardware_profiles
    from advisor.rules.taxonomy import load_taxonomy

    assert "adamw" in load_taxonomy()
    assert "h100-sxm-80gb" in load_hardware_profiles()
    assert not (blocker / "cache").exists()
    clear_memory()


def test_user_folders_are_not_written_to_disk(cache: Path, tmp_path: Path) -> None:
    calls: list[str] = []
    load = _counting_loader(calls)
    src = tmp_path / "mine.yaml"
    src.write_text("user data")
    load(src)
    load(src)
    assert calls == ["user data"]
    assert not cache.exists() or not list(cache.glob("toy-*"))


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(datacache.CACHE_ENV, "/some/where")
    assert data_cache_dir() == Path("/some/where/data")
    monkeypatch.delenv(datacache.CACHE_ENV)
    assert data_cache_dir().name == "data" and "optadvise" in str(data_cache_dir())


# --- nothing runs from the cache (issue 25) --------------------------------------------------


class _Planted:
    """A pickle payload that would create ``marker`` if anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_code_execution_from_the_data_cache_a_planted_pickle_never_runs(
    cache: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from advisor.shell.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["rules", "check"]).exit_code == 0
    entries = sorted(cache.glob("*.json"))
    assert entries, "the shipped data was not cached"
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(("key", _Planted(marker)))
    for entry in entries:
        entry.write_bytes(payload)
        entry.with_suffix(".pickle").write_bytes(payload)  # where old versions looked
    clear_memory()
    result = runner.invoke(app, ["rules", "check"])
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    # Every planted entry was a miss and is rewritten as JSON.
    assert all(e.read_bytes()[:1] == b"{" for e in entries)


def test_cache_folders_are_created_0700_even_under_umask_000(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(datacache.CACHE_ENV, str(tmp_path / "new" / "cache"))
    clear_memory()
    old = os.umask(0)
    try:
        from advisor.rules.taxonomy import load_taxonomy

        load_taxonomy()
    finally:
        os.umask(old)
        clear_memory()
    for folder in (tmp_path / "new", tmp_path / "new" / "cache", tmp_path / "new/cache/data"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert list((tmp_path / "new/cache/data").glob("taxonomy-*.json"))


def test_a_cache_folder_writable_by_others_is_refused_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from advisor.shell.cli import app

    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data").chmod(0o777)
    monkeypatch.setenv(datacache.CACHE_ENV, str(shared))
    clear_memory()
    result = CliRunner().invoke(app, ["rules", "check"])
    clear_memory()
    assert result.exit_code == 0, result.output
    notes = [ln for ln in result.stderr.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and str(shared / "data") in notes[0] and "other users" in notes[0]
    assert list((shared / "data").iterdir()) == []  # nothing read from or written to it


def test_a_data_file_linked_to_dev_zero_is_hashed_as_its_error(cache: Path, tmp_path: Path) -> None:
    link = tmp_path / "rules.yaml"
    link.symlink_to("/dev/zero")
    key = datacache.content_key("rules", [link])  # returns at once: never reads the device
    assert key != datacache.content_key("rules", [tmp_path / "missing.yaml"])
