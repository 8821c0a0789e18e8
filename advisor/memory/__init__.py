"""Per-device peak memory of one training configuration, by named component and by phase.

The model counts what a training step keeps alive on one device, component by component,
in a fixed order (:data:`COMPONENTS`)::

    weights + quantization_constants + weight_cache                   (model)
    gradients + per_sample_gradients                                  (backward)
    master_weights + optimizer_states                                 (optimizer)
    activations + recompute + logits                                  (saved for backward)
    transient                                                         (loss / step temporaries)
    gathered_parameters                                               (ZeRO-3 / FSDP / offload)
    cuda_context + workspace + allocator_reserve                      (device overheads)

Components that never coexist are not added: the peak is the largest of a step's phases
(:data:`PHASES`: forward end, loss backward, layer backward, optimizer step), each the sum of
what is alive in it. ``breakdown`` keeps every component at its full size; ``phases`` lists
what each phase holds (a component may be partly alive, e.g. gradients during backward);
``total_bytes`` is the largest phase, named by ``peak_phase``.

Activation counts depend on the kernel stack (:class:`~advisor.config.Stack`). ``hf`` counts
are derived from the Hugging Face blocks as PyTorch autograd saves them (Llama / Qwen2 /
Mistral / GPT-2 / OPT, no dropout) and are verified by ``tests/memory/test_memory_measured.py``
against ``saved_tensors_hooks``. ``fused`` counts follow the tensors the production kernels
save (FlashAttention, fused RMSNorm/LayerNorm, fused SwiGLU/bias-GELU, fused cross-entropy);
their sources are cited where they are counted, and what runs on a CPU (flash SDPA, a
chunked linear cross-entropy in plain PyTorch) is measured in
``tests/memory/test_memory_stacks.py``.

Parallel layouts divide the per-device share: tensor parallelism with sequence parallelism
splits block matrices, the vocabulary and every activation by ``tp`` (Shoeybi et al. 2019;
Korthikanti et al. 2022); pipeline parallelism places whole blocks on each model chunk
(:func:`pipeline_split`) and each rank holds the activations its schedule keeps in flight
(:func:`inflight_block_microbatches`: 1F1B and interleaved 1F1B, Narayanan et al. 2021),
plus what its pipeline runtime keeps of stage inputs and outputs (:func:`stage_io_bytes`:
nothing under Megatron-Core, which frees each output once sent; outputs and per-micro-batch
receive buffers under torch.distributed.pipelining); expert parallelism splits the experts;
ZeRO/FSDP shard model states over the data-parallel (or, hybrid, the shard-group) degree
(Rajbhandari et al. 2020; Zhao et al. 2023).

The package, along the estimate's data flow (each module imports only those above it):

- :mod:`~advisor.memory.results`: the components, phases, device overheads and result types.
- :mod:`~advisor.memory.cuda_context`: the CUDA context per GPU (SMs, lazy kernel loading).
- :mod:`~advisor.memory.allocator`: the CUDA caching allocator's policy, replayed on traces.
- :mod:`~advisor.memory.slack`: the allocator's slack as a share of the step's churn.
- :mod:`~advisor.memory.dtypes`: bytes per element under each precision layout.
- :mod:`~advisor.memory.params`: dimensions, parameter tensors, counts, LoRA's adapters.
- :mod:`~advisor.memory.matmuls`: a block's weight matmuls, op-level SAC's recomputed share.
- :mod:`~advisor.memory.derived`: :class:`MemoryModel`, the above computed once per spec.
- :mod:`~advisor.memory.memo`: :class:`MemoryMemo`, the caller's memo of estimates' pieces.
- :mod:`~advisor.memory.optimizer`: optimizer state formulas, paged states, fused steps.
- :mod:`~advisor.memory.activations`: what a block and the model level save for backward.
- :mod:`~advisor.memory.loss`: logits and the cross-entropy loss.
- :mod:`~advisor.memory.recompute`: activation checkpointing modes.
- :mod:`~advisor.memory.pipeline`: pipeline splits, in-flight micro-batches, stage I/O.
- :mod:`~advisor.memory.sharding`: layouts the engines run, the tensors a device holds.
- :mod:`~advisor.memory.states`: a rank's weights, gradients, masters, optimizer states.
- :mod:`~advisor.memory.phases`: what is alive in each phase of a step.
- :mod:`~advisor.memory.stage`: one pipeline rank's estimate.
- :mod:`~advisor.memory.estimate`: the entry points.
"""

from advisor.memory.activations import layer_activation_bytes
from advisor.memory.allocator import CachingAllocator, Replay
from advisor.memory.cuda_context import cuda_context_bytes, gpu_overheads
from advisor.memory.derived import (
    MemoryModel,
    block_matmuls,
    lora_tensors,
    param_tensors,
    selective_op_recompute_share,
)
from advisor.memory.estimate import estimate_memory, memory_totals, trainable_parameter_count
from advisor.memory.loss import LossMemory, loss_memory
from advisor.memory.memo import MemoryMemo
from advisor.memory.optimizer import (
    PAGED_MIN_NUMEL,
    PagedResidency,
    fused_step_on,
    optimizer_note,
    optimizer_state_bytes,
    paged_residency,
    paged_state_bytes,
)
from advisor.memory.params import (
    DEFAULT_LORA_TARGETS,
    NF4_BYTES,
    NF4_CONSTANT_BITS,
    ParamTensor,
    Role,
    lora_full_tensors,
)
from advisor.memory.pipeline import (
    PipelineRuntime,
    inflight_block_microbatches,
    inflight_chunk_microbatches,
    pipeline_split,
    stage_io_bytes,
)
from advisor.memory.recompute import saved_activation_bytes, selective_op_block_bytes
from advisor.memory.results import (
    COMPONENTS,
    OVERHEAD_COMPONENTS,
    PHASES,
    DeviceOverheads,
    MemoryEstimate,
    MemoryTotals,
    Phase,
)
from advisor.memory.stage import OFFLOAD_BUCKET_ELEMENTS

__all__ = [
    "COMPONENTS",
    "DEFAULT_LORA_TARGETS",
    "NF4_BYTES",
    "NF4_CONSTANT_BITS",
    "OFFLOAD_BUCKET_ELEMENTS",
    "OVERHEAD_COMPONENTS",
    "PAGED_MIN_NUMEL",
    "PHASES",
    "CachingAllocator",
    "DeviceOverheads",
    "LossMemory",
    "MemoryEstimate",
    "MemoryMemo",
    "MemoryModel",
    "MemoryTotals",
    "PagedResidency",
    "ParamTensor",
    "Phase",
    "PipelineRuntime",
    "Replay",
    "Role",
    "block_matmuls",
    "cuda_context_bytes",
    "estimate_memory",
    "fused_step_on",
    "gpu_overheads",
    "inflight_block_microbatches",
    "inflight_chunk_microbatches",
    "layer_activation_bytes",
    "lora_full_tensors",
    "lora_tensors",
    "loss_memory",
    "memory_totals",
    "optimizer_note",
    "optimizer_state_bytes",
    "paged_residency",
    "paged_state_bytes",
    "param_tensors",
    "pipeline_split",
    "saved_activation_bytes",
    "selective_op_block_bytes",
    "selective_op_recompute_share",
    "stage_io_bytes",
    "trainable_parameter_count",
]
