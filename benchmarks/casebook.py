"""The casebook: everyday questions against the published recipes that answer them.

Each case of ``benchmarks/data/casebook.yaml`` is one ``optadvise recommend ... --no-calibrate``
(analytic costs from the hardware profile, so deterministic) and the key choices of a
published recipe (optimizer, precision, adapter or full training, layout, kernel, memory
savers), each with its source address. A case passes when

- the pick **agrees** with every key choice (the recipe's choice is the pick's own, or one of
  the equivalent plans folded into the pick's row, which the tool rates the same), or
- the recipe's own plan, priced by the same memory and cost models at its fastest
  micro-batch (what ``optadvise estimate`` computes, as benchmarks/soundness.py prices the
  practitioner plans), fits and is predicted more than 10% slower to the target than the
  pick (**recipe-slower**): the tool disagrees with the recipe for a reason it can show.

A recipe plan that does not fit by the tool's memory model, or that is within 10% of the
pick, leaves the case failed (**disagrees**). Verdict cases check the exit status and the
JSON verdict a script reads. Cases that need another branch's work say so (``depends_on``).

    .venv/bin/python -m benchmarks.casebook              # table, benchmarks/results/casebook.json
    .venv/bin/python -m benchmarks.casebook --only bert  # cases whose id contains "bert"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from advisor.app.recommend import RecommendRequest, cost_function, run_recommend
from advisor.config import Attention, Checkpointing, Offload, Precision, Sharding, Task
from advisor.errors import UserError
from advisor.hardware.profiles import get_hardware_profile
from advisor.hardware.target import target_from_profile
from advisor.model import get_model_profile
from advisor.plan.evaluator import Evaluator
from advisor.plan.models import Recommendation
from advisor.plan.report import ranking_decision
from advisor.plan.space import (
    Context,
    baseline_config,
    derive_facts,
    plan_step_factor,
    resolve_global_batch,
    workload_layouts,
)
from advisor.rules.engine import decide
from advisor.rules.ruleset import load_rules
from advisor.rules.taxonomy import load_taxonomy
from benchmarks.soundness import price

ROOT = Path(__file__).resolve().parent.parent
CASEBOOK = ROOT / "benchmarks" / "data" / "casebook.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "casebook.json"

# The recipe's plan must be predicted this much slower to the target than the pick for the
# tool's disagreement to count as shown (issue 22, "How it is checked").
SLOWER = 1.10
# Fields of a recommendation a case's `expect` may name.
EXPECT_FIELDS = (
    "optimizer",
    "precision",
    "task",
    "sharding",
    "tensor_parallel",
    "pipeline_parallel",
    "expert_parallel",
    "offload",
    "attention",
    "checkpointing",
)
RECIPE_FIELDS = (
    "optimizer",
    "precision",
    "task",
    "sharding",
    "tp",
    "pp",
    "ep",
    "checkpointing",
    "attention",
    "offload",
)
_INT_FLAGS = {"--gpus": "gpus", "--nodes": "nodes", "--global-batch": "global_batch"}
_STR_FLAGS = {
    "--hardware": "hardware",
    "--task": "task",
    "--seq-len": "seq_len",
    "--objective": "objective",
    "--global-batch-tokens": "global_batch_tokens",
}


def load_casebook(path: Path = CASEBOOK) -> list[dict[str, Any]]:
    """The cases, as written."""
    data = yaml.safe_load(path.read_text())
    cases = data["cases"]
    if not isinstance(cases, list):
        raise ValueError(f"{path}: 'cases' must be a list")
    return cases


def _flags(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The model id and RecommendRequest.from_flags keywords of a case's argv."""
    model = ""
    kw: dict[str, Any] = {}
    it = iter(argv)
    for flag in it:
        value = next(it)
        if flag == "--model":
            model = value
        elif flag in _INT_FLAGS:
            kw[_INT_FLAGS[flag]] = int(value)
        elif flag in _STR_FLAGS:
            kw[_STR_FLAGS[flag]] = value
        else:
            raise ValueError(f"casebook argv: unsupported flag {flag}")
    return model, kw


def _context(model: str, kw: dict[str, Any]) -> tuple[Context, Any]:
    """The planning context and cost function `recommend --hardware --no-calibrate` builds."""
    spec = get_model_profile(model)
    req = RecommendRequest.from_flags(spec=spec, calibrate=False, **kw)
    taxonomy = load_taxonomy()
    rules = load_rules([], technique_ids=set(taxonomy.ids()))
    profile = get_hardware_profile(req.hardware or "")
    target = target_from_profile(
        profile, gpus=req.gpus or 1, nodes=req.workload.nodes, memory_budget=None, host=None
    )
    ctx = Context(spec=spec, workload=req.workload, target=target, taxonomy=taxonomy, ruleset=rules)
    ctx = ctx.model_copy(update={"batch": resolve_global_batch(spec, req.workload)})
    return ctx, cost_function(ctx, None, profile)


def _agrees(pick: Recommendation, expect: dict[str, Any]) -> list[str]:
    """The key choices the pick (and the equivalent plans of its row) does not make."""
    misses = []
    also = set(pick.also)
    for field, accepted in expect.items():
        if field == "absent_savers":
            used = sorted(set(accepted) & set(pick.memory_savers))
            if used:
                misses.append(f"uses {', '.join(used)}")
            continue
        value = getattr(pick, field)
        ok = value in accepted or any(str(a) in also or f"{a} attention" in also for a in accepted)
        if not ok:
            misses.append(f"{field} {value} (recipe: {'/'.join(map(str, accepted))})")
    return misses


def _price_recipe(
    ctx: Context, cost: Any, recipe: dict[str, Any], pick: Recommendation
) -> dict[str, Any]:
    """The recipe's plan priced as the search prices plans, against the pick."""
    base = baseline_config(ctx)
    c = base.with_(
        optimizer=recipe.get("optimizer", base.optimizer),
        precision=Precision(recipe.get("precision", base.precision.value)),
        task=Task(recipe.get("task", base.task.value)),
        checkpointing=Checkpointing(recipe.get("checkpointing", "none")),
        offload=Offload(recipe.get("offload", "none")),
    )
    if "attention" in recipe:
        c = c.with_(attention=Attention(recipe["attention"]))
    want = (
        int(recipe.get("tp", 1)),
        int(recipe.get("pp", 1)),
        int(recipe.get("ep", 1)),
        Sharding(recipe.get("sharding", "none")),
    )
    lay = next(
        (
            lay
            for lay in workload_layouts(ctx)
            if (
                lay.parallel.tensor_parallel,
                lay.parallel.pipeline_parallel,
                lay.parallel.expert_parallel,
                lay.parallel.sharding,
            )
            == want
        ),
        None,
    )
    if lay is None:
        return {
            "priced": False,
            "why": f"layout tp{want[0]} pp{want[1]} ep{want[2]} "
            f"{want[3].value} is not one the tool enumerates here",
        }
    optimizers = [t for t in ctx.taxonomy.optimizers() if t.implementation]
    decision = ranking_decision(
        ctx, decide(ctx.ruleset, ctx.taxonomy, derive_facts(ctx, optimizers))
    )  # type: ignore[arg-type]
    ev = Evaluator(ctx, cost)
    p = price(ctx, decision, ev, "recipe", c, lay)
    out: dict[str, Any] = {
        "priced": True,
        "layout": lay.label,
        "fits": p.fits,
        "allowed": p.allowed,
        "exact_batch": p.exact,
    }
    if not p.fits:
        return out
    tokens = pick.global_batch * pick.config.batch.seq_len
    pick_ttt = pick.step_time_s / tokens * plan_step_factor(ctx, pick.config)
    out.update(
        micro_batch=p.config.batch.micro_batch,
        step_time_s=round(p.seconds, 4),
        peak_gib=round(p.peak / 2**30, 2),
        slower_than_pick=round(p.time_to_target / pick_ttt, 4),
    )
    return out


def _describe(pick: Recommendation) -> str:
    return (
        f"{pick.task} {pick.optimizer} {pick.precision} {pick.attention} | {pick.layout} | "
        + ",".join(s for s in pick.memory_savers if s not in ("gradient-accumulation",))
    )


def run_pick_case(case: dict[str, Any]) -> dict[str, Any]:
    """One pick case: recommend, agreement with the recipe, and the recipe's plan priced."""
    model, kw = _flags(case["argv"])
    row: dict[str, Any] = {"id": case["id"], "kind": "pick"}
    try:
        spec = get_model_profile(model)
        report = run_recommend(RecommendRequest.from_flags(spec=spec, calibrate=False, top=5, **kw))
    except (UserError, ValueError, ZeroDivisionError) as e:
        row.update(status="error", detail=f"{type(e).__name__}: {e}")
        return row
    if not report.recommendations:
        row.update(status="disagrees", detail="nothing fits")
        return row
    pick = report.recommendations[0]
    row["pick"] = _describe(pick)
    row["trade"] = report.trade
    misses = _agrees(pick, case.get("expect", {}))
    row["misses"] = misses
    if not misses:
        row.update(status="agrees", detail="pick makes the recipe's key choices")
        return row
    recipe = case.get("recipe")
    if recipe is None:
        row.update(status="disagrees", detail="; ".join(misses))
        return row
    ctx, cost = _context(model, kw)
    priced = _price_recipe(ctx, cost, recipe, pick)
    row["recipe"] = priced
    slower = priced.get("slower_than_pick")
    if slower is not None and slower > SLOWER and priced.get("exact_batch", True):
        row.update(
            status="recipe-slower",
            detail=f"recipe's plan predicted {slower:.2f}x the pick's time to target; "
            + "; ".join(misses),
        )
    elif not priced.get("priced"):
        row.update(status="disagrees", detail=f"{'; '.join(misses)}; {priced['why']}")
    elif not priced.get("fits"):
        row.update(
            status="disagrees",
            detail=f"{'; '.join(misses)}; the recipe's plan does not fit by the tool's "
            "memory model",
        )
    else:
        row.update(
            status="disagrees",
            detail=f"{'; '.join(misses)}; recipe's plan only {slower:.2f}x the pick's time",
        )
    return row


def run_verdict_case(case: dict[str, Any]) -> dict[str, Any]:
    """One verdict case: the exit status and JSON verdict a script reads."""
    argv = [sys.executable, "-m", "advisor", "recommend", *case["argv"], "--no-calibrate", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    row: dict[str, Any] = {"id": case["id"], "kind": "verdict", "exit": p.returncode}
    misses = []
    if p.returncode != case["expect_exit"]:
        misses.append(f"exit {p.returncode} (expected {case['expect_exit']})")
    try:
        data = json.loads(p.stdout)
    except json.JSONDecodeError:
        data = {}
        misses.append("stdout is not JSON")
    for key, want in case.get("expect_json", {}).items():
        if data.get(key) != want:
            misses.append(f"{key} {data.get(key)!r} (expected {want!r})")
    row["pick"] = f"exit {p.returncode}, fits {data.get('fits')}, verdict {data.get('verdict')}"
    row["misses"] = misses
    row.update(status="agrees" if not misses else "disagrees", detail="; ".join(misses) or "ok")
    return row


def run(only: str | None = None) -> dict[str, Any]:
    """Every case (or those whose id contains ``only``), with the pass count."""
    rows = []
    for case in load_casebook():
        if only and only not in case["id"]:
            continue
        t0 = time.perf_counter()
        kind = case.get("kind", "pick")
        row = run_verdict_case(case) if kind == "verdict" else run_pick_case(case)
        row["question"] = case["question"]
        row["source"] = case["source"]["url"]
        row["depends_on"] = case.get("depends_on", "")
        row["passed"] = row["status"] in ("agrees", "recipe-slower")
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    passed = sum(r["passed"] for r in rows)
    return {"passed": passed, "total": len(rows), "slower_threshold": SLOWER, "cases": rows}


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'case':34} {'status':14} pick / detail"]
    for r in result["cases"]:
        lines.append(f"{r['id']:34} {r['status']:14} {r.get('pick', '')}")
        if not r["passed"] or r["status"] == "recipe-slower":
            dep = f" [needs {r['depends_on']}]" if r["depends_on"] and not r["passed"] else ""
            lines.append(f"{'':49} {r['detail']}{dep}")
    lines.append(f"passed {result['passed']} of {result['total']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="run only the cases whose id contains this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.only)
    print(_table(result))
    if not args.only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
