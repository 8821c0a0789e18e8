"""The pure half of the general config path: placing tensors by role (no torch needed)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from advisor.errors import UserError
from advisor.model.hfgeneral import spec_from_raw
from advisor.model.inventory import RawModel, RawParam, build_inventory


def _mixtral_v4(experts: int = 3) -> tuple[RawModel, int]:
    """Mixtral as transformers 4 named it: a ModuleList of experts with w1/w2/w3 each."""
    params = [RawParam(name="model.embed_tokens.weight", shape=(100, 16), owner="Embedding")]
    for i in range(2):
        b = f"model.layers.{i}."
        for n in "qkvo":
            shape = (16, 16) if n in "qo" else (8, 16)
            params.append(
                RawParam(
                    name=f"{b}self_attn.{n}_proj.weight",
                    shape=shape,
                    owner="Linear",
                    parent="MixtralAttention",
                )
            )
        params.append(
            RawParam(
                name=f"{b}block_sparse_moe.gate.weight",
                shape=(experts, 16),
                owner="Linear",
                parent="MixtralSparseMoeBlock",
            )
        )
        for e in range(experts):
            for w in ("w1", "w2", "w3"):
                params.append(
                    RawParam(
                        name=f"{b}block_sparse_moe.experts.{e}.{w}.weight",
                        shape=(16, 24) if w == "w2" else (24, 16),
                        owner="Linear",
                        parent="MixtralBlockSparseTop2MLP",
                    )
                )
        for n in ("input_layernorm", "post_attention_layernorm"):
            params.append(RawParam(name=f"{b}{n}.weight", shape=(16,), owner="MixtralRMSNorm"))
    params += [
        RawParam(name="model.norm.weight", shape=(16,), owner="MixtralRMSNorm"),
        RawParam(name="lm_head.weight", shape=(100, 16), owner="Linear"),
    ]
    raw = RawModel(
        reader="hand-written",
        model_type="mixtral",
        params=tuple(params),
        block_lists=("model.layers",),
        rotary=True,
        attrs={
            "vocab_size": 100,
            "num_attention_heads": 2,
            "head_dim": 8,
            "experts_per_token": 2,
            "act": "silu",
            "max_position_embeddings": 64,
        },
    )
    return raw, sum(math.prod(p.shape) for p in params)


def test_a_module_list_of_experts_maps_onto_the_plain_moe_fields() -> None:
    raw, total = _mixtral_v4()
    spec = spec_from_raw(raw, {}, Path("mixtral.json"))
    assert spec.inventory is None  # the fields rebuild every tensor
    assert (spec.num_experts, spec.experts_per_token, spec.moe_intermediate_size) == (3, 2, 24)
    assert spec.parameter_count() == total
    assert spec.active_parameter_count() == total - 2 * 1 * 3 * 24 * 16


def test_identical_blocks_form_one_group_in_layer_order() -> None:
    raw, _ = _mixtral_v4()
    inv = build_inventory(raw)
    assert [g.count for g in inv.groups] == [2] and inv.layout == (0, 0)
    roles = {t.role for t in inv.groups[0].tensors}
    assert {"q", "k", "v", "o", "router", "expert_gate", "expert_up", "expert_down"} <= roles


def test_a_tensor_outside_every_known_role_is_named() -> None:
    raw, _ = _mixtral_v4()
    odd = RawParam(name="model.layers.0.mystery.weight", shape=(4, 4), owner="Mystery")
    bad = raw.model_copy(update={"params": (*raw.params, odd)})
    with pytest.raises(UserError, match=re.escape("cannot place module 'model.layers.0.mystery'")):
        spec_from_raw(bad, {}, Path("mixtral.json"))
