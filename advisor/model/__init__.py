"""The model: its spec and typed shape, family traits, the block inventory, exact parameter
counts, the shipped profiles and sizes, and the built-in Hugging Face config readers.

The general path for other ``model_type`` values (:mod:`advisor.model.hfmeta`, which needs
``transformers``) is imported from its module, not from here.
"""

from advisor.model.hf_config import (
    HF_TYPES,
    UnsupportedModelType,
    load_hf_config,
    spec_from_hf_config,
)
from advisor.model.profiles import (
    DEFAULT_LADDER,
    NEAREST_TOLERANCE,
    get_model_profile,
    interpolate_llama_style,
    load_model_profiles,
    resolve_model_size,
)
from advisor.model.shape import (
    Arch,
    BlockNorms,
    CnnBlock,
    CnnShape,
    MlaShape,
    Mlp,
    NamedShapes,
    Norm,
    Position,
    QkNorm,
    Shape,
    SsmShape,
    TransformerShape,
)
from advisor.model.spec import ModelSpec
from advisor.model.traits import FamilyTraits, ModuleLayout, family_traits

__all__ = [
    "DEFAULT_LADDER",
    "HF_TYPES",
    "NEAREST_TOLERANCE",
    "Arch",
    "BlockNorms",
    "CnnBlock",
    "CnnShape",
    "FamilyTraits",
    "MlaShape",
    "Mlp",
    "ModelSpec",
    "ModuleLayout",
    "NamedShapes",
    "Norm",
    "Position",
    "QkNorm",
    "Shape",
    "SsmShape",
    "TransformerShape",
    "UnsupportedModelType",
    "family_traits",
    "get_model_profile",
    "interpolate_llama_style",
    "load_hf_config",
    "load_model_profiles",
    "resolve_model_size",
    "spec_from_hf_config",
]
