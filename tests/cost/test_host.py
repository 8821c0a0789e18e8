"""The host term of an eager step (advisor.cost.host): its op counts against the stored
measurement (benchmarks/results/host_ops.json) and, marked heavy, against a fresh one of
real Hugging Face models; and how it composes with the device's time, max(host, device)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from advisor.config import Attention, Precision, Stack, Task, TrainingConfig
from advisor.cost import host, predict_step_time
from advisor.hardware.profiles import load_hardware_profiles
from advisor.model import get_model_profile
from advisor.model.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
MEASURED: dict[str, Any] = json.loads(
    (ROOT / "benchmarks" / "results" / "host_ops.json").read_text()
)
H100 = load_hardware_profiles()["h100-sxm-80gb"]
GPT2 = get_model_profile("gpt2")


def _ops(d: dict[str, int]) -> host.OpCount:
    return host.OpCount(d["all"], d["kernel"])


def test_the_block_table_is_the_measurement() -> None:
    rows = MEASURED["models"]
    keys = {(m["family"], m["attention"], m["dropout"], m["autocast"]) for m in rows}
    assert keys == set(host._MODEL_OPS), "every measured row in the table, nothing else"
    for m in rows:
        block, rest = host._MODEL_OPS[(m["family"], m["attention"], m["dropout"], m["autocast"])]
        assert block.step == _ops(m["block"])
        assert block.forward == _ops(m["block_forward"])
        assert rest.step == _ops(m["rest"])
        assert rest.forward == _ops(m["rest_forward"])


def test_the_optimizer_lora_and_compiled_tables_are_the_measurement() -> None:
    for o in MEASURED["optimizers"]:
        assert host._ADAMW_OPS[o["impl"]] == (_ops(o["per_tensor"]), _ops(o["per_group"]))
    assert _ops(MEASURED["clip_grad_norm"]["fixed"]) == host._CLIP_OPS
    assert MEASURED["clip_grad_norm"]["per_tensor"]["all"] == 0
    assert MEASURED["compiled_block"]["kernel"] == host._COMPILED_BLOCK_KERNELS
    for row in MEASURED["lora"]:
        frozen, per = host._LORA_OPS[(row["family"], row["autocast"])]
        for got, want in ((frozen, row["frozen_block"]), (per, row["per_adapter"])):
            assert tuple(got) == pytest.approx((want["all"], want["kernel"]), abs=0.01)
    for t in MEASURED["dispatch_timing"]:
        assert host._DISPATCH_S[t["family"]] == pytest.approx(t["seconds_per_op_median"], rel=0.01)


def test_measured_counts_follow_what_changes_them() -> None:
    """Facts of the measurement the model relies on: a for-loop AdamW launches about ten ops
    per tensor, foreach and fused a fixed few per group; SDPA dispatches fewer ops than eager
    attention; autocast adds casts; dropout adds its masks."""
    loop, foreach, fused = (host._ADAMW_OPS[i] for i in ("for-loop", "foreach", "fused"))
    assert loop[0].kernel >= 8 and foreach[0].kernel == 0 and fused[0].all == 0
    for family in ("gpt2", "llama", "opt", "bert"):
        eager = host._MODEL_OPS[(family, "eager", "none", False)][0].step
        sdpa = host._MODEL_OPS[(family, "sdpa", "none", False)][0].step
        cast = host._MODEL_OPS[(family, "sdpa", "none", True)][0].step
        assert sdpa.all < eager.all and cast.kernel > sdpa.kernel
    for family in ("gpt2", "opt", "bert"):
        none = host._MODEL_OPS[(family, "sdpa", "none", False)][0].step
        hidden = host._MODEL_OPS[(family, "sdpa", "hidden", False)][0].step
        assert hidden.kernel > none.kernel


def _config(**kw: Any) -> TrainingConfig:
    base: dict[str, Any] = {
        "task": Task.PRETRAIN,
        "precision": Precision.AMP_BF16,
        "attention": Attention.FLASH,
        "micro_batch": 1,
        "seq_len": 512,
        "stack": Stack.HF,
    }
    base.update(kw)
    return TrainingConfig(**base)


def _setting(spec: ModelSpec, c: TrainingConfig) -> Any:
    from advisor.cost.efficiency import efficiency_for
    from advisor.cost.memo import StepMemo
    from advisor.cost.setting import Setting, micro_batch_config

    held = StepMemo().model(spec, H100, None)
    return Setting(
        spec,
        micro_batch_config(c),
        None,
        H100,
        efficiency_for(H100),
        None,
        None,
        shape=held.shape,
        matrices=held.matrices,
        results=None,
    )


def test_a_small_eager_step_takes_the_hosts_time() -> None:
    """GPT-2 small at one 512-token sample on an H100: the host's ~1,700 ops take longer than
    the kernels; the micro-batch takes max(host, device), the excess a term of its own."""
    for acc in (1, 4):
        c = _config(grad_accumulation=acc)
        t = predict_step_time(GPT2, c, calibration=None, hardware=H100)
        assert "host_overhead" in t.components
        assert "host-bound eager" in t.components["host_overhead"].detail
        assert t.components["host_overhead"].seconds > 0
    c = _config()
    t = predict_step_time(GPT2, c, calibration=None, hardware=H100)
    h = host.micro_batch_host(_setting(GPT2, c), zeroth=False)
    assert h is not None
    device = sum(
        p.seconds for k, p in t.components.items() if k not in ("host_overhead", "optimizer_step")
    )
    assert h.seconds > device
    # max(host, device): the device's terms plus the excess are the host's time
    assert device + t.components["host_overhead"].seconds == pytest.approx(h.seconds, rel=1e-9)
    one = predict_step_time(GPT2, _config(grad_accumulation=1), calibration=None, hardware=H100)
    four = predict_step_time(GPT2, _config(grad_accumulation=4), calibration=None, hardware=H100)
    assert four.components["host_overhead"].seconds == pytest.approx(
        4 * one.components["host_overhead"].seconds, rel=1e-9
    )


def test_the_host_floor_does_not_grow_with_the_micro_batch() -> None:
    """Host-bound, twice the samples per micro-batch cost less than twice the time (the
    host's ops do not depend on the tokens); device-bound, the host term disappears."""
    small = predict_step_time(GPT2, _config(micro_batch=1), calibration=None, hardware=H100)
    double = predict_step_time(GPT2, _config(micro_batch=2), calibration=None, hardware=H100)
    assert double.seconds < 1.5 * small.seconds
    big = predict_step_time(
        GPT2, _config(micro_batch=32, seq_len=1024), calibration=None, hardware=H100
    )
    assert "host_overhead" not in big.components


def test_large_models_hide_the_host() -> None:
    """Llama 3.1 8B at 8k tokens: the host's work hides behind the kernels."""
    llama = get_model_profile("llama-3.1-8b")
    for stack in (Stack.HF, Stack.FUSED):
        c = _config(seq_len=8192, stack=stack, precision=Precision.BF16_MIXED)
        t = predict_step_time(llama, c, calibration=None, hardware=H100)
        assert "host_overhead" not in t.components


def test_no_host_term_on_a_cpu_target() -> None:
    cpu = load_hardware_profiles()["cpu-laptop"]
    t = predict_step_time(GPT2, _config(precision=Precision.FP32), calibration=None, hardware=cpu)
    assert "host_overhead" not in t.components


def test_the_compiled_stack_launches_fewer_ops() -> None:
    hf = predict_step_time(GPT2, _config(), calibration=None, hardware=H100)
    fused = predict_step_time(GPT2, _config(stack=Stack.FUSED), calibration=None, hardware=H100)
    assert fused.components["host_overhead"].seconds < hf.components["host_overhead"].seconds


def test_for_loop_optimizer_steps_wait_on_the_host() -> None:
    """A for-loop step over every tensor (an optimizer without a fused or foreach kernel)
    dispatches ~10 ops per tensor; foreach AdamW a fixed few per 36 tensors; bitsandbytes'
    8-bit optimizers one kernel per tensor."""
    llama = get_model_profile("llama-3.1-8b")
    s = _setting(llama, _config())
    loop = host.optimizer_host(s, host.optimizer_impl(False, False, False), local_params=8e9)
    each = host.optimizer_host(s, host.optimizer_impl(False, True, False), local_params=8e9)
    bnb = host.optimizer_host(s, host.optimizer_impl(True, False, True), local_params=8e9)
    fused = host.optimizer_host(s, host.optimizer_impl(True, False, False), local_params=8e9)
    assert loop is not None and each is not None and bnb is not None and fused is not None
    n = host.parameter_tensors(s)
    assert n == 32 * 9 + 4  # Llama 3.1 8B: 9 tensors per block, embeddings, norm, head
    assert loop.ops >= 10 * n and each.ops < loop.ops / 3
    # bitsandbytes' 8-bit step: one update kernel per tensor, between foreach and the loop
    assert bnb.launches >= n and fused.ops < n / 10


@pytest.mark.heavy
def test_counts_match_a_fresh_measurement() -> None:
    """Re-measure a subset with real transformers models and torch.optim: the stored table
    holds (a transformers or torch upgrade that changes the op mix fails here)."""
    pytest.importorskip("transformers")
    from benchmarks import host_ops

    for family, attention, dropout, autocast in (
        ("gpt2", "sdpa", "hidden", True),
        ("llama", "sdpa", "none", False),
        ("bert", "eager", "all", False),
    ):
        fresh = host_ops.count_model(family, attention, dropout, autocast)
        block, rest = host._MODEL_OPS[(family, attention, dropout, autocast)]
        assert _ops(fresh["block"]) == block.step
        assert _ops(fresh["rest"]) == rest.step
    for impl in ("for-loop", "foreach", "fused"):
        o = host_ops.count_optimizer(impl)
        assert host._ADAMW_OPS[impl] == (_ops(o["per_tensor"]), _ops(o["per_group"]))


@pytest.mark.heavy
def test_a_three_layer_model_dispatches_what_the_model_counts() -> None:
    """A 3-layer GPT-2 (a depth the table was not measured at): the ops its real step
    dispatches equal 3 blocks plus the rest, as micro_batch_host counts them."""
    pytest.importorskip("transformers")
    import torch

    from benchmarks import host_ops

    torch.manual_seed(0)
    counts = host_ops._count(host_ops._step(host_ops._model("gpt2", 3, "sdpa", "none"), 2, 16))
    measured = sum(counts.values())
    spec = ModelSpec.model_validate({**GPT2.model_dump(), "id": "gpt2-3", "num_layers": 3})
    h = host.micro_batch_host(_setting(spec, _config(precision=Precision.FP32)), zeroth=False)
    assert h is not None and h.ops == measured
