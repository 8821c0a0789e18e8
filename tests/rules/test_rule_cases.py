"""Rule cases: every shipped rule fires on one YAML scenario and stays silent on another."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from advisor.rules.conditions import Scalar, evaluate
from advisor.rules.engine import decide
from advisor.rules.facts import FactSpace, load_facts
from advisor.rules.ruleset import LocatedRule, RuleSet, load_rules
from advisor.rules.taxonomy import Category, Taxonomy, load_taxonomy
from tests.paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "rule_cases"
_CASE_KEYS = {"rule", "name", "facts", "fires", "expect"}
_VERBS = ("require", "exclude", "prefer", "avoid")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dupes:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {dupes}", node.start_mark
        )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def _load_cases() -> list[tuple[str, dict[str, Scalar], dict[str, Any]]]:
    """Every case of every fixture file, as (file stem, base scenario, case)."""
    out = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        # NOTE: _StrictLoader is a SafeLoader (data only, like advisor.data.yamlio's loader).
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
        assert set(doc) == {"base", "cases"}, f"{path.name}: top-level keys are base and cases"
        for case in doc["cases"]:
            out.append((path.stem, doc["base"], case))
    return out


CASES = _load_cases()


def _case_id(item: tuple[str, dict[str, Scalar], dict[str, Any]]) -> str:
    stem, _, case = item
    return f"{stem}::{case['rule']}::{case['name']}"


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture(scope="module")
def ruleset(taxonomy: Taxonomy) -> RuleSet:
    return load_rules(technique_ids=set(taxonomy.ids()))


@pytest.fixture(scope="module")
def space() -> FactSpace:
    return load_facts()


def _scenario(base: dict[str, Scalar], case: dict[str, Any]) -> dict[str, Scalar]:
    return {**base, **(case.get("facts") or {})}


def _targets(lr: LocatedRule, verb: str) -> set[str]:
    return {t for a in lr.rule.then if a.verb == verb for t in a.techniques}


def test_fixtures_are_well_formed() -> None:
    assert CASES, "no rule cases found"
    ids = [_case_id(c) for c in CASES]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"duplicate case names: {duplicates}"
    for item in CASES:
        case = item[2]
        assert set(case) <= _CASE_KEYS, f"{_case_id(item)}: unknown keys {set(case) - _CASE_KEYS}"
        assert isinstance(case["fires"], bool), _case_id(item)
        if not case["fires"]:
            assert "expect" not in case, f"{_case_id(item)}: expect only applies to firing cases"
        for verb in case.get("expect") or {}:
            assert verb in _VERBS, f"{_case_id(item)}: expect verb {verb!r}"


@pytest.mark.parametrize("item", CASES, ids=_case_id)
def test_rule_case(
    item: tuple[str, dict[str, Scalar], dict[str, Any]], ruleset: RuleSet, space: FactSpace
) -> None:
    _, base, case = item
    scenario = _scenario(base, case)
    assert set(scenario) == set(space.facts), (
        f"scenario must give every declared fact: missing {sorted(set(space.facts) - set(scenario))},"
        f" unknown {sorted(set(scenario) - set(space.facts))}"
    )
    bad = [name for name, value in scenario.items() if not space.facts[name].accepts(value)]
    assert not bad, f"values outside the declared domains: {bad}"
    assert space.satisfies_invariants(scenario), "scenario breaks an invariant of facts.yaml"
    lr = ruleset.get(case["rule"])
    assert lr is not None, f"no shipped rule {case['rule']!r}"
    assert evaluate(lr.rule.when, scenario) is case["fires"]
    for verb, techniques in (case.get("expect") or {}).items():
        missing = set(techniques) - _targets(lr, verb)
        assert not missing, f"{lr.rule.id} does not {verb} {sorted(missing)}"


def test_every_rule_has_a_firing_and_a_silent_case(ruleset: RuleSet) -> None:
    firing = {c["rule"] for _, _, c in CASES if c["fires"]}
    silent = {c["rule"] for _, _, c in CASES if not c["fires"]}
    rule_ids = {lr.rule.id for lr in ruleset.rules}
    assert {c["rule"] for _, _, c in CASES} <= rule_ids, "cases name rules that do not exist"
    covered = firing & silent
    assert len(covered) == len(rule_ids), f"rules without both cases: {sorted(rule_ids - covered)}"


def test_rule_cases_live_next_to_their_rule_file(ruleset: RuleSet) -> None:
    """A case sits in the fixture file named like the rule file it tests."""
    for stem, _, case in CASES:
        lr = ruleset.get(case["rule"])
        assert lr is not None
        assert Path(lr.file).stem == stem, f"{case['rule']} lives in {Path(lr.file).name}"


def test_shipped_rules_load_and_are_numerous(ruleset: RuleSet) -> None:
    assert len(ruleset.rules) >= 40
    files = {Path(lr.file).name for lr in ruleset.rules}
    assert len(files) >= 10, "one file per concern"
    for lr in ruleset.rules:
        assert lr.rule.sources, lr.rule.id
        assert len(lr.rule.rationale.split()) >= 20, f"{lr.rule.id}: rationale too short"


# --- the rule base through the engine, on scenarios that matter -------------------------


def _base() -> dict[str, Scalar]:
    return dict(CASES[0][1])


_CPU: dict[str, Scalar] = {
    "device_kind": "cpu",
    "compute_capability": 0,
    "gpus_per_node": 0,
    "fast_bf16": False,
    "fast_fp16": False,
}


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps", "rocm"])
@pytest.mark.parametrize("arch", ["cnn", "decoder"])
def test_private_training_keeps_a_private_optimizer(
    device: str, arch: str, ruleset: RuleSet, taxonomy: Taxonomy, space: FactSpace
) -> None:
    facts = {**_base(), "privacy": "dp", "arch": arch, "device_kind": device}
    if device != "cuda":
        facts.update(compute_capability=0)
    if device == "cpu":
        facts.update(_CPU)
    assert space.satisfies_invariants(facts)
    decision = decide(ruleset, taxonomy, facts)
    optimizers = [t.id for t in taxonomy.techniques if t.category is Category.OPTIMIZER]
    allowed = {o for o in optimizers if decision.is_allowed(o)}
    assert allowed == {"dp-sgd", "dp-adam", "dp-zo"}
    assert "batchnorm" in decision.excluded
    assert "privacy-accounting" in decision.required
    best = "dp-sgd" if arch == "cnn" else "dp-adam"
    assert decision.scores[best] > 0


def test_avx2_cpu_is_steered_to_fp32(ruleset: RuleSet, taxonomy: Taxonomy) -> None:
    # bf16 GEMM ~58x slower than fp32 on a CPU without avx512_bf16/AMX
    # (benchmarks/results/cpu_efficiency.json, oneDNN held to AVX2).
    decision = decide(ruleset, taxonomy, {**_base(), **_CPU})
    for tid in ("amp-bf16", "bf16-mixed", "bf16", "fp8-mixed", "tf32"):
        assert not decision.is_allowed(tid), tid
    assert decision.is_allowed("fp32")
    assert decision.scores["fp32"] > max(decision.scores.get(t, 0.0) for t in ("amp-fp16", "fp16"))
    assert not decision.is_allowed("mem-efficient-attention")
    assert decision.scores["flash-attention"] > 0


def test_memory_bound_fine_tuning_prefers_zeroth_order_over_adamw(
    ruleset: RuleSet, taxonomy: Taxonomy
) -> None:
    facts = {
        **_base(),
        "first_order_fits": False,
        "full_training_fits": False,
        "memory_headroom": 0.05,
    }
    decision = decide(ruleset, taxonomy, facts)
    assert decision.scores["mezo"] > decision.scores.get("adamw", 0.0)
    pretrain = decide(ruleset, taxonomy, {**facts, "task": "pretrain"})
    assert not pretrain.is_allowed("mezo")  # never for training from scratch
