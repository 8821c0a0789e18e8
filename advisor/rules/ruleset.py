"""The rule base: rules/*.yaml loaded into typed, validated rules with their file and line.

A rule file looks like::

    rules:
      - id: mezo-when-first-order-does-not-fit
        title: Zeroth-order fine-tuning when no first-order method fits
        when: {all: [{fact: task, eq: finetune}, {fact: first_order_fits, eq: false}]}
        then:
          - prefer: [mezo]
            weight: 3
          - advise: MeZO needs only inference memory; expect many more steps.
        rationale: ...
        sources:
          - {authors: Malladi et al., year: 2023,
             title: Fine-Tuning Language Models with Just Forward Passes}

Actions: ``require`` and ``exclude`` are hard constraints; ``prefer`` and ``avoid`` add or
subtract ``weight`` (default 1) to a technique's score; ``advise`` attaches text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from advisor.data.cache import cached_by_content
from advisor.data.resources import rules_dir
from advisor.data.yamlio import YamlError, line_of, load_yaml, yaml_error_line
from advisor.errors import DataError
from advisor.rules.conditions import Condition, comparisons
from advisor.rules.facts import Fact, FactSpace, FactType, load_facts

RESERVED_FILES = frozenset({"taxonomy.yaml", "facts.yaml"})
# NOTE: the shipped base has ~100 rules; `rules check` grows faster than linearly with the
# count (1,000 rules: 2 s, 3,000: 10 s on one EPYC core), so a rule base is bounded at
# 10x the shipped one and 20,000 pasted rules are an error, not ten minutes of checking.
MAX_RULES = 1_000
_KEBAB = r"^[a-z0-9]+(-[a-z0-9.]+)*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Source(_Frozen):
    """A published source of a rule: authors, year, title."""

    authors: str = Field(min_length=2)
    year: int = Field(ge=1900, le=2100)
    title: str = Field(min_length=3)
    url: str | None = None

    def cite(self) -> str:
        return f"{self.authors} {self.year}, {self.title}"


class Action(_Frozen):
    """What follows when a rule's condition holds: exactly one verb."""

    require: list[str] | None = Field(default=None, min_length=1)
    exclude: list[str] | None = Field(default=None, min_length=1)
    prefer: list[str] | None = Field(default=None, min_length=1)
    avoid: list[str] | None = Field(default=None, min_length=1)
    advise: str | None = Field(default=None, min_length=5)
    weight: float | None = Field(default=None, gt=0, le=10)

    @model_validator(mode="after")
    def _one_verb(self) -> Action:
        verbs = [v for v in ("require", "exclude", "prefer", "avoid", "advise") if getattr(self, v)]
        if len(verbs) != 1:
            raise ValueError(
                "an action needs exactly one of require, exclude, prefer, avoid, advise;"
                f" got {verbs}"
            )
        if self.weight is not None and verbs[0] not in ("prefer", "avoid"):
            raise ValueError("only prefer and avoid take a weight")
        return self

    @property
    def verb(self) -> str:
        return next(
            v for v in ("require", "exclude", "prefer", "avoid", "advise") if getattr(self, v)
        )

    @property
    def techniques(self) -> list[str]:
        value = getattr(self, self.verb)
        return list(value) if isinstance(value, list) else []

    @property
    def score(self) -> float:
        """Signed soft weight: +weight for prefer, -weight for avoid, 0 otherwise."""
        w = self.weight if self.weight is not None else 1.0
        return {"prefer": w, "avoid": -w}.get(self.verb, 0.0)


class Rule(_Frozen):
    """One rule: when a condition over facts holds, these actions follow, for these reasons."""

    id: str = Field(pattern=_KEBAB)
    title: str = Field(min_length=5)
    when: Condition
    then: list[Action] = Field(min_length=1)
    rationale: str = ""
    sources: list[Source] = []
    quality: bool = Field(
        default=False,
        description="the preference is about what is learnt (the result), not what a step "
        "costs: the cost models cannot price it, so under the balanced objective it weighs "
        "three times a cost heuristic's point (advisor/plan/space.py QUALITY_RULE_FACTOR); "
        "the rationale says why and the sources show it",
    )


class RuleFile(_Frozen):
    """One rules/*.yaml document."""

    rules: list[Rule]


class Problem(_Frozen):
    """One defect found while loading: where, which rule, which field, what."""

    kind: str = Field(
        description="unreadable (the file is not YAML that can be read within the bounds), "
        "schema, duplicate-id or dangling-reference"
    )
    file: str
    line: int
    ident: str = "-"
    field: str = "-"
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.ident}: {self.field}: {self.message}"


class LocatedRule(_Frozen):
    """A rule and where it was written."""

    rule: Rule
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


class RuleSet(BaseModel):
    """Every rule of a rule base, sorted by id (file order never matters)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    rules: list[LocatedRule]
    facts: FactSpace

    def get(self, rule_id: str) -> LocatedRule | None:
        return next((r for r in self.rules if r.rule.id == rule_id), None)


def rule_files(dirs: Sequence[Path]) -> list[Path]:
    """The rule files of the given folders, in a stable order."""
    files: list[Path] = []
    for d in dirs:
        files.extend(p for p in sorted(d.glob("*.yaml")) if p.name not in RESERVED_FILES)
    return files


def load_rules(
    extra_dirs: Sequence[Path] = (),
    *,
    technique_ids: set[str],
    facts: FactSpace | None = None,
    base_dir: Path | None = None,
) -> RuleSet:
    """Load the shipped rules plus any user folders, and validate every reference.

    Args:
        extra_dirs: user rule folders, used alongside the shipped ones.
        technique_ids: the taxonomy's ids (a rule naming another id is an error).
        facts: the declared facts (default: the shipped rules/facts.yaml).
        base_dir: the shipped rule folder (default: the installed one).

    Returns:
        The rule set, sorted by rule id.

    Raises:
        DataError: listing every problem as ``file:line: id: field: message``.
    """
    ruleset, problems = collect_rules(
        extra_dirs, technique_ids=technique_ids, facts=facts, base_dir=base_dir
    )
    if problems or ruleset is None:
        raise DataError([str(p) for p in problems])
    return ruleset


def rules_sources(args: dict[str, Any]) -> tuple[list[Path], str] | None:
    """``collect_rules(extra_dirs, technique_ids=..., facts=..., base_dir=...)``."""
    if args["facts"] is not None:
        return None
    from advisor.data.resources import rules_dir

    base = Path(args["base_dir"] or rules_dir())
    dirs = [Path(d) for d in args["extra_dirs"]]
    files = [base / "facts.yaml", *rule_files([base, *[d for d in dirs if d.is_dir()]])]
    extra = repr([str(d) for d in dirs]) + "|" + ",".join(sorted(args["technique_ids"]))
    return files, extra


@cached_by_content("rules", rules_sources)
def collect_rules(
    extra_dirs: Sequence[Path] = (),
    *,
    technique_ids: set[str],
    facts: FactSpace | None = None,
    base_dir: Path | None = None,
) -> tuple[RuleSet | None, list[Problem]]:
    """Like :func:`load_rules`, but return the problems instead of raising.

    The rule set holds every rule that validated (so later checks can still run); it is None
    only when the fact declarations themselves are broken.
    """
    base = base_dir or rules_dir()
    if facts is None:
        try:
            facts = load_facts(base / "facts.yaml")
        except DataError as exc:
            return None, [_parse_problem(p) for p in exc.problems]
    problems: list[Problem] = []
    located: list[LocatedRule] = []
    for d in extra_dirs:
        if not d.is_dir():
            problems.append(
                Problem(kind="schema", file=str(d), line=0, message="not a folder of rule files")
            )
    for path in rule_files([base, *[d for d in extra_dirs if d.is_dir()]]):
        located.extend(_load_file(path, problems, MAX_RULES - len(located)))
    seen: dict[str, LocatedRule] = {}
    first_at: dict[str, str] = {}
    for lr in located:
        if lr.rule.id in first_at:
            first = first_at[lr.rule.id]
            problems.append(
                Problem(
                    kind="duplicate-id",
                    file=lr.file,
                    line=lr.line,
                    ident=lr.rule.id,
                    field="id",
                    message=f"duplicate rule id (first at {first})",
                )
            )
            continue
        first_at[lr.rule.id] = lr.where
        refs = _reference_problems(lr, facts, technique_ids)
        problems.extend(refs)
        # NOTE: a rule with dangling references is reported, and kept out of the rule set so
        # that the analyses after loading never meet a name they cannot resolve.
        if not refs:
            seen[lr.rule.id] = lr
    rules = sorted(seen.values(), key=lambda r: r.rule.id)
    return RuleSet(rules=rules, facts=facts), problems


def _parse_problem(text: str) -> Problem:
    """Turn a ``file:line: id: field: message`` string back into a Problem."""
    parts = text.split(": ", 3)
    file, _, line = parts[0].rpartition(":")
    if not file or not line.isdigit():
        return Problem(kind="schema", file=parts[0], line=0, message=": ".join(parts[1:]) or text)
    rest = parts[1:] + ["-"] * (3 - len(parts[1:]))
    if len(parts) < 4:
        return Problem(kind="schema", file=file, line=int(line), message=": ".join(parts[1:]))
    return Problem(
        kind="schema", file=file, line=int(line), ident=rest[0], field=rest[1], message=rest[2]
    )


def _load_file(path: Path, problems: list[Problem], room: int = MAX_RULES) -> list[LocatedRule]:
    """The rules of one file (``room``: how many more the rule base may hold)."""
    f = str(path)
    try:
        raw = load_yaml(path)
    except OSError as exc:
        problems.append(
            Problem(kind="unreadable", file=f, line=0, message=f"cannot read: {exc.strerror}")
        )
        return []
    except YamlError as exc:
        msg = " ".join(str(exc).split())
        problems.append(
            Problem(
                kind="unreadable",
                file=f,
                line=yaml_error_line(exc),
                message=f"invalid YAML: {msg}",
            )
        )
        return []
    if not isinstance(raw, dict) or not isinstance(raw.get("rules"), list):
        problems.append(
            Problem(
                kind="schema",
                file=f,
                line=1,
                field="rules",
                message="a rule file is a mapping with a `rules` list",
            )
        )
        return []
    if len(raw["rules"]) > room:
        problems.append(
            Problem(
                kind="unreadable",  # past the bound: refused unread, like a file too large
                file=f,
                line=line_of(raw, ("rules",)),
                field="rules",
                message=f"{len(raw['rules']):,} rules would take the rule base past "
                f"{MAX_RULES:,} rules (10x the shipped base); split off what you need",
            )
        )
        return []
    out: list[LocatedRule] = []
    # Validate rule by rule so that one bad rule does not hide the others' problems.
    for key in sorted(set(raw) - {"rules"}):
        problems.append(
            Problem(
                kind="schema",
                file=f,
                line=line_of(raw, (key,)),
                field=str(key),
                message="unknown top-level key",
            )
        )
    for i, item in enumerate(raw["rules"]):
        line = line_of(raw, ("rules", i))
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            ident = item.get("id", f"rules[{i}]") if isinstance(item, dict) else f"rules[{i}]"
            for err in exc.errors():
                loc = err["loc"]
                problems.append(
                    Problem(
                        kind="schema",
                        file=f,
                        line=line_of(item, loc) or line,
                        ident=str(ident),
                        field=".".join(str(p) for p in loc) or "-",
                        message=err["msg"],
                    )
                )
            continue
        out.append(LocatedRule(rule=rule, file=f, line=line))
    return out


def _reference_problems(
    lr: LocatedRule, facts: FactSpace, technique_ids: set[str]
) -> list[Problem]:
    problems = []

    def add(kind: str, field: str, message: str) -> None:
        problems.append(
            Problem(
                kind=kind,
                file=lr.file,
                line=lr.line,
                ident=lr.rule.id,
                field=field,
                message=message,
            )
        )

    for comp in comparisons(lr.rule.when):
        fact = facts.facts.get(comp.fact)
        if fact is None:
            add("dangling-reference", "when", f"undeclared fact {comp.fact!r}")
            continue
        for msg in _operand_problems(fact, comp.operator, comp.operand):
            add("schema", "when", msg)
    for action in lr.rule.then:
        for tid in action.techniques:
            if tid not in technique_ids:
                add("dangling-reference", f"then.{action.verb}", f"unknown technique {tid!r}")
    return problems


def _operand_problems(fact: Fact, op: str, operand: Any) -> list[str]:
    values = list(operand) if op in ("in", "not_in", "between") else [operand]
    if fact.type in (FactType.INT, FactType.NUMBER):
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return [] if ok else [f"{fact.name} is numeric; {op} {operand!r} is not a number"]
    if op in ("lt", "le", "gt", "ge", "between"):
        return [f"{fact.name} is {fact.type.value}; {op} needs a numeric fact"]
    if fact.type is FactType.BOOL:
        ok = all(isinstance(v, bool) for v in values)
        return [] if ok else [f"{fact.name} is bool; {operand!r} is not true/false"]
    bad = [v for v in values if v not in (fact.values or [])]
    return [
        f"{fact.name} has no value {v!r} (allowed: {', '.join(fact.values or [])})" for v in bad
    ]
