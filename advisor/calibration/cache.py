"""The calibration cache: one JSON file per device fingerprint, written atomically.

The fingerprint is computed without importing torch (its version comes from the package
metadata), so `optadvise recommend` can find the cache in well under a second.

Two calibrations of the same device (for different shapes) may run at once: the
read-merge-write of a new shape happens under a lock (``flock`` on ``.lock`` in the folder),
so neither loses the other's shape. A measurement that cannot be written (a read-only or
full disk, a folder in the way, a folder others can write) still serves the run that made
it, with one note naming the folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import psutil
from pydantic import ValidationError

from advisor import notes
from advisor.calibration.timing import torch_threads_env
from advisor.cost.data import CACHE_SCHEMA_VERSION, CalibrationCache, Fingerprint, ShapeResults
from advisor.data import safeio

CACHE_ENV = "OPTADVISE_CACHE_DIR"
# NOTE: a cache of one device holds a few shapes of ~20 KB each; the bound only stops a
# planted file or a link to a device from being read without end.
MAX_CACHE_BYTES = 64 * 1024**2
# Temp files of the versions before safeio (mkstemp names).
_LEGACY_TEMPS = (".tmp-*.json",)


def cache_dir() -> Path:
    """The user cache folder (``$OPTADVISE_CACHE_DIR`` overrides it)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("optadvise")) / "calibration"


def _torch_version() -> tuple[str, str]:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none", "none"
    local = version.partition("+")[2]
    if local.startswith("cu"):
        build = "cuda"
    elif local.startswith("rocm"):
        build = "rocm"
    elif local == "cpu":
        build = "cpu"
    else:
        build = "default"
    return version, build


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_fingerprint(device: str, *, gpu_name: str = "", driver: str = "") -> Fingerprint:
    """The fingerprint of a device: name, driver, torch version and build, thread count."""
    version, build = _torch_version()
    threads = torch_threads_env() or psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    name = _cpu_name() if device == "cpu" else (gpu_name or device)
    return Fingerprint(
        device=device,
        device_name=name,
        driver=driver,
        torch_version=version,
        torch_build=build,
        threads=threads,
    )


def cache_path(fp: Fingerprint) -> Path:
    """Where the cache of a fingerprint lives."""
    return cache_dir() / f"{fp.device.replace(':', '')}-{fp.key()}.json"


def load_cache(fp: Fingerprint) -> tuple[CalibrationCache | None, str | None]:
    """The cache for ``fp``, or None with a warning when it is corrupt or foreign.

    Never raises for a bad file: a corrupt or foreign-version cache is reported and will
    be rebuilt by the next calibration.
    """
    path = cache_path(fp)
    refused = _refused(path.parent)
    if refused:
        return None, refused
    try:
        raw = read_cache_json(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"calibration cache {path} cannot be read ({safeio.describe(exc)})"
    except (ValueError, RecursionError) as exc:
        return (
            None,
            f"calibration cache {path} is corrupt ({type(exc).__name__}); it will be rebuilt",
        )
    if not isinstance(raw, dict) or raw.get("schema_version") != CACHE_SCHEMA_VERSION:
        found = raw.get("schema_version") if isinstance(raw, dict) else "?"
        return None, (
            f"calibration cache {path} has schema version {found}, not {CACHE_SCHEMA_VERSION};"
            " it will be rebuilt"
        )
    try:
        cache = CalibrationCache.model_validate(raw)
    except ValidationError as exc:
        return (
            None,
            f"calibration cache {path} is invalid ({exc.error_count()} errors); it will be rebuilt",
        )
    if cache.fingerprint != fp:
        return None, f"calibration cache {path} belongs to another device; it will be rebuilt"
    return cache, None


def load_cache_for(
    device: str, *, gpu_name: str = "", driver: str = ""
) -> tuple[CalibrationCache | None, str | None]:
    """Shortcut: the cache of the local ``device``."""
    return load_cache(device_fingerprint(device, gpu_name=gpu_name, driver=driver))


def read_cache_json(path: Path) -> object:
    """A cache file's JSON, read through one bounded, checked open (no FIFO, no device).

    Raises:
        OSError: missing, unreadable, not a regular file or too large.
        ValueError: not UTF-8 or not JSON; RecursionError: nested too deeply.
    """
    return json.loads(safeio.read_bounded(path, MAX_CACHE_BYTES))


def _refused(folder: Path) -> str | None:
    """Why an existing cache folder must not be used (others can write it), else None."""
    if not folder.exists():
        return None
    try:
        safeio.private_dir(folder)
    except safeio.FileRefused as exc:
        why = f"not using the calibration cache {folder}: {exc.strerror} (make it yours alone)"
        notes.post(why)
        return why
    except OSError:
        return None
    return None


def save_cache(cache: CalibrationCache) -> Path:
    """Write the cache atomically (temp file + rename), so an interrupt never corrupts it."""
    return write_json_atomic(cache.model_dump_json(indent=1), cache_path(cache.fingerprint))


def write_json_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` through an exclusive temp file and a rename (see
    advisor.data.safeio): an interrupt never leaves half a file, a planted link is never followed,
    and the folder is made 0700 (refused when others can write it).

    Raises:
        OSError: the folder cannot be made or written (the temp file is removed).
    """
    safeio.private_dir(path.parent)
    safeio.remove_stale_temps(path.parent, legacy=_LEGACY_TEMPS)
    safeio.write_atomic(path, text.encode(), overwrite=True, mode=0o600)
    return path


def save_merged(old: CalibrationCache | None, new: CalibrationCache) -> CalibrationCache:
    """Merge ``new``'s shape into the device's cache on disk and write it, under the lock.

    The cache is read again inside the lock (another calibration may have added a shape
    since ``old`` was read). When it cannot be written, the merged cache is still returned
    (the measurement serves this run) with a warning, and a note names the folder.

    Args:
        old: the cache as the caller read it before measuring (used when the disk fails).
        new: this run's results (one shape).
    """
    path = cache_path(new.fingerprint)
    folder = path.parent
    try:
        safeio.private_dir(folder)
        with safeio.locked(folder / ".lock"):
            current, _warning = load_cache(new.fingerprint)
            merged = merge_shape(current, new)
            write_json_atomic(merged.model_dump_json(indent=1), path)
        return merged
    except OSError as exc:
        why = (
            f"could not write the calibration cache to {folder} ({safeio.describe(exc)}): "
            "the measurement serves this run only"
        )
        notes.post(why)
        merged = merge_shape(old, new)
        return merged.model_copy(update={"warnings": [*merged.warnings, why]})


def merge_shape(old: CalibrationCache | None, new: CalibrationCache) -> CalibrationCache:
    """Keep the other shapes of an older cache of the same device; replace this one's."""
    if old is None:
        return new
    keys = {s.shape.key() for s in new.shapes}
    kept: list[ShapeResults] = [s for s in old.shapes if s.shape.key() not in keys]
    return new.model_copy(update={"shapes": kept + list(new.shapes)})


def list_caches() -> list[tuple[Path, CalibrationCache | None, str | None]]:
    """Every cache file in the folder, loaded (or with why it cannot be)."""
    folder = cache_dir()
    out: list[tuple[Path, CalibrationCache | None, str | None]] = []
    if not folder.is_dir() or _refused(folder):
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            cache = CalibrationCache.model_validate(read_cache_json(path))
            out.append((path, cache, None))
        except OSError as exc:
            out.append((path, None, f"unreadable: {safeio.describe(exc)}"))
        except (ValidationError, ValueError, RecursionError) as exc:
            out.append((path, None, f"unreadable: {type(exc).__name__}"))
    return out
