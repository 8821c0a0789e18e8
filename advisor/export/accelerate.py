"""Accelerate's config YAML for one plan, in the layout ``accelerate config`` writes: the
distributed type (NO, MULTI_GPU, MULTI_CPU, FSDP or DEEPSPEED), mixed precision, and the
fsdp_config or deepspeed_config block."""

from __future__ import annotations

from typing import Any

import yaml

from advisor.config import Checkpointing, MoeOverlap, Offload, Precision, Sharding, TrainingConfig
from advisor.export.common import (
    DEFAULT_NVME_PATH,
    GRADIENT_CLIPPING,
    common_notes,
    fp8_recipe_note,
)
from advisor.export.deepspeed import sharding_for_stage, zero_stage
from advisor.export.emission import Emission, EmitTarget
from advisor.export.expression import (
    Expressed,
    data_parallel_form,
    hsdp_degrees,
    without_context_parallel,
    world_size,
)
from advisor.export.moe import deepspeed_moe

ACCELERATE_DOCS = "https://huggingface.co/docs/accelerate/usage_guides/fsdp"


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
        Precision.MXFP8_MIXED: "fp8",
        Precision.NVFP4_MIXED: "fp8",
    }[config.precision]
    if config.precision in (Precision.MXFP8_MIXED, Precision.NVFP4_MIXED):
        notes.append(
            f"{config.precision.value}: Accelerate's fp8 mode takes a Transformer Engine recipe "
            "object; pass te.common.recipe."
            + (
                "MXFP8BlockScaling()"
                if config.precision is Precision.MXFP8_MIXED
                else "NVFP4BlockScaling()"
            )
            + " to te.fp8_autocast in the script (compute capability >= 10.0)."
        )
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
        chosen = fp8_recipe_note(config)
        if chosen is not None:
            notes.append(chosen)
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
    expressed = Expressed(config)
    # NOTE: Accelerate 1.16 splits sequences through its ParallelismConfig (cp_size under
    # FSDP2, sp_size through DeepSpeed), which this export does not write.
    without_context_parallel(expressed, "this Accelerate config")
    config = expressed.config
    layout, layout_reason = data_parallel_form(config, "Accelerate's config file", Sharding.FSDP)
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
    _distributed_type(config, nodes, world, cpu, doc, notes, expressed)
    _engine_notes(config, doc["distributed_type"], notes, expressed)
    notes.extend(common_notes(config))
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


def _distributed_type(
    config: TrainingConfig,
    nodes: int,
    world: int,
    cpu: bool,
    doc: dict[str, Any],
    notes: list[str],
    expressed: Expressed,
) -> None:
    """``distributed_type`` and its FSDP or DeepSpeed block, written into ``doc``."""
    fsdp_family = config.layout.sharding in (Sharding.FSDP, Sharding.HSDP)
    # FSDP offloads parameters, gradients and optimizer states together, to host memory
    # only; optimizer-only and NVMe offload need DeepSpeed (ZeRO-Offload, ZeRO-Infinity).
    fsdp_can_offload = config.savers.offload in (Offload.NONE, Offload.OPTIMIZER_PARAMS)
    use_deepspeed = (
        config.layout.sharding in (Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3)
        or (fsdp_family and not fsdp_can_offload)
        or (config.layout.sharding is Sharding.NONE and config.savers.offload is not Offload.NONE)
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


def _engine_notes(
    config: TrainingConfig, distributed_type: str, notes: list[str], expressed: Expressed
) -> None:
    """What the training loop must do for the distributed type, and what it cannot run."""
    if config.batch.grad_accumulation > 1 and distributed_type != "DEEPSPEED":
        notes.append(
            f"gradient accumulation: Accelerator(gradient_accumulation_steps="
            f"{config.batch.grad_accumulation}) and `with accelerator.accumulate(model):` in "
            "the loop."
        )
    if config.savers.checkpointing is not Checkpointing.NONE and distributed_type != "FSDP":
        notes.append(
            "activation checkpointing: model.gradient_checkpointing_enable() (Hugging Face) or "
            "torch.utils.checkpoint around each block."
        )
    if config.savers.optimizer_in_backward and distributed_type in ("DEEPSPEED", "FSDP"):
        expressed.change(
            f"Accelerate's {distributed_type} steps the optimizer after backward (no "
            "per-parameter step in backward on sharded weights)",
            optimizer_in_backward=False,
        )
    if distributed_type == "DEEPSPEED":
        deepspeed_moe(config, expressed, notes)
    elif config.layout.expert_parallel > 1:
        expressed.change(
            "Accelerate's FSDP and DDP have no expert parallelism: the experts are sharded or "
            "replicated like any other weight"
            + (
                f" (and no {config.layout.moe_overlap.value} schedule)"
                if config.layout.moe_overlap is not MoeOverlap.NONE
                else ""
            ),
            expert_parallel=1,
            moe_overlap=MoeOverlap.NONE,
        )


def _accelerate_cpu(
    config: TrainingConfig,
    world: int,
    doc: dict[str, Any],
    notes: list[str],
    expressed: Expressed,
) -> None:
    """CPU plans: one process (NO) or several (MULTI_CPU, gloo/oneCCL), plain data parallel."""
    doc["distributed_type"] = "MULTI_CPU" if world > 1 else "NO"
    if config.savers.offload is not Offload.NONE:
        # Host memory is the device's memory on a CPU: offloading moves nothing.
        expressed.change("offload on a CPU moves nothing", offload=Offload.NONE)
    if config.layout.sharding is not Sharding.NONE:
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
    config: TrainingConfig, nodes: int, notes: list[str], expressed: Expressed
) -> dict[str, Any]:
    """The deepspeed_config block (commands/launch.py "DeepSpeed Arguments")."""
    stage, stage_notes = zero_stage(config)
    notes.extend(stage_notes)
    if config.layout.sharding is Sharding.HSDP:
        expressed.change(
            "FSDP has no optimizer-only or NVMe offload, and DeepSpeed no hybrid sharding: "
            "the file runs ZeRO-3 over all data-parallel ranks with the planned offload",
            same_plan=hsdp_degrees(config, nodes)[0] == 1,
            sharding=Sharding.ZERO3,
            shard_group=None,
        )
    elif stage != config.layout.sharding.zero_stage:
        expressed.change(
            f"DeepSpeed needs ZeRO stage {stage} for this plan",
            same_plan=config.layout.data_parallel
            == 1,  # one data-parallel rank: no stage shards anything
            sharding=sharding_for_stage(config, stage),
        )
    if config.layout.sharding is Sharding.FSDP:
        notes.append(
            "FSDP cannot offload only the optimizer (nor to NVMe), so this file runs the same "
            "plan with DeepSpeed ZeRO-3 through Accelerate (ZeRO-Offload, Ren et al. 2021)."
        )
    device = "nvme" if config.savers.offload.nvme else "cpu"
    ds: dict[str, Any] = {
        "zero_stage": stage,
        "gradient_accumulation_steps": config.batch.grad_accumulation,
        "gradient_clipping": GRADIENT_CLIPPING,
        "offload_optimizer_device": device if config.savers.offload is not Offload.NONE else "none",
        "offload_param_device": device if config.savers.offload.params else "none",
        "zero3_init_flag": stage == 3,
    }
    if config.savers.offload.nvme:
        ds["offload_optimizer_nvme_path"] = DEFAULT_NVME_PATH
        if config.savers.offload.params:
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
    config: TrainingConfig, nodes: int, notes: list[str], expressed: Expressed
) -> dict[str, Any]:
    """The fsdp_config block, keys and values as `accelerate config` 1.15 writes them (FSDP1)."""
    strategy = "FULL_SHARD"
    if config.layout.sharding is Sharding.HSDP:
        strategy = "HYBRID_SHARD"
        per_node = max(1, config.layout.data_parallel // nodes)
        _replicate, shard = hsdp_degrees(config, nodes)
        if shard != per_node:
            # NOTE: FSDP1's HYBRID_SHARD builds its shard groups from the devices of a node
            # (torch.distributed.fsdp _init_intra_and_inter_node_groups).
            expressed.change(
                f"Accelerate's HYBRID_SHARD shards within a node ({per_node} ranks), not "
                f"within groups of {shard}",
                shard_group=None if config.layout.shard_group is None else per_node,
            )
    fsdp: dict[str, Any] = {
        "fsdp_version": 1,
        # NOTE: `accelerate config` 1.15 writes only fsdp_reshard_after_forward, but
        # `accelerate launch` then passes its default FSDP_SHARDING_STRATEGY=FULL_SHARD and
        # the FSDP1 wrapper prefers that (accelerator.py: "sharding_strategy or
        # reshard_after_forward"), so HYBRID_SHARD would be lost; the deprecated key is the
        # one that is honoured (tests/export/test_emit_engines.py launches it).
        "fsdp_sharding_strategy": strategy,
        "fsdp_reshard_after_forward": strategy,
        # FSDP offloads parameters and gradients, and the optimizer step runs on the CPU:
        # the plan's optimizer+params offload.
        "fsdp_offload_params": config.savers.offload.params,
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
        "fsdp_activation_checkpointing": config.savers.checkpointing is Checkpointing.FULL,
    }
    if config.savers.checkpointing in (
        Checkpointing.SELECTIVE,
        Checkpointing.SELECTIVE_OP,
        Checkpointing.SELECTIVE_LAYER,
    ):
        notes.append(
            "fsdp_activation_checkpointing recomputes every wrapped block; for "
            f"{config.savers.checkpointing.value} checkpointing use torch.utils.checkpoint in the "
            "model (see the --emit torch snippet); this switch is left false."
        )
    return fsdp
