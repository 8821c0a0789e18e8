"""Rich tables, trees, bars and JSON: how reports look. No decisions are made here.

One module per report (probe, rules, estimate, recommend, calibration) over a common one
(the consoles, safe text, tables); this package re-exports what the commands call.
"""

from __future__ import annotations

from advisor.shell.jsonout import print_json as print_json  # the commands call render.print_json
from advisor.shell.render.calibration import (
    calibration_progress,
    render_calibration,
    render_convergence,
)
from advisor.shell.render.common import Col, bar, console, err_console, note, print_table, safe
from advisor.shell.render.estimate import render_estimate
from advisor.shell.render.probe import render_hardware_profile, render_probe, render_profiles
from advisor.shell.render.recommend import render_recommend
from advisor.shell.render.rules import render_check, render_rule, render_rules_list, render_taxonomy

__all__ = [
    "Col",
    "bar",
    "calibration_progress",
    "console",
    "err_console",
    "note",
    "print_json",
    "print_table",
    "render_calibration",
    "render_check",
    "render_convergence",
    "render_estimate",
    "render_hardware_profile",
    "render_probe",
    "render_profiles",
    "render_recommend",
    "render_rule",
    "render_rules_list",
    "render_taxonomy",
    "safe",
]
