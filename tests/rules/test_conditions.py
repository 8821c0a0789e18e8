"""The condition language: parsing, evaluation, three-valued evaluation, thresholds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from advisor.rules.conditions import (
    Condition,
    describe,
    evaluate,
    evaluate_partial,
    facts_of,
    thresholds,
)

COND = TypeAdapter(Condition)


def parse(raw: object) -> Condition:
    return COND.validate_python(raw)


def test_every_operator() -> None:
    facts = {"n": 8, "task": "lora", "dp": True}
    cases = [
        ("n", "eq", 8, True),
        ("n", "ne", 8, False),
        ("n", "lt", 8, False),
        ("n", "le", 8, True),
        ("n", "gt", 7.5, True),
        ("n", "ge", 9, False),
        ("task", "in", ["lora", "qlora"], True),
        ("task", "not_in", ["lora"], False),
        ("n", "between", [8, 16], True),
        ("dp", "eq", True, True),
    ]
    for fact, op, arg, expected in cases:
        assert evaluate(parse({"fact": fact, op: arg}), facts) is expected, (fact, op, arg)


def test_composition_and_empty_forms() -> None:
    c = parse({"all": [{"fact": "a", "eq": 1}, {"not": {"any": [{"fact": "b", "gt": 2}]}}]})
    assert evaluate(c, {"a": 1, "b": 2}) and not evaluate(c, {"a": 1, "b": 3})
    assert evaluate(parse({"all": []}), {}) is True
    assert evaluate(parse({"any": []}), {}) is False
    assert facts_of(c) == {"a", "b"} and thresholds(c) == {"a": {1.0}, "b": {2.0}}
    assert describe(c) == "(a == 1) and (not ((b > 2)))"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"fact": "a", "eq": 1, "lt": 2}, "exactly one operator"),
        ({"fact": "a"}, "exactly one operator"),
        ({"bogus": 1}, "one of the keys fact, all, any, not"),
        ({"fact": "a", "between": [5, 1]}, "lower bound"),
        ({"fact": "a", "in": []}, "at least 1"),
        ({"fact": "Bad Name", "eq": 1}, "pattern"),
    ],
)
def test_malformed_conditions_are_rejected(raw: object, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse(raw)
    assert words in str(info.value)


def test_partial_evaluation_decides_early() -> None:
    c = parse({"all": [{"fact": "a", "eq": 1}, {"fact": "b", "eq": 2}]})
    assert evaluate_partial(c, {"a": 0}) is False
    assert evaluate_partial(c, {"a": 1}) is None
    d = parse({"any": [{"fact": "a", "eq": 1}, {"fact": "b", "eq": 2}]})
    assert evaluate_partial(d, {"a": 1}) is True
    assert evaluate_partial(parse({"not": {"fact": "a", "eq": 1}}), {}) is None


_leaf = st.builds(lambda f, v: {"fact": f, "ge": v}, st.sampled_from(["x", "y"]), st.integers(0, 4))
_cond = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=8,
)


@given(_cond, st.integers(0, 5), st.integers(0, 5))
def test_partial_evaluation_agrees_with_full_evaluation(raw: object, x: int, y: int) -> None:
    c = parse(raw)
    full = evaluate(c, {"x": x, "y": y})
    for partial in ({}, {"x": x}, {"y": y}, {"x": x, "y": y}):
        v = evaluate_partial(c, partial)
        assert v is None or v == full
    assert evaluate_partial(c, {"x": x, "y": y}) == full
