"""A cache of the validated shipped data (rules, taxonomy, profiles), keyed by file content.

Parsing and validating the YAML data takes a good part of a command's start-up, and the
data changes only when a file or the code changes. A loader decorated with
:func:`cached_by_content` therefore answers, in this order:

1. from this process's memory, when the same files with the same content were loaded
   before (tests and `recommend` load the same data several times);
2. from a JSON file of the validated objects in the user cache folder
   (``platformdirs.user_cache_dir("optadvise")/data``, or ``$OPTADVISE_CACHE_DIR/data``),
   when its key matches; the objects are validated again as they are read (pydantic, from
   the loader's return type), so a planted or corrupt file is at worst a miss;
3. by running the loader, then writing the JSON (atomically; quietly skipped when the
   folder cannot be written).

The key hashes the *content* of every source file together with its path, the names and
content of the package's own source files, and the Python and pydantic versions: an edit
that keeps a file's size and modification time still invalidates it, and so does a code
change that alters the models the file holds. A corrupt, truncated or foreign cache file
is ignored and rewritten. Only loads whose sources all lie inside the shipped data folders
are written to disk (user rule folders and test fixtures are kept in memory only).

NOTE: no pickle: a pickle runs code when it is loaded, and a cache folder is a place other
users can sometimes write (a world-writable ``$OPTADVISE_CACHE_DIR``, a folder made under
``umask 000``). JSON cannot run code; the folder is also created 0700 and refused (with a
note, and no disk cache) when others can write it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from advisor import notes
from advisor.data import safeio
from advisor.data.lines import LineDict, LineList

CACHE_ENV = "OPTADVISE_CACHE_DIR"
# Bumped when the layout of a cache entry changes (2: JSON instead of pickle).
FORMAT_VERSION = 2
# NOTE: the largest shipped entry (the taxonomy) is ~170 KB of JSON and the largest shipped
# data file ~60 KB; the bounds only stop a planted file or a link to a device.
MAX_ENTRY_BYTES = 64 * 1024**2
MAX_SOURCE_BYTES = 16 * 1024**2
_PACKAGE = Path(__file__).resolve().parent.parent  # advisor/

P = ParamSpec("P")
R = TypeVar("R")

# The sources a call depends on: (files, extra key text), or None when the call must not be
# cached (e.g. it was handed an in-memory object whose content the key cannot see).
SourcesFn = Callable[[dict[str, Any]], "tuple[list[Path], str] | None"]


class ContentMemo:
    """This process's in-memory layer of the data cache: values by (kind, content key).

    The key is a digest of the source files' content and of the package's code, so an entry
    cannot go stale; the one instance below lives as long as the process, like the shipped
    files it holds.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, key: str) -> tuple[bool, Any]:
        found = (kind, key) in self._values
        return found, self._values.get((kind, key))

    def put(self, kind: str, key: str, value: Any) -> None:
        self._values[kind, key] = value

    def forget(self) -> None:
        self._values.clear()


MEMO = ContentMemo()


def data_cache_dir() -> Path:
    """Where the cache files live: ``$OPTADVISE_CACHE_DIR/data`` or the user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override) / "data"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("optadvise")) / "data"


@functools.cache
def code_digest() -> bytes:
    """A hash of the package's source files and the libraries that shape the cache files."""
    import pydantic

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{FORMAT_VERSION}|{sys.version}|{pydantic.VERSION}".encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"unreadable")
    return h.digest()


def content_key(kind: str, files: list[Path], extra: str = "") -> str:
    """The cache key of ``kind`` loaded from ``files``: code, paths and content hashed.

    A file that cannot be read contributes its error, so the key still differs from a
    readable file's and the loader (not the cache) reports the problem.
    """
    return _key(kind, [_resolve(p) for p in files], extra)


def _resolve(path: Path) -> Path:
    """``path.resolve()``, or its absolute form when a symlink loop makes that fail (the
    loader then reports the loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _key(kind: str, resolved: list[Path], extra: str) -> str:
    """:func:`content_key` of paths already resolved (resolving is most of a key's cost)."""
    h = hashlib.blake2b(code_digest(), digest_size=20)
    h.update(f"{kind}\0{extra}\0".encode())
    for path in resolved:
        h.update(str(path).encode() + b"\0")
        try:
            # NOTE: bounded and checked as opened: a source linked to /dev/zero or a FIFO is
            # hashed as its error (the loader then reports it), never read without end.
            data = safeio.read_bounded(path, MAX_SOURCE_BYTES)
        except OSError as exc:
            data = f"<{type(exc).__name__}: {exc.strerror}>".encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def is_shipped(resolved: list[Path]) -> bool:
    """Whether every (resolved) source lies inside the shipped data folders."""
    from advisor.data.resources import data_dir

    roots = []
    for name in ("rules", "profiles"):
        try:
            roots.append(data_dir(name).resolve())
        except FileNotFoundError:
            continue
    return bool(resolved) and all(any(p.is_relative_to(root) for root in roots) for p in resolved)


class _Codec(typing.Protocol):
    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class _TypedCodec:
    """A loader's result as JSON, validated again by pydantic when read."""

    def __init__(self, annotation: Any) -> None:
        from pydantic import TypeAdapter

        self._adapter: Any = TypeAdapter(annotation)

    def encode(self, value: Any) -> bytes:
        return bytes(self._adapter.dump_json(value))

    def decode(self, data: bytes) -> Any:
        return self._adapter.validate_json(data)


class _YamlCodec:
    """Line-aware YAML data (``LineDict``/``LineList`` trees of scalars) as tagged JSON:
    ``["M", line, key, value, ...]`` for a mapping, ``["L", line, item, ...]`` for a list.
    Anything else (a YAML timestamp, binary or set) is not written."""

    def encode(self, value: Any) -> bytes:
        return json.dumps(self._tag(value), separators=(",", ":")).encode()

    def _tag(self, node: Any) -> Any:
        if isinstance(node, dict):
            out: list[Any] = ["M", getattr(node, "line", 0)]
            for k, v in node.items():
                out += [self._tag(k), self._tag(v)]
            return out
        if isinstance(node, list):
            return ["L", getattr(node, "line", 0), *(self._tag(v) for v in node)]
        if node is None or isinstance(node, str | int | float):  # bool is an int
            return node
        raise TypeError(f"{type(node).__name__} is not cached")

    def decode(self, data: bytes) -> Any:
        return self._untag(json.loads(data))

    def _untag(self, node: Any) -> Any:
        if not isinstance(node, list):
            if isinstance(node, dict):
                raise ValueError("an untagged mapping")
            return node
        tag, line, *rest = node
        if tag == "M":
            mapping = LineDict()
            mapping.line = int(line)
            for k, v in zip(rest[::2], rest[1::2], strict=True):
                mapping[self._untag(k)] = self._untag(v)
            return mapping
        if tag != "L":
            raise ValueError(f"unknown tag {tag!r}")
        seq = LineList(self._untag(v) for v in rest)
        seq.line = int(line)
        return seq


def _codec(fn: Callable[..., Any]) -> _Codec:
    annotation = typing.get_type_hints(fn).get("return", Any)
    return _YamlCodec() if annotation is Any else _TypedCodec(annotation)


def _usable_folder(folder: Path) -> bool:
    """Whether the cache folder exists (or can be made) 0700 and is the user's alone; a
    folder others can write is refused with one note (its files could be planted)."""
    try:
        safeio.private_dir(folder)
    except safeio.FileRefused as exc:
        notes.post(
            f"not using the data cache {folder}: {exc.strerror}; loading the data without "
            "it (make the folder yours alone, e.g. chmod 700)"
        )
        return False
    except OSError:
        return False  # NOTE: unwritable or missing: the next run only pays the parse.
    return True


def _read(path: Path, key: str, codec: _Codec) -> tuple[bool, Any]:
    try:
        data = safeio.read_bounded(path, MAX_ENTRY_BYTES)
        header, _, body = data.partition(b"\n")
        meta = json.loads(header)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            return False, None
        if meta.get("key") != key:
            return False, None
        return True, codec.decode(body)
    # NOTE: a cache file may be missing, truncated, corrupt, written by another version, a
    # FIFO or a device, or nested 100,000 deep; each raises something different (OSError,
    # ValueError, ValidationError, RecursionError, TypeError...). Any of them means "miss",
    # and the entry is rewritten.
    except Exception:
        return False, None


def _write(folder: Path, path: Path, key: str, value: Any, codec: _Codec) -> None:
    try:
        body = codec.encode(value)
    except (TypeError, ValueError):
        return
    header = json.dumps({"format": FORMAT_VERSION, "key": key}).encode()
    try:
        safeio.write_atomic(path, header + b"\n" + body, overwrite=True, mode=0o600)
    # NOTE: an unwritable, full or vanished cache folder only costs the next run the parse.
    except OSError:
        return


def _remove_pickles(folder: Path) -> None:
    """Delete the pickle files older versions wrote (never read again)."""
    safeio.remove_stale_temps(folder, legacy=("*.pickle", "*.pickle*.tmp"))


def cached_by_content(kind: str, sources: SourcesFn) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a data loader so that its result is cached by the content of its files.

    Args:
        kind: a short name for the data (``taxonomy``, ``rules``...), part of the key and
            of the cache file's name.
        sources: given the call's arguments (defaults applied, by name), the files the
            result depends on and any extra key text, or None to bypass the cache.

    Returns:
        The decorator. The loader's errors propagate and are never cached.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)
        codecs: list[_Codec] = []  # built on first use: resolving the return type costs

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            found = sources(dict(bound.arguments))
            if found is None:
                return fn(*args, **kwargs)
            files, extra = found
            resolved = [_resolve(p) for p in files]  # once: each resolve is a realpath walk
            key = _key(kind, resolved, extra)
            held, value = MEMO.get(kind, key)
            if held:
                return _as(value, fn)
            folder = data_cache_dir()
            persist = is_shipped(resolved) and _usable_folder(folder)
            path = folder / f"{kind}-{_name_hash(resolved, extra)}.json"
            if persist:
                if not codecs:
                    codecs.append(_codec(fn))
                hit, value = _read(path, key, codecs[0])
                if hit:
                    MEMO.put(kind, key, value)
                    return _as(value, fn)
            value = fn(*args, **kwargs)
            MEMO.put(kind, key, value)
            if persist:
                _remove_pickles(folder)
                _write(folder, path, key, value, codecs[0])
            return _as(value, fn)

        return wrapper

    return decorate


def cached_value(kind: str, key_text: str, compute: Callable[[], R], annotation: Any) -> R:
    """``compute()``, cached by ``key_text`` (with the package's code) in memory and as JSON
    in the data cache folder, validated again as ``annotation`` when read.

    For values derived from a user's file by content (the general config path's module
    inventory): unlike :func:`cached_by_content`, written to disk whatever the file's
    folder, since the key is the content itself. Errors of ``compute`` are not cached.
    """
    key = _key(kind, [], key_text)
    found, value = MEMO.get(kind, key)
    if found:
        return cast(R, value)
    folder = data_cache_dir()
    persist = _usable_folder(folder)
    name = hashlib.blake2b(key_text.encode(), digest_size=8).hexdigest()
    path = folder / f"{kind}-{name}.json"
    codec = _TypedCodec(annotation)
    if persist:
        hit, value = _read(path, key, codec)
        if hit:
            MEMO.put(kind, key, value)
            return cast(R, value)
    value = compute()
    MEMO.put(kind, key, value)
    if persist:
        _write(folder, path, key, value, codec)
    return value


def _name_hash(resolved: list[Path], extra: str) -> str:
    """One cache file per set of source paths: a changed file replaces its old entry."""
    h = hashlib.blake2b(digest_size=8)
    for p in resolved:
        h.update(str(p).encode() + b"\0")
    h.update(extra.encode())
    return h.hexdigest()


def _fresh(value: Any) -> Any:
    """A shallow copy of a cached dict or list (type and attributes kept, e.g. a YAML
    mapping's line), so a caller's edits never reach the cache."""
    if isinstance(value, dict | list):
        return copy.copy(value)
    return value


def _as(value: Any, _like: Callable[..., R]) -> R:
    """The cached value, typed as the loader's result (the key guarantees it is one)."""
    return cast(R, _fresh(value))


def clear_memory() -> None:
    """Forget what this process loaded (tests use it to measure a cold load)."""
    MEMO.forget()


# --- the sources of the shipped loaders ------------------------------------------------------


def yaml_sources(args: dict[str, Any]) -> tuple[list[Path], str]:
    """``load_yaml(path)``: the file itself."""
    return [Path(args["path"])], ""


def profile_sources(subdir: str) -> SourcesFn:
    """``load_*_profiles(folder)``: every ``*.yaml`` of the folder (default: the shipped one)."""

    def sources(args: dict[str, Any]) -> tuple[list[Path], str]:
        from advisor.data.resources import profiles_dir

        folder = Path(args["folder"] or profiles_dir() / subdir)
        # NOTE: the file list is part of the key (each path is hashed), so adding or removing
        # a profile invalidates the entry too.
        return sorted(folder.glob("*.yaml")), str(_resolve(folder))

    return sources
