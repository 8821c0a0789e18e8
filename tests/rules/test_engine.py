"""The rule engine: semantics of hard and soft actions, determinism, order independence."""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.rules.engine import decide, requirement_rules
from advisor.rules.ruleset import load_rules
from advisor.rules.taxonomy import load_taxonomy
from tests.paths import FIXTURES_DIR

FIX = FIXTURES_DIR / "rulesets"
TAX = load_taxonomy(FIX / "ok" / "taxonomy.yaml")

scenarios = st.fixed_dictionaries(
    {
        "device_kind": st.sampled_from(["cpu", "cuda"]),
        "compute_capability": st.sampled_from([0.0, 7.0, 8.0, 8.9, 9.0]),
        "task": st.sampled_from(["pretrain", "finetune"]),
        "memory_headroom": st.floats(0, 100),
        "private": st.booleans(),
    }
)


def load(base: Path, extra: list[Path] | None = None):  # type: ignore[no-untyped-def]
    return load_rules(extra or [], technique_ids=set(TAX.ids()), base_dir=base)


def test_hard_constraints_win_and_preferences_add_up(tmp_path: Path) -> None:
    base = tmp_path / "r"
    shutil.copytree(FIX / "ok", base)
    (base / "more.yaml").write_text(
        """rules:
  - id: also-adamw
    title: Prefer AdamW again
    when: {fact: task, eq: finetune}
    then:
      - prefer: [adamw]
        weight: 1.5
      - avoid: [sgd]
    rationale: Two preferences for the same technique add up in the score.
    sources: [{authors: Kingma & Ba, year: 2015, title: "Adam: A Method for Stochastic Optimization"}]
  - id: no-adamw-when-tight
    title: Exclude AdamW when memory is tight
    when: {fact: memory_headroom, lt: 1}
    then:
      - exclude: [adamw]
    rationale: A hard exclusion beats any preference.
    sources: [{authors: Rajbhandari et al., year: 2020, title: "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"}]
"""
    )
    rs = load(base)
    facts = {
        "device_kind": "cuda",
        "compute_capability": 9.0,
        "task": "finetune",
        "memory_headroom": 0.5,
        "private": False,
    }
    d = decide(rs, TAX, facts)
    assert d.scores["adamw"] == 3.5 and d.scores["sgd"] == -1.0
    assert d.excluded["adamw"] == ["no-adamw-when-tight"] and not d.is_allowed("adamw")
    assert d.fired == sorted(d.fired)
    roomy = decide(rs, TAX, {**facts, "memory_headroom": 2.0})
    assert roomy.is_allowed("adamw")


def test_taxonomy_requirements_become_exclusions() -> None:
    rs = load(FIX / "ok")
    [rule] = [r for r in requirement_rules(TAX) if r.rule.id == "requires-fp8-mixed"]
    on_cpu = decide(
        rs,
        TAX,
        {
            "device_kind": "cpu",
            "compute_capability": 0.0,
            "task": "pretrain",
            "memory_headroom": 2.0,
            "private": False,
        },
    )
    on_ampere = decide(
        rs,
        TAX,
        {
            "device_kind": "cuda",
            "compute_capability": 8.0,
            "task": "pretrain",
            "memory_headroom": 2.0,
            "private": False,
        },
    )
    on_hopper = decide(
        rs,
        TAX,
        {
            "device_kind": "cuda",
            "compute_capability": 9.0,
            "task": "pretrain",
            "memory_headroom": 2.0,
            "private": False,
        },
    )
    assert "fp8-mixed" in on_cpu.excluded and "fp8-mixed" in on_ampere.excluded
    assert "fp8-mixed" not in on_hopper.excluded
    assert "8.9" in rule.rule.rationale


def test_missing_fact_is_an_error() -> None:
    import pytest

    with pytest.raises(KeyError, match="memory_headroom"):
        decide(
            load(FIX / "ok"),
            TAX,
            {"device_kind": "cpu", "compute_capability": 0.0, "task": "pretrain", "private": False},
        )


@settings(max_examples=60, deadline=None)
@given(scenarios)
def test_deterministic(facts: dict[str, object]) -> None:
    rs = load(FIX / "ok")
    assert decide(rs, TAX, facts) == decide(rs, TAX, facts)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(scenarios)
def test_order_of_rule_files_is_irrelevant(tmp_path_factory, facts: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    # The same two rules split across files named so that they load in opposite orders.
    tmp = tmp_path_factory.mktemp("order")
    text = (FIX / "ok" / "optimizers.yaml").read_text()
    head, second = text.split("  - id: groupnorm-when-private")
    second = "rules:\n  - id: groupnorm-when-private" + second
    decisions = []
    for names in (("a.yaml", "b.yaml"), ("b.yaml", "a.yaml")):
        d = tmp / "-".join(names)
        d.mkdir()
        shutil.copy(FIX / "ok" / "facts.yaml", d)
        (d / names[0]).write_text(head)
        (d / names[1]).write_text(second)
        decisions.append(decide(load(d), TAX, facts))  # type: ignore[arg-type]
    assert decisions[0] == decisions[1]


@settings(max_examples=40, deadline=None)
@given(scenarios)
def test_a_rule_that_applies_nowhere_changes_nothing(
    tmp_path_factory, facts: dict[str, object]
) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("never")
    (tmp / "never.yaml").write_text(
        """rules:
  - id: applies-nowhere
    title: A rule whose condition never holds
    when: {any: []}
    then:
      - exclude: [adamw, sgd]
      - advise: never shown
    rationale: Used to show that inert rules change no decision.
    sources: [{authors: Nobody, year: 2020, title: Inert}]
"""
    )
    before = decide(load(FIX / "ok"), TAX, facts)  # type: ignore[arg-type]
    after = decide(load(FIX / "ok", [tmp]), TAX, facts)  # type: ignore[arg-type]
    assert before == after


def test_one_action_naming_two_techniques_of_a_plan_counts_once() -> None:
    # eight-bit-states-when-memory-bound prefers [adamw-8bit, optimizer-states-8bit] with
    # weight 3: an 8-bit AdamW plan has both techniques and used to score +6 (issue 22).
    import yaml

    from tests.paths import FIXTURES_DIR as fx

    tax = load_taxonomy()
    rules = load_rules([], technique_ids=set(tax.ids()))
    cases = yaml.safe_load((fx / "rule_cases" / "memory-savers.yaml").read_text())
    facts = {**cases["base"], "memory_headroom": 0.7, "sharded_memory_headroom": 0.7}
    d = decide(rules, tax, facts)
    assert "eight-bit-states-when-memory-bound" in d.fired
    both = d.score(["adamw-8bit", "optimizer-states-8bit"])
    assert both == d.score(["adamw-8bit"]) == d.score(["optimizer-states-8bit"])
    assert d.score(["adamw-8bit", "optimizer-states-8bit", "adamw"]) == both + d.score(["adamw"])
