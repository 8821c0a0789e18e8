"""The shipped model profiles (``profiles/models/*.yaml``, published architectures) and
bare sizes turned into shapes (:func:`resolve_model_size`: the default ladder, else a
synthetic Llama-3-style interpolation).
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

from pydantic import ValidationError

from advisor.data.cache import cached_by_content, profile_sources
from advisor.data.resources import profiles_dir
from advisor.data.yamlio import YamlError, line_of, load_yaml, yaml_error_line
from advisor.errors import DataError, UserError
from advisor.model.spec import Arch, Mlp, ModelSpec, Norm, Position
from advisor.units import format_count, parse_count

# --- profiles ------------------------------------------------------------------------


def _models_dir() -> Path:
    return profiles_dir() / "models"


@cached_by_content("models", profile_sources("models"))
def load_model_profiles(folder: Path | None = None) -> dict[str, ModelSpec]:
    """Load every ``*.yaml`` model profile (one model per file, named after its id).

    Args:
        folder: the folder to read (default: the shipped ``profiles/models``).

    Returns:
        The profiles by id, sorted by id.

    Raises:
        DataError: listing every problem of every file as ``file:line: id: field: message``.
    """
    folder = folder or _models_dir()
    profiles: dict[str, ModelSpec] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            raw = load_yaml(path)
        except OSError as exc:
            problems.append(f"{path}:0: -: file: cannot read: {exc.strerror}")
            continue
        except YamlError as exc:
            msg = str(exc).replace("\n", " ")
            problems.append(f"{path}:{yaml_error_line(exc)}: -: yaml: invalid YAML: {msg}")
            continue
        if not isinstance(raw, dict):
            problems.append(f"{path}:1: -: -: expected a mapping of model fields")
            continue
        ident = str(raw.get("id", path.stem))
        try:
            spec = ModelSpec.model_validate(raw)
        except ValidationError as exc:
            text = path.read_text(encoding="utf-8")
            for err in exc.errors():
                loc = err["loc"]
                field = ".".join(str(p) for p in loc) or "-"
                where = _key_line(text, loc) or line_of(raw, loc) or getattr(raw, "line", 1)
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{path}:{where}: {ident}: {field}: {msg}")
            continue
        if spec.id != path.stem:
            problems.append(
                f"{path}:{line_of(raw, ('id',))}: {spec.id}: id: does not match the file name "
                f"{path.stem!r}"
            )
        if spec.id in profiles:
            problems.append(f"{path}:{line_of(raw, ('id',))}: {spec.id}: id: duplicate profile id")
        profiles[spec.id] = spec
    if problems:
        raise DataError(problems)
    return profiles


def _key_line(text: str, loc: tuple[int | str, ...]) -> int:
    """The line of a top-level scalar key (yamlio knows the lines of containers only)."""
    if len(loc) != 1 or not isinstance(loc[0], str):
        return 0
    m = re.search(rf"^{re.escape(loc[0])}\s*:", text, re.MULTILINE)
    return text.count("\n", 0, m.start()) + 1 if m else 0


def get_model_profile(name: str) -> ModelSpec:
    """Return the shipped model profile called ``name`` (case-insensitive).

    Raises:
        UserError: naming the known profiles when ``name`` is not one.
    """
    profiles = load_model_profiles()
    key = name.strip().lower()
    if key in profiles:
        return profiles[key]
    close = difflib.get_close_matches(key, list(profiles), n=3)
    maybe = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(
        f"unknown model profile {name!r}",
        f"{maybe}known profiles: {', '.join(sorted(profiles))}; "
        "or give a size (--model-size 7B) or a Hugging Face config.json",
    )


# --- sizes -> shapes ---------------------------------------------------------------------

# NOTE: the default family for a bare size. Below 3B: OPT (the only open family with a
# 125M and a 1.3B model of the classic GPT-3 shapes); from 3B up: Llama (Llama 2 7B/13B/70B
# and Llama 3.1 8B/70B/405B), the dense decoder most people fine-tune or pre-train now.
DEFAULT_LADDER = (
    "opt-125m",
    "opt-1.3b",
    "llama-2-7b",
    "llama-3.1-8b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3.1-70b",
    "llama-3.1-405b",
)
# A profile counts as "this size" when its count is within this factor of the request.
NEAREST_TOLERANCE = 1.25


def resolve_model_size(text: str) -> ModelSpec:
    """Turn a bare size (``125M``, ``1.3B``, ``7B``, ``70B``, ``1T``) into a model shape.

    The rule, in order:

    1. Parse the count with :func:`advisor.units.parse_count`.
    2. Sizes below the smallest rung of :data:`DEFAULT_LADDER` (OPT-125M) give that
       profile (its shapes over-estimate such a model; nothing smaller is worth advice).
    3. Otherwise the rung nearest in log-count (OPT below 3B, Llama from 3B up) when its
       count is within a factor :data:`NEAREST_TOLERANCE` of the request: ``125M`` ->
       ``opt-125m``, ``1.3B`` -> ``opt-1.3b``, ``7B`` -> ``llama-2-7b``, ``8B`` ->
       ``llama-3.1-8b``, ``13B`` -> ``llama-2-13b``, ``70B`` -> ``llama-3.1-70b``
       (70.6B, nearer than Llama 2's 69.0B), ``405B`` -> ``llama-3.1-405b``.
    4. Otherwise (gaps such as 3B or 30B, and anything beyond 405B x 1.25, e.g. ``1T``) a
       synthetic Llama-3-style shape, see :func:`interpolate_llama_style`, with id
       ``llama-style-<size>`` (``llama-style-1t``).

    Raises:
        UserError: when the text is not a positive count ("7Q", "-3B", "0").
    """
    count = parse_count(text)
    profiles = load_model_profiles()
    ladder = [profiles[i] for i in DEFAULT_LADDER]
    if count <= ladder[0].parameter_count():
        return ladder[0]
    best = min(ladder, key=lambda p: abs(math.log(p.parameter_count() / count)))
    if max(best.parameter_count() / count, count / best.parameter_count()) <= NEAREST_TOLERANCE:
        return best
    return interpolate_llama_style(count)


def interpolate_llama_style(count: int) -> ModelSpec:
    """A synthetic Llama-3-style decoder with about ``count`` parameters.

    Fixed as in Llama 3.1: head_dim 128, grouped-query attention with 8 key/value
    heads (fewer when the model has fewer heads; from 8 heads on, the hidden size is a
    multiple of 1024 so that the heads split evenly into 8 groups), SwiGLU with an
    intermediate size of 3.5 h rounded to a multiple of 256, RMSNorm, RoPE, vocabulary
    128,256. Embeddings are tied below 5B parameters (as Llama 3.2 1B/3B) and untied
    above (Llama 3.1 8B+). Among hidden sizes and layer counts whose total is within 1% of
    ``count``, the one with the aspect ratio h / layers nearest 128 (Llama 3.1 8B: 128,
    405B: 130) wins; when none is that close, the nearest count.

    Args:
        count: the target number of parameters.

    Returns:
        The spec, id ``llama-style-<size>``, with ``published_parameters`` None.
    """
    tied = count < 5 * 10**9
    vocab = 128_256
    best: tuple[float, float, int, int] | None = None
    h = 128
    # NOTE: the counts below are the closed form of _llama_style's block (checked against
    # ModelSpec.parameter_count in the tests), so the search builds no spec per candidate.
    while True:
        kv = min(8, h // 128)
        ffn = _llama_style_ffn(h)
        per_layer = 2 * h + 2 * h * h + 2 * h * kv * 128 + 3 * h * ffn
        outside = vocab * h * (1 if tied else 2) + h
        if per_layer + outside > count and best is not None:
            break
        layers = max(1, round((count - outside) / per_layer))
        error = abs(outside + layers * per_layer - count) / count
        key = (0.0 if error <= 0.01 else error, abs(math.log(h / layers / 128)), h, layers)
        if best is None or key < best:
            best = key
        # Heads must be a multiple of the 8 key/value heads once there are 8 or more.
        h += 128 if h < 1024 else 1024
    return _llama_style(count, best[2], best[3], tied, vocab)


def _llama_style_ffn(h: int) -> int:
    return max(256, round(3.5 * h / 256) * 256)


def _llama_style(count: int, h: int, layers: int, tied: bool, vocab: int) -> ModelSpec:
    heads = h // 128
    size = format_count(count)
    return ModelSpec(
        id=f"llama-style-{size.lower()}",
        name=f"Llama-style {size} (synthetic: interpolated from the size, not a published model)",
        family="llama",
        arch=Arch.DECODER,
        source="synthetic:advisor.model.profiles.interpolate_llama_style",
        hidden_size=h,
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=min(8, heads),
        head_dim=128,
        intermediate_size=_llama_style_ffn(h),
        vocab_size=vocab,
        max_position_embeddings=131_072,
        mlp=Mlp.GATED_SILU,
        norm=Norm.RMSNORM,
        position=Position.ROPE,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_word_embeddings=tied,
    )
