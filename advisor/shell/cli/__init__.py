"""The `optadvise` command line: parse flags, call the app layer, render. The only place that exits.

One module per command (probe, profiles, taxonomy, rules, estimate, recommend, calibrate)
over common (the Typer apps, shared options, error handling, main) and modelflags (the model
flags). Importing this package registers every command; each command imports what it runs
lazily, so `--help` and `recommend --no-calibrate` load no more than they use.
"""

from __future__ import annotations

# NOTE: the commands register themselves on import, and `optadvise --help` lists them in
# the order they registered: keep this order (the sub-command groups are ordered in common).
# isort: off
from advisor.shell.cli import probe  # noqa: F401
from advisor.shell.cli import profiles  # noqa: F401
from advisor.shell.cli import taxonomy  # noqa: F401
from advisor.shell.cli import rules  # noqa: F401
from advisor.shell.cli import estimate  # noqa: F401
from advisor.shell.cli import recommend  # noqa: F401
from advisor.shell.cli import calibrate  # noqa: F401

# isort: on
from advisor.shell.cli.common import EXIT_PIPE, app, handle_errors, main
from advisor.shell.cli.modelflags import ModelConfigOpt, ModelOpt, ModelSizeOpt, RopeScalingOpt

__all__ = [
    "EXIT_PIPE",
    "ModelConfigOpt",
    "ModelOpt",
    "ModelSizeOpt",
    "RopeScalingOpt",
    "app",
    "handle_errors",
    "main",
]
