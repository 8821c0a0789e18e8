"""The built-in Hugging Face ``config.json`` readers, one table of differences per
``model_type`` (transformers 5): Llama and its descendants, OPT, GPT-2 and BERT.

A ``model_type`` none of them reads goes to the general path (:mod:`advisor.model.hfmeta`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from advisor.errors import UserError
from advisor.model.spec import (
    ID_PATTERN,
    Arch,
    BlockNorms,
    Mlp,
    ModelSpec,
    Norm,
    Position,
    QkNorm,
)
from advisor.model.traits import family_traits

# --- Hugging Face config.json ------------------------------------------------------------

LLAMA_LIKE = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "deepseek_v3",
)
HF_TYPES = ("bert", "gpt2", "opt", *LLAMA_LIKE, "gemma3")
# NOTE: what transformers 5 assumes when config.json omits a key (its config classes'
# defaults; tests/model/test_model_families.py checks this table against them). Real configs
# omit some: Gemma 3's multimodal configs state only a few text_config keys.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "mistral": {"num_key_value_heads": 8},
    "mixtral": {"num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2": {"num_key_value_heads": 32},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128},
    "qwen3_moe": {
        "num_key_value_heads": 4,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "gemma2": {
        "vocab_size": 256_000,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    "gemma3_text": {
        "vocab_size": 262_208,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131_072,
        "tie_word_embeddings": True,
    },
    "deepseek_v3": {
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 2048,
        "first_k_dense_replace": 3,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
    },
}
# NOTE: transformers 5 writes some keys under another name than the released configs use
# (its attribute_map): Qwen3-MoE's num_experts as num_local_experts, and so on.
_HF_ALIASES: dict[str, dict[str, str]] = {
    "mixtral": {"num_local_experts": "num_experts"},
    "qwen3_moe": {"num_experts": "num_local_experts"},
    "deepseek_v3": {"n_routed_experts": "num_local_experts"},
}
_HF_FAMILY = {"qwen3_moe": "qwen3moe", "gemma3_text": "gemma3", "deepseek_v3": "deepseekv3"}
_HF_NAME_FILE = "config.json"
_MAX_LAYERS = 10_000


class UnsupportedModelType(UserError):
    """A ``model_type`` no built-in family reads (the general path, advisor.model.hfmeta, may)."""


def load_hf_config(path: str | Path) -> ModelSpec:
    """Read a local Hugging Face ``config.json``, or the model folder holding one.

    Supported ``model_type`` values: llama (1, 2, 3.x: ``head_dim`` when stated; RoPE
    scaling has no parameters), mistral, mixtral, qwen2, qwen3 (q/k norms), qwen3_moe,
    gemma2, gemma3_text (and gemma3, whose ``text_config`` is read: the text decoder only,
    not the vision tower), phi3 (Phi-3, Phi-4: fused ``qkv_proj`` and ``gate_up_proj``),
    olmo2, deepseek_v3 (MLA, MoE with shared experts and dense first layers; the
    multi-token-prediction layer is not counted, as transformers does not build it), opt
    (``ffn_dim``, ``word_embed_proj_dim``, ``enable_bias``), gpt2 (``n_embd``, ``n_layer``,
    ``n_head``, ``n_inner`` None -> 4 h, ``n_positions``) and bert. A key that config.json
    omits takes the default transformers gives it for that model type.

    The model's name is ``_name_or_path`` when config.json states one; otherwise the
    folder holding ``config.json`` (a model folder, as downloaded), or the file's stem for
    a config saved under another name (``configs/qwen3-8b.json`` -> ``qwen3-8b``).

    Args:
        path: the config file, or a model folder with a ``config.json``.

    Returns:
        The spec, with ``source`` the file's ``file://`` URI and no published count.

    Raises:
        UserError: for a missing or unreadable file, invalid JSON, an unknown
            ``model_type``, a missing or invalid shape field, or an OPT variant with
            projected embeddings (OPT-350m) that is not modelled.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / _HF_NAME_FILE
    hint = "pass a Hugging Face config.json (or the model folder holding it)"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"model config {str(p)!r} not found", hint) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read model config {str(p)!r}: {exc}", hint) from exc
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{p}:{exc.lineno}: invalid JSON: {exc.msg}", "config.json must be a JSON object"
        ) from exc
    return spec_from_hf_config(cfg, p)


def spec_from_hf_config(cfg: Any, p: Path) -> ModelSpec:
    """The spec of a parsed ``config.json`` (see :func:`load_hf_config`); ``p`` is the file
    it was read from (its name and URI). The shell reads the file once, defensively, and
    hands the parsed object here, so nothing reads it a second time.

    Raises:
        UserError: as :func:`load_hf_config`; a shape field of the wrong JSON type (``true``
            or ``"1024"`` for a count) included.
    """
    hint = "pass a Hugging Face config.json (or the model folder holding it)"
    if not isinstance(cfg, dict):
        raise UserError(f"{p}: expected a JSON object, got {type(cfg).__name__}", hint)
    model_type = cfg.get("model_type")
    if model_type not in HF_TYPES:
        raise UnsupportedModelType(
            f"{p}: unsupported model_type {model_type!r}",
            f"supported: {', '.join(sorted(HF_TYPES))}; or use a shipped profile (--model) "
            "or a size",
        )
    if model_type == "gemma3":
        # Gemma 3 4B/12B/27B ship as image-text models; their decoder is text_config.
        text_cfg = cfg.get("text_config") or {}
        if not isinstance(text_cfg, dict):
            raise UserError(f"{p}: text_config is not a JSON object", hint)
        cfg = {"tie_word_embeddings": cfg.get("tie_word_embeddings", True), **text_cfg}
        cfg["model_type"] = model_type = "gemma3_text"
    fields = _hf_fields(str(model_type), cfg, p)
    name = hf_name(cfg, p)
    family = _HF_FAMILY.get(str(model_type), str(model_type))
    fields.update(
        id=slug(name, str(model_type)),
        name=name or str(model_type),
        family=family,
        source=p.resolve().as_uri(),
        traits=family_traits(family, fields["arch"]),
    )
    try:
        # NOTE: strict: JSON's true is not 1 head, and "1024" is not a width (the README
        # calls them errors); enum and tuple fields are built above as their own types.
        return ModelSpec.model_validate(fields, strict=True)
    except ValidationError as exc:
        errs = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '-'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"{p}: invalid model shape: {errs}", hint) from exc


def hf_name(cfg: dict[str, Any], p: Path) -> str:
    """The model's name: ``_name_or_path``, else the model folder, else the file's stem."""
    stated = cfg.get("_name_or_path")
    if isinstance(stated, str) and stated.strip().strip("/"):
        return stated.strip()
    resolved = p.resolve()
    return resolved.parent.name if resolved.name == _HF_NAME_FILE else resolved.stem


def _get(cfg: dict[str, Any], key: str, p: Path, model_type: str = "") -> Any:
    value = cfg.get(key)
    alias = _HF_ALIASES.get(model_type, {}).get(key)
    if value is None and alias is not None:
        value = cfg.get(alias)
    if value is None:
        value = HF_DEFAULTS.get(model_type, {}).get(key)
    if value is None:
        raise UserError(f"{p}: {key} missing", "a model's config.json states its shape in full")
    return value


def _opt(cfg: dict[str, Any], key: str, model_type: str, default: Any = None) -> Any:
    """An optional key: its value, else transformers' default for the model type."""
    if key in cfg:
        return cfg[key]
    return HF_DEFAULTS.get(model_type, {}).get(key, default)


def _int_list(value: Any, key: str, p: Path) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise UserError(f"{p}: {key} must be a list of layer indices", "see the model's config")
    return value


def _int(value: Any, key: str, p: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{p}: {key} must be an integer, got {value!r}", "see the model's config")
    return value


def _llama_like(model_type: str, cfg: dict[str, Any], p: Path) -> dict[str, Any]:
    """Llama and its descendants: one table of differences per model_type (transformers 5)."""

    def g(key: str) -> Any:
        return _get(cfg, key, p, model_type)

    def o(key: str, default: Any = None) -> Any:
        return _opt(cfg, key, model_type, default)

    heads = g("num_attention_heads")
    kv = o("num_key_value_heads")
    bias = bool(o("attention_bias", False))
    layers = _int(g("num_hidden_layers"), "num_hidden_layers", p)
    if not 0 < layers <= _MAX_LAYERS:
        # NOTE: the MoE branches list layer indices; the deepest released decoder has 126.
        raise UserError(
            f"{p}: num_hidden_layers {layers} is outside 1..{_MAX_LAYERS}",
            "a model's config.json states its real depth",
        )
    # NOTE: Qwen2 hard-codes q/k/v biases (and none on o_proj) whatever the config says;
    # Phi-3, Mistral, Mixtral and Gemma have no bias option.
    qkv_bias = {"qwen2": True, "phi3": False, "mistral": False, "mixtral": False}.get(
        model_type, bias
    )
    out_bias = False if model_type in ("qwen2", "phi3", "mistral", "mixtral") else bias
    fields: dict[str, Any] = dict(
        arch=Arch.DECODER,
        hidden_size=g("hidden_size"),
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv if kv is not None else heads,
        head_dim=o("head_dim"),
        intermediate_size=g("intermediate_size"),
        vocab_size=g("vocab_size"),
        max_position_embeddings=g("max_position_embeddings"),
        mlp=Mlp.GATED_GELU if model_type.startswith("gemma") else Mlp.GATED_SILU,
        norm=Norm.RMSNORM,
        position=Position.ROPE,
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=bool(o("mlp_bias", False)) if model_type == "llama" else False,
        tie_word_embeddings=bool(o("tie_word_embeddings", False)),
    )
    if model_type in ("qwen3", "qwen3_moe", "gemma3_text"):
        fields["qk_norm"] = QkNorm.HEAD
    if model_type == "olmo2":
        fields.update(qk_norm=QkNorm.FULL, block_norms=BlockNorms.POST)
    if model_type.startswith("gemma"):
        fields["block_norms"] = BlockNorms.SANDWICH
    if model_type == "phi3":
        fields.update(fused_qkv=True, fused_gate_up=True)
        factor = o("partial_rotary_factor", 1.0)
        if isinstance(factor, (int, float)) and 0 < factor < 1:
            # transformers' Phi3RotaryEmbedding: int(head_dim * partial_rotary_factor).
            hd = o("head_dim") or g("hidden_size") // heads
            fields["rotary_dim"] = int(hd * factor)
    if model_type == "mixtral":
        fields.update(
            num_experts=g("num_local_experts"), experts_per_token=g("num_experts_per_tok")
        )
    if model_type == "qwen3_moe":
        fields.update(_qwen3_moe_fields(g, o, layers, p))
    if model_type == "deepseek_v3":
        fields.update(_deepseek_v3_fields(g, o, heads, layers, p))
    return fields


def _qwen3_moe_fields(
    g: Callable[[str], Any], o: Callable[..., Any], layers: int, p: Path
) -> dict[str, Any]:
    """Qwen3-MoE's experts and its dense (mlp_only / off-step) layers; none for a dense one."""
    fields: dict[str, Any] = {}
    step = _int(g("decoder_sparse_step"), "decoder_sparse_step", p)
    only = set(_int_list(o("mlp_only_layers"), "mlp_only_layers", p))
    experts = _int(g("num_experts"), "num_experts", p)
    # transformers: a layer is sparse when it is not in mlp_only_layers, num_experts > 0
    # and (index + 1) is a multiple of decoder_sparse_step.
    dense = [
        i for i in range(layers) if i in only or experts <= 0 or step <= 0 or (i + 1) % step != 0
    ]
    fields.update(
        num_experts=experts,
        experts_per_token=g("num_experts_per_tok"),
        moe_intermediate_size=g("moe_intermediate_size"),
        dense_layers=tuple(dense),
    )
    if len(dense) == layers:  # no sparse layer at all: a dense Qwen3
        for key in ("num_experts", "experts_per_token", "moe_intermediate_size"):
            fields.pop(key)
        fields.pop("dense_layers")
    return fields


def _deepseek_v3_fields(
    g: Callable[[str], Any], o: Callable[..., Any], heads: Any, layers: int, p: Path
) -> dict[str, Any]:
    """DeepSeek-V3's multi-head latent attention, routed and shared experts, dense first layers."""
    fields: dict[str, Any] = {}
    mla: dict[str, int | None] = {
        key: _int(g(key), key, p)
        for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    }
    q_rank = o("q_lora_rank")  # null: a full q_proj (DeepSeek-V2-Lite)
    mla["q_lora_rank"] = None if q_rank is None else _int(q_rank, "q_lora_rank", p)
    # NOTE: transformers makes layer i an MoE layer when i >= first_k_dense_replace and
    # ignores moe_layer_freq (1 in every released DeepSeek-V2/V3 config).
    first_dense = _int(g("first_k_dense_replace"), "first_k_dense_replace", p)
    fields.update(
        mla=mla,
        head_dim=_int(g("qk_nope_head_dim"), "qk_nope_head_dim", p)
        + _int(g("qk_rope_head_dim"), "qk_rope_head_dim", p),
        num_key_value_heads=heads,  # MLA expands keys and values to every head
        num_experts=g("n_routed_experts"),
        experts_per_token=g("num_experts_per_tok"),
        moe_intermediate_size=g("moe_intermediate_size"),
        shared_experts=o("n_shared_experts") or 0,
        dense_layers=tuple(range(min(first_dense, layers))),
    )
    return fields


def _hf_fields(model_type: str, cfg: dict[str, Any], p: Path) -> dict[str, Any]:
    def g(key: str) -> Any:
        return _get(cfg, key, p)

    if model_type in LLAMA_LIKE:
        return _llama_like(model_type, cfg, p)
    if model_type == "opt":
        h = g("hidden_size")
        if cfg.get("word_embed_proj_dim", h) != h or not cfg.get("do_layer_norm_before", True):
            raise UserError(
                f"{p}: OPT with projected embeddings or post-LayerNorm (OPT-350m) is not modelled",
                "use opt-125m or opt-1.3b, whose blocks have the same kind",
            )
        bias = bool(cfg.get("enable_bias", True))
        return dict(
            arch=Arch.DECODER,
            hidden_size=h,
            num_layers=g("num_hidden_layers"),
            num_attention_heads=g("num_attention_heads"),
            intermediate_size=g("ffn_dim"),
            vocab_size=g("vocab_size"),
            max_position_embeddings=g("max_position_embeddings"),
            mlp=_act(cfg.get("activation_function", "relu")),
            norm=Norm.LAYERNORM,
            position=Position.LEARNED,
            # OPT's learned position table has 2 extra rows (a fairseq padding offset).
            learned_position_offset=2,
            qkv_bias=bias,
            out_bias=bias,
            mlp_bias=bias,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        )
    if model_type == "gpt2":
        h = g("n_embd")
        return dict(
            arch=Arch.DECODER,
            hidden_size=h,
            num_layers=g("n_layer"),
            num_attention_heads=g("n_head"),
            intermediate_size=cfg.get("n_inner") or 4 * h,
            vocab_size=g("vocab_size"),
            max_position_embeddings=g("n_positions"),
            mlp=_act(cfg.get("activation_function", "gelu_new")),
            norm=Norm.LAYERNORM,
            position=Position.LEARNED,
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        )
    # bert: transformers.BertModel, with its pooler (add_pooling_layer=True by default).
    return dict(
        arch=Arch.ENCODER,
        hidden_size=g("hidden_size"),
        num_layers=g("num_hidden_layers"),
        num_attention_heads=g("num_attention_heads"),
        intermediate_size=g("intermediate_size"),
        vocab_size=g("vocab_size"),
        max_position_embeddings=g("max_position_embeddings"),
        mlp=_act(cfg.get("hidden_act", "gelu")),
        norm=Norm.LAYERNORM,
        position=Position.LEARNED,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        type_vocab_size=cfg.get("type_vocab_size", 2),
        pooler=True,
    )


def _act(name: Any) -> Mlp:
    text = str(name).lower()
    return Mlp.RELU if text.startswith("relu") else Mlp.GELU


def slug(name: str, model_type: str) -> str:
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9.]+", "-", base)
    slug = re.sub(r"\.{2,}", ".", slug)
    slug = re.sub(r"(^|-)\.|\.(-|$)", r"\1\2", slug).strip("-.")
    slug = re.sub(r"-{2,}", "-", slug)
    return slug if re.fullmatch(ID_PATTERN, slug) else f"hf-{model_type}"
