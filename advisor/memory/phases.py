"""The phases of one training step (forward end, loss backward, layer backward, optimizer
step): which components are alive in each, autocast's weight cache included."""

from __future__ import annotations

import math
from typing import NamedTuple

from advisor.config import Checkpointing, Offload, Precision, Task, TrainingConfig


def grads_persistent(config: TrainingConfig) -> bool:
    """Whether gradients stay allocated through the forward pass.

    They do with gradient accumulation (summed across micro-batches), under DDP (gradients
    are views into persistent all-reduce buckets, ``gradient_as_bucket_view``) and under
    ZeRO-1/2 (DeepSpeed's persistent gradient partitions and reduce buckets). A single
    device or FSDP/ZeRO-3 with ``zero_grad(set_to_none=True)`` (torch's default since 2.0)
    frees them after each step.
    """
    savers, layout = config.savers, config.layout
    if savers.optimizer_in_backward:
        return False
    if savers.offload is not Offload.NONE:
        return True  # the offload reduce bucket is allocated once and kept
    if config.batch.grad_accumulation > 1:
        return True
    return layout.dp_cp > 1 and layout.sharding.zero_stage < 3


def phases_of(
    bd: dict[str, int],
    config: TrainingConfig,
    *,
    zeroth: bool,
    grads_persistent: bool,
    head_grad: int,
    model_level: int,
    per_block: int,
    loss_tr: int,
    loss_saved: int,
    grad_flow: int,
    step_tr: int,
    inflight: float,
    head_cache: int = 0,
    adapter_cache: int = 0,
    worst: tuple[int, int] | None = None,
) -> dict[str, dict[str, int]]:
    """The tensor components alive in each phase of one step (overheads added by the caller).

    Backward walks the blocks from the last to the first: at its start all activations are
    alive and (unless persistent) only the LM head's gradients exist; at its end all
    gradients exist and only the first block's activations (and those of other in-flight
    pipeline micro-batches) remain. The sum is linear in between, so these two ends bound
    the layer-backward phase.

    Autocast's 16-bit weight copies live in its cache until the forward's autocast region
    exits (``torch.autocast.__exit__`` clears it), and after that only as what autograd
    saved: each block's copies until that block's backward, none under full recomputation
    (the recomputed block casts its own; the LM head, never recomputed, keeps its copy
    ``head_cache`` until the loss backward). The optimizer step never sees them (measured in
    tests/memory/test_memory_stacks.py). Transformer Engine's fp8 weight copies are workspaces
    its modules keep from step to step: alive in every phase.
    """
    savers = config.savers
    autocast = config.precision in (Precision.AMP_FP16, Precision.AMP_BF16)
    static = {
        k: bd[k]
        for k in (
            "weights",
            "quantization_constants",
            "dualpipe_weights",
            "master_weights",
            "optimizer_states",
        )
        if bd.get(k)
    }
    if bd["weight_cache"] and not autocast:
        static["weight_cache"] = bd["weight_cache"]
    cache, head_cache, saved_cache, forward_cache, backward_cache = _autocast_cache(
        bd, config, autocast, head_cache, adapter_cache
    )
    gathered = (
        {"gathered_parameters": bd["gathered_parameters"]} if bd["gathered_parameters"] else {}
    )
    if zeroth:
        fwd = {**static, "activations": bd["activations"], "logits": bd["logits"], **gathered}
        if forward_cache:
            fwd["weight_cache"] = forward_cache
        return {"forward_end": fwd, "optimizer_step": dict(static)}
    grads = bd["gradients"]
    in_fwd = {"gradients": grads} if grads_persistent and grads else {}
    forward_end = {**static, **in_fwd, "activations": bd["activations"], "logits": bd["logits"]}
    forward_end.update(gathered)
    if forward_cache:
        forward_end["weight_cache"] = forward_cache
    # The model output's logits are dropped before backward; what the loss saved remains.
    loss_backward = {**forward_end, "logits": loss_saved}
    if cache:
        loss_backward["weight_cache"] = saved_cache
    if loss_tr:
        loss_backward["transient"] = loss_tr
    loss_backward = {k: v for k, v in loss_backward.items() if v}
    acts = bd["activations"]
    other_inflight = (acts - model_level) * (1 - 1 / inflight) if inflight > 1 else 0.0
    end_acts = math.ceil(model_level + per_block + other_inflight)
    start_grads = grads if grads_persistent or savers.optimizer_in_backward else head_grad
    start = acts + start_grads + backward_cache
    end = end_acts + grads
    extra = {k: bd[k] for k in ("recompute", "per_sample_gradients") if bd[k]}
    extra["transient"] = grad_flow
    if savers.optimizer_in_backward and step_tr:
        extra["transient"] += step_tr
    # A CNN's sum is not linear: its (activations, gradients) at the fullest point of
    # backward, from the layer walk (advisor.memory.convnet.backward_worst).
    mid = (worst[0], grads if grads_persistent else worst[1]) if worst else (0, 0)
    if worst and sum(mid) + backward_cache > max(start, end):
        backward = {**static, "gradients": mid[1], "activations": mid[0]}
        if cache:
            backward["weight_cache"] = backward_cache
    elif start >= end:
        backward = {**static, "gradients": start_grads, "activations": acts}
        if cache:
            backward["weight_cache"] = backward_cache
    else:
        backward = {**static, "gradients": grads, "activations": end_acts}
    backward = {k: v for k, v in {**backward, **extra, **gathered}.items() if v}
    step = {**static}
    if not savers.optimizer_in_backward:
        step["gradients"] = grads
        if step_tr:
            step["transient"] = step_tr
    step = {k: v for k, v in step.items() if v}
    return {
        "forward_end": forward_end,
        "loss_backward": loss_backward,
        "layer_backward": backward,
        "optimizer_step": step,
    }


class _AutocastCache(NamedTuple):
    """Autocast's 16-bit weight copies alive at each point of a step (see :func:`phases_of`)."""

    cache: int  # the whole cache (0 without autocast)
    head: int  # the LM head's copy
    saved: int  # what autograd saved of the copies
    forward: int  # alive at the end of the forward
    backward: int  # alive in the layer backward


def _autocast_cache(
    bd: dict[str, int],
    config: TrainingConfig,
    autocast: bool,
    head_cache: int,
    adapter_cache: int,
) -> _AutocastCache:
    """How much of autocast's weight cache each phase holds."""
    savers = config.savers
    cache = bd["weight_cache"] if autocast else 0
    head_cache = min(head_cache, cache)
    # What autograd saves of the copies: the blocks not recomputed (every one but each
    # ac_frequency-th under selective-layer checkpointing) and the head. The cache holds
    # the casts of trainable weights only (leaves that need gradients): LoRA's frozen
    # matrices live only as saved.
    ckpt = savers.checkpointing
    if ckpt is Checkpointing.FULL:
        kept = 0.0
    elif ckpt is Checkpointing.SELECTIVE_LAYER:
        kept = 1 - 1 / savers.ac_frequency
    else:
        kept = 1.0
    saved_cache = head_cache + math.ceil((cache - head_cache) * kept)
    adapters = config.task in (Task.LORA, Task.QLORA)
    # Under LoRA the cache holds only the adapters' casts; recomputed blocks' ones are in it
    # until the region exits, though autograd does not keep them.
    forward_cache = saved_cache + math.ceil(adapter_cache * (1 - kept)) if adapters else cache
    # By the layer backward the head's backward has run and freed its copy.
    backward_cache = saved_cache - head_cache
    return _AutocastCache(cache, head_cache, saved_cache, forward_cache, backward_cache)
