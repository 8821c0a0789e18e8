"""The hf stack's measured bytes (advisor/cost/hfbytes.py) against the stored measurement
(benchmarks/results/eager_bytes.json), against per-op hand counts of transformers' source
under CUDA autocast's op lists, and, marked heavy, against a fresh measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advisor.config import Precision
from advisor.cost.hfbytes import HF_BYTES, hf_bytes
from advisor.model.traits import ModuleLayout

ROOT = Path(__file__).resolve().parents[2]
STORED = json.loads((ROOT / "benchmarks" / "results" / "eager_bytes.json").read_text())
_FIELDS = (
    "score_bytes_per_element_forward",
    "score_bytes_per_element_backward",
    "mask_bytes_per_element_forward",
    "mask_bytes_per_element_backward",
    "h_units_forward",
    "h_units_backward",
    "f_units_forward",
    "f_units_backward",
)


def _key(case: dict[str, object]) -> tuple[str, str, str, bool]:
    return (
        str(case["family"]),
        str(case["attention"]),
        str(case["mode"]),
        bool(case["dropout"]),
    )


def test_the_table_is_the_measurement() -> None:
    cases = STORED["cases"]
    # 4 families x 2 attentions x 5 modes, with and without dropout but Llama (none)
    assert len(cases) == 70
    assert set(HF_BYTES) == {_key(c) for c in cases}
    for c in cases:
        row = HF_BYTES[_key(c)]
        for got, field in zip(row, _FIELDS, strict=True):
            assert got == pytest.approx(c[field], abs=5e-4), (_key(c), field)


def test_gpt2_tanh_gelu_moves_what_its_source_says_under_autocast() -> None:
    # NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3)))) on
    # the fp16 output of c_fc. pow is on CUDA autocast's fp32 list: x is cast to fp32 and
    # everything after it is fp32; the fp32 result is cast back for c_proj's addmm.
    ops = [
        2 + 2,  # 0.5 * x (fp16)
        2 + 4,  # autocast's cast of x to fp32 for pow
        4 + 4,  # pow(x, 3)
        4 + 4,  # 0.044715 * ...
        2 + 4 + 4,  # x (fp16) + ... (fp32)
        4 + 4,  # sqrt(2/pi) * ...
        4 + 4,  # tanh
        4 + 4,  # 1 + ...
        2 + 4 + 4,  # (0.5 * x) * ... -> fp32
        4 + 2,  # cast to fp16 for c_proj
    ]
    row = hf_bytes(ModuleLayout.GPT2, False, Precision.AMP_FP16, dropout=True)
    assert row.f_fwd == sum(ops) == 76
    # Llama's SwiGLU in bf16: silu(gate) (read 2, write 2) and the product (2 + 2, 2)
    assert hf_bytes(ModuleLayout.LLAMA, False, Precision.BF16_MIXED, False).f_fwd == 4 + 6


def test_gpt2_eager_scores_move_what_its_source_says_under_autocast() -> None:
    # eager_attention_forward: matmul (fp16 out), * scaling, + the fp32 additive mask
    # (promotes to fp32), softmax (fp32), .type(value.dtype), native_dropout (1-byte mask),
    # the PV matmul reads the probabilities.
    fwd = 2 + (2 + 2) + (2 + 4) + (4 + 4) + (4 + 2) + (2 + 2 + 1) + 2
    row = hf_bytes(ModuleLayout.GPT2, True, Precision.AMP_FP16, dropout=True)
    assert row.score_fwd == fwd == 33
    # without dropout the native_dropout kernel is gone
    assert hf_bytes(ModuleLayout.GPT2, True, Precision.AMP_FP16, False).score_fwd == 33 - 5
    # the fp32 mask (batch x s x s) is read once per score element of each head
    assert row.mask_fwd == 4


def test_sdpa_materialises_no_scores_and_llama_has_no_dropout() -> None:
    for (_layout, attention, _mode, _dropout), row in HF_BYTES.items():
        if attention == "sdpa":
            assert row.score_fwd == row.score_bwd == row.mask_fwd == 0
    assert not any(k[0] == "llama" and k[3] for k in HF_BYTES)
    a = hf_bytes(ModuleLayout.LLAMA, True, Precision.AMP_BF16, dropout=True)
    assert a == hf_bytes(ModuleLayout.LLAMA, True, Precision.AMP_BF16, dropout=False)


@pytest.mark.heavy
@pytest.mark.parametrize(
    ("family", "attention", "mode", "dropout"),
    [
        ("gpt2", "eager", "amp-fp16", True),
        ("llama", "eager", "fp16", False),
        ("bert", "sdpa", "amp-bf16", True),
    ],
)
def test_the_table_matches_a_fresh_measurement(
    family: str, attention: str, mode: str, dropout: bool
) -> None:
    from benchmarks import eager_bytes

    fresh = eager_bytes.measure_case(family, attention, mode, dropout)
    row = HF_BYTES[(family, attention, mode, dropout)]
    for got, field in zip(row, _FIELDS, strict=True):
        assert got == pytest.approx(fresh[field], abs=5e-4), field


@pytest.mark.heavy
def test_every_block_moves_the_same_bytes() -> None:
    # block = 2 layers - 1 layer holds only if each added layer adds the same ops: the third
    # layer adds, kind by kind and phase by phase, exactly what the second did.
    from benchmarks import eager_bytes

    def totals(layers: int) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for e in eager_bytes._run("gpt2", layers, True, "eager", "amp-fp16"):
            for kind, n in e["bytes"].items():
                out[e["phase"], kind] = out.get((e["phase"], kind), 0) + n
        return out

    one, two, three = totals(1), totals(2), totals(3)
    assert {k: two[k] - one.get(k, 0) for k in two} == {k: three[k] - two[k] for k in three}
    assert two["forward", "score"] - one["forward", "score"] > 0
