"""The model flags of estimate, calibrate and recommend, and reading a model they name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from advisor.errors import UserError
from advisor.shell.cli.common import (
    user_path,
)

ModelSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--model-size",
        help="Parameter count such as 125M, 1.3B, 7B, 70B or 1T; resolves to a canonical "
        "decoder shape (see `optadvise profiles list`).",
    ),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="A model profile id, e.g. llama-2-7b.")
]
ModelConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-config",
        help="A local Hugging Face config.json. Built-in readers: model_type bert, "
        "deepseek_v3, gemma2, gemma3, gemma3_text, gpt2, llama, mistral, mixtral, olmo2, opt, "
        "phi3, qwen2, qwen3, qwen3_moe; any other type transformers can build is read from its "
        "modules on the meta device (pip install 'optadvise[hf]').",
    ),
]


RopeScalingOpt = Annotated[
    float | None,
    typer.Option(
        "--rope-scaling",
        help="The RoPE scaling factor the run extends the model's context with (position "
        "interpolation, YaRN): allows --seq-len up to the context times this.",
    ),
]


def resolve_model(model_size: str | None, model: str | None, model_config: Path | None) -> Any:
    """The model the flags name (default 7B), bounded (see advisor.app.limits)."""
    from advisor.app.limits import MIN_PARAMETERS, check_bound, check_model
    from advisor.model import get_model_profile, resolve_model_size
    from advisor.units import parse_count

    given = [
        n
        for n, v in (
            ("--model-size", model_size),
            ("--model", model),
            ("--model-config", model_config),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both name a model", "give only one of them")
    if model_config is not None:
        spec = _load_model_config(model_config)
    elif model is not None:
        spec = get_model_profile(model)
    else:
        text = "7B" if model_size is None else model_size
        count = parse_count(text)
        if count < MIN_PARAMETERS and text.strip()[-1:].isdigit():
            raise UserError(
                f"--model-size {text!r} is {count:,} parameters",
                f"a size needs its suffix: did you mean {text.strip()}B? (K, M, B or T)",
            )
        check_bound("--model-size", count)
        spec = resolve_model_size(text)
        if count < spec.parameter_count() / 1.25:
            from advisor import notes

            notes.post(
                f"--model-size {text}: planning with {spec.name}'s shape "
                f"({spec.parameter_count() / 1e6:.0f}M parameters), the smallest profile; "
                "its memory and time over-estimate a smaller model (--model-config gives "
                "the exact shape)"
            )
    check_model(spec)
    return spec


# NOTE: a config.json is a few KB (with a label map, a few hundred KB); these limits only
# stop hostile files from costing memory or recursion before they are reported.
_CONFIG_MAX_BYTES = 8 * 1024**2
_CONFIG_MAX_DEPTH = 32
_CONFIG_MAX_NUMBER = 10.0**15


def _load_model_config(path: Path) -> Any:
    """Read a Hugging Face config.json defensively, then hand it to the family readers.

    Hostile or broken files (empty, binary, a byte-order mark, deep nesting, NaN or
    Infinity, numbers too large for any shape, wrong types) are user errors, one line each.
    """
    from advisor.data.safeio import describe, read_bounded
    from advisor.model.hfmeta import spec_from_any_config

    p = user_path(path, "--model-config")
    hint = "pass a Hugging Face config.json (or the model folder holding it)"
    try:
        if p.is_dir():
            p = p / "config.json"
        # NOTE: opened once and checked as opened (regular file, size): a FIFO or device
        # is refused, and a file swapped in after a check cannot skip the checks below.
        data = read_bounded(p, _CONFIG_MAX_BYTES)
    except FileNotFoundError:
        raise UserError(f"model config {str(p)!r} not found", hint) from None
    except OSError as exc:
        raise UserError(f"cannot read model config {str(p)!r}: {describe(exc)}", hint) from None
    if not data.strip():
        raise UserError(f"model config {str(p)!r} is empty", hint)
    if data.startswith(b"\xef\xbb\xbf"):
        raise UserError(
            f"model config {str(p)!r} starts with a byte-order mark",
            "save it as UTF-8 without a BOM (JSON text must not start with one, RFC 8259)",
        )
    if b"\x00" in data:
        raise UserError(f"model config {str(p)!r} is binary, not JSON text", hint)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"model config {str(p)!r} is not UTF-8 text (byte {exc.start})", hint
        ) from None

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"{literal} overflows a float")
        return value

    def bounded_int(literal: str) -> int:
        if len(literal.lstrip("-")) > 30:
            raise ValueError(f"an integer of {len(literal)} digits is too large")
        return int(literal)

    try:
        cfg = json.loads(
            text, parse_constant=no_constant, parse_float=finite, parse_int=bounded_int
        )
    except RecursionError:
        raise UserError(f"{p}: JSON nested too deeply", hint) from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, a huge number
        msg = " ".join(str(exc).split())[:200]
        raise UserError(f"{p}: invalid JSON: {msg}", "config.json must be a JSON object") from None
    problem = _hostile_json(cfg)
    if problem:
        raise UserError(f"{p}: {problem}", hint)
    try:
        return spec_from_any_config(cfg, p)
    # NOTE: the family readers do arithmetic on fields before the shape is validated (e.g.
    # 4 x n_embd); a field of the wrong type that gets that far is the file's error.
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, KeyError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise UserError(f"{p}: not a usable model config: {msg}", hint) from None


def _hostile_json(cfg: Any) -> str | None:
    """Why a parsed config cannot describe a model (nesting, magnitudes), or None."""
    if not isinstance(cfg, dict):
        return f"expected a JSON object, got {type(cfg).__name__}"
    stack: list[tuple[Any, int, str]] = [(cfg, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > _CONFIG_MAX_DEPTH:
            return f"nested more than {_CONFIG_MAX_DEPTH} levels deep (at {where or 'top'})"
        if isinstance(node, dict):
            stack.extend(
                (v, depth + 1, f"{where}.{k}" if where else str(k)) for k, v in node.items()
            )
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))
        elif (
            isinstance(node, int | float)
            and not isinstance(node, bool)
            and abs(node) > _CONFIG_MAX_NUMBER
        ):
            return f"{where}: {node:.3g} is too large for any model field"
    return None
