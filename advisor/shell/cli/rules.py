"""`optadvise rules list|show|check`: browse the rule base and prove it consistent."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from advisor.errors import EXIT_FINDINGS, UserError
from advisor.shell.cli.common import (
    JsonOpt,
    RulesDirOpt,
    SchemaOpt,
    handle_errors,
    print_schema,
    rules_app,
    rules_dirs,
)


def _load_ruleset(rules_dir: list[str] | None) -> Any:
    from advisor.rules.ruleset import load_rules
    from advisor.rules.taxonomy import load_taxonomy

    return load_rules(rules_dirs(rules_dir), technique_ids=set(load_taxonomy().ids()))


@rules_app.command("list")
@handle_errors
def rules_list(rules_dir: RulesDirOpt = None, json_out: JsonOpt = False) -> None:
    """List every rule: id, title, actions, file and line."""
    from advisor.shell import render

    ruleset = _load_ruleset(rules_dir)
    if json_out:
        render.print_json([lr for lr in ruleset.rules])
    else:
        render.render_rules_list(ruleset.rules)


@rules_app.command("show")
@handle_errors
def rules_show(
    rule_id: Annotated[str, typer.Argument(help="The rule id (see `optadvise rules list`).")],
    rules_dir: RulesDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one rule: its condition, actions, rationale and sources."""
    import difflib

    from advisor.shell import render

    ruleset = _load_ruleset(rules_dir)
    lr = ruleset.get(rule_id)
    if lr is None:
        close = difflib.get_close_matches(rule_id, [r.rule.id for r in ruleset.rules], n=3)
        raise UserError(
            f"unknown rule {rule_id!r}",
            f"did you mean {', '.join(close)}?" if close else "see `optadvise rules list`",
        )
    if json_out:
        render.print_json(lr)
    else:
        render.render_rule(lr)


@rules_app.command("check")
@handle_errors
def rules_check(
    rules_dir: RulesDirOpt = None, json_out: JsonOpt = False, schema: SchemaOpt = False
) -> None:
    """Prove the rule base consistent: schema, references, dead rules, contradictions,
    infeasible optimizer sets, unreachable techniques, missing rationale or sources.

    Exits 0 when consistent, 1 with the defects otherwise, 2 when a rule file cannot be
    read as YAML at all.
    """
    from advisor.rules.checks import CheckReport, check_rules

    if schema:
        print_schema(CheckReport)
        return
    from advisor.shell import render

    report = check_rules(rules_dirs(rules_dir))
    if json_out:
        render.print_json(report)
    else:
        render.render_check(report)
    if not report.ok:
        raise typer.Exit(EXIT_FINDINGS)
