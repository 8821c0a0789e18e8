"""`optadvise rules check`: prove a rule base consistent by enumerating its fact space.

Numeric facts are split at every constant the rules and invariants compare them with, so a
finite set of representative values covers every distinct outcome of every condition. The
search is a backtracking enumeration with three-valued pruning (a partial scenario stops as
soon as the goal can no longer be met), restricted to the facts the question involves and
the invariants that touch them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from advisor.data.yamlio import YamlError, load_yaml
from advisor.errors import DataError
from advisor.rules.conditions import Condition, Scalar, evaluate_partial, facts_of, thresholds
from advisor.rules.engine import requirement_rules
from advisor.rules.facts import FactSpace, FactType
from advisor.rules.ruleset import LocatedRule, Problem, RuleSet, collect_rules
from advisor.rules.taxonomy import Basis, Category, ScaleTrend, StateKind, Taxonomy, load_taxonomy

# A search that explores more partial scenarios than this gives up and says so.
SEARCH_LIMIT = 2_000_000


class DefectKind(str, Enum):
    """The kinds of defect the checker reports."""

    SCHEMA = "schema"
    DUPLICATE_ID = "duplicate-id"
    DANGLING_REFERENCE = "dangling-reference"
    DEAD_RULE = "dead-rule"
    CONTRADICTION = "contradiction"
    NO_FEASIBLE_OPTIMIZER = "no-feasible-optimizer"
    UNREACHABLE_TECHNIQUE = "unreachable-technique"
    MISSING_RATIONALE = "missing-rationale"
    MISSING_SOURCES = "missing-sources"
    STEP_EFFICIENCY = "step-efficiency"
    SEARCH_LIMIT = "search-limit"


class Defect(BaseModel):
    """One defect, with where it was written."""

    model_config = ConfigDict(frozen=True)

    kind: DefectKind
    file: str
    line: int
    rule: str | None = None
    technique: str | None = None
    message: str
    scenario: dict[str, Scalar] | None = Field(
        default=None, description="a witness: the facts under which the defect shows"
    )

    def __str__(self) -> str:
        who = self.rule or self.technique or "-"
        return f"{self.file}:{self.line}: {who}: {self.kind.value}: {self.message}"


class CheckReport(BaseModel):
    """What `optadvise rules check` found, and how much it checked."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    rule_files: list[str]
    rules_checked: int
    techniques_checked: int
    facts_declared: int
    scenarios_explored: int
    defects: list[Defect]
    seconds: float


# --- the fact space ---------------------------------------------------------------------


def fact_domains(space: FactSpace, conditions: Iterable[Condition]) -> dict[str, list[Scalar]]:
    """Representative values of every fact: enum values, both booleans, and for numbers the
    domain ends, every threshold used, and a point strictly between consecutive ones."""
    cuts: dict[str, set[float]] = {}
    for cond in [*conditions, *(inv.holds for inv in space.invariants)]:
        for name, consts in thresholds(cond).items():
            cuts.setdefault(name, set()).update(consts)
    domains: dict[str, list[Scalar]] = {}
    for name, fact in sorted(space.facts.items()):
        if fact.type is FactType.BOOL:
            domains[name] = [False, True]
        elif fact.type is FactType.ENUM:
            domains[name] = list(fact.values or [])
        else:
            lo, hi = float(fact.min or 0), float(fact.max if fact.max is not None else 0)
            points = sorted({lo, hi, *(c for c in cuts.get(name, set()) if lo <= c <= hi)})
            values: list[float] = []
            for a, b in itertools.pairwise(points):
                values.append(a)
                mid = (a + b) / 2
                if fact.type is FactType.INT:
                    mid = float(int(a) + 1) if int(a) + 1 < b else float("nan")
                if mid == mid:  # not NaN
                    values.append(mid)
            values.append(points[-1])
            domains[name] = [int(v) if fact.type is FactType.INT else v for v in values]
    return domains


class _Search:
    """Backtracking search for a scenario meeting a goal over a subset of facts."""

    def __init__(self, space: FactSpace, domains: dict[str, list[Scalar]]) -> None:
        self.space = space
        self.domains = domains
        self.explored = 0

    def find(
        self,
        must_hold: Sequence[Condition] = (),
        must_fail: Sequence[Condition] = (),
        cover: Sequence[Sequence[Condition]] = (),
    ) -> dict[str, Scalar] | None:
        """A scenario (over the facts involved) where every ``must_hold`` holds, every
        ``must_fail`` fails, each group of ``cover`` has at least one condition holding, and
        every invariant touching those facts holds. None when there is none."""
        conds = [*must_hold, *must_fail, *(c for group in cover for c in group)]
        names: set[str] = set()
        for c in conds:
            names |= facts_of(c)
        invariants = []
        changed = True
        while changed:  # close over invariants that share facts
            changed = False
            for inv in self.space.invariants:
                f = facts_of(inv.holds)
                if f & names and inv not in invariants:
                    invariants.append(inv)
                    if not f <= names:
                        names |= f
                        changed = True
        holds = [*must_hold, *(inv.holds for inv in invariants)]
        # Most-used facts first: earlier decisions prune more.
        usage = {n: sum(n in facts_of(c) for c in conds) for n in names}
        order = sorted(names, key=lambda n: (-usage[n], len(self.domains[n]), n))
        assignment: dict[str, Scalar] = {}

        def viable() -> bool:
            if any(evaluate_partial(c, assignment) is False for c in holds):
                return False
            if any(evaluate_partial(c, assignment) is True for c in must_fail):
                return False
            return all(
                any(evaluate_partial(c, assignment) is not False for c in group) for group in cover
            )

        def step(i: int) -> bool:
            self.explored += 1
            if self.explored > SEARCH_LIMIT:
                raise _LimitReached
            if not viable():
                return False
            if i == len(order):
                return True
            name = order[i]
            for value in self.domains[name]:
                assignment[name] = value
                if step(i + 1):
                    return True
            del assignment[name]
            return False

        return dict(sorted(assignment.items())) if step(0) else None


class _LimitReached(Exception):
    pass


# --- the checks -----------------------------------------------------------------------------


def check_rules(
    extra_dirs: Sequence[Path] = (),
    *,
    base_dir: Path | None = None,
    taxonomy: Taxonomy | None = None,
    candidate_ids: set[str] | None = None,
) -> CheckReport:
    """Check the shipped rule base (or ``base_dir``) plus any user folders.

    Args:
        extra_dirs: user rule folders checked together with the base.
        base_dir: the rule folder holding facts.yaml, taxonomy.yaml and rule files.
        taxonomy: the techniques (default: ``base_dir``'s taxonomy.yaml).
        candidate_ids: techniques the recommender enumerates itself (reachable without a
            rule preferring them); default: the candidate dimensions of advisor.rules.candidates.

    Returns:
        The report; ``ok`` is False when any defect was found.

    Raises:
        DataError: when the taxonomy itself does not load (nothing can be checked without it),
            or a rule file cannot be read as YAML at all (not UTF-8, a FIFO or device, too
            large, an alias bomb, an unhashable key, invalid YAML, too many rules): that is
            bad input, not a defect of the rule base.
    """
    start = time.perf_counter()
    from advisor.data.resources import rules_dir

    base = base_dir or rules_dir()
    taxonomy_path = base / "taxonomy.yaml"
    taxonomy = taxonomy or load_taxonomy(taxonomy_path)
    if candidate_ids is None:
        from advisor.rules.candidates import candidate_technique_ids

        candidate_ids = candidate_technique_ids(taxonomy)
    ruleset, problems = collect_rules(extra_dirs, technique_ids=set(taxonomy.ids()), base_dir=base)
    unreadable = [str(p) for p in problems if p.kind == "unreadable"]
    if unreadable:
        # NOTE: exit 2 (bad input, one line per file, as `rules list` and `recommend` say
        # it), not 1: the check cannot speak for a rule base it could not read.
        raise DataError(unreadable)
    from advisor.rules.ruleset import rule_files

    files = [str(p) for p in rule_files([base, *[d for d in extra_dirs if d.is_dir()]])]
    defects = [_from_problem(p) for p in problems]
    defects += step_efficiency_defects(taxonomy, _technique_lines(taxonomy_path))
    explored = 0
    if ruleset is not None:
        checker = _Checker(ruleset, taxonomy, candidate_ids, _technique_lines(taxonomy_path))
        try:
            defects += checker.run()
        except _LimitReached:
            defects.append(
                Defect(
                    kind=DefectKind.SEARCH_LIMIT,
                    file=str(base),
                    line=0,
                    message=f"gave up after {SEARCH_LIMIT} partial scenarios; simplify conditions",
                )
            )
        explored = checker.search.explored
    defects.sort(key=lambda d: (d.file, d.line, d.kind.value, d.rule or "", d.technique or ""))
    return CheckReport(
        ok=not defects,
        rule_files=files,
        rules_checked=len(ruleset.rules) if ruleset else 0,
        techniques_checked=len(taxonomy.techniques),
        facts_declared=len(ruleset.facts.facts) if ruleset else 0,
        scenarios_explored=explored,
        defects=defects,
        seconds=round(time.perf_counter() - start, 3),
    )


def _technique_lines(path: Path) -> tuple[str, dict[str, int]]:
    """The taxonomy file and the line each technique starts on (for unreachable reports)."""
    try:
        raw = load_yaml(path)
        items = raw.get("techniques", []) if isinstance(raw, dict) else []
    except (OSError, YamlError):
        return str(path), {}
    return str(path), {
        str(item.get("id")): getattr(item, "line", 0) for item in items if isinstance(item, dict)
    }


# Adapters whose step factor is relative to full fine-tuning (advisor/cost/convergence.py).
STEP_ADAPTERS = ("lora", "qlora")
# Optimizer-state kinds that compress AdamW's state without changing its update: they save
# memory, not steps, so their factor must be about 1 (8-bit Adam, paged, Adam-mini, GaLore).
_STATE_SAVERS = {StateKind.QUANTIZED_BLOCKWISE, StateKind.BLOCK_MEAN, StateKind.LOW_RANK_PROJECTED}
_ABOUT_ONE = 0.05


def step_efficiency_defects(
    taxonomy: Taxonomy, technique_lines: tuple[str, dict[str, int]]
) -> list[Defect]:
    """Check the taxonomy's ``steps_vs_adamw`` data (time to target, advisor/cost/convergence.py).

    Every optimizer and adapter (LoRA, QLoRA) has data; AdamW is the baseline 1 and nothing
    else claims to be; every point is positive, ordered low <= central <= high and cites a
    source; optimizers that only compress AdamW's state are about 1; a ``toward-one`` trend
    really moves toward 1 with size; no other technique carries the field.
    """
    file, lines = technique_lines
    out: list[Defect] = []

    def bad(tid: str, message: str) -> None:
        out.append(
            Defect(
                kind=DefectKind.STEP_EFFICIENCY,
                file=file,
                line=lines.get(tid, 0),
                technique=tid,
                message=f"steps_vs_adamw: {message}",
            )
        )

    for tech in taxonomy.techniques:
        data = tech.steps_vs_adamw
        wanted = tech.category is Category.OPTIMIZER or tech.id in STEP_ADAPTERS
        if data is None:
            if wanted:
                bad(
                    tech.id,
                    "missing: give measured points with sources, or about 1 with the "
                    "source that shows it",
                )
            continue
        if not wanted:
            bad(tech.id, "only optimizers and adapters (lora, qlora) carry step factors")
        for p in data.points:
            where = f"at {p.params} params"
            if not (0 < p.low <= p.central <= p.high):
                bad(tech.id, f"{where}: needs 0 < low <= central <= high")
            if not p.sources:
                bad(tech.id, f"{where}: no sources")
            baseline = p.basis is Basis.BASELINE
            if tech.id == "adamw" and not (baseline and p.low == p.central == p.high == 1.0):
                bad(tech.id, f"{where}: AdamW is the baseline: basis baseline, 1 / 1 / 1")
            if tech.id != "adamw" and baseline:
                bad(tech.id, f"{where}: only AdamW is the baseline")
            # NOTE: only Adam-family states compress AdamW's; 8-bit SGD, RMSprop or Adagrad
            # (bitsandbytes) take their own base's steps, which need not be about 1.
            if (
                tech.memory is not None
                and tech.memory.state in _STATE_SAVERS
                and "adam" in tech.id
                and abs(p.central - 1.0) > _ABOUT_ONE
            ):
                bad(
                    tech.id,
                    f"{where}: a compressed AdamW state saves memory, not steps: "
                    f"central must be about 1, got {p.central}",
                )
        if data.scale_trend is ScaleTrend.TOWARD_ONE:
            gains = [abs(math.log(p.central)) for p in data.points]
            if any(b > a + 1e-9 for a, b in itertools.pairwise(gains)):
                bad(tech.id, "scale_trend toward-one, but the central values move away from 1")
    return out


def _from_problem(p: Problem) -> Defect:
    kind = {
        "duplicate-id": DefectKind.DUPLICATE_ID,
        "dangling-reference": DefectKind.DANGLING_REFERENCE,
    }.get(p.kind, DefectKind.SCHEMA)
    rule = p.ident if p.ident not in ("-", "") else None
    return Defect(kind=kind, file=p.file, line=p.line, rule=rule, message=f"{p.field}: {p.message}")


class _Checker:
    def __init__(
        self,
        ruleset: RuleSet,
        taxonomy: Taxonomy,
        candidate_ids: set[str],
        technique_lines: tuple[str, dict[str, int]],
    ) -> None:
        self.technique_file, self.technique_lines = technique_lines
        self.ruleset = ruleset
        self.taxonomy = taxonomy
        self.candidate_ids = candidate_ids
        self.rules: list[LocatedRule] = [*ruleset.rules, *requirement_rules(taxonomy)]
        self.domains = fact_domains(ruleset.facts, [r.rule.when for r in self.rules])
        self.search = _Search(ruleset.facts, self.domains)
        self._index: dict[tuple[str, str], list[LocatedRule]] = {}
        for r in self.rules:
            for a in r.rule.then:
                for t in a.techniques:
                    bucket = self._index.setdefault((a.verb, t), [])
                    if r not in bucket:
                        bucket.append(r)

    def _by_verb(self, verb: str, technique: str) -> list[LocatedRule]:
        """The rules with a ``verb`` action naming ``technique``."""
        return self._index.get((verb, technique), [])

    def run(self) -> list[Defect]:
        out = self._documentation()
        dead = self._dead_rules()
        out += dead
        dead_ids = {d.rule for d in dead}
        live = [r for r in self.rules if r.rule.id not in dead_ids]
        out += self._contradictions(live)
        out += self._optimizer_feasibility(live)
        out += self._unreachable(live)
        return out

    def _documentation(self) -> list[Defect]:
        out = []
        for lr in self.ruleset.rules:
            if len(lr.rule.rationale.strip()) < 20:
                out.append(
                    Defect(
                        kind=DefectKind.MISSING_RATIONALE,
                        file=lr.file,
                        line=lr.line,
                        rule=lr.rule.id,
                        message="no rationale: say in plain words why the rule holds",
                    )
                )
            if not lr.rule.sources:
                out.append(
                    Defect(
                        kind=DefectKind.MISSING_SOURCES,
                        file=lr.file,
                        line=lr.line,
                        rule=lr.rule.id,
                        message="no sources: cite the paper (authors, year, title)",
                    )
                )
        return out

    def _dead_rules(self) -> list[Defect]:
        out = []
        for lr in self.ruleset.rules:
            if self.search.find(must_hold=[lr.rule.when]) is None:
                out.append(
                    Defect(
                        kind=DefectKind.DEAD_RULE,
                        file=lr.file,
                        line=lr.line,
                        rule=lr.rule.id,
                        message="its condition holds in no scenario of the declared fact space",
                    )
                )
        return out

    def _contradictions(self, live: list[LocatedRule]) -> list[Defect]:
        out = []
        ids = sorted(
            {t for r in live for a in r.rule.then if a.verb == "require" for t in a.techniques}
        )
        for tid in ids:
            live_ids = {r.rule.id for r in live}
            for req in (r for r in self._by_verb("require", tid) if r.rule.id in live_ids):
                for exc in (r for r in self._by_verb("exclude", tid) if r.rule.id in live_ids):
                    witness = self.search.find(must_hold=[req.rule.when, exc.rule.when])
                    if witness is not None:
                        out.append(
                            Defect(
                                kind=DefectKind.CONTRADICTION,
                                file=req.file,
                                line=req.line,
                                rule=req.rule.id,
                                technique=tid,
                                message=f"requires {tid} where {exc.rule.id} ({exc.where})"
                                " excludes it",
                                scenario=witness,
                            )
                        )
        # Two different techniques of a one-of category (optimizer, precision, attention)
        # required at once cannot both be honoured.
        one_of = {Category.OPTIMIZER, Category.PRECISION, Category.ATTENTION}
        required = [
            (r, t)
            for r in live
            for a in r.rule.then
            if a.verb == "require"
            for t in a.techniques
            if self.taxonomy.get(t).category in one_of
        ]
        for (r1, t1), (r2, t2) in itertools.combinations(required, 2):
            if t1 == t2 or self.taxonomy.get(t1).category != self.taxonomy.get(t2).category:
                continue
            witness = self.search.find(must_hold=[r1.rule.when, r2.rule.when])
            if witness is not None:
                out.append(
                    Defect(
                        kind=DefectKind.CONTRADICTION,
                        file=r1.file,
                        line=r1.line,
                        rule=r1.rule.id,
                        technique=t1,
                        message=f"requires {t1} where {r2.rule.id} ({r2.where}) requires {t2}:"
                        f" a configuration has one {self.taxonomy.get(t1).category.value}",
                        scenario=witness,
                    )
                )
        return out

    def _optimizer_feasibility(self, live: list[LocatedRule]) -> list[Defect]:
        optimizers = [t.id for t in self.taxonomy.techniques if t.category is Category.OPTIMIZER]
        live_ids = {r.rule.id for r in live}
        groups = []
        for oid in optimizers:
            excluders = [
                r.rule.when for r in self._by_verb("exclude", oid) if r.rule.id in live_ids
            ]
            if not excluders:
                return []  # this optimizer is never excluded: always feasible
            groups.append(excluders)
        witness = self.search.find(cover=groups)
        if witness is None:
            return []
        firing = sorted(
            r.rule.id
            for r in live
            if any(a.verb == "exclude" for a in r.rule.then)
            and evaluate_partial(r.rule.when, witness) is not False
        )
        first = next(r for r in live if r.rule.id in firing)
        return [
            Defect(
                kind=DefectKind.NO_FEASIBLE_OPTIMIZER,
                file=first.file,
                line=first.line,
                rule=first.rule.id,
                message="these hard constraints together exclude every optimizer: "
                + ", ".join(firing),
                scenario=witness,
            )
        ]

    def _unreachable(self, live: list[LocatedRule]) -> list[Defect]:
        out = []
        live_ids = {r.rule.id for r in live}
        for tech in sorted(self.taxonomy.techniques, key=lambda t: t.id):
            excluders = [
                r.rule.when for r in self._by_verb("exclude", tech.id) if r.rule.id in live_ids
            ]
            if tech.id in self.candidate_ids:
                reachable = self.search.find(must_fail=excluders) is not None
            else:
                promoters = [
                    r.rule.when
                    for r in [*self._by_verb("prefer", tech.id), *self._by_verb("require", tech.id)]
                    if r.rule.id in live_ids
                ]
                reachable = any(
                    self.search.find(must_hold=[p], must_fail=excluders) is not None
                    for p in promoters
                )
            if not reachable:
                why = (
                    "excluded in every scenario"
                    if tech.id in self.candidate_ids
                    else "no live rule prefers or requires it where it is allowed, and the "
                    "recommender does not enumerate it"
                )
                out.append(
                    Defect(
                        kind=DefectKind.UNREACHABLE_TECHNIQUE,
                        file=self.technique_file,
                        line=self.technique_lines.get(tech.id, 0),
                        technique=tech.id,
                        message=f"no scenario can recommend it: {why}",
                    )
                )
        return out


__all__ = [
    "CheckReport",
    "DataError",
    "Defect",
    "DefectKind",
    "check_rules",
    "fact_domains",
    "step_efficiency_defects",
]
