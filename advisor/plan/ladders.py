"""Memory-saver ladders: which saver rungs a plan search walks, and in which order.

A ladder is one core (optimizer, precision, attention) on one layout, walked through the
rungs of :func:`saver_ladder` (offload levels, each from the fastest rung to the leanest)
by :class:`advisor.plan.planner.PlanSearch`; :mod:`advisor.plan.bounds` bounds what a
ladder can return. This module holds the rungs and what each one is (its technique ids,
whether it adds time, which is the leanest).
"""

from __future__ import annotations

import itertools

from advisor.config import Checkpointing, TrainingConfig
from advisor.memory import layer_activation_bytes
from advisor.plan.space import Context, PlanSpace, Savers
from advisor.rules.candidates import (
    ACTIVATION_OFFLOAD_ID,
    CHECKPOINTING_IDS,
    FUSED_LOSS_ID,
    OFFLOAD_IDS,
    OPTIMIZER_IN_BACKWARD_ID,
)


def saver_ladder(
    ctx: Context, space: PlanSpace, *, offload_every_level: bool = True
) -> list[list[Savers]]:
    """The memory-saver combinations, by offload level (none, then the optimizer and the
    parameters to host RAM, Ren et al. 2021, then to NVMe, Rajbhandari et al. 2021), each
    level in the order of its expected slowdown: fused loss (no slower; Hsu et al. 2024),
    selective to full recomputation (Korthikanti et al. 2022: ~2.7% and ~33% more compute),
    each also with activation offload (with ``offload_every_level=False`` only the last: the
    layout screen's coarser ladder), then activation offload without recomputation."""
    fused = True in space.fused_loss and FUSED_LOSS_ID in ctx.taxonomy
    # In order of extra compute: attention core (~3%), torchtitan's op-level SAC (every other
    # matmul, ~13% on Llama 2 13B), every second block (~17%), every block (~33%).
    order = (
        Checkpointing.SELECTIVE,
        Checkpointing.SELECTIVE_OP,
        Checkpointing.SELECTIVE_LAYER,
        Checkpointing.FULL,
    )
    ckpts = [c for c in order if c in space.checkpointing]
    levels = []
    for off in space.offloads:
        act = True in space.activation_offload
        rungs = [Savers(offload=off)]
        if fused:
            rungs.append(Savers(offload=off, fused_loss=True))
        for ck in ckpts:
            rungs.append(Savers(checkpointing=ck, fused_loss=fused, offload=off))
            if act and (offload_every_level or ck is ckpts[-1]):
                # Each recomputation level with its saved activations streamed to the host:
                # op-level SAC plus offload can admit a micro-batch that beats full
                # recomputation plus offload (70B on 2 x 8 H100, search_exhaustive).
                rungs.append(
                    Savers(checkpointing=ck, fused_loss=fused, offload=off, activation_offload=True)
                )
        if act:
            # Without recomputation every saved activation crosses PCIe twice (about 16
            # times the block inputs, memory.saved_activation_bytes): the slowest rung.
            rungs.append(Savers(offload=off, fused_loss=fused, activation_offload=True))
        levels.append(rungs)
    return levels


def all_savers(space: PlanSpace) -> list[Savers]:
    """Every saver combination (exhaustive mode)."""
    return [
        Savers(checkpointing=ck, offload=off, fused_loss=f, activation_offload=a)
        for ck, off, f, a in itertools.product(
            space.checkpointing, space.offloads, space.fused_loss, space.activation_offload
        )
    ]


def selective_saves(ctx: Context, c: TrainingConfig) -> bool:
    """Whether selective recomputation (the attention core, Korthikanti et al. 2022) saves
    any memory for ``c``'s attention and kernel stack. With FlashAttention or the fused stack
    the block never keeps the s x s scores, so it saves nothing and only adds recompute: the
    rung is dominated by the one without it and is skipped."""

    def saved(selective: bool) -> int:
        return ctx.memory_memo.call(
            layer_activation_bytes,
            1,
            c.batch.seq_len,
            c.kernels.attention,
            c.precision,
            selective=selective,
            stack=c.kernels.stack,
            tensor_parallel=c.layout.tensor_parallel,
            fused_norm=c.kernels.fused_norm,
        )

    return saved(True) < saved(False)


def adds_no_time(rung: Savers) -> bool:
    """Whether a rung may be as fast as any of its level: recomputation and activation
    offload only add time (cost.py: recompute, exposed PCIe traffic), while the fused loss
    takes time off (fewer logit bytes moved)."""
    return rung.checkpointing is Checkpointing.NONE and not rung.activation_offload


def saver_ids(rung: Savers) -> frozenset[str]:
    """The technique ids a saver rung adds to a configuration (see config_techniques)."""
    ids = set(OFFLOAD_IDS.get(rung.offload, []))
    if rung.checkpointing in CHECKPOINTING_IDS:
        ids.add(CHECKPOINTING_IDS[rung.checkpointing])
    if rung.optimizer_in_backward:
        ids.add(OPTIMIZER_IN_BACKWARD_ID)
    if rung.activation_offload:
        ids.add(ACTIVATION_OFFLOAD_ID)
    if rung.fused_loss:
        ids.add(FUSED_LOSS_ID)
    return frozenset(ids)


def leanest_rung(level: list[Savers]) -> Savers:
    """The rung of a level that keeps the least: the deepest recomputation, with activation
    offload and the fused loss where the level has them."""
    depth = {ck: i for i, ck in enumerate(CKPT_DEPTH)}
    return max(level, key=lambda r: (depth[r.checkpointing], r.activation_offload, r.fused_loss))


# Recomputation levels by how much they save (the leanest rung is the deepest).
CKPT_DEPTH = (
    Checkpointing.NONE,
    Checkpointing.SELECTIVE,
    Checkpointing.SELECTIVE_OP,
    Checkpointing.SELECTIVE_LAYER,
    Checkpointing.FULL,
)
