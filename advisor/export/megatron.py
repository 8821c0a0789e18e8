"""Megatron-LM training arguments for one plan, as a bash array: tensor, sequence, pipeline,
expert and context parallelism, batch geometry, recomputation, the distributed optimizer or
Megatron-FSDP, precision, attention backend, optimizer and optimizer CPU offload."""

from __future__ import annotations

from typing import Any

from advisor.config import (
    Attention,
    Checkpointing,
    ContextParallelKind,
    Fp8Recipe,
    MoeDispatcher,
    MoeOverlap,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.cost.expert_overlap import config_overlap_problem
from advisor.errors import UserError
from advisor.export.common import GRADIENT_CLIPPING, ZEROTH, hyper_note
from advisor.export.emission import Emission, EmitTarget
from advisor.export.expression import Expressed, hsdp_degrees, require_gpu, world_size
from advisor.export.hyperparams import hyperparameters_for

MEGATRON_VERSION = "Megatron-LM core_v0.19.0 (megatron/training/arguments.py)"


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
    require_gpu(config, "Megatron-LM", cpu)
    world = world_size(config, nodes, gpus_per_node)
    if config.task in (Task.LORA, Task.QLORA) or config.optimizer in ZEROTH or config.dp_sgd:
        raise UserError(
            "Megatron-LM's training loop has no LoRA/QLoRA adapters, DP-SGD or zeroth-order "
            "optimizers",
            "use --emit deepspeed, accelerate or torch for this plan",
        )
    notes: list[str] = []
    expressed = Expressed(config)
    _megatron_overlap(config, expressed)
    args = _megatron_layout(config.with_(moe_overlap=expressed.config.layout.moe_overlap))
    args += [
        ("--micro-batch-size", config.batch.micro_batch),
        (
            "--global-batch-size",
            config.batch.micro_batch * config.batch.grad_accumulation * config.layout.data_parallel,
        ),
        ("--seq-length", config.batch.seq_len),
    ]
    args += _megatron_recompute(config, expressed)
    args += _megatron_sharding(config, nodes)
    args += _megatron_precision(config, expressed)
    args.append(
        (
            "--attention-backend",
            {
                Attention.FLASH: "flash",
                Attention.MEM_EFFICIENT: "fused",
                Attention.EAGER: "unfused",
            }[config.kernels.attention],
        )
    )
    if config.kernels.loss_fused:
        args.append(("--cross-entropy-loss-fusion", None))
    args += _megatron_optimizer(config, learning_rate, expressed)
    args.append(("--clip-grad", GRADIENT_CLIPPING))
    args += _megatron_offload(config, expressed)
    if config.savers.optimizer_in_backward:
        expressed.change(
            "Megatron-LM has no optimizer step in backward", optimizer_in_backward=False
        )
    if config.savers.activation_offload:
        expressed.change(
            "this export does not write Megatron-LM's activation CPU offloading (its "
            "TransformerConfig rejects it with pipeline parallelism or recomputation)",
            activation_offload=False,
        )
    if expressed.config.layout.moe_overlap is MoeOverlap.A2A_OVERLAP:
        notes.append(
            "the EP all-to-all overlap (--overlap-moe-expert-parallel-comm "
            "--delay-wgrad-compute) is Megatron-Core >= 0.14's; its TransformerConfig asserts "
            "torch >= 2.6, no --moe-shared-expert-overlap and at most one MTP layer. The "
            "step time was priced with 20 SMs kept for the communication kernels, as the "
            "overlap's launch recipes reserve them (NVTE_FWD_LAYERNORM_SM_MARGIN=20, "
            "NVTE_BWD_LAYERNORM_SM_MARGIN=20)."
        )
    notes.append(hyper_note(config))
    if expressed.differs:
        notes.insert(
            0, f"these arguments set up a different plan than the ranked one: {expressed.reason}."
        )
    return Emission(
        target=EmitTarget.MEGATRON,
        filename="megatron_args.sh",
        text=_script(config, args, world, nodes),
        notes=tuple(notes),
        expressed_config=expressed.config,
        differs=expressed.differs,
        reason=expressed.reason,
    )


def _script(config: TrainingConfig, args: list[tuple[str, Any]], world: int, nodes: int) -> str:
    """The bash file: a header saying how to launch it, then the arguments as an array."""
    lines = [
        "#!/usr/bin/env bash",
        f"# Megatron-LM arguments written by optadvise for {MEGATRON_VERSION}.",
        f"# World size {world} = data {config.layout.data_parallel} x tensor "
        f"{config.layout.tensor_parallel} x "
        f"pipeline {config.layout.pipeline_parallel}"
        + (
            f" x context {config.layout.context_parallel}."
            if config.layout.context_parallel > 1
            else "."
        ),
        *_fold_line(config),
        "# Add your model's arguments (--num-layers --hidden-size --num-attention-heads ...),",
        "# data and schedule, then on each node:",
        f"#   torchrun --nproc_per_node {world // nodes} --nnodes {nodes} pretrain_gpt.py "
        '"${MEGATRON_ARGS[@]}" <model, data and schedule arguments>',
        "MEGATRON_ARGS=(",
    ]
    for flag, value in args:
        lines.append(f"  {flag}" if value is None else f"  {flag} {_shell_value(value)}")
    lines.append(")")
    return "\n".join(lines) + "\n"


def _fold_line(config: TrainingConfig) -> list[str]:
    """The MoE layers' factoring of a stage's ranks, where expert parallelism is on."""
    p = config.layout
    if p.expert_parallel == 1:
        return []
    return [
        f"# MoE layers (parallel folding): expert tensor {p.expert_tp} x expert "
        f"{p.expert_parallel} x expert data {p.expert_data_parallel}."
    ]


def _megatron_layout(config: TrainingConfig) -> list[tuple[str, Any]]:
    """Tensor (with sequence), pipeline (with virtual stages) and expert parallel degrees.

    Raises:
        UserError: for virtual stages without pipeline parallelism.
    """
    args: list[tuple[str, Any]] = [
        ("--tensor-model-parallel-size", config.layout.tensor_parallel),
        ("--pipeline-model-parallel-size", config.layout.pipeline_parallel),
    ]
    if config.layout.virtual_stages > 1:
        if config.layout.pipeline_parallel < 2:
            raise UserError(
                f"{config.layout.virtual_stages} virtual stages without pipeline parallelism",
                "virtual stages need pipeline_parallel > 1",
            )
        args.append(("--num-virtual-stages-per-pipeline-rank", config.layout.virtual_stages))
    if config.layout.tensor_parallel > 1:
        args.append(("--sequence-parallel", None))
        if config.kernels.tp_overlapped:
            # TP collectives overlapped with their GEMMs (Transformer Engine userbuffers), as
            # the plan's cost assumed.
            args.append(("--tp-comm-overlap", None))
    if config.layout.context_parallel > 1:
        # Megatron-LM's context parallelism (arguments.py --context-parallel-size, and
        # --cp-comm-type: p2p is ring attention, a2a is Ulysses' all-to-all; Transformer
        # Engine runs both).
        args.append(("--context-parallel-size", config.layout.context_parallel))
        kind = config.layout.context_parallel_kind
        args.append(("--cp-comm-type", "p2p" if kind is ContextParallelKind.RING else "a2a"))
    args += _megatron_moe(config)
    return args


def _megatron_moe(config: TrainingConfig) -> list[tuple[str, Any]]:
    """Expert parallelism folded over tensor x context x data parallel, the experts' own
    tensor-parallel degree, the token dispatcher and the capacity (megatron/core/
    transformer/moe/README.md: ``--expert-model-parallel-size``,
    ``--expert-tensor-parallel-size`` (default: the TP degree), ``--moe-token-dispatcher-type``
    (default ``allgather``, so it is always written), ``flex`` with
    ``--moe-flex-dispatcher-backend deepep`` (core v0.19; earlier ``--moe-enable-deepep``),
    ``--moe-expert-capacity-factor`` (default None: dropless) and
    ``--moe-pad-expert-input-to-capacity``)."""
    p = config.layout
    moe = p.expert_parallel > 1 or p.expert_tensor_parallel is not None
    moe = moe or p.capacity_factor is not None
    if not moe:
        return []
    args: list[tuple[str, Any]] = []
    if p.expert_parallel > 1:
        args.append(("--expert-model-parallel-size", p.expert_parallel))
    if p.expert_tp != p.tensor_parallel:
        args.append(("--expert-tensor-parallel-size", p.expert_tp))
    args.append(("--moe-token-dispatcher-type", p.moe_dispatcher.value))
    if p.moe_dispatcher is MoeDispatcher.FLEX:
        args.append(("--moe-flex-dispatcher-backend", "deepep"))
    if p.capacity_factor is not None:
        args.append(("--moe-expert-capacity-factor", p.capacity_factor))
        if p.pad_to_capacity:
            args.append(("--moe-pad-expert-input-to-capacity", None))
    if p.expert_parallel > 1 and p.moe_overlap is not MoeOverlap.NONE:
        # Batch-level EP A2A overlap (MCore v0.14, megatron/core/transformer/moe/README.md:
        # "--overlap-moe-expert-parallel-comm --delay-wgrad-compute"); Megatron-LM has no
        # DualPipe, whose pairing of a forward and a backward chunk this is the nearest to.
        args += [("--overlap-moe-expert-parallel-comm", None), ("--delay-wgrad-compute", None)]
    return args


def _megatron_overlap(config: TrainingConfig, expressed: Expressed) -> None:
    """The all-to-all overlap Megatron-LM can run: its batch-level A2A overlap
    (``--overlap-moe-expert-parallel-comm``) where the plan, with the recomputation this
    export writes (torchtitan's per-op and every-n-th-block policies become full), passes
    Megatron-Core's assertions (:func:`advisor.cost.expert_overlap.overlap_problem`); it is
    the nearest to DualPipe, which Megatron-LM has not. Otherwise the all-to-alls wait."""
    p = config.layout
    if p.moe_overlap is MoeOverlap.NONE or p.expert_parallel < 2:
        return
    recompute = config.savers.checkpointing
    if recompute in (Checkpointing.SELECTIVE_OP, Checkpointing.SELECTIVE_LAYER):
        recompute = Checkpointing.FULL
    probe = config.with_(moe_overlap=MoeOverlap.A2A_OVERLAP, checkpointing=recompute)
    problem = config_overlap_problem(probe)
    if problem is None:
        if p.moe_overlap is MoeOverlap.DUALPIPE:
            expressed.change(
                "Megatron-LM has no DualPipe schedule: its nearest is the batch-level 1F1B "
                "all-to-all overlap (--overlap-moe-expert-parallel-comm)",
                moe_overlap=MoeOverlap.A2A_OVERLAP,
            )
        return
    what = problem[0].removeprefix("--moe-overlap a2a-overlap ")
    expressed.change(
        (
            "Megatron-LM has no DualPipe schedule, and its batch-level all-to-all overlap "
            if p.moe_overlap is MoeOverlap.DUALPIPE
            else "Megatron-LM's batch-level all-to-all overlap "
        )
        + f"{what}: the all-to-alls wait for their transfers",
        moe_overlap=MoeOverlap.NONE,
    )


def _megatron_recompute(config: TrainingConfig, expressed: Expressed) -> list[tuple[str, Any]]:
    """The recomputation flags; torchtitan-style policies become full recomputation."""
    args: list[tuple[str, Any]] = []
    if config.savers.checkpointing is Checkpointing.FULL:
        # Recompute every block from its input (recompute_num_layers 1 per uniform unit).
        args += [
            ("--recompute-granularity", "full"),
            ("--recompute-method", "uniform"),
            ("--recompute-num-layers", 1),
        ]
    elif config.savers.checkpointing is Checkpointing.SELECTIVE:
        args.append(("--recompute-granularity", "selective"))
    elif config.savers.checkpointing in (Checkpointing.SELECTIVE_OP, Checkpointing.SELECTIVE_LAYER):
        # NOTE: Megatron-LM recomputes whole blocks (full) or listed modules (selective); it
        # has no every-other-matmul policy nor every-n-th-block option. Full recomputation
        # keeps less than either, so the plan still fits, at its extra compute.
        expressed.change(
            f"Megatron-LM has no torchtitan-style {config.savers.checkpointing.value} "
            "checkpointing; "
            "full recomputation is the nearest that fits",
            checkpointing=Checkpointing.FULL,
        )
        args += [
            ("--recompute-granularity", "full"),
            ("--recompute-method", "uniform"),
            ("--recompute-num-layers", 1),
        ]
    return args


def _megatron_offload(config: TrainingConfig, expressed: Expressed) -> list[tuple[str, Any]]:
    """Optimizer CPU offload flags; Megatron-LM offloads only optimizer states."""
    args: list[tuple[str, Any]] = []
    if config.savers.offload is not Offload.NONE:
        # Megatron's hybrid-device optimizer (optimizer states and step on the host) rides on
        # the precision-aware optimizer path (arguments.py asserts it).
        args += [
            ("--optimizer-cpu-offload", None),
            ("--use-precision-aware-optimizer", None),
            ("--optimizer-offload-fraction", 1.0),
        ]
        if config.savers.offload is not Offload.OPTIMIZER:
            expressed.change(
                "Megatron-LM offloads only optimizer states, to host memory",
                offload=Offload.OPTIMIZER,
            )
    return args


def _shell_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _megatron_sharding(config: TrainingConfig, nodes: int) -> list[tuple[str, Any]]:
    """ZeRO-1 is Megatron's distributed optimizer; ZeRO-2/3 and HSDP are Megatron-FSDP's
    sharding strategies (arguments.py --data-parallel-sharding-strategy)."""
    s = config.layout.sharding
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
        replicate, _shard = hsdp_degrees(config, nodes)
        # Megatron-FSDP turns hybrid sharding on when there is more than one optimizer
        # instance (core/distributed/fsdp/mcore_fsdp_adapter.py).
        if replicate > 1:
            out.append(("--num-distributed-optimizer-instances", replicate))
    return out


def _megatron_fp8_recipe(config: TrainingConfig, expressed: Expressed) -> list[tuple[str, Any]]:
    """fp8-mixed's format and recipe: Megatron-LM's --fp8-recipe {tensorwise, delayed, mxfp8,
    blockwise} (arguments.py, _add_transformer_engine_args; default delayed). Per-tensor
    recipes take E4M3 forward and E5M2 gradients (hybrid); TE's Float8BlockScaling is E4M3
    throughout. TE has no row-wise recipe: the finest-grained one it runs on Hopper stands in.
    No recipe chosen: the plan was priced as tensorwise (current) scaling, the recipe of the
    runs the FP8 share was fitted to, so that is what is exported, not Megatron's delayed
    default."""
    recipe = config.kernels.fp8_recipe or Fp8Recipe.TENSORWISE
    if recipe is Fp8Recipe.ROWWISE:
        expressed.change(
            "Megatron-LM/Transformer Engine have no row-wise FP8 recipe (--fp8-recipe "
            "tensorwise, delayed, mxfp8 or blockwise): the nearest finer-than-tensor scaling "
            "is blockwise (1x128 / 128x128)",
            fp8_recipe=Fp8Recipe.BLOCKWISE,
        )
        recipe = Fp8Recipe.BLOCKWISE
    fmt = "e4m3" if recipe is Fp8Recipe.BLOCKWISE else "hybrid"
    return [("--fp8-format", fmt), ("--fp8-recipe", recipe.value)]


def _megatron_precision(config: TrainingConfig, expressed: Expressed) -> list[tuple[str, Any]]:
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
        return [("--bf16", None), *_megatron_fp8_recipe(config, expressed)]
    if p is Precision.MXFP8_MIXED:
        # Megatron-LM's Transformer Engine arguments (arguments.py, _add_transformer_engine_args):
        # --fp8-recipe {tensorwise, delayed, mxfp8, blockwise}; MXFP8 elements are E4M3.
        return [("--bf16", None), ("--fp8-format", "e4m3"), ("--fp8-recipe", "mxfp8")]
    if p is Precision.NVFP4_MIXED:
        # --fp4-format {e2m1} --fp4-recipe {nvfp4}; --first-last-layers-bf16 keeps the first
        # and last blocks in bf16 as NVIDIA's NVFP4 recipe does (arXiv 2509.25149, sec. 4:
        # ~16% of the linear layers), Megatron's default one block at each end.
        return [
            ("--bf16", None),
            ("--fp4-format", "e2m1"),
            ("--fp4-recipe", "nvfp4"),
            ("--first-last-layers-bf16", None),
        ]
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
    config: TrainingConfig, learning_rate: float | None, expressed: Expressed
) -> list[tuple[str, Any]]:
    name = _MEGATRON_OPTIMIZERS.get(config.optimizer)
    optimizer = config.optimizer
    fsdp = config.layout.sharding not in (Sharding.NONE, Sharding.ZERO1)
    if name in ("lion", "muon") and fsdp:
        # arguments.py: "Emerging optimizer does not support Megatron-FSDP for now."
        expressed.change(
            f"Megatron-LM runs {name} only without Megatron-FSDP; with the planned "
            f"{config.layout.sharding.value} sharding it trains AdamW",
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
