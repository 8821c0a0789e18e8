"""The optimizer step: measured per parameter where the calibration timed the optimizer,
else memory-bound state traffic (fused or foreach), a host CPU step under offload, MeZO's
perturbation passes, second-order refreshes; and the fp32 master-weight copies."""

from __future__ import annotations

from advisor.config import Offload, Precision, TrainingConfig
from advisor.cost.offload import HOST_STEP_GB_S, NVME_GB_S
from advisor.cost.result import ComponentTime, Source
from advisor.cost.setting import Setting, shard, trainable, trainable_local, weight_bytes

# Bytes an optimizer step reads and writes per trainable parameter, beyond its states:
# the parameter (read + write) and its gradient (read), in fp32.
_STEP_BASE_BYTES = 12
# torch's foreach optimizers (the CUDA default) run each arithmetic op as its own pass over
# every tensor: AdamW's _multi_tensor_adamw reads/writes each state ~4 times against fused
# AdamW's one pass (torch/optim/adamw.py); measured 4.5-4.6x on one CPU thread at 25M and
# 100M parameters (benchmarks/results/cpu_efficiency.json). The fused
# stack uses fused AdamW (torchtitan's default, Megatron's apex/TE FusedAdam) where the
# optimizer has a fused kernel (taxonomy memory.fused_step); bitsandbytes' 8-bit kernels
# are fused on every stack; the others loop everywhere (memory.fused_step_on).
FOREACH_TRAFFIC = 2.5
# Second-order refreshes (eigendecompositions, inverse roots) run far below peak: ~5%.
REFRESH_EFFICIENCY = 0.05

_MIXED = (
    Precision.BF16_MIXED,
    Precision.FP16_MIXED,
    Precision.FP8_MIXED,
    Precision.MXFP8_MIXED,
    Precision.NVFP4_MIXED,
)


def optimizer_step(
    s: Setting,
    c: TrainingConfig,
    state_bytes: float,
    zeroth: bool,
    interval: int | None,
    bwd: float,
    fused_step: bool = True,
) -> ComponentTime:
    """Seconds of the step's optimizer updates on this device."""
    savers = c.savers
    local = trainable_local(s, c)
    steps = c.batch.grad_accumulation if savers.optimizer_in_backward else 1
    if s.results is not None and not zeroth:
        measured = _measured_step(s, c, local, steps)
        if measured is not None:
            return measured
    bw, src = s.bandwidth()
    if zeroth:
        # MeZO: 4 in-place perturbation passes over the weights (perturb +, -, restore,
        # update), each reading and writing them and drawing a normal sample per weight.
        wb = weight_bytes(c.precision)
        local_w = s.sh.params / (s.tp * s.pp)
        return ComponentTime(
            seconds=4 * local_w * (2 * wb + 4) / bw,
            source=src,
            detail="seeded perturbation passes",
        )
    if savers.offload is not Offload.NONE:
        return _host_step(s, c, local, state_bytes, bwd)
    traffic = _STEP_BASE_BYTES + 2 * state_bytes
    variant = "fused"
    if not fused_step:
        traffic *= FOREACH_TRAFFIC
        variant = "foreach"
    if savers.optimizer_in_backward:
        traffic -= 4  # the gradient is consumed where it is produced, never re-read
    seconds = local * traffic * steps / bw
    if interval and s.hw is not None:
        seconds += _refresh(s, c) / interval
    return ComponentTime(
        seconds=seconds, source=src if s.hw is None else Source.ANALYTIC, detail=variant
    )


def _measured_step(s: Setting, c: TrainingConfig, local: float, steps: int) -> ComponentTime | None:
    assert s.results is not None
    timed = [
        o
        for o in s.results.optimizers
        if o.optimizer == c.optimizer and o.status == "ok" and o.per_step_s is not None
    ]
    if not timed or c.savers.offload is not Offload.NONE:
        return None
    # Best measured variant (fused where available), per parameter, scaled to the
    # parameters this device steps (embeddings included, sharding applied).
    best = min(timed, key=lambda o: o.per_step_s or 0.0)
    per_param = (best.per_step_s or 0.0) / max(best.layer_parameters, 1)
    detail = f"{best.variant or 'default'}, {per_param * 1e9:.2f} ns/param"
    return ComponentTime(seconds=per_param * local * steps, source=Source.MEASURED, detail=detail)


def _host_step(
    s: Setting, c: TrainingConfig, local: float, state_bytes: float, bwd: float
) -> ComponentTime:
    """The optimizer step on the host CPU (ZeRO-Offload), states in host memory or NVMe."""
    savers = c.savers
    seconds = local * (_STEP_BASE_BYTES + state_bytes) / (HOST_STEP_GB_S * 1e9)
    detail = "on the host CPU"
    if savers.offload.nvme:
        # States are read from and written back to NVMe every step.
        seconds += 2 * local * (state_bytes + 4) / (NVME_GB_S * 1e9)
        detail += ", states on NVMe"
    if savers.optimizer_in_backward:
        # Per-parameter host steps run while backward continues on the GPU
        # (ZeRO-Offload's overlap; LOMO-style fused updates).
        seconds = max(seconds / max(s.stage_layers, 1.0), seconds - bwd)
        detail += ", overlapped with backward"
    return ComponentTime(seconds=seconds, source=Source.ANALYTIC, detail=detail)


def _refresh(s: Setting, c: TrainingConfig) -> float:
    """Seconds of one preconditioner refresh on this device."""
    assert s.hw is not None
    # Preconditioner refresh: ~10 d^3 FLOPs per d x d factor (eigendecomposition or
    # inverse root), amortised over the interval (Gupta et al. 2018; Vyas et al. 2024).
    d = min(s.sh.hidden, 1024)
    share = trainable(s, c) / max(s.sh.params, 1)
    factors = (
        2
        * (s.sh.layer_params // max(d * d, 1))
        * s.sh.layers
        * share
        / shard(s, c, 1)
        / (s.tp * s.pp)
    )
    return 10 * d**3 * factors / (s.hw.peak_tflops.fp32 * 1e12 * REFRESH_EFFICIENCY)


def master_copies(s: Setting, c: TrainingConfig, zeroth: bool) -> ComponentTime | None:
    """The fp32 master weights' copies of a ``*-mixed`` precision (None otherwise)."""
    if c.precision not in _MIXED or zeroth:
        return None
    # fp32 master weights: 16-bit gradients up-cast before the step, updated masters
    # cast back into the 16-bit weights: ~12 bytes moved per trainable parameter.
    bw, src = s.bandwidth()
    return ComponentTime(seconds=12 * trainable_local(s, c) / bw, source=src)
