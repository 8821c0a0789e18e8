"""The content-keyed cache of the shipped data: hits, invalidation, unwritable and corrupt caches."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from advisor import datacache
from advisor.datacache import cached_by_content, clear_memory, data_cache_dir


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
    from advisor import taxonomy as tax_module

    first = tax_module.load_taxonomy()
    files = sorted(p.name for p in cache.glob("taxonomy-*.pickle"))
    assert len(files) == 1
    clear_memory()

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached taxonomy was parsed again")

    monkeypatch.setattr(tax_module.Technique, "model_validate", no_parsing)
    again = tax_module.load_taxonomy()
    assert again == first and again is not first
    assert sorted(p.name for p in cache.glob("taxonomy-*.pickle")) == files


def test_an_edit_that_keeps_size_and_mtime_still_invalidates(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datacache, "_shipped", lambda files: True)
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
    monkeypatch.setattr(datacache, "_shipped", lambda files: True)
    calls: list[str] = []
    load = _counting_loader(calls)
    src = tmp_path / "data.yaml"
    src.write_text("x")
    load(src)
    clear_memory()
    monkeypatch.setattr(datacache, "_code_digest", lambda: b"another version of the code")
    load(src)
    assert calls == ["x", "x"]


def test_a_corrupt_or_foreign_cache_file_is_ignored_and_rewritten(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datacache, "_shipped", lambda files: True)
    calls: list[str] = []
    load = _counting_loader(calls)
    src = tmp_path / "data.yaml"
    src.write_text("good")
    load(src)
    (entry,) = cache.glob("toy-*.pickle")
    for garbage in (b"", b"\x80\x05garbage", pickle.dumps(("wrong key", "evil")), b"\x00" * 100):
        entry.write_bytes(garbage)
        clear_memory()
        assert load(src) == "good"
    assert len(calls) == 5
    stored_key, value = pickle.loads(entry.read_bytes())
    assert value == "good" and stored_key != "wrong key"


def test_an_unwritable_cache_folder_costs_only_the_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # NOTE: the tests may run as root, for whom permission bits do not stop a write; a
    # cache "folder" below a plain file cannot be created by anyone.
    monkeypatch.setenv(datacache.CACHE_ENV, str(blocker / "cache"))
    clear_memory()
    from advisor.hardware import load_hardware_profiles
    from advisor.taxonomy import load_taxonomy

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
