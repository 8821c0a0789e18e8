"""Branch and bound in the plan search changes no shown row.

Every ladder the search walks yields plans scoring no better than its coarse bound
(``PlanSearch.bound``), its best plan is not cut by the per-rung bounds (``PlanSearch.fine_cut``),
and a search that cuts ladders and layouts by its bounds shows the same rows as one that
walks every ladder (``cutoff=None``). A row's ``also`` may name fewer equivalent plans: a
plan that ties a shown row in time and memory but ranks below it on rules or steps to
target may sit in a cut ladder (the report says so in a note). The scenarios span the
objectives the bound applies to, offload levels, pipelines, adapters, per-layer updates, a
pinned micro-batch, small models whose fastest rung is the fused loss, and a mixture of
experts.
"""

from __future__ import annotations

from typing import Any

import pytest

from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.model import get_model_profile, resolve_model_size
from advisor.plan import search
from advisor.plan.models import RecommendReport
from advisor.plan.space import objective_score, plan_step_factor

SCENARIOS: dict[str, dict[str, Any]] = {
    "70b-pretrain-4x8-h100": dict(
        spec="70B", task="pretrain", hardware="h100-sxm-80gb", gpus=8, nodes=4
    ),
    "70b-pretrain-2x8-h100-speed": dict(
        spec="70B", task="pretrain", hardware="h100-sxm-80gb", gpus=8, nodes=2, objective="speed"
    ),
    "13b-finetune-8-a100": dict(spec="13B", task="finetune", hardware="a100-sxm-80gb", gpus=8),
    "7b-pretrain-4090": dict(spec="7B", task="pretrain", hardware="rtx-4090"),
    "13b-finetune-v100-offload": dict(
        spec="13B", task="finetune", hardware="v100-32gb", host_memory="768GiB"
    ),
    "13b-finetune-v100-offload-micro3": dict(
        spec="13B", task="finetune", hardware="v100-32gb", host_memory="768GiB", micro_batch=3
    ),
    "7b-lora-a100-time-to-target": dict(
        spec="7B", task="lora", hardware="a100-sxm-80gb", objective="time-to-target"
    ),
    "gpt2-pretrain-a100-micro12": dict(
        spec="gpt2", task="pretrain", hardware="a100-sxm-80gb", micro_batch=12
    ),
    "8b-pretrain-8-h100-fused-seq8192": dict(
        spec="llama-3.1-8b",
        task="pretrain",
        hardware="h100-sxm-80gb",
        gpus=8,
        stack="fused",
        seq_len="8192",
    ),
    # Small models with large vocabularies, where the fused loss is the fastest rung (it
    # moves fewer logit bytes): the bounds once took the bare rung as the fastest.
    "gpt2-pretrain-2-h100-speed": dict(
        spec="gpt2", task="pretrain", hardware="h100-sxm-80gb", gpus=2, objective="speed"
    ),
    "qwen2.5-0.5b-pretrain-8-h100-time-to-target": dict(
        spec="qwen2.5-0.5b",
        task="pretrain",
        hardware="h100-sxm-80gb",
        gpus=8,
        objective="time-to-target",
    ),
    "125m-pretrain-2-l4-speed": dict(
        spec="125M", task="pretrain", hardware="l4", gpus=2, objective="speed"
    ),
    # Mixture of experts: expert-parallel layouts, their overlap modes, the optimizer
    # offloaded after a device plan fits (tests/plan/test_offload_after_fit.py).
    "qwen3-30b-a3b-pretrain-8-h100-speed": dict(
        spec="qwen3-30b-a3b", task="pretrain", hardware="h100-sxm-80gb", gpus=8, objective="speed"
    ),
    "405b-pretrain-16x8-h100": dict(
        spec="llama-3.1-405b", task="pretrain", hardware="h100-sxm-80gb", gpus=8, nodes=16
    ),
}


def _request(flags: dict[str, Any]) -> RecommendRequest:
    flags = dict(flags)
    name = flags.pop("spec")
    spec = get_model_profile(name) if not name[0].isdigit() else resolve_model_size(name)
    return RecommendRequest.from_flags(spec=spec, calibrate=False, **flags)


def _rows(report: RecommendReport) -> list[tuple[Any, ...]]:
    return [
        (r.config, r.layout, r.global_batch, round(r.score, 9), r.peak_memory_bytes)
        for r in report.recommendations
    ]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_cut_search_shows_the_rows_of_the_full_one(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    req = _request(SCENARIOS[name])
    cut = run_recommend(req)
    searches: list[search.PlanSearch] = []
    walked: list[tuple[Any, Any, bool, list[search.Plan]]] = []
    init, ladder_for, run_search = (
        search.PlanSearch.__init__,
        search.PlanSearch.ladder_for,
        search.search,
    )

    def keep(self: search.PlanSearch, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        searches.append(self)

    def record(self: search.PlanSearch, core: Any, layout: Any, *, screen: bool = False) -> Any:
        plans = ladder_for(self, core, layout, screen=screen)
        walked.append((core, layout, screen, list(plans)))  # the caller extends it
        return plans

    def uncut(*args: Any, **kwargs: Any) -> search.SearchResult:
        kwargs["cutoff"] = None
        return run_search(*args, **kwargs)

    monkeypatch.setattr(search.PlanSearch, "__init__", keep)
    monkeypatch.setattr(search.PlanSearch, "ladder_for", record)
    monkeypatch.setattr("advisor.plan.report.search", uncut)
    full = run_recommend(req)
    assert _rows(cut) == _rows(full)
    assert cut.recommendations, name

    s = searches[-1]
    ctx = s.ctx
    bounded = 0
    for core, layout, screen, plans in walked:
        bound = s.bound(core, layout, screen=screen)
        if bound == float("-inf") or not plans:
            continue
        bounded += 1
        for steps in (True, False):
            scores = [
                objective_score(
                    ctx.workload.objective,
                    p.seconds_per_token,
                    p.peak_bytes,
                    s.ev.usable,
                    p.rule_score,
                    plan_step_factor(ctx, p.config) if steps else 1.0,
                )
                for p in plans
            ]
            best = min(scores)
            # The coarse bound is below every plan; some rung's own bound is below the best.
            assert best >= s.bound(core, layout, steps=steps, screen=screen) - 1e-9, (
                name,
                layout.label,
            )
            assert not s.fine_cut(core, layout, best + 1e-9, steps=steps, screen=screen), (
                name,
                layout.label,
            )
    assert bounded > 0, name
