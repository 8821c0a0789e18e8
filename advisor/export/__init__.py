"""Config emitters: one TrainingConfig as DeepSpeed JSON, Accelerate YAML, a torchtitan job TOML,
Megatron-LM arguments or a runnable PyTorch snippet.

Each emission says which plan the file really sets up (``expressed_config``): where an engine
cannot express the ranked plan, it names the nearest one it can (``differs`` and ``reason``),
so the report can price that one instead of silently handing over a different plan.
"""

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
    Stack,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.export.hyperparams import Family, Hyperparameters, family_of, hyperparameters_for

# NOTE: every key this module writes was checked against the projects' own code:
# DeepSpeed 0.19.8: https://www.deepspeed.ai/docs/config-json/ and deepspeed/runtime/config.py
# (tests load each file with DeepSpeedConfig); Accelerate 1.15: `accelerate config`
# (src/accelerate/commands/config/cluster.py) and ClusterConfig (config_args.py, which rejects
# unknown top-level keys; tests load each file with load_config_from_file); torchtitan v0.2.2
# (torchtitan/config/job_config.py, the last release with TOML job files); Megatron-LM
# core_v0.19.0 (megatron/training/arguments.py). tests/test_emit*.py hold the key lists.

DEEPSPEED_DOCS = "https://www.deepspeed.ai/docs/config-json/"
ACCELERATE_DOCS = "https://huggingface.co/docs/accelerate/usage_guides/fsdp"
TORCHTITAN_VERSION = "torchtitan v0.2.2 (torchtitan/config/job_config.py)"
MEGATRON_VERSION = "Megatron-LM core_v0.19.0 (megatron/training/arguments.py)"
#: Where NVMe offload writes unless the caller names a folder (DeepSpeed's docs use it too).
DEFAULT_NVME_PATH = "/local_nvme"

# DeepSpeed's default bucket sizes (elements), written out so the file is self-describing.
_BUCKET_ELEMENTS = 500_000_000
# Gradient clipping at global norm 1.0: the DeepSpeed default and the common LLM setting
# (GPT-3, Brown et al. 2020, App. B; Llama 2, Touvron et al. 2023, sec. 2.2).
_GRADIENT_CLIPPING = 1.0
_ZEROTH = frozenset({"mezo", "zo-adam", "dp-zo"})


class EmitTarget(str, Enum):
    """The engines `optadvise recommend --emit` writes a configuration for."""

    DEEPSPEED = "deepspeed"
    ACCELERATE = "accelerate"
    TORCH = "torch"
    TORCHTITAN = "torchtitan"
    MEGATRON = "megatron"


class Emission(BaseModel):
    """One emitted file: what to write, where, what the user must know, and which plan it is.

    ``notes`` carry everything the target format cannot say (DeepSpeed and Accelerate
    reject or ignore unknown keys, so no comments go into those files). ``expressed_config``
    is the plan the file sets up; ``differs`` is true when it is not the ranked plan (other
    memory or time), and ``reason`` says why, so the caller can price and show that plan.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: EmitTarget
    filename: str
    text: str
    notes: tuple[str, ...] = ()
    expressed_config: TrainingConfig
    differs: bool = False
    reason: str = ""


class DeepSpeedEmission(BaseModel):
    """A DeepSpeed config dict plus the notes that cannot go into it, and the plan it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: dict[str, Any]
    notes: tuple[str, ...] = ()
    expressed_config: TrainingConfig
    differs: bool = False
    reason: str = ""

    def to_emission(self) -> Emission:
        """The config as a ``ds_config.json`` file."""
        text = json.dumps(self.config, indent=2, sort_keys=False) + "\n"
        return Emission(
            target=EmitTarget.DEEPSPEED,
            filename="ds_config.json",
            text=text,
            notes=self.notes,
            expressed_config=self.expressed_config,
            differs=self.differs,
            reason=self.reason,
        )


# --------------------------------------------------------------------------- shared helpers


def world_size(config: TrainingConfig, nodes: int = 1, gpus_per_node: int | None = None) -> int:
    """The number of processes (devices), checked against ``config.world_size``.

    Args:
        config: the configuration; ``config.world_size`` = data x tensor x pipeline degrees.
        nodes: the number of machines.
        gpus_per_node: processes per machine; default ``config.world_size // nodes``.

    Returns:
        ``nodes * gpus_per_node``.

    Raises:
        UserError: when the three numbers disagree or are not positive.
    """
    if nodes < 1:
        raise UserError(f"--nodes must be at least 1, not {nodes}", "pass --nodes 1 or more")
    devices = config.world_size
    if gpus_per_node is None:
        if devices % nodes:
            raise UserError(
                f"{devices} devices do not split evenly over {nodes} nodes",
                "make --gpus a multiple of --nodes",
            )
        gpus_per_node = devices // nodes
    if gpus_per_node < 1:
        raise UserError(f"{gpus_per_node} GPUs per node", "pass at least one GPU per node")
    total = nodes * gpus_per_node
    if total != devices:
        raise UserError(
            f"{nodes} nodes x {gpus_per_node} GPUs = {total}, but the plan is for "
            f"{devices} devices ({config.gpus} data x {config.tensor_parallel} tensor x "
            f"{config.pipeline_parallel} pipeline parallel)",
            "make --gpus equal to the total number of GPUs",
        )
    return total


def same_plan(a: TrainingConfig, b: TrainingConfig) -> bool:
    """Whether two configs are one plan: FSDP full shard and ZeRO-3 shard the same states
    (Rajbhandari et al. 2020; Zhao et al. 2023), so the memory model prices them alike."""

    def key(c: TrainingConfig) -> TrainingConfig:
        return (
            c.model_copy(update={"sharding": Sharding.ZERO3})
            if c.sharding is (Sharding.FSDP)
            else c
        )

    return key(a) == key(b)


class _Expressed:
    """The plan a file really sets up, built change by change with the reason for each."""

    def __init__(self, config: TrainingConfig) -> None:
        self.ranked = config
        self.config = config
        self.reasons: list[str] = []

    def change(self, reason: str, *, same_plan: bool = False, **update: Any) -> None:
        """Move the expressed plan; ``same_plan`` marks a relabelling that changes neither
        memory nor time (ZeRO over one rank, hybrid sharding with one replica)."""
        self.config = self.config.model_copy(update=update)
        if same_plan:
            self.ranked = self.ranked.model_copy(update=update)
        else:
            self.reasons.append(reason)

    @property
    def differs(self) -> bool:
        return not same_plan(self.ranked, self.config)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.differs else ""


def _data_parallel_form(
    config: TrainingConfig, engine: str, full_shard: Sharding
) -> tuple[dict[str, Any], str]:
    """The plan's data-parallel form, for engines whose config file has no TP/PP degrees.

    DeepSpeed's JSON and Accelerate's YAML cannot set up tensor or pipeline parallelism (it
    lives in the model code), so their file runs every device as a data-parallel rank; TP and
    PP split the weights, so the parameters are sharded too (``full_shard``: ZeRO-3 or FSDP)
    unless the plan shards them already. A TP group shares each micro-batch, so each rank
    takes 1/TP of it; accumulation keeps the global batch. The change is stated, never
    silent, and the caller prices that plan; the ranked layout itself is in
    ``--emit torchtitan`` and ``--emit megatron``.

    Returns:
        The fields to change (empty when the plan has no TP/PP) and the reason.
    """
    model_parallel = config.tensor_parallel * config.pipeline_parallel
    if model_parallel == 1:
        return {}, ""
    planned = config.micro_batch * config.grad_accumulation * config.gpus
    micro = max(1, config.micro_batch // config.tensor_parallel)
    accumulation = max(1, round(planned / (micro * config.world_size)))
    update: dict[str, Any] = {
        "micro_batch": micro,
        "gpus": config.world_size,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "virtual_stages": 1,
        "grad_accumulation": accumulation,
    }
    sharded = "the planned sharding"
    if config.sharding.zero_stage < 3:
        update["sharding"] = full_shard
        sharded = f"{full_shard.value} sharding (TP/PP split the weights; this splits them too)"
    emitted = micro * accumulation * config.world_size
    batch = "" if emitted == planned else f"; global batch {emitted} instead of {planned}"
    reason = (
        f"{engine} cannot set up tensor parallelism {config.tensor_parallel} x pipeline "
        f"parallelism {config.pipeline_parallel} (it lives in the model code): this file runs "
        f"all {config.world_size} devices data parallel with {sharded}{batch}; "
        "--emit torchtitan or --emit megatron set up the ranked layout"
    )
    return update, reason


def _hsdp_degrees(config: TrainingConfig, nodes: int) -> tuple[int, int]:
    """(replicate, shard) data-parallel degrees of a hybrid-sharded plan.

    ``shard_group`` counts the data-parallel ranks that share one sharded copy; by default a
    node's (Zhao et al. 2023, sec. 3.2.2: shard inside a node, replicate across).

    Raises:
        UserError: when the shard group does not divide the data-parallel degree.
    """
    shard = config.shard_group or max(1, config.gpus // nodes)
    if shard > config.gpus or config.gpus % shard:
        raise UserError(
            f"a shard group of {shard} does not divide the {config.gpus} data-parallel ranks",
            "pick a shard group that divides the data-parallel degree",
        )
    return config.gpus // shard, shard


def _learning_rate(config: TrainingConfig, learning_rate: float | None) -> float:
    if learning_rate is not None:
        return learning_rate
    return hyperparameters_for(config.optimizer, config.task).lr


def _hyper_note(config: TrainingConfig) -> str:
    hp = hyperparameters_for(config.optimizer, config.task)
    family, own = family_of(config.optimizer)
    row = "its own row" if own else f"the {family.value} row (no recipe of its own here)"
    return (
        f"{config.optimizer} hyper-parameters for {config.task.value} from {row}: "
        f"{_describe(hp)}. Source: {hp.source}. A starting point to tune, not a fit."
    )


def _describe(hp: Hyperparameters) -> str:
    parts = [f"lr {hp.lr:g}"]
    if hp.betas is not None:
        parts.append(f"betas {hp.betas}")
    if hp.eps is not None:
        parts.append(f"eps {hp.eps:g}")
    if hp.momentum is not None:
        parts.append(f"momentum {hp.momentum:g}")
    parts.append(f"weight decay {hp.weight_decay:g}")
    return ", ".join(parts)


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
    if (config.offload.params or config.offload.nvme) and stage < 3:
        what = "parameter offload" if config.offload.params else "NVMe offload"
        notes.append(
            f"{what} is valid only with ZeRO stage 3 ({DEEPSPEED_DOCS}"
            f"#parameter-offloading; NVMe is ZeRO-Infinity, Rajbhandari et al. 2021): stage "
            f"raised from {stage} to 3, which adds a parameter all-gather per forward and "
            "backward (~1.5x the communication of stage 0-2)."
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


def _sharding_for_stage(config: TrainingConfig, stage: int) -> Sharding:
    if stage == config.sharding.zero_stage and config.sharding is not Sharding.HSDP:
        return config.sharding
    return {0: Sharding.NONE, 1: Sharding.ZERO1, 2: Sharding.ZERO2, 3: Sharding.ZERO3}[stage]


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
    if config.optimizer in _ZEROTH:
        notes.append(
            f"{config.optimizer} is zeroth-order (two forwards, no backward; Malladi et al. "
            "2023): the engine's backward/step loop does not apply; use the --emit torch "
            "snippet's MeZO loop and this file only for sharding and precision."
        )
    if config.loss_fused:
        notes.append(
            "the plan counts a fused/chunked cross-entropy (no full fp32 logits): use Liger's "
            "LigerFusedLinearCrossEntropyLoss or a chunked loss in the model code."
        )
    if config.optimizer_in_backward:
        notes.append(
            "the plan steps each parameter in backward (LOMO, Lv et al. 2023): register "
            "torch's Tensor.register_post_accumulate_grad_hook per parameter (see the --emit "
            "torch snippet); gradient clipping by global norm is not possible then."
        )
    if config.activation_offload:
        notes.append(
            "the plan keeps checkpointed block inputs in host memory: wrap the blocks with "
            "torchao/torchtune's OffloadActivations (torch.autograd.graph.saved_tensors_hooks)."
        )
    notes.append(_hyper_note(config))
    return notes


# --------------------------------------------------------------------------------- DeepSpeed

# taxonomy id -> DeepSpeed optimizer "type". DeepSpeed implements Adam, AdamW, Lamb, Lion and
# Muon itself and imports any other type name from torch.optim (config-json, "Optimizer
# Parameters"; deepspeed/runtime/engine.py _configure_basic_optimizer).
_DS_OPTIMIZERS: dict[str, str] = {
    "adam": "Adam",
    "adamw": "AdamW",
    "lamb": "Lamb",
    "lion": "Lion",
    "muon": "Muon",
    "sgd": "SGD",
    "sgd-momentum": "SGD",
    "nesterov": "SGD",
    "rmsprop": "RMSprop",
    "adafactor": "Adafactor",
    "adagrad": "Adagrad",
}
# The optimizers deepspeed.initialize accepts under ZeRO without
# "zero_allow_untested_optimizer": deepspeed/runtime/zero/utils.py ZERO_SUPPORTED_OPTIMIZERS
# (torch Adam/AdamW/Adagrad, FusedAdam, DeepSpeedCPUAdam/Adagrad/Lion, FusedLion) and
# MuonWithAuxAdam; DeepSpeed builds exactly these for the types below. Anything else,
# including every optimizer the user's script builds, trips its assertion.
_DS_ZERO_TESTED = frozenset({"Adam", "AdamW", "Adagrad", "Lion", "Muon"})


def _ds_optimizer_params(config: TrainingConfig, kind: str, lr: float) -> dict[str, Any]:
    """The optimizer's params block: lr plus the table's settings the type takes."""
    hp = hyperparameters_for(config.optimizer, config.task)
    params: dict[str, Any] = {"lr": lr}
    if kind in ("Adam", "AdamW", "Lamb", "Lion") and hp.betas is not None:
        params["betas"] = list(hp.betas)
    if kind in ("Adam", "AdamW", "Lamb") and hp.eps is not None:
        params["eps"] = hp.eps
    if kind == "SGD" and hp.momentum:
        params["momentum"] = hp.momentum
        if config.optimizer == "nesterov":
            params["nesterov"] = True
    if kind == "Muon" and hp.momentum:
        params["momentum"] = hp.momentum
    if kind != "Muon":
        params["weight_decay"] = hp.weight_decay
    if kind == "Adam":
        # NOTE: DeepSpeed's Adam applies decoupled weight decay unless adam_w_mode is false
        # (config-json: "adam_w_mode ... default true"), so plain Adam must say so.
        params["adam_w_mode"] = False
    return params


def emit_deepspeed(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    optimizer_implementation: str | None = None,
    learning_rate: float | None = None,
    cpu: bool = False,
    nvme_path: str | None = None,
) -> DeepSpeedEmission:
    """A DeepSpeed config (``ds_config.json``) for one training configuration.

    Batch sizes are consistent by construction: ``train_batch_size =
    train_micro_batch_size_per_gpu * gradient_accumulation_steps * world size``, as
    DeepSpeed requires. Sharding maps none/zero1/zero2/zero3 to ZeRO stage 0-3 and
    FSDP/HSDP to stage 3. Where DeepSpeed needs a higher stage than the plan (parameter or
    NVMe offload needs stage 3, optimizer offload stage >= 1, bare bf16 stage >= 1) the stage
    is raised, a note says why, and ``expressed_config`` carries the raised stage.

    An ``optimizer`` block is written for optimizers DeepSpeed builds from a config (Adam,
    AdamW, Lamb, Lion, Muon and torch.optim classes), with the hyper-parameters of
    :data:`advisor.export.hyperparams.HYPERPARAMETERS`; for the others (8-bit, GaLore, Sophia,
    MeZO...) the script builds the optimizer. Under ZeRO, ``zero_allow_untested_optimizer``
    is written true whenever the optimizer is not one ZeRO has tested, because
    ``deepspeed.initialize`` refuses such an optimizer otherwise. NVMe offload writes
    ``device: nvme`` with ``nvme_path``. Tensor and pipeline parallel plans become their
    data-parallel form, stated in ``reason`` (the ranked layout is in torchtitan/Megatron).

    Args:
        config: the configuration to emit.
        nodes: machines.
        gpus_per_node: processes per machine (default ``config.world_size // nodes``).
        optimizer_implementation: the taxonomy's implementation string; a plain
            ``torch.optim.X`` there lets DeepSpeed build optimizers this module does not map.
        learning_rate: the optimizer's lr (default: the hyper-parameter table's).
        cpu: the plan is for CPUs (DeepSpeed's CPU accelerator).
        nvme_path: the NVMe folder for NVMe offload (default :data:`DEFAULT_NVME_PATH`).

    Returns:
        The config dict, its notes and the plan it expresses.

    Raises:
        UserError: when nodes and GPUs disagree.
    """
    expressed = _Expressed(config)
    layout, layout_reason = _data_parallel_form(
        config, "DeepSpeed's ds_config.json", Sharding.ZERO3
    )
    if layout:
        expressed.change(layout_reason, **layout)
        config = expressed.config
    world = world_size(config, nodes, gpus_per_node)
    lr = _learning_rate(config, learning_rate)
    stage, notes = _zero_stage(config)
    if stage != config.sharding.zero_stage or config.sharding is Sharding.HSDP:
        why = (
            "DeepSpeed 0.19 has no hybrid (shard-in-node, replicate-across) ZeRO-3 (MiCS was "
            "removed): ZeRO-3 shards over all data-parallel ranks"
            if config.sharding is Sharding.HSDP and stage == 3
            else f"DeepSpeed needs ZeRO stage {stage} for this plan"
        )
        one_replica = config.sharding is Sharding.HSDP and _hsdp_degrees(config, nodes)[0] == 1
        # NOTE: over one data-parallel rank every ZeRO stage shards nothing: a relabelling.
        expressed.change(
            why,
            same_plan=one_replica or config.gpus == 1,
            sharding=_sharding_for_stage(config, stage),
            shard_group=None,
        )
    ds: dict[str, Any] = {
        "train_batch_size": config.micro_batch * config.grad_accumulation * world,
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": config.grad_accumulation,
        "gradient_clipping": _GRADIENT_CLIPPING,
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }
    ds.update(_ds_precision(config, stage, notes, expressed))
    ds["zero_optimization"] = _ds_zero(config, stage, nvme_path or DEFAULT_NVME_PATH)
    if config.offload.nvme:
        notes.append(
            f"NVMe offload writes to nvme_path {nvme_path or DEFAULT_NVME_PATH!r}: point it at "
            "a local NVMe folder; DeepSpeed's async_io op needs libaio (apt install "
            "libaio-dev) and is built on first use."
        )

    kind = _DS_OPTIMIZERS.get(config.optimizer)
    if kind is None and optimizer_implementation is not None:
        path, kwargs = _parse_implementation(optimizer_implementation)
        module, _, cls = path.rpartition(".")
        # DeepSpeed imports unknown optimizer types from torch.optim by name (config-json).
        if module == "torch.optim" and kwargs in ("", "fused=True"):
            kind = cls
    if config.optimizer in _ZEROTH:
        kind = None
    if kind is not None:
        ds["optimizer"] = {"type": kind, "params": _ds_optimizer_params(config, kind, lr)}
    else:
        notes.append(
            f"{config.optimizer}: DeepSpeed cannot build this optimizer from its config, so "
            "the optimizer block is left out: create it in your script and pass it as "
            "deepspeed.initialize(..., optimizer=opt)."
        )
    if stage >= 1 and kind not in _DS_ZERO_TESTED:
        ds["zero_allow_untested_optimizer"] = True
        who = "your script's" if kind is None else f"DeepSpeed's {kind}"
        notes.append(
            f"zero_allow_untested_optimizer is true: {who} optimizer is not on ZeRO's tested "
            "list (deepspeed/runtime/zero/utils.py ZERO_SUPPORTED_OPTIMIZERS), and "
            "deepspeed.initialize refuses it under ZeRO stage >= 1 without this key."
        )

    if config.checkpointing is not Checkpointing.NONE:
        # NOTE: this block only configures deepspeed.checkpointing; the model still has to
        # checkpoint its blocks. Defaults per config-json "Activation Checkpointing".
        ds["activation_checkpointing"] = {
            # config-json: cpu_checkpointing offloads the *partitioned* checkpoints, so it
            # needs partition_activations (a no-op split without model parallelism).
            "partition_activations": config.activation_offload,
            "cpu_checkpointing": config.activation_offload,
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
        elif config.checkpointing is Checkpointing.SELECTIVE_OP:
            notes.append(
                "op-level selective checkpointing (torchtitan's policy) is model code: "
                "torch.utils.checkpoint with create_selective_checkpoint_contexts around each "
                "block (see the --emit torch snippet)."
            )
        elif config.checkpointing is Checkpointing.SELECTIVE_LAYER:
            notes.append(
                f"checkpoint every {config.ac_frequency}-th block only (torchtitan's "
                "layer-level option); see the --emit torch snippet."
            )
    if config.optimizer_in_backward:
        expressed.change(
            "DeepSpeed's engine steps the optimizer after backward (no per-parameter step in "
            "backward)",
            optimizer_in_backward=False,
        )
    if config.expert_parallel > 1:
        notes.append(
            f"expert parallelism {config.expert_parallel} is set in the model code, not in "
            f"this file: deepspeed.moe.layer.MoE(..., ep_size={config.expert_parallel}) for "
            "each MoE layer (Rajbhandari et al. 2022, DeepSpeed-MoE)."
        )
    if cpu:
        notes.append(
            "CPU plan: run with DS_ACCELERATOR=cpu (DeepSpeed's CPU accelerator, oneCCL or "
            "gloo between processes); offload targets host memory, which is the device here."
        )
    notes.extend(_common_notes(config))
    return DeepSpeedEmission(
        config=ds,
        notes=tuple(notes),
        expressed_config=expressed.config,
        differs=expressed.differs,
        reason=expressed.reason,
    )


def _ds_precision(
    config: TrainingConfig, stage: int, notes: list[str], expressed: _Expressed
) -> dict[str, Any]:
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
            notes.append("TF32: call torch.set_float32_matmul_precision('high') in the script.")
        return {}
    if p is Precision.AMP_FP16:
        return {"torch_autocast": {"enabled": True, "dtype": "float16"}}
    if p is Precision.AMP_BF16:
        return {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}
    if p is Precision.FP16_MIXED:
        return {"fp16": fp16_dynamic}
    if p is Precision.BF16_MIXED:
        return {"bf16": {"enabled": True}}
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
        expressed.change(
            "bare fp16 without offload is fp16 with fp32 master weights in DeepSpeed",
            precision=Precision.FP16_MIXED,
        )
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


def _ds_zero(config: TrainingConfig, stage: int, nvme_path: str) -> dict[str, Any]:
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
    if config.offload is not Offload.NONE:
        zero["offload_optimizer"] = _ds_offload(config, nvme_path)
    if config.offload.params:
        zero["offload_param"] = _ds_offload(config, nvme_path)
    return zero


def _ds_offload(config: TrainingConfig, nvme_path: str) -> dict[str, Any]:
    if config.offload.nvme:
        return {"device": "nvme", "nvme_path": nvme_path, "pin_memory": True}
    return {"device": "cpu", "pin_memory": True}


# -------------------------------------------------------------------------------- Accelerate


def emit_accelerate(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    cpu: bool = False,
) -> str:
    """An Accelerate config YAML, in the layout ``accelerate config`` writes.

    The text of :func:`accelerate_emission`; use that (or :func:`emit_config`) for the notes
    and the plan the file expresses.

    Args:
        config: the configuration to emit.
        nodes: machines (``num_machines``).
        gpus_per_node: processes per machine (``num_processes`` is the total).
        cpu: the plan is for CPUs (``use_cpu: true``).

    Returns:
        The YAML text.

    Raises:
        UserError: when nodes and GPUs disagree.
    """
    return accelerate_emission(config, nodes=nodes, gpus_per_node=gpus_per_node, cpu=cpu).text


def _accelerate_mixed_precision(config: TrainingConfig, notes: list[str]) -> str:
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
    return mixed


def accelerate_emission(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    cpu: bool = False,
) -> Emission:
    """An Accelerate config YAML with its notes, in the layout ``accelerate config`` writes.

    ``distributed_type`` is FSDP for FSDP/HSDP sharding (HYBRID_SHARD for HSDP), DEEPSPEED
    for ZeRO stages and for any offload FSDP cannot do (optimizer-only and NVMe offload:
    ZeRO-Offload/Infinity through Accelerate's DeepSpeed plugin, so the ranked plan is the one
    set up), MULTI_GPU for several processes without sharding and NO for one; CPU plans get
    ``use_cpu: true`` and NO/MULTI_CPU. ``mixed_precision`` follows Accelerate's autocast
    semantics (fp32 weights): bare fp16/bf16 become ``no`` with a note to cast the model.
    Where the file cannot set up the ranked plan, ``expressed_config`` is the plan it sets up
    and ``differs``/``reason`` say so.

    Args:
        config: the configuration to emit.
        nodes: machines (``num_machines``).
        gpus_per_node: processes per machine (``num_processes`` is the total).
        cpu: the plan is for CPUs (``use_cpu: true``).

    Returns:
        The YAML text (``accelerate_config.yaml``), its notes and the plan it expresses.

    Raises:
        UserError: when nodes and GPUs disagree.
    """
    expressed = _Expressed(config)
    layout, layout_reason = _data_parallel_form(config, "Accelerate's config file", Sharding.FSDP)
    if layout:
        expressed.change(layout_reason, **layout)
        config = expressed.config
    world = world_size(config, nodes, gpus_per_node)
    notes: list[str] = []
    doc: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": _accelerate_mixed_precision(config, notes),
        "num_machines": nodes,
        "num_processes": world,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": cpu,
    }
    if nodes > 1:
        notes.append(
            "multi-node: set machine_rank (0..num_machines-1), main_process_ip and "
            "main_process_port on each machine."
        )
    fsdp_family = config.sharding in (Sharding.FSDP, Sharding.HSDP)
    # FSDP offloads parameters, gradients and optimizer states together, to host memory
    # only; optimizer-only and NVMe offload need DeepSpeed (ZeRO-Offload, ZeRO-Infinity).
    fsdp_can_offload = config.offload in (Offload.NONE, Offload.OPTIMIZER_PARAMS)
    use_deepspeed = (
        config.sharding in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3)
        or (fsdp_family and not fsdp_can_offload)
        or (config.sharding is Sharding.NONE and config.offload is not Offload.NONE)
    )
    if cpu:
        _accelerate_cpu(config, world, doc, notes, expressed)
    elif fsdp_family and not use_deepspeed:
        doc["distributed_type"] = "FSDP"
        doc["fsdp_config"] = _accelerate_fsdp(config, nodes, notes, expressed)
    elif use_deepspeed:
        doc["distributed_type"] = "DEEPSPEED"
        doc["deepspeed_config"] = _accelerate_deepspeed(config, nodes, notes, expressed)
    elif world > 1:
        doc["distributed_type"] = "MULTI_GPU"
        doc["gpu_ids"] = "all"
    else:
        doc["distributed_type"] = "NO"
        doc["gpu_ids"] = "all"
    if config.grad_accumulation > 1 and doc["distributed_type"] != "DEEPSPEED":
        notes.append(
            f"gradient accumulation: Accelerator(gradient_accumulation_steps="
            f"{config.grad_accumulation}) and `with accelerator.accumulate(model):` in the loop."
        )
    if config.checkpointing is not Checkpointing.NONE and doc["distributed_type"] != "FSDP":
        notes.append(
            "activation checkpointing: model.gradient_checkpointing_enable() (Hugging Face) or "
            "torch.utils.checkpoint around each block."
        )
    if config.optimizer_in_backward and doc["distributed_type"] in ("DEEPSPEED", "FSDP"):
        expressed.change(
            f"Accelerate's {doc['distributed_type']} steps the optimizer after backward (no "
            "per-parameter step in backward on sharded weights)",
            optimizer_in_backward=False,
        )
    if config.expert_parallel > 1 and doc["distributed_type"] == "DEEPSPEED":
        notes.append(
            f"expert parallelism {config.expert_parallel}: deepspeed.moe.layer.MoE(..., "
            f"ep_size={config.expert_parallel}) in the model code (Rajbhandari et al. 2022)."
        )
    elif config.expert_parallel > 1:
        expressed.change(
            "Accelerate's FSDP and DDP have no expert parallelism: the experts are sharded or "
            "replicated like any other weight",
            expert_parallel=1,
        )
    notes.extend(_common_notes(config))
    if expressed.differs:
        notes.insert(
            0, f"this file sets up a different plan than the ranked one: {expressed.reason}."
        )
    text = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)
    return Emission(
        target=EmitTarget.ACCELERATE,
        filename="accelerate_config.yaml",
        text=text,
        notes=tuple(notes),
        expressed_config=expressed.config,
        differs=expressed.differs,
        reason=expressed.reason,
    )


def _accelerate_cpu(
    config: TrainingConfig,
    world: int,
    doc: dict[str, Any],
    notes: list[str],
    expressed: _Expressed,
) -> None:
    """CPU plans: one process (NO) or several (MULTI_CPU, gloo/oneCCL), plain data parallel."""
    doc["distributed_type"] = "MULTI_CPU" if world > 1 else "NO"
    if config.offload is not Offload.NONE:
        # Host memory is the device's memory on a CPU: offloading moves nothing.
        expressed.change("offload on a CPU moves nothing", offload=Offload.NONE)
    if config.sharding is not Sharding.NONE:
        if world > 1:
            expressed.change(
                "Accelerate runs CPU processes as plain data parallel (MULTI_CPU): no ZeRO or "
                "FSDP sharding",
                sharding=Sharding.NONE,
                shard_group=None,
            )
        else:
            # One process shards nothing: the same plan without the label.
            expressed.change("one process shards nothing", same_plan=True, sharding=Sharding.NONE)
    if world > 1:
        notes.append(
            "CPU processes talk over gloo (or oneCCL with intel-extension-for-pytorch); "
            "launch with `accelerate launch --config_file accelerate_config.yaml train.py`."
        )


def _accelerate_deepspeed(
    config: TrainingConfig, nodes: int, notes: list[str], expressed: _Expressed
) -> dict[str, Any]:
    """The deepspeed_config block (commands/launch.py "DeepSpeed Arguments")."""
    stage, stage_notes = _zero_stage(config)
    notes.extend(stage_notes)
    if config.sharding is Sharding.HSDP:
        expressed.change(
            "FSDP has no optimizer-only or NVMe offload, and DeepSpeed no hybrid sharding: "
            "the file runs ZeRO-3 over all data-parallel ranks with the planned offload",
            same_plan=_hsdp_degrees(config, nodes)[0] == 1,
            sharding=Sharding.ZERO3,
            shard_group=None,
        )
    elif stage != config.sharding.zero_stage:
        expressed.change(
            f"DeepSpeed needs ZeRO stage {stage} for this plan",
            same_plan=config.gpus == 1,  # one data-parallel rank: no stage shards anything
            sharding=_sharding_for_stage(config, stage),
        )
    if config.sharding is Sharding.FSDP:
        notes.append(
            "FSDP cannot offload only the optimizer (nor to NVMe), so this file runs the same "
            "plan with DeepSpeed ZeRO-3 through Accelerate (ZeRO-Offload, Ren et al. 2021)."
        )
    device = "nvme" if config.offload.nvme else "cpu"
    ds: dict[str, Any] = {
        "zero_stage": stage,
        "gradient_accumulation_steps": config.grad_accumulation,
        "gradient_clipping": _GRADIENT_CLIPPING,
        "offload_optimizer_device": device if config.offload is not Offload.NONE else "none",
        "offload_param_device": device if config.offload.params else "none",
        "zero3_init_flag": stage == 3,
    }
    if config.offload.nvme:
        ds["offload_optimizer_nvme_path"] = DEFAULT_NVME_PATH
        if config.offload.params:
            ds["offload_param_nvme_path"] = DEFAULT_NVME_PATH
        notes.append(
            f"NVMe offload writes to {DEFAULT_NVME_PATH!r}: change offload_*_nvme_path to a "
            "local NVMe folder; DeepSpeed's async_io op needs libaio."
        )
    if stage == 3:
        ds["zero3_save_16bit_model"] = True
    if nodes > 1:
        ds["deepspeed_multinode_launcher"] = "standard"
    if stage >= 1:
        notes.append(
            "an optimizer your script builds is fine under ZeRO here: accelerator.prepare "
            "sets zero_allow_untested_optimizer itself for a torch.optim.Optimizer "
            "(accelerate/accelerator.py)."
        )
    return ds


def _accelerate_fsdp(
    config: TrainingConfig, nodes: int, notes: list[str], expressed: _Expressed
) -> dict[str, Any]:
    """The fsdp_config block, keys and values as `accelerate config` 1.15 writes them (FSDP1)."""
    strategy = "FULL_SHARD"
    if config.sharding is Sharding.HSDP:
        strategy = "HYBRID_SHARD"
        per_node = max(1, config.gpus // nodes)
        _replicate, shard = _hsdp_degrees(config, nodes)
        if shard != per_node:
            # NOTE: FSDP1's HYBRID_SHARD builds its shard groups from the devices of a node
            # (torch.distributed.fsdp _init_intra_and_inter_node_groups).
            expressed.change(
                f"Accelerate's HYBRID_SHARD shards within a node ({per_node} ranks), not "
                f"within groups of {shard}",
                shard_group=None if config.shard_group is None else per_node,
            )
    fsdp: dict[str, Any] = {
        "fsdp_version": 1,
        # NOTE: `accelerate config` 1.15 writes only fsdp_reshard_after_forward, but
        # `accelerate launch` then passes its default FSDP_SHARDING_STRATEGY=FULL_SHARD and
        # the FSDP1 wrapper prefers that (accelerator.py: "sharding_strategy or
        # reshard_after_forward"), so HYBRID_SHARD would be lost; the deprecated key is the
        # one that is honoured (tests/test_emit_engines.py launches it).
        "fsdp_sharding_strategy": strategy,
        "fsdp_reshard_after_forward": strategy,
        # FSDP offloads parameters and gradients, and the optimizer step runs on the CPU:
        # the plan's optimizer+params offload.
        "fsdp_offload_params": config.offload.params,
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
    if config.checkpointing in (
        Checkpointing.SELECTIVE,
        Checkpointing.SELECTIVE_OP,
        Checkpointing.SELECTIVE_LAYER,
    ):
        notes.append(
            "fsdp_activation_checkpointing recomputes every wrapped block; for "
            f"{config.checkpointing.value} checkpointing use torch.utils.checkpoint in the "
            "model (see the --emit torch snippet); this switch is left false."
        )
    return fsdp


# -------------------------------------------------------------------------------- torchtitan


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # Python's shortest round-trip form is valid TOML (1e-08, 0.0003)
    if isinstance(value, str):
        return json.dumps(value)  # TOML basic strings use JSON's escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _to_toml(sections: dict[str, dict[str, Any]], header: list[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in header]
    for name, table in sections.items():
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def _layout_checks(config: TrainingConfig, engine: str, cpu: bool) -> None:
    if cpu:
        raise UserError(
            f"{engine} trains on CUDA GPUs; this plan is for a CPU",
            "use --emit torch or --emit accelerate for a CPU plan",
        )


def emit_torchtitan(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    learning_rate: float | None = None,
    num_layers: int | None = None,
    cpu: bool = False,
) -> Emission:
    """A torchtitan job TOML (``torchtitan.toml``) with the plan's parallel layout.

    Written for :data:`TORCHTITAN_VERSION`, the last release whose ``JobConfig`` reads TOML
    (later torchtitan keeps the same ``--section.key`` names as command-line overrides).
    ``[parallelism]`` carries the data-parallel replicate/shard degrees (DDP, FSDP, HSDP),
    tensor parallelism (torchtitan's TP plan always shards the sequence too, Korthikanti et
    al. 2022), pipeline parallelism with 1F1B or Interleaved1F1B and the pipeline micro-batch,
    and expert parallelism; ``[training]`` the batch geometry and precision,
    ``[activation_checkpoint]`` full/selective recomputation, ``[optimizer]`` the table's
    hyper-parameters. What torchtitan cannot set up (optimizer-only or NVMe offload, optimizers
    other than Adam/AdamW, fp16, ZeRO-1) moves ``expressed_config`` to the nearest plan it can.

    Args:
        config: the configuration to emit.
        nodes: machines.
        gpus_per_node: processes per machine (default ``config.world_size // nodes``).
        learning_rate: the lr (default: the hyper-parameter table's).
        num_layers: the model's transformer blocks; needed for more than 2 virtual pipeline
            stages per rank (``pipeline_parallel_layers_per_stage``).
        cpu: the plan is for CPUs (refused: torchtitan trains on GPUs).

    Returns:
        The TOML text, its notes and the plan it expresses.

    Raises:
        UserError: for CPU plans, inconsistent degrees, or virtual stages without num_layers.
    """
    _layout_checks(config, "torchtitan", cpu)
    if config.task in (Task.LORA, Task.QLORA) or config.optimizer in _ZEROTH or config.dp_sgd:
        what = (
            "LoRA/QLoRA adapters"
            if config.task in (Task.LORA, Task.QLORA)
            else "DP-SGD"
            if config.dp_sgd
            else "zeroth-order training"
        )
        raise UserError(
            f"torchtitan {TORCHTITAN_VERSION.split()[1]} has no {what}",
            "use --emit deepspeed, accelerate or torch for this plan",
        )
    world = world_size(config, nodes, gpus_per_node)
    notes: list[str] = []
    expressed = _Expressed(config)
    hp = hyperparameters_for(config.optimizer, config.task)
    lr = _learning_rate(config, learning_rate)

    # --- data-parallel degrees (torchtitan ParallelDims: replicate x shard x tp x pp = world)
    parallelism: dict[str, Any] = {}
    if config.sharding is Sharding.HSDP:
        replicate, shard = _hsdp_degrees(config, nodes)
    elif config.sharding is Sharding.NONE:
        replicate, shard = config.gpus, 1
    else:
        replicate, shard = 1, config.gpus
    parallelism["data_parallel_replicate_degree"] = replicate
    parallelism["data_parallel_shard_degree"] = shard
    if config.sharding is Sharding.ZERO2:
        # FSDP2 without resharding after forward keeps the gathered weights until backward:
        # gradients and optimizer states sharded, parameters not (ZeRO-2's memory).
        parallelism["fsdp_reshard_after_forward"] = "never"
    elif config.sharding is Sharding.ZERO1:
        parallelism["fsdp_reshard_after_forward"] = "never"
        expressed.change(
            "torchtitan's FSDP2 shards gradients with the optimizer states (no ZeRO-1): "
            "ZeRO-2's layout, less memory",
            sharding=Sharding.ZERO2,
        )
    else:
        parallelism["fsdp_reshard_after_forward"] = "default"
    parallelism["tensor_parallel_degree"] = config.tensor_parallel
    # Async TP overlaps the TP collectives with matmuls, as the plan's cost assumed
    # (config.tp_overlapped); torchtitan applies it only under torch.compile
    # (job_config.py), which the fused stack turns on.
    parallelism["enable_async_tensor_parallel"] = (
        config.tensor_parallel > 1 and config.tp_overlapped and config.stack is Stack.FUSED
    )
    parallelism["pipeline_parallel_degree"] = config.pipeline_parallel
    if config.pipeline_parallel > 1:
        interleaved = config.virtual_stages > 1
        parallelism["pipeline_parallel_schedule"] = "Interleaved1F1B" if interleaved else "1F1B"
        parallelism["pipeline_parallel_microbatch_size"] = config.micro_batch
        if config.virtual_stages > 2:
            stages = config.pipeline_parallel * config.virtual_stages
            per_stage, first, last = _stage_split(num_layers, stages)
            parallelism["pipeline_parallel_layers_per_stage"] = per_stage
            parallelism["pipeline_parallel_first_stage_less_layers"] = first
            parallelism["pipeline_parallel_last_stage_less_layers"] = last
        # Without layers_per_stage torchtitan puts 1 stage per rank on 1F1B and 2 on looped
        # schedules (torchtitan/distributed/pipeline_parallel.py).
        if config.grad_accumulation < config.pipeline_parallel * config.virtual_stages:
            notes.append(
                f"{config.grad_accumulation} micro-batches per step for "
                f"{config.pipeline_parallel * config.virtual_stages} pipeline stages: the "
                "bubble is large (Narayanan et al. 2021); torchtitan warns about it too."
            )
    elif config.virtual_stages > 1:
        raise UserError(
            f"{config.virtual_stages} virtual stages without pipeline parallelism",
            "virtual stages need pipeline_parallel > 1",
        )
    if config.expert_parallel > 1:
        if shard % config.expert_parallel:
            raise UserError(
                f"torchtitan's expert parallelism {config.expert_parallel} must divide the "
                f"data-parallel shard degree {shard} (ParallelDims: ep x efsdp = dp_shard)",
                "use FSDP sharding with a shard degree that the expert degree divides",
            )
        parallelism["expert_parallel_degree"] = config.expert_parallel
        parallelism["expert_tensor_parallel_degree"] = config.tensor_parallel

    # --- batch geometry: with PP the accumulated micro-batches are the pipeline's
    # micro-batches; without it torchtitan derives accumulation from the global batch.
    global_batch = config.micro_batch * config.grad_accumulation * config.gpus
    local = (
        config.micro_batch * config.grad_accumulation
        if config.pipeline_parallel > 1
        else config.micro_batch
    )
    training: dict[str, Any] = {
        "local_batch_size": local,
        "global_batch_size": global_batch,
        "seq_len": config.seq_len,
        "max_norm": _GRADIENT_CLIPPING,
    }
    _torchtitan_precision(config, training, notes, expressed)
    _torchtitan_offload(config, training, expressed)
    if config.activation_offload:
        expressed.change(
            "torchtitan v0.2.2 keeps checkpointed activations on the GPU (no activation offload)",
            activation_offload=False,
        )

    optimizer = _torchtitan_optimizer(config, hp, lr, expressed)
    if config.optimizer_in_backward:
        if config.pipeline_parallel > 1 or config.expert_parallel > 1:
            expressed.change(
                "torchtitan's optimizer-in-backward does not run with pipeline or expert "
                "parallelism (components/optimizer.py)",
                optimizer_in_backward=False,
            )
        else:
            optimizer["early_step_in_backward"] = True
    activation = {
        Checkpointing.NONE: {"mode": "none"},
        Checkpointing.FULL: {"mode": "full"},
        # Per-op selective checkpointing: keep matmul outputs, recompute the rest
        # (torchtitan's "op" policy; Korthikanti et al. 2022).
        Checkpointing.SELECTIVE: {"mode": "selective", "selective_ac_option": "op"},
        Checkpointing.SELECTIVE_OP: {"mode": "selective", "selective_ac_option": "op"},
        Checkpointing.SELECTIVE_LAYER: {
            "mode": "selective",
            "selective_ac_option": str(config.ac_frequency),
        },
    }[config.checkpointing]
    sections: dict[str, dict[str, Any]] = {
        "job": {"description": f"optadvise plan: {_summary(config)}"},
        "optimizer": optimizer,
        "training": training,
        "parallelism": parallelism,
        "activation_checkpoint": activation,
        "compile": {"enable": config.stack is Stack.FUSED, "components": ["model", "loss"]},
    }
    if config.precision is Precision.FP8_MIXED:
        sections["model"] = {"converters": ["quantize.linear.float8"]}
        sections["quantize.linear.float8"] = {
            "enable_fsdp_float8_all_gather": shard > 1,
            "precompute_float8_dynamic_scale_for_fsdp": shard > 1,
            "filter_fqns": ["output"],
        }
    notes.append(
        "set [model] name, flavor and hf_assets_path, and [training] dataset and steps, for "
        "your model and data; launch with "
        f"`NGPU={world // nodes} CONFIG_FILE=torchtitan.toml ./run_train.sh` on each node."
    )
    if config.tensor_parallel > 1:
        notes.append(
            "torchtitan's tensor parallelism shards the sequence in norms and dropout too "
            "(sequence parallelism, Korthikanti et al. 2022) and computes the loss in "
            "parallel; keep each TP group inside a node (NVLink)."
        )
    notes.append(_hyper_note(config))
    if expressed.differs:
        notes.insert(
            0, f"this file sets up a different plan than the ranked one: {expressed.reason}."
        )
    header = [
        f"torchtitan job config written by optadvise for {TORCHTITAN_VERSION}.",
        f"World size {world} = data replicate {replicate} x shard {shard} x tensor "
        f"{config.tensor_parallel} x pipeline {config.pipeline_parallel}.",
        "Add [model] (name, flavor, hf_assets_path) and [training] dataset/steps for your run.",
    ]
    return Emission(
        target=EmitTarget.TORCHTITAN,
        filename="torchtitan.toml",
        text=_to_toml(sections, header),
        notes=tuple(notes),
        expressed_config=expressed.config,
        differs=expressed.differs,
        reason=expressed.reason,
    )


def _stage_split(num_layers: int | None, stages: int) -> tuple[int, int, int]:
    """(layers_per_stage, first-stage weight, last-stage weight) giving exactly ``stages``.

    torchtitan v0.2.2 (distributed/pipeline_parallel.py) builds ceil((layers + first + last)
    / layers_per_stage) stages, where first/last count the embedding and the output head as
    that many blocks (default 1 each), and each weight must not exceed the blocks per stage.
    The default weights are kept where they give the stage count; else the nearest ones.

    Raises:
        UserError: when the layer count is unknown or too small for that many stages.
    """
    if num_layers is None:
        raise UserError(
            f"{stages} pipeline stages need the model's layer count to place the blocks",
            "pass the model (--model or --model-config) so its layer count is known",
        )
    # The default weights (1 + 1) first, then the nearest: they balance the embedding and
    # the head against the blocks.
    for extra in sorted(range(2 * num_layers + 3), key=lambda e: (abs(e - 2), e)):
        effective = num_layers + extra
        first, last = (extra + 1) // 2, extra // 2
        if max(first, last) > effective // stages:
            continue
        for per_stage in range(1, effective + 1):
            if (stages - 1) * per_stage < effective <= stages * per_stage:
                return per_stage, first, last
    raise UserError(
        f"{num_layers} layers cannot be split into {stages} pipeline stages",
        "pick fewer pipeline or virtual stages",
    )


def _torchtitan_precision(
    config: TrainingConfig, training: dict[str, Any], notes: list[str], expressed: _Expressed
) -> None:
    p = config.precision
    # JobConfig.training: dtype is the storage dtype of weights/grads/states (bare bf16);
    # mixed_precision_param the compute dtype FSDP casts to (or autocast under DDP).
    if p is Precision.BF16:
        training["dtype"] = "bfloat16"
        training["mixed_precision_param"] = "bfloat16"
    elif p in (Precision.FP32, Precision.TF32):
        training["dtype"] = "float32"
        training["mixed_precision_param"] = "float32"
        if p is Precision.TF32:
            notes.append("TF32: torchtitan enables TF32 matmuls by default on Ampere+ GPUs.")
    else:
        training["dtype"] = "float32"
        training["mixed_precision_param"] = "bfloat16"
        if p in (Precision.FP16, Precision.FP16_MIXED, Precision.AMP_FP16):
            expressed.change(
                "torchtitan trains in bf16 or fp32 only (no fp16 loss scaling)",
                precision=Precision.BF16_MIXED,
            )


def _torchtitan_offload(
    config: TrainingConfig, training: dict[str, Any], expressed: _Expressed
) -> None:
    if config.offload is Offload.NONE:
        return
    # training.enable_cpu_offload: FSDP2 CPUOffloadPolicy, parameters, gradients and
    # optimizer states on the host, the optimizer step on the CPU.
    training["enable_cpu_offload"] = True
    if config.offload is not Offload.OPTIMIZER_PARAMS:
        expressed.change(
            "torchtitan offloads parameters, gradients and optimizer states together, to host "
            "memory only",
            offload=Offload.OPTIMIZER_PARAMS,
        )


def _torchtitan_optimizer(
    config: TrainingConfig, hp: Hyperparameters, lr: float, expressed: _Expressed
) -> dict[str, Any]:
    family, own = family_of(config.optimizer)
    if own and family in (Family.ADAMW, Family.ADAM) and config.optimizer in ("adamw", "adam"):
        name = "AdamW" if config.optimizer == "adamw" else "Adam"
    else:
        # components/optimizer.py builds Adam and AdamW only.
        expressed.change(
            f"torchtitan builds only Adam and AdamW, not {config.optimizer}", optimizer="adamw"
        )
        name = "AdamW"
        hp = hyperparameters_for("adamw", config.task)
        lr = hp.lr
    betas = hp.betas or (0.9, 0.999)
    return {
        "name": name,
        "lr": lr,
        "beta1": betas[0],
        "beta2": betas[1],
        "eps": hp.eps if hp.eps is not None else 1e-8,
        "weight_decay": hp.weight_decay,
        "implementation": "fused",
    }


# -------------------------------------------------------------------------------- Megatron-LM


def emit_megatron(
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    learning_rate: float | None = None,
    cpu: bool = False,
) -> Emission:
    """Megatron-LM training arguments (``megatron_args.sh``) with the plan's parallel layout.

    Flags of :data:`MEGATRON_VERSION`: tensor parallelism with sequence parallelism
    (Shoeybi et al. 2019; Korthikanti et al. 2022), pipeline parallelism with interleaved
    virtual stages (Narayanan et al. 2021), expert parallelism, micro and global batch,
    recomputation, the distributed optimizer (ZeRO-1) or Megatron-FSDP (ZeRO-2/3, HSDP),
    precision, attention backend, optimizer and its hyper-parameters, and optimizer CPU offload.
    What Megatron cannot set up (parameter or NVMe offload, autocast and bare 16-bit layouts,
    optimizers outside adam/sgd/lion/muon) moves ``expressed_config`` to the nearest plan.

    Args:
        config: the configuration to emit.
        nodes: machines.
        gpus_per_node: processes per machine (default ``config.world_size // nodes``).
        learning_rate: the lr (default: the hyper-parameter table's).
        cpu: the plan is for CPUs (refused: Megatron-LM trains on CUDA GPUs).

    Returns:
        A bash array of the arguments, its notes and the plan it expresses.

    Raises:
        UserError: for CPU plans, adapters or zeroth-order plans, inconsistent degrees.
    """
    _layout_checks(config, "Megatron-LM", cpu)
    world = world_size(config, nodes, gpus_per_node)
    if config.task in (Task.LORA, Task.QLORA) or config.optimizer in _ZEROTH or config.dp_sgd:
        raise UserError(
            "Megatron-LM's training loop has no LoRA/QLoRA adapters, DP-SGD or zeroth-order "
            "optimizers",
            "use --emit deepspeed, accelerate or torch for this plan",
        )
    notes: list[str] = []
    expressed = _Expressed(config)
    args: list[tuple[str, Any]] = [
        ("--tensor-model-parallel-size", config.tensor_parallel),
        ("--pipeline-model-parallel-size", config.pipeline_parallel),
    ]
    if config.virtual_stages > 1:
        if config.pipeline_parallel < 2:
            raise UserError(
                f"{config.virtual_stages} virtual stages without pipeline parallelism",
                "virtual stages need pipeline_parallel > 1",
            )
        args.append(("--num-virtual-stages-per-pipeline-rank", config.virtual_stages))
    if config.tensor_parallel > 1:
        args.append(("--sequence-parallel", None))
        if config.tp_overlapped:
            # TP collectives overlapped with their GEMMs (Transformer Engine userbuffers), as
            # the plan's cost assumed.
            args.append(("--tp-comm-overlap", None))
    if config.expert_parallel > 1:
        args.append(("--expert-model-parallel-size", config.expert_parallel))
    args += [
        ("--micro-batch-size", config.micro_batch),
        ("--global-batch-size", config.micro_batch * config.grad_accumulation * config.gpus),
        ("--seq-length", config.seq_len),
    ]
    if config.checkpointing is Checkpointing.FULL:
        # Recompute every block from its input (recompute_num_layers 1 per uniform unit).
        args += [
            ("--recompute-granularity", "full"),
            ("--recompute-method", "uniform"),
            ("--recompute-num-layers", 1),
        ]
    elif config.checkpointing is Checkpointing.SELECTIVE:
        args.append(("--recompute-granularity", "selective"))
    elif config.checkpointing in (Checkpointing.SELECTIVE_OP, Checkpointing.SELECTIVE_LAYER):
        # NOTE: Megatron-LM recomputes whole blocks (full) or listed modules (selective); it
        # has no every-other-matmul policy nor every-n-th-block option. Full recomputation
        # keeps less than either, so the plan still fits, at its extra compute.
        expressed.change(
            f"Megatron-LM has no torchtitan-style {config.checkpointing.value} checkpointing; "
            "full recomputation is the nearest that fits",
            checkpointing=Checkpointing.FULL,
        )
        args += [
            ("--recompute-granularity", "full"),
            ("--recompute-method", "uniform"),
            ("--recompute-num-layers", 1),
        ]
    args += _megatron_sharding(config, nodes)
    args += _megatron_precision(config, expressed)
    args.append(
        (
            "--attention-backend",
            {
                Attention.FLASH: "flash",
                Attention.MEM_EFFICIENT: "fused",
                Attention.EAGER: "unfused",
            }[config.attention],
        )
    )
    if config.loss_fused:
        args.append(("--cross-entropy-loss-fusion", None))
    args += _megatron_optimizer(config, learning_rate, expressed)
    args.append(("--clip-grad", _GRADIENT_CLIPPING))
    if config.offload is not Offload.NONE:
        # Megatron's hybrid-device optimizer (optimizer states and step on the host) rides on
        # the precision-aware optimizer path (arguments.py asserts it).
        args += [
            ("--optimizer-cpu-offload", None),
            ("--use-precision-aware-optimizer", None),
            ("--optimizer-offload-fraction", 1.0),
        ]
        if config.offload is not Offload.OPTIMIZER:
            expressed.change(
                "Megatron-LM offloads only optimizer states, to host memory",
                offload=Offload.OPTIMIZER,
            )
    if config.optimizer_in_backward:
        expressed.change(
            "Megatron-LM has no optimizer step in backward", optimizer_in_backward=False
        )
    if config.activation_offload:
        expressed.change(
            "this export does not write Megatron-LM's activation CPU offloading (its "
            "TransformerConfig rejects it with pipeline parallelism or recomputation)",
            activation_offload=False,
        )
    lines = [
        "#!/usr/bin/env bash",
        f"# Megatron-LM arguments written by optadvise for {MEGATRON_VERSION}.",
        f"# World size {world} = data {config.gpus} x tensor {config.tensor_parallel} x "
        f"pipeline {config.pipeline_parallel}.",
        "# Add your model's arguments (--num-layers --hidden-size --num-attention-heads ...),",
        "# data and schedule, then on each node:",
        f"#   torchrun --nproc_per_node {world // nodes} --nnodes {nodes} pretrain_gpt.py "
        '"${MEGATRON_ARGS[@]}" <model, data and schedule arguments>',
        "MEGATRON_ARGS=(",
    ]
    for flag, value in args:
        lines.append(f"  {flag}" if value is None else f"  {flag} {_shell_value(value)}")
    lines.append(")")
    notes.append(_hyper_note(config))
    if expressed.differs:
        notes.insert(
            0, f"these arguments set up a different plan than the ranked one: {expressed.reason}."
        )
    return Emission(
        target=EmitTarget.MEGATRON,
        filename="megatron_args.sh",
        text="\n".join(lines) + "\n",
        notes=tuple(notes),
        expressed_config=expressed.config,
        differs=expressed.differs,
        reason=expressed.reason,
    )


def _shell_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _megatron_sharding(config: TrainingConfig, nodes: int) -> list[tuple[str, Any]]:
    """ZeRO-1 is Megatron's distributed optimizer; ZeRO-2/3 and HSDP are Megatron-FSDP's
    sharding strategies (arguments.py --data-parallel-sharding-strategy)."""
    s = config.sharding
    if s is Sharding.NONE:
        return []
    if s is Sharding.ZERO1:
        return [("--use-distributed-optimizer", None), ("--overlap-grad-reduce", None)]
    strategy = "optim_grads" if s is Sharding.ZERO2 else "optim_grads_params"
    out: list[tuple[str, Any]] = [
        ("--use-megatron-fsdp", None),
        ("--use-distributed-optimizer", None),
        ("--data-parallel-sharding-strategy", strategy),
    ]
    if s is Sharding.HSDP:
        replicate, _shard = _hsdp_degrees(config, nodes)
        # Megatron-FSDP turns hybrid sharding on when there is more than one optimizer
        # instance (core/distributed/fsdp/mcore_fsdp_adapter.py).
        if replicate > 1:
            out.append(("--num-distributed-optimizer-instances", replicate))
    return out


def _megatron_precision(config: TrainingConfig, expressed: _Expressed) -> list[tuple[str, Any]]:
    p = config.precision
    # Megatron's --bf16/--fp16 are the mixed layouts: 16-bit weights and gradients, fp32 main
    # weights in the optimizer (Micikevicius et al. 2018), with dynamic loss scaling for fp16.
    if p in (Precision.FP32, Precision.TF32):
        return []
    if p is Precision.BF16_MIXED:
        return [("--bf16", None)]
    if p is Precision.FP16_MIXED:
        return [("--fp16", None)]
    if p is Precision.FP8_MIXED:
        return [("--bf16", None), ("--fp8-format", "hybrid")]
    target = (
        Precision.BF16_MIXED
        if p in (Precision.AMP_BF16, Precision.BF16)
        else (Precision.FP16_MIXED)
    )
    expressed.change(
        f"Megatron-LM has no {p.value} layout: it keeps 16-bit weights with fp32 main weights "
        f"({target.value})",
        precision=target,
    )
    return [("--bf16", None)] if target is Precision.BF16_MIXED else [("--fp16", None)]


# Megatron's --optimizer choices (core_v0.19.0 arguments.py); its "adam" decouples weight
# decay (TE/apex FusedAdam, adam_w_mode), i.e. AdamW; lion needs the emerging_optimizers
# package (core/optimizer/__init__.py).
_MEGATRON_OPTIMIZERS = {
    "adamw": "adam",
    "sgd": "sgd",
    "sgd-momentum": "sgd",
    "lion": "lion",
    "muon": "muon",
}


def _megatron_optimizer(
    config: TrainingConfig, learning_rate: float | None, expressed: _Expressed
) -> list[tuple[str, Any]]:
    name = _MEGATRON_OPTIMIZERS.get(config.optimizer)
    optimizer = config.optimizer
    fsdp = config.sharding not in (Sharding.NONE, Sharding.ZERO1)
    if name in ("lion", "muon") and fsdp:
        # arguments.py: "Emerging optimizer does not support Megatron-FSDP for now."
        expressed.change(
            f"Megatron-LM runs {name} only without Megatron-FSDP; with the planned "
            f"{config.sharding.value} sharding it trains AdamW",
            optimizer="adamw",
        )
        name, optimizer = "adam", "adamw"
    if name is None:
        expressed.change(
            f"Megatron-LM builds adam(w), sgd, lion and muon; {config.optimizer} is run as AdamW",
            optimizer="adamw",
        )
        name, optimizer = "adam", "adamw"
    hp = hyperparameters_for(optimizer, config.task)
    lr = learning_rate if learning_rate is not None and optimizer == config.optimizer else hp.lr
    out: list[tuple[str, Any]] = [("--optimizer", name), ("--lr", lr)]
    if hp.betas is not None and name in ("adam", "lion"):
        out += [(f"--{name}-beta1", hp.betas[0]), (f"--{name}-beta2", hp.betas[1])]
    if hp.eps is not None and name == "adam":
        out.append(("--adam-eps", hp.eps))
    if name == "sgd":
        out.append(("--sgd-momentum", hp.momentum or 0.0))
    if name == "muon":
        out.append(("--muon-momentum", hp.momentum or 0.95))
    out.append(("--weight-decay", hp.weight_decay))
    return out


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
    lr = _learning_rate(config, learning_rate)
    zeroth = config.optimizer in _ZEROTH
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
    if config.tensor_parallel > 1 or config.pipeline_parallel > 1 or config.expert_parallel > 1:
        notes.append(
            f"the plan's layout (tensor {config.tensor_parallel} x pipeline "
            f"{config.pipeline_parallel}, expert {config.expert_parallel}) is not in this "
            "single-process snippet: use --emit torchtitan or --emit megatron for it."
        )
    notes.append(_hyper_note(config))
    if config.dp_sgd:
        notes.append(
            "DP-SGD needs Opacus: opacus.PrivacyEngine().make_private(module=model, "
            "optimizer=opt, data_loader=loader, noise_multiplier=..., max_grad_norm=...)."
        )
    parts = [
        _HEADER.replace("__SUMMARY__", _summary(config)).replace(
            "__NEEDS__", _real_run_needs(config, implementation, cpu)
        ),
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
    if config.optimizer_in_backward and not zeroth:
        parts.append(_IN_BACKWARD_SRC)
        if config.grad_accumulation > 1:
            notes.append(
                "the step runs in backward, so each micro-batch steps the weights: the "
                f"planned accumulation of {config.grad_accumulation} becomes "
                f"{config.grad_accumulation} smaller steps (LOMO trains without accumulation)."
            )
        if config.precision in (Precision.AMP_FP16, Precision.FP16_MIXED):
            notes.append(
                "fp16 loss scaling cannot unscale per-parameter steps in backward: the "
                "snippet runs without a GradScaler; prefer bf16 here."
            )
    parts.append(_build_training_src(config, zeroth))
    parts.append(_MEZO_STEP_SRC if zeroth else _TRAIN_STEP_SRC)
    parts.append(_DEMO_SRC)
    text = "\n\n".join(textwrap.dedent(p).strip("\n") for p in parts) + "\n"
    return Emission(
        target=EmitTarget.TORCH,
        filename="train_snippet.py",
        text=text,
        notes=tuple(notes),
        expressed_config=config,
    )


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
    if config.dp_sgd:
        needs.append("opacus (per-sample gradients)")
    needs = list(dict.fromkeys(needs))
    if config.world_size > 1 or config.sharding is not Sharding.NONE:
        launcher = (
            f"{config.world_size} processes: torchrun --nproc_per_node <GPUs per node> with "
            "the model wrapped for the planned layout, or the --emit deepspeed/accelerate/"
            "torchtitan/megatron file and its launcher"
        )
    else:
        launcher = "one process: python this_file.py (your model and data in main)"
    device = "CPU" if cpu else "GPU"
    if not cpu and (config.task is Task.QLORA or config.precision is Precision.FP8_MIXED):
        device = "CUDA GPU"
    text = f"The real run needs: {', '.join(needs)}; the planned {device}; launch with {launcher}."
    return textwrap.fill(text, width=84, subsequent_indent="    ")


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
        AC_FREQUENCY = {config.ac_frequency}
        MICRO_BATCH = {config.micro_batch}
        GRAD_ACCUMULATION = {config.grad_accumulation}
        LEARNING_RATE = {lr!r}
        LORA_RANK = {config.lora_rank}
        MAX_GRAD_NORM = {_GRADIENT_CLIPPING!r}
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
        assert isinstance(call, ast.Call)  # checked by _parse_implementation
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
    if opt_id in _ZEROTH:
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
    path, kwargs = _parse_implementation(implementation)
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
    if config.checkpointing is not Checkpointing.NONE and not zeroth:
        lines.append("    apply_checkpointing(model)")
    in_backward = config.optimizer_in_backward and not zeroth
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


_HEADER = '''
    """Training setup emitted by optadvise: __SUMMARY__.

    build_training(model) -> (optimizer, autocast, scaler); train_step(...) runs one
    optimizer step with gradient accumulation. `python this_file.py [--steps N] [--seed S]`
    trains a tiny 2-layer transformer on random data on the CPU and prints the losses; it
    needs only torch: a missing optional package falls back with a printed note.

    __NEEDS__
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


    def _op_policy():
        # torchtitan's op-level selective checkpointing (selective_ac_option "op"): save the
        # matmul and fused-attention outputs, except every second matmul; recompute the rest.
        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

        save = {
            torch.ops.aten.mm.default,
            torch.ops.aten._scaled_dot_product_efficient_attention.default,
            torch.ops.aten._scaled_dot_product_flash_attention.default,
            torch.ops.aten.max.default,
        }
        count = {"forward": 0, "recompute": 0}

        def policy(ctx, op, *args, **kwargs):
            mode = "recompute" if ctx.is_recompute else "forward"
            if op == torch.ops.aten.mm.default:
                count[mode] += 1
                if count[mode] % 2 == 0:
                    return CheckpointPolicy.PREFER_RECOMPUTE
            return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)


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
        if CHECKPOINTING == "selective-op":
            kwargs["context_fn"] = _op_policy
        for index, block in enumerate(_blocks(model)):
            if CHECKPOINTING == "selective-layer" and (index + 1) % AC_FREQUENCY:
                continue  # torchtitan's layer-level option: every AC_FREQUENCY-th block only
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

_IN_BACKWARD_SRC = """
    class StepInBackward:
        # The optimizer step fused into backward (LOMO, Lv et al. 2023; PyTorch's
        # register_post_accumulate_grad_hook): one optimizer per parameter steps as soon as
        # its gradient is complete and frees it, so the full set of gradients never exists.
        # No gradient clipping by global norm and no accumulation over micro-batches then.

        def __init__(self, params):
            self.optimizers = {p: build_optimizer([p]) for p in params}
            for p in self.optimizers:
                p.register_post_accumulate_grad_hook(self._step)

        def _step(self, param):
            self.optimizers[param].step()
            self.optimizers[param].zero_grad(set_to_none=True)

        def step(self):
            pass  # done in backward

        def zero_grad(self, set_to_none=True):
            pass  # gradients are freed in backward
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
    cpu: bool = False,
    nvme_path: str | None = None,
    num_layers: int | None = None,
) -> Emission:
    """Emit one target's file for a configuration (what ``--emit TARGET`` writes).

    Args:
        target: deepspeed, accelerate, torch, torchtitan or megatron.
        config: the configuration to emit.
        nodes: machines.
        gpus_per_node: processes per machine (default ``config.world_size // nodes``).
        optimizer_implementation: the taxonomy's implementation string.
        learning_rate: the lr to write (default: the hyper-parameter table's).
        cpu: the plan is for CPUs (Accelerate writes ``use_cpu: true``; GPU-only engines
            refuse).
        nvme_path: the NVMe folder for NVMe offload (DeepSpeed).
        num_layers: the model's blocks (torchtitan's virtual pipeline stages).

    Returns:
        The file name, text and notes, and the plan the file expresses (``differs`` when it
        is not the ranked plan, with the ``reason``).

    Raises:
        UserError: when nodes and GPUs disagree, the engine cannot express the layout, or an
            implementation cannot be emitted.
    """
    if target is EmitTarget.DEEPSPEED:
        return emit_deepspeed(
            config,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            optimizer_implementation=optimizer_implementation,
            learning_rate=learning_rate,
            cpu=cpu,
            nvme_path=nvme_path,
        ).to_emission()
    if target is EmitTarget.ACCELERATE:
        return accelerate_emission(config, nodes=nodes, gpus_per_node=gpus_per_node, cpu=cpu)
    if target is EmitTarget.TORCHTITAN:
        return emit_torchtitan(
            config,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            learning_rate=learning_rate,
            num_layers=num_layers,
            cpu=cpu,
        )
    if target is EmitTarget.MEGATRON:
        return emit_megatron(
            config, nodes=nodes, gpus_per_node=gpus_per_node, learning_rate=learning_rate, cpu=cpu
        )
    return torch_emission(
        config,
        optimizer_implementation=optimizer_implementation,
        learning_rate=learning_rate,
        cpu=cpu,
    )
