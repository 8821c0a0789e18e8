"""The block inventory (advisor.model.blocks) and the four lists derived from it agree:
the exact parameter counts (HF names and shapes), the memory model's tensors, a dense
block's matmuls in forward order, and the cost model's weight GEMMs with their TP split."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from advisor.cost.shape import weight_matrices
from advisor.memory import block_matmuls, param_tensors
from advisor.memory.params import Role
from advisor.model import get_model_profile

FAMILIES = ["llama-3.1-8b", "gpt2", "phi-4", "mixtral-8x7b", "deepseek-v3", "bert-large"]
_MLP = {"gate", "up", "down", "gate_up"}


@pytest.mark.parametrize("model", FAMILIES)
def test_memory_tensors_count_the_blocks_exactly(model: str) -> None:
    spec = get_model_profile(model)
    blocks = sum(n * sum(math.prod(s) for _, s in g) for n, g in spec.layer_groups())
    memory = sum(t.numel * t.count for t in param_tensors(spec) if t.per_layer)
    assert memory == blocks


@pytest.mark.parametrize("model", FAMILIES)
def test_matmuls_are_the_memory_models_dense_matrices(model: str) -> None:
    """Forward-order matmuls: the same (out, in) as the memory model's attention matrices
    and (dense models) its MLP matrices; ``plain`` exactly where no bias tensor exists
    (GPT-2's Conv1D: never)."""
    spec = get_model_profile(model)
    tensors = param_tensors(spec)
    matrices = [t for t in tensors if t.per_layer and len(t.shape) == 2 and not t.expert]
    names = {t.name for t in tensors}
    matmuls = block_matmuls(spec)
    attn = [m for m in matmuls if m.name not in _MLP]
    assert [(m.name, (m.out, m.inp)) for m in attn] == [
        (t.name, t.shape)
        for t in matrices
        if t.name not in _MLP | {"router"} and not t.name.startswith("shared_")
    ]
    if not spec.moe_layer_count():
        assert [(m.name, (m.out, m.inp)) for m in matmuls if m.name in _MLP] == [
            (t.name, t.shape) for t in matrices if t.name in _MLP
        ]
    for m in matmuls:
        assert m.plain == (f"{m.name}_bias" not in names and not spec.traits.conv1d)
    # Megatron's split: the output projection and down projections are row-parallel.
    assert {m.name for m in matmuls if m.row} == {"o", "down"}
    assert {t.name for t in matrices if t.row} <= {"o", "down", "shared_down"}


@pytest.mark.parametrize("model", FAMILIES)
def test_cost_gemms_are_the_commonest_block(model: str) -> None:
    """The cost model's GEMMs of the commonest block: the memory model's matrices of that
    block (routed experts per expert), with the same row-parallel split."""
    spec = get_model_profile(model)
    gemms = weight_matrices(spec)
    tensors = [t for t in param_tensors(spec) if t.per_layer and len(t.shape) == 2]
    moe = spec.moe_layer_count() > spec.num_layers - spec.moe_layer_count()

    def in_block(name: str, expert: bool) -> bool:
        if expert or name == "router" or name.startswith("shared_"):
            return moe
        return name not in _MLP or not moe

    block = [t for t in tensors if in_block(t.name, t.expert)]
    expected = Counter((t.shape[0], t.shape[1], t.row, t.expert) for t in block)
    got: Counter[tuple[int, int, bool, bool]] = Counter()
    for n, k, row, expert in gemms:
        if expert and n == 2 * spec.expert_intermediate_size and not row:
            # transformers 5's fused gate_up of the experts: the memory model's gate and up
            got[(n // 2, k, row, expert)] += 2
        else:
            got[(n, k, row, expert)] += 1
    assert got == expected


@pytest.mark.parametrize("model", FAMILIES)
def test_inventory_names_and_roles(model: str) -> None:
    """Every matrix of the inventory has one HF name, and its role's split follows
    Megatron: o and down row-parallel, everything else column-parallel."""
    spec = get_model_profile(model)
    for group in spec.block.groups:
        names = [t.name for t in group.tensors]
        assert len(names) == len(set(names))
        for t in group.tensors:
            if t.matrix is not None:
                assert t.row == (t.role in ("o", "down", "shared_down")), t
                assert t.name.endswith("weight") or t.stacked
    roles = {t.role for g in spec.block.groups for t in g.tensors}
    expected = {
        "llama-3.1-8b": {"q", "k", "v", "o", "gate", "up", "down", "norm"},
        "gpt2": {"qkv", "o", "up", "down", "norm"},
        "phi-4": {"qkv", "o", "gate_up", "down", "norm"},
        "mixtral-8x7b": {"q", "k", "v", "o", "router", "gate_up", "down", "norm"},
        "bert-large": {"q", "k", "v", "o", "up", "down", "norm"},
    }
    if model in expected:
        assert roles == expected[model]
    else:  # DeepSeek-V3: MLA, 3 dense layers, routed and shared experts
        assert {"q_a", "q_a_norm", "q", "kv_a", "kv_a_norm", "kv_b", "shared_down"} <= roles
        assert [g.count for g in spec.block.groups] == [3, 58]


def test_gpt2_conv1d_is_stored_transposed() -> None:
    spec = get_model_profile("gpt2")
    qkv = next(t for t in spec.block.dense if t.role == "qkv" and not t.bias)
    assert qkv.name == "attn.c_attn.weight"
    assert qkv.shape == (768, 2304) and qkv.matrix == (2304, 768)
    assert Role.LAYER_MATRIX is next(t for t in param_tensors(spec) if t.name == "qkv").role
