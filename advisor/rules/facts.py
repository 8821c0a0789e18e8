"""The facts rules may read, each declared once (rules/facts.yaml): name, type, unit, meaning."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from advisor.data.resources import rules_dir
from advisor.data.yamlio import YamlError, line_of, load_yaml, yaml_error_line
from advisor.errors import DataError
from advisor.rules.conditions import Condition, Scalar, evaluate


class FactType(str, Enum):
    """The type of a fact's value."""

    BOOL = "bool"
    INT = "int"
    NUMBER = "number"
    ENUM = "enum"


class FactOrigin(str, Enum):
    """Where a fact's value comes from."""

    HARDWARE = "hardware"  # the probe, or a hardware profile
    WORKLOAD = "workload"  # the user's flags and the model shape
    DERIVED = "derived"  # computed by the advisor (e.g. memory headroom from the memory model)


class Fact(BaseModel):
    """One declared fact."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: FactType
    origin: FactOrigin
    meaning: str = Field(min_length=10)
    unit: str = ""
    values: list[str] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _domain(self) -> Fact:
        if self.type is FactType.ENUM and not self.values:
            raise ValueError("an enum fact needs its allowed `values`")
        if self.type is not FactType.ENUM and self.values:
            raise ValueError("only enum facts take `values`")
        if self.type in (FactType.INT, FactType.NUMBER) and (self.min is None or self.max is None):
            raise ValueError("a numeric fact needs `min` and `max` (its domain)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def accepts(self, value: Scalar) -> bool:
        """Whether ``value`` lies in the declared domain."""
        if self.type is FactType.BOOL:
            return isinstance(value, bool)
        if self.type is FactType.ENUM:
            return isinstance(value, str) and value in (self.values or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type is FactType.INT and float(value) != int(value):
            return False
        return (self.min or 0) <= value <= (self.max if self.max is not None else value)


class Invariant(BaseModel):
    """A relation every real scenario satisfies (e.g. a CPU has no compute capability)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    id: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    meaning: str
    holds: Condition


class FactsFile(BaseModel):
    """The document rules/facts.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    facts: list[Fact]
    invariants: list[Invariant] = []


class FactSpace(BaseModel):
    """Every declared fact, by name, and the invariants between them."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    facts: dict[str, Fact]
    invariants: list[Invariant] = []
    path: str = ""

    def satisfies_invariants(self, scenario: dict[str, Scalar]) -> bool:
        """Whether a complete scenario breaks no invariant."""
        return all(evaluate(inv.holds, scenario) for inv in self.invariants)


_CONDITION = TypeAdapter(Condition)


def load_facts(path: Path | None = None) -> FactSpace:
    """Load and validate the fact declarations.

    Raises:
        DataError: listing every problem as ``file:line: id: field: message``.
    """
    path = path or rules_dir() / "facts.yaml"
    try:
        raw = load_yaml(path)
    except OSError as exc:
        raise DataError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except YamlError as exc:
        raise DataError([f"{path}:{yaml_error_line(exc)}: invalid YAML: {exc}"]) from exc
    try:
        doc = FactsFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            ident = _ident(raw, loc)
            field = ".".join(str(p) for p in loc[2:]) or str(loc[-1] if loc else "")
            problems.append(f"{path}:{line_of(raw, loc)}: {ident}: {field}: {err['msg']}")
        raise DataError(problems) from exc
    problems = []
    facts: dict[str, Fact] = {}
    for i, fact in enumerate(doc.facts):
        if fact.name in facts:
            line = line_of(raw, ("facts", i))
            problems.append(f"{path}:{line}: {fact.name}: name: declared twice")
        facts[fact.name] = fact
    from advisor.rules.conditions import facts_of  # local: keeps the import list short

    for i, inv in enumerate(doc.invariants):
        for name in sorted(facts_of(inv.holds) - set(facts)):
            line = line_of(raw, ("invariants", i))
            problems.append(f"{path}:{line}: {inv.id}: holds: undeclared fact {name!r}")
    if problems:
        raise DataError(problems)
    return FactSpace(facts=facts, invariants=doc.invariants, path=str(path))


def _ident(raw: object, loc: tuple[int | str, ...]) -> str:
    try:
        item = raw[loc[0]][loc[1]]  # type: ignore[index]
        return str(item.get("name") or item.get("id") or "?")
    except (KeyError, IndexError, TypeError, AttributeError):
        return "-"


def validate_condition(value: object) -> Condition:
    """Validate a raw condition (used by the rules loader)."""
    return _CONDITION.validate_python(value)
