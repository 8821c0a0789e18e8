"""The casebook (benchmarks/data/casebook.yaml): its structure, that every case cites a
published recipe (and none of the held-out sources), and one case run end to end."""

from __future__ import annotations

import re
from typing import Any

import pytest

from advisor.config import Attention, Checkpointing, Offload, Precision, Sharding, Task
from advisor.hardware.profiles import load_hardware_profiles
from advisor.model import get_model_profile
from benchmarks.casebook import (
    EXPECT_FIELDS,
    RECIPE_FIELDS,
    _flags,
    load_casebook,
    run_pick_case,
)

CASES = load_casebook()
PICKS = [c for c in CASES if c.get("kind", "pick") == "pick"]
VERDICTS = [c for c in CASES if c.get("kind") == "verdict"]
# BRIEF: sources the project must never fit or tune to (nor cite as a recipe here).
HELD_OUT = (
    "llm-foundry",
    "megatron-bridge",
    "nemo",
    "dgx cloud",
    "dgx-cloud",
    "korthikanti",
    "megascale",
    "torchtune",
    "litgpt",
    "liger",
    "unsloth",
    "huggingface/peft",
    "perf_train_gpu_one",
    "float8",
    "mxfp8",
    "torchao",
    "qwen",
)


def test_the_casebook_has_the_everyday_questions() -> None:
    assert len(CASES) >= 20
    ids = [c["id"] for c in CASES]
    assert len(set(ids)) == len(ids), "case ids are unique"
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*", i) for i in ids)
    hardware = {_flags(c["argv"])[1].get("hardware") for c in CASES}
    # consumer cards, a T4, A100s, H100/H800 clusters, V100s and a CPU-only box
    for hw in (
        "rtx-4090",
        "rtx-3090",
        "t4",
        "a100-sxm-80gb",
        "h100-sxm-80gb",
        "v100-32gb",
        "cpu-laptop",
    ):
        assert hw in hardware, hw
    assert VERDICTS, "scriptable verdicts are part of the casebook"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_every_case_cites_a_published_source(case: dict[str, Any]) -> None:
    src = case["source"]
    assert set(src) == {"title", "url", "where"}
    assert re.fullmatch(r"https?://\S+", src["url"]), src["url"]
    assert len(src["title"]) > 10 and len(src["where"]) > 20
    text = " ".join(src.values()).lower()
    assert not [h for h in HELD_OUT if h in text], "held-out source"
    assert case["question"].strip()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_every_case_is_a_command_the_tool_takes(case: dict[str, Any]) -> None:
    model, kw = _flags(case["argv"])
    get_model_profile(model)  # raises for an unknown id
    assert kw["hardware"] in load_hardware_profiles()
    if case.get("kind") == "verdict":
        assert case["expect_exit"] in (0, 3)
        assert set(case["expect_json"]) <= {"fits", "verdict"}
        return
    expect = case["expect"]
    assert expect and set(expect) <= {*EXPECT_FIELDS, "absent_savers"}
    assert all(isinstance(v, list) and v for v in expect.values())
    recipe = case.get("recipe")
    if recipe is not None:
        assert set(recipe) <= set(RECIPE_FIELDS)
        Precision(recipe.get("precision", "bf16-mixed"))
        Task(recipe.get("task", "pretrain"))
        Sharding(recipe.get("sharding", "none"))
        Checkpointing(recipe.get("checkpointing", "none"))
        Offload(recipe.get("offload", "none"))
        Attention(recipe.get("attention", "flash"))


def test_bert_at_a_32k_batch_agrees_with_the_lamb_recipe() -> None:
    # You et al. 2019: LAMB at 32k sequences; the pick must make that choice.
    case = next(c for c in PICKS if c["id"] == "bert-large-32k-64xa100")
    row = run_pick_case(case)
    assert row["status"] == "agrees", row
