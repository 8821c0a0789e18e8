"""DualPipe's memory against the DeepSeek-V3 report (arXiv:2412.19437, sec. 3.2.1, Table 2):
each device keeps the parameters of two stages ("DualPipe requires keeping two copies of the
model parameters"; Parameter 2x against 1F1B's 1x) and PP + 1 micro-batches of a stage's
activations against 1F1B's PP. The copy is its own component, ``dualpipe_weights``."""

from __future__ import annotations

import pytest

from advisor.config import MoeOverlap, Precision, Sharding, Stack, Task, TrainingConfig
from advisor.memory import estimate_memory, pipeline_split
from advisor.memory.derived import MemoryModel
from advisor.memory.pipeline import dualpipe_schedule, inflight_block_microbatches
from advisor.model import load_model_profiles
from advisor.rules.taxonomy import load_taxonomy

ADAMW = load_taxonomy().get("adamw")
PROFILES = load_model_profiles()


def _config(overlap: MoeOverlap, pp: int = 4, accumulation: int = 16) -> TrainingConfig:
    return TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.BF16_MIXED,
        micro_batch=1,
        seq_len=4096,
        grad_accumulation=accumulation,
        gpus=1,
        pipeline_parallel=pp,
        sharding=Sharding.NONE,
        stack=Stack.FUSED,
        moe_overlap=overlap,
    )


def test_each_device_keeps_two_stages_of_parameters_in_bf16() -> None:
    # Llama 3.1 8B's 32 blocks over 4 stages: rank 0 holds blocks 0-7 and the embedding,
    # and under DualPipe also the last stage (blocks 24-31, the final norm, the LM head);
    # the last rank the mirror image. Either way the device's parameters are two stages',
    # 16 blocks and every non-block tensor, in bf16 (2 bytes): Table 2's "Parameter 2x".
    spec = PROFILES["llama-3.1-8b"]
    h, vocab = spec.hidden_size, spec.vocab_size
    outside = 2 * vocab * h + h  # embedding, untied LM head, final norm
    block = (spec.parameter_count() - outside) / spec.num_layers
    est = estimate_memory(spec, _config(MoeOverlap.DUALPIPE), optimizer=ADAMW)
    two_stages = 2 * (16 * block + outside)
    held = est.breakdown["weights"] + est.breakdown["dualpipe_weights"]
    assert held == pytest.approx(two_stages, rel=1e-6)
    plain = estimate_memory(spec, _config(MoeOverlap.NONE), optimizer=ADAMW)
    assert "dualpipe_weights" not in plain.breakdown
    assert any("two copies of the model parameters" in n for n in est.notes)
    # The copy stays for the whole step, as the weights do.
    for phase in est.phases:
        assert phase.components.get("dualpipe_weights") == est.breakdown["dualpipe_weights"]


@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_activations_in_flight_are_pp_plus_one_against_one_f_one_b_pp(pp: int) -> None:
    # Table 2: activation memory PP + 1 (DualPipe) against PP (1F1B), in micro-batches of
    # one stage, when a step runs at least that many micro-batches.
    model = MemoryModel(PROFILES["deepseek-v3"])
    split = pipeline_split(61, pp)
    _split, held, chunks = dualpipe_schedule(model, pp, 4 * pp)
    first = inflight_block_microbatches(split, 0, 4 * pp)
    assert first == pp * sum(split[0])
    for r in range(pp):
        assert held[r] == (pp + 1) * sum(split[r])
        assert chunks[r] == (pp + 1,)


def test_dualpipe_needs_more_memory_than_one_f_one_b() -> None:
    spec = PROFILES["llama-3.1-8b"]
    dual = estimate_memory(spec, _config(MoeOverlap.DUALPIPE), optimizer=ADAMW)
    plain = estimate_memory(spec, _config(MoeOverlap.NONE), optimizer=ADAMW)
    assert dual.total_bytes > plain.total_bytes
