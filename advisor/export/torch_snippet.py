"""The runnable PyTorch snippet (``train_snippet.py``) for one plan: ``build_training`` with
the optimizer, precision, SDPA backend, checkpointing and LoRA/QLoRA, a ``train_step`` (or
MeZO's), and a tiny demo model. The fixed code lives in ``templates/*.py.tmpl`` (package data);
this module picks the pieces and writes the plan's settings and optimizer into them."""

from __future__ import annotations

import ast
import textwrap
from importlib import resources
from typing import Any

from advisor.config import (
    Attention,
    Checkpointing,
    MoeOverlap,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.export.common import (
    GRADIENT_CLIPPING,
    ZEROTH,
    hyper_note,
    parse_implementation,
    plan_summary,
    resolve_learning_rate,
)
from advisor.export.emission import Emission, EmitTarget
from advisor.export.hyperparams import Family, family_of, hyperparameters_for


def _template(name: str) -> str:
    """The fixed source ``templates/<name>.py.tmpl`` (package data shipped in the wheel)."""
    path = resources.files("advisor.export") / "templates" / f"{name}.py.tmpl"
    return path.read_text(encoding="utf-8")


def _implementation_for(config: TrainingConfig, implementation: str | None) -> str | None:
    if implementation is not None:
        return implementation
    from advisor.rules.taxonomy import load_taxonomy  # local: emit_deepspeed never needs it

    taxonomy = load_taxonomy()
    if config.optimizer not in taxonomy:
        return None
    return taxonomy.get(config.optimizer).implementation


def emit_torch(
    config: TrainingConfig,
    *,
    optimizer_implementation: str | None = None,
    learning_rate: float | None = None,
) -> str:
    """A runnable PyTorch snippet: the text of :func:`torch_emission` (which has the notes).

    Args:
        config: the configuration to emit.
        optimizer_implementation: the taxonomy's ``implementation`` string for
            ``config.optimizer`` (looked up in the shipped taxonomy when None).
        learning_rate: the lr written into the snippet (default: a per-family start value).

    Returns:
        The Python source.

    Raises:
        UserError: when the implementation string cannot be turned into code.
    """
    return torch_emission(
        config, optimizer_implementation=optimizer_implementation, learning_rate=learning_rate
    ).text


def torch_emission(
    config: TrainingConfig,
    *,
    optimizer_implementation: str | None = None,
    learning_rate: float | None = None,
    cpu: bool = False,
) -> Emission:
    """A runnable PyTorch snippet that sets up training the way the config says.

    The snippet defines ``build_training(model)`` returning ``(optimizer, autocast,
    scaler)``: the optimizer (torch.optim with the taxonomy's literal kwargs such as
    ``fused=True``, or ``pytorch_optimizer``/``bitsandbytes`` imported inside with a clear
    ImportError), a context factory entering ``torch.autocast`` and the SDPA backend
    (``torch.nn.attention.sdpa_kernel``), and a ``GradScaler`` for fp16 autocast or None.
    It applies bare bf16/fp16 casts, activation checkpointing (full: each block under
    ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``; selective: the same with a
    policy that saves matmul outputs and recomputes the rest) and LoRA (a minimal
    ``nn.Linear`` wrapper, no peft). ``train_step`` runs gradient accumulation; zeroth-order
    optimizers get a MeZO loop (seeded in-place perturbation, two forwards, projected
    gradient; Malladi et al. 2023). ``python snippet.py [--steps N]`` trains a tiny
    2-layer transformer on random data on the CPU and prints the losses; where an optional
    package (bitsandbytes, pytorch-optimizer) is missing it trains with torch.optim.AdamW
    and prints a note. The docstring names what the real run needs (packages, launcher).
    The snippet is single-process: a layout (sharding, TP/PP) is named in the notes and the
    docstring, and set up by the engine exports.

    Args:
        config: the configuration to emit.
        optimizer_implementation: the taxonomy's ``implementation`` string for
            ``config.optimizer`` (looked up in the shipped taxonomy when None).
        learning_rate: the lr written into the snippet (default: the hyper-parameter table's).
        cpu: the plan is for CPUs (named in the docstring).

    Returns:
        The snippet (``train_snippet.py``) and its notes.

    Raises:
        UserError: when the implementation string cannot be turned into code.
    """
    notes: list[str] = []
    lr = resolve_learning_rate(config, learning_rate)
    zeroth = config.optimizer in ZEROTH
    implementation = None if zeroth else _implementation_for(config, optimizer_implementation)
    optimizer_src = _torch_optimizer_source(config, implementation, notes)
    _plan_notes(config, zeroth, notes)
    parts = _snippet_parts(config, implementation, optimizer_src, lr, zeroth, cpu, notes)
    text = "\n\n".join(textwrap.dedent(p).strip("\n") for p in parts) + "\n"
    return Emission(
        target=EmitTarget.TORCH,
        filename="train_snippet.py",
        text=text,
        notes=tuple(notes),
        expressed_config=config,
    )


def _plan_notes(config: TrainingConfig, zeroth: bool, notes: list[str]) -> None:
    """What the single-process snippet sets up differently from the plan, and what it needs."""
    if zeroth and config.optimizer != "mezo":
        notes.append(
            f"{config.optimizer} is emitted as plain MeZO (ZO-SGD); its own update rule "
            "(Adam moments or DP noise on the projected gradient) is not in the snippet."
        )
    if zeroth and config.savers.checkpointing is not Checkpointing.NONE:
        notes.append("MeZO runs no backward pass, so activation checkpointing is left out.")
    if config.precision in (Precision.BF16_MIXED, Precision.FP16_MIXED):
        notes.append(
            f"{config.precision.value} (16-bit weights with an fp32 master copy) has no "
            "built-in PyTorch form: the snippet uses torch.autocast, same numerics, fp32 "
            "weights (DeepSpeed or FSDP MixedPrecision give the planned layout)."
        )
    if config.layout.sharding is not Sharding.NONE or config.layout.data_parallel > 1:
        notes.append(
            "the snippet is single-process: wrap the model in DDP/FSDP (torch.distributed) "
            "or use --emit deepspeed/accelerate for the planned sharding and offload."
        )
    if (
        config.layout.tensor_parallel > 1
        or config.layout.pipeline_parallel > 1
        or config.layout.expert_parallel > 1
        or config.layout.context_parallel > 1
    ):
        cp = config.layout.context_parallel
        notes.append(
            f"the plan's layout (tensor {config.layout.tensor_parallel} x pipeline "
            f"{config.layout.pipeline_parallel}, expert {config.layout.expert_parallel}"
            + (f", context {cp}" if cp > 1 else "")
            + ") is not in this "
            "single-process snippet: use --emit torchtitan or --emit megatron for it."
            + (
                f" Its {config.layout.moe_overlap.value} schedule for the expert all-to-alls "
                "is Megatron-LM's (--emit megatron) or DeepSeek's DualPipe, not torch's."
                if config.layout.moe_overlap is not MoeOverlap.NONE
                and config.layout.expert_parallel > 1
                else ""
            )
        )
    notes.append(hyper_note(config))
    if config.dp_sgd:
        notes.append(
            "DP-SGD needs Opacus: opacus.PrivacyEngine().make_private(module=model, "
            "optimizer=opt, data_loader=loader, noise_multiplier=..., max_grad_norm=...)."
        )


def _snippet_parts(
    config: TrainingConfig,
    implementation: str | None,
    optimizer_src: str,
    lr: float,
    zeroth: bool,
    cpu: bool,
    notes: list[str],
) -> list[str]:
    """The snippet's pieces in file order: header, settings, the templates the plan needs,
    the optimizer, ``build_training``, the step and the demo."""
    parts = [
        _template("header")
        .replace("__SUMMARY__", plan_summary(config))
        .replace("__NEEDS__", _real_run_needs(config, implementation, cpu)),
        _settings(config, lr, zeroth),
        _template("precision"),
        _template("attention"),
    ]
    if config.savers.checkpointing is not Checkpointing.NONE and not zeroth:
        parts.append(_template("checkpoint"))
    if config.task in (Task.LORA, Task.QLORA):
        parts.append(_template("lora"))
    if config.task is Task.QLORA:
        parts.append(_template("qlora"))
    if zeroth:
        parts.append(_template("mezo"))
    parts.append(optimizer_src)
    if config.savers.optimizer_in_backward and not zeroth:
        parts.append(_template("in_backward"))
        if config.batch.grad_accumulation > 1:
            notes.append(
                "the step runs in backward, so each micro-batch steps the weights: the "
                f"planned accumulation of {config.batch.grad_accumulation} becomes "
                f"{config.batch.grad_accumulation} smaller steps (LOMO trains without "
                "accumulation)."
            )
        if config.precision in (Precision.AMP_FP16, Precision.FP16_MIXED):
            notes.append(
                "fp16 loss scaling cannot unscale per-parameter steps in backward: the "
                "snippet runs without a GradScaler; prefer bf16 here."
            )
    parts.append(_build_training_src(config, zeroth))
    parts.append(_template("mezo_step") if zeroth else _template("train_step"))
    parts.append(_template("demo"))
    return parts


def _real_run_needs(config: TrainingConfig, implementation: str | None, cpu: bool) -> str:
    """What the planned run needs beyond torch: packages, device and launcher (docstring)."""
    needs = ["torch"]
    if implementation and not implementation.startswith(("torch.", "advisor.")):
        package = implementation.split(".")[0]
        needs.append(package.replace("_", "-"))
    if config.task is Task.QLORA:
        needs.append("bitsandbytes (NF4 base weights, CUDA GPU)")
    if config.precision is Precision.FP8_MIXED:
        needs.append("transformer-engine (fp8 on Hopper or newer GPUs)")
    if config.precision in (Precision.MXFP8_MIXED, Precision.NVFP4_MIXED):
        needs.append(f"transformer-engine ({config.precision.value} on Blackwell GPUs)")
    if config.dp_sgd:
        needs.append("opacus (per-sample gradients)")
    needs = list(dict.fromkeys(needs))
    if config.layout.world_size > 1 or config.layout.sharding is not Sharding.NONE:
        launcher = (
            f"{config.layout.world_size} processes: torchrun --nproc_per_node <GPUs per node> with "
            "the model wrapped for the planned layout, or the --emit deepspeed/accelerate/"
            "torchtitan/megatron file and its launcher"
        )
    else:
        launcher = "one process: python this_file.py (your model and data in main)"
    device = "CPU" if cpu else "GPU"
    if not cpu and (
        config.task is Task.QLORA
        or config.precision in (Precision.FP8_MIXED, Precision.MXFP8_MIXED, Precision.NVFP4_MIXED)
    ):
        device = "CUDA GPU"
    text = f"The real run needs: {', '.join(needs)}; the planned {device}; launch with {launcher}."
    # NOTE: the lines keep the widths they had when the header was an indented string in the
    # code (84 characters for the first, 80 after); the template is stored without that indent.
    return textwrap.fill(text, width=84, subsequent_indent="    ").replace("\n    ", "\n")


def _settings(config: TrainingConfig, lr: float, zeroth: bool) -> str:
    backend = {
        Attention.FLASH: "FLASH_ATTENTION",
        Attention.MEM_EFFICIENT: "EFFICIENT_ATTENTION",
        Attention.EAGER: "MATH",
    }[config.kernels.attention]
    return f"""
        PRECISION = {config.precision.value!r}
        SDPA_BACKEND = {backend!r}
        CHECKPOINTING = {"none" if zeroth else config.savers.checkpointing.value!r}
        AC_FREQUENCY = {config.savers.ac_frequency}
        MICRO_BATCH = {config.batch.micro_batch}
        GRAD_ACCUMULATION = {config.batch.grad_accumulation}
        LEARNING_RATE = {lr!r}
        LORA_RANK = {config.adapters.lora_rank}
        MAX_GRAD_NORM = {GRADIENT_CLIPPING!r}
        """


def _optimizer_kwargs(config: TrainingConfig, taxonomy_kwargs: str) -> str:
    """The call's keyword arguments: the table's settings the class takes, then the taxonomy's
    literal kwargs (``fused=True``, ``nesterov=True``...), which win on a clash."""
    hp = hyperparameters_for(config.optimizer, config.task)
    family, own = family_of(config.optimizer)
    merged: dict[str, Any] = {}
    # NOTE: only optimizers with a row of their own get more than lr: the others' classes
    # (GaLore, Sophia, SOAP...) keep their authors' defaults for everything else.
    if own:
        if hp.betas is not None:
            merged["betas"] = hp.betas
        if hp.eps is not None and family in (Family.ADAMW, Family.ADAM, Family.LAMB):
            merged["eps"] = hp.eps
        if hp.momentum is not None:
            merged["momentum"] = hp.momentum
        merged["weight_decay"] = hp.weight_decay
    if taxonomy_kwargs:
        call = ast.parse(f"f({taxonomy_kwargs})", mode="eval").body
        assert isinstance(call, ast.Call)  # checked by parse_implementation
        for kw in call.keywords:
            if kw.arg is not None:
                merged[kw.arg] = ast.literal_eval(kw.value)
    return "".join(f", {key}={value!r}" for key, value in merged.items())


def _torch_optimizer_source(
    config: TrainingConfig, implementation: str | None, notes: list[str]
) -> str:
    """``build_optimizer(params)`` for the implementation string, with the AdamW fallback.

    Optional packages are imported inside ``build_optimizer``; when one is missing, the file
    still runs: it prints a note and trains with torch.optim.AdamW at the table's AdamW
    settings, so ``python this_file.py`` works on any CPU.
    """
    opt_id = config.optimizer
    fallback = hyperparameters_for("adamw", config.task)
    fallback_src = f"""
        def _fallback_optimizer(params, why):
            # NOTE: the plan's memory and speed assume {opt_id}; AdamW only keeps this file
            # runnable where {opt_id}'s package is missing.
            _warn_once(
                f"note: {{why}}; falling back to torch.optim.AdamW so this file runs "
                "(the plan assumes {opt_id})"
            )
            return torch.optim.AdamW(
                params, lr={fallback.lr!r}, betas={fallback.betas!r}, eps={fallback.eps!r},
                weight_decay={fallback.weight_decay!r},
            )
        """
    if opt_id in ZEROTH:
        return """
            def build_optimizer(params):
                # Malladi et al. 2023, Algorithm 1; eps 1e-3 as in the paper.
                return MeZO(params, lr=LEARNING_RATE, eps=1e-3)
            """
    unbuildable = (
        implementation is None
        or implementation.startswith(("opacus.", "advisor.", "deepspeed."))
        or "[" in implementation
    )
    if unbuildable:
        notes.append(
            f"{opt_id}: no implementation the snippet can construct "
            f"({implementation or 'none in the taxonomy'}); build_optimizer falls back to "
            "torch.optim.AdamW with a printed note: construct your optimizer there."
        )
        return (
            fallback_src
            + f"""

        def build_optimizer(params):
            # Construct {opt_id} here ({implementation or "no ready implementation"}).
            return _fallback_optimizer(params, "optadvise has no ready {opt_id!s}")
        """
        )
    assert implementation is not None  # for mypy: unbuildable covers None
    path, kwargs = parse_implementation(implementation)
    module, _, cls = path.rpartition(".")
    call_kwargs = "lr=LEARNING_RATE" + _optimizer_kwargs(config, kwargs)
    if module == "torch.optim":
        return f"""
            def build_optimizer(params):
                return torch.optim.{cls}(params, {call_kwargs})
            """
    package = module.split(".")[0]
    pip_name = package.replace("_", "-")
    if package == "bitsandbytes":
        notes.append(
            f"{opt_id} needs bitsandbytes (pip install bitsandbytes); without it the snippet "
            "trains with torch.optim.AdamW and prints a note."
        )
    else:
        notes.append(
            f"{opt_id} needs {pip_name} (pip install {pip_name}); without it the snippet "
            "trains with torch.optim.AdamW and prints a note."
        )
    return (
        fallback_src
        + f"""

        def build_optimizer(params):
            try:
                import {module} as _impl
            except ImportError:
                return _fallback_optimizer(params, "{pip_name} is not installed ({path})")
            return _impl.{cls}(params, {call_kwargs})
        """
    )


def _build_training_src(config: TrainingConfig, zeroth: bool) -> str:
    lines = [
        "def build_training(model):",
        '    """Apply the recommended setup to `model`; return (optimizer, autocast, scaler).',
        "",
        "    `autocast()` is a context manager for the forward pass (precision and SDPA",
        "    backend); `scaler` is a torch.amp.GradScaler for fp16 autocast, else None.",
        '    """',
        "    device_type = next(model.parameters()).device.type",
        "    model = apply_precision(model)",
    ]
    if config.task is Task.QLORA:
        lines.append("    model = apply_qlora(model, LORA_RANK)")
    elif config.task is Task.LORA:
        lines.append("    model = apply_lora(model, LORA_RANK)")
    if config.savers.checkpointing is not Checkpointing.NONE and not zeroth:
        lines.append("    apply_checkpointing(model)")
    in_backward = config.savers.optimizer_in_backward and not zeroth
    lines += [
        "    params = [p for p in model.parameters() if p.requires_grad]",
        "    optimizer = StepInBackward(params)"
        if in_backward
        else ("    optimizer = build_optimizer(params)"),
        "    scaler = None",
    ]
    if not zeroth and not in_backward:
        lines += [
            "    if PRECISION in ('amp-fp16', 'fp16-mixed'):",
            "        scaler = torch.amp.GradScaler(device_type)",
        ]
    lines += [
        "",
        "    def autocast():",
        "        stack = contextlib.ExitStack()",
        "        stack.enter_context(precision_context(device_type))",
        "        stack.enter_context(attention_context(device_type))",
        "        return stack",
        "",
        "    return optimizer, autocast, scaler",
    ]
    return "\n".join(lines)
