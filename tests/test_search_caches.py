"""The search's speed-ups change no answer: each memo returns what the uncached model does,
and what a memo key leaves out is something the result does not read."""

from __future__ import annotations

import itertools
from enum import Enum
from typing import Any

import pytest

from advisor import cost, memory
from advisor.app import recommend
from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.config import (
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.hardware.profiles import get_hardware_profile
from advisor.memory import (
    DEFAULT_LORA_TARGETS,
    DeviceOverheads,
    estimate_memory,
    memory_totals,
)
from advisor.model import get_model_profile, resolve_model_size
from advisor.plan import search
from advisor.plan.space import estimate
from advisor.rules.taxonomy import load_taxonomy

H100 = get_hardware_profile("h100-sxm-80gb")
LLAMA = get_model_profile("llama-2-7b")


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
    memo = cost.StepMemo()
    for value in _PER_STEP_VALUES[field]:
        changed = base.model_copy(update={field: value})
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
        assert p.peak_bytes == p.memory.total_bytes == estimate(ev.ctx, p.config).total_bytes
    for c in list(ev._totals)[:400]:
        ev.memory(c)  # full estimates of many plans: some share a state signature
    shared = 0
    for c, m in ev._mem.items():
        assert m == estimate(ev.ctx, c), c
        key = ev._state_key(c)
        assert key is not None
        first = ev._by_state[key][0]
        shared += first != c.optimizer
    assert shared > 0  # the sharing was exercised (8-bit Lion, RMSprop, SGD-momentum)
    for c, totals in ev._totals.items():
        m = estimate(ev.ctx, c)
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
    assert any(c.pipeline_parallel > 1 for c in configs)


def _alternatives(field: str, value: Any) -> list[Any]:
    """A few other values of a configuration field, whatever its type."""
    if field == "grad_accumulation":
        return [2, 8] if value > 1 else [1]  # the key holds whether it accumulates
    if isinstance(value, Enum):
        return list(type(value))
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [1, 2, 8]
    if value is None:
        return {"tp_comm_overlap": [True, False], "shard_group": [2]}.get(field, [])
    return []


def test_the_fixed_part_of_a_stage_reads_only_its_fields() -> None:
    # The memo key of memory._static_of names the fields _stage_static reads (and whether
    # gradients accumulate): changing any other field changes nothing it returns.
    tax = load_taxonomy()
    others = [f for f in TrainingConfig.model_fields if f not in memory._STATIC_FIELDS]
    assert "micro_batch" in others and "checkpointing" in others
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
    checked = 0
    for base in bases:
        opt = tax.get(base.optimizer)
        stages = ("first", "middle", "last") if base.pipeline_parallel > 1 else ("only",)
        for stage in stages:
            layers = 32 // base.pipeline_parallel
            expected = memory._stage_static(LLAMA, base, opt, DEFAULT_LORA_TARGETS, stage, layers)
            for field in others:
                for value in _alternatives(field, getattr(base, field)):
                    changed = base.model_copy(update={field: value})
                    got = memory._stage_static(
                        LLAMA, changed, opt, DEFAULT_LORA_TARGETS, stage, layers
                    )
                    assert got == expected, (field, value)
                    checked += 1
    assert checked > 50


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
    memory._STATIC.clear()
    warm = [
        estimate_memory(LLAMA, c, optimizer=tax.get(c.optimizer)).model_dump_json() for c in configs
    ]
    cold = []
    for c in configs:
        memory._STATIC.clear()
        cold.append(estimate_memory(LLAMA, c, optimizer=tax.get(c.optimizer)).model_dump_json())
    assert warm == cold
    assert len(memory._STATIC) > 0
