"""A ResNet in the memory model: its dimensions, parameter tensors and what a training step
saves for backward, from the layer walk of :mod:`advisor.model.convnet`.

The memory model treats the residual trunk as its one "layer" (``L = 1``, as
:meth:`ModelSpec.layer_repeats <advisor.model.spec.ModelSpec.layer_repeats>` does) and a
"token" as one image (``seq_len`` 1), so weights, gradients, masters, optimizer states,
sharding and the phases are the transformer model's own. What autograd keeps in a
torchvision ResNet (measured with saved-tensor hooks in
``tests/memory/test_memory_vision.py``):

- each convolution keeps its input for the weight gradient; its output is the BatchNorm's
  input, which the BatchNorm keeps (with an fp32 mean and inverse deviation per channel);
- a ReLU runs in place on the BatchNorm's output and keeps its result, which is the next
  convolution's input: one tensor;
- a block's last BatchNorm output takes the shortcut in place (``out += identity``) and
  then the ReLU: the block output, kept once; the projection shortcut's BatchNorm output is
  added and dropped;
- the stem's max pool keeps int64 indices of its output; global average pooling keeps
  nothing beyond the last block's output; the classifier keeps its input row.

Under autocast every convolution runs in 16 bits and BatchNorm in its input's dtype, so
all of these are 16-bit but the images, whose 16-bit copy the first convolution keeps.
"""

from __future__ import annotations

import math

from advisor.config import Checkpointing, Precision, Task, TrainingConfig
from advisor.errors import UserError
from advisor.memory.dtypes import Dtypes
from advisor.memory.params import ParamTensor, Role
from advisor.model.convnet import ConvNet, resnet_layers
from advisor.model.shape import CnnShape

# cuDNN convolution workspace: frameworks cap the scratch buffer an algorithm may ask for at
# 1 GiB (CNTK uses min(free memory, 1 GiB), microsoft/CNTK#1516; LBANN allocates 1 GiB,
# LBANN/lbann#437); within it, the GEMM-based algorithms need an im2col buffer of the
# convolution's input windows (Caffe's col_buffer: kernel^2 x in channels x output
# positions per image), the largest layer's being what one convolution may hold at a time.
# DL4J measured 150-180 MB per ResNet-50 convolution at mini-batches of 32-64
# (deeplearning4j/deeplearning4j#5536): the same order as this buffer.
WORKSPACE_CAP = 1 << 30


def cnn_shape_of(cnn: CnnShape) -> dict[str, int]:
    """The memory model's dimensions of a ResNet: ``h`` the channels into the classifier,
    ``V`` the classes, one "layer" (the trunk); the attention and MoE widths are unused."""
    net = resnet_layers(cnn)
    h = net.features
    dims = dict.fromkeys(
        ("P", "Lm", "S", "mla", "rq", "rkv", "dn", "dr", "dv"),
        0,
    )
    return {
        **dims,
        "h": h,
        "L": 1,
        "a": 1,
        "kv": 1,
        "hd": h,
        "f": h,
        "V": net.classes,
        "E": 1,
        "k": 1,
        "fe": h,
    }


def cnn_tensors(cnn: CnnShape) -> list[ParamTensor]:
    """Every parameter tensor: each convolution's weight as the matrix of its implicit GEMM
    (out channels x in channels x kernel window), each BatchNorm's weight and bias, the
    classifier (outside the one "layer")."""
    net = resnet_layers(cnn)
    out: list[ParamTensor] = []
    for c in net.convs:
        # NOTE: the stem belongs to the one "layer" here: autocast casts it as any other
        # convolution (its 16-bit copy is saved), and a CNN has no pipeline split to place.
        out.append(ParamTensor(c.name, (c.cout, c.cin * c.kernel**2), Role.LAYER_MATRIX))
        out.append(ParamTensor(c.name + "_bn", (c.cout,), Role.VECTOR, 2))
    out.append(ParamTensor("fc", (net.classes, net.features), Role.OUTPUT, per_layer=False))
    out.append(ParamTensor("fc_bias", (net.classes,), Role.VECTOR, per_layer=False))
    return out


def trunk_activation_bytes(net: ConvNet, b: int, dt: Dtypes) -> int:
    """What the residual stages keep for backward, ``b`` images (see the module text)."""
    c = dt.act
    per_image = stats = 0
    for conv in net.convs[1:]:  # the stem is the model level's
        per_image += c * conv.out_elems  # the BatchNorm's input (the convolution's output)
        stats += 8 * conv.cout  # its fp32 batch mean and inverse deviation
        if not conv.name.endswith("downsample.0"):
            per_image += c * conv.out_elems  # ReLU output (= next input), or the block output
    return b * per_image + stats


def cnn_model_level_bytes(net: ConvNet, b: int, dt: Dtypes) -> int:
    """The stem and the head: the images' copy the first convolution keeps, its BatchNorm's
    input and ReLU output, the max pool's output and int64 indices, the classifier's input."""
    stem = net.convs[0]
    c = dt.act
    per_image = (
        dt.linear_in * net.image_elems + 2 * c * stem.out_elems + (c + 8) * net.pool_out_elems
    )
    per_image += dt.linear_in * net.features
    return math.ceil(b * per_image) + 8 * stem.cout


def conv_workspace_bytes(net: ConvNet, b: int, dt: Dtypes) -> int:
    """The largest convolution's im2col buffer for ``b`` images, capped at
    :data:`WORKSPACE_CAP` (see its note)."""
    largest = max(c.im2col_elems for c in net.convs)
    return min(WORKSPACE_CAP, b * largest * dt.act)


def backward_worst(
    net: ConvNet, b: int, dt: Dtypes, model_level: int, grads: int
) -> tuple[int, int]:
    """(activations, gradient bytes) alive at the fullest point of a CNN's backward.

    Backward runs the classifier, then the convolutions last to first: after a convolution's
    backward its weight gradient exists and what it and its BatchNorm saved is freed. The
    deep stages hold most parameters and the shallow ones most activations, so the fullest
    point is in between, found by walking the layers; ``grads`` is the whole model's
    gradient bytes on the device (shared out by parameters)."""
    c = dt.act
    params = [cv.cout * cv.cin * cv.kernel**2 + 2 * cv.cout for cv in net.convs]
    total = sum(params) + net.classes * (net.features + 1)
    saved = [0] + [
        b * c * cv.out_elems * (1 if cv.name.endswith("downsample.0") else 2) + 8 * cv.cout
        for cv in net.convs[1:]
    ]
    alive = model_level + sum(saved)
    done = net.classes * (net.features + 1)
    best = (alive, math.ceil(grads * done / total))
    for p, kept in zip(reversed(params), reversed(saved), strict=True):
        done += p  # this layer's weight gradient now exists, its saved tensors still do
        point = (alive, math.ceil(grads * done / total))
        if sum(point) > sum(best):
            best = point
        alive -= kept
    return best


def check_cnn_config(name: str, config: TrainingConfig, *, recompute: bool = True) -> None:
    """Refuse what the CNN model does not describe, with what to change instead.

    Raises:
        UserError: for tensor, pipeline or context parallelism (a ResNet trains
            data-parallel), adapters (LoRA's targets are transformer projections), fp8
            (Transformer Engine's fp8 covers linear layers, not convolutions), activation
            checkpointing or offload (per transformer block here; with ``recompute=False``
            checkpointing passes: the plan search's frugal probes ask for it, and the model
            prices a CNN's plan with it as one without, its recompute time on top), or a
            fused vocabulary loss (likewise: a CNN's loss has no vocabulary to fuse).
    """
    layout, savers, kernels = config.layout, config.savers, config.kernels
    problem = None
    if layout.tensor_parallel > 1 or layout.pipeline_parallel > 1:
        problem = (
            "tensor and pipeline parallelism split transformer layers",
            "train it data-parallel (DDP, or ZeRO/FSDP sharding)",
        )
    elif config.task in (Task.LORA, Task.QLORA):
        problem = (
            f"{config.task.value} adapts transformer projections",
            "fine-tune it fully (--task finetune)",
        )
    elif config.precision is Precision.FP8_MIXED:
        problem = (
            "fp8 training covers linear layers, not convolutions",
            "use bf16-mixed or fp16-mixed",
        )
    elif (
        recompute and savers.checkpointing is not Checkpointing.NONE
    ) or savers.activation_offload:
        problem = (
            "activation checkpointing and offload are modelled per transformer block",
            "use --checkpointing none; lower --micro-batch to fit",
        )
    elif recompute and kernels.fused_loss:
        problem = "a fused cross-entropy fuses an LM head over a vocabulary", "drop --fused-loss"
    if problem is not None:
        raise UserError(f"{name} is a CNN: {problem[0]}", problem[1])
