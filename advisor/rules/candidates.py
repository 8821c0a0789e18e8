"""The candidate dimensions the plan search varies, and a configuration's technique ids."""

from __future__ import annotations

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.hardware.profiles import DeviceKind
from advisor.rules.taxonomy import Category, Taxonomy, Technique

ATTENTION_IDS = {
    Attention.EAGER: "eager-attention",
    Attention.MEM_EFFICIENT: "mem-efficient-attention",
    Attention.FLASH: "flash-attention",
}
CHECKPOINTING_IDS = {
    Checkpointing.SELECTIVE: "activation-checkpointing-selective",
    Checkpointing.SELECTIVE_OP: "activation-checkpointing-selective-op",
    Checkpointing.SELECTIVE_LAYER: "activation-checkpointing-selective-layer",
    Checkpointing.FULL: "activation-checkpointing-full",
}
SHARDING_IDS = {
    Sharding.ZERO1: "zero-1",
    Sharding.ZERO2: "zero-2",
    Sharding.ZERO3: "zero-3",
    Sharding.FSDP: "fsdp",
    Sharding.HSDP: "hybrid-shard",
}
OFFLOAD_IDS = {
    Offload.OPTIMIZER: ["cpu-offload-optimizer"],
    Offload.OPTIMIZER_PARAMS: ["cpu-offload-optimizer", "cpu-offload-params"],
    # ZeRO-Infinity (Rajbhandari et al. 2021) steps the optimizer on the CPU with the states
    # streamed from NVMe: the CPU-offload ids stay, nvme-offload adds where they live.
    Offload.OPTIMIZER_NVME: ["cpu-offload-optimizer", "nvme-offload"],
    Offload.OPTIMIZER_PARAMS_NVME: ["cpu-offload-optimizer", "cpu-offload-params", "nvme-offload"],
}
TASK_IDS = {Task.LORA: "lora", Task.QLORA: "qlora"}
OPTIMIZER_IN_BACKWARD_ID = "fused-backward-step"
FUSED_LOSS_ID = "fused-cross-entropy"
ACTIVATION_OFFLOAD_ID = "activation-offload"

MEMORY_SAVER_IDS = frozenset(
    {
        *CHECKPOINTING_IDS.values(),
        *(i for ids in OFFLOAD_IDS.values() for i in ids),
        *SHARDING_IDS.values(),
        "lora",
        "qlora",
        "tensor-parallel",
        "sequence-parallel",
        "pipeline-parallel",
        "expert-parallel",
        OPTIMIZER_IN_BACKWARD_ID,
        FUSED_LOSS_ID,
        ACTIVATION_OFFLOAD_ID,
        "optimizer-states-8bit",
        "gradient-accumulation",
    }
)

# The attention kernels from the fastest to the slowest (FlashAttention-2, then the
# memory-efficient cutlass/xFormers kernel, then the math path: Dao 2023, Fig. 4): a plain
# plan runs the first one the hardware can.
ATTENTION_PREFERENCE = (Attention.FLASH, Attention.MEM_EFFICIENT, Attention.EAGER)


def hardware_runs(tech: Technique, device_kind: DeviceKind, compute_capability: float) -> bool:
    """Whether a device of this kind and compute capability meets ``tech``'s hardware
    requirements (the taxonomy's ``requires``, read as its requirement rules read them: a
    minimum compute capability binds on CUDA devices only)."""
    req = tech.requires
    if req.device_kinds and device_kind not in req.device_kinds:
        return False
    minimum = req.min_compute_capability
    return not (
        minimum is not None and device_kind is DeviceKind.CUDA and compute_capability < minimum
    )


def runnable_attention(
    taxonomy: Taxonomy, device_kind: DeviceKind, compute_capability: float
) -> Attention:
    """The fastest attention kernel the device runs: FlashAttention-2 from compute
    capability 8.0, the memory-efficient SDPA kernel on older CUDA GPUs (Volta, Turing: cc
    5.0 up), the math path elsewhere."""
    for kernel in ATTENTION_PREFERENCE:
        tid = ATTENTION_IDS[kernel]
        if tid not in taxonomy or hardware_runs(taxonomy.get(tid), device_kind, compute_capability):
            return kernel
    return Attention.EAGER


# Techniques that appear in candidates because of the dimensions above (plus every optimizer
# with an implementation and every precision): the memory savers, the attention kernels and
# plain data parallelism.
_FIXED = {*MEMORY_SAVER_IDS, *ATTENTION_IDS.values(), "ddp"}


def candidate_technique_ids(taxonomy: Taxonomy) -> set[str]:
    """Every technique id the recommender can put into a candidate without a rule asking."""
    ids = {t for t in _FIXED if t in set(taxonomy.ids())}
    for tech in taxonomy.techniques:
        if tech.category is Category.PRECISION and tech.id in {p.value for p in Precision}:
            ids.add(tech.id)
        if tech.category is Category.OPTIMIZER and tech.implementation:
            ids.add(tech.id)
    return ids


def config_techniques(config: TrainingConfig) -> list[str]:
    """The taxonomy ids a configuration uses, in a stable order."""
    savers, kernels, layout = config.savers, config.kernels, config.layout
    ids = [config.optimizer, config.precision.value, ATTENTION_IDS[kernels.attention]]
    if savers.checkpointing in CHECKPOINTING_IDS:
        ids.append(CHECKPOINTING_IDS[savers.checkpointing])
    if config.task in TASK_IDS:
        ids.append(TASK_IDS[config.task])
    ids.extend(OFFLOAD_IDS.get(savers.offload, []))
    if savers.optimizer_in_backward:
        ids.append(OPTIMIZER_IN_BACKWARD_ID)
    if savers.activation_offload:
        ids.append(ACTIVATION_OFFLOAD_ID)
    if layout.sharding in SHARDING_IDS:
        ids.append(SHARDING_IDS[layout.sharding])
    elif layout.data_parallel > 1:
        ids.append("ddp")
    if layout.tensor_parallel > 1:
        ids.extend(["tensor-parallel", "sequence-parallel"])
    if layout.pipeline_parallel > 1:
        ids.append("pipeline-parallel")
    if layout.expert_parallel > 1:
        ids.append("expert-parallel")
    if config.batch.grad_accumulation > 1:
        ids.append("gradient-accumulation")
    if kernels.loss_fused:
        ids.append(FUSED_LOSS_ID)
    return ids


# Technique ids that save device memory (the JSON's ``memory_savers``).
