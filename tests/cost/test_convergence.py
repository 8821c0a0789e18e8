"""Time to target: the published step-efficiency data, its interpolation, its checks, and
the ranking that uses it (advisor/cost/convergence.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.config import Task
from advisor.cost.convergence import (
    ConvergenceCache,
    ProxyResult,
    StepsSource,
    objective_steps,
    plan_steps,
    steps_vs_adamw,
    time_to_target_rel,
)
from advisor.model import resolve_model_size
from advisor.plan import RecommendReport
from advisor.rules.checks import DefectKind, check_rules
from advisor.rules.taxonomy import Basis, Category, StateKind, load_taxonomy
from advisor.shell.cli import app
from tests.paths import FIXTURES_DIR

TAX = load_taxonomy()
FIXTURES = FIXTURES_DIR / "rulesets"


def test_every_optimizer_and_adapter_has_sourced_step_data() -> None:
    # Every factor the ranking multiplies by must say where it comes from.
    carriers = [t for t in TAX.techniques if t.steps_vs_adamw is not None]
    wanted = {t.id for t in TAX.optimizers()} | {"lora", "qlora"}
    assert {t.id for t in carriers} == wanted
    points = [p for t in carriers for p in t.steps_vs_adamw.points]  # type: ignore[union-attr]
    assert len(points) >= len(wanted)
    for tech in carriers:
        for p in tech.steps_vs_adamw.points:  # type: ignore[union-attr]
            assert p.sources, tech.id
            assert all(s.where and s.title and s.year for s in p.sources), tech.id
            assert 0 < p.low <= p.central <= p.high, tech.id


def test_adamw_is_the_baseline_at_every_size() -> None:
    for n in (10**6, 125 * 10**6, 7 * 10**9, 10**12):
        r = steps_vs_adamw(TAX.get("adamw"), n)
        assert (r.low, r.central, r.high) == (1.0, 1.0, 1.0)
        assert r.source is StepsSource.BASELINE and not r.extrapolated


def test_optimizers_that_only_compress_adamw_state_are_about_one() -> None:
    # 8-bit Adam, paged 8-bit, Adam-mini and GaLore save memory, not steps (their sources).
    # (Adam-family states only: 8-bit SGD/RMSprop/Adagrad take their base's steps.)
    savers = [
        t
        for t in TAX.optimizers()
        if t.memory is not None
        and "adam" in t.id
        and t.memory.state
        in (StateKind.QUANTIZED_BLOCKWISE, StateKind.BLOCK_MEAN, StateKind.LOW_RANK_PROJECTED)
    ]
    assert {t.id for t in savers} >= {"adamw-8bit", "paged-adamw-8bit", "adam-mini", "galore-adamw"}
    for t in savers:
        assert steps_vs_adamw(t, 10**9).central == pytest.approx(1.0, abs=0.05), t.id


def test_muon_advantage_at_7b_is_smaller_than_at_125m() -> None:
    # Wen et al. 2025: matrix-preconditioned optimizers' speed-up shrinks with model size
    # (1.4x at 0.1B, 1.1x at 1.2B); beyond 1.2B the factor is carried toward 1, flagged.
    small = steps_vs_adamw(TAX.get("muon"), 125_000_000)
    big = steps_vs_adamw(TAX.get("muon"), 7_000_000_000)
    assert small.central < big.central < 1.0
    assert not small.extrapolated and big.extrapolated and "extrapolated" in big.notes
    measured = steps_vs_adamw(TAX.get("muon"), 1_200_000_000)
    assert (big.high - big.low) > (measured.high - measured.low)  # widened, not narrowed


def test_interpolation_is_on_log_parameters_between_measured_points() -> None:
    a, b = TAX.get("muon").steps_vs_adamw.points[:2]  # type: ignore[union-attr]
    mid = int(math.sqrt(a.params * b.params))  # halfway on a log scale
    r = steps_vs_adamw(TAX.get("muon"), mid)
    assert r.central == pytest.approx((a.central + b.central) / 2, abs=1e-3)
    assert not r.extrapolated


def test_flat_trend_keeps_the_value_but_widens_beyond_the_data() -> None:
    # LAMB has no published scale trend: the value is kept, the range widened and flagged.
    last = TAX.get("lamb").steps_vs_adamw.points[-1]  # type: ignore[union-attr]
    r = steps_vs_adamw(TAX.get("lamb"), last.params * 100)
    assert r.central == last.central and r.extrapolated
    assert r.low < last.low and r.high > last.high


def test_zeroth_order_needs_tens_of_times_the_steps() -> None:
    # Malladi et al.'s released runs: 100k MeZO steps vs 1k fine-tuning steps (RoBERTa-large),
    # 20k vs 625 (OPT).
    for n in (350_000_000, 1_300_000_000, 13_000_000_000):
        r = steps_vs_adamw(TAX.get("mezo"), n)
        assert r.low >= 30 and r.central >= 30, n


def test_plan_steps_multiplies_the_adapter_factor_for_lora() -> None:
    full = plan_steps(TAX, "muon", Task.FINETUNE, 7_000_000_000)
    lora = plan_steps(TAX, "muon", Task.LORA, 7_000_000_000)
    adapter = steps_vs_adamw(TAX.get("lora"), 7_000_000_000)
    assert lora.central == pytest.approx(full.central * adapter.central, rel=1e-3)
    assert lora.high == pytest.approx(full.high * adapter.high, rel=1e-3)


def test_time_to_target_rel_is_steps_times_step_time_over_adamw() -> None:
    assert time_to_target_rel(0.7, 1.1, 1.0) == pytest.approx(0.77)
    assert time_to_target_rel(100.0, 0.6, 1.0) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        time_to_target_rel(1.0, 0.0, 1.0)


def test_speed_pays_for_extra_steps_but_credits_no_published_speedup() -> None:
    muon = steps_vs_adamw(TAX.get("muon"), 125_000_000)
    mezo = steps_vs_adamw(TAX.get("mezo"), 1_300_000_000)
    assert objective_steps("speed", muon) == 1.0
    assert objective_steps("time-to-target", muon) == muon.central
    assert objective_steps("speed", mezo) == mezo.central
    assert objective_steps("memory", mezo) == 1.0


def _proxy(unreached: tuple[str, ...] = (), **ratios: float) -> ConvergenceCache:
    return ConvergenceCache(
        fingerprint_key="test",
        device="cpu",
        created_at="2026-11-30T00:00:00+00:00",
        family="decoder-rmsnorm-gated-silu",
        proxy={"hidden": 64},
        proxy_params=200_000,
        corpus="test",
        steps=240,
        batch_tokens=1024,
        target_loss=2.3,
        results=[
            ProxyResult(optimizer=k, status="ok", ratio=v, reached=k not in unreached)
            for k, v in ratios.items()
        ],
        partial=False,
        seconds=1.0,
        budget_s=180.0,
    )


def test_measured_proxy_centres_only_what_nothing_published_centres() -> None:
    proxy = _proxy(sgd=3.0, muon=0.8)
    sgd = steps_vs_adamw(TAX.get("sgd"), 150_000_000, proxy)  # no ratio published
    muon = steps_vs_adamw(TAX.get("muon"), 130_000_000, proxy)  # re-benchmarked
    assert TAX.get("sgd").steps_vs_adamw.points[0].basis is Basis.NO_RATIO_PUBLISHED  # type: ignore[union-attr]
    assert sgd.source is StepsSource.MEASURED_PROXY and sgd.central == 3.0 and sgd.proxy == 3.0
    assert muon.source is StepsSource.PUBLISHED and muon.central == 0.71 and muon.proxy == 0.8
    clamped = steps_vs_adamw(TAX.get("sgd"), 150_000_000, _proxy(sgd=50.0))
    assert clamped.central == clamped.high  # the proxy stays inside the published bounds
    # Not reached: the ratio is a lower bound; a bound below the published centre moves
    # nothing, one above it raises the centre.
    bound = steps_vs_adamw(TAX.get("sgd"), 150_000_000, _proxy(("sgd",), sgd=1.5))
    assert bound.central == 4.0 and bound.proxy_reached is False
    raised = steps_vs_adamw(TAX.get("sgd"), 150_000_000, _proxy(("sgd",), sgd=6.0))
    assert raised.central == 6.0


def test_rules_check_reports_each_step_data_defect() -> None:
    report = check_rules(
        [],
        base_dir=FIXTURES / "steps",
        candidate_ids={"sgd", "adamw", "adamw-8bit", "muon"},
    )
    found = {
        (d.technique, d.message.split(": ", 1)[1].split(":")[0][:20])
        for d in report.defects
        if d.kind is DefectKind.STEP_EFFICIENCY
    }
    techniques = {t for t, _ in found}
    assert techniques == {"sgd", "adamw", "adamw-8bit", "muon", "groupnorm"}, found
    messages = " | ".join(d.message for d in report.defects)
    for phrase in (
        "missing",
        "AdamW is the baseline",
        "saves memory, not steps",
        "only AdamW is the baseline",
        "move away from 1",
        "only optimizers and adapters",
    ):
        assert phrase in messages, phrase


def test_shipped_step_data_passes_rules_check() -> None:
    report = check_rules([])
    assert not [d for d in report.defects if d.kind is DefectKind.STEP_EFFICIENCY]


def test_estimate_json_carries_the_optimizer_factor_at_that_size() -> None:
    out = CliRunner().invoke(
        app,
        [
            *("estimate", "--model-size", "7B", "--optimizer", "muon", "--task", "pretrain"),
            *("--hardware", "h100-sxm-80gb", "--json"),
        ],
    )
    assert out.exit_code == 0, out.output
    steps = json.loads(out.output)["steps_vs_adamw"]
    assert steps["source"] == "published" and steps["extrapolated"] is True
    assert steps["low"] <= steps["central"] <= steps["high"] and steps["central"] < 1


# --- the ranking (scenarios, analytic datasheet costs) ------------------------------------


def rec(size: str, **flags: object) -> RecommendReport:
    # The CLI's defaults (RecommendRequest.from_flags) at micro-batch 1, analytic costs.
    defaults: dict[str, object] = {"micro_batch": 1, "calibrate": False, **flags}
    spec = resolve_model_size(size)
    return run_recommend(RecommendRequest.from_flags(spec=spec, **defaults))  # type: ignore[arg-type]


def test_124m_pretraining_on_h100_puts_a_faster_converging_optimizer_first() -> None:
    # At 124M the tuned re-benchmarks put matrix-preconditioned optimizers at ~0.71x AdamW's
    # steps (Wen et al. 2025); their steps cost about the same on an H100, so the time to
    # target of the first pick must beat AdamW's.
    r = rec(
        "125M",
        task="pretrain",
        hardware="h100-sxm-80gb",
        objective="time-to-target",
        seq_len="1024",
        micro_batch=32,
        global_batch=512,
        top=10,
    )
    first = r.recommendations[0]
    assert first.optimizer != "adamw"
    assert first.steps_vs_adamw is not None and first.steps_vs_adamw.central < 1
    assert first.time_to_target_rel is not None and first.time_to_target_rel < 1
    adamw = [x for x in r.recommendations if x.optimizer == "adamw"]
    assert all(x.rank > first.rank for x in adamw)


@pytest.mark.parametrize(
    ("size", "hardware", "objective"),
    [
        ("125M", "a100-sxm-80gb", "balanced"),
        ("125M", "a100-sxm-80gb", "quality"),
        ("125M", "a100-sxm-80gb", "time-to-target"),
        ("125M", "a100-sxm-80gb", "speed"),
        ("7B", "l4", "balanced"),
    ],
)
def test_mezo_never_outranks_a_first_order_plan_that_fits(
    objective: str, size: str, hardware: str
) -> None:
    # MeZO's shorter step buys 30-100x more steps (Malladi et al. 2023): with the rule that
    # used to exclude it gone, time to target alone must keep every zeroth-order plan below
    # the same layout with AdamW, and off the top of the ranking.
    r = rec(size, hardware=hardware, objective=objective, top=100_000)
    assert r.recommendations[0].order != "zeroth"
    # Rows are distinct plans, each at its own best batch geometry: the twin is the best
    # AdamW row (shown or folded into "also") of the same task and layout.
    adamw_rank: dict[tuple[str, str], int] = {}
    for x in r.recommendations:
        if x.optimizer == "adamw" or "adamw" in x.also:
            adamw_rank.setdefault((x.task, x.layout), x.rank)
    zeroth = [x for x in r.recommendations if x.order == "zeroth"]
    assert zeroth, "MeZO fits in these scenarios (inference memory)"
    compared = 0
    for z in zeroth:
        twin = adamw_rank.get((z.task, z.layout))
        if twin is not None:
            compared += 1
            assert twin < z.rank, (z.optimizer, z.layout)
    assert compared > 0


def test_recommendation_json_carries_time_to_target() -> None:
    r = rec("1.3B", hardware="a100-sxm-80gb", objective="time-to-target", top=3)
    d = json.loads(r.model_dump_json())["recommendations"][0]
    assert set(d["steps_vs_adamw"]) == {"low", "central", "high"}
    assert d["steps_source"] in ("published", "measured-proxy", "baseline")
    assert d["time_to_target_rel"] > 0


def test_no_category_but_optimizers_and_adapters_carries_steps() -> None:
    for t in TAX.techniques:
        if t.steps_vs_adamw is not None:
            assert t.category is Category.OPTIMIZER or t.id in ("lora", "qlora")


# --- the measured proxy ---------------------------------------------------------------------


@pytest.mark.slow
def test_proxy_adamw_beats_plain_sgd_on_a_transformer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The literature's ordering (Zhao et al. 2024, Kunstner et al. 2023): SGD without
    # momentum trails Adam on transformers. Two short runs of the proxy must agree.
    from advisor.calibration.convergence import load_convergence, run_convergence

    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path))
    spec = resolve_model_size("125M")
    cache = run_convergence(spec, optimizers=("adamw", "sgd"), lrs=1, steps=100, budget_s=600)
    adamw, sgd = cache.result("adamw"), cache.result("sgd")
    assert adamw is not None and sgd is not None and cache.target_loss is not None
    sgd_final = sgd.runs[0].final_loss
    assert sgd_final is not None and sgd_final > cache.target_loss
    assert not sgd.reached and sgd.ratio is not None and sgd.ratio >= 1.0
    assert adamw.reached and adamw.ratio == 1.0
    # The corpus has structure: AdamW gets well below the uniform loss ln(512) = 6.24.
    assert cache.target_loss < 0.7 * math.log(512)
    loaded, warning = load_convergence("cpu", spec)
    assert warning is None and loaded == cache
    # recommend shows it beside the published range, labelled measured-proxy where nothing
    # is published (SGD) and as an extra figure where something is (AdamW's baseline).
    r = steps_vs_adamw(TAX.get("sgd"), 150_000_000, loaded)
    assert r.source is StepsSource.MEASURED_PROXY and r.proxy == sgd.ratio


def test_corpus_is_structured_not_uniform() -> None:
    from advisor.calibration.convergence import VOCAB, synthetic_corpus
    from advisor.torchload import import_torch

    torch = import_torch()
    tokens = synthetic_corpus(torch, sequences=256)
    counts = torch.bincount(tokens.flatten(), minlength=VOCAB).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    assert entropy < 0.9 * math.log(VOCAB)  # Zipfian unigrams, not uniform
    # Bigram structure: a token's successors concentrate on a few ids.
    first = tokens[:, :-1].flatten()
    nxt = tokens[:, 1:].flatten()
    common = int(torch.mode(first).values)
    succ = torch.bincount(nxt[first == common], minlength=VOCAB)
    assert succ.topk(8).values.sum() > 0.6 * succ.sum()


def test_interrupt_keeps_partial_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import advisor.calibration.convergence as conv

    monkeypatch.setenv("OPTADVISE_CACHE_DIR", str(tmp_path))
    calls = {"n": 0}
    real = conv.train_proxy

    def interrupt_second(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(conv, "train_proxy", interrupt_second)
    spec = resolve_model_size("125M")
    with pytest.raises(KeyboardInterrupt):
        conv.run_convergence(spec, optimizers=("adamw", "sgd"), lrs=1, steps=10, budget_s=600)
    saved, _ = conv.load_convergence("cpu", spec)
    assert saved is not None and saved.partial
    assert saved.result("adamw") is not None and saved.result("adamw").runs  # type: ignore[union-attr]
    assert saved.result("sgd").status == "skipped"  # type: ignore[union-attr]


# --- the held-out check against public curves -------------------------------------------------


def test_public_curves_are_pinned_and_covered_by_the_ranges() -> None:
    # modded-nanogpt's logs did not set any range (the central values come from Wen et al.
    # 2025): every ratio recomputed from them must fall inside the tool's 124M range.
    from benchmarks.convergence_coverage import DATA, coverage

    data = json.loads(DATA.read_text())
    assert len(data["commit"]) == 40
    assert all(data["commit"] in r["log"] for r in data["runs"])
    result = coverage(data)
    assert result.total >= 5
    assert {o.optimizer for o in result.observations} >= {"muon", "soap", "shampoo"}
    assert result.inside == result.total, [o for o in result.observations if not o.inside]
    # Every faster optimizer needs fewer steps than AdamW in these logs.
    assert all(o.ratio < 1 for o in result.observations)


def test_a_pretraining_speed_up_is_not_carried_to_fine_tuning() -> None:
    # Muon's published ratios are all pre-training ones (0.71 of AdamW's steps at 130M);
    # fine-tuning an AdamW-pre-trained checkpoint is centred on AdamW's count, range kept.
    pre = plan_steps(TAX, "muon", Task.PRETRAIN, 125_000_000)
    assert pre.central < 0.8
    for task in (Task.FINETUNE, Task.LORA):
        fine = plan_steps(TAX, "muon", task, 125_000_000)
        lora = plan_steps(TAX, "adamw", task, 125_000_000).central
        assert fine.central == pytest.approx(lora)
        assert fine.low <= pre.low and "pre-training" in fine.notes
    # MeZO's points are fine-tuning ones: they apply as published.
    mezo = TAX.get("mezo")
    assert any(p.setting.task is Task.FINETUNE for p in mezo.steps_vs_adamw.points)  # type: ignore[union-attr]
    assert plan_steps(TAX, "mezo", Task.FINETUNE, 10**9) == steps_vs_adamw(mezo, 10**9)
