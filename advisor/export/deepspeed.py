"""DeepSpeed's ``ds_config.json`` for one plan: the ZeRO stage (raised where DeepSpeed needs
it), precision blocks, offload, the optimizer block DeepSpeed can build, and activation
checkpointing. ``zero_stage`` is shared with Accelerate's DeepSpeed plugin."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from advisor.config import (
    Checkpointing,
    ContextParallelKind,
    Offload,
    Precision,
    Sharding,
    TrainingConfig,
)
from advisor.export.common import (
    DEFAULT_NVME_PATH,
    GRADIENT_CLIPPING,
    ZEROTH,
    common_notes,
    fp8_recipe_note,
    parse_implementation,
    resolve_learning_rate,
)
from advisor.export.emission import Emission, EmitTarget
from advisor.export.expression import (
    Expressed,
    data_parallel_form,
    hsdp_degrees,
    without_context_parallel,
    world_size,
)
from advisor.export.hyperparams import hyperparameters_for
from advisor.export.moe import deepspeed_moe

DEEPSPEED_DOCS = "https://www.deepspeed.ai/docs/config-json/"
# DeepSpeed's default bucket sizes (elements), written out so the file is self-describing.
BUCKET_ELEMENTS = 500_000_000


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


def zero_stage(config: TrainingConfig) -> tuple[int, list[str]]:
    """The ZeRO stage for a config, bumped where DeepSpeed needs it, with the reasons."""
    notes: list[str] = []
    stage = config.layout.sharding.zero_stage
    if config.layout.sharding in (Sharding.FSDP, Sharding.HSDP):
        notes.append(
            "FSDP full sharding maps to ZeRO stage 3 in DeepSpeed (both shard parameters, "
            "gradients and optimizer states; Rajbhandari et al. 2020, Zhao et al. 2023)."
        )
    # NOTE: we bump rather than refuse: a higher ZeRO stage only shards more, so the plan's
    # memory bound still holds; the cost is communication (stage 3 moves ~1.5x the bytes
    # of plain data parallelism, Rajbhandari et al. 2020), which the note states.
    if (config.savers.offload.params or config.savers.offload.nvme) and stage < 3:
        what = "parameter offload" if config.savers.offload.params else "NVMe offload"
        notes.append(
            f"{what} is valid only with ZeRO stage 3 ({DEEPSPEED_DOCS}"
            f"#parameter-offloading; NVMe is ZeRO-Infinity, Rajbhandari et al. 2021): stage "
            f"raised from {stage} to 3, which adds a parameter all-gather per forward and "
            "backward (~1.5x the communication of stage 0-2)."
        )
        stage = 3
    elif config.savers.offload is Offload.OPTIMIZER and stage == 0:
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


def sharding_for_stage(config: TrainingConfig, stage: int) -> Sharding:
    """The plan's sharding relabelled for the ZeRO stage an engine runs (HSDP has none)."""
    if stage == config.layout.sharding.zero_stage and config.layout.sharding is not Sharding.HSDP:
        return config.layout.sharding
    return {0: Sharding.NONE, 1: Sharding.ZERO1, 2: Sharding.ZERO2, 3: Sharding.ZERO3}[stage]


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
    expressed = Expressed(config)
    if config.layout.context_parallel_kind is not ContextParallelKind.ULYSSES:
        # DeepSpeed splits sequences with Ulysses only (no ring attention).
        without_context_parallel(expressed, "DeepSpeed (Ulysses only, no ring attention)")
        config = expressed.config
    layout, layout_reason = data_parallel_form(config, "DeepSpeed's ds_config.json", Sharding.ZERO3)
    if layout:
        expressed.change(layout_reason, **layout)
        config = expressed.config
    world = world_size(config, nodes, gpus_per_node)
    lr = resolve_learning_rate(config, learning_rate)
    stage, notes = _ds_stage(config, nodes, expressed)
    cp = config.layout.context_parallel
    ds: dict[str, Any] = {
        # The batch of the data-parallel ranks: a sequence-parallel group shares its samples
        # (DeepSpeedConfig: world size / sequence_parallel_size).
        "train_batch_size": config.batch.micro_batch * config.batch.grad_accumulation * world // cp,
        "train_micro_batch_size_per_gpu": config.batch.micro_batch,
        "gradient_accumulation_steps": config.batch.grad_accumulation,
        "gradient_clipping": GRADIENT_CLIPPING,
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }
    ds.update(_ds_precision(config, stage, notes, expressed))
    ds["zero_optimization"] = _ds_zero(config, stage, nvme_path or DEFAULT_NVME_PATH)
    if config.savers.offload.nvme:
        notes.append(
            f"NVMe offload writes to nvme_path {nvme_path or DEFAULT_NVME_PATH!r}: point it at "
            "a local NVMe folder; DeepSpeed's async_io op needs libaio (apt install "
            "libaio-dev) and is built on first use."
        )
    _ds_optimizer(config, optimizer_implementation, lr, stage, ds, notes)
    _ds_checkpointing(config, ds, notes)
    if config.savers.optimizer_in_backward:
        expressed.change(
            "DeepSpeed's engine steps the optimizer after backward (no per-parameter step in "
            "backward)",
            optimizer_in_backward=False,
        )
    deepspeed_moe(config, expressed, notes)
    if cp > 1:
        # DeepSpeed-Ulysses (Jacobs et al. 2023) as DeepSpeed 0.19 runs it for Hugging Face
        # models (runtime/sequence_parallel/ulysses_sp.py, the ALST components).
        ds["sequence_parallel_size"] = cp
        notes.append(
            f"Ulysses sequence parallelism {cp}: register its attention in the model code, "
            "mpu = deepspeed.runtime.sequence_parallel.ulysses_sp.UlyssesSPAttentionHF."
            f"register_with_transformers(model_name_or_path=..., sequence_parallel_size={cp}, "
            "...), pass deepspeed.initialize(..., mpu=mpu), and shard each batch's sequences "
            "with UlyssesSPDataLoaderAdapter (https://www.deepspeed.ai/tutorials/"
            "ulysses-alst-sequence-parallelism/)."
        )
    if cpu:
        notes.append(
            "CPU plan: run with DS_ACCELERATOR=cpu (DeepSpeed's CPU accelerator, oneCCL or "
            "gloo between processes); offload targets host memory, which is the device here."
        )
    notes.extend(common_notes(config))
    return DeepSpeedEmission(
        config=ds,
        notes=tuple(notes),
        expressed_config=expressed.config,
        differs=expressed.differs,
        reason=expressed.reason,
    )


def _ds_stage(config: TrainingConfig, nodes: int, expressed: Expressed) -> tuple[int, list[str]]:
    """The ZeRO stage DeepSpeed runs, its notes, and the expressed plan's sharding for it."""
    stage, notes = zero_stage(config)
    if stage != config.layout.sharding.zero_stage or config.layout.sharding is Sharding.HSDP:
        why = (
            "DeepSpeed 0.19 has no hybrid (shard-in-node, replicate-across) ZeRO-3 (MiCS was "
            "removed): ZeRO-3 shards over all data-parallel ranks"
            if config.layout.sharding is Sharding.HSDP and stage == 3
            else f"DeepSpeed needs ZeRO stage {stage} for this plan"
        )
        one_replica = (
            config.layout.sharding is Sharding.HSDP and hsdp_degrees(config, nodes)[0] == 1
        )
        # NOTE: over one data-parallel rank every ZeRO stage shards nothing: a relabelling.
        expressed.change(
            why,
            same_plan=one_replica or config.layout.dp_cp == 1,
            sharding=sharding_for_stage(config, stage),
            shard_group=None,
        )
    return stage, notes


def _ds_optimizer(
    config: TrainingConfig,
    optimizer_implementation: str | None,
    lr: float,
    stage: int,
    ds: dict[str, Any],
    notes: list[str],
) -> None:
    """The optimizer block DeepSpeed can build, else a note; the untested-optimizer key."""
    kind = _DS_OPTIMIZERS.get(config.optimizer)
    if kind is None and optimizer_implementation is not None:
        path, kwargs = parse_implementation(optimizer_implementation)
        module, _, cls = path.rpartition(".")
        # DeepSpeed imports unknown optimizer types from torch.optim by name (config-json).
        if module == "torch.optim" and kwargs in ("", "fused=True"):
            kind = cls
    if config.optimizer in ZEROTH:
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


def _ds_checkpointing(config: TrainingConfig, ds: dict[str, Any], notes: list[str]) -> None:
    """The activation_checkpointing block and what the model code must do."""
    if config.savers.checkpointing is not Checkpointing.NONE:
        # NOTE: this block only configures deepspeed.checkpointing; the model still has to
        # checkpoint its blocks. Defaults per config-json "Activation Checkpointing".
        ds["activation_checkpointing"] = {
            # config-json: cpu_checkpointing offloads the *partitioned* checkpoints, so it
            # needs partition_activations (a no-op split without model parallelism).
            "partition_activations": config.savers.activation_offload,
            "cpu_checkpointing": config.savers.activation_offload,
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
        if config.savers.checkpointing is Checkpointing.SELECTIVE:
            notes.append(
                "DeepSpeed has no selective-recomputation switch (Korthikanti et al. 2022): "
                "checkpoint only the attention core in the model code, or use "
                "torch.utils.checkpoint's selective policy (see the --emit torch snippet)."
            )
        elif config.savers.checkpointing is Checkpointing.SELECTIVE_OP:
            notes.append(
                "op-level selective checkpointing (torchtitan's policy) is model code: "
                "torch.utils.checkpoint with create_selective_checkpoint_contexts around each "
                "block (see the --emit torch snippet)."
            )
        elif config.savers.checkpointing is Checkpointing.SELECTIVE_LAYER:
            notes.append(
                f"checkpoint every {config.savers.ac_frequency}-th block only (torchtitan's "
                "layer-level option); see the --emit torch snippet."
            )


def _ds_precision(
    config: TrainingConfig, stage: int, notes: list[str], expressed: Expressed
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
        if config.savers.offload is not Offload.NONE and stage >= 1:
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
    # fp8-mixed, mxfp8-mixed, nvfp4-mixed
    recipe = {
        Precision.MXFP8_MIXED: " with recipe=MXFP8BlockScaling()",
        Precision.NVFP4_MIXED: " with recipe=NVFP4BlockScaling()",
    }.get(p, "")
    notes.append(
        f"{p.value.split('-')[0]} is not a DeepSpeed config option: the model's linear layers "
        f"must run under Transformer Engine (te.Linear inside te.fp8_autocast{recipe}); bf16 "
        "is set for the rest."
    )
    chosen = fp8_recipe_note(config)
    if chosen is not None:
        notes.append(chosen)
    return {"bf16": {"enabled": True}}


def _ds_zero(config: TrainingConfig, stage: int, nvme_path: str) -> dict[str, Any]:
    """The zero_optimization block (config-json, "ZeRO Optimizations for FP16 Training")."""
    zero: dict[str, Any] = {"stage": stage}
    if stage == 0:
        return zero
    zero["contiguous_gradients"] = True
    zero["reduce_scatter"] = True
    zero["reduce_bucket_size"] = BUCKET_ELEMENTS
    if stage >= 2:
        # Overlapping gradient reduction with backward only pays off once gradients are
        # partitioned; config-json warns it is rejected for stage 0/1 in some modes.
        zero["overlap_comm"] = True
    if stage in (1, 2):
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = BUCKET_ELEMENTS
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if config.savers.offload is not Offload.NONE:
        zero["offload_optimizer"] = _ds_offload(config, nvme_path)
    if config.savers.offload.params:
        zero["offload_param"] = _ds_offload(config, nvme_path)
    return zero


def _ds_offload(config: TrainingConfig, nvme_path: str) -> dict[str, Any]:
    if config.savers.offload.nvme:
        return {"device": "nvme", "nvme_path": nvme_path, "pin_memory": True}
    return {"device": "cpu", "pin_memory": True}
