"""Explanations (advisor.plan.explain): rule effects and reasons, "why not", suggestions when
nothing fits, and the trade line.

Effects are checked against the shipped rule base (rules/*.yaml), each suggestion's claim
against the memory model, and the hardware verdicts against the datasheets: a T4 (Turing,
cc 7.5) has no bf16 tensor path and no FlashAttention-2; an L4 (Ada, cc 8.9) has both.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from advisor.app.recommend import cost_function
from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.hardware.profiles import get_hardware_profile
from advisor.hardware.target import HostOverride, target_from_profile
from advisor.plan.evaluator import Evaluator
from advisor.plan.explain import (
    TRADE_MIN_SPEEDUP,
    effect,
    plan_reasons,
    reason,
    suggestions,
    trade_note,
    why_not,
)
from advisor.plan.models import Suggestion
from advisor.plan.rank import Row
from advisor.plan.report import ranking_decision
from advisor.plan.space import (
    Context,
    baseline_config,
    derive_facts,
    estimate,
    host_fits,
    quantized_base_precision,
    usable_memory,
)
from advisor.rules.engine import Decision, decide
from advisor.units import GIB, format_bytes
from tests.plan.scenarios import RULES, TAXONOMY, context, hand_plan, searched

NO_HOST = HostOverride(memory_bytes=0, nvme_bytes=0)


def _decision(ctx: Context) -> Decision:
    optimizers = [t for t in TAXONOMY.optimizers() if t.implementation]
    return ranking_decision(ctx, decide(RULES, TAXONOMY, derive_facts(ctx, optimizers)))  # type: ignore[arg-type]


# -- effects and reasons -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule_id", "text"),
    [
        # rules/optimizers-generalization.yaml: prefer adamw (weight 3), avoid SGD (weight 2).
        ("adamw-for-transformers", "prefers adamw (+3); avoids sgd, sgd-momentum, nesterov (-2)"),
        # rules/privacy.yaml: require privacy-accounting, prefer per-sample clipping (3).
        (
            "dp-needs-clipping-and-accounting",
            "requires privacy-accounting; prefers per-sample-clipping (+3)",
        ),
        # rules/precision.yaml: exclude fp16, avoid bf16 (2), and advice.
        (
            "bare-bf16-pretraining-only-when-master-weights-do-not-fit",
            "excludes fp16; avoids bf16 (-2); advises",
        ),
        ("async-sgd-on-many-slow-nodes", "prefers async-sgd (+0.5); advises"),
    ],
)
def test_a_rules_effect_names_each_action_and_its_weight(rule_id: str, text: str) -> None:
    ctx, _ = context("gpt2", "l4")
    assert effect(ctx, rule_id) == text


def test_every_shipped_rule_has_one_effect_per_action() -> None:
    ctx, _ = context("gpt2", "l4")
    for lr in RULES.rules:
        parts = effect(ctx, lr.rule.id).split("; ")
        assert len(parts) == len(lr.rule.then), lr.rule.id
        for part, action in zip(parts, lr.rule.then, strict=True):
            assert part.startswith(action.verb + "s"), (lr.rule.id, part)
            # Only soft verbs carry a weight; every named technique is listed.
            assert ("(" in part) == (action.verb in ("prefer", "avoid")), (lr.rule.id, part)
            assert all(t in part for t in action.techniques), (lr.rule.id, part)


def test_a_rules_reason_keeps_its_rationale_and_sources() -> None:
    ctx, _ = context("gpt2", "l4")
    lr = RULES.get("full-fine-tuning-when-it-fits")
    assert lr is not None
    r = reason(ctx, lr.rule.id, "avoids lora (-5)")
    assert r.effect == "avoids lora (-5)"
    assert "\n" not in r.rationale and "  " not in r.rationale and r.rationale
    assert r.sources == [s.cite() for s in lr.rule.sources]
    assert any("Biderman" in s for s in r.sources)


def test_a_hardware_requirement_is_explained_from_the_taxonomy() -> None:
    ctx, _ = context("gpt2", "t4")
    assert effect(ctx, "requires-flash-attention") == (
        "excludes flash-attention (hardware requirement)"
    )
    r = reason(ctx, "requires-flash-attention", "excludes flash-attention")
    assert "flash-attention needs hardware" in r.rationale
    flash = TAXONOMY.get("flash-attention")
    assert r.sources == [ref.cite() for ref in flash.references] and r.sources


def test_a_plans_reasons_are_the_rules_that_score_or_require_its_techniques() -> None:
    s = searched("gpt2", "l4", task=Task.FINETUNE, seq_len=1024)
    for row in s.rows[:5]:
        p = row.plan
        reasons = plan_reasons(s.ctx, p, s.decision)
        expected = {
            rule for t in p.techniques for rule, _w in s.decision.contributions.get(t, [])
        } | {
            rule for t, rules in s.decision.required.items() if t in p.techniques for rule in rules
        }
        assert {r.rule for r in reasons} == expected
        assert [r.rule for r in reasons] == sorted(r.rule for r in reasons)
        for r in reasons:
            verb, tid = r.effect.split()[:2]
            assert tid in p.techniques and verb in ("prefers", "avoids", "requires")


# -- why not -------------------------------------------------------------------------------


def _verdicts(ctx: Context, rows: list[Row] | None = None, shown: int = 0) -> dict[str, str]:
    decision = _decision(ctx)
    ev = Evaluator(ctx, cost_function(ctx, None, ctx.target.profile))
    return {w.option: w.verdict for w in why_not(ctx, decision, ev, rows or [], shown)}


def test_why_not_lists_the_options_a_practitioner_expects_for_the_task() -> None:
    pretrain, _ = context("7B", "rtx-4090", task=Task.PRETRAIN)
    finetune, _ = context("7B", "rtx-4090", task=Task.FINETUNE)
    two, _ = context("7B", "rtx-4090", task=Task.FINETUNE, gpus=2)
    assert [o.split(" in ")[0] for o in _verdicts(pretrain)] == ["AdamW pretraining"]
    options = list(_verdicts(finetune))
    assert options[0].startswith("AdamW full fine-tuning in bf16-mixed")  # Ada: fast bf16
    assert any(o.startswith("LoRA") for o in options)
    assert any(o.startswith("QLoRA") for o in options)
    assert any(o.startswith("MeZO") for o in options)
    assert not any("ZeRO-3" in o for o in options)
    assert any("ZeRO-3" in o for o in _verdicts(two))


def test_why_not_says_the_plain_plan_needs_more_memory_than_the_device_has() -> None:
    # 7B with AdamW in bf16-mixed keeps ~16 bytes per parameter: ~112 GB > a 4090's 24 GB.
    ctx, _ = context("7B", "rtx-4090", task=Task.FINETUNE)
    verdict = next(v for o, v in _verdicts(ctx).items() if o.startswith("AdamW"))
    m = re.match(r"needs (.+) per device > (.+) usable \(90% of (.+)\) at micro-batch 1$", verdict)
    assert m, verdict
    base = baseline_config(ctx)
    assert estimate(ctx, base).total_bytes > usable_memory(ctx.target) > 0
    assert m.group(1) == format_bytes(estimate(ctx, base).total_bytes)
    assert m.group(3) == format_bytes(ctx.target.device_memory_bytes)


@pytest.mark.parametrize("hardware", ["t4", "v100-32gb", "colab-t4"])
def test_why_not_judges_the_options_with_what_a_pre_ampere_gpu_runs(hardware: str) -> None:
    # Turing (cc 7.5) and Volta (cc 7.0) have no bf16 tensor path and cannot run
    # FlashAttention-2 (sm80+, Dao 2023): the options users expect are judged in fp16 with
    # the memory-efficient SDPA kernel (sm50+), so no verdict blames the hardware.
    ctx, _ = context("7B", hardware, task=Task.FINETUNE)
    assert ctx.target.compute_capability < 8.0 and not ctx.target.fast_bf16
    verdicts = _verdicts(ctx)
    assert [o for o in verdicts if o.startswith(("AdamW", "LoRA", "QLoRA"))] == [
        "AdamW full fine-tuning in fp16-mixed, no memory savers, no sharding",
        "LoRA (r=16) with AdamW in fp16-mixed",
        "QLoRA (r=16, 4-bit base) with AdamW in fp16-mixed",
    ]
    for option, verdict in verdicts.items():
        assert "compute capability" not in verdict, (option, verdict)
        assert "FlashAttention" not in verdict and "BF16" not in verdict, (option, verdict)
    base = baseline_config(ctx)
    assert base.kernels.attention is Attention.MEM_EFFICIENT
    # A 7B QLoRA plan without savers (~0.5 byte per base weight, 2048 tokens of fp16
    # activations) fits 32 GB; on a 16 GB T4 it sits at the usable budget (within the
    # allocator's slack), so its verdict is a memory one either way; Colab's T4 shows
    # 15 GiB (ECC), where it needs checkpointing.
    qlora = verdicts["QLoRA (r=16, 4-bit base) with AdamW in fp16-mixed"]
    expected = {"colab-t4": ("needs",), "t4": ("fits", "needs"), "v100-32gb": ("fits",)}
    assert qlora.startswith(expected[hardware]), qlora
    assert (
        "needs" in verdicts["AdamW full fine-tuning in fp16-mixed, no memory savers, no sharding"]
    )


def test_why_not_places_a_ranked_option_below_the_shown_rows() -> None:
    s = searched("gpt2", "l4", task=Task.FINETUNE, seq_len=1024)
    shown = 5
    assert len(s.rows) > shown
    verdicts = _verdicts(s.ctx, s.rows, shown)
    ranked = {o: v for o, v in verdicts.items() if "ranks #" in v}
    assert ranked  # MeZO needs ~100x AdamW's steps: it ranks below the shown rows
    for option, verdict in ranked.items():
        m = re.search(r"ranks #(\d+) of (\d+)", verdict)
        assert m, verdict
        position, total = int(m.group(1)), int(m.group(2))
        assert shown < position <= total == len(s.rows)
        if option.startswith("MeZO"):
            assert s.rows[position - 1].plan.config.optimizer == "mezo"


# -- suggestions ---------------------------------------------------------------------------


def _tight(ctx: Context) -> TrainingConfig:
    base = baseline_config(ctx)
    return base.with_(checkpointing=Checkpointing.FULL, micro_batch=1)


def _claimed(ctx: Context, s: Suggestion) -> TrainingConfig | None:
    """The configuration a suggestion says would fit (None: it names none)."""
    tight = _tight(ctx)
    if m := re.fullmatch(r"(\d+) devices with ZeRO-3", s.change):
        return tight.with_(data_parallel=int(m.group(1)), sharding=Sharding.ZERO3)
    if s.change == "QLORA fine-tuning":
        return tight.with_(task=Task.QLORA, precision=quantized_base_precision(ctx.target))
    if s.change == "LORA fine-tuning":
        return tight.with_(task=Task.LORA)
    if s.change == "zeroth-order fine-tuning (MeZO)":
        return baseline_config(ctx).with_(optimizer="mezo", micro_batch=1)
    if m := re.fullmatch(r"sequence length (\d+), micro-batch 1", s.change):
        return tight.with_(seq_len=int(m.group(1)))
    return None


@pytest.mark.parametrize(
    ("model", "hardware", "flags"),
    [
        ("13B", "t4", dict(task=Task.PRETRAIN, host=NO_HOST)),
        ("7B", "rtx-4090", dict(task=Task.FINETUNE)),
        ("70B", "t4", dict(task=Task.FINETUNE, seq_len=512)),
    ],
)
def test_each_suggestion_fits_by_the_memory_model(
    model: str, hardware: str, flags: dict[str, Any]
) -> None:
    ctx, _ = context(model, hardware, **flags)
    usable = usable_memory(ctx.target)
    out = suggestions(ctx, usable)
    assert out and all(s.change != "a smaller model or a bigger device" for s in out)
    checked = 0
    for s in out:
        c = _claimed(ctx, s)
        if c is None:
            continue
        need = estimate(ctx, c).total_bytes
        assert need <= usable, s
        assert format_bytes(need) in s.detail, s
        checked += 1
        if m := re.fullmatch(r"(\d+) devices with ZeRO-3", s.change):
            # The fewest devices that fit: half as many do not.
            n = int(m.group(1))
            if n // 2 > ctx.workload.world_size:
                half = c.with_(data_parallel=n // 2)
                assert estimate(ctx, half).total_bytes > usable, s
    assert checked


def test_without_a_host_no_offload_is_suggested_but_more_devices_or_adapters_are() -> None:
    ctx, _ = context("13B", "t4", task=Task.PRETRAIN, host=NO_HOST)
    changes = [s.change for s in suggestions(ctx, usable_memory(ctx.target))]
    assert not any("offload" in c for c in changes)
    assert any("ZeRO-3" in c for c in changes) and "QLORA fine-tuning" in changes


def test_the_fallback_suggestion_comes_only_when_no_frugal_option_fits() -> None:
    # 70B pretraining at 4096 tokens on one T4 without host RAM: even over 1024 devices the
    # activations and the gathered layers alone exceed 14.4 GiB; a 4-bit 70B base is ~35 GB.
    ctx, _ = context("70B", "t4", task=Task.PRETRAIN, host=NO_HOST, seq_len=4096)
    usable = usable_memory(ctx.target)
    out = suggestions(ctx, usable)
    assert [s.change for s in out] == ["a smaller model or a bigger device"]
    tight = _tight(ctx)
    many = tight.with_(data_parallel=1024, sharding=Sharding.ZERO3)
    qlora = tight.with_(task=Task.QLORA, precision=Precision.FP16_MIXED)
    assert estimate(ctx, many).total_bytes > usable
    assert estimate(ctx, qlora).total_bytes > usable


def test_an_offload_suggestion_fits_the_host_of_the_devices_it_suggests() -> None:
    ctx, _ = context("70B", "t4", task=Task.FINETUNE, seq_len=512)
    out = suggestions(ctx, usable_memory(ctx.target))
    offload = [s for s in out if s.change.endswith("with ZeRO-3 and CPU offload")]
    assert offload
    n = int(offload[0].change.split()[0])
    many = target_from_profile(get_hardware_profile("t4"), gpus=n, nodes=1, memory_budget=None)
    assert many.host_memory_bytes == 48 * GIB  # the g4dn.12xlarge's 192 GiB over 4 GPUs
    wide = ctx.model_copy(update={"target": many})
    c = _tight(ctx).with_(
        data_parallel=n, sharding=Sharding.ZERO3, offload=Offload.OPTIMIZER_PARAMS
    )
    assert host_fits(wide, c, estimate(wide, c)) is None


def test_an_adapter_suggestion_uses_a_precision_the_device_runs() -> None:
    ctx, _ = context("13B", "t4", task=Task.PRETRAIN, host=NO_HOST)
    assert not ctx.target.fast_bf16
    out = suggestions(ctx, usable_memory(ctx.target))
    adapters = [s for s in out if s.change in ("QLORA fine-tuning", "LORA fine-tuning")]
    assert adapters
    assert all("bf16" not in s.detail for s in adapters)
    # FlashAttention-2 needs sm80 (Dao 2023); a T4 is sm75: the memory-efficient kernel.
    assert all("flash" not in s.detail and "mem-efficient" in s.detail for s in adapters)


def test_an_offload_suggestion_for_one_device_reads_as_one_device() -> None:
    ctx, _ = context("llama-3.1-8b", "t4", task=Task.FINETUNE)
    out = suggestions(ctx, usable_memory(ctx.target))
    changes = [s.change for s in out]
    assert "1 device with CPU offload (ZeRO-Offload)" in changes
    assert not any(c.startswith("1 devices") for c in changes)


# -- the trade line ------------------------------------------------------------------------

CTX, COST = context("gpt2", "l4", task=Task.FINETUNE, seq_len=1024)
EV = Evaluator(CTX, COST)
NO_RULES = Decision(
    fired=[], required={}, excluded={}, scores={}, contributions={}, advice=[], conflicts=[]
)


def _rows(*plans: Any) -> list[Row]:
    return [Row(plan=p, score=float(i), also=[]) for i, p in enumerate(plans)]


def _one(_p: Any) -> float:
    return 1.0


def test_the_trade_line_names_a_faster_plan_and_what_the_pick_saves() -> None:
    pick = hand_plan(EV, 1.5, 6 * GIB, optimizer="adafactor")
    fast = hand_plan(EV, 1.0, 10 * GIB, optimizer="adamw")
    note = trade_note(CTX, NO_RULES, _rows(pick, fast), _one)
    assert note.startswith("1.50x faster plan (adamw) ranks #2 under balanced: ")
    assert f"#1 needs {format_bytes(4 * GIB)} less per device" in note


def test_no_trade_line_within_the_models_resolution_or_for_the_fastest_pick() -> None:
    pick = hand_plan(EV, 1.0, 6 * GIB, optimizer="adafactor")
    close = hand_plan(EV, 1.0 / (TRADE_MIN_SPEEDUP - 0.005), 10 * GIB, optimizer="adamw")
    slower = hand_plan(EV, 2.0, 10 * GIB, optimizer="adamw")
    assert trade_note(CTX, NO_RULES, _rows(pick, close), _one) == ""
    assert trade_note(CTX, NO_RULES, _rows(pick, slower), _one) == ""
    assert trade_note(CTX, NO_RULES, [], _one) == ""


def test_only_plans_that_reach_the_global_batch_are_traded_against() -> None:
    pick = hand_plan(EV, 1.5, 6 * GIB, optimizer="adafactor")
    short = hand_plan(EV, 1.0, 10 * GIB, optimizer="adamw", exact=False)
    assert trade_note(CTX, NO_RULES, _rows(pick, short), _one) == ""


def test_the_trade_line_counts_steps_to_target_and_cites_quality_rules() -> None:
    # rules/optimizers-generalization.yaml: full-fine-tuning-when-it-fits avoids LoRA (5),
    # a quality rule resting on Biderman et al. 2024.
    decision = NO_RULES.model_copy(
        update={
            "contributions": {"lora": [("full-fine-tuning-when-it-fits", -5.0)]},
            "actions_of": {"lora": ["full-fine-tuning-when-it-fits#0"]},
            "action_weights": {"full-fine-tuning-when-it-fits#0": -5.0},
        }
    )
    lr = RULES.get("full-fine-tuning-when-it-fits")
    assert lr is not None and lr.rule.quality
    pick = hand_plan(EV, 2.0, 10 * GIB, optimizer="adamw")
    lora = hand_plan(EV, 1.0, 6 * GIB, optimizer="adamw", task=Task.LORA, techniques=("lora",))
    note = trade_note(CTX, decision, _rows(pick, lora), _one)
    assert note.startswith("2.00x faster plan (lora r=16) ranks #2")
    assert "#1 preferred for quality (full-fine-tuning-when-it-fits, Biderman et al. 2024)" in note
    assert "rules favour #1 by +5" in note
    # A pick needing more steps is traded for its time to target, steps included.
    steps = {id(pick): 1.0, id(lora): 3.0}
    assert trade_note(CTX, decision, _rows(pick, lora), lambda p: steps[id(p)]) == ""
