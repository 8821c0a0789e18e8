"""A cache of the validated shipped data (rules, taxonomy, profiles), keyed by file content.

Parsing and validating the YAML data takes a good part of a command's start-up, and the
data changes only when a file or the code changes. A loader decorated with
:func:`cached_by_content` therefore answers, in this order:

1. from this process's memory, when the same files with the same content were loaded
   before (tests and `recommend` load the same data several times);
2. from a pickle of the validated objects in the user cache folder
   (``platformdirs.user_cache_dir("optadvise")/data``, or ``$OPTADVISE_CACHE_DIR/data``),
   when its key matches;
3. by running the loader, then writing the pickle (atomically; quietly skipped when the
   folder cannot be written).

The key hashes the *content* of every source file together with its path, the names and
content of the package's own source files, and the Python and pydantic versions: an edit
that keeps a file's size and modification time still invalidates it, and so does a code
change that alters the models the pickle holds. A corrupt, truncated or foreign cache file
is ignored and rewritten. Only loads whose sources all lie inside the shipped data folders
are written to disk (user rule folders and test fixtures are kept in memory only).

NOTE: pickle runs code on load, so a cache file is trusted as much as the package itself;
it lives in the user's own cache folder, which only the user (or root) can write.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

CACHE_ENV = "OPTADVISE_CACHE_DIR"
# Bumped when the layout of a cache entry changes.
FORMAT_VERSION = 1
_PACKAGE = Path(__file__).resolve().parent

P = ParamSpec("P")
R = TypeVar("R")

# The sources a call depends on: (files, extra key text), or None when the call must not be
# cached (e.g. it was handed an in-memory object whose content the key cannot see).
SourcesFn = Callable[[dict[str, Any]], "tuple[list[Path], str] | None"]

_memory: dict[tuple[str, str], Any] = {}


def data_cache_dir() -> Path:
    """Where the pickles live: ``$OPTADVISE_CACHE_DIR/data`` or the user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override) / "data"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("optadvise")) / "data"


@functools.cache
def _code_digest() -> bytes:
    """A hash of the package's source files and the libraries that shape the pickles."""
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
    return _key(kind, [p.resolve() for p in files], extra)


def _key(kind: str, resolved: list[Path], extra: str) -> str:
    """:func:`content_key` of paths already resolved (resolving is most of a key's cost)."""
    h = hashlib.blake2b(_code_digest(), digest_size=20)
    h.update(f"{kind}\0{extra}\0".encode())
    for path in resolved:
        h.update(str(path).encode() + b"\0")
        try:
            data = path.read_bytes()
        except OSError as exc:
            data = f"<{type(exc).__name__}>".encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _shipped(resolved: list[Path]) -> bool:
    """Whether every (resolved) source lies inside the shipped data folders."""
    from advisor.resources import data_dir

    roots = []
    for name in ("rules", "profiles"):
        try:
            roots.append(data_dir(name).resolve())
        except FileNotFoundError:
            continue
    return bool(resolved) and all(any(p.is_relative_to(root) for root in roots) for p in resolved)


def _read(path: Path, key: str) -> tuple[bool, Any]:
    try:
        with path.open("rb") as f:
            stored_key, value = pickle.load(f)
    # NOTE: a cache file may be truncated, corrupt, written by another version or not a
    # pickle at all; each of these raises something different (UnpicklingError, EOFError,
    # AttributeError, ImportError, ValueError, TypeError...). Any of them means "miss".
    except Exception:
        return False, None
    return stored_key == key, value


def _write(folder: Path, path: Path, key: str, value: Any) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump((key, value), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    # NOTE: an unwritable, full or vanished cache folder only costs the next run the parse.
    except (OSError, pickle.PicklingError):
        return


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

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            found = sources(dict(bound.arguments))
            if found is None:
                return fn(*args, **kwargs)
            files, extra = found
            resolved = [p.resolve() for p in files]  # once: each resolve is a realpath walk
            key = _key(kind, resolved, extra)
            if (kind, key) in _memory:
                return _as(_memory[kind, key], fn)
            persist = _shipped(resolved)
            folder = data_cache_dir()
            path = folder / f"{kind}-{_name_hash(resolved, extra)}.pickle"
            if persist:
                hit, value = _read(path, key)
                if hit:
                    _memory[kind, key] = value
                    return _as(value, fn)
            value = fn(*args, **kwargs)
            _memory[kind, key] = value
            if persist:
                _write(folder, path, key, value)
            return _as(value, fn)

        return wrapper

    return decorate


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
    _memory.clear()


# --- the sources of the shipped loaders ------------------------------------------------------


def yaml_sources(args: dict[str, Any]) -> tuple[list[Path], str]:
    """``load_yaml(path)``: the file itself."""
    return [Path(args["path"])], ""


def taxonomy_sources(args: dict[str, Any]) -> tuple[list[Path], str]:
    """``load_taxonomy(path)``: the one YAML file."""
    from advisor.resources import rules_dir

    return [Path(args["path"] or rules_dir() / "taxonomy.yaml")], ""


def rules_sources(args: dict[str, Any]) -> tuple[list[Path], str] | None:
    """``collect_rules(extra_dirs, technique_ids=..., facts=..., base_dir=...)``."""
    if args["facts"] is not None:
        return None
    from advisor.resources import rules_dir
    from advisor.ruleset import rule_files

    base = Path(args["base_dir"] or rules_dir())
    dirs = [Path(d) for d in args["extra_dirs"]]
    files = [base / "facts.yaml", *rule_files([base, *[d for d in dirs if d.is_dir()]])]
    extra = repr([str(d) for d in dirs]) + "|" + ",".join(sorted(args["technique_ids"]))
    return files, extra


def profile_sources(subdir: str) -> SourcesFn:
    """``load_*_profiles(folder)``: every ``*.yaml`` of the folder (default: the shipped one)."""

    def sources(args: dict[str, Any]) -> tuple[list[Path], str]:
        from advisor.resources import profiles_dir

        folder = Path(args["folder"] or profiles_dir() / subdir)
        # NOTE: the file list is part of the key (each path is hashed), so adding or removing
        # a profile invalidates the entry too.
        return sorted(folder.glob("*.yaml")), str(folder.resolve())

    return sources
