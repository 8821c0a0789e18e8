"""The candidate dimensions the recommender enumerates, and a configuration's technique ids."""

from __future__ import annotations

from advisor.config import Attention, Checkpointing, Offload, Sharding, Task, TrainingConfig
from advisor.taxonomy import Category, Taxonomy

ATTENTION_IDS = {
    Attention.EAGER: "eager-attention",
    Attention.MEM_EFFICIENT: "mem-efficient-attention",
    Attention.FLASH: "flash-attention",
}
CHECKPOINTING_IDS = {
    Checkpointing.SELECTIVE: "activation-checkpointing-selective",
    Checkpointing.FULL: "activation-checkpointing-full",
}
SHARDING_IDS = {
    Sharding.ZERO1: "zero-1",
    Sharding.ZERO2: "zero-2",
    Sharding.ZERO3: "zero-3",
    Sharding.FSDP: "fsdp",
}
OFFLOAD_IDS = {
    Offload.OPTIMIZER: ["cpu-offload-optimizer"],
    Offload.OPTIMIZER_PARAMS: ["cpu-offload-optimizer", "cpu-offload-params"],
}
TASK_IDS = {Task.LORA: "lora", Task.QLORA: "qlora"}

# Techniques that appear in candidates because of the dimensions above (plus every optimizer
# with an implementation and every precision).
_FIXED = {
    *ATTENTION_IDS.values(),
    *CHECKPOINTING_IDS.values(),
    *SHARDING_IDS.values(),
    "cpu-offload-optimizer",
    "cpu-offload-params",
    "lora",
    "qlora",
    "gradient-accumulation",
    "ddp",
    "fused-cross-entropy",
}


def candidate_technique_ids(taxonomy: Taxonomy) -> set[str]:
    """Every technique id the recommender can put into a candidate without a rule asking."""
    ids = {t for t in _FIXED if t in set(taxonomy.ids())}
    for tech in taxonomy.techniques:
        if tech.category is Category.PRECISION and tech.id in _precision_values():
            ids.add(tech.id)
        if tech.category is Category.OPTIMIZER and tech.implementation:
            ids.add(tech.id)
    return ids


def _precision_values() -> set[str]:
    from advisor.config import Precision

    return {p.value for p in Precision}


def config_techniques(config: TrainingConfig) -> list[str]:
    """The taxonomy ids a configuration uses, in a stable order."""
    ids = [config.optimizer, config.precision.value, ATTENTION_IDS[config.attention]]
    if config.checkpointing in CHECKPOINTING_IDS:
        ids.append(CHECKPOINTING_IDS[config.checkpointing])
    if config.task in TASK_IDS:
        ids.append(TASK_IDS[config.task])
    ids.extend(OFFLOAD_IDS.get(config.offload, []))
    if config.sharding in SHARDING_IDS:
        ids.append(SHARDING_IDS[config.sharding])
    elif config.gpus > 1:
        ids.append("ddp")
    if config.grad_accumulation > 1:
        ids.append("gradient-accumulation")
    if config.loss_fused:
        ids.append("fused-cross-entropy")
    return ids
