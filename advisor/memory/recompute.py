"""Activation checkpointing: what a stage's blocks keep for backward under each mode (full,
selective, layer-level and torchtitan's op-level selective checkpointing) and the working set
recomputed in backward."""

from __future__ import annotations

import math
from typing import NamedTuple

from advisor.config import Attention, Checkpointing, Precision, Stack, Task, TrainingConfig
from advisor.memory.activations import layer_activation_bytes
from advisor.memory.derived import MemoryModel, as_model
from advisor.memory.dtypes import dtypes
from advisor.memory.memo import MemoryMemo, memo_for
from advisor.memory.moe import activation_kwargs
from advisor.model.blocks import Kind
from advisor.model.spec import ModelSpec


def selective_op_block_bytes(
    spec: ModelSpec | MemoryModel,
    micro_batch: int,
    seq_len: int,
    attention: Attention,
    precision: Precision,
    *,
    stack: Stack = Stack.HF,
    tensor_parallel: int = 1,
) -> int:
    """Bytes one block keeps under torchtitan's op-level selective activation checkpointing.

    The policy (torchtitan ``_apply_ac_to_transformer_block`` with ``selective_ac_option =
    "op"``; ``_save_list``: ``aten.mm``, ``_scaled_dot_product_flash_attention``,
    ``_scaled_dot_product_efficient_attention``, ``reduce_scatter_tensor``, ``max``) keeps
    the outputs of those ops except every second ``mm``, and recomputes everything else.
    What stays alive per block is therefore:

    - the block's input (the non-reentrant checkpoint's argument, kept for the recompute);
    - the outputs of the odd-numbered bias-free matmuls
      (:func:`~advisor.memory.derived.block_matmuls`); a row-parallel output under tensor
      parallelism is the full-width partial sum;
    - the fused SDPA's outputs: the attention output and the fp32 log-sum-exp per row and
      head (eager attention's ``bmm``/softmax are not on the list: recomputed);
    - under tensor parallelism with sequence parallelism, the two reduce-scatter outputs.

    Norms, RoPE, the activation function and the residual adds are recomputed, so the
    count does not depend on the kernel stack's norm or MLP kernels.

    NOTE: this is the policy torchtitan's published benchmarks ran (2024). Since 2025
    torchtitan saves every op of PyTorch's compute-intensive list (``addmm`` and ``bmm``
    always), counts ``linear`` with ``mm`` and force-recomputes the MoE router's matmul.

    Args:
        spec: the model's shapes.
        micro_batch: sequences per step on the device (b).
        seq_len: tokens per sequence (s).
        attention: the attention implementation (the fused stack always runs flash).
        precision: the precision layout (its compute and residual dtypes).
        stack: the kernel stack.
        tensor_parallel: the tensor-parallel degree (with sequence parallelism).

    Returns:
        The bytes one block keeps on one device.
    """
    model = as_model(spec)
    spec, d = model.spec, model.shape
    dt = dtypes(precision)
    tp = tensor_parallel
    t = micro_batch * seq_len
    total = math.ceil(dt.residual * t * d["h"] / tp)  # the block input (sequence-parallel)
    mlp_names = {"gate", "up", "down", "gate_up"}
    dense_mlp = 0
    for mm in model.saved_matmuls:
        local = mm.out if mm.row else math.ceil(mm.out / tp)
        if mm.name in mlp_names:
            dense_mlp += dt.act * t * local
        else:
            total += dt.act * t * local
    if d["Lm"]:
        # MoE layers as transformers 5 and torchtitan run them: the router's matmul, the
        # routed experts as grouped GEMMs (``grouped_mm``, transformers' default experts
        # implementation; not on the save list, so recomputed), then the shared experts'
        # gate, up and down matmuls.
        plain_attn = sum(1 for m in model.matmuls if m.plain and m.name not in mlp_names)
        router = plain_attn + 1
        kept = d["E"] if router % 2 else 0
        moe = spec.block.moe or ()
        shared = [t.matrix[0] for t in moe if t.kind is Kind.SHARED and t.matrix is not None]
        kept += sum(w for i, w in enumerate(shared) if (router + 1 + i) % 2)
        moe_mlp = dt.act * t * kept
        total += math.ceil(((d["L"] - d["Lm"]) * dense_mlp + d["Lm"] * moe_mlp) / d["L"])
    else:
        total += dense_mlp
    if stack is Stack.FUSED or attention is not Attention.EAGER:
        out = d["a"] * (d["dv"] if d["mla"] else d["hd"])
        total += math.ceil((dt.act * t * out + 4 * micro_batch * d["a"] * seq_len) / tp)
    if tp > 1:
        total += 2 * math.ceil(dt.act * t * d["h"] / tp)
    return total


class BlockSaves(NamedTuple):
    """What a stage's blocks keep for backward under a checkpointing mode, per micro-batch."""

    per_block: int  # one block's saved bytes (what backward works on at a time)
    per_microbatch: int  # the stage's blocks together
    recompute: int  # the working set of one block recomputed in backward
    note: str


def block_saves(
    memo: MemoryMemo, config: TrainingConfig, stage_layers: int, layer: int
) -> BlockSaves:
    """The saved activations of ``stage_layers`` blocks of one micro-batch; ``layer`` is one
    block's bytes without checkpointing (:func:`~advisor.memory.activations.
    layer_activation_bytes`)."""
    savers, kernels, batch = config.savers, config.kernels, config.batch
    b, s, tp = batch.micro_batch, batch.seq_len, config.layout.tensor_parallel
    block_input = math.ceil(dtypes(config.precision).residual * b * s * memo.model.shape["h"] / tp)
    ckpt = savers.checkpointing
    if ckpt is Checkpointing.FULL or (
        ckpt is Checkpointing.SELECTIVE_LAYER and savers.ac_frequency == 1
    ):
        # Each block keeps its input; backward recomputes one block at a time.
        return BlockSaves(
            block_input,
            stage_layers * block_input,
            layer,
            "full checkpointing: block inputs kept, one block recomputed at a time",
        )
    if ckpt is Checkpointing.SELECTIVE_LAYER:
        # torchtitan's layer-level selective AC wraps the n-th, 2n-th ... block in a full
        # checkpoint (a counter over the blocks, ``_count % ac_freq == 0``); the others keep
        # everything. The first block is checkpointed only when every block is.
        wrapped = stage_layers // savers.ac_frequency
        return BlockSaves(
            layer,
            (stage_layers - wrapped) * layer + wrapped * block_input,
            layer if wrapped else 0,
            f"selective-layer checkpointing: {wrapped} of {stage_layers} blocks fully "
            f"checkpointed (every {savers.ac_frequency})",
        )
    if ckpt is Checkpointing.SELECTIVE_OP:
        # Op-level SAC keeps each block's input and the saved ops' outputs; backward
        # recomputes the rest of one block at a time: that block's working set minus what
        # it already keeps (the cached outputs are reused, not recomputed).
        per_block = memo.call(
            selective_op_block_bytes,
            b,
            s,
            kernels.attention,
            config.precision,
            stack=kernels.stack,
            tensor_parallel=tp,
        )
        return BlockSaves(
            per_block,
            stage_layers * per_block,
            max(layer - (per_block - block_input), 0),
            "selective-op checkpointing: block inputs and every other matmul's and the "
            "attention kernel's outputs kept (torchtitan's op-level SAC)",
        )
    return BlockSaves(layer, stage_layers * layer, 0, "")


def saved_activation_bytes(
    spec: ModelSpec | MemoryModel,
    config: TrainingConfig,
    stage_layers: int,
    *,
    memo: MemoryMemo | None = None,
) -> int:
    """Bytes the ``stage_layers`` blocks of one micro-batch keep for backward under the
    configuration's checkpointing: what activation offloading streams to the host in forward
    and back in backward (the time model prices that traffic with this count).

    Args:
        spec: the model's shapes.
        config: micro-batch, sequence, precision, kernel stack, checkpointing, layout.
        stage_layers: the blocks on the device (all of them without pipeline parallelism).
        memo: the caller's memo of this model's pieces (None: a fresh one).
    """
    kernels, batch = config.kernels, config.batch
    memo = memo_for(spec, memo)
    adapters = config.task in (Task.LORA, Task.QLORA)
    layer = memo.call(
        layer_activation_bytes,
        batch.micro_batch,
        batch.seq_len,
        kernels.attention,
        config.precision,
        selective=config.savers.checkpointing is Checkpointing.SELECTIVE,
        lora_targets=frozenset(config.adapters.lora_targets) if adapters else None,
        lora_rank=config.adapters.lora_rank,
        stack=kernels.stack,
        tensor_parallel=config.layout.tensor_parallel,
        fused_norm=kernels.fused_norm,
        quantized=config.task is Task.QLORA,
        lora_dropout=adapters and config.adapters.lora_dropout > 0,
        fp8_recipe=config.kernels.fp8_recipe,
        **activation_kwargs(config.layout, memo.model.shape["E"]),
    )
    return block_saves(memo, config, stage_layers, layer).per_microbatch
