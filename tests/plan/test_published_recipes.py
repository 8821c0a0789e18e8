"""Picks checked against published recipes (issue 22, points 6 and 8): past the critical
batch the layer-wise method wins on steps to the target, and frontier pre-training keeps
full-precision optimizer states where they fit."""

from __future__ import annotations

from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.model import get_model_profile
from advisor.plan import RecommendReport


def rec(model: str, **flags: object) -> RecommendReport:
    defaults: dict[str, object] = {"calibrate": False, **flags}
    spec = get_model_profile(model)
    return run_recommend(RecommendRequest.from_flags(spec=spec, **defaults))  # type: ignore[arg-type]


def test_bert_large_at_a_32k_batch_trains_with_lamb() -> None:
    # You et al. 2019 (Table 1): BERT-large at 32k sequences of 128 tokens with LAMB;
    # AdamW did not reach the target F1 at >= 16k. AdamW is ranked, not folded into LAMB's
    # row as "equivalent": it needs more steps.
    r = rec(
        "bert-large",
        hardware="a100-sxm-80gb",
        gpus=64,
        task="pretrain",
        global_batch=32768,
        seq_len="128",
        top=8,
    )
    top = r.recommendations[0]
    assert top.optimizer == "lamb"
    assert top.time_to_target_rel < 0.9
    assert top.steps_vs_adamw.high >= 1.0  # Nado et al. 2021: re-tuned AdamW matches
    lamb_rows = [x for x in r.recommendations if x.optimizer == "lamb"]
    assert all("adamw" not in x.also for x in lamb_rows)
    reasons = {x.rule for x in top.reasons}
    assert "lamb-for-very-large-transformer-batches" in reasons


def test_bert_large_at_an_ordinary_batch_is_not_pushed_to_lamb() -> None:
    # NVIDIA/Google BERT recipes at 256-4k sequences use Adam(W); Nado et al. 2021.
    r = rec(
        "bert-large",
        hardware="a100-sxm-80gb",
        gpus=8,
        task="pretrain",
        global_batch=256,
        seq_len="128",
        top=3,
    )
    assert r.recommendations[0].optimizer not in ("lamb", "lars")


def test_70b_pretraining_on_64_h100_keeps_full_precision_optimizer_states() -> None:
    # Llama 3 (Dubey et al. 2024) and torchtitan/Megatron recipes keep fp32 AdamW moments;
    # 32-bit states fit here (FSDP over 64 devices), so no bitsandbytes 8-bit states.
    r = rec("llama-3.1-70b", hardware="h100-sxm-80gb", gpus=8, nodes=8, task="pretrain", top=5)
    top = r.recommendations[0]
    assert "optimizer-states-8bit" not in top.memory_savers
    assert "8bit" not in top.optimizer
    eight_bit = [x.rule for x in top.reasons if x.rule == "eight-bit-states-when-memory-bound"]
    assert not eight_bit


def test_estimate_reports_the_large_batch_factor_of_one_configuration() -> None:
    # 512 sequences x 64 replicas = 32k: past the 16k threshold, LAMB's range; at 8 x 64 = 512
    # it is AdamW's count again (You et al. 2019; Nado et al. 2021).
    import json
    import os
    import subprocess
    import sys

    def steps(micro_batch: int) -> dict[str, float]:
        argv = [sys.executable, "-m", "advisor", "estimate", "--model", "bert-large",
                "--hardware", "a100-sxm-80gb", "--gpus", "64", "--task", "pretrain",
                "--seq-len", "128", "--micro-batch", str(micro_batch), "--optimizer", "lamb",
                "--json"]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=os.environ)
        return json.loads(out.stdout)["steps_vs_adamw"]  # type: ignore[no-any-return]

    big, small = steps(512), steps(8)
    assert big["central"] < 1.0 <= big["high"]
    assert small["central"] == 1.0
