"""Config emitters: one TrainingConfig as DeepSpeed JSON, Accelerate YAML or a PyTorch snippet."""

from __future__ import annotations

import ast
import json
import textwrap
from enum import Enum
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError

# NOTE: every key this module writes was checked against the projects' own documentation:
# DeepSpeed: https://www.deepspeed.ai/docs/config-json/ (docs/_pages/config-json.md);
# Accelerate: `accelerate config` (src/accelerate/commands/config/cluster.py), the launcher's
# FSDP/DeepSpeed arguments (src/accelerate/commands/launch.py) and ClusterConfig
# (src/accelerate/commands/config/config_args.py), which rejects unknown top-level keys.
# tests/test_emit.py holds the allowed key sets with those URLs.

DEEPSPEED_DOCS = "https://www.deepspeed.ai/docs/config-json/"
ACCELERATE_DOCS = "https://huggingface.co/docs/accelerate/usage_guides/fsdp"

# DeepSpeed's default bucket sizes (elements), written out so the file is self-describing.
_BUCKET_ELEMENTS = 500_000_000
# Gradient clipping at global norm 1.0: the DeepSpeed default and the common LLM setting.
_GRADIENT_CLIPPING = 1.0


class EmitTarget(str, Enum):
    """The engines `optadvise recommend --emit` writes a configuration for."""

    DEEPSPEED = "deepspeed"
    ACCELERATE = "accelerate"
    TORCH = "torch"


class Emission(BaseModel):
    """One emitted file: what to write, where, and what the user must know about it.

    ``notes`` carry everything the target format cannot say (DeepSpeed and Accelerate
    reject or ignore unknown keys, so no comments go into the file itself).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: EmitTarget
    filename: str
    text: str
    notes: tuple[str, ...] = ()


class DeepSpeedEmission(BaseModel):
    """A DeepSpeed config dict plus the notes that cannot go into it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: dict[str, Any]
    notes: tuple[str, ...] = ()

    def to_emission(self) -> Emission:
        """The config as a ``ds_config.json`` file."""
        text = json.dumps(self.config, indent=2, sort_keys=False) + "\n"
        return Emission(
            target=EmitTarget.DEEPSPEED, filename="ds_config.json", text=text, notes=self.notes
        )


# --------------------------------------------------------------------------- shared helpers


def world_size(config: TrainingConfig, nodes: int = 1, gpus_per_node: int | None = None) -> int:
    """The number of data-parallel processes, checked against ``config.gpus``.

    Args:
        config: the configuration; ``config.gpus`` is the total data-parallel degree.
        nodes: the number of machines.
        gpus_per_node: processes per machine; default ``config.gpus // nodes``.

    Returns:
        ``nodes * gpus_per_node``.

    Raises:
        UserError: when the three numbers disagree or are not positive.
    """
    if nodes < 1:
        raise UserError(f"--nodes must be at least 1, not {nodes}", "pass --nodes 1 or more")
    if gpus_per_node is None:
        if config.gpus % nodes:
            raise UserError(
                f"{config.gpus} GPUs do not split evenly over {nodes} nodes",
                "make --gpus a multiple of --nodes",
            )
        gpus_per_node = config.gpus // nodes
    if gpus_per_node < 1:
        raise UserError(f"{gpus_per_node} GPUs per node", "pass at least one GPU per node")
    total = nodes * gpus_per_node
    if total != config.gpus:
        raise UserError(
            f"{nodes} nodes x {gpus_per_node} GPUs = {total}, but the plan is for "
            f"{config.gpus} data-parallel GPUs",
            "make --gpus equal to the total number of GPUs",
        )
    return total


def _zero_stage(config: TrainingConfig) -> tuple[int, list[str]]:
    """The ZeRO stage for a config, bumped where DeepSpeed needs it, with the reasons."""
    notes: list[str] = []
    stage = config.sharding.zero_stage
    if config.sharding in (Sharding.FSDP, Sharding.HSDP):
        notes.append(
            "FSDP full sharding maps to ZeRO stage 3 in DeepSpeed (both shard parameters, "
            "gradients and optimizer states; Rajbhandari et al. 2020, Zhao et al. 2023)."
        )
    # NOTE: we bump rather than refuse: a higher ZeRO stage only shards more, so the plan's
    # memory bound still holds; the cost is communication (stage 3 moves ~1.5x the bytes
    # of plain data parallelism, Rajbhandari et al. 2020), which the note states.
    if config.offload.params and stage < 3:
        notes.append(
            f"parameter offload is valid only with ZeRO stage 3 ({DEEPSPEED_DOCS}"
            f"#parameter-offloading): stage raised from {stage} to 3, which adds a parameter "
            "all-gather per forward and backward (~1.5x the communication of stage 0-2)."
        )
        stage = 3
    elif config.offload is Offload.OPTIMIZER and stage == 0:
        notes.append(
            "optimizer offload needs a ZeRO stage >= 1: stage raised from 0 to 2, the stage "
            "ZeRO-Offload is built on (Ren et al. 2021); with one GPU it shards nothing."
        )
        stage = 2
    if config.precision is Precision.BF16 and stage == 0:
        notes.append(
            "bare bf16 (bf16 master weights and optimizer states) is supported by DeepSpeed "
            "only with ZeRO stage 1-3: stage raised from 0 to 1."
        )
        stage = 1
    return stage, notes


def _default_learning_rate(config: TrainingConfig) -> float:
    """A starting learning rate to tune, by optimizer family and task."""
    if config.optimizer in {"mezo", "zo-adam", "dp-zo"}:
        # Malladi et al. 2023 (Table 15): 1e-6..1e-7 for full-parameter MeZO on OPT.
        return 1e-6
    if config.optimizer in {"sgd", "sgd-momentum", "nesterov", "lars", "dp-sgd"}:
        return 1e-2
    if config.optimizer == "muon":
        return 2e-2  # the reference implementation's default (Jordan et al. 2024)
    base = {Task.PRETRAIN: 3e-4, Task.FINETUNE: 2e-5, Task.LORA: 2e-4, Task.QLORA: 2e-4}[
        config.task
    ]
    if config.optimizer == "lion":
        return base / 3  # Chen et al. 2023: Lion wants a 3-10x smaller lr than AdamW
    return base


def _common_notes(config: TrainingConfig) -> list[str]:
    """Notes for choices that live in the model code, not in an engine's config file."""
    notes: list[str] = []
    attn = {
        Attention.FLASH: "sdpa with the FLASH_ATTENTION backend (or attn_implementation="
        "'flash_attention_2' for Hugging Face models)",
        Attention.MEM_EFFICIENT: "sdpa with the EFFICIENT_ATTENTION backend",
        Attention.EAGER: "eager attention (SDPA's MATH backend)",
    }[config.attention]
    notes.append(f"attention is chosen in the model code, not here: use {attn}.")
    if config.task is Task.LORA:
        notes.append(
            f"LoRA (rank {config.lora_rank}) is applied in the model code (peft.LoraConfig or "
            "the wrapper in the --emit torch snippet); only adapter weights are trainable."
        )
    if config.task is Task.QLORA:
        notes.append(
            f"QLoRA (rank {config.lora_rank}) needs bitsandbytes and a CUDA GPU: load the base "
            "model with transformers.BitsAndBytesConfig(load_in_4bit=True, "
            "bnb_4bit_quant_type='nf4') before applying LoRA."
        )
    if config.dp_sgd:
        notes.append(
            "DP-SGD (Abadi et al. 2016) needs per-sample gradients (Opacus), which neither "
            "DeepSpeed nor Accelerate configures; see the --emit torch snippet's notes."
        )
    if config.optimizer in {"mezo", "zo-adam", "dp-zo"}:
        notes.append(
            f"{config.optimizer} is zeroth-order (two forwards, no backward; Malladi et al. "
            "2023): the engine's backward/step loop does not apply; use the --emit torch "
            "snippet's MeZO loop and this file only for sharding and precision."
        )
    return notes


# --------------------------------------------------------------------------------- DeepSpeed

# taxonomy id -> (DeepSpeed optimizer "type", extra params). DeepSpeed implements Adam,
# AdamW, Lamb, Lion and Muon itself and imports any other type name from torch.optim
# (config-json, "Optimizer Parameters").
_DS_OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    # NOTE: DeepSpeed's Adam applies decoupled weight decay unless adam_w_mode is false
    # (config-json: "adam_w_mode ... default true"), so plain Adam must say so.
    "adam": ("Adam", {"betas": [0.9, 0.999], "eps": 1e-8, "adam_w_mode": False}),
    "adamw": ("AdamW", {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}),
    "lamb": ("Lamb", {"weight_decay": 0.01}),
    "lion": ("Lion", {"betas": [0.9, 0.99], "weight_decay": 0.1}),
    "muon": ("Muon", {"momentum": 0.95}),
    "sgd": ("SGD", {}),
    "sgd-momentum": ("SGD", {"momentum": 0.9}),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "rmsprop": ("RMSprop", {}),
    "adafactor": ("Adafactor", {}),
}


def emit_deepspeed(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    optimizer_implementation: str | None = None,
    learning_rate: float | None = None,
) -> DeepSpeedEmission:
    """A DeepSpeed config (``ds_config.json``) for one training configuration.

    Batch sizes are consistent by construction: ``train_batch_size =
    train_micro_batch_size_per_gpu * gradient_accumulation_steps * world size``, as
    DeepSpeed requires. Sharding maps none/zero1/zero2/zero3 to ZeRO stage 0-3 and
    FSDP to stage 3. Where DeepSpeed needs a higher stage than the plan (parameter offload
    needs stage 3, optimizer offload stage >= 1, bare bf16 stage >= 1) the stage is
    raised and a note says why; a higher stage only lowers memory.

    An ``optimizer`` block is written only for optimizers DeepSpeed builds from a config
    (Adam, AdamW, Lamb, Lion, Muon and torch.optim classes); for the others (8-bit,
    GaLore, Sophia, MeZO...) the block is left out and a note says to pass the optimizer
    object to ``deepspeed.initialize``. Notes are returned beside the dict because
    DeepSpeed's section models forbid unknown keys.

    Args:
        config: the configuration to emit.
        nodes: machines.
        gpus_per_node: processes per machine (default ``config.gpus // nodes``).
        optimizer_implementation: the taxonomy's implementation string; a plain
            ``torch.optim.X`` there lets DeepSpeed build optimizers this module does not map.
        learning_rate: the optimizer's lr (default: a per-family starting value).

    Returns:
        The config dict and its notes.

    Raises:
        UserError: when nodes and GPUs disagree with ``config.gpus``.
    """
    world = world_size(config, nodes, gpus_per_node)
    lr = learning_rate if learning_rate is not None else _default_learning_rate(config)
    stage, notes = _zero_stage(config)
    ds: dict[str, Any] = {
        "train_batch_size": config.micro_batch * config.grad_accumulation * world,
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": config.grad_accumulation,
        "gradient_clipping": _GRADIENT_CLIPPING,
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }
    ds.update(_ds_precision(config, stage, notes))
    ds["zero_optimization"] = _ds_zero(config, stage)

    ds_optimizer = _DS_OPTIMIZERS.get(config.optimizer)
    if ds_optimizer is None and optimizer_implementation is not None:
        path, kwargs = _parse_implementation(optimizer_implementation)
        module, _, cls = path.rpartition(".")
        # DeepSpeed imports unknown optimizer types from torch.optim by name (config-json).
        if module == "torch.optim" and kwargs in ("", "fused=True"):
            ds_optimizer = (cls, {})
    if ds_optimizer is not None:
        kind, extra = ds_optimizer
        ds["optimizer"] = {"type": kind, "params": {"lr": lr, **extra}}
    else:
        notes.append(
            f"{config.optimizer}: DeepSpeed cannot build this optimizer from its config, so "
            "the optimizer block is left out: create it in your script and pass it as "
            "deepspeed.initialize(..., optimizer=opt); with ZeRO, DeepSpeed may then ask "
            "for zero_allow_untested_optimizer: true."
        )

    if config.checkpointing is not Checkpointing.NONE:
        # NOTE: this block only configures deepspeed.checkpointing; the model still has to
        # checkpoint its blocks. Defaults per config-json "Activation Checkpointing".
        ds["activation_checkpointing"] = {
            "partition_activations": False,
            "cpu_checkpointing": False,
            "contiguous_memory_optimization": False,
            "number_checkpoints": None,
            "synchronize_checkpoint_boundary": False,
            "profile": False,
        }
        notes.append(
            "activation checkpointing must be switched on in the model: "
            "model.gradient_checkpointing_enable() for Hugging Face models, or "
            "deepspeed.checkpointing.checkpoint around each block."
        )
        if config.checkpointing is Checkpointing.SELECTIVE:
            notes.append(
                "DeepSpeed has no selective-recomputation switch (Korthikanti et al. 2022): "
                "checkpoint only the attention core in the model code, or use "
                "torch.utils.checkpoint's selective policy (see the --emit torch snippet)."
            )
    notes.extend(_common_notes(config))
    return DeepSpeedEmission(config=ds, notes=tuple(notes))


def _ds_precision(config: TrainingConfig, stage: int, notes: list[str]) -> dict[str, Any]:
    """The fp16/bf16/torch_autocast blocks for a precision (config-json, FP16/BFLOAT16)."""
    fp16_dynamic = {
        "enabled": True,
        # loss_scale 0 selects dynamic loss scaling; the rest are DeepSpeed's documented
        # defaults (Micikevicius et al. 2018 dynamic scaling).
        "loss_scale": 0,
        "initial_scale_power": 16,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }
    p = config.precision
    if p in (Precision.FP32, Precision.TF32):
        if p is Precision.TF32:
            notes.append(
                "TF32 is a PyTorch switch, not a DeepSpeed setting: call "
                "torch.set_float32_matmul_precision('high') in the script."
            )
        return {"fp16": {"enabled": False}, "bf16": {"enabled": False}}
    if p in (Precision.AMP_BF16, Precision.AMP_FP16):
        dtype = "bfloat16" if p is Precision.AMP_BF16 else "float16"
        if p is Precision.AMP_FP16:
            notes.append(
                "amp-fp16 maps to DeepSpeed's torch_autocast block, which configures no loss "
                "scaler; if fp16 gradients underflow, switch to fp16-mixed (fp16 block with "
                "dynamic loss scaling)."
            )
        return {"torch_autocast": {"enabled": True, "dtype": dtype}}
    if p is Precision.BF16_MIXED:
        return {"bf16": {"enabled": True}}
    if p is Precision.FP16_MIXED:
        return {"fp16": fp16_dynamic}
    if p is Precision.BF16:
        return {
            "bf16": {
                "enabled": True,
                "bf16_master_weights_and_grads": True,
                "bf16_optimizer_states": True,
            }
        }
    if p is Precision.FP16:
        # DeepSpeed keeps fp16 master weights only with ZeRO-Offload's DeepSpeedCPUAdam.
        if config.offload is not Offload.NONE and stage >= 1:
            return {"fp16": {**fp16_dynamic, "fp16_master_weights_and_grads": True}}
        notes.append(
            "bare fp16 (no fp32 master copy) needs ZeRO-Offload in DeepSpeed: without offload "
            "this config keeps fp32 master weights (fp16-mixed), ~4 more bytes per parameter "
            "than planned."
        )
        return {"fp16": fp16_dynamic}
    # fp8-mixed
    notes.append(
        "fp8 is not a DeepSpeed config option: the model's linear layers must run under "
        "Transformer Engine (te.Linear inside te.fp8_autocast); bf16 is set for the rest."
    )
    return {"bf16": {"enabled": True}}


def _ds_zero(config: TrainingConfig, stage: int) -> dict[str, Any]:
    """The zero_optimization block (config-json, "ZeRO Optimizations for FP16 Training")."""
    zero: dict[str, Any] = {"stage": stage}
    if stage == 0:
        return zero
    zero["contiguous_gradients"] = True
    zero["reduce_scatter"] = True
    zero["reduce_bucket_size"] = _BUCKET_ELEMENTS
    if stage >= 2:
        # Overlapping gradient reduction with backward only pays off once gradients are
        # partitioned; config-json warns it is rejected for stage 0/1 in some modes.
        zero["overlap_comm"] = True
    if stage in (1, 2):
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = _BUCKET_ELEMENTS
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    target = "nvme" if config.offload.nvme else "cpu"
    if config.offload is not Offload.NONE:
        zero["offload_optimizer"] = {"device": target, "pin_memory": True}
    if config.offload.params:
        zero["offload_param"] = {"device": target, "pin_memory": True}
    return zero


# -------------------------------------------------------------------------------- Accelerate


def emit_accelerate(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
) -> str:
    """An Accelerate config YAML, in the layout ``accelerate config`` writes.

    The text of :func:`accelerate_emission`; use that (or :func:`emit_config`) for the notes.

    Args:
        config: the configuration to emit.
        nodes: machines (``num_machines``).
        gpus_per_node: processes per machine (``num_processes`` is the total).

    Returns:
        The YAML text.

    Raises:
        UserError: when nodes and GPUs disagree with ``config.gpus``.
    """
    return accelerate_emission(config, nodes=nodes, gpus_per_node=gpus_per_node).text


def accelerate_emission(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
) -> Emission:
    """An Accelerate config YAML with its notes, in the layout ``accelerate config`` writes.

    ``distributed_type`` is FSDP for ``fsdp`` sharding, DEEPSPEED for ZeRO stages (and
    for offload without FSDP, since plain DDP cannot offload), MULTI_GPU for several
    processes without sharding and NO for one. ``mixed_precision`` follows Accelerate's
    autocast semantics (fp32 weights): bare fp16/bf16 become ``no`` with a note to cast
    the model.

    Args:
        config: the configuration to emit.
        nodes: machines (``num_machines``).
        gpus_per_node: processes per machine (``num_processes`` is the total).

    Returns:
        The YAML text (``accelerate_config.yaml``) and its notes.

    Raises:
        UserError: when nodes and GPUs disagree with ``config.gpus``.
    """
    world = world_size(config, nodes, gpus_per_node)
    notes: list[str] = []
    mixed = {
        Precision.FP32: "no",
        Precision.TF32: "no",
        Precision.AMP_FP16: "fp16",
        Precision.AMP_BF16: "bf16",
        Precision.FP16_MIXED: "fp16",
        Precision.BF16_MIXED: "bf16",
        Precision.FP16: "no",
        Precision.BF16: "no",
        Precision.FP8_MIXED: "fp8",
    }[config.precision]
    if config.precision in (Precision.FP16, Precision.BF16):
        notes.append(
            f"bare {config.precision.value}: Accelerate's mixed precision keeps fp32 weights, "
            f"so mixed_precision is 'no'; cast the model yourself "
            f"(model.to(torch.{'bfloat16' if config.precision is Precision.BF16 else 'float16'})"
            ") before accelerator.prepare."
        )
    if config.precision is Precision.TF32:
        notes.append("TF32: call torch.set_float32_matmul_precision('high') in the script.")
    if config.precision is Precision.FP8_MIXED:
        notes.append(
            "mixed_precision fp8 needs Transformer Engine or MS-AMP installed; set the backend "
            "with `accelerate launch --fp8_backend te` or an fp8_config block."
        )

    doc: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": mixed,
        "num_machines": nodes,
        "num_processes": world,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if nodes > 1:
        notes.append(
            "multi-node: set machine_rank (0..num_machines-1), main_process_ip and "
            "main_process_port on each machine."
        )

    use_deepspeed = config.sharding in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3) or (
        config.sharding is Sharding.NONE and config.offload is not Offload.NONE
    )
    if config.sharding in (Sharding.FSDP, Sharding.HSDP):
        doc["distributed_type"] = "FSDP"
        doc["fsdp_config"] = _accelerate_fsdp(config, notes)
    elif use_deepspeed:
        stage, stage_notes = _zero_stage(config)
        notes.extend(stage_notes)
        ds: dict[str, Any] = {
            "zero_stage": stage,
            "gradient_accumulation_steps": config.grad_accumulation,
            "gradient_clipping": _GRADIENT_CLIPPING,
            "offload_optimizer_device": "cpu" if config.offload is not Offload.NONE else "none",
            "offload_param_device": ("cpu" if config.offload.params else "none"),
            "zero3_init_flag": stage == 3,
        }
        if stage == 3:
            ds["zero3_save_16bit_model"] = True
        if nodes > 1:
            ds["deepspeed_multinode_launcher"] = "standard"
        doc["distributed_type"] = "DEEPSPEED"
        doc["deepspeed_config"] = ds
    elif world > 1:
        doc["distributed_type"] = "MULTI_GPU"
        doc["gpu_ids"] = "all"
    else:
        doc["distributed_type"] = "NO"
        doc["gpu_ids"] = "all"
    if config.grad_accumulation > 1 and not use_deepspeed:
        notes.append(
            f"gradient accumulation: Accelerator(gradient_accumulation_steps="
            f"{config.grad_accumulation}) and `with accelerator.accumulate(model):` in the loop."
        )
    if config.checkpointing is not Checkpointing.NONE and config.sharding not in (
        Sharding.FSDP,
        Sharding.HSDP,
    ):
        notes.append(
            "activation checkpointing: model.gradient_checkpointing_enable() (Hugging Face) or "
            "torch.utils.checkpoint around each block."
        )
    notes.extend(_common_notes(config))
    text = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)
    return Emission(
        target=EmitTarget.ACCELERATE,
        filename="accelerate_config.yaml",
        text=text,
        notes=tuple(notes),
    )


def _accelerate_fsdp(config: TrainingConfig, notes: list[str]) -> dict[str, Any]:
    """The fsdp_config block, keys and values as `accelerate config` writes them (FSDP1)."""
    offload = config.offload is not Offload.NONE
    if config.offload is Offload.OPTIMIZER:
        notes.append(
            "FSDP's CPU offload moves parameters and gradients together (the optimizer step "
            "then runs on the CPU); it has no optimizer-only offload, so fsdp_offload_params "
            "is true: less GPU memory than planned, slower steps."
        )
    fsdp: dict[str, Any] = {
        "fsdp_sharding_strategy": (
            "HYBRID_SHARD" if config.sharding is Sharding.HSDP else "FULL_SHARD"
        ),
        "fsdp_offload_params": offload,
        # NOTE: without fsdp_transformer_layer_cls_to_wrap, Accelerate wraps the classes in
        # a Hugging Face model's _no_split_modules; name them for other models.
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False,
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        # use_orig_params lets frozen and trainable parameters share a flat buffer (LoRA).
        "fsdp_use_orig_params": True,
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        # Selective recomputation is not what this switch does (it recomputes whole blocks).
        "fsdp_activation_checkpointing": config.checkpointing is Checkpointing.FULL,
    }
    if config.checkpointing is Checkpointing.SELECTIVE:
        notes.append(
            "fsdp_activation_checkpointing recomputes whole wrapped blocks; for selective "
            "recomputation (Korthikanti et al. 2022) use torch.utils.checkpoint's selective "
            "policy in the model (see the --emit torch snippet); this switch is left false."
        )
    return fsdp


# ------------------------------------------------------------------------------------- torch


def _parse_implementation(implementation: str) -> tuple[str, str]:
    """Split ``pkg.mod.Class(k=v, ...)`` into the dotted path and the kwargs source text.

    Raises:
        UserError: when the kwargs are not literal keyword arguments.
    """
    path, _, rest = implementation.partition("(")
    if "[" in path:
        raise UserError(
            f"{implementation!r} is not an optimizer implementation", "check rules/taxonomy.yaml"
        )
    kwargs = rest[:-1] if rest.endswith(")") else rest
    if kwargs.strip():
        try:
            call = ast.parse(f"f({kwargs})", mode="eval").body
        except SyntaxError as exc:
            raise UserError(
                f"cannot parse the arguments of {implementation!r}", "check rules/taxonomy.yaml"
            ) from exc
        # NOTE: only literal keyword arguments reach the generated code, so the taxonomy
        # cannot inject statements into a file users will run.
        if not isinstance(call, ast.Call) or call.args:
            raise UserError(f"{implementation!r}: keyword arguments only", "fix the taxonomy")
        for kw in call.keywords:
            ast.literal_eval(kw.value)
    return path.strip(), kwargs.strip()


def _implementation_for(config: TrainingConfig, implementation: str | None) -> str | None:
    if implementation is not None:
        return implementation
    from advisor.taxonomy import load_taxonomy  # local: emit_deepspeed never needs it

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
    2-layer transformer on random data on the CPU and prints the losses.

    Args:
        config: the configuration to emit.
        optimizer_implementation: the taxonomy's ``implementation`` string for
            ``config.optimizer`` (looked up in the shipped taxonomy when None).
        learning_rate: the lr written into the snippet (default: a per-family start value).

    Returns:
        The snippet (``train_snippet.py``) and its notes.

    Raises:
        UserError: when the implementation string cannot be turned into code.
    """
    notes: list[str] = []
    lr = learning_rate if learning_rate is not None else _default_learning_rate(config)
    zeroth = config.optimizer in {"mezo", "zo-adam", "dp-zo"}
    implementation = None if zeroth else _implementation_for(config, optimizer_implementation)
    optimizer_src = _torch_optimizer_source(config, implementation, notes)
    if zeroth and config.optimizer != "mezo":
        notes.append(
            f"{config.optimizer} is emitted as plain MeZO (ZO-SGD); its own update rule "
            "(Adam moments or DP noise on the projected gradient) is not in the snippet."
        )
    if zeroth and config.checkpointing is not Checkpointing.NONE:
        notes.append("MeZO runs no backward pass, so activation checkpointing is left out.")
    if config.precision in (Precision.BF16_MIXED, Precision.FP16_MIXED):
        notes.append(
            f"{config.precision.value} (16-bit weights with an fp32 master copy) has no "
            "built-in PyTorch form: the snippet uses torch.autocast, same numerics, fp32 "
            "weights (DeepSpeed or FSDP MixedPrecision give the planned layout)."
        )
    if config.sharding is not Sharding.NONE or config.gpus > 1:
        notes.append(
            "the snippet is single-process: wrap the model in DDP/FSDP (torch.distributed) "
            "or use --emit deepspeed/accelerate for the planned sharding and offload."
        )
    if config.dp_sgd:
        notes.append(
            "DP-SGD needs Opacus: opacus.PrivacyEngine().make_private(module=model, "
            "optimizer=opt, data_loader=loader, noise_multiplier=..., max_grad_norm=...)."
        )
    parts = [
        _HEADER.replace("__SUMMARY__", _summary(config)),
        _settings(config, lr, zeroth),
        _PRECISION_SRC,
        _ATTENTION_SRC,
    ]
    if config.checkpointing is not Checkpointing.NONE and not zeroth:
        parts.append(_CHECKPOINT_SRC)
    if config.task in (Task.LORA, Task.QLORA):
        parts.append(_LORA_SRC)
    if config.task is Task.QLORA:
        parts.append(_QLORA_SRC)
    if zeroth:
        parts.append(_MEZO_SRC)
    parts.append(optimizer_src)
    parts.append(_build_training_src(config, zeroth))
    parts.append(_MEZO_STEP_SRC if zeroth else _TRAIN_STEP_SRC)
    parts.append(_DEMO_SRC)
    text = "\n\n".join(textwrap.dedent(p).strip("\n") for p in parts) + "\n"
    return Emission(
        target=EmitTarget.TORCH, filename="train_snippet.py", text=text, notes=tuple(notes)
    )


def _summary(config: TrainingConfig) -> str:
    return (
        f"task={config.task.value} optimizer={config.optimizer} "
        f"precision={config.precision.value} attention={config.attention.value} "
        f"checkpointing={config.checkpointing.value} micro_batch={config.micro_batch} "
        f"grad_accumulation={config.grad_accumulation} sharding={config.sharding.value} "
        f"offload={config.offload.value}"
    )


def _settings(config: TrainingConfig, lr: float, zeroth: bool) -> str:
    backend = {
        Attention.FLASH: "FLASH_ATTENTION",
        Attention.MEM_EFFICIENT: "EFFICIENT_ATTENTION",
        Attention.EAGER: "MATH",
    }[config.attention]
    return f"""
        PRECISION = {config.precision.value!r}
        SDPA_BACKEND = {backend!r}
        CHECKPOINTING = {"none" if zeroth else config.checkpointing.value!r}
        MICRO_BATCH = {config.micro_batch}
        GRAD_ACCUMULATION = {config.grad_accumulation}
        LEARNING_RATE = {lr!r}
        LORA_RANK = {config.lora_rank}
        MAX_GRAD_NORM = {_GRADIENT_CLIPPING!r}
        """


def _torch_optimizer_source(
    config: TrainingConfig, implementation: str | None, notes: list[str]
) -> str:
    """``build_optimizer(params)`` for the implementation string."""
    opt_id = config.optimizer
    if opt_id in {"mezo", "zo-adam", "dp-zo"}:
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
            f"({implementation or 'none in the taxonomy'}); build_optimizer raises "
            "NotImplementedError: plug in your optimizer there."
        )
        return f"""
            def build_optimizer(params):
                raise NotImplementedError(
                    "optadvise has no ready implementation of {opt_id!s} "
                    "({implementation or "none"}); construct it here"
                )
            """
    assert implementation is not None  # for mypy: unbuildable covers None
    path, kwargs = _parse_implementation(implementation)
    module, _, cls = path.rpartition(".")
    call_kwargs = "lr=LEARNING_RATE" + (f", {kwargs}" if kwargs else "")
    if module == "torch.optim":
        return f"""
            def build_optimizer(params):
                return torch.optim.{cls}(params, {call_kwargs})
            """
    package = module.split(".")[0]
    pip_name = package.replace("_", "-")
    if package == "bitsandbytes":
        notes.append(f"{opt_id} needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU.")
    else:
        notes.append(f"{opt_id} needs {pip_name} (pip install {pip_name}).")
    return f"""
        def build_optimizer(params):
            try:
                import {module} as _impl
            except ImportError as exc:
                raise ImportError(
                    "this setup uses {path} ({opt_id}): pip install {pip_name}"
                ) from exc
            return _impl.{cls}(params, {call_kwargs})
        """


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
    if config.checkpointing is not Checkpointing.NONE and not zeroth:
        lines.append("    apply_checkpointing(model)")
    lines += [
        "    params = [p for p in model.parameters() if p.requires_grad]",
        "    optimizer = build_optimizer(params)",
        "    scaler = None",
    ]
    if not zeroth:
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


_HEADER = '''
    """Training setup emitted by optadvise: __SUMMARY__.

    build_training(model) -> (optimizer, autocast, scaler); train_step(...) runs one
    optimizer step with gradient accumulation. `python this_file.py [--steps N] [--seed S]`
    trains a tiny 2-layer transformer on random data on the CPU and prints the losses.
    """

    from __future__ import annotations

    import argparse
    import contextlib
    import functools
    import math
    import sys

    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    '''

_PRECISION_SRC = """
    @functools.cache
    def _warn_once(message):
        print(message, file=sys.stderr)


    def apply_precision(model):
        if PRECISION == "tf32":
            torch.set_float32_matmul_precision("high")
        if PRECISION == "bf16":
            # Bare bf16: weights, gradients and optimizer states all in bfloat16, no master
            # copy; updates smaller than bf16's resolution are lost (no Kahan summation).
            return model.to(torch.bfloat16)
        if PRECISION == "fp16":
            # Bare fp16 without a master copy or loss scaling: small gradients underflow.
            return model.to(torch.float16)
        return model


    def precision_context(device_type):
        if PRECISION in ("amp-bf16", "bf16-mixed"):
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        if PRECISION in ("amp-fp16", "fp16-mixed"):
            return torch.autocast(device_type=device_type, dtype=torch.float16)
        if PRECISION == "fp8-mixed":
            try:
                import transformer_engine.pytorch as te
            except ImportError:
                te = None
            if te is None or device_type != "cuda":
                _warn_once(
                    "fp8-mixed needs Transformer Engine (te.Linear layers) on a CUDA GPU; "
                    "falling back to bf16 autocast"
                )
                return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
            return te.fp8_autocast(enabled=True)
        return contextlib.nullcontext()
    """

_ATTENTION_SRC = """
    def attention_context(device_type):
        backend = getattr(SDPBackend, SDPA_BACKEND)
        if device_type == "cuda":
            return sdpa_kernel(backend)
        # NOTE: on a CPU only the flash and math kernels exist; allow the math fallback there
        # so the same code runs, and pin the backend on the GPU where it matters.
        return sdpa_kernel([backend, SDPBackend.MATH])
    """

_CHECKPOINT_SRC = """
    def _selective_policy(ctx, op, *args, **kwargs):
        # Selective recomputation (Korthikanti et al. 2022): keep the matmul outputs, recompute
        # the cheap elementwise ops and the attention softmax in the backward pass.
        from torch.utils.checkpoint import CheckpointPolicy

        save = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE


    def _blocks(model):
        # The repeated blocks: the largest nn.ModuleList in the model.
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        return max(lists, key=len) if lists else []


    def apply_checkpointing(model):
        if CHECKPOINTING == "full" and hasattr(model, "gradient_checkpointing_enable"):
            # Hugging Face models know their own blocks.
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            return
        from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

        kwargs = {"use_reentrant": False}
        if CHECKPOINTING == "selective":
            kwargs["context_fn"] = functools.partial(
                create_selective_checkpoint_contexts, _selective_policy
            )
        for block in _blocks(model):
            run = functools.partial(_with_attention, block.forward)

            def checkpointed(*args, _run=run, **kw):
                return checkpoint(_run, *args, **kwargs, **kw)

            block.forward = checkpointed


    def _with_attention(forward, *args, **kw):
        # NOTE: checkpoint restores autocast for the recomputation but not the SDPA backend
        # choice, so the block re-enters it itself; otherwise the recomputed forward may pick
        # another kernel than the first one (fatal under selective checkpointing).
        device_type = args[0].device.type if args and torch.is_tensor(args[0]) else "cpu"
        with attention_context(device_type):
            return forward(*args, **kw)
    """

_LORA_SRC = """
    class LoRALinear(nn.Module):
        # W x + (alpha / r) B A x, A ~ Kaiming-uniform, B = 0, W frozen (Hu et al. 2021).

        def __init__(self, base, rank, alpha=None, dtype=None):
            super().__init__()
            self.base = base
            self.scale = (alpha or 2 * rank) / rank
            kw = {"dtype": dtype or base.weight.dtype, "device": base.weight.device}
            self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **kw))
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **kw))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

        def forward(self, x):
            return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


    def _linears(model, skip):
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and name not in skip:
                    yield module, name, child


    def apply_lora(model, rank, skip=("lm_head",)):
        # Freeze every weight, then give each nn.Linear outside `skip` a trainable adapter.
        for p in model.parameters():
            p.requires_grad_(False)
        for module, name, child in list(_linears(model, skip)):
            setattr(module, name, LoRALinear(child, rank))
        return model
    """

_QLORA_SRC = """
    def apply_qlora(model, rank, skip=("lm_head",)):
        # QLoRA (Dettmers et al. 2023): frozen NF4-quantised base weights + LoRA adapters.
        try:
            import bitsandbytes as bnb
        except ImportError:
            bnb = None
        if bnb is None or next(model.parameters()).device.type != "cuda":
            print(
                "QLoRA needs bitsandbytes and a CUDA GPU; falling back to LoRA on "
                "unquantised weights (more memory than planned)",
                file=sys.stderr,
            )
            return apply_lora(model, rank, skip)
        for p in model.parameters():
            p.requires_grad_(False)
        for module, name, child in list(_linears(model, skip)):
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=torch.bfloat16,
                quant_type="nf4",
            )
            q.weight = bnb.nn.Params4bit(
                child.weight.data.cpu(), requires_grad=False, quant_type="nf4"
            )
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.cpu(), requires_grad=False)
            q = q.to(child.weight.device)  # quantises on the move to the GPU
            setattr(module, name, LoRALinear(q, rank, dtype=torch.bfloat16))
        return model
    """

_MEZO_SRC = """
    class MeZO:
        # Memory-efficient zeroth-order SGD (Malladi et al. 2023, Algorithm 1): the random
        # direction z is regenerated from a seed instead of stored, so training needs
        # inference memory only. One step = 2 forwards, 4 in-place passes over the weights.

        def __init__(self, params, lr, eps=1e-3, seed=0):
            self.params = list(params)
            self.lr = lr
            self.eps = eps
            self._seeds = torch.Generator().manual_seed(seed)

        def _perturb(self, seed, scale):
            gen = torch.Generator(device=self.params[0].device).manual_seed(seed)
            for p in self.params:
                z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
                p.add_(z, alpha=scale)

        @torch.no_grad()
        def step(self, closure):
            # closure() -> loss tensor from a forward pass only.
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._seeds))
            self._perturb(seed, self.eps)
            loss_plus = float(closure())
            self._perturb(seed, -2 * self.eps)
            loss_minus = float(closure())
            self._perturb(seed, self.eps)
            projected_grad = (loss_plus - loss_minus) / (2 * self.eps)
            self._perturb(seed, -self.lr * projected_grad)
            return (loss_plus + loss_minus) / 2

        def zero_grad(self, set_to_none=True):
            pass
    """

_TRAIN_STEP_SRC = """
    def train_step(model, micro_batches, loss_fn, optimizer, autocast, scaler):
        # One optimizer step over len(micro_batches) accumulated micro-batches; returns the loss.
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for inputs, targets in micro_batches:
            with autocast():
                loss = loss_fn(model(inputs), targets) / len(micro_batches)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total += float(loss.detach())
        params = [p for p in model.parameters() if p.grad is not None]
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return total
    """

_MEZO_STEP_SRC = """
    def train_step(model, micro_batches, loss_fn, optimizer, autocast, scaler):
        # MeZO: the projected gradient comes from the loss over all micro-batches.
        def closure():
            with autocast():
                losses = [loss_fn(model(x), y) for x, y in micro_batches]
            return sum(float(v) for v in losses) / len(losses)

        return optimizer.step(closure)
    """

_DEMO_SRC = """
    class _Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim)
            self.up = nn.Linear(dim, 4 * dim)
            self.down = nn.Linear(4 * dim, dim)

        def forward(self, x):
            b, s, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
            attn = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
            return x + self.down(F.gelu(self.up(self.norm2(x))))


    class TinyTransformer(nn.Module):
        def __init__(self, vocab=64, dim=32, heads=4, layers=2, seq_len=16):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.zeros(seq_len, dim))
            self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
            self.norm = nn.LayerNorm(dim)
            self.lm_head = nn.Linear(dim, vocab)

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.norm(x))


    def _loss(logits, targets):
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


    def main(argv=None):
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--steps", type=int, default=3)
        parser.add_argument("--seed", type=int, default=0)
        args = parser.parse_args(argv)
        torch.manual_seed(args.seed)
        model = TinyTransformer()
        optimizer, autocast, scaler = build_training(model)
        # A fixed batch with a learnable rule (next token = token + 1), so losses can fall.
        micro, accumulation = min(MICRO_BATCH, 4), min(GRAD_ACCUMULATION, 2)
        batches = []
        for _ in range(accumulation):
            tokens = torch.randint(0, 64, (micro, 16))
            batches.append((tokens, (tokens + 1) % 64))
        for step in range(args.steps):
            loss = train_step(model, batches, _loss, optimizer, autocast, scaler)
            print(f"step {step}: loss {loss:.6f}")
            if not math.isfinite(loss):
                return 1
        return 0


    if __name__ == "__main__":
        sys.exit(main())
    """


def emit_config(
    target: EmitTarget,
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    optimizer_implementation: str | None = None,
    learning_rate: float | None = None,
) -> Emission:
    """Emit one target's file for a configuration (what ``--emit TARGET`` writes).

    Args:
        target: deepspeed, accelerate or torch.
        config: the configuration to emit.
        nodes: machines.
        gpus_per_node: processes per machine (default ``config.gpus // nodes``).
        optimizer_implementation: the taxonomy's implementation string (torch target).
        learning_rate: the lr to write (default: a per-family starting value).

    Returns:
        The file name, text and notes.

    Raises:
        UserError: when nodes and GPUs disagree, or an implementation cannot be emitted.
    """
    if target is EmitTarget.DEEPSPEED:
        return emit_deepspeed(
            config,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            optimizer_implementation=optimizer_implementation,
            learning_rate=learning_rate,
        ).to_emission()
    if target is EmitTarget.ACCELERATE:
        return accelerate_emission(config, nodes=nodes, gpus_per_node=gpus_per_node)
    return torch_emission(
        config, optimizer_implementation=optimizer_implementation, learning_rate=learning_rate
    )
