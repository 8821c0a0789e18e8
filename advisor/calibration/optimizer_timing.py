"""Optimizer step timing: every variant of an optimizer stepped on one block's real tensors
(widths scaled down when a layer does not fit, or in quick mode), first and steady steps.
"""

from __future__ import annotations

import math
import time
from typing import Any

import psutil

from advisor.calibration.device import REPEATS, Budget, cuda_free
from advisor.calibration.optimizers import OPTIMIZERS, Variant
from advisor.calibration.timing import is_out_of_memory, measure
from advisor.cost.data import LayerShape, OptimizerTiming
from advisor.model.spec import ModelSpec

# Quick mode times optimizers on at most this many parameters of one layer.
QUICK_MAX_LAYER_PARAMS = 32_000_000


def _layer_tensors(torch: Any, spec: ModelSpec, device: str, scale: float) -> dict[str, Any]:
    params = {}
    for name, dims in spec.layer_matrix_shapes():
        shape = tuple(max(1, int(d * scale)) for d in dims)
        p = torch.nn.Parameter(torch.randn(*shape, device=device) * 0.02)
        p.grad = torch.randn_like(p) * 1e-3
        params[name.replace(".", "_")] = p
    return params


def time_optimizer(
    torch: Any,
    device: str,
    sync: Any,
    spec: ModelSpec,
    shape: LayerShape,
    oid: str,
    budget: Budget,
    mode: str = "full",
) -> list[OptimizerTiming]:
    entry = OPTIMIZERS.get(oid)
    if entry is None:
        return [
            OptimizerTiming(optimizer=oid, status="unsupported", detail="no entry in the table")
        ]
    kind = "cuda" if device.startswith("cuda") else device
    variants = [v for v in entry.variants if kind in v.devices]
    if not variants:
        return [OptimizerTiming(optimizer=oid, status="unsupported", detail=entry.unavailable)]
    layer_params = spec.layer_parameter_count()
    free = psutil.virtual_memory().available if device == "cpu" else cuda_free(torch, device)
    # Parameters + gradients + up to 4 state/temporary copies, all fp32.
    scale, why = 1.0, ""
    if layer_params * 4 * 6 > 0.4 * free:
        scale, why = math.sqrt(0.4 * free / (layer_params * 4 * 6)), "memory"
    if mode == "quick" and layer_params * scale**2 > QUICK_MAX_LAYER_PARAMS:
        # NOTE: the quick set is elementwise optimizers, whose cost per parameter is flat
        # from 25M to 100M parameters (AdamW 1.22 ns/param fused, 5.50-5.58 foreach, at both:
        # benchmarks/results/cpu_efficiency.json); a 7B layer (202M)
        # would spend minutes on repeats without changing the per-parameter figure.
        scale, why = math.sqrt(QUICK_MAX_LAYER_PARAMS / layer_params), "quick-mode time"
    out = []
    for variant in variants:
        if not budget.ok():
            out.append(
                OptimizerTiming(
                    optimizer=oid, variant=variant.name, status="skipped", detail="budget spent"
                )
            )
            continue
        out.append(_time_variant(torch, device, sync, spec, oid, variant, scale, why))
    return out


def _time_variant(
    torch: Any,
    device: str,
    sync: Any,
    spec: ModelSpec,
    oid: str,
    variant: Variant,
    scale: float,
    why: str = "memory",
) -> OptimizerTiming:
    tensors = _layer_tensors(torch, spec, device, scale)
    module = torch.nn.Module()
    for name, p in tensors.items():
        module.register_parameter(name, p)
    module.optadvise_hidden = max(1, int((spec.hidden_size or 1) * scale))
    module.optadvise_heads = spec.num_attention_heads or 1
    params = list(tensors.values())
    n = sum(p.numel() for p in params)
    detail = f"widths scaled by {scale:.2f} ({why})" if scale < 1 else ""
    try:
        opt = variant.build(torch, params, module)
    except (ImportError, RuntimeError, TypeError, ValueError) as exc:
        return OptimizerTiming(
            optimizer=oid,
            variant=variant.name,
            status="unsupported",
            detail=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
        )

    def refill(create_graph: bool) -> None:
        if create_graph:
            opt.zero_grad(set_to_none=True)
            loss = sum((p * p).sum() for p in params)
            loss.backward(create_graph=True)

    def step() -> None:
        if variant.needs == "closure":
            opt.step(lambda: 0.0)  # the two forwards are costed separately
        elif variant.needs == "hessian":
            refill(True)
            opt.step()
        else:
            opt.step()

    try:
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - t0
        steady = measure(step, sync, repeats=REPEATS, warmup=1, max_seconds=10.0)
        if variant.needs == "hessian":
            # The create_graph backward is not the optimizer's cost: time it alone, subtract.
            back = measure(lambda: refill(True), sync, repeats=REPEATS)
            steady = steady.model_copy(
                update={"median_s": max(0.0, steady.median_s - back.median_s)}
            )
    except (RuntimeError, MemoryError) as exc:
        status = "does-not-fit" if is_out_of_memory(exc) else "failed"
        return OptimizerTiming(
            optimizer=oid,
            variant=variant.name,
            status=status,
            detail=str(exc).splitlines()[0][:160],
            layer_parameters=n,
        )
    amortised = None
    if variant.interval:
        # The first step builds and refreshes the preconditioner / projection: spread that
        # extra over the refresh interval.
        amortised = steady.median_s + max(0.0, first - steady.median_s) / variant.interval
    return OptimizerTiming(
        optimizer=oid,
        variant=variant.name,
        steady=steady,
        first_step_s=first,
        interval=variant.interval,
        refresh_s=first if variant.interval else None,
        amortised_s=amortised,
        layer_parameters=n,
        detail=detail,
    )
