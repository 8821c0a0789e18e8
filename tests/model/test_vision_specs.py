"""Vision Transformer specs: exact torchvision counts, the patch embedding as the encoder's
token table, and the inconsistencies a profile is refused for."""

from __future__ import annotations

import math
from typing import Any

import pytest

from advisor.model import get_model_profile
from advisor.model.spec import ModelSpec


@pytest.mark.parametrize(
    ("ident", "published", "blocks", "tokens"),
    [
        # torchvision ViT_B_16_Weights / ViT_L_16_Weights.IMAGENET1K_V1 meta num_params.
        ("vit-b-16", 86_567_656, 12, 197),
        ("vit-l-16", 304_326_632, 24, 197),
    ],
)
def test_vit_counts_are_torchvisions(ident: str, published: int, blocks: int, tokens: int) -> None:
    spec = get_model_profile(ident)
    assert spec.parameter_count() == spec.published_parameters == published
    assert spec.layer_repeats() == blocks
    assert spec.vision is not None and spec.vision.tokens == tokens
    assert spec.vocab_size == 3 * 16 * 16 and spec.max_position_embeddings == tokens
    outside = dict(spec.embedding_shapes())
    h = spec.hidden_size or 0
    assert outside["conv_proj.weight"] == (h, 3, 16, 16)
    assert outside["encoder.pos_embedding"] == (1, tokens, h)
    assert outside["heads.head.weight"] == (1000, h)
    assert spec.is_image and spec.image_size == 224


def _vit(**changes: Any) -> dict[str, Any]:
    raw = get_model_profile("vit-b-16").model_dump(exclude={"traits"})
    return raw | changes


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"vocab_size": 1000}, "patch width 768"),
        ({"max_position_embeddings": 512}, "tokens per image 197"),
        ({"vision": {"image_size": 225, "patch_size": 16}}, "not a multiple"),
        ({"arch": "decoder"}, "needs arch: encoder"),
        ({"pooler": True}, "no pooler"),
    ],
)
def test_inconsistent_vit_profiles_are_refused(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ModelSpec(**_vit(**changes))


def test_resnet_and_text_models_are_what_they_were() -> None:
    resnet = get_model_profile("resnet-50")
    assert resnet.is_image and resnet.image_size == 224 and resnet.vision is None
    bert = get_model_profile("bert-large")
    assert not bert.is_image and bert.image_size is None
    assert math.prod(dict(bert.embedding_shapes())["embeddings.word_embeddings.weight"]) > 0
