"""Bounds on every length, size and count a user can type, in one place, with their reasons.

A value outside its bound is a user error (one line, exit 2), never an overflow, a
RecursionError or an hour of planning. The bounds are generous: each is far beyond what any
real run uses, and its reason says what it is measured against. A new flag that takes a
number adds a line to :data:`BOUNDS` and calls :func:`check_bound`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from advisor.config import (
    LORA_FULL_TENSORS,
    LORA_MATRICES,
    LORA_TARGET_GROUPS,
    Fp8Recipe,
    Precision,
    Task,
)
from advisor.errors import UserError
from advisor.model.spec import ModelSpec, Position
from advisor.units import parse_length


class Bound(NamedTuple):
    """An inclusive range and why its ends are where they are."""

    low: float
    high: float
    why: str


# NOTE: 10M tokens is the longest context any released model claims (Llama 4 Scout, 2025);
# 100T parameters is 50x the largest dense models trained (Llama 3.1 405B, GPT-4-class
# MoE estimates of ~2T); 2^20 devices is ~5x the largest clusters reported (~200k GPUs).
MAX_SEQ_LEN = 10_000_000
MAX_PARAMETERS = 100 * 10**12
MIN_PARAMETERS = 10**6
MAX_DEVICES = 2**20

BOUNDS: dict[str, Bound] = {
    "--seq-len": Bound(1, MAX_SEQ_LEN, "10M tokens, the longest context any model claims"),
    "--micro-batch": Bound(1, 65_536, "2^16 samples per device per pass"),
    "--global-batch": Bound(1, 2**24, "2^24 samples per step, 256x LAMB's 64k"),
    "--gpus": Bound(1, MAX_DEVICES, "2^20 devices, beyond the largest clusters"),
    "--nodes": Bound(1, 2**17, "2^17 machines"),
    "--lora-rank": Bound(1, 65_536, "a LoRA rank is at most a layer's width"),
    "--grad-accumulation": Bound(1, 65_536, "2^16 micro-batches per optimizer step"),
    "--tensor-parallel": Bound(1, 1024, "tensor parallelism stays within one NVLink domain (72)"),
    "--pipeline-parallel": Bound(1, 1024, "a stage holds at least one of at most ~1000 layers"),
    "--virtual-stages": Bound(1, 1024, "interleaved chunks per stage, at most the layers"),
    "--tp": Bound(1, 1024, "tensor parallelism stays within one NVLink domain (72)"),
    "--pp": Bound(1, 1024, "a stage holds at least one of at most ~1000 layers"),
    "--expert-parallel": Bound(1, 65_536, "at most one device per expert (DeepSeek-V3: 256)"),
    "--context-parallel": Bound(
        1, 1024, "ranks per sequence: published runs use 2-32 (Llama 3: 16 at 128K tokens)"
    ),
    "--expert-tensor-parallel": Bound(
        1, 1024, "an expert's matrices split like tensor parallelism"
    ),
    "--ep": Bound(1, 65_536, "at most one device per expert (DeepSeek-V3: 256)"),
    "--etp": Bound(1, 1024, "an expert's matrices split like tensor parallelism"),
    "--capacity-factor": Bound(
        0.01, 1024.0, "capacity factors in use are 1.0-2.0 (GShard, Switch)"
    ),
    "world size": Bound(1, MAX_DEVICES, "2^20 devices, beyond the largest clusters"),
    "--top": Bound(1, 100_000, "100,000 configurations"),
    "--budget": Bound(1e-3, 7 * 86_400, "one week of calibration"),
    "--rope-scaling": Bound(1.0, 1024.0, "RoPE scaling factors in use are 2-64 (YaRN, Llama 3.1)"),
    "--memory-budget": Bound(1, 2**50, "1 PiB per device"),
    "--model-size": Bound(
        MIN_PARAMETERS,
        MAX_PARAMETERS,
        "1M parameters (below it, no language model; a bare 1.4 is 1.4 parameters: "
        "1.4B needs its suffix) to 100T, 50x the largest dense model",
    ),
    "--ac-frequency": Bound(1, 1024, "every n-th block, at most the layers (~1000)"),
    "--host-memory": Bound(0, 2**50, "1 PiB per node, 30x the largest servers (32 TiB)"),
    "--nvme": Bound(0, 2**50, "1 PiB of NVMe per node"),
    "--global-batch-tokens": Bound(
        1, 2**40, "2^40 tokens per step, 65,000x Llama 3's 16M-token batches"
    ),
    "--tokens": Bound(1, 10**15, "10^15 tokens, 60x Llama 3's 15T-token pre-training"),
    "--dataset-tokens": Bound(1, 10**15, "10^15 tokens, 60x Llama 3's 15T-token corpus"),
    "--epochs": Bound(1e-6, 100_000, "10^5 passes over the data"),
    "--max-days": Bound(1e-3, 36_500, "a century of wall time"),
    "--price-per-hour": Bound(1e-6, 10_000, "$10,000 per GPU-hour, 1,000x any list price"),
}


def check_bound(flag: str, value: float | None) -> None:
    """Raise unless ``value`` (None: not given) lies within the bound of ``flag``.

    Raises:
        UserError: naming the flag, the value, the range and the reason.
        KeyError: for a flag without a bound (a programming error).
    """
    if value is None:
        return
    b = BOUNDS[flag]
    # NOTE: ints are compared as ints: a 400-digit count does not fit in a float.
    finite = isinstance(value, int) or math.isfinite(value)
    if not finite or not b.low <= value <= b.high:
        raise UserError(
            f"{flag} {_shown(value)} is out of range: {_shown(b.low)} to {_shown(b.high)} "
            f"({b.why})",
            f"give {flag} a value in that range"
            if flag.startswith("--")
            else "lower the flags that multiply to it",
        )


def check_global_batch_tokens(tokens: int | None, seq_len: int) -> None:
    """Bound ``--global-batch-tokens`` and the global batch it makes (tokens / seq_len),
    which must stay within ``--global-batch``'s bound like a batch given in samples.

    Raises:
        UserError: naming the flag, or the derived batch and the sequence length.
    """
    if tokens is None:
        return
    check_bound("--global-batch-tokens", tokens)
    samples = max(1, round(tokens / seq_len))
    b = BOUNDS["--global-batch"]
    if samples > b.high:
        raise UserError(
            f"--global-batch-tokens {tokens:,} makes a global batch of {samples:,} samples of "
            f"{seq_len:,} tokens, more than {_shown(b.high)} ({b.why})",
            "lower --global-batch-tokens or raise --seq-len",
        )


_TOKEN_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_token_count(text: str, flag: str) -> int:
    """A training-token count: ``2000000``, ``500M``, ``2B``, ``15T`` (decimal: k = 10^3,
    M = 10^6, B = 10^9, T = 10^12, as datasets and pre-training runs state them), bounded.

    Raises:
        UserError: for text that is no positive count, or one beyond the flag's bound.
    """
    import re

    # NOTE: at most 30 digits either side of the point: a 400-digit count is invalid input,
    # never an OverflowError.
    m = re.fullmatch(r"(\d{1,30}(?:\.\d{1,30})?)\s*([kKmMbBgGtT]?)", text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UserError(
            f"invalid {flag} {text!r}: give a positive token count",
            f"e.g. {flag} 2B, 500M or 15T (k, M, B, T are powers of 1000)",
        )
    value = round(float(m.group(1)) * _TOKEN_SCALE[m.group(2).lower()])
    if value < 1:
        raise UserError(f"invalid {flag} {text!r}: less than one token", f"e.g. {flag} 2B")
    check_bound(flag, value)
    return value


def _shown(x: float) -> str:
    if isinstance(x, int):
        text = f"{x:,}"
        return text if len(text) <= 40 else f"{text[:20]}… ({len(str(abs(x)))} digits)"
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e18:
        return f"{int(x):,}"
    return f"{x:g}"


def check_model(spec: ModelSpec) -> None:
    """Bound the model itself: a config file can state any shape.

    Raises:
        UserError: when the model has more than :data:`MAX_PARAMETERS` parameters.
    """
    count = spec.parameter_count()
    if count > MAX_PARAMETERS:
        raise UserError(
            f"{spec.name} has {count:.3g} parameters, more than the {MAX_PARAMETERS:.0e} this "
            "advisor plans for",
            "check the shape fields of the model config",
        )


def resolve_seq_len(
    spec: ModelSpec, text: str | None, rope_scaling: float | None, default: int = 2048
) -> int:
    """The sequence length to plan for: the flag's, or ``default`` capped by the model.

    A model's context is its ``max_position_embeddings``. Beyond it, learned position
    tables have no rows at all; rotary models extend it only with RoPE scaling
    (position interpolation, NTK, YaRN), which ``--rope-scaling FACTOR`` declares:
    the context becomes ``max_position_embeddings x FACTOR``.

    Raises:
        UserError: for an unparsable or out-of-range length, a length beyond the model's
            context, or RoPE scaling asked of a model without rotary positions.
    """
    check_bound("--rope-scaling", rope_scaling)
    if spec.cnn is not None or spec.vision is not None:
        # An image model's "sequence" is fixed by its input: a CNN's token is an image, a
        # ViT's tokens are its patches and the class token.
        tokens = spec.vision.tokens if spec.vision is not None else 1
        if text is not None or rope_scaling is not None:
            flag = "--seq-len" if text is not None else "--rope-scaling"
            raise UserError(
                f"{flag} does not apply to {spec.name}, an image model "
                f"({_image_tokens(spec, tokens)})",
                "drop it; set the batch in images with --global-batch / --micro-batch",
            )
        return tokens
    limit = spec.max_position_embeddings
    learned = spec.position is Position.LEARNED
    if rope_scaling is not None and learned:
        raise UserError(
            f"--rope-scaling applies to rotary positions; {spec.name} learns a table of "
            f"{limit} positions",
            "drop --rope-scaling and keep --seq-len within the table",
        )
    if text is None:
        return min(default, limit) if limit else default
    s = parse_length(text)
    check_bound("--seq-len", s)
    if limit is not None:
        context = int(limit * (rope_scaling or 1.0))
        if s > context:
            if learned:
                hint = f"use --seq-len {limit} or less"
            elif rope_scaling:
                hint = f"use --seq-len {context} or less, or a larger --rope-scaling"
            else:
                hint = (
                    f"use --seq-len {limit} or less, or declare RoPE scaling: "
                    f"--rope-scaling {math.ceil(s / limit)}"
                )
            what = "learned positions" if learned else "token context"
            scaled = f" x {rope_scaling:g}" if rope_scaling else ""
            raise UserError(f"--seq-len {s:,} exceeds {spec.name}'s {limit:,}{scaled} {what}", hint)
    return s


def check_cnn_flags(spec: ModelSpec, task: Task, tp: int | None, pp: int | None) -> None:
    """Refuse what a CNN plan cannot be: adapters, tensor or pipeline parallelism.

    Raises:
        UserError: naming the flag and what to do instead.
    """
    if spec.cnn is None:
        return
    if task in (Task.LORA, Task.QLORA):
        raise UserError(
            f"--task {task.value} adapts transformer projections; {spec.name} is a CNN",
            "fine-tune it fully: --task finetune",
        )
    if (tp or 1) > 1 or (pp or 1) > 1:
        raise UserError(
            f"--tp/--pp split transformer layers; {spec.name} is a CNN",
            "drop them: it trains data-parallel (DDP, or ZeRO/FSDP sharding)",
        )


def _image_tokens(spec: ModelSpec, tokens: int) -> str:
    if spec.vision is not None:
        v = spec.vision
        return (
            f"{tokens} tokens per {v.image_size} px image: {v.patch_size} px patches and a "
            "class token"
        )
    assert spec.cnn is not None
    return f"one {spec.cnn.image_size} px image per sample"


# --- --lora-targets --------------------------------------------------------------------------

_HF_TARGET_NAMES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "embed_tokens": "embed",
}


def parse_lora_targets(text: str) -> tuple[str, ...]:
    """``--lora-targets``: ``attention``, ``mlp``, ``all-linear`` or a comma list of
    q, k, v, o, gate, up, down (Hugging Face's q_proj ... names too), embed, lm_head; a
    group may be part of the list (``all-linear,embed,lm_head``).

    Raises:
        UserError: for an unknown name, or a list with no block matrix.
    """
    out: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if name in LORA_TARGET_GROUPS:
            out += LORA_TARGET_GROUPS[name]
            continue
        name = _HF_TARGET_NAMES.get(name, name)
        if name not in LORA_MATRICES + LORA_FULL_TENSORS:
            raise UserError(
                f"invalid --lora-targets entry {raw.strip()!r}",
                "use attention, mlp, all-linear or a comma list of q, k, v, o, gate, up, down, "
                "embed, lm_head",
            )
        out.append(name)
    if not any(n in LORA_MATRICES for n in out):
        raise UserError(
            f"--lora-targets {text!r} adapts no block matrix",
            "name at least one of q, k, v, o, gate, up, down (or attention, mlp, all-linear)",
        )
    return tuple(sorted(set(out)))


def check_fp8_recipe(recipe: str | None, precision: str | None) -> Fp8Recipe | None:
    """The ``--fp8-recipe`` flag as a recipe: valid only beside ``--precision fp8-mixed``
    (``None`` for recommend: its plans' precision is searched, the recipe applies to the
    fp8-mixed ones).

    Raises:
        UserError: an unknown recipe, or a recipe beside another precision.
    """
    if recipe is None:
        return None
    try:
        value = Fp8Recipe(recipe)
    except ValueError:
        allowed = ", ".join(r.value for r in Fp8Recipe)
        raise UserError(f"invalid --fp8-recipe {recipe!r}", f"use one of: {allowed}") from None
    if precision is not None and precision != Precision.FP8_MIXED.value:
        raise UserError(
            f"--fp8-recipe applies to --precision fp8-mixed, not {precision!r}",
            "give --precision fp8-mixed, or drop --fp8-recipe (mxfp8-mixed and nvfp4-mixed "
            "scale per block by definition)",
        )
    return value
