"""A torchtitan job TOML for one plan: the parallel layout (data replicate/shard, tensor,
pipeline with its schedule and stage split, expert), batch geometry, precision, CPU offload,
activation checkpointing and the Adam/AdamW optimizer, written as TOML by hand."""

from __future__ import annotations

import json
from typing import Any

from advisor.config import (
    Checkpointing,
    ContextParallelKind,
    Fp8Recipe,
    Offload,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.export.common import (
    GRADIENT_CLIPPING,
    ZEROTH,
    hyper_note,
    plan_summary,
    resolve_learning_rate,
)
from advisor.export.emission import Emission, EmitTarget
from advisor.export.expression import Expressed, hsdp_degrees, require_gpu, world_size
from advisor.export.hyperparams import Family, Hyperparameters, family_of, hyperparameters_for
from advisor.export.moe import torchtitan_moe

TORCHTITAN_VERSION = "torchtitan v0.2.2 (torchtitan/config/job_config.py)"


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
    require_gpu(config, "torchtitan", cpu)
    if config.task in (Task.LORA, Task.QLORA) or config.optimizer in ZEROTH or config.dp_sgd:
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
    expressed = Expressed(config)
    hp = hyperparameters_for(config.optimizer, config.task)
    lr = resolve_learning_rate(config, learning_rate)

    parallelism, replicate, shard = _parallelism(config, nodes, num_layers, notes, expressed)
    if config.layout.context_parallel > 1:
        # What torchtitan's context parallelism runs (_context_sharding).
        config = config.replace(layout=expressed.config.layout)
    training = _training(config, notes, expressed)

    optimizer = _optimizer_section(config, hp, lr, expressed)
    # The converters follow the precision the file can express (NVFP4 -> MXFP8).
    sections = _sections(expressed.config, optimizer, training, parallelism, shard)
    notes.append(
        "set [model] name, flavor and hf_assets_path, and [training] dataset and steps, for "
        "your model and data; launch with "
        f"`NGPU={world // nodes} CONFIG_FILE=torchtitan.toml ./run_train.sh` on each node."
    )
    if config.layout.tensor_parallel > 1:
        notes.append(
            "torchtitan's tensor parallelism shards the sequence in norms and dropout too "
            "(sequence parallelism, Korthikanti et al. 2022) and computes the loss in "
            "parallel; keep each TP group inside a node (NVLink)."
        )
    notes.append(hyper_note(config))
    if expressed.differs:
        notes.insert(
            0, f"this file sets up a different plan than the ranked one: {expressed.reason}."
        )
    header = [
        f"torchtitan job config written by optadvise for {TORCHTITAN_VERSION}.",
        f"World size {world} = data replicate {replicate} x shard {shard} x tensor "
        f"{config.layout.tensor_parallel} x pipeline {config.layout.pipeline_parallel}"
        + (
            f" x context {config.layout.context_parallel}."
            if config.layout.context_parallel > 1
            else "."
        ),
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


def _sections(
    config: TrainingConfig,
    optimizer: dict[str, Any],
    training: dict[str, Any],
    parallelism: dict[str, Any],
    shard: int,
) -> dict[str, dict[str, Any]]:
    """The job file's tables in file order, with the float8 converter for fp8 plans."""
    activation = _activation_checkpoint(config)
    sections: dict[str, dict[str, Any]] = {
        "job": {"description": f"optadvise plan: {plan_summary(config)}"},
        "optimizer": optimizer,
        "training": training,
        "parallelism": parallelism,
        "activation_checkpoint": activation,
        "compile": {"enable": config.kernels.stack is Stack.FUSED, "components": ["model", "loss"]},
    }
    if config.precision is Precision.MXFP8_MIXED:
        # torchtitan's MX converter (components/quantization/mx.py: "quantize.linear.mx",
        # torchao MXLinear, SM100 only); cuBLAS's MXFP8 GEMM; the LM head stays bf16.
        sections["model"] = {"converters": ["quantize.linear.mx"]}
        sections["quantize.linear.mx"] = {"recipe_name": "mxfp8_cublas", "filter_fqns": ["output"]}
    if config.precision is Precision.FP8_MIXED:
        # Tensorwise is the converter's default (no recipe_name); a recipe_name may not be
        # combined with the float8 all-gather (torchtitan's Float8LinearConverter asserts:
        # "... together with `float8_config.recipe_name` is not supported"), which is
        # tensorwise-only anyway: rowwise all-gathers bf16 weights.
        recipe = config.kernels.fp8_recipe
        named = recipe is not None and recipe is not Fp8Recipe.TENSORWISE
        sections["model"] = {"converters": ["quantize.linear.float8"]}
        sections["quantize.linear.float8"] = {
            "enable_fsdp_float8_all_gather": shard > 1 and not named,
            "precompute_float8_dynamic_scale_for_fsdp": shard > 1 and not named,
            "filter_fqns": ["output"],
        } | ({"recipe_name": recipe.value} if named and recipe is not None else {})
    return sections


def _optimizer_section(
    config: TrainingConfig, hp: Hyperparameters, lr: float, expressed: Expressed
) -> dict[str, Any]:
    """The [optimizer] table, with the step in backward where torchtitan can run it."""
    optimizer = _torchtitan_optimizer(config, hp, lr, expressed)
    if config.savers.optimizer_in_backward:
        if config.layout.pipeline_parallel > 1 or config.layout.expert_parallel > 1:
            expressed.change(
                "torchtitan's optimizer-in-backward does not run with pipeline or expert "
                "parallelism (components/optimizer.py)",
                optimizer_in_backward=False,
            )
        else:
            optimizer["early_step_in_backward"] = True
    return optimizer


def _activation_checkpoint(config: TrainingConfig) -> dict[str, Any]:
    """The [activation_checkpoint] table for the plan's recomputation."""
    activation: dict[str, Any] = {
        Checkpointing.NONE: {"mode": "none"},
        Checkpointing.FULL: {"mode": "full"},
        # Per-op selective checkpointing: keep matmul outputs, recompute the rest
        # (torchtitan's "op" policy; Korthikanti et al. 2022).
        Checkpointing.SELECTIVE: {"mode": "selective", "selective_ac_option": "op"},
        Checkpointing.SELECTIVE_OP: {"mode": "selective", "selective_ac_option": "op"},
        Checkpointing.SELECTIVE_LAYER: {
            "mode": "selective",
            "selective_ac_option": str(config.savers.ac_frequency),
        },
    }[config.savers.checkpointing]
    return activation


def _parallelism(
    config: TrainingConfig,
    nodes: int,
    num_layers: int | None,
    notes: list[str],
    expressed: Expressed,
) -> tuple[dict[str, Any], int, int]:
    """The [parallelism] table and the data-parallel (replicate, shard) degrees.

    Raises:
        UserError: for virtual stages without PP.
    """
    # --- data-parallel degrees (torchtitan ParallelDims: replicate x shard x cp x tp x pp =
    # world)
    parallelism: dict[str, Any] = {}
    config = _context_sharding(config, expressed)
    cp = config.layout.context_parallel
    if config.layout.sharding is Sharding.HSDP:
        replicate, shard = hsdp_degrees(config, nodes)
        shard //= cp  # FSDP shards over dp_shard x cp (the dp_shard_cp mesh)
    elif config.layout.sharding is Sharding.NONE:
        replicate, shard = config.layout.data_parallel, 1
    else:
        replicate, shard = 1, config.layout.data_parallel
    parallelism["data_parallel_replicate_degree"] = replicate
    parallelism["data_parallel_shard_degree"] = shard
    if config.layout.sharding is Sharding.ZERO2:
        # FSDP2 without resharding after forward keeps the gathered weights until backward:
        # gradients and optimizer states sharded, parameters not (ZeRO-2's memory).
        parallelism["fsdp_reshard_after_forward"] = "never"
    elif config.layout.sharding is Sharding.ZERO1:
        parallelism["fsdp_reshard_after_forward"] = "never"
        expressed.change(
            "torchtitan's FSDP2 shards gradients with the optimizer states (no ZeRO-1): "
            "ZeRO-2's layout, less memory",
            sharding=Sharding.ZERO2,
        )
    else:
        parallelism["fsdp_reshard_after_forward"] = "default"
    parallelism["tensor_parallel_degree"] = config.layout.tensor_parallel
    # Async TP overlaps the TP collectives with matmuls, as the plan's cost assumed
    # (config.tp_overlapped); torchtitan applies it only under torch.compile
    # (job_config.py), which the fused stack turns on.
    parallelism["enable_async_tensor_parallel"] = (
        config.layout.tensor_parallel > 1
        and config.kernels.tp_overlapped
        and config.kernels.stack is Stack.FUSED
    )
    parallelism["pipeline_parallel_degree"] = config.layout.pipeline_parallel
    if cp > 1:
        # torch's context_parallel: ring attention over the cp ranks. "alltoall" passes the
        # key/value shards round chunk by chunk under each sub-attention (the ring the plan's
        # cost assumed); "allgather" (the default) gathers all of them after the first
        # sub-attention (job_config.py context_parallel_rotate_method).
        parallelism["context_parallel_degree"] = cp
        parallelism["context_parallel_rotate_method"] = "alltoall"
    if config.layout.pipeline_parallel > 1:
        interleaved = config.layout.virtual_stages > 1
        parallelism["pipeline_parallel_schedule"] = "Interleaved1F1B" if interleaved else "1F1B"
        parallelism["pipeline_parallel_microbatch_size"] = config.batch.micro_batch
        if config.layout.virtual_stages > 2:
            stages = config.layout.pipeline_parallel * config.layout.virtual_stages
            per_stage, first, last = _stage_split(num_layers, stages)
            parallelism["pipeline_parallel_layers_per_stage"] = per_stage
            parallelism["pipeline_parallel_first_stage_less_layers"] = first
            parallelism["pipeline_parallel_last_stage_less_layers"] = last
        # Without layers_per_stage torchtitan puts 1 stage per rank on 1F1B and 2 on looped
        # schedules (torchtitan/distributed/pipeline_parallel.py).
        if (
            config.batch.grad_accumulation
            < config.layout.pipeline_parallel * config.layout.virtual_stages
        ):
            notes.append(
                f"{config.batch.grad_accumulation} micro-batches per step for "
                f"{config.layout.pipeline_parallel * config.layout.virtual_stages} pipeline "
                "stages: the "
                "bubble is large (Narayanan et al. 2021); torchtitan warns about it too."
            )
    elif config.layout.virtual_stages > 1:
        raise UserError(
            f"{config.layout.virtual_stages} virtual stages without pipeline parallelism",
            "virtual stages need pipeline_parallel > 1",
        )
    torchtitan_moe(config, shard, parallelism, expressed)
    return parallelism, replicate, shard


def _context_sharding(config: TrainingConfig, expressed: Expressed) -> TrainingConfig:
    """The plan as torchtitan runs its context parallelism: ring attention only, and the
    parameters always sharded over the context-parallel ranks (parallelize.py: with CP on,
    FSDP fully shards over the dp_shard_cp mesh, or hybrid-shards with dp_replicate)."""
    layout = expressed.config.layout
    cp = layout.context_parallel
    if cp == 1:
        return config
    if layout.context_parallel_kind is ContextParallelKind.ULYSSES:
        expressed.change(
            "torchtitan splits sequences with ring attention (torch's context_parallel), "
            "not Ulysses' all-to-alls",
            context_parallel_kind=ContextParallelKind.RING,
        )
    if layout.sharding is Sharding.NONE:
        if layout.data_parallel > 1:
            expressed.change(
                f"torchtitan shards the parameters over the {cp} context-parallel ranks "
                "(hybrid shard: replicated across data-parallel ones)",
                sharding=Sharding.HSDP,
                shard_group=cp,
            )
        else:
            expressed.change(
                f"torchtitan shards the parameters over the {cp} context-parallel ranks",
                sharding=Sharding.FSDP,
            )
    elif layout.sharding is Sharding.HSDP and (layout.shard_group or cp) % cp:
        expressed.change(
            f"torchtitan's hybrid shard groups span whole context-parallel groups of {cp}",
            sharding=Sharding.FSDP,
            shard_group=None,
        )
    return expressed.config


def _training(config: TrainingConfig, notes: list[str], expressed: Expressed) -> dict[str, Any]:
    """The [training] table: batch geometry, precision, CPU offload."""
    # --- batch geometry: with PP the accumulated micro-batches are the pipeline's
    # micro-batches; without it torchtitan derives accumulation from the global batch.
    global_batch = (
        config.batch.micro_batch * config.batch.grad_accumulation * config.layout.data_parallel
    )
    local = (
        config.batch.micro_batch * config.batch.grad_accumulation
        if config.layout.pipeline_parallel > 1
        else config.batch.micro_batch
    )
    training: dict[str, Any] = {
        "local_batch_size": local,
        "global_batch_size": global_batch,
        "seq_len": config.batch.seq_len,
        "max_norm": GRADIENT_CLIPPING,
    }
    _torchtitan_precision(config, training, notes, expressed)
    _torchtitan_offload(config, training, expressed)
    if config.savers.activation_offload:
        expressed.change(
            "torchtitan v0.2.2 keeps checkpointed activations on the GPU (no activation offload)",
            activation_offload=False,
        )
    return training


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
    config: TrainingConfig, training: dict[str, Any], notes: list[str], expressed: Expressed
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
        _torchtitan_fp8_recipe(config, expressed)
        if p is Precision.NVFP4_MIXED:
            # torchtitan v0.2.2's converters: float8 and mx (MXFP8) only, no NVFP4 training.
            expressed.change(
                "torchtitan has no NVFP4 training converter (quantize.linear.float8 and "
                "quantize.linear.mx only): the nearest it runs is MXFP8",
                precision=Precision.MXFP8_MIXED,
            )


def _torchtitan_fp8_recipe(config: TrainingConfig, expressed: Expressed) -> None:
    """torchtitan's float8 converter takes recipe_name tensorwise, rowwise or
    rowwise_with_gw_hp (Float8Linear.recipe_name): no delayed scaling and no 1x128/128x128
    blocks; the nearest it runs stands in."""
    recipe = config.kernels.fp8_recipe
    if config.precision is not Precision.FP8_MIXED or recipe is None:
        return
    if recipe is Fp8Recipe.DELAYED:
        expressed.change(
            "torchtitan's float8 converter scales with the current amax only (tensorwise or "
            "rowwise): the nearest to delayed scaling is tensorwise",
            fp8_recipe=Fp8Recipe.TENSORWISE,
        )
    elif recipe is Fp8Recipe.BLOCKWISE:
        expressed.change(
            "torchtitan's float8 converter has no 1x128/128x128 block scaling (tensorwise or "
            "rowwise): the nearest finer-than-tensor scaling it runs is rowwise",
            fp8_recipe=Fp8Recipe.ROWWISE,
        )


def _torchtitan_offload(
    config: TrainingConfig, training: dict[str, Any], expressed: Expressed
) -> None:
    if config.savers.offload is Offload.NONE:
        return
    # training.enable_cpu_offload: FSDP2 CPUOffloadPolicy, parameters, gradients and
    # optimizer states on the host, the optimizer step on the CPU.
    training["enable_cpu_offload"] = True
    if config.savers.offload is not Offload.OPTIMIZER_PARAMS:
        expressed.change(
            "torchtitan offloads parameters, gradients and optimizer states together, to host "
            "memory only",
            offload=Offload.OPTIMIZER_PARAMS,
        )


def _torchtitan_optimizer(
    config: TrainingConfig, hp: Hyperparameters, lr: float, expressed: Expressed
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
