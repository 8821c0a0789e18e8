"""Explanations: the rules behind each row, "why not" the options users expect, and what
would fit when nothing does."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from advisor.config import (
    Checkpointing,
    Offload,
    ParallelLayout,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.hardware.profiles import DeviceKind
from advisor.hardware.target import host_for
from advisor.plan.constraints import compatible, hard_constraint, techniques_of
from advisor.plan.evaluator import Evaluator, Plan, memory_reason
from advisor.plan.geometry import best_geometry
from advisor.plan.layout import Layout
from advisor.plan.models import Reason, Suggestion, WhyNot
from advisor.plan.rank import NVME_LAST_RESORT, Row
from advisor.plan.space import (
    Context,
    baseline_config,
    context_steps,
    describe_config,
    estimate,
    host_fits,
    quantized_base_precision,
)
from advisor.rules.engine import Decision
from advisor.units import format_bytes

# A plan must be at least this much faster to target than the pick before the report says
# what the pick trades for it (below: within the models' own resolution).
TRADE_MIN_SPEEDUP = 1.02


def effect(ctx: Context, rule_id: str) -> str:
    """What a fired rule does, in words."""
    lr = ctx.ruleset.get(rule_id)
    if lr is None:  # a taxonomy requirement rule
        return "excludes " + rule_id.removeprefix("requires-") + " (hardware requirement)"
    parts = []
    for a in lr.rule.then:
        if a.verb == "advise":
            parts.append("advises")
        else:
            w = f" ({a.score:+g})" if a.verb in ("prefer", "avoid") else ""
            parts.append(f"{a.verb}s {', '.join(a.techniques)}{w}")
    return "; ".join(parts)


def reason(ctx: Context, rule_id: str, effect_text: str) -> Reason:
    """A fired rule with its rationale and sources."""
    lr = ctx.ruleset.get(rule_id)
    if lr is None:
        tid = rule_id.removeprefix("requires-")
        tech = ctx.taxonomy.get(tid) if tid in ctx.taxonomy else None
        return Reason(
            rule=rule_id,
            effect=effect_text,
            rationale=f"{tid} needs hardware this target lacks (taxonomy requirements)",
            sources=[r.cite() for r in tech.references] if tech else [],
        )
    return Reason(
        rule=rule_id,
        effect=effect_text,
        rationale=" ".join(lr.rule.rationale.split()),
        sources=[s.cite() for s in lr.rule.sources],
    )


def plan_reasons(ctx: Context, plan: Plan, decision: Decision) -> list[Reason]:
    """The rules that moved this plan: its techniques' preferences and requirements."""
    present = set(plan.techniques)
    out = []
    # One line per fired action, naming every technique of the plan it covers: the plan
    # scores each action once (rules/engine.py), however many of its techniques it names.
    named: dict[str, list[str]] = {}
    for tid in plan.techniques:
        for key in decision.actions_of.get(tid, []):
            named.setdefault(key, []).append(tid)
    for key, tids in named.items():
        weight = decision.action_weights[key]
        verb = "prefers" if weight > 0 else "avoids"
        rule_id = key.rsplit("#", 1)[0]
        out.append(reason(ctx, rule_id, f"{verb} {', '.join(tids)} ({weight:+g})"))
    for tid, rules in decision.required.items():
        if tid in present:
            out.extend(reason(ctx, r, f"requires {tid}") for r in rules)
    return sorted(out, key=lambda r: r.rule)


def why_not(
    ctx: Context, decision: Decision, ev: Evaluator, rows: list[Row], shown: int
) -> list[WhyNot]:
    """The options a practitioner expects, each judged as one exact plan (its best batch)."""
    base = baseline_config(ctx)
    what = "full fine-tuning" if base.task is Task.FINETUNE else "pretraining"
    world = ctx.workload.world_size
    expected = [(f"AdamW {what} in {base.precision.value}, no memory savers, no sharding", base)]
    if ctx.workload.task in (Task.FINETUNE, Task.LORA, Task.QLORA):
        expected.append(
            (
                f"LoRA (r=16) with AdamW in {base.precision.value}",
                base.with_(task=Task.LORA),
            )
        )
        sixteen = quantized_base_precision(ctx.target)
        expected.append(
            (
                f"QLoRA (r=16, 4-bit base) with AdamW in {sixteen.value}",
                base.with_(task=Task.QLORA, precision=sixteen),
            )
        )
    if "mezo" in ctx.taxonomy and ctx.workload.task is not Task.PRETRAIN:
        expected.append(("MeZO (zeroth-order, inference memory)", base.with_(optimizer="mezo")))
    if world > 1:
        expected.append(("AdamW with ZeRO-3 sharding", base.with_(sharding=Sharding.ZERO3)))
    layout = Layout(
        world_size=world,
        gpus_per_node=max(ctx.workload.gpus, 1),
        parallel=ParallelLayout(data_parallel=world),
    )
    out = []
    for label, config in expected:
        lay = layout.with_sharding(config.layout.sharding)
        position = _position(rows, config)
        if position is not None and position < shown:
            continue
        if position is not None:
            p = rows[position].plan
            out.append(
                WhyNot(
                    option=label,
                    verdict=f"fits ({format_bytes(p.peak_bytes)}, micro-batch "
                    f"{p.config.batch.micro_batch}) but ranks #{position + 1} of {len(rows)}: "
                    f"{p.cost.seconds:.3g} s/step, {_steps(ctx, p):.3g}x AdamW's steps to "
                    f"its loss, rule score {p.rule_score:+g}",
                )
            )
            continue
        out.append(WhyNot(option=label, verdict=_judge(ctx, decision, ev, config, lay)))
    return out


def _steps(ctx: Context, p: Plan) -> float:
    return context_steps(ctx, p.config).central


def _position(rows: list[Row], config: TrainingConfig) -> int | None:
    """The row of the plain configuration (any batch geometry), if it was ranked."""
    for i, row in enumerate(rows):
        c = row.plan.config
        if (
            (c.task, c.optimizer, c.precision, c.kernels.attention)
            == (config.task, config.optimizer, config.precision, config.kernels.attention)
            and c.savers.checkpointing is config.savers.checkpointing
            and c.savers.offload is config.savers.offload
            and c.layout.sharding is config.layout.sharding
            and c.layout.tensor_parallel == 1
            and c.layout.pipeline_parallel == 1
            and not (
                c.kernels.fused_loss
                or c.savers.activation_offload
                or c.savers.optimizer_in_backward
            )
        ):
            return i
    return None


def _judge(
    ctx: Context, decision: Decision, ev: Evaluator, config: TrainingConfig, layout: Layout
) -> str:
    c = layout.apply(config)
    techniques = techniques_of(ctx, c)
    why = hard_constraint(ctx, decision, techniques) or compatible(ctx, c, techniques)
    if why:
        return why
    found = best_geometry(
        ev, c, layout.parallel.data_parallel, ctx.global_batch, ctx.workload.micro_batch
    )
    if found is None:
        smallest = c.with_(micro_batch=ctx.workload.micro_batch or 1)
        text, _kind = memory_reason(ctx, ev, smallest)
        return text + f" at micro-batch {smallest.batch.micro_batch}"
    return "fits, but another plan of the same kind ranks above it"


def suggestions(ctx: Context, usable: int) -> list[Suggestion]:
    """What would fit when nothing does: more GPUs, adapters, zeroth-order, a smaller model."""
    out: list[Suggestion] = []
    base = baseline_config(ctx)
    tight = base.with_(checkpointing=Checkpointing.FULL, micro_batch=1)
    if base.kernels.stack is Stack.HF:
        # Another kernel stack changes the verdict: the same frugal plan (its attention
        # kernel kept) with fused norms/activations and a fused cross-entropy (what
        # production stacks run).
        hf = estimate(ctx, tight)
        fused = tight.with_(stack=Stack.FUSED)
        m = estimate(ctx, fused)
        if m.total_bytes <= usable:
            out.append(
                Suggestion(
                    change="--stack fused",
                    detail="with the fused kernel stack (fused norms and cross-entropy, "
                    f"{tight.kernels.attention.value} attention) this fits: "
                    f"{format_bytes(m.total_bytes)} per device "
                    f"(−{format_bytes(hf.total_bytes - m.total_bytes)})",
                )
            )
    for n in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if n <= ctx.workload.world_size:
            continue
        c = tight.with_(data_parallel=n, sharding=Sharding.ZERO3)
        m = estimate(ctx, c)
        if m.total_bytes <= usable:
            out.append(
                Suggestion(
                    change=f"{n} devices with ZeRO-3",
                    detail=f"AdamW {base.precision.value} + full checkpointing sharded over {n} "
                    f"devices needs {format_bytes(m.total_bytes)} per device",
                )
            )
            break
    if ctx.target.device_kind is not DeviceKind.CPU and ctx.target.host_memory_bytes:
        # ZeRO-Infinity style: shard and offload optimizer states and parameters to host RAM.
        for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            if n < ctx.workload.world_size:
                continue
            c = tight.with_(
                data_parallel=n,
                sharding=Sharding.ZERO3 if n > 1 else Sharding.NONE,
                offload=Offload.OPTIMIZER_PARAMS,
            )
            m = estimate(ctx, c)
            # Judged against the host each of the n devices would have (n T4s share their
            # g4dn hosts four to one), not the planned devices' share of theirs.
            ram, nvme = host_for(ctx.target, n)
            hosts = ctx.target.model_copy(update={"host_memory_bytes": ram, "nvme_bytes": nvme})
            if (
                m.total_bytes <= usable
                and host_fits(ctx.model_copy(update={"target": hosts}), c, m) is None
            ):
                change = (
                    f"{n} devices with ZeRO-3 and CPU offload"
                    if n > 1
                    else "1 device with CPU offload (ZeRO-Offload)"
                )
                out.append(
                    Suggestion(
                        change=change,
                        detail=f"optimizer states and parameters in host RAM "
                        f"({format_bytes(m.host_bytes)} of {format_bytes(ram)} per device), "
                        f"{format_bytes(m.total_bytes)} on each device; slower per step",
                    )
                )
                break
    sixteen = quantized_base_precision(ctx.target)
    for task in (Task.QLORA, Task.LORA):
        c = tight.with_(task=task, precision=sixteen if task is Task.QLORA else base.precision)
        m = estimate(ctx, c)
        if m.total_bytes <= usable:
            out.append(
                Suggestion(
                    change=f"{task.value.upper()} fine-tuning",
                    detail=f"{describe_config(c)} needs {format_bytes(m.total_bytes)}",
                )
            )
            break
    zo = base.with_(optimizer="mezo", micro_batch=1)
    if "mezo" in ctx.taxonomy:
        m = estimate(ctx, zo)
        if m.total_bytes <= usable:
            out.append(
                Suggestion(
                    change="zeroth-order fine-tuning (MeZO)",
                    detail=f"inference-like memory: {format_bytes(m.total_bytes)};"
                    " expect many more steps",
                )
            )
    for s in (1024, 512):
        if s < ctx.workload.seq_len:
            c = tight.with_(seq_len=s, micro_batch=1)
            m = estimate(ctx, c)
            if m.total_bytes <= usable:
                out.append(
                    Suggestion(
                        change=f"sequence length {s}, micro-batch 1",
                        detail=f"AdamW + full checkpointing needs {format_bytes(m.total_bytes)}",
                    )
                )
                break
    if not out:
        out.append(
            Suggestion(
                change="a smaller model or a bigger device",
                detail=f"even the frugal options exceed {format_bytes(usable)} per device",
            )
        )
    return out


def trade_note(
    ctx: Context,
    decision: Decision,
    rows: list[Row],
    steps_of: Callable[[Plan], float],
) -> str:
    """What the pick trades, in one line, when it is not the fastest plan to the target
    ("" when it is, within TRADE_MIN_SPEEDUP): which faster plan ranks where, and what the
    objective weighed against its speed (memory, the rules that differ, quality).

    Only plans that reach the global batch compare (as the ranking puts them first)."""
    if not rows:
        return ""
    pick = rows[0].plan

    def ttt(p: Plan) -> float:
        return p.seconds_per_token * steps_of(p)

    candidates = [(i, r.plan) for i, r in enumerate(rows) if r.plan.exact_batch]
    if not pick.exact_batch or not candidates:
        return ""
    i, fast = min(candidates, key=lambda x: (ttt(x[1]), x[0]))
    speedup = ttt(pick) / max(ttt(fast), 1e-30)
    if i == 0 or speedup < TRADE_MIN_SPEEDUP:
        return _nvme_pick_note(ctx, pick, candidates, ttt)
    pick_parts = set(describe_config(pick.config).split(", "))
    differs = [x for x in describe_config(fast.config).split(", ") if x not in pick_parts]
    what = "plan" + (f" ({', '.join(differs[:4])})" if differs else "")
    why: list[str] = []
    objective = ctx.workload.objective.value
    if (
        objective == "quality"
        and pick.config.task in (Task.PRETRAIN, Task.FINETUNE)
        and (fast.config.task in (Task.LORA, Task.QLORA))
    ):
        why.append("full-parameter training ranks above adapters under --objective quality")
    if fast.config.savers.offload.nvme and not pick.config.savers.offload.nvme:
        why.append(
            f"NVMe offload is a last resort: it ranks below plans that fit without it unless "
            f"more than {math.exp(NVME_LAST_RESORT) - 1:.0%} faster (one assumed drive rate; "
            "the states are written to the SSD every step)"
        )
    if pick.peak_bytes < fast.peak_bytes:
        why.append(f"#1 needs {format_bytes(fast.peak_bytes - pick.peak_bytes)} less per device")
    net = _rule_difference(decision, pick.techniques, fast.techniques)
    favour = [(r, w) for r, w in net if w > 0]
    for rule_id, _w in favour:
        lr = ctx.ruleset.get(rule_id)
        if lr is not None and lr.rule.quality:
            src = lr.rule.sources[-1] if lr.rule.sources else None
            cite = f", {src.authors} {src.year}" if src else ""
            why.insert(0, f"#1 preferred for quality ({rule_id}{cite})")
    if favour:
        total = sum(w for _, w in favour)
        named = ", ".join(f"{r} {w:+g}" for r, w in favour[:3])
        why.append(f"rules favour #1 by {total:+g} ({named})")
    if steps_of(pick) < steps_of(fast):
        why.append(f"#1 needs {steps_of(pick) / max(steps_of(fast), 1e-9):.2g}x its steps")
    reason_text = "; ".join(why) or "the objective weighs memory and rules against speed"
    return f"{speedup:.2f}x faster {what} ranks #{i + 1} under {objective}: {reason_text}"


def _nvme_pick_note(
    ctx: Context,
    pick: Plan,
    candidates: list[tuple[int, Plan]],
    ttt: Callable[[Plan], float],
) -> str:
    """Why an NVMe-offloading pick beats every plan without it ("" when it offloads
    nothing to NVMe or nothing else reaches the batch)."""
    if not pick.config.savers.offload.nvme:
        return ""
    others = [(i, p) for i, p in candidates if not p.config.savers.offload.nvme]
    if not others:
        return (
            "#1 offloads to NVMe, the last resort: no plan without NVMe offload reaches the "
            "global batch on this hardware"
        )
    j, best = min(others, key=lambda x: (ttt(x[1]), x[0]))
    speedup = ttt(best) / max(ttt(pick), 1e-30)
    return (
        f"#1 offloads to NVMe, the last resort: {speedup:.2f}x faster to the target than the "
        f"best plan without it (#{j + 1}) under {ctx.workload.objective.value}"
    )


def _rule_difference(
    decision: Decision, ours: Sequence[str], theirs: Sequence[str]
) -> list[tuple[str, float]]:
    """Per rule, how much more it scores ``ours`` than ``theirs`` (largest first, nonzero)."""
    net: dict[str, float] = {}
    for sign, techniques in ((1.0, ours), (-1.0, theirs)):
        for key in decision.actions(techniques):  # each action once per plan
            rule_id = key.rsplit("#", 1)[0]
            net[rule_id] = net.get(rule_id, 0.0) + sign * decision.action_weights[key]
    return sorted(((r, w) for r, w in net.items() if w), key=lambda x: (-x[1], x[0]))
