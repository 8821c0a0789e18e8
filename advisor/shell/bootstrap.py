"""What the command line sets up before it starts: no pydantic plugin scan, no cyclic GC.

pydantic looks for plugins (``pydantic`` entry points, e.g. observability hooks) when it
builds its first validator: it imports ``importlib.metadata`` (with ``email``, ``zipfile``,
``csv``...) and scans the metadata of every installed distribution. Together that is ~60 M
instructions, 15-25 ms of a cold `optadvise` start on the 2-core test machines (measured
with callgrind and ``-X importtime``, 2026-11-30), for plugins that a command-line tool
has no use for. ``PYDANTIC_DISABLE_PLUGINS`` is pydantic's documented switch to load none
(https://docs.pydantic.dev/latest/concepts/plugins/); it skips the scan but pydantic still
imports the loader module, and with it ``importlib.metadata``. So the entry point also
puts in a loader that answers "no plugins" directly, and loads the real one should pydantic
ask it for anything else.

The cyclic garbage collector is paused for the same reason (see :func:`pause_cyclic_gc`).

Only the command line's entry point calls these: importing ``advisor`` as a library (or in
the tests) changes nothing.
"""

from __future__ import annotations

import gc
import os
import sys
import types
from collections.abc import Iterable
from typing import Any

PLUGINS_ENV = "PYDANTIC_DISABLE_PLUGINS"
_LOADER = "pydantic.plugin._loader"
# The values with which pydantic itself loads no plugin at all (pydantic/plugin/_loader.py).
_ALL_OFF = ("__all__", "1", "true")


def _no_plugins() -> Iterable[Any]:
    return ()


def _real_loader_attribute(name: str) -> Any:
    """Anything but ``get_plugins``, from pydantic's own loader (loaded on first ask)."""
    if name.startswith("__"):
        # The import system probes modules for __path__ and the like: a plain module has none.
        raise AttributeError(name)
    import importlib.machinery
    import importlib.util

    import pydantic.plugin

    spec = importlib.machinery.PathFinder.find_spec(_LOADER, list(pydantic.plugin.__path__))
    if spec is None or spec.loader is None:
        raise AttributeError(name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def skip_pydantic_plugins() -> None:
    """Load no pydantic plugin, and skip the scan for them (see the module docstring).

    A user's own ``PYDANTIC_DISABLE_PLUGINS`` is respected: when it names particular plugins
    to leave out, pydantic's loader runs as usual.
    """
    os.environ.setdefault(PLUGINS_ENV, "__all__")
    if os.environ[PLUGINS_ENV] not in _ALL_OFF or _LOADER in sys.modules:
        return
    loader = types.ModuleType(_LOADER, "pydantic's plugin loader, answering: no plugins")
    loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    loader.__getattr__ = _real_loader_attribute  # type: ignore[method-assign]
    sys.modules[_LOADER] = loader


def pause_cyclic_gc() -> None:
    """Turn off Python's cyclic garbage collector for the command's pure-Python work.

    NOTE: a command allocates hundreds of thousands of small objects (model classes at
    import, pydantic values and dicts in the plan search) that reference counting frees on
    its own; the collector only walks them again and again. Measured on the 2-core test
    machine (median CPU of 7 cold runs, 2026-11-30): `rules check` 0.29 -> 0.27 s, `recommend
    --model-size 7B --no-calibrate --json` 0.45 -> 0.40 s, the 70B x 32 H100 search 1.06 ->
    0.98 s, with the peak RSS of the 70B run 80.1 -> 80.6 MB. Work that may hold reference
    cycles for long (torch, in calibrations and the probe) turns it back on:
    :func:`advisor.torchload.import_torch` does, before torch is imported.
    """
    gc.disable()
