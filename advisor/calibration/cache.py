"""The calibration cache: one JSON file per device fingerprint, written atomically.

The fingerprint is computed without importing torch (its version comes from the package
metadata), so `optadvise recommend` can find the cache in well under a second.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from pathlib import Path

import psutil
from pydantic import ValidationError

from advisor.calibration.timing import torch_threads_env
from advisor.costdata import CACHE_SCHEMA_VERSION, CalibrationCache, Fingerprint, ShapeResults

CACHE_ENV = "OPTADVISE_CACHE_DIR"


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
    if not path.exists():
        return None, None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
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


def save_cache(cache: CalibrationCache) -> Path:
    """Write the cache atomically (temp file + rename), so an interrupt never corrupts it."""
    return write_json_atomic(cache.model_dump_json(indent=1), cache_path(cache.fingerprint))


def write_json_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename: an interrupt never
    leaves half a file (every calibration cache is written this way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            cache = CalibrationCache.model_validate_json(path.read_text())
            out.append((path, cache, None))
        except (OSError, ValidationError, ValueError) as exc:
            out.append((path, None, f"unreadable: {type(exc).__name__}"))
    return out
