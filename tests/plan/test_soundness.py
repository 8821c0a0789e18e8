"""The search keeps every plan that beats its pick by its own numbers (a CI-sized slice of
benchmarks/soundness.py): the plans a practitioner tries first (plain DDP, FSDP, ZeRO-1,
with and without recomputation, adapters, the published recipes' layouts) are priced with
the same models, and none that fits and reaches the global batch may score better than the
pick."""

from __future__ import annotations

import pytest

from advisor.config import Task
from advisor.plan.space import Objective
from benchmarks.soundness import run_case

CASES = [
    # The cases: small models on many GPUs, where plain data parallelism is the
    # baseline (nanoGPT trains GPT-2 124M with DDP on 8 x A100; NVIDIA's BERT recipe is
    # data parallel), the 4090 fine-tune, and DeepSeek-V3's PP x EP layout.
    ("gpt2", Task.PRETRAIN, "a100-sxm-80gb", 8, 1, Objective.BALANCED),
    ("bert-large", Task.PRETRAIN, "a100-sxm-80gb", 8, 1, Objective.BALANCED),
    ("llama-3.1-8b", Task.FINETUNE, "rtx-4090", 1, 1, Objective.BALANCED),
    ("llama-3.1-70b", Task.PRETRAIN, "h100-sxm-80gb", 8, 8, Objective.SPEED),
    ("deepseek-v3", Task.PRETRAIN, "h100-sxm-80gb", 8, 32, Objective.BALANCED),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}x{c[4]}-{c[5].value}")
def test_no_practitioner_plan_beats_the_pick(
    case: tuple[str, Task, str, int, int, Objective],
) -> None:
    r = run_case(*case)
    assert r["pick"] is not None
    priced = [p for p in r["plans"] if p["fits"] and p["allowed"] and p["exact_batch"]]
    assert priced, "at least one practitioner plan fits: the check must compare something"
    assert not r["missed"], r["missed"]


@pytest.mark.parametrize("model", ["gpt2", "bert-large"])
def test_small_models_on_eight_gpus_train_plain_data_parallel(model: str) -> None:
    # A 124M/335M model fits each A100 whole: DDP's one overlapped all-reduce beats a
    # pipeline's bubble and stage hand-offs (GPT-2: 1.23M tok/s DDP vs 0.75M in 2 stages).
    r = run_case(model, Task.PRETRAIN, "a100-sxm-80gb", 8, 1, Objective.BALANCED)
    layout = r["pick"]["plan"].split(" | ")[0]
    assert layout.startswith("dp8"), layout
