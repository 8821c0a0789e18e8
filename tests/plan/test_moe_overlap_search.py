"""The plan search weighs the schedules that hide the expert all-to-alls
(advisor/plan/overlap.py): on a layout whose all-to-alls cross nodes (Qwen3-30B-A3B over two
H100 nodes; DeepSeek-V3's report measures cross-node expert parallelism at about 1:1
computation to communication, arXiv:2412.19437, sec. 3.2.1) it picks a schedule that hides
them, each pick runs the schedule it names (Megatron-Core's and DualPipe's requirements), and
opening the choice never makes the fastest plan slower than the search pinned to none."""

from __future__ import annotations

from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.config import MoeOverlap, TrainingConfig
from advisor.cost.expert_overlap import config_overlap_problem
from advisor.model import get_model_profile


def _report(objective: str = "balanced", overlap: str | None = None, top: int = 5):  # type: ignore[no-untyped-def]
    req = RecommendRequest.from_flags(
        spec=get_model_profile("qwen3-30b-a3b"),
        task="pretrain",
        hardware="h100-sxm-80gb",
        gpus=8,
        nodes=2,
        stack="fused",
        objective=objective,
        calibrate=False,
        top=top,
        moe_overlap=overlap,
    )
    return run_recommend(req)


def test_cross_node_expert_parallelism_gets_a_hiding_schedule() -> None:
    report = _report()
    pick = report.recommendations[0]
    assert pick.expert_parallel > 1
    assert pick.moe_overlap in ("a2a-overlap", "dualpipe")
    assert "none +" in (pick.moe_overlap_reason or "")


def test_every_pick_runs_the_schedule_it_names() -> None:
    for rec in _report(top=10).recommendations:
        config = TrainingConfig.model_validate(rec.config.model_dump())
        assert config_overlap_problem(config) is None
        if rec.moe_overlap is not None:
            assert config.layout.moe_overlap is MoeOverlap(rec.moe_overlap)


def test_searching_the_overlap_never_loses_to_none() -> None:
    searched = _report("speed", top=1).recommendations[0]
    pinned = _report("speed", "none", top=1).recommendations[0]
    assert pinned.moe_overlap == "none"
    per_token = searched.step_time_s / (searched.global_batch * searched.config.batch.seq_len)
    plain = pinned.step_time_s / (pinned.global_batch * pinned.config.batch.seq_len)
    assert per_token < plain
