"""The one lazy door to torch: imported only where something is measured."""

from __future__ import annotations

import gc
import warnings
from typing import Any


def import_torch() -> Any:
    """Import torch quietly.

    NOTE: a torch wheel without NumPy beside it warns "Failed to initialize NumPy" at import;
    the advisor never hands tensors to NumPy, so the warning is noise to users.

    Raises:
        ImportError: when torch is not installed.
    """
    # The command line pauses the cyclic garbage collector for its pure-Python work
    # (advisor.shell.bootstrap); torch work may hold reference cycles for minutes: collect again.
    gc.enable()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        import torch
    return torch
