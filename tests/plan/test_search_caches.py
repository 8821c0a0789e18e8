"""The search's speed-ups change no answer: each memo returns what the uncached model does,
and what a memo key leaves out is something the result does not read."""

from __future__ import annotations

import itertools
from enum import Enum
from typing import Any

import pytest

from advisor import cost
from advisor.app import recommend
from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.config import (
    FLAT_FIELDS,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.hardware.profiles import get_hardware_profile
from advisor.memory import (
    DeviceOverheads,
    MemoryEstimate,
    MemoryMemo,
    estimate_memory,
    memory_totals,
)
from advisor.model import get_model_profile, resolve_model_size
from advisor.plan import search
from advisor.plan.space import Context, estimate, overheads
from advisor.rules.taxonomy import load_taxonomy

H100 = get_hardware_profile("h100-sxm-80gb")
LLAMA = get_model_profile("llama-2-7b")


def _fresh(ctx: Context, c: TrainingConfig) -> MemoryEstimate:
    """The memory model's answer without the search's memo (plan.space.estimate uses it)."""
    opt = ctx.taxonomy.get(c.optimizer)
    return estimate_memory(ctx.spec, c, optimizer=opt, device=overheads(ctx.target))


# Values of each per-step field that a plan can take (and that the model accepts together).
_PER_STEP_VALUES: dict[str, list[Any]] = {
    "optimizer": ["adamw", "lion-8bit", "adafactor", "muon"],
    "grad_accumulation": [1, 4],
    "sharding": [Sharding.NONE, Sharding.ZERO2, Sharding.FSDP],
    "shard_group": [None, 2],
    "offload": [Offload.NONE, Offload.OPTIMIZER],
    "optimizer_in_backward": [False, True],
    "activation_offload": [False, True],
    "lora_rank": [8, 64],
    "lora_targets": [("k", "o", "q", "v"), ("down", "gate", "k", "o", "q", "up", "v")],
    "optimizer_impl": ["auto", "fused", "foreach"],
}


@pytest.mark.parametrize("field", sorted(_PER_STEP_VALUES))
@pytest.mark.parametrize(
    "base",
    [
        TrainingConfig(task=Task.PRETRAIN, micro_batch=2, gpus=8),
        TrainingConfig(
            task=Task.PRETRAIN,
            precision=Precision.FP8_MIXED,
            checkpointing=Checkpointing.FULL,
            tensor_parallel=2,
            pipeline_parallel=2,
            gpus=4,
            stack=Stack.FUSED,
        ),
        TrainingConfig(task=Task.QLORA, dp_sgd=True, micro_batch=4, gpus=2),
    ],
)
def test_plans_that_differ_once_per_step_share_their_micro_batch_terms(
    field: str, base: TrainingConfig
) -> None:
    # The micro-batch terms receive only cost.MicroBatchConfig (their memo key): what acts
    # once per step is not in it, so the search's plans that differ only there share one
    # entry, and the step times with a shared memo equal the fresh ones.
    if field == "lora_targets" and base.task in (Task.LORA, Task.QLORA):
        # NOTE: the adapters' ops are dispatched every micro-batch (the host term,
        # advisor.cost.host): under LoRA the targets are a micro-batch field.
        keys = {
            cost.micro_batch_config(base.with_(lora_targets=v)) for v in _PER_STEP_VALUES[field]
        }
        assert len(keys) == len(_PER_STEP_VALUES[field])
        return
    memo = cost.StepMemo()
    for value in _PER_STEP_VALUES[field]:
        changed = base.with_(**{field: value})
        assert cost.micro_batch_config(changed) == cost.micro_batch_config(base), (field, value)
        for order in ("first", "zeroth"):
            shared = cost.predict_step_time(
                LLAMA, changed, calibration=None, hardware=H100, optimizer_order=order, memo=memo
            )
            fresh = cost.predict_step_time(
                LLAMA, changed, calibration=None, hardware=H100, optimizer_order=order
            )
            assert shared == fresh, (field, value, order)


def test_memoised_step_times_equal_uncached_ones() -> None:
    configs = [
        TrainingConfig(
            task=Task.PRETRAIN,
            optimizer=opt,
            micro_batch=mb,
            grad_accumulation=ga,
            sharding=sh,
            gpus=8,
            checkpointing=ck,
        )
        for opt, mb, ga, sh, ck in itertools.product(
            ["adamw", "lion-8bit"],
            [1, 4],
            [1, 8],
            [Sharding.NONE, Sharding.FSDP],
            [Checkpointing.NONE, Checkpointing.FULL],
        )
    ]

    def times(memo: cost.StepMemo | None) -> list[str]:
        return [
            cost.predict_step_time(
                LLAMA, c, calibration=None, hardware=H100, memo=memo
            ).model_dump_json()
            for c in configs
        ]

    memo = cost.StepMemo()
    warm_first = times(memo)  # filled as it goes: later configs hit earlier entries
    cold = times(None)  # no memo: every figure computed afresh
    assert warm_first == cold
    assert times(memo) == cold  # every entry a hit


def test_the_search_memos_give_the_uncached_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real search (7B pre-training on one node of H100): every memory estimate and step
    # time it kept equals the model's fresh answer, notes included.
    evaluators: list[search.Evaluator] = []
    init = search.Evaluator.__init__

    def capture(self: search.Evaluator, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        evaluators.append(self)

    monkeypatch.setattr(search.Evaluator, "__init__", capture)
    cost_fns: list[tuple[Any, Any, Any]] = []
    make_cost_fn = recommend.cost_function

    def capture_cost_fn(*args: Any) -> Any:
        cost_fns.append(args)
        return make_cost_fn(*args)

    monkeypatch.setattr(recommend, "cost_function", capture_cost_fn)
    req = RecommendRequest.from_flags(
        spec=resolve_model_size("7B"),
        task="pretrain",
        hardware="h100-sxm-80gb",
        gpus=8,
        calibrate=False,
    )
    searches: list[search.SearchResult] = []
    run_search = search.search

    def keep(*args: Any, **kwargs: Any) -> search.SearchResult:
        searches.append(run_search(*args, **kwargs))
        return searches[-1]

    monkeypatch.setattr("advisor.plan.report.search", keep)
    run_recommend(req)
    ev = evaluators[-1]
    # A plan's peak (what the ranking reads) is its full estimate's, built on demand.
    plans = searches[-1].plans
    assert plans
    for p in plans[:40]:
        assert p.peak_bytes == p.memory.total_bytes == _fresh(ev.ctx, p.config).total_bytes
        assert estimate(ev.ctx, p.config) == _fresh(ev.ctx, p.config)
    for c in list(ev._totals)[:400]:
        ev.memory(c)  # full estimates of many plans: some share a state signature
    shared = 0
    for c, m in ev._mem.items():
        assert m == _fresh(ev.ctx, c), c
        key = ev._state_key(c)
        assert key is not None
        first = ev._by_state[key][0]
        shared += first != c.optimizer
    assert shared > 0  # the sharing was exercised (8-bit Lion, RMSprop, SGD-momentum)
    for c, totals in ev._totals.items():
        m = _fresh(ev.ctx, c)
        assert totals == (m.total_bytes, m.host_bytes, m.nvme_bytes, m.paged_bytes), c
    assert ev.counts[0] == len(ev._mem.keys() | ev._totals.keys())
    ctx, calibration, profile = cost_fns[-1]
    for c, t in ev._time.items():
        assert t == recommend.cost_function(ctx, calibration, profile)(c), c  # a fresh memo


@pytest.mark.parametrize("device", [None, DeviceOverheads.cpu()])
def test_memory_totals_are_the_estimates_numbers(device: DeviceOverheads | None) -> None:
    tax = load_taxonomy()
    configs = [
        TrainingConfig(
            task=task,
            optimizer=opt,
            micro_batch=mb,
            grad_accumulation=ga,
            gpus=4,
            sharding=sh,
            offload=off,
            checkpointing=ck,
            pipeline_parallel=pp,
            tensor_parallel=tp,
        )
        for task, opt, mb, ga, sh, off, ck, pp, tp in [
            (Task.PRETRAIN, "adamw", 2, 1, Sharding.NONE, Offload.NONE, Checkpointing.NONE, 1, 1),
            (Task.PRETRAIN, "adamw", 1, 8, Sharding.FSDP, Offload.NONE, Checkpointing.FULL, 2, 2),
            (
                Task.PRETRAIN,
                "lion-8bit",
                4,
                2,
                Sharding.ZERO1,
                Offload.NONE,
                Checkpointing.SELECTIVE,
                4,
                1,
            ),
            (
                Task.FINETUNE,
                "adamw",
                1,
                1,
                Sharding.ZERO3,
                Offload.OPTIMIZER_PARAMS_NVME,
                Checkpointing.FULL,
                1,
                1,
            ),
            (
                Task.FINETUNE,
                "adafactor",
                2,
                4,
                Sharding.ZERO2,
                Offload.OPTIMIZER,
                Checkpointing.NONE,
                1,
                2,
            ),
            (Task.QLORA, "adamw", 4, 1, Sharding.NONE, Offload.NONE, Checkpointing.FULL, 1, 1),
        ]
    ]
    for c in configs:
        opt = tax.get(c.optimizer)
        m = estimate_memory(LLAMA, c, optimizer=opt, device=device)
        totals = memory_totals(LLAMA, c, optimizer=opt, device=device)
        assert totals == (m.total_bytes, m.host_bytes, m.nvme_bytes, m.paged_bytes), c
    # Offloaded and NVMe bytes were exercised, and pipelines (two stages compared).
    assert any(memory_totals(LLAMA, c, optimizer=tax.get(c.optimizer)).nvme_bytes for c in configs)
    assert any(c.layout.pipeline_parallel > 1 for c in configs)


def _alternatives(field: str, value: Any) -> list[Any]:
    """A few other values of a configuration field, whatever its type."""
    if field == "grad_accumulation":
        return [1, 2, 8]
    if isinstance(value, Enum):
        return list(type(value))
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [1, 2, 8]
    if value is None:
        fp8 = ["tensorwise", "rowwise", "blockwise", "delayed"]
        return {"tp_comm_overlap": [True, False], "shard_group": [2], "fp8_recipe": fp8}.get(
            field, []
        )
    return []


def test_a_held_memory_memo_answers_as_a_fresh_model_whatever_field_changes() -> None:
    # One memo held across configurations that differ in any one field (in any order)
    # gives each the estimate a fresh model gives: no memo key leaves out what its function
    # reads.
    tax = load_taxonomy()
    bases = [
        TrainingConfig(task=Task.PRETRAIN, gpus=8, sharding=Sharding.FSDP, dp_sgd=False),
        TrainingConfig(task=Task.QLORA, gpus=2, precision=Precision.BF16_MIXED),
        TrainingConfig(task=Task.FINETUNE, gpus=16, sharding=Sharding.HSDP, dp_sgd=True),
        TrainingConfig(
            task=Task.PRETRAIN,
            optimizer="lion-8bit",
            precision=Precision.FP8_MIXED,
            tensor_parallel=2,
            pipeline_parallel=2,
            gpus=4,
            sharding=Sharding.FSDP,
            grad_accumulation=4,
        ),
        TrainingConfig(task=Task.PRETRAIN, pipeline_parallel=4, gpus=2, sharding=Sharding.ZERO1),
    ]
    memo = MemoryMemo(LLAMA)
    checked = 0
    for base in bases:
        opt = tax.get(base.optimizer)
        flat = base.model_dump()  # every field, sub-records' included, by its flat key
        for field in FLAT_FIELDS:
            # NOTE: the view leaves out fp8_recipe unless an fp8-mixed plan chose one.
            for value in _alternatives(field, flat.get(field)):
                try:
                    changed = TrainingConfig.model_validate({**flat, field: value})
                    fresh = estimate_memory(LLAMA, changed, optimizer=opt)
                except (UserError, ValueError):
                    continue  # a layout or combination the model refuses
                held = estimate_memory(LLAMA, changed, optimizer=opt, memo=memo)
                assert held == fresh, (field, value)
                assert memory_totals(LLAMA, changed, optimizer=opt, memo=memo) == (
                    fresh.total_bytes,
                    fresh.host_bytes,
                    fresh.nvme_bytes,
                    fresh.paged_bytes,
                ), (field, value)
                checked += 1
    assert checked > 100
    assert len(memo) > 0


def test_a_memo_refuses_another_models_estimates() -> None:
    other = get_model_profile("llama-2-13b")
    config = TrainingConfig(task=Task.PRETRAIN)
    opt = load_taxonomy().get(config.optimizer)
    with pytest.raises(ValueError, match="memo"):
        estimate_memory(other, config, optimizer=opt, memo=MemoryMemo(LLAMA))


def test_memoised_estimates_equal_uncached_ones() -> None:
    tax = load_taxonomy()
    configs = [
        TrainingConfig(
            task=task,
            optimizer=opt,
            micro_batch=mb,
            gpus=4,
            sharding=sh,
            checkpointing=ck,
            dp_sgd=dp,
            pipeline_parallel=pp,
            grad_accumulation=4,
        )
        for task, opt, mb, sh, ck, dp, pp in itertools.product(
            [Task.PRETRAIN, Task.LORA],
            ["adamw", "adafactor"],
            [1, 4],
            [Sharding.NONE, Sharding.ZERO3],
            [Checkpointing.NONE, Checkpointing.FULL],
            [False, True],
            [1, 2],
        )
    ]
    memo = MemoryMemo(LLAMA)
    warm = [
        estimate_memory(LLAMA, c, optimizer=tax.get(c.optimizer), memo=memo).model_dump_json()
        for c in configs
    ]
    cold = [
        estimate_memory(LLAMA, c, optimizer=tax.get(c.optimizer)).model_dump_json() for c in configs
    ]
    assert warm == cold
    assert len(memo) > 0
