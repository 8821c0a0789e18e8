"""The taxonomy tree and the rule base: list, one rule, the consistency check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from advisor.shell.render import common
from advisor.shell.render.common import Col, print_table, safe

if TYPE_CHECKING:
    from advisor.rules.checks import CheckReport
    from advisor.rules.ruleset import LocatedRule
    from advisor.rules.taxonomy import Taxonomy, Technique


def render_taxonomy(taxonomy: Taxonomy) -> None:
    """Draw the taxonomy as a tree: category, then order for optimizers."""
    from rich.tree import Tree

    from advisor.rules.taxonomy import Category, Order

    # NOTE: a tree leaf wraps inside its indentation, which would split a long id on a
    # narrow console; there, the same groups are printed flat, one technique per line.
    deepest = 4 * 3 + max((len(t.id) for t in taxonomy.techniques), default=0) + 1
    if common.console.width < deepest:
        common.console.print(f"taxonomy ({len(taxonomy.techniques)} techniques)", soft_wrap=True)
        for category in Category:
            groups = (
                [(f"{category.value}/{o.value}-order", taxonomy.optimizers(o)) for o in Order]
                if category is Category.OPTIMIZER
                else [(category.value, taxonomy.by_category(category))]
            )
            for label, members in groups:
                if members:
                    common.console.print(f"[bold]{label}[/] ({len(members)})", soft_wrap=True)
                    for tech in members:
                        common.console.print(f"  {_leaf(tech)}", soft_wrap=True)
        return
    root = Tree(f"[bold]taxonomy[/] ({len(taxonomy.techniques)} techniques)")
    for category in Category:
        members = taxonomy.by_category(category)
        if not members:
            continue
        branch = root.add(f"[bold]{category.value}[/] ({len(members)})")
        if category is Category.OPTIMIZER:
            for order in Order:
                opts = taxonomy.optimizers(order)
                sub = branch.add(f"[bold]{order.value}-order[/] ({len(opts)})")
                for t in opts:
                    sub.add(_leaf(t))
        else:
            for t in members:
                branch.add(_leaf(t))
    common.console.print(root)


def _leaf(t: Technique) -> str:
    refs = "; ".join(f"{r.authors} {r.year}" for r in t.references)
    return f"[cyan]{t.id}[/]  {t.name} [dim]({refs})[/]"


def render_rules_list(rules: list[LocatedRule]) -> None:
    """One line per rule: id, what it does, where."""
    wide = common.console.width >= 160
    columns = [Col("id", ident=True, style="cyan"), Col("title")]
    if wide:
        columns += [Col("actions"), Col("file", style="dim")]
    rows = []
    for lr in rules:
        cells = [lr.rule.id, safe(lr.rule.title)]
        if wide:
            cells.append(
                "; ".join(
                    f"{a.verb} {', '.join(a.techniques)}" if a.techniques else "advise"
                    for a in lr.rule.then
                )
            )
            cells.append(f"{safe(Path(lr.file).name)}:{lr.line}")
        rows.append(cells)
    print_table(columns, rows, title=f"Rules ({len(rules)})")
    if not wide:
        common.console.print(
            "[dim]`optadvise rules show ID` for a rule's condition, actions and sources[/]"
        )


def render_rule(lr: LocatedRule) -> None:
    """One rule in full: condition, actions, rationale, sources."""
    from advisor.rules.conditions import describe

    r = lr.rule
    common.console.print(f"[bold cyan]{r.id}[/]  {safe(r.title)}")
    common.console.print(f"[dim]{safe(_shown_path(lr.file))}:{lr.line}[/]")
    common.console.print(f"[bold]when[/]   {escape(describe(r.when))}")
    for a in r.then:
        if a.verb == "advise":
            common.console.print(f"[bold]advise[/] {safe(a.advise or '')}")
        else:
            weight = f" (weight {a.weight:g})" if a.weight is not None else ""
            common.console.print(f"[bold]{a.verb}[/] {', '.join(a.techniques)}{weight}")
    common.console.print(f"[bold]why[/]    {safe(' '.join(r.rationale.split()))}")
    for src in r.sources:
        common.console.print(
            f"[bold]source[/] {safe(src.cite())}" + (f" <{safe(src.url)}>" if src.url else "")
        )


def _shown_path(file: str) -> str:
    """A shipped rule file relative to the repository or package (stable across checkouts)."""
    from advisor.data.resources import rules_dir

    base = rules_dir()
    path = Path(file)
    try:
        return str(Path("rules") / path.resolve().relative_to(base.resolve()))
    except ValueError:
        return file


def render_check(report: CheckReport) -> None:
    """The rules check report: every defect with file and line, then a summary."""
    for d in report.defects:
        common.console.print(safe(d), soft_wrap=True)
        if d.scenario:
            facts = ", ".join(f"{k}={v}" for k, v in d.scenario.items())
            common.console.print(
                f"    scenario: {facts}", markup=False, style="dim", soft_wrap=True
            )
    status = "[green]consistent[/]" if report.ok else f"[red]{len(report.defects)} defect(s)[/]"
    common.console.print(
        f"{status}: {report.rules_checked} rules in {len(report.rule_files)} files, "
        f"{report.techniques_checked} techniques, {report.facts_declared} facts, "
        f"{report.scenarios_explored} partial scenarios explored in {report.seconds:.2f} s"
    )
