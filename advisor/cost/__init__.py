"""The cost model: predicted time of one optimizer step, term by term, measured or analytic.

One step on one device (a pipeline stage of a tensor-parallel shard of one data-parallel
replica) is

    (A + (p - 1) / v) x micro-batch time            1F1B with its bubble (Narayanan et al. 2021)
    + optimizer step + master copies + offload        memory- or PCIe-bound
    + exposed data-parallel communication             what backward does not hide

where A is the number of micro-batches (gradient accumulation), p the pipeline stages and v
the interleaved chunks per stage. The micro-batch time is the sum of its kernels' times:
GEMMs at their real shapes (tokens x layer widths per TP shard) at a saturating share of
the dense peak, attention per kernel and sequence length, elementwise and norm work at
memory bandwidth (per kernel stack), recompute, the loss, and the exposed tensor-parallel,
expert-parallel and pipeline transfers. Every constant is the hardware profile's fitted
``efficiency:`` block (benchmarks/gpu_fit.py fits them to public measurements, each with its
source).

Each term is ``measured`` when it comes from this device's calibration cache at the model's
own shapes, ``analytic`` when it comes from datasheet figures times fitted efficiencies.

The modules, in the order they build on each other:

- ``result``: the answer (:class:`StepTime`, its terms, their :class:`Source`);
- ``efficiency``: fitted shares of the peak (the CPU's measured defaults), the peaks, the
  attention kernel that runs;
- ``shape``: what the model contributes (layer shape, per-layer figures, block GEMMs);
- ``setting``: one prediction's shared facts, and what one device holds and steps;
- ``compute``, ``comm``, ``offload``, ``optimizer``: the terms;
- ``memo``: what a search computes once (held by the caller);
- ``step``: the assembly and the entry points :func:`predict_step_time`,
  :func:`predict_for_optimizer`;
- ``data`` (calibration cache types) and ``convergence`` (steps to a target) stand apart.
"""

from __future__ import annotations

from advisor.cost.efficiency import (
    CPU_EFFICIENCY,
    AttentionKernel,
    attention_efficiency,
    attention_kernel,
    compute_dtype,
    efficiency_for,
    gemm_efficiency,
)
from advisor.cost.memo import StepMemo
from advisor.cost.offload import HOST_STEP_GB_S, NVME_GB_S, PCIE5_GB_S, PCIE_GB_S
from advisor.cost.optimizer import FOREACH_TRAFFIC, REFRESH_EFFICIENCY
from advisor.cost.result import ComponentTime, Source, StepTime
from advisor.cost.setting import MicroBatchConfig, micro_batch_config, stage_layers
from advisor.cost.shape import Gemm, ModelShape, block_gemms, layer_shape, model_shape
from advisor.cost.step import predict_for_optimizer, predict_step_time

__all__ = [
    "CPU_EFFICIENCY",
    "FOREACH_TRAFFIC",
    "HOST_STEP_GB_S",
    "NVME_GB_S",
    "PCIE5_GB_S",
    "PCIE_GB_S",
    "REFRESH_EFFICIENCY",
    "AttentionKernel",
    "ComponentTime",
    "Gemm",
    "MicroBatchConfig",
    "ModelShape",
    "Source",
    "StepMemo",
    "StepTime",
    "attention_efficiency",
    "attention_kernel",
    "block_gemms",
    "compute_dtype",
    "efficiency_for",
    "gemm_efficiency",
    "layer_shape",
    "micro_batch_config",
    "model_shape",
    "predict_for_optimizer",
    "predict_step_time",
    "stage_layers",
]
