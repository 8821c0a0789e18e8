"""The model states one pipeline rank holds whatever the micro-batch (ZeRO's term: weights,
gradients, fp32 master weights, optimizer states), with LoRA/QLoRA's adapters and 4-bit base,
autocast's weight copies and ZeRO/FSDP sharding (Rajbhandari et al. 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from advisor.config import Fp8Recipe, ParallelLayout, Precision, Sharding, Task, TrainingConfig
from advisor.memory.derived import MemoryModel, lora_tensors
from advisor.memory.dtypes import Dtypes, dtypes
from advisor.memory.fp8copies import MICROSCALING_NOTE, fp8_copies_note
from advisor.memory.memo import MemoryMemo
from advisor.memory.optimizer import memory_of, optimizer_state_bytes, paged_state_bytes
from advisor.memory.params import (
    NF4_BYTES,
    NF4_CONSTANT_BITS,
    ParamTensor,
    Role,
    count,
    lora_full_tensors,
)
from advisor.memory.results import COMPONENTS
from advisor.memory.sharding import local_tensors
from advisor.model.spec import ModelSpec
from advisor.rules.taxonomy import OptimizerMemory, StateKind, Technique


@dataclass(frozen=True)
class StageStates:
    """What one pipeline rank holds whatever the micro-batch: the layout's tensors, the
    weights, gradients, master weights and optimizer states (see :func:`stage_states`)."""

    mem: OptimizerMemory
    opt_id: str
    dt: Dtypes
    notes: tuple[str, ...]
    params: int
    d: Mapping[str, int]
    tp: int
    pp: int
    last: bool
    tensors: tuple[ParamTensor, ...]
    local_params: int
    zeroth: bool
    adapters: bool
    n: int
    stage_zero: int
    bd: dict[str, int]
    p_t: int
    layer_bytes: int
    layer_trainable: int
    head_trainable: int
    head_cache: int  # the LM head's share of bd["weight_cache"]
    adapter_cache: int  # LoRA adapters' share of bd["weight_cache"] (trainable: cached)
    paged: int  # optimizer states in unified memory (not in bd["optimizer_states"])

    def shard(self, x: float, from_stage: int) -> int:
        """``x`` bytes as one device of the shard group holds them once ZeRO stage
        ``from_stage`` partitions them (see :func:`stage_states`)."""
        return math.ceil(x / self.n) if self.stage_zero >= from_stage else math.ceil(x)


class StateInputs(NamedTuple):
    """Everything :func:`stage_states` reads besides the model: the optimizer's state
    signature, the LoRA targets, the pipeline rank, the configuration's parallel layout (the
    whole sub-record: degrees and sharding) and the other fields that decide the model
    states. The rest of a configuration (micro-batch, sequence, checkpointing, kernels,
    offload) acts through the activations, the loss and the phases.

    NOTE: the memo key of :func:`stage_states` is this whole record; a field it starts to
    read must be added here first (it reads nothing else: mypy holds it to these fields).
    A named tuple, not a dataclass: built and hashed for every estimate of the search.
    """

    mem: OptimizerMemory
    opt_id: str
    lora_targets: frozenset[str]
    stage: str  # only, first, middle or last
    stage_layers: int
    task: Task
    precision: Precision
    layout: ParallelLayout
    lora_rank: int
    optimizer_in_backward: bool
    accumulates: bool  # grad_accumulation > 1
    fp8_recipe: Fp8Recipe | None = None  # fp8-mixed's recipe (None: tensorwise, or not fp8)

    @classmethod
    def of(
        cls,
        config: TrainingConfig,
        optimizer: Technique | OptimizerMemory,
        lora_targets: frozenset[str],
        stage: str,
        stage_layers: int,
    ) -> StateInputs:
        """The inputs of ``config``'s model states on one pipeline rank.

        Raises:
            UserError: when ``optimizer`` is not an optimizer.
        """
        mem, opt_id = memory_of(optimizer)
        return cls(
            mem,
            opt_id,
            lora_targets,
            stage,
            stage_layers,
            config.task,
            config.precision,
            config.layout,
            config.adapters.lora_rank,
            config.savers.optimizer_in_backward,
            config.batch.grad_accumulation > 1,
            config.kernels.fp8_recipe if config.precision is Precision.FP8_MIXED else None,
        )


def stage_states(memo: MemoryMemo, config: StateInputs) -> StageStates:
    """What one pipeline rank holds whatever the micro-batch: its layout's tensors, the
    weights, gradients, master weights and optimizer states under ZeRO/FSDP sharding.

    NOTE: the plan search estimates each layout and optimizer at many micro-batches and
    memory savers, which this part does not read (about half of a fit test's work): call it
    through the search's memo (``memo.call_with_memo(stage_states, inputs)``), keyed by
    ``config``, the whole input besides the model.

    Args:
        memo: the model's memo (its layout tensors are memoised there).
        config: what the model states depend on (:class:`StateInputs`).
    """
    layout = config.layout
    model = memo.model
    spec = model.spec
    mem, opt_id = config.mem, config.opt_id
    stage, stage_layers = config.stage, config.stage_layers
    dt = dtypes(config.precision, config.fp8_recipe)
    notes: list[str] = []
    if config.precision is Precision.FP8_MIXED:
        notes.append(fp8_copies_note(config.fp8_recipe or Fp8Recipe.TENSORWISE))
    elif config.precision.value in MICROSCALING_NOTE:
        notes.append(MICROSCALING_NOTE[config.precision.value])
    params = model.parameters
    d = model.shape
    tp, pp = layout.tensor_parallel, layout.pipeline_parallel
    last = stage in ("only", "last")
    etp = layout.expert_tp if model.shape["E"] > 1 else tp
    if etp == tp:
        tensors = memo.call(local_tensors, tp, layout.expert_parallel, pp, stage, stage_layers)
    else:
        tensors = memo.call(local_tensors, tp, layout.expert_parallel, pp, stage, stage_layers, etp)
    local_params = count(tensors)
    zeroth = mem.state is StateKind.SEED
    adapters = config.task in (Task.LORA, Task.QLORA)
    n, stage_zero, pipelined = _shard_group(config, notes)
    n_expert = _expert_shard_group(layout, n, etp) if model.shape["E"] > 1 else n

    def shard(x: float, from_stage: int, expert: float = 0.0) -> int:
        # ZeRO (Rajbhandari et al. 2020): stage 1 partitions optimizer states (and the fp32
        # master copy), stage 2 also gradients, stage 3 also the parameters. The ``expert``
        # part of ``x`` (routed experts' states) is partitioned over the expert-data-parallel
        # group instead (see _expert_shard_group).
        if stage_zero < from_stage:
            return math.ceil(x)
        if not expert or n_expert == n:
            return math.ceil(x / n)
        return math.ceil((x - expert) / n) + math.ceil(expert / n_expert)

    bd = dict.fromkeys(COMPONENTS, 0)
    trainable, p_t, layer_bytes = _weights(model, config, tensors, dt, shard, bd, notes)
    p_t_grad = 0 if zeroth else p_t
    if zeroth:
        notes.append("zeroth-order: no gradients, no stored activations (Malladi et al. 2023)")
    # Autocast / fp8 weight copies of the linear layers.
    head_cache = adapter_cache = 0
    if dt.weight_cache:
        head_cache, adapter_cache = _weight_cache(
            spec, config, tensors, trainable, dt, last, n, stage_zero, shard, bd, notes
        )
    # Gradients, master weights, optimizer states.
    layer_trainable = sum(t.numel * t.count for t in trainable if t.per_layer)
    head_trainable = p_t - layer_trainable  # embedding / LM head / final norm of this stage
    grad_bytes = 4 if pipelined and dt.master else dt.grad  # fp32 accumulation (see above)
    experts_t = sum(t.numel * t.count for t in trainable if t.expert)
    grad_full = shard(p_t_grad * grad_bytes, 2, (experts_t if p_t_grad else 0) * grad_bytes)
    if config.optimizer_in_backward and not zeroth:
        # Per-layer updates (LOMO, Lv et al. 2023; GaLore, Zhao et al. 2024): each block's
        # gradients are stepped and freed as soon as they are ready: at most the block being
        # stepped and the next one's, or the embedding / head group, exist at once.
        block = layer_trainable / max(stage_layers, 1) * dt.grad
        bd["gradients"] = math.ceil(max(block, head_trainable * dt.grad) + block)
        notes.append("optimizer step fused into backward: per-layer gradients only")
    else:
        bd["gradients"] = grad_full
    master = p_t * dt.master if not zeroth else 0
    bd["master_weights"] = shard(master, 1, experts_t * dt.master if master else 0)
    state_bytes = optimizer_state_bytes(mem, trainable, state_dtype_bytes=dt.state)
    expert_states = 0
    if experts_t and n_expert != n:
        routed = [t for t in trainable if t.expert]
        expert_states = optimizer_state_bytes(mem, routed, state_dtype_bytes=dt.state)
    bd["optimizer_states"] = shard(state_bytes, 1, expert_states)
    # What a paged optimizer allocates with cudaMallocManaged leaves torch's allocator (and
    # the peak); the small tensors' states and the absmax stay in it.
    paged = min(shard(paged_state_bytes(mem, trainable), 1), bd["optimizer_states"])
    bd["optimizer_states"] -= paged
    return StageStates(
        mem=mem,
        opt_id=opt_id,
        dt=dt,
        notes=tuple(notes),
        params=params,
        d=d,
        tp=tp,
        pp=pp,
        last=last,
        tensors=tensors,
        local_params=local_params,
        zeroth=zeroth,
        adapters=adapters,
        n=n,
        stage_zero=stage_zero,
        bd=bd,
        p_t=p_t,
        layer_bytes=layer_bytes,
        layer_trainable=layer_trainable,
        head_trainable=head_trainable,
        head_cache=head_cache,
        adapter_cache=adapter_cache,
        paged=paged,
    )


def _expert_shard_group(layout: ParallelLayout, n: int, etp: int) -> int:
    """The devices the routed experts' states are sharded over: Megatron's expert-data-
    parallel group, tensor x context x data / (expert tensor x expert parallel)
    (megatron/core/parallel_state.py; its distributed optimizer builds a separate
    optimizer over the expert parameters and shards it over that group,
    megatron/core/optimizer ``_get_megatron_optimizer_based_on_param_groups`` with
    ``expert_data_parallel_group``). ``n`` is the dense states' shard group (the
    data-parallel degree, or an HSDP shard group), whose ranks the expert fold re-factors
    the same way."""
    fold = n * layout.tensor_parallel * layout.context_parallel
    return max(1, fold // (etp * layout.expert_parallel))


def _shard_group(config: StateInputs, notes: list[str]) -> tuple[int, int, bool]:
    """The devices ZeRO/FSDP shards over, the ZeRO stage in effect and whether a pipeline
    accumulates unsharded gradients; notes appended."""
    layout = config.layout
    pp = layout.pipeline_parallel
    if layout.sharding is Sharding.HSDP:
        n = layout.shard_group or min(layout.dp_cp, 8)
        if layout.shard_group is None:
            notes.append(f"hybrid sharding: shard group of {n} devices (one node) assumed")
    else:
        # Context-parallel ranks hold the same model shard: ZeRO/FSDP shard over data x
        # context parallel (Megatron-Core's distributed optimizer over the data-parallel group
        # with context parallel; torchtitan's FSDP over its dp_shard_cp mesh; DeepSpeed's ZeRO
        # over its seq_data_parallel_group under Ulysses, runtime/engine.py 0.19.8).
        n = layout.dp_cp if layout.sharding is not Sharding.NONE else 1
    stage_zero = layout.sharding.zero_stage
    if layout.sharding is not Sharding.NONE and n == 1:
        notes.append("sharding over 1 device divides nothing")
    # Pipeline engines accumulate a step's micro-batches into unsharded gradients, reduced
    # once at the end. torch.distributed.pipelining (torchtitan) runs every backward but the
    # last with FSDP2's gradient sync and reshard-after-backward off (stage.py,
    # ``backward_maybe_with_nosync``): parameters stay gathered and gradients accumulate
    # unsharded in the reduce dtype (``FSDPParam.to_accumulated_grad_if_needed``; torchtitan
    # reduces in fp32). Megatron-LM accumulates into an fp32 ``main_grad`` buffer
    # (``accumulate_allreduce_grads_in_fp32``, forced on with bf16) and its distributed
    # optimizer shards states and master weights only (ZeRO-1).
    pipelined = (
        pp > 1
        and config.accumulates
        and layout.sharding in (Sharding.NONE, Sharding.ZERO1, Sharding.FSDP, Sharding.HSDP)
    )
    if pipelined and stage_zero > 1:
        stage_zero = 1
        notes.append(
            "FSDP under pipeline parallelism: parameters stay gathered and gradients "
            "unsharded across the step's micro-batches (torch.distributed.pipelining)"
        )
    return n, stage_zero, pipelined


def _weights(
    model: MemoryModel,
    config: StateInputs,
    tensors: tuple[ParamTensor, ...],
    dt: Dtypes,
    shard: Callable[..., int],
    bd: dict[str, int],
    notes: list[str],
) -> tuple[list[ParamTensor], int, int]:
    """The weights (``bd``'s weights and quantization constants) and what is trainable:
    LoRA/QLoRA's adapters and 4-bit base, or every tensor; notes appended.

    Returns:
        The trainable tensors, their parameters, and the blocks' weights as stored.
    """
    lora_targets, stage_layers, L = config.lora_targets, config.stage_layers, model.shape["L"]
    local_params = count(tensors)
    adapters = config.task in (Task.LORA, Task.QLORA)
    if adapters:
        # Adapters follow their blocks onto the pipeline stage (tiny; replicated under TP).
        trainable = [
            ParamTensor(t.name, t.shape, t.role, math.ceil(t.count * stage_layers / max(L, 1)))
            for t in lora_tensors(model, config.lora_rank, lora_targets)
        ]
        # PEFT's modules_to_save trains a deep copy of the module and keeps the frozen
        # original beside it (peft.utils.other.ModulesToSaveWrapper.update): the copy is
        # counted with the adapters, the original with the base weights.
        full = lora_full_tensors(tensors, lora_targets)
        trainable += full
        p_t = count(trainable)
        adapter_weights = p_t * dt.weight
        # One block's share: its adapters (the whole tensors trained beside them are not
        # in a block).
        block_adapters = (p_t - count(full)) * dt.weight
        layer_bytes = count(tensors, per_layer=True) * dt.weight + block_adapters
        if config.task is Task.QLORA:
            quantized = sum(t.numel * t.count for t in tensors if t.per_layer and t.shape[1:])
            rest = local_params - quantized
            # NOTE: peft's prepare_model_for_kbit_training casts every parameter that is not
            # 4-bit to fp32 (what autocast layouts keep); 16-bit layouts keep them 16-bit.
            bd["weights"] = shard(quantized * NF4_BYTES + rest * dt.weight + adapter_weights, 3)
            vectors = count(tensors, per_layer=True) - quantized
            layer_bytes = int(
                quantized * (NF4_BYTES + NF4_CONSTANT_BITS / 8)
                + vectors * dt.weight
                + block_adapters
            )
            bd["quantization_constants"] = shard(quantized * NF4_CONSTANT_BITS / 8, 3)
            notes.append(
                "QLoRA: block matrices in 4-bit NF4 (0.5 B/param) + double-quantized "
                "constants (0.127 bit/param); embeddings, norms, LM head in the weight dtype "
                "(fp32 under autocast: peft's prepare_model_for_kbit_training)"
            )
        else:
            bd["weights"] = shard(local_params * dt.weight + adapter_weights, 3)
        matrices = sorted(n for n in lora_targets if n not in ("embed", "lm_head"))
        notes.append(f"LoRA rank {config.lora_rank} on {', '.join(matrices)} of every layer")
        if full:
            notes.append(
                "trained in full beside the adapters (PEFT modules_to_save, a trainable copy "
                "next to the frozen original): " + ", ".join(t.name for t in full)
            )
    else:
        trainable = list(tensors)
        p_t = local_params
        routed = sum(t.numel * t.count for t in tensors if t.expert)
        bd["weights"] = shard(local_params * dt.weight, 3, routed * dt.weight)
        layer_bytes = count(tensors, per_layer=True) * dt.weight
    return trainable, p_t, layer_bytes


#: The precisions whose blocks' GEMMs take FP8 / FP4 operands (the LM head stays bf16).
_LOW_PRECISION_GEMMS = (Precision.FP8_MIXED, Precision.MXFP8_MIXED, Precision.NVFP4_MIXED)


def _weight_cache(
    spec: ModelSpec,
    config: StateInputs,
    tensors: tuple[ParamTensor, ...],
    trainable: list[ParamTensor],
    dt: Dtypes,
    last: bool,
    n: int,
    stage_zero: int,
    shard: Callable[[float, int], int],
    bd: dict[str, int],
    notes: list[str],
) -> tuple[int, int]:
    """Autocast's 16-bit and Transformer Engine's fp8 copies of the linear weights
    (``bd["weight_cache"]``); notes appended.

    Returns:
        The LM head's share of the cache and LoRA's adapters' share.
    """
    head_cache = adapter_cache = 0
    adapters = config.task in (Task.LORA, Task.QLORA)
    # QLoRA's 4-bit matrices are dequantized inside bitsandbytes' matmul and never
    # kept in 16 bits (MatMul4Bit saves the packed weight); its head is not quantized.
    linear = 0
    if config.task is not Task.QLORA:
        linear = sum(t.numel * t.count for t in tensors if t.per_layer and t.shape[1:])
        if spec.vision is not None:
            # A ViT's patch embedding is a convolution: cast like the linears (measured).
            linear += sum(t.numel * t.count for t in tensors if t.role is Role.EMBEDDING)
    # LoRA's adapters are linear weights too (trainable: cast, cached and saved like a
    # full model's; measured with PEFT in tests/memory/test_memory_stacks.py).
    adapter_params = sum(t.numel * t.count for t in trainable if t.per_layer)
    linear += adapter_params if adapters else 0
    # The LM head: its own matrix, or the embedding it is tied to (cast like any other
    # linear weight; measured under autocast for tied GPT-2 and OPT).
    head_role = Role.EMBEDDING if last and spec.tie_word_embeddings else Role.OUTPUT
    head = sum(t.numel * t.count for t in tensors if t.role is head_role)
    if config.precision in _LOW_PRECISION_GEMMS:
        # The LM head runs in bf16 under every FP8 / FP4 recipe (torchtitan converts the
        # blocks' linears only; Megatron-LM's output layer is no TE module): no copy of it.
        head = 0
    # NOTE: autocast casts the weights a block runs with: under ZeRO-3/FSDP the
    # gathered ones. FSDP frees its gathered copy after the block; the cast stays,
    # cached and saved for backward, so it is not divided by the shard group
    # (measured with FSDP2 over 2 gloo ranks: all blocks' unsharded bf16 copies alive
    # at the end of the forward). Transformer Engine's fp8 workspaces follow the
    # parameters' sharding.
    autocast = config.precision in (Precision.AMP_FP16, Precision.AMP_BF16)
    if config.precision not in _LOW_PRECISION_GEMMS:  # those say it per recipe (stage_states)
        notes.append("autocast keeps 16-bit (fp8: 8-bit) copies of the linear weights")
    every, of_head = (linear + head) * dt.weight_cache, head * dt.weight_cache
    if autocast:
        bd["weight_cache"], head_cache = math.ceil(every), math.ceil(of_head)
        if adapters:
            adapter_cache = math.ceil(adapter_params * dt.weight_cache)
        if stage_zero == 3 and n > 1:
            notes.append(
                "autocast casts the gathered weights: their 16-bit copies are not sharded "
                "(cached through the forward, saved for backward); --precision "
                "bf16-mixed (FSDP's MixedPrecisionPolicy(param_dtype=bf16), DeepSpeed's "
                "bf16 mode) gathers 16-bit weights instead"
            )
    else:
        bd["weight_cache"], head_cache = shard(every, 3), shard(of_head, 3)
    return head_cache, adapter_cache
