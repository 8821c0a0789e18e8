"""`recommend`'s verdicts a script can read: every JSON field described in the schema, an
explicit verdict and exit status when nothing fits, the rejected list behind a flag."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from advisor.errors import EXIT_NOTHING_FITS, EXIT_OK, EXIT_USAGE
from advisor.plan.space import BALANCED_MEMORY_TRADE, Objective, objective_score
from advisor.shell.cli import app
from tests.paths import ROOT_DIR

runner = CliRunner()
README = ROOT_DIR / "README.md"
# 70B on a 4 GB budget with 8 GB of host RAM and no NVMe: not even QLoRA's 4-bit base fits.
NOTHING_FITS = [
    "recommend", "--model-size", "70B", "--hardware", "rtx-4090", "--memory-budget", "4GB",
    "--host-memory", "8GB", "--nvme", "0", "--no-calibrate",
]  # fmt: skip
FITS = ["recommend", "--model-size", "1B", "--hardware", "rtx-4090", "--no-calibrate"]


def _properties(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for name, model in [("RecommendReport", schema), *schema.get("$defs", {}).items()]:
        for prop, body in model.get("properties", {}).items():
            out.append((name, prop, body))
    return out


def test_every_field_of_the_recommend_schema_is_described() -> None:
    result = runner.invoke(app, ["recommend", "--schema"])
    assert result.exit_code == EXIT_OK, result.output
    props = _properties(json.loads(result.stdout))
    # The report, its rows, rejections, summaries, the training configuration: >100 fields.
    assert len(props) > 100
    bare = [f"{model}.{prop}" for model, prop, body in props if not body.get("description")]
    assert not bare, f"fields without a description: {bare}"


def test_nothing_fits_exits_3_with_an_explicit_verdict(tmp_path: Path) -> None:
    result = runner.invoke(app, [*NOTHING_FITS, "--json"])
    assert result.exit_code == EXIT_NOTHING_FITS == 3, result.output
    assert EXIT_NOTHING_FITS not in (EXIT_USAGE, 1)
    data = json.loads(result.stdout)
    assert data["fits"] is False and data["verdict"] == "nothing-fits"
    assert data["recommendations"] == [] and data["suggestions"]
    # --emit writes nothing and says so; the verdict is the same.
    emitted = runner.invoke(app, [*NOTHING_FITS, "--emit", "deepspeed", "--out", str(tmp_path)])
    assert emitted.exit_code == EXIT_NOTHING_FITS
    assert "Nothing fits" in emitted.stdout and "no deepspeed file written" in emitted.stderr
    assert not list(tmp_path.iterdir())


def test_a_plan_that_fits_exits_0_and_says_so() -> None:
    result = runner.invoke(app, [*FITS, "--json"])
    assert result.exit_code == EXIT_OK, result.output
    data = json.loads(result.stdout)
    assert data["fits"] is True and data["verdict"] == "ok" and data["recommendations"]


def test_the_rejected_list_is_behind_a_flag() -> None:
    # The case: Llama-3.1-8B fine-tuned on one RTX 4090, the default top 5.
    case = ["recommend", "--model", "llama-3.1-8b", "--hardware", "rtx-4090", "--no-calibrate"]
    short = runner.invoke(app, [*case, "--json"])
    full = runner.invoke(app, [*case, "--json", "--show-rejected"])
    assert short.exit_code == full.exit_code == EXIT_OK
    small, big = json.loads(short.stdout), json.loads(full.stdout)
    assert small["rejected"] == [] and sum(small["rejected_counts"].values()) > 0
    assert len(big["rejected"]) == sum(big["rejected_counts"].values())
    assert {r["kind"] for r in big["rejected"]} == set(big["rejected_counts"])
    # The rejections were most of the bytes (428 KiB of a top-5 report on main).
    assert len(short.stdout) * 3 < len(full.stdout)


def test_the_readme_documents_the_exit_status_and_the_new_flags() -> None:
    text = README.read_text()
    assert "3 when nothing\nfits" in text or "3 when nothing fits" in text
    help_text = " ".join(runner.invoke(app, ["recommend", "--help"]).stdout.split())
    assert "3 nothing fits" in help_text
    for flag in ("--show-rejected", "--force"):
        assert flag in help_text and flag in text


# --- the balanced objective ------------------------------------------------------------


@given(
    slower=st.floats(min_value=1.105, max_value=100.0),
    lean=st.floats(min_value=0.0, max_value=1.0),
    full=st.floats(min_value=0.0, max_value=1.0),
    rules=st.floats(min_value=-20, max_value=20),
)
def test_balanced_gives_up_at_most_ten_percent_for_memory(
    slower: float, lean: float, full: float, rules: float
) -> None:
    # Two plans that fit with the same rules: the one more than ~10% faster to the target
    # ranks first, whatever memory each leaves (log(1.10) = 0.0953 < log(1.105)).
    usable = 10**10
    fast = objective_score(Objective.BALANCED, 1.0, int(full * usable), usable, rules)
    slow = objective_score(Objective.BALANCED, slower, int(lean * usable), usable, rules)
    assert fast < slow
    assert math.isclose(BALANCED_MEMORY_TRADE, math.log(1.10))


def test_balanced_rule_points_break_ties_but_not_large_speed_differences() -> None:
    usable = 10**10
    # +3 (one typical rule) against 5% of speed: the preferred plan wins the near-tie ...
    a = objective_score(Objective.BALANCED, 1.05, usable // 2, usable, 3.0)
    b = objective_score(Objective.BALANCED, 1.00, usable // 2, usable, 0.0)
    assert a < b
    # ... but +4 of preferences never outweighs a 1.6x speed-up (the 4090 case).
    c = objective_score(Objective.BALANCED, 1.6, usable // 2, usable, 14.0)
    d = objective_score(Objective.BALANCED, 1.0, usable // 2, usable, 10.0)
    assert d < c


def test_only_quality_rules_weigh_more_under_balanced() -> None:
    from advisor.plan.space import QUALITY_RULE_FACTOR
    from advisor.rules.engine import decide
    from advisor.rules.ruleset import load_rules
    from advisor.rules.taxonomy import load_taxonomy

    tax = load_taxonomy()
    rules = load_rules([], technique_ids=set(tax.ids()))
    facts = {
        "task": "finetune", "full_training_fits": True, "objective": "balanced",
        "mixed_precision_fits_on_device": True,
        "arch": "decoder", "data_parallel_degree": 1, "memory_headroom": 0.5,
        "device_kind": "cuda", "privacy": "none", "host_memory_gib": 128.0,
    }  # fmt: skip
    declared = rules.facts.facts
    base = {k: v for k, v in facts.items() if k in declared}
    for name, fact in declared.items():
        if name not in base:
            base[name] = _neutral(fact)
    d = decide(rules, tax, base)
    w = d.weighted(QUALITY_RULE_FACTOR["balanced"])
    # full-fine-tuning-when-it-fits is marked quality: its avoid of LoRA (-5) counts x3.
    assert d.quality["lora"] == -5 and w.scores["lora"] == d.scores["lora"] - 10
    # A cost heuristic (bf16 mixed precision, a speed and memory matter) keeps its weight.
    assert all(w.scores[t] == d.scores[t] for t in d.scores if t not in d.quality)


def _neutral(fact: Any) -> Any:
    kind = str(getattr(fact.type, "value", fact.type))
    if kind == "bool":
        return False
    if kind in ("int", "number"):
        return 1
    return (fact.values or [""])[0]


def test_the_trade_line_names_the_quality_rule_that_outweighs_speed() -> None:
    from advisor.app.recommend import RecommendRequest, run_recommend
    from advisor.model import get_model_profile

    # A 1B model fine-tunes in mixed precision in a 3090's own memory: LoRA is faster by
    # the tool's own numbers, and the pick trades that speed for full fine-tuning's quality.
    request = RecommendRequest.from_flags(
        spec=get_model_profile("llama-3.2-1b"), hardware="rtx-3090", calibrate=False
    )
    r = run_recommend(request)
    assert r.recommendations[0].task == "finetune"
    assert r.trade.split("x faster")[0].replace(".", "").isdigit()
    assert "qlora" in r.trade or "lora" in r.trade
    assert "preferred for quality (full-fine-tuning-when-it-fits" in r.trade


def test_an_8b_fine_tune_on_one_4090_is_an_adapter_not_full_training_offloaded() -> None:
    """Full fine-tuning of 8B parameters fits a 24 GB card only with its parameters and
    optimizer states offloaded to the host: the quality rule does not apply there, and the
    faster adapter plan wins (issue 22: the casebook's consumer-GPU recipes)."""
    from advisor.app.recommend import RecommendRequest, run_recommend
    from advisor.model import get_model_profile

    request = RecommendRequest.from_flags(
        spec=get_model_profile("llama-3.1-8b"), hardware="rtx-4090", calibrate=False
    )
    top = run_recommend(request).recommendations[0]
    assert top.task in ("lora", "qlora") and top.offload == "none"
