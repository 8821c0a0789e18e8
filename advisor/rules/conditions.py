"""The rule condition language: comparisons, membership and ranges over named facts, joined by
all / any / not. Small and closed on purpose, so that `rules check` can analyse it statically.

YAML forms::

    {fact: task, eq: finetune}            # also ne, lt, le, gt, ge
    {fact: task, in: [finetune, lora]}    # also not_in
    {fact: seq_len, between: [2048, 8192]}  # inclusive on both ends
    {all: [<cond>, ...]}                  # true when every member holds; `all: []` is always true
    {any: [<cond>, ...]}                  # true when one member holds; `any: []` is never true
    {not: <cond>}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

Scalar = Union[bool, int, float, str]  # noqa: UP007 - pydantic needs the runtime Union here
Facts = Mapping[str, Scalar]

_OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "between")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, populate_by_name=True)


class Compare(_Frozen):
    """One test of one fact; exactly one operator is set."""

    fact: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    eq: Scalar | None = None
    ne: Scalar | None = None
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Scalar] | None = Field(default=None, min_length=1)
    between: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> Compare:
        given = [op for op in _OPERATORS if self._raw(op) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a comparison needs exactly one operator of {', '.join(_OPERATORS)};"
                f" got {given or 'none'}"
            )
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError(f"between: lower bound {self.between[0]} > upper {self.between[1]}")
        return self

    def _raw(self, op: str) -> Any:
        return getattr(self, "in_" if op == "in" else op)

    @property
    def operator(self) -> str:
        return next(op for op in _OPERATORS if self._raw(op) is not None)

    @property
    def operand(self) -> Any:
        return self._raw(self.operator)

    def holds(self, value: Scalar) -> bool:
        op, arg = self.operator, self.operand
        if op == "eq":
            return bool(value == arg)
        if op == "ne":
            return bool(value != arg)
        if op == "in":
            return bool(value in arg)
        if op == "not_in":
            return bool(value not in arg)
        number = float(value)
        if op == "lt":
            return bool(number < arg)
        if op == "le":
            return bool(number <= arg)
        if op == "gt":
            return bool(number > arg)
        if op == "ge":
            return bool(number >= arg)
        lo, hi = arg
        return bool(lo <= number <= hi)


class AllOf(_Frozen):
    """Conjunction."""

    all: list[Condition]


class AnyOf(_Frozen):
    """Disjunction."""

    any: list[Condition]


class NotOf(_Frozen):
    """Negation."""

    not_: Condition = Field(alias="not")


def _kind(value: Any) -> str | None:
    """Pick the condition form from its key, so errors speak of one form, not four."""
    if isinstance(value, BaseModel):
        return {Compare: "fact", AllOf: "all", AnyOf: "any", NotOf: "not"}.get(type(value))
    if isinstance(value, Mapping):
        for key in ("fact", "all", "any", "not"):
            if key in value:
                return key
    return None


Condition = Annotated[
    Union[  # noqa: UP007
        Annotated[Compare, Tag("fact")],
        Annotated[AllOf, Tag("all")],
        Annotated[AnyOf, Tag("any")],
        Annotated[NotOf, Tag("not")],
    ],
    Discriminator(
        _kind,
        custom_error_type="condition",
        custom_error_message="a condition needs one of the keys fact, all, any, not",
    ),
]

AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


def evaluate(cond: Condition, facts: Facts) -> bool:
    """Evaluate a condition over complete facts.

    Raises:
        KeyError: when a fact the condition names is missing from ``facts``.
    """
    if isinstance(cond, Compare):
        return cond.holds(facts[cond.fact])
    if isinstance(cond, AllOf):
        return all(evaluate(c, facts) for c in cond.all)
    if isinstance(cond, AnyOf):
        return any(evaluate(c, facts) for c in cond.any)
    return not evaluate(cond.not_, facts)


def evaluate_partial(cond: Condition, facts: Facts) -> bool | None:
    """Three-valued evaluation over partial facts: True, False, or None (not yet decided)."""
    if isinstance(cond, Compare):
        return cond.holds(facts[cond.fact]) if cond.fact in facts else None
    if isinstance(cond, AllOf):
        undecided = False
        for c in cond.all:
            v = evaluate_partial(c, facts)
            if v is False:
                return False
            undecided |= v is None
        return None if undecided else True
    if isinstance(cond, AnyOf):
        undecided = False
        for c in cond.any:
            v = evaluate_partial(c, facts)
            if v is True:
                return True
            undecided |= v is None
        return None if undecided else False
    inner = evaluate_partial(cond.not_, facts)
    return None if inner is None else not inner


def comparisons(cond: Condition) -> Iterator[Compare]:
    """Every leaf comparison of a condition, depth first."""
    if isinstance(cond, Compare):
        yield cond
    elif isinstance(cond, AllOf):
        for c in cond.all:
            yield from comparisons(c)
    elif isinstance(cond, AnyOf):
        for c in cond.any:
            yield from comparisons(c)
    else:
        yield from comparisons(cond.not_)


def facts_of(cond: Condition) -> set[str]:
    """The names of the facts a condition reads."""
    return {c.fact for c in comparisons(cond)}


def thresholds(cond: Condition) -> dict[str, set[float]]:
    """The numeric constants each fact is compared with (to split numeric domains)."""
    out: dict[str, set[float]] = {}
    for c in comparisons(cond):
        op, arg = c.operator, c.operand
        values: list[Any] = []
        if op in ("lt", "le", "gt", "ge"):
            values = [arg]
        elif op == "between":
            values = list(arg)
        elif op in ("eq", "ne"):
            values = [arg]
        elif op in ("in", "not_in"):
            values = list(arg)
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(c.fact, set()).add(float(v))
    return out


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe(cond: Condition) -> str:
    """A compact human-readable form of a condition."""
    if isinstance(cond, Compare):
        symbol = {
            "eq": "==",
            "ne": "!=",
            "lt": "<",
            "le": "<=",
            "gt": ">",
            "ge": ">=",
            "in": "in",
            "not_in": "not in",
        }
        if cond.operator == "between":
            lo, hi = cond.operand
            return f"{lo:g} <= {cond.fact} <= {hi:g}"
        return f"{cond.fact} {symbol[cond.operator]} {_show(cond.operand)}"
    if isinstance(cond, AllOf):
        return "always" if not cond.all else " and ".join(f"({describe(c)})" for c in cond.all)
    if isinstance(cond, AnyOf):
        return "never" if not cond.any else " or ".join(f"({describe(c)})" for c in cond.any)
    return f"not ({describe(cond.not_)})"
