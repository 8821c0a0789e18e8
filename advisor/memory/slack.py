"""The caching allocator's slack (``max_memory_reserved - max_memory_allocated``) as a share
of the step's *churn*: the bytes allocated and freed within a step.

Resident storages (weights, their quantisation constants, fp32 master copies, optimizer
states; gradients when they stay allocated across steps) are allocated once, back to back,
and leave no holes in the allocator's segments. The holes come from the churn
(activations, recomputed activations, logits, gradients that are freed each step,
temporaries, gathered parameters): its blocks die in another order and with other sizes
than the next phase asks for, and a segment is never returned to the device while any
block of it is alive. Checkpointing's recompute allocates each block's activations again
in the middle of backward, between gradients that stay: on the CPU traces it leaves about
three times the slack per churned byte, which GPU measurements do not bear out (see
CHURN_SLACK_RECOMPUTE_CPU); the estimate uses one share.

Fitted on the allocation traces of two AdamW steps of Llama-shaped models (10 shapes,
hidden 512-8192, 2-40 layers, 512-16k tokens per step, vocab 32k/128k; LoRA and full; with
and without full checkpointing), traced on the meta device (real sizes, no compute; the
smallest shape also on the CPU, identical) and replayed through the documented CUDA policy
(advisor/memory/allocator.py): ``python -m benchmarks.allocator_grid``,
benchmarks/results/allocator_grid.json ("fit": "default/none" and "default/full"
churn_coefficient). Leave-one-shape-out error on max_memory_reserved: median 2.8% (max
14%) without recompute, 6.3% (max 23%) with it. Not verified on a CUDA device in this
repository.

A pipeline stage is different (``python -m benchmarks.allocator_pipeline``,
benchmarks/results/allocator_pipeline.json): its in-flight micro-batches' activations are
allocated forward by forward in identical sizes and each steady-state backward frees one
micro-batch's blocks just before the next forward asks for the same sizes, so the holes do
not grow with the depth. On meta-device traces of 1F1B and interleaved stages (Llama-shaped
blocks, hidden 2048-16384, 1-35 block-micro-batches in flight, two steps, replayed through
advisor/memory/allocator.py) the slack is 0.4-3.1x that of the same stage running one
micro-batch at a time while the churn is 1.8-12.6x; ``CHURN_SLACK`` x the churn with one
micro-batch in flight (:func:`pipeline_churn_bytes`) predicts max_memory_reserved within
-4.3% to +1.0% on the 14 pipelined rows, against +0.4% to +7.8% (always over) when every
in-flight micro-batch is counted.
"""

from __future__ import annotations

from advisor.config import TrainingConfig

#: Slack per churned byte without recompute (benchmarks/results/allocator_grid.json,
#: "fit" / "default/none" / "churn_coefficient").
CHURN_SLACK = 0.0939

#: Slack per churned byte the CPU traces measure when blocks are recomputed in backward
#: ("default/full"). NOT used by the estimate: on the GPU measurements we have of
#: max_memory_reserved (torchtitan's full-recompute Llama 3.1 70B/405B runs,
#: benchmarks/gpu_fit.py memory check) it over-predicts by up to 10% (0.91-1.10 of
#: measured, against 0.86-1.00 with CHURN_SLACK), and it puts a published run that ran
#: (Llama 3.1 8B, paged 8-bit AdamW, full recompute, on a 24 GiB RTX 4090) over the
#: device. The nvidia-smi readings it brought closer (benchmarks/ftmem.py) also hold memory
#: outside torch's allocator (NCCL communicators), which this share should not absorb.
CHURN_SLACK_RECOMPUTE_CPU = 0.2744

#: Components allocated once and kept across steps (no holes of their own).
RESIDENT_COMPONENTS: tuple[str, ...] = (
    "weights",
    "quantization_constants",
    "master_weights",
    "optimizer_states",
    "dualpipe_weights",
)


def churn_bytes(phase: dict[str, int], *, grads_resident: bool) -> int:
    """The bytes of one phase that are allocated and freed within the step.

    Args:
        phase: component -> bytes alive in the phase (tensors only, no device overheads).
        grads_resident: whether gradients stay allocated across steps (accumulation, DDP
            buckets, ZeRO-1/2), so they are resident rather than churn.
    """
    resident = RESIDENT_COMPONENTS + (("gradients",) if grads_resident else ())
    return sum(v for k, v in phase.items() if k not in resident)


def pipeline_churn_bytes(
    churn: int, phase_activations: int, stage_activations: int, model_level: int, inflight: float
) -> int:
    """The churn the slack is a share of under a pipeline schedule: ``churn`` less the
    activations of the micro-batches in flight beyond one (their blocks are reused in
    identical sizes, benchmarks/results/allocator_pipeline.json; see the module docstring).

    Args:
        churn: the peak phase's :func:`churn_bytes`.
        phase_activations: the activations the peak phase holds.
        stage_activations: every in-flight micro-batch's saved activations, model-level
            tensors included (the forward's end).
        model_level: the model-level part of ``stage_activations`` (held once).
        inflight: micro-batches of the whole stage in flight (1 without a pipeline).
    """
    if inflight <= 1:
        return churn
    beyond_one = round((stage_activations - model_level) * (1 - 1 / inflight))
    return churn - min(phase_activations, beyond_one)


def slack_share(config: TrainingConfig) -> float:
    """The slack per churned byte: :data:`CHURN_SLACK` whatever the checkpointing (see
    :data:`CHURN_SLACK_RECOMPUTE_CPU` for why the CPU traces' recompute share is not used)."""
    del config  # NOTE: kept in the signature: the share may depend on the step again
    return CHURN_SLACK
