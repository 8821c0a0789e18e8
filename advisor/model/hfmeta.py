"""Read a model's parameters off the real ``transformers`` module, built on the meta device.

The general path for a ``config.json`` whose ``model_type`` no built-in family of
:mod:`advisor.model.hf_config` reads. ``transformers`` is the field's own reader of its configs
(an optional extra: ``pip install optadvise[hf]``): the config object is built from the
local dict with ``AutoConfig.for_model`` (no hub id, no download, no remote code) and the
model instantiated under ``torch.device("meta")`` (shapes, no storage). What is read —
every parameter's name, shape and owning module, shared (tied) tensors once — is cached
as JSON in the data cache, keyed by the config's content and the transformers version, so
a second run imports neither torch nor transformers.

Only this module imports torch and transformers for the general path, and only when a
config needs it; the common path (the built-in families) never comes here.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advisor import notes
from advisor.data.cache import cached_value
from advisor.errors import UserError
from advisor.model.hf_config import UnsupportedModelType, spec_from_hf_config
from advisor.model.hfgeneral import behaviour_notes, spec_from_raw
from advisor.model.inventory import RawModel, RawParam
from advisor.model.spec import ModelSpec

if TYPE_CHECKING:
    from transformers import AutoConfig, PretrainedConfig

_MODEL_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_HINT = "pass a Hugging Face config.json (or the model folder holding it)"
# Keys that never shape the module, or that would make transformers run or fetch code.
_DROPPED = ("auto_map", "quantization_config", "_name_or_path", "transformers_version")
_ACT_KEYS = (
    "hidden_act",
    "hidden_activation",
    "activation_function",
    "feed_forward_proj",
    "mlp_hidden_act",
    "dense_act_fn",
)
_TOPK_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_topk", "top_k")


def spec_from_any_config(cfg: Any, p: Path) -> ModelSpec:
    """The spec of a parsed config.json: a built-in family's reader when one covers its
    ``model_type`` (or a vision-language model's ``text_config``), else the general path.

    Raises:
        UserError: as :func:`advisor.model.hf_config.spec_from_hf_config`; for the general path
            also when transformers is missing, does not know the model_type, cannot build
            the model, or a module cannot be placed (one line naming it).
    """
    try:
        return spec_from_hf_config(cfg, p)
    except UnsupportedModelType:
        # NOTE: transformers names its model types in lower snake case; anything else (a
        # list, "not-a-model") is refused here, before torch and transformers are imported.
        if not isinstance(cfg.get("model_type"), str) or not _MODEL_TYPE.match(cfg["model_type"]):
            raise
    text = cfg.get("text_config")
    if isinstance(text, dict) and isinstance(text.get("model_type"), str):
        # A vision-language model whose language tower is a built-in family (LLaVA: llama).
        tower = {
            "_name_or_path": cfg.get("_name_or_path"),
            "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
            **text,
        }
        try:
            return spec_from_hf_config(tower, p)
        except UnsupportedModelType:
            pass
    try:
        raw = read_model(cfg)
    except UserError as exc:
        raise UserError(f"{p}: {exc.message}", exc.hint) from None
    spec = spec_from_raw(raw, cfg, p)
    what = f"{spec.name}: model_type {raw.model_type!r} read by {raw.reader}"
    unseen = behaviour_notes(raw)
    if spec.inventory is None and not unseen:
        notes.post(f"{what}; every tensor maps onto the {spec.family} block fields")
    else:
        approximated = (*(spec.inventory.approximated if spec.inventory else ()), *unseen)
        notes.post(f"{what}; parameters exact, activations approximate: " + "; ".join(approximated))
    return spec


def read_model(cfg: dict[str, Any]) -> RawModel:
    """What the meta-device model of ``cfg`` holds (cached by the config's content).

    Raises:
        UserError: see :func:`spec_from_any_config`.
    """
    model_type = str(cfg.get("model_type"))
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"model_type {model_type!r} is not a built-in family and transformers is not "
            "installed to read it",
            "pip install 'optadvise[hf]' (transformers reads any architecture's config)",
        ) from None
    key = f"transformers {version}\0" + json.dumps(cfg, sort_keys=True)
    return cached_value("hfmeta", key, lambda: _read(cfg, version), RawModel)


def _read(cfg: dict[str, Any], version: str) -> RawModel:
    try:
        import torch
        import transformers
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
        )
    except ImportError as exc:  # installed but unusable (a broken or blocked import)
        raise UserError(
            f"model_type {cfg.get('model_type')!r} is not a built-in family and "
            f"{exc.name or 'transformers'} cannot be imported to read it",
            "pip install 'optadvise[hf]' (transformers reads any architecture's config)",
        ) from None

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    model_type = str(cfg.get("model_type"))
    config = _config(AutoConfig, cfg, model_type, version)
    text = config.get_text_config(decoder=True)
    synthesized: tuple[str, ...] = ()
    try:
        with torch.device("meta"):
            model = None
            for auto in (AutoModelForCausalLM, AutoModelForSeq2SeqLM):
                try:
                    model = auto.from_config(text)  # type: ignore[no-untyped-call]
                    break
                except ValueError as exc:
                    if "Unrecognized configuration class" not in str(exc):
                        raise
            if model is None:
                # A language tower with no causal-LM class of its own (Qwen2-VL's text
                # model): its LM head lives in the VLM, Linear(hidden, vocab, bias=False).
                model = AutoModel.from_config(text)  # type: ignore[no-untyped-call]
                tied = bool(getattr(config, "tie_word_embeddings", False))
                if not tied:
                    synthesized = ("lm_head.weight",)
    except UserError:
        raise
    except Exception as exc:  # NOTE: the module's constructor checks the shapes its way
        raise UserError(
            f"{model_type}: transformers cannot build the model: {_line(exc)}", _HINT
        ) from None
    return RawModel(
        reader=f"transformers {version}, {type(model).__name__} on the meta device",
        model_type=str(getattr(text, "model_type", model_type)),
        encoder_decoder=bool(getattr(text, "is_encoder_decoder", False)),
        params=tuple(_params(model, text, synthesized)),
        block_lists=tuple(_block_lists(model)),
        rotary=any("inv_freq" in n for n, _ in model.named_buffers()),
        attrs=_attrs(text),
        synthesized=synthesized,
    )


def _config(
    auto_config: type[AutoConfig], cfg: dict[str, Any], model_type: str, version: str
) -> PretrainedConfig:
    """The config object, built from the local dict (no hub id, no download, no remote code).

    Raises:
        UserError: when transformers does not know the model type or rejects the config.
    """
    kwargs = {k: v for k, v in cfg.items() if k not in (*_DROPPED, "model_type")}
    try:
        return auto_config.for_model(model_type, **kwargs)
    except ValueError as exc:
        if "Unrecognized model" in str(exc):
            raise UserError(
                f"model_type {model_type!r} is unknown to transformers {version}",
                "check the config's model_type, or upgrade transformers",
            ) from None
        raise UserError(
            f"{model_type}: transformers rejects the config: {_line(exc)}", _HINT
        ) from None
    except Exception as exc:  # NOTE: a config class's own checks raise anything
        raise UserError(
            f"{model_type}: transformers rejects the config: {_line(exc)}", _HINT
        ) from None


def _params(model: Any, text: Any, synthesized: tuple[str, ...]) -> list[RawParam]:
    """Every parameter's name, shape, owning module and its parent (tied tensors once), plus
    the LM head a language tower leaves to its VLM."""
    modules = dict(model.named_modules())
    params = []
    for name, prm in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        parent = owner.rsplit(".", 1)[0] if "." in owner else ""
        params.append(
            RawParam(
                name=name,
                shape=tuple(int(d) for d in prm.shape),
                owner=type(modules.get(owner, model)).__name__,
                parent=type(modules.get(parent, model)).__name__ if owner else "",
            )
        )
    hidden = getattr(text, "hidden_size", None)
    vocab = getattr(text, "vocab_size", None)
    if synthesized and isinstance(hidden, int) and isinstance(vocab, int):
        params.append(RawParam(name="lm_head.weight", shape=(vocab, hidden), owner="Linear"))
    return params


def _block_lists(model: Any) -> list[str]:
    """The outermost module lists that hold parameters: the model's stacks of blocks."""
    import torch

    lists: list[str] = []
    for name, mod in model.named_modules():
        if (
            isinstance(mod, torch.nn.ModuleList)
            and len(mod) > 0
            and not any(name.startswith(done + ".") for done in lists)
            and any(True for _ in mod.parameters())
        ):
            lists.append(name)
    return lists


def _attrs(text: Any) -> dict[str, int | float | str | bool | None]:
    def scalar(value: Any) -> int | float | str | bool | None:
        return value if isinstance(value, int | float | str | bool) else None

    out: dict[str, int | float | str | bool | None] = {}
    for key in (
        "vocab_size",
        "num_attention_heads",
        "num_heads",
        "mamba_num_heads",
        "head_dim",
        "max_position_embeddings",
        "n_positions",
        "state_size",
        "ssm_state_size",
        "n_groups",
        "chunk_size",
    ):
        try:
            out[key] = scalar(getattr(text, key, None))
        except Exception:  # NOTE: an attribute_map to a missing key raises on some classes
            out[key] = None
    for key in ("use_parallel_residual", "parallel_attn", "attention_chunk_size", "use_qk_norm"):
        out[key] = scalar(getattr(text, key, None))
    out["act"] = next((str(v) for k in _ACT_KEYS if (v := getattr(text, k, None))), None)
    out["experts_per_token"] = next(
        (int(v) for k in _TOPK_KEYS if isinstance(v := getattr(text, k, None), int)), None
    )
    factor = getattr(text, "partial_rotary_factor", None) or getattr(text, "rotary_pct", None)
    rope = getattr(text, "rope_parameters", None)
    if factor is None and isinstance(rope, dict):
        factor = rope.get("partial_rotary_factor")
    out["partial_rotary_factor"] = float(factor) if isinstance(factor, int | float) else None
    return out


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
