"""The rule engine: facts in, a decision out (constraints, scores, advice). Pure, deterministic.

Conflict semantics:

1. Hard constraints beat preferences. A technique that any fired rule excludes is excluded,
   whatever weight other rules prefer it with; ``require`` forces a technique into every
   candidate (for one-of categories such as the optimizer, it forces that choice).
2. A technique both required and excluded in one scenario is a defect of the rule base;
   ``optadvise rules check`` proves the shipped rules free of it. If an unchecked user rule
   set still produces one at run time, exclusion wins (the safe side) and the conflict is
   reported in ``Decision.conflicts``.
3. Preferences add up: a technique's score is the sum of the weights of the fired rules that
   prefer it minus those that avoid it. A plan's score counts each fired ``prefer``/``avoid``
   action once, however many of the techniques it names the plan has (``prefer: [adamw-8bit,
   optimizer-states-8bit]`` is one +3 for an 8-bit AdamW plan, not +3 per name).
4. Rules are evaluated in id order and every output is sorted, so the decision depends on
   the facts and the rule set only, never on file order.

The taxonomy's hardware requirements (device kinds, minimum compute capability, minimum GPU
count) take part as synthetic exclusion rules named ``requires-<technique>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from advisor.rules.conditions import AllOf, AnyOf, Compare, Condition, Scalar, evaluate
from advisor.rules.ruleset import Action, LocatedRule, Rule, RuleSet, Source
from advisor.rules.taxonomy import Taxonomy, Technique


class Advice(BaseModel):
    """Text a fired rule attaches to the recommendation."""

    model_config = ConfigDict(frozen=True)

    rule: str
    text: str


class Decision(BaseModel):
    """What the rules conclude for one scenario."""

    model_config = ConfigDict(frozen=True)

    fired: list[str]
    required: dict[str, list[str]]
    excluded: dict[str, list[str]]
    scores: dict[str, float]
    contributions: dict[str, list[tuple[str, float]]]
    advice: list[Advice]
    conflicts: list[str]
    # The part of each technique's score that rules marked ``quality`` contribute.
    quality: dict[str, float] = {}
    # Each fired prefer/avoid action ("rule-id#index") with its rule's own weight, and per
    # technique the actions that name it: a plan scores each action once. The ranking
    # multiplies quality rules' actions by ``quality_factor`` (:meth:`weighted`).
    action_weights: dict[str, float] = {}
    actions_of: dict[str, list[str]] = {}
    quality_actions: list[str] = []
    quality_factor: float = 1.0

    def weighted(self, factor: float) -> Decision:
        """The decision with quality rules' weights multiplied by ``factor`` in the scores
        the ranking reads (contributions keep the rules' own weights, for explanations)."""
        if factor == 1.0 or not self.quality:
            return self
        scores = dict(self.scores)
        for tid, q in self.quality.items():
            scores[tid] = scores.get(tid, 0.0) + (factor - 1.0) * q
        return self.model_copy(
            update={"scores": scores, "quality_factor": self.quality_factor * factor}
        )

    def is_allowed(self, technique: str) -> bool:
        return technique not in self.excluded

    def actions(self, techniques: Sequence[str]) -> set[str]:
        """The fired prefer/avoid actions that name any of ``techniques``."""
        return {key for t in techniques for key in self.actions_of.get(t, ())}

    def score(self, techniques: Sequence[str]) -> float:
        """A candidate's rule score: the weight of every fired prefer/avoid action that names
        one of its techniques, each action counted once."""
        quality = set(self.quality_actions)
        return sum(
            self.action_weights[k] * (self.quality_factor if k in quality else 1.0)
            for k in sorted(self.actions(techniques))
        )


def requirement_condition(tech: Technique) -> Condition | None:
    """The condition under which the hardware cannot run ``tech`` (None: it always can)."""
    req = tech.requires
    failures: list[Condition] = []
    kinds = [str(getattr(k, "value", k)) for k in req.device_kinds]
    if kinds:
        failures.append(Compare.model_validate({"fact": "device_kind", "not_in": kinds}))
    if req.min_compute_capability is not None:
        # NOTE: a minimum compute capability restricts CUDA devices only; other device kinds
        # are restricted through device_kinds (flash SDPA runs on CPU, for one).
        failures.append(
            AllOf(
                all=[
                    Compare(fact="device_kind", eq="cuda"),
                    Compare(fact="compute_capability", lt=req.min_compute_capability),
                ]
            )
        )
    if req.min_gpus is not None and req.min_gpus > 1:
        # NOTE: the advisor plans data parallelism over every device, so the world size and
        # the data-parallel degree are the same number here.
        failures.append(Compare(fact="data_parallel_degree", lt=float(req.min_gpus)))
    if not failures:
        return None
    return failures[0] if len(failures) == 1 else AnyOf(any=failures)


def requirement_rules(taxonomy: Taxonomy) -> list[LocatedRule]:
    """The taxonomy's hardware requirements as synthetic exclusion rules."""
    out = []
    for tech in sorted(taxonomy.techniques, key=lambda t: t.id):
        cond = requirement_condition(tech)
        if cond is None:
            continue
        refs = [
            Source(authors=r.authors, year=r.year, title=r.title, url=getattr(r, "url", None))
            for r in tech.references
        ]
        rule = Rule(
            id=f"requires-{tech.id}",
            title=f"{tech.name} needs hardware this scenario lacks",
            when=cond,
            then=[Action(exclude=[tech.id])],
            rationale=f"From the taxonomy: {tech.name} requires {_describe_requirements(tech)}.",
            sources=refs,
        )
        out.append(LocatedRule(rule=rule, file="rules/taxonomy.yaml", line=0))
    return out


def _describe_requirements(tech: Technique) -> str:
    req = tech.requires
    parts = []
    if req.device_kinds:
        parts.append(
            "a " + " or ".join(str(getattr(k, "value", k)) for k in req.device_kinds) + " device"
        )
    if req.min_compute_capability is not None:
        parts.append(f"compute capability >= {req.min_compute_capability:g} on CUDA")
    if req.min_gpus is not None and req.min_gpus > 1:
        parts.append(f"at least {req.min_gpus} devices")
    return ", ".join(parts) or "nothing"


def all_rules(ruleset: RuleSet, taxonomy: Taxonomy) -> list[LocatedRule]:
    """The rule set's rules plus the taxonomy's requirement rules, sorted by id."""
    return sorted([*ruleset.rules, *requirement_rules(taxonomy)], key=lambda r: r.rule.id)


def decide(ruleset: RuleSet, taxonomy: Taxonomy, facts: Mapping[str, Scalar]) -> Decision:
    """Apply every rule to the facts.

    Args:
        ruleset: the loaded rules.
        taxonomy: the techniques (their hardware requirements become exclusions).
        facts: a value for every declared fact.

    Returns:
        The decision: fired rules, hard constraints with the rules behind them, scores, advice.

    Raises:
        KeyError: when a declared fact has no value.
    """
    missing = sorted(set(ruleset.facts.facts) - set(facts))
    if missing:
        raise KeyError(f"facts without a value: {', '.join(missing)}")
    fired: list[str] = []
    required: dict[str, list[str]] = {}
    excluded: dict[str, list[str]] = {}
    contributions: dict[str, list[tuple[str, float]]] = {}
    advice: list[Advice] = []
    quality: dict[str, float] = {}
    action_weights: dict[str, float] = {}
    actions_of: dict[str, list[str]] = {}
    quality_actions: list[str] = []
    for lr in all_rules(ruleset, taxonomy):
        rule = lr.rule
        if not evaluate(rule.when, facts):
            continue
        fired.append(rule.id)
        for index, action in enumerate(rule.then):
            verb = action.verb
            key = f"{rule.id}#{index}"
            if verb in ("prefer", "avoid") and action.techniques:
                action_weights[key] = action.score
                if rule.quality:
                    quality_actions.append(key)
            if verb == "advise" and action.advise:
                advice.append(Advice(rule=rule.id, text=action.advise.strip()))
            for tid in action.techniques:
                if verb == "require":
                    required.setdefault(tid, []).append(rule.id)
                elif verb == "exclude":
                    excluded.setdefault(tid, []).append(rule.id)
                else:
                    contributions.setdefault(tid, []).append((rule.id, action.score))
                    actions_of.setdefault(tid, []).append(key)
                    if rule.quality:
                        quality[tid] = quality.get(tid, 0.0) + action.score
    conflicts = [
        f"{tid}: required by {', '.join(required[tid])} and excluded by {', '.join(excluded[tid])};"
        " excluded wins"
        for tid in sorted(set(required) & set(excluded))
    ]
    for tid in set(required) & set(excluded):
        del required[tid]
    scores = {tid: sum(w for _, w in parts) for tid, parts in contributions.items()}
    return Decision(
        fired=fired,
        required=dict(sorted(required.items())),
        excluded=dict(sorted(excluded.items())),
        scores=dict(sorted(scores.items())),
        contributions=dict(sorted(contributions.items())),
        advice=advice,
        conflicts=conflicts,
        quality=dict(sorted(quality.items())),
        action_weights=dict(sorted(action_weights.items())),
        actions_of=dict(sorted(actions_of.items())),
        quality_actions=sorted(quality_actions),
    )


__all__ = ["Advice", "Decision", "all_rules", "decide", "requirement_rules"]
