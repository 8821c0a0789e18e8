"""One training configuration: the shared vocabulary of the memory model, cost model and ranking."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class TrainingConfig(BaseModel):
    """One explicit training configuration, per data-parallel replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = Field(
        default=Task.FINETUNE,
        description="what is trained: pretrain or finetune (every weight), lora or qlora",
    )
    optimizer: str = Field(
        default="adamw",
        pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",
        description="the optimizer's taxonomy id (optadvise taxonomy)",
    )
    optimizer_impl: OptimizerImpl = Field(
        default=OptimizerImpl.AUTO,
        description="the optimizer's kernel: auto (fused where one exists), fused or foreach",
    )
    precision: Precision = Field(
        default=Precision.BF16_MIXED, description="the precision recipe (weights and compute)"
    )
    attention: Attention = Field(default=Attention.FLASH, description="the attention kernel")
    checkpointing: Checkpointing = Field(
        default=Checkpointing.NONE, description="activation recomputation (none ... full)"
    )
    ac_frequency: int = Field(
        default=2,
        ge=1,
        description="selective-layer: every ac_frequency-th block is fully checkpointed "
        "(torchtitan's selective_ac_option; 1 = every block, as full)",
    )
    micro_batch: int = Field(default=1, ge=1, description="samples per device per pass")
    seq_len: int = Field(default=2048, ge=1, description="tokens per sample")
    gpus: int = Field(default=1, ge=1, description="data-parallel degree N_d")
    sharding: Sharding = Field(
        default=Sharding.NONE, description="data-parallel sharding: none, zero1-3, fsdp, hsdp"
    )
    offload: Offload = Field(
        default=Offload.NONE, description="what leaves the device: optimizer, params, to NVMe"
    )
    lora_rank: int = Field(default=16, ge=1, description="LoRA/QLoRA adapter rank r")
    dropout: bool = Field(
        default=False,
        description="the model's own dropout is on in training (BERT's, GPT-2's and OPT's "
        "published configs: 0.1): two hidden-state masks per block, the attention "
        "probabilities' mask and dropped copy under eager attention (fused kernels keep "
        "only an RNG state), the embedding output's mask",
    )
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
    dp_sgd: bool = Field(default=False, description="per-sample gradients (DP-SGD/DP-Adam)")
    grad_accumulation: int = Field(
        default=1, ge=1, description="micro-batches summed per optimizer step"
    )
    # ---- kernel stack and memory savers
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
    optimizer_in_backward: bool = Field(
        default=False,
        description="each parameter's step runs in backward as soon as its gradient is ready "
        "and the gradient is freed (LOMO, Lv et al. 2023; GaLore's per-layer updates)",
    )
    activation_offload: bool = Field(
        default=False,
        description="checkpointed block inputs kept in host memory (torchtune/torchao)",
    )
    # ---- parallel layout (world size = gpus x tensor_parallel x pipeline_parallel)
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
    tp_comm_overlap: bool | None = Field(
        default=None,
        description="tensor-parallel collectives decomposed and overlapped with their "
        "dependent GEMMs (torchtitan async TP, Megatron/TE --tp-comm-overlap); default: on "
        "under the fused stack, off under hf",
    )
    shard_group: int | None = Field(
        default=None, ge=1, description="hsdp: devices one shard group spans (default: a node)"
    )

    @field_validator("lora_targets")
    @classmethod
    def _known_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = LORA_MATRICES + LORA_FULL_TENSORS
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"unknown LoRA target {unknown[0]!r} (allowed: {', '.join(allowed)})")
        if not any(v in LORA_MATRICES for v in value):
            raise ValueError("LoRA needs at least one adapted block matrix")
        return tuple(sorted(set(value)))

    @property
    def world_size(self) -> int:
        """Devices the configuration spans: data x tensor x pipeline parallel degrees."""
        return self.gpus * self.tensor_parallel * self.pipeline_parallel

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
