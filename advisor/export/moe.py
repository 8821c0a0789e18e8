"""What each engine can express of a plan's MoE layout (expert and expert tensor
parallelism, the token dispatcher, the capacity): the arguments it takes, and the stated
changes where it cannot (the emission then differs from the ranked plan and ``--emit``
refuses without ``--force``). Megatron-LM's arguments live in :mod:`advisor.export.megatron`.
"""

from __future__ import annotations

from typing import Any

from advisor.config import MoeDispatcher, MoeOverlap, TrainingConfig
from advisor.export.expression import Expressed


def _moe_set(config: TrainingConfig) -> bool:
    p = config.layout
    return (
        p.expert_parallel > 1
        or p.expert_tensor_parallel is not None
        or p.capacity_factor is not None
        or p.moe_dispatcher is not MoeDispatcher.ALLTOALL
    )


def _dispatch_only_all_to_all(config: TrainingConfig, engine: str, expressed: Expressed) -> None:
    """Move a plan to the all-to-all dispatcher where ``engine`` has no other."""
    p = config.layout
    if p.moe_dispatcher is MoeDispatcher.ALLTOALL:
        return
    exchanged = p.expert_parallel * p.expert_tp > 1
    expressed.change(
        f"{engine} exchanges tokens by all-to-all only (no {p.moe_dispatcher.value} dispatcher)",
        same_plan=not exchanged,
        moe_dispatcher=MoeDispatcher.ALLTOALL,
    )


def _no_overlap_schedule(config: TrainingConfig, engine: str, expressed: Expressed) -> None:
    """Move a plan whose all-to-alls a schedule hides to one where they wait: ``engine``
    has neither Megatron-Core's 1F1B A2A overlap nor DualPipe."""
    overlap = config.layout.moe_overlap
    if overlap is MoeOverlap.NONE:
        return
    expressed.change(
        f"{engine} has no {overlap.value} schedule: its all-to-alls wait for their transfers",
        same_plan=config.layout.expert_parallel == 1,
        moe_overlap=MoeOverlap.NONE,
    )


def deepspeed_moe(config: TrainingConfig, expressed: Expressed, notes: list[str]) -> None:
    """DeepSpeed-MoE (``deepspeed.moe.layer.MoE``; Rajbhandari et al. 2022): the expert
    degree and capacity are arguments of the layer in the model code, not of the JSON.

    ``ep_size`` must divide the experts and the data-parallel world (its expert groups are
    carved from the data-parallel ranks, deepspeed/utils/groups.py
    ``_create_expert_and_data_parallel``); the experts' tensor parallelism is the model's
    own (``enable_expert_tensor_parallelism``) or none. Tokens move by all-to-all
    (deepspeed/moe/sharded_moe.py ``_AllToAll``); the gates build ``[tokens, experts,
    capacity]`` dispatch masks, so a capacity factor always pads (``drop_tokens=True``),
    and ``drop_tokens=False`` is dropless."""
    if not _moe_set(config):
        return
    _dispatch_only_all_to_all(config, "DeepSpeed-MoE", expressed)
    _no_overlap_schedule(config, "DeepSpeed-MoE", expressed)
    p = expressed.config.layout
    if p.capacity_factor is not None and not p.pad_to_capacity:
        expressed.change(
            "DeepSpeed-MoE's gating pads every expert's batch to its capacity "
            "(dispatch masks of [tokens, experts, capacity])",
            pad_to_capacity=True,
        )
        p = expressed.config.layout
    if p.data_parallel % p.expert_parallel:
        expressed.change(
            f"DeepSpeed-MoE carves expert groups from the data-parallel ranks: "
            f"ep_size {p.expert_parallel} does not divide {p.data_parallel}",
            expert_parallel=1,
            expert_tensor_parallel=None,
        )
        p = expressed.config.layout
    capacity = (
        f"capacity_factor={p.capacity_factor:g}, drop_tokens=True"
        if p.capacity_factor is not None
        else "drop_tokens=False (dropless)"
    )
    etp = ", enable_expert_tensor_parallelism=True" if p.expert_tp > 1 else ""
    notes.append(
        "MoE layers are built in the model code, not in this file: "
        f"deepspeed.moe.layer.MoE(..., ep_size={p.expert_parallel}, {capacity}{etp}) for each "
        "MoE layer (Rajbhandari et al. 2022, DeepSpeed-MoE); its optimizer shards the expert "
        f"states over the {p.expert_data_parallel}-rank expert-data-parallel group."
    )


def torchtitan_moe(
    config: TrainingConfig, shard: int, parallelism: dict[str, Any], expressed: Expressed
) -> None:
    """torchtitan's expert layout ([parallelism] ``expert_parallel_degree``,
    ``expert_tensor_parallel_degree``; torchtitan/config/job_config.py).

    torchtitan's ParallelDims (torchtitan/distributed/parallel_dims.py) takes expert tensor
    parallelism equal to TP or 1; with ETP = TP the experts borrow data-parallel shard
    ranks (``dp_shard x cp % ep == 0``), with ETP = 1 all the TP ranks and some shard ranks
    (``ep % (cp x tp) == 0``, ``dp_shard x cp x tp % ep == 0``). Its MoE routes dropless
    and exchanges tokens by all-to-all, or by DeepEP (``expert_parallel_comm_backend =
    "deepep"``): no capacity factor, no all-gather dispatcher."""
    if not _moe_set(config):
        return
    if config.layout.moe_dispatcher is MoeDispatcher.FLEX:
        # DeepEP's fused dispatch and combine ([parallelism] expert_parallel_comm_backend).
        parallelism["expert_parallel_comm_backend"] = "deepep"
    else:
        _dispatch_only_all_to_all(config, "torchtitan", expressed)
    _no_overlap_schedule(config, "torchtitan", expressed)
    p = expressed.config.layout
    if p.capacity_factor is not None:
        expressed.change(
            "torchtitan's MoE routes dropless (no expert capacity factor)",
            capacity_factor=None,
            pad_to_capacity=False,
        )
        p = expressed.config.layout
    if p.expert_parallel == 1:
        return
    tp, ep, etp = p.tensor_parallel, p.expert_parallel, p.expert_tp
    cp = p.context_parallel
    if etp == tp:
        fits = ep % cp == 0 and (shard * cp) % ep == 0
    elif etp == 1:
        fits = ep % (cp * tp) == 0 and (shard * cp * tp) % ep == 0
    else:
        fits = False
    if not fits:
        expressed.change(
            f"torchtitan's expert parallelism {ep} with expert tensor parallelism {etp} does "
            f"not fit its device mesh (ETP = TP {tp} or 1; EP borrows FSDP shard ranks of "
            f"{shard}, and all TP ranks when ETP = 1): the experts are sharded like any "
            "other weight",
            expert_parallel=1,
            expert_tensor_parallel=None,
        )
        return
    parallelism["expert_parallel_degree"] = ep
    parallelism["expert_tensor_parallel_degree"] = etp
