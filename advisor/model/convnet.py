"""A ResNet's layers at a given resolution: every convolution with its input and output
sizes, so that FLOPs, saved activations and convolution workspaces are sums over one list
(the CNN counterpart of the block inventory; parameter tensors are
:func:`advisor.model.counts.cnn_trunk`'s).

The walk follows torchvision's ``ResNet`` (He et al. 2016, "Deep Residual Learning for
Image Recognition", arXiv:1512.03385, Table 1; torchvision's ResNet-50 "V1.5" puts the
stride-2 of a bottleneck on its 3x3 convolution): a 7x7 stride-2 stem with BatchNorm and
ReLU, a 3x3 stride-2 max pool, residual stages whose first block downsamples (stride 2
from the second stage on, with a 1x1 projection shortcut), global average pooling and a
linear classifier. Every convolution is followed by a BatchNorm; a ReLU follows each
BatchNorm except a block's last and the shortcut's, which are added first and then pass
one ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

from advisor.model.shape import CnnBlock, CnnShape


@dataclass(frozen=True, slots=True)
class Conv:
    """One convolution (no bias) and the BatchNorm after it, for one image."""

    name: str
    cin: int
    cout: int
    kernel: int
    stride: int
    size_in: int  # input height (= width)
    size_out: int  # output height (= width)
    relu: bool  # a ReLU reads the BatchNorm's output directly (not the block's last)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the forward pass, one image."""
        return self.cout * self.cin * self.kernel**2 * self.size_out**2

    @property
    def in_elems(self) -> int:
        return self.cin * self.size_in**2

    @property
    def out_elems(self) -> int:
        return self.cout * self.size_out**2

    @property
    def im2col_elems(self) -> int:
        """The explicit-GEMM (im2col) buffer of one image: every output position's input
        window (Caffe's ``col_buffer``, kernel^2 x in channels x output positions); 1x1
        stride-1 convolutions need none."""
        if self.kernel == 1 and self.stride == 1:
            return 0
        return self.kernel**2 * self.cin * self.size_out**2


@dataclass(frozen=True, slots=True)
class ConvNet:
    """A ResNet walked at one resolution."""

    convs: tuple[Conv, ...]
    image_elems: int  # the input image (channels x height x width)
    pool_out_elems: int  # the stem's max-pool output (= the first stage's input)
    features: int  # channels into the classifier
    classes: int

    @property
    def macs(self) -> int:
        """Forward multiply-accumulates of one image: convolutions and the classifier (the
        convention of torchvision's ``_ops`` and He et al.'s FLOPs column)."""
        return sum(c.macs for c in self.convs) + self.features * self.classes


def _out(size: int, kernel: int, stride: int) -> int:
    # PyTorch's output size with torchvision's padding (kernel // 2).
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def resnet_layers(cnn: CnnShape) -> ConvNet:
    """Every convolution of ``cnn`` at its ``image_size`` (square images), in order (a walk
    of a few dozen layers; the memory model holds it once per spec, see
    :class:`advisor.memory.derived.MemoryModel`)."""
    size = cnn.image_size
    convs: list[Conv] = []

    def conv(name: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> None:
        nonlocal size
        out = _out(size, k, stride)
        convs.append(Conv(name, cin, cout, k, stride, size, out, relu))
        size = out

    w = cnn.base_width
    conv("conv1", cnn.in_channels, w, 7, 2, True)
    size = _out(size, 3, 2)  # max pool 3x3, stride 2, padding 1
    pool_out = w * size**2
    inplanes = w
    for s, blocks in enumerate(cnn.blocks_per_stage):
        width = w * 2**s
        planes = width * cnn.expansion
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            p, start = f"layer{s + 1}.{b}", size
            if cnn.block is CnnBlock.BOTTLENECK:
                conv(f"{p}.conv1", inplanes, width, 1, 1, True)
                conv(f"{p}.conv2", width, width, 3, stride, True)
                conv(f"{p}.conv3", width, planes, 1, 1, False)
            else:
                conv(f"{p}.conv1", inplanes, width, 3, stride, True)
                conv(f"{p}.conv2", width, planes, 3, 1, False)
            if b == 0 and (stride != 1 or inplanes != planes):
                end, size = size, start
                conv(f"{p}.downsample.0", inplanes, planes, 1, stride, False)
                size = end
            inplanes = planes
    return ConvNet(
        convs=tuple(convs),
        image_elems=cnn.in_channels * cnn.image_size**2,
        pool_out_elems=pool_out,
        features=inplanes,
        classes=cnn.num_classes,
    )
