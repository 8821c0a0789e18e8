"""The report shows each rule's rationale by its first sentence: never cut inside a
parenthesis or after an abbreviation ("(e.g. Volta and Turing)" once ended a line at "(e.g.").

Checked against the shipped rule base (rules/*.yaml): every rationale's first sentence ends
with a full stop and closes every parenthesis it opens.
"""

from __future__ import annotations

import pytest

from advisor.rules.ruleset import load_rules
from advisor.rules.taxonomy import load_taxonomy
from advisor.shell.render.recommend import _first_sentence

RULES = load_rules(technique_ids=set(load_taxonomy().ids()))


def test_an_abbreviation_in_parentheses_does_not_end_the_sentence() -> None:
    text = (
        "On GPUs with fast fp16 but no fast bf16 (e.g. Volta and Turing), fp16 mixed "
        "precision doubles matrix throughput. fp16's narrow exponent range makes small "
        "gradients underflow."
    )
    assert _first_sentence(text) == (
        "On GPUs with fast fp16 but no fast bf16 (e.g. Volta and Turing), fp16 mixed "
        "precision doubles matrix throughput."
    )
    assert _first_sentence("Zhang et al. showed it. Then more.") == "Zhang et al. showed it."
    assert _first_sentence("no full stop at all") == "no full stop at all"


@pytest.mark.parametrize("rule_id", sorted(lr.rule.id for lr in RULES.rules))
def test_every_rules_first_sentence_is_whole(rule_id: str) -> None:
    lr = RULES.get(rule_id)
    assert lr is not None
    first = _first_sentence(" ".join(lr.rule.rationale.split()))
    assert first.endswith("."), first
    assert first.count("(") == first.count(")"), first
    assert not first.endswith(("e.g.", "i.e.", "et al.", "cf.", "vs.")), first
