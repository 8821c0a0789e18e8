"""One training configuration: the shared vocabulary of the memory model, cost model and ranking."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from typing_extensions import Self

from advisor.moe_terms import MoeBalance as MoeBalance
from advisor.moe_terms import MoeDispatcher as MoeDispatcher
from advisor.moe_terms import MoeOverlap as MoeOverlap

#: The matrices LoRA may adapt in every block, by their role (the memory model maps fused
#: and latent projections onto them: GPT-2/Phi-3's qkv, Phi-3's gate_up, MLA's q_a/kv_a/kv_b),
#: and the whole tensors outside the blocks that can be trained beside the adapters (PEFT's
#: ``modules_to_save``: the embedding and the LM head).
LORA_MATRICES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
LORA_FULL_TENSORS: tuple[str, ...] = ("embed", "lm_head")
#: Named groups of ``--lora-targets``: PEFT's ``target_modules="all-linear"`` adapts every
#: linear layer but the output layer (peft.tuners.tuners_utils, INCLUDE_LINEAR_LAYERS_SHORTHAND).
LORA_TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "all-linear": LORA_MATRICES,
}


class Task(str, Enum):
    """What the user trains: all weights from scratch or from a checkpoint, or adapters."""

    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
    LORA = "lora"
    QLORA = "qlora"


class Precision(str, Enum):
    """Where each tensor lives in which dtype.

    ``amp-*``: PyTorch autocast — fp32 weights, gradients and optimizer states, 16-bit
    activations, plus autocast's cache of 16-bit weight copies.
    ``*-mixed``: DeepSpeed/Megatron layout — 16-bit weights and gradients, fp32 master
    weights and optimizer states (Micikevicius et al. 2018).
    bare ``fp16``/``bf16``: everything 16-bit, no master copy.
    ``fp8-mixed``: bf16-mixed with the blocks' linear layers in FP8 (per-tensor scaling).
    ``mxfp8-mixed`` / ``nvfp4-mixed``: the same with block-scaled (microscaling) GEMM
    operands on Blackwell (compute capability >= 10.0): MXFP8 (8-bit elements, one E8M0
    scale per 32) and NVFP4 (4-bit E2M1, one E4M3 scale per 16 and an fp32 one per tensor;
    NVIDIA's recipe keeps ~16% of the linear layers in bf16, arXiv 2509.25149).
    """

    FP32 = "fp32"
    TF32 = "tf32"
    AMP_FP16 = "amp-fp16"
    AMP_BF16 = "amp-bf16"
    FP16_MIXED = "fp16-mixed"
    BF16_MIXED = "bf16-mixed"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8_MIXED = "fp8-mixed"
    MXFP8_MIXED = "mxfp8-mixed"
    NVFP4_MIXED = "nvfp4-mixed"


class Attention(str, Enum):
    """The attention implementation (SDPA backend or eager matmul-softmax-matmul)."""

    EAGER = "eager"
    MEM_EFFICIENT = "mem-efficient"
    FLASH = "flash"


class Checkpointing(str, Enum):
    """Activation checkpointing: what a block keeps for backward and what it recomputes.

    ``full``: each block keeps only its input and is recomputed in backward (Chen et al.
    2016). ``selective``: the attention core (scores, softmax, dropout) is recomputed, the
    rest kept (Korthikanti et al. 2022; with IO-aware attention nearly ``none``).
    ``selective-layer``: torchtitan's layer-level selective AC, full checkpointing of every
    ``ac_frequency``-th block, the others keep everything (``selective_ac_option = "2"``).
    ``selective-op``: torchtitan's op-level selective AC: the block keeps its input and the
    outputs of the ops on a save list (matmuls, the flash / memory-efficient SDPA kernels,
    reduce-scatter, max) except every second matmul, and recomputes the rest (pointwise ops,
    norms, RoPE) in backward (torchtitan ``_apply_ac_to_transformer_block``, ``_save_list``;
    PyTorch ``torch.utils.checkpoint.create_selective_checkpoint_contexts``).
    """

    NONE = "none"
    SELECTIVE = "selective"
    SELECTIVE_LAYER = "selective-layer"
    SELECTIVE_OP = "selective-op"
    FULL = "full"


class Sharding(str, Enum):
    """Data-parallel sharding of model states (Rajbhandari et al. 2020; Zhao et al. 2023).

    ``hsdp`` is FSDP's hybrid shard: full sharding inside a group of ``shard_group`` devices
    (one node by default), replication across groups (Zhao et al. 2023, sec. 3.2.2).
    """

    NONE = "none"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO3 = "zero3"
    FSDP = "fsdp"
    HSDP = "hsdp"

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 (and FSDP's full
        or hybrid shard) also parameters (Rajbhandari et al. 2020; Zhao et al. 2023)."""
        return {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3, "hsdp": 3}[self.value]


class Offload(str, Enum):
    """What moves off the device: to host memory (ZeRO-Offload, Ren et al. 2021) or to
    NVMe (ZeRO-Infinity, Rajbhandari et al. 2021)."""

    NONE = "none"
    OPTIMIZER = "optimizer"
    OPTIMIZER_PARAMS = "optimizer+params"
    OPTIMIZER_NVME = "optimizer-nvme"
    OPTIMIZER_PARAMS_NVME = "optimizer+params-nvme"

    @property
    def params(self) -> bool:
        """Whether the parameters leave the device too (streamed in block by block)."""
        return self in (Offload.OPTIMIZER_PARAMS, Offload.OPTIMIZER_PARAMS_NVME)

    @property
    def nvme(self) -> bool:
        """Whether the offloaded states live on NVMe rather than in host memory."""
        return self in (Offload.OPTIMIZER_NVME, Offload.OPTIMIZER_PARAMS_NVME)


class ContextParallelKind(str, Enum):
    """How context parallelism exchanges keys and values between the ranks that split a
    sequence.

    ``ring``: ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers";
    Megatron-Core ``--cp-comm-type p2p``, torch ``context_parallel``): each rank keeps its
    queries and passes its key/value chunk around the ring, overlapping each transfer with
    the attention of the chunk it holds. ``ulysses``: DeepSpeed-Ulysses (Jacobs et al. 2023;
    Megatron-Core ``a2a``): all-to-alls turn a sequence shard of every head into every token
    of a head shard before attention and back after it.
    """

    RING = "ring"
    ULYSSES = "ulysses"


class Stack(str, Enum):
    """The kernels a step runs; memory and time depend on them, not only on the model.

    ``hf``: Hugging Face Transformers modules (SDPA or eager attention, logits upcast to
    fp32 for the loss, unfused norms and MLP). ``fused``: what production pre-training
    stacks run (torchtitan, Megatron-LM, llm-foundry, Liger kernels): FlashAttention, a
    fused/chunked cross-entropy that never materialises full fp32 logits, fused norm and
    activation kernels, no dropout.
    """

    HF = "hf"
    FUSED = "fused"


class OptimizerImpl(str, Enum):
    """How the optimizer step runs, which decides its temporaries and passes over memory.

    ``fused``: one in-place kernel per step (torch's ``fused=True``, DeepSpeed's FusedAdam
    ``multi_tensor_adam``, apex): no parameter-sized temporary. ``foreach``: torch's
    multi-tensor ops, one pass per arithmetic op and one temporary as large as the
    parameters it steps, in their dtype (measured: 4 B/param fp32, 2 B/param bf16).
    ``auto``: fused where the optimizer has a fused kernel: Hugging Face's Trainer defaults
    to ``adamw_torch_fused`` since torch 2.8 (transformers TrainingArguments.optim), as
    torchtitan and Megatron run fused Adam; foreach otherwise. bitsandbytes' 8-bit
    optimizers update in place whatever is asked.
    """

    AUTO = "auto"
    FUSED = "fused"
    FOREACH = "foreach"


class Fp8Recipe(str, Enum):
    """How ``fp8-mixed`` scales its FP8 GEMM operands: one scale per tensor (current amax, or
    ``delayed`` from an amax history), per row (``rowwise``), or per 1x128 activation tile and
    128x128 weight block (``blockwise``, DeepSeek-V3); priced in advisor/cost/fp8recipes.py."""

    TENSORWISE = "tensorwise"
    ROWWISE = "rowwise"
    BLOCKWISE = "blockwise"
    DELAYED = "delayed"


_setattr = object.__setattr__
# Where a frozen record keeps its hash once computed (in its ``__dict__``, beside the fields).
_HASH = "_hash_"


class _Frozen(BaseModel):
    """A frozen record whose hash is computed once and whose equality compares its fields:
    the configuration and its sub-records.

    NOTE: the sub-records derive from this class directly: a pydantic instance's attribute
    is looked up through its class hierarchy on every read (CPython does not specialise
    those reads), so a shallow one is read faster.

    NOTE: configurations key the plan search's memos (the evaluator's dicts, the memory
    model's StateInputs): thousands are built and each is hashed many times; pydantic's own
    hash walks every field (and every sub-record) on each call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _values_of: ClassVar[operator.itemgetter[Any]]
    _all_fields: ClassVar[set[str]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._all_fields = set(cls.model_fields)
        if len(cls.model_fields) > 1:  # an itemgetter of one name would not give a tuple
            cls._values_of = operator.itemgetter(*cls.model_fields)

    def __hash__(self) -> int:
        d = self.__dict__
        try:
            h: int = d[_HASH]
        except KeyError:
            h = d[_HASH] = hash(self._values_of(d))
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Frozen)
        same: bool = self._values_of(self.__dict__) == other._values_of(other.__dict__)
        return same

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Refused: it would skip validation and carry the memoised hash over; build a new
        record (or use :meth:`TrainingConfig.with_` / :meth:`TrainingConfig.replace`)."""
        raise TypeError(f"{type(self).__name__}.model_copy: use TrainingConfig.with_/replace")

    def updated(self, **changes: Any) -> Self:
        """This record with ``changes`` (field names of this record), validated: an unknown
        name or a value out of range is a ValidationError."""
        if not changes:
            return self
        return type(self)(**{**self._fields(), **changes})

    def _fields(self) -> dict[str, Any]:
        """The field values (not the memoised hash), as a new dict."""
        d = self.__dict__.copy()
        d.pop(_HASH, None)
        return d

    @classmethod
    def _made(cls, values: dict[str, Any]) -> Self:
        """A record of ``values`` (every field, already valid), without validation.

        NOTE: what ``model_construct`` does for a complete set of fields, at a fraction of
        its cost: the search copies configurations thousands of times.
        """
        made = cls.__new__(cls)
        _setattr(made, "__dict__", values)
        # NOTE: one set per class, not one per record (fewer objects for the collector; a
        # frozen record never adds to it).
        _setattr(made, "__pydantic_fields_set__", cls._all_fields)
        _setattr(made, "__pydantic_extra__", None)
        _setattr(made, "__pydantic_private__", None)
        return made


class BatchGeometry(_Frozen):
    """What one device processes per pass and per optimizer step."""

    micro_batch: int = Field(default=1, ge=1, description="samples per device per pass")
    seq_len: int = Field(default=2048, ge=1, description="tokens per sample")
    grad_accumulation: int = Field(
        default=1, ge=1, description="micro-batches summed per optimizer step"
    )


class ParallelLayout(_Frozen):
    """The parallel degrees and the data-parallel sharding of one configuration (world size
    = data x tensor x pipeline x context parallel). The plan search's
    :class:`advisor.plan.layout.Layout` holds one and checks it against the topology."""

    data_parallel: int = Field(default=1, ge=1, description="data-parallel degree N_d")
    tensor_parallel: int = Field(
        default=1, ge=1, description="Megatron tensor parallelism with sequence parallelism"
    )
    pipeline_parallel: int = Field(default=1, ge=1, description="pipeline stages (1F1B)")
    virtual_stages: int = Field(
        default=1, ge=1, description="interleaved 1F1B model chunks per pipeline rank"
    )
    expert_parallel: int = Field(
        default=1, ge=1, description="MoE experts split over this many data-parallel ranks"
    )
    sharding: Sharding = Field(
        default=Sharding.NONE, description="data-parallel sharding: none, zero1-3, fsdp, hsdp"
    )
    shard_group: int | None = Field(
        default=None, ge=1, description="hsdp: devices one shard group spans (default: a node)"
    )
    context_parallel: int = Field(
        default=1,
        ge=1,
        description="context parallelism: ranks that split every sequence (each holds "
        "seq_len / context_parallel tokens of every activation)",
    )
    context_parallel_kind: ContextParallelKind = Field(
        default=ContextParallelKind.RING,
        description="how context-parallel ranks exchange keys and values: ring (ring "
        "attention, Megatron p2p, torch context_parallel) or ulysses (DeepSpeed-Ulysses "
        "all-to-all)",
    )
    expert_tensor_parallel: int | None = Field(
        default=None,
        ge=1,
        description="MoE: tensor parallelism of the routed experts (Megatron "
        "--expert-tensor-parallel-size); None: the tensor-parallel degree where it folds, "
        "else 1",
    )
    moe_dispatcher: MoeDispatcher = Field(
        default=MoeDispatcher.ALLTOALL,
        description="MoE token dispatcher: alltoall, allgather or flex (DeepEP)",
    )
    capacity_factor: float | None = Field(
        default=None,
        gt=0,
        description="MoE expert capacity factor (tokens beyond it are dropped); None: "
        "dropless, Megatron's default",
    )
    pad_to_capacity: bool = Field(
        default=False,
        description="MoE: every expert's batch padded to its capacity "
        "(--moe-pad-expert-input-to-capacity; needs a capacity factor)",
    )
    moe_overlap: MoeOverlap = Field(
        default=MoeOverlap.NONE,
        description="MoE: what hides the expert all-to-alls under compute: none, "
        "a2a-overlap (Megatron-Core 1F1B) or dualpipe (DeepSeek-V3)",
    )
    moe_balance: MoeBalance = Field(
        default=MoeBalance.LOSS_FREE,
        description="MoE router load balancing: loss-free (expert bias) or aux-loss; sets "
        "the busiest expert rank's excess load",
    )

    @model_validator(mode="after")
    def _check_moe(self) -> Self:
        if self.pad_to_capacity and self.capacity_factor is None:
            raise ValueError("pad_to_capacity needs a capacity_factor")
        return self

    @property
    def world_size(self) -> int:
        """Devices the layout spans: data x tensor x pipeline x context parallel degrees."""
        return (
            self.data_parallel
            * self.tensor_parallel
            * self.pipeline_parallel
            * self.context_parallel
        )

    @property
    def dp_cp(self) -> int:
        """Ranks that hold the same model shard: data x context parallel. Gradients are
        reduced and ZeRO/FSDP states sharded over them (Megatron-Core's data-parallel group
        "with context parallel", used by its gradient buffers and distributed optimizer;
        torchtitan's ``dp_shard_cp`` mesh that FSDP shards over)."""
        return self.data_parallel * self.context_parallel

    @property
    def expert_fold(self) -> int:
        """The ranks of one pipeline stage that Megatron-Core re-factors for the MoE layers:
        tensor x context x data parallel (= expert tensor x expert x expert-data parallel;
        megatron/core/parallel_state.py ``initialize_model_parallel``)."""
        return self.tensor_parallel * self.context_parallel * self.data_parallel

    @property
    def expert_tp(self) -> int:
        """The routed experts' tensor-parallel degree: as set, else Megatron's default (the
        tensor-parallel degree) where expert parallelism folds with it, else 1."""
        if self.expert_tensor_parallel is not None:
            return self.expert_tensor_parallel
        tp = self.tensor_parallel
        return tp if self.expert_fold % (tp * self.expert_parallel) == 0 else 1

    @property
    def expert_data_parallel(self) -> int:
        """Ranks that replicate one expert shard (Megatron's expert-data-parallel group:
        tensor x context x data / (expert tensor x expert); at least 1)."""
        return max(1, self.expert_fold // (self.expert_tp * self.expert_parallel))


class MemorySavers(_Frozen):
    """What trades time for memory: recomputation, offloading, the step in backward."""

    checkpointing: Checkpointing = Field(
        default=Checkpointing.NONE, description="activation recomputation (none ... full)"
    )
    ac_frequency: int = Field(
        default=2,
        ge=1,
        description="selective-layer: every ac_frequency-th block is fully checkpointed "
        "(torchtitan's selective_ac_option; 1 = every block, as full)",
    )
    offload: Offload = Field(
        default=Offload.NONE, description="what leaves the device: optimizer, params, to NVMe"
    )
    optimizer_in_backward: bool = Field(
        default=False,
        description="each parameter's step runs in backward as soon as its gradient is ready "
        "and the gradient is freed (LOMO, Lv et al. 2023; GaLore's per-layer updates)",
    )
    activation_offload: bool = Field(
        default=False,
        description="checkpointed block inputs kept in host memory (torchtune/torchao)",
    )


class Kernels(_Frozen):
    """The kernels a step runs: the stack, the attention kernel, fused loss and norm, the
    optimizer's kernel and whether tensor-parallel collectives overlap their GEMMs."""

    optimizer_impl: OptimizerImpl = Field(
        default=OptimizerImpl.AUTO,
        description="the optimizer's kernel: auto (fused where one exists), fused or foreach",
    )
    attention: Attention = Field(default=Attention.FLASH, description="the attention kernel")
    stack: Stack = Field(
        default=Stack.HF, description="kernel stack: hf (Transformers modules) or fused"
    )
    fused_loss: bool = Field(
        default=False,
        description="a fused/chunked cross-entropy on the hf stack (Liger, torchtune); "
        "always on under the fused stack",
    )
    fused_norm: bool = Field(
        default=False,
        description="a fused RMSNorm/LayerNorm kernel on the hf stack (torchtitan's "
        "fused_rmsnorm, Liger, Apex): saves the input and fp32 row statistics; always on "
        "under the fused stack",
    )
    tp_comm_overlap: bool | None = Field(
        default=None,
        description="tensor-parallel collectives decomposed and overlapped with their "
        "dependent GEMMs (torchtitan async TP, Megatron/TE --tp-comm-overlap); default: on "
        "under the fused stack, off under hf",
    )
    fp8_recipe: Fp8Recipe | None = Field(
        default=None,
        description="the FP8 scaling recipe of an fp8-mixed plan (tensorwise, rowwise, "
        "blockwise or delayed); absent: tensorwise (listed for fp8-mixed plans only)",
    )

    @property
    def tp_overlapped(self) -> bool:
        """Whether the TP collectives are overlapped with their GEMMs: as configured, else the
        stack's default (production fused stacks enable it: torchtitan async TP with
        torch.compile, Megatron-Core/NeMo ``tp_comm_overlap``; Hugging Face modules do not)."""
        if self.tp_comm_overlap is not None:
            return self.tp_comm_overlap
        return self.stack is Stack.FUSED

    @property
    def loss_fused(self) -> bool:
        """Whether the loss never materialises full fp32 logits."""
        return self.fused_loss or self.stack is Stack.FUSED

    def with_fused_loss(self, fused_loss: bool) -> Kernels:
        """These kernels with the fused loss on or off (a memory saver the search toggles)."""
        same = fused_loss is self.fused_loss
        return self if same else Kernels._made(self._fields() | {"fused_loss": fused_loss})


def _sorted_targets(value: tuple[str, ...]) -> tuple[str, ...]:
    allowed = LORA_MATRICES + LORA_FULL_TENSORS
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ValueError(f"unknown LoRA target {unknown[0]!r} (allowed: {', '.join(allowed)})")
    if not any(v in LORA_MATRICES for v in value):
        raise ValueError("LoRA needs at least one adapted block matrix")
    return tuple(sorted(set(value)))


class Adapters(_Frozen):
    """LoRA/QLoRA's adapters (read only when the task trains adapters)."""

    lora_rank: int = Field(default=16, ge=1, description="LoRA/QLoRA adapter rank r")
    lora_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="PEFT's lora_dropout: above 0 each adapter drops out its own copy of its "
        "input (and keeps the mask)",
    )
    lora_targets: tuple[str, ...] = Field(
        default=("k", "o", "q", "v"),
        description="what LoRA/QLoRA adapts (sorted): block matrices among q, k, v, o, gate, "
        "up, down, and whole tensors trained beside them (embed, lm_head: PEFT's "
        "modules_to_save)",
    )

    @field_validator("lora_targets")
    @classmethod
    def _known_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _sorted_targets(value)


# The sub-records of a configuration, by their field in TrainingConfig.
_RECORDS: dict[str, type[_Frozen]] = {
    "batch": BatchGeometry,
    "layout": ParallelLayout,
    "savers": MemorySavers,
    "kernels": Kernels,
    "adapters": Adapters,
}
# The flat view (the JSON ``config`` object and the flat constructor keys), in its order:
# flat key -> (sub-record field or None for a top-level field, field name there).
# NOTE: the JSON key ``gpus`` is the data-parallel degree (``layout.data_parallel``), as
# ``optadvise estimate --gpus``; kept for the JSON contract.
FLAT_FIELDS: dict[str, tuple[str | None, str]] = {
    "task": (None, "task"),
    "optimizer": (None, "optimizer"),
    "optimizer_impl": ("kernels", "optimizer_impl"),
    "precision": (None, "precision"),
    "attention": ("kernels", "attention"),
    "checkpointing": ("savers", "checkpointing"),
    "ac_frequency": ("savers", "ac_frequency"),
    "micro_batch": ("batch", "micro_batch"),
    "seq_len": ("batch", "seq_len"),
    "gpus": ("layout", "data_parallel"),
    "sharding": ("layout", "sharding"),
    "offload": ("savers", "offload"),
    "lora_rank": ("adapters", "lora_rank"),
    "dropout": (None, "dropout"),
    "lora_dropout": ("adapters", "lora_dropout"),
    "lora_targets": ("adapters", "lora_targets"),
    "dp_sgd": (None, "dp_sgd"),
    "grad_accumulation": ("batch", "grad_accumulation"),
    "stack": ("kernels", "stack"),
    "fused_loss": ("kernels", "fused_loss"),
    "fused_norm": ("kernels", "fused_norm"),
    "optimizer_in_backward": ("savers", "optimizer_in_backward"),
    "activation_offload": ("savers", "activation_offload"),
    "tensor_parallel": ("layout", "tensor_parallel"),
    "pipeline_parallel": ("layout", "pipeline_parallel"),
    "virtual_stages": ("layout", "virtual_stages"),
    "expert_parallel": ("layout", "expert_parallel"),
    "tp_comm_overlap": ("kernels", "tp_comm_overlap"),
    "fp8_recipe": ("kernels", "fp8_recipe"),
    "shard_group": ("layout", "shard_group"),
    "context_parallel": ("layout", "context_parallel"),
    "context_parallel_kind": ("layout", "context_parallel_kind"),
    "expert_tensor_parallel": ("layout", "expert_tensor_parallel"),
    "moe_dispatcher": ("layout", "moe_dispatcher"),
    "capacity_factor": ("layout", "capacity_factor"),
    "pad_to_capacity": ("layout", "pad_to_capacity"),
    "moe_overlap": ("layout", "moe_overlap"),
    "moe_balance": ("layout", "moe_balance"),
}


class _Keep(Enum):
    """The default of :meth:`TrainingConfig.with_`'s arguments: keep the field as it is."""

    KEEP = 0


_KEEP = _Keep.KEEP


class TrainingConfig(_Frozen):
    """One explicit training configuration, per data-parallel replica.

    Built from its sub-records or from the flat keys of its JSON view (``TrainingConfig(
    micro_batch=4, gpus=8)``: every key of :data:`FLAT_FIELDS`); serialised flat, in that
    order. Changed with :meth:`with_` (fields by name, typed) or :meth:`replace` (whole
    sub-records); ``model_copy(update=...)`` would bypass both and is refused.
    """

    task: Task = Field(
        default=Task.FINETUNE,
        description="what is trained: pretrain or finetune (every weight), lora or qlora",
    )
    optimizer: str = Field(
        default="adamw",
        pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",
        description="the optimizer's taxonomy id (optadvise taxonomy)",
    )
    precision: Precision = Field(
        default=Precision.BF16_MIXED, description="the precision recipe (weights and compute)"
    )
    dropout: bool = Field(
        default=False,
        description="the model's own dropout is on in training (BERT's, GPT-2's and OPT's "
        "published configs: 0.1): two hidden-state masks per block, the attention "
        "probabilities' mask and dropped copy under eager attention (fused kernels keep "
        "only an RNG state), the embedding output's mask",
    )
    dp_sgd: bool = Field(default=False, description="per-sample gradients (DP-SGD/DP-Adam)")
    batch: BatchGeometry = Field(default_factory=BatchGeometry, description="batch geometry")
    layout: ParallelLayout = Field(
        default_factory=ParallelLayout, description="parallel degrees and sharding"
    )
    savers: MemorySavers = Field(default_factory=MemorySavers, description="memory savers")
    kernels: Kernels = Field(default_factory=Kernels, description="the kernels a step runs")
    adapters: Adapters = Field(default_factory=Adapters, description="LoRA/QLoRA adapters")

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data: Any) -> Any:
        """Flat keys (the JSON view's) grouped into their sub-records."""
        if not isinstance(data, dict) or not any(k in _FLAT_ONLY for k in data):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            record, name = FLAT_FIELDS.get(key, (None, key))
            if record is None:
                out[key] = value
                continue
            part = out.setdefault(record, {})
            if not isinstance(part, dict):
                raise ValueError(f"{key} given both flat and in {record}")
            part[name] = value
        return out

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        nested = handler(self)
        flat = {
            key: nested[name] if record is None else nested[record][name]
            for key, (record, name) in FLAT_FIELDS.items()
        }
        keep = flat["precision"] == Precision.FP8_MIXED and flat["fp8_recipe"] is not None
        return flat if keep else {k: v for k, v in flat.items() if k != "fp8_recipe"}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The JSON view's schema: flat, as serialised."""
        return handler(_FlatView.__pydantic_core_schema__)

    # ---- typed copies
    def replace(
        self,
        *,
        batch: BatchGeometry | None = None,
        layout: ParallelLayout | None = None,
        savers: MemorySavers | None = None,
        kernels: Kernels | None = None,
        adapters: Adapters | None = None,
    ) -> TrainingConfig:
        """This configuration with whole sub-records replaced."""
        d = self._fields()
        given = dict(batch=batch, layout=layout, savers=savers, kernels=kernels, adapters=adapters)
        d.update((k, v) for k, v in given.items() if v is not None)
        return TrainingConfig._made(d)

    def with_geometry(self, micro_batch: int, grad_accumulation: int) -> TrainingConfig:
        """This configuration with another batch geometry (the plan search's most frequent
        copy: each plan is tried at several micro-batches and accumulations)."""
        b = self.batch
        if b.micro_batch == micro_batch and b.grad_accumulation == grad_accumulation:
            return self
        d = self._fields()
        geometry = {"micro_batch": micro_batch, "seq_len": b.seq_len}
        d["batch"] = BatchGeometry._made(geometry | {"grad_accumulation": grad_accumulation})
        return TrainingConfig._made(d)

    def with_(
        self,
        *,
        task: Task | _Keep = _KEEP,
        optimizer: str | _Keep = _KEEP,
        precision: Precision | _Keep = _KEEP,
        dropout: bool | _Keep = _KEEP,
        dp_sgd: bool | _Keep = _KEEP,
        micro_batch: int | _Keep = _KEEP,
        seq_len: int | _Keep = _KEEP,
        grad_accumulation: int | _Keep = _KEEP,
        data_parallel: int | _Keep = _KEEP,
        tensor_parallel: int | _Keep = _KEEP,
        pipeline_parallel: int | _Keep = _KEEP,
        virtual_stages: int | _Keep = _KEEP,
        expert_parallel: int | _Keep = _KEEP,
        context_parallel: int | _Keep = _KEEP,
        context_parallel_kind: ContextParallelKind | _Keep = _KEEP,
        sharding: Sharding | _Keep = _KEEP,
        shard_group: int | _Keep | None = _KEEP,
        expert_tensor_parallel: int | _Keep | None = _KEEP,
        moe_dispatcher: MoeDispatcher | _Keep = _KEEP,
        capacity_factor: float | _Keep | None = _KEEP,
        pad_to_capacity: bool | _Keep = _KEEP,
        moe_overlap: MoeOverlap | _Keep = _KEEP,
        moe_balance: MoeBalance | _Keep = _KEEP,
        checkpointing: Checkpointing | _Keep = _KEEP,
        ac_frequency: int | _Keep = _KEEP,
        offload: Offload | _Keep = _KEEP,
        optimizer_in_backward: bool | _Keep = _KEEP,
        activation_offload: bool | _Keep = _KEEP,
        optimizer_impl: OptimizerImpl | _Keep = _KEEP,
        attention: Attention | _Keep = _KEEP,
        stack: Stack | _Keep = _KEEP,
        fused_loss: bool | _Keep = _KEEP,
        fused_norm: bool | _Keep = _KEEP,
        tp_comm_overlap: bool | _Keep | None = _KEEP,
        fp8_recipe: Fp8Recipe | _Keep | None = _KEEP,
        lora_rank: int | _Keep = _KEEP,
        lora_dropout: float | _Keep = _KEEP,
        lora_targets: tuple[str, ...] | _Keep = _KEEP,
    ) -> TrainingConfig:
        """This configuration with the named fields changed (each keyword is a field of this
        record or of one of its sub-records; the rest are kept).

        The sub-records' fields are validated (as their constructors do: ranges, LoRA
        targets sorted); the top-level fields are typed for mypy (the optimizer id's pattern
        is not checked again).
        """
        given = locals()  # the arguments (and self), first thing
        d = self._fields()
        grouped: dict[str, dict[str, Any]] = {}
        for key, value in given.items():
            if value is _KEEP or key == "self":
                continue
            record = _RECORD_OF.get(key)
            if record is None:
                d[key] = value
            else:
                grouped.setdefault(record, {})[key] = value
        for record, values in grouped.items():
            d[record] = d[record].updated(**values)
        return TrainingConfig._made(d)


# Each sub-record's field names -> the sub-record's field in TrainingConfig.
_RECORD_OF: dict[str, str] = {
    name: record for record, cls in _RECORDS.items() for name in cls.model_fields
}
_FLAT_ONLY = frozenset(k for k, (record, _) in FLAT_FIELDS.items() if record is not None)


def _check_flat_fields() -> None:
    """Every field of the configuration and its sub-records has exactly one flat key: a field
    added to a record without one would be missing from the JSON (checked at import)."""
    named = sorted((record or "", name) for record, name in FLAT_FIELDS.values())
    fields = sorted(
        [("", k) for k in TrainingConfig.model_fields if k not in _RECORDS]
        + [(record, k) for record, cls in _RECORDS.items() for k in cls.model_fields]
    )
    if named != fields:
        raise TypeError(f"FLAT_FIELDS does not name every field once: {named} != {fields}")


_check_flat_fields()


def _flat_view() -> type[BaseModel]:
    """The flat model the JSON view's schema is generated from (its fields, descriptions and
    constraints are the sub-records', in :data:`FLAT_FIELDS`' order)."""
    fields: dict[str, Any] = {}
    for key, (record, name) in FLAT_FIELDS.items():
        owner = TrainingConfig if record is None else _RECORDS[record]
        info = owner.model_fields[name]
        fields[key] = (info.annotation, info)
    return create_model(  # type: ignore[call-overload, no-any-return]
        "TrainingConfig",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__="One explicit training configuration, per data-parallel replica.",
        **fields,
    )


_FlatView = _flat_view()
