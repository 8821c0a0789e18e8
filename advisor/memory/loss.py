"""The LM head's logits and the cross-entropy loss: what the loss keeps for backward and
allocates while it runs, per kernel choice (HF, fused, fused linear cross-entropy)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import Precision, Stack
from advisor.memory.derived import MemoryModel, as_model
from advisor.memory.dtypes import dtypes
from advisor.model.spec import ModelSpec


class LossMemory(BaseModel):
    """What the loss keeps for backward and what it allocates while it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    saved_bytes: int = Field(description="alive from the loss's forward to its backward")
    output_bytes: int = Field(
        default=0,
        description="the model output's logits: alive at the end of the forward, dropped by "
        "the training loop before backward (HF Trainer's compute_loss returns the loss only)",
    )
    transient_bytes: int = Field(description="extra bytes while the loss backward runs")


# The loss of a pipeline rank without the LM head (built once: frozen).
NO_LOSS = LossMemory(saved_bytes=0, output_bytes=0, transient_bytes=0)


def loss_memory(
    spec: ModelSpec | MemoryModel,
    b: int,
    s: int,
    precision: Precision,
    *,
    stack: Stack = Stack.HF,
    fused_loss: bool = False,
    tensor_parallel: int = 1,
    classify: bool = False,
) -> LossMemory:
    """Bytes of the LM head's output and the cross-entropy loss, per kernel choice.

    - ``hf``: the logits in the compute dtype (the model output), HF's ``ForCausalLMLoss``
      upcasts them to fp32 and log-softmax keeps its fp32 output; nll keeps int64 targets.
      The backward allocates the fp32 gradients of the log-probabilities and of the logits
      (``8·t·V``) before casting back.
    - ``fused`` (the engines the fused stack exports to): Megatron-Core's vocab-parallel
      cross-entropy upcasts the logits to fp32 (``calculate_logits_max``:
      ``vocab_parallel_logits.float()``), keeps the fp32 softmax for backward and writes the
      gradient into it in place; torchtitan's loss runs ``cross_entropy(pred.float(), ...)``.
      Both keep 4 B per logit (measured: tests/memory/test_memory_lm_loss.py), an fp32
      log-sum-exp and the labels; the 16-bit logits are the model output, gone once upcast.
    - fused linear cross-entropy (``fused_loss``, Liger ``LigerFusedLinearCrossEntropy``;
      Hsu et al. 2024): the logits are never materialised. Chunks of
      ``next_pow2(ceil(t / ceil(V/h)))`` tokens are projected, their loss and gradients
      computed in the forward; it keeps ``grad_input`` (t x h, input dtype) and
      ``grad_weight`` (V x h, weight dtype; the LM head's gradient, allocated early). The
      transient is one chunk's logits (the kernel writes their gradient in place), the
      chunk's input gradient and an fp32 loss per token.

    Args:
        spec: the model's shapes (or its :class:`~advisor.memory.derived.MemoryModel`).
        b: micro-batch (sequences).
        s: tokens per sequence.
        precision: the precision layout.
        stack: the kernel stack.
        fused_loss: a fused linear cross-entropy (any stack).
        tensor_parallel: vocabulary-parallel degree (Megatron splits the logits over it).
        classify: an encoder fine-tuned for sequence classification: no vocabulary logits.

    Returns:
        The saved and transient bytes on one device.
    """
    d = as_model(spec).shape
    t = b * s
    h, V = d["h"], math.ceil(d["V"] / tensor_parallel)
    dt = dtypes(precision)
    c = dt.act
    model = as_model(spec)
    classes = model.spec.vision.num_classes if model.spec.vision is not None else d["V"]
    if model.spec.vision is not None or model.convnet is not None:
        # An image classifier (ViT, ResNet): one row of logits per image (a CNN's "token"),
        # log-softmax keeps its fp32 output, nll the int64 labels (the head's input is the
        # model level's).
        images = b if model.convnet is None else t
        return LossMemory(
            saved_bytes=4 * images * classes + 8 * images,
            output_bytes=c * images * classes,
            transient_bytes=0,
        )
    if classify:
        # A sequence classifier on the pooled first token (BertForSequenceClassification):
        # the pooler's tanh output, its two fp32 logits' log-softmax and int64 labels.
        return LossMemory(
            saved_bytes=c * b * h + 4 * b * 2 + 8 * b, output_bytes=c * b * 2, transient_bytes=0
        )
    if fused_loss:
        chunk = min(t, 1 << max(0, math.ceil(math.log2(max(1, math.ceil(t / math.ceil(V / h)))))))
        saved = c * t * h + dt.weight * V * h
        # Liger's kernel computes the softmax gradient into the chunk's logits in place;
        # the fp32 loss per token lives until it is reduced.
        return LossMemory(saved_bytes=saved, transient_bytes=chunk * V * c + chunk * h * c + 4 * t)
    if stack is Stack.FUSED:
        return LossMemory(
            saved_bytes=4 * t * V + 4 * t + 8 * t, output_bytes=c * t * V, transient_bytes=0
        )
    # NOTE: HF's ForCausalLMLoss upcasts the logits to fp32; cross-entropy's log-softmax
    # keeps its fp32 output for backward; nll_loss keeps int64 targets. The logits
    # themselves are kept by nothing autograd needs (the upcast saves nothing), so once the
    # training loop drops the model output they are gone before backward (measured).
    # Vocabulary-parallel (tensor_parallel > 1): PyTorch's loss_parallel, as torchtitan runs
    # it, computes log-softmax and NLL on each shard and its backward builds zeros_like(x),
    # exp(x), their sum and the product with the incoming gradient, all fp32, while the
    # saved output is alive (torch/distributed/tensor/parallel/loss.py,
    # _nll_loss_and_log_softmax_backward): three fp32 logit-sized temporaries, not two.
    transient = (8 if tensor_parallel == 1 else 12) * t * V
    return LossMemory(
        saved_bytes=4 * t * V + 8 * t + 4, output_bytes=c * t * V, transient_bytes=transient
    )
