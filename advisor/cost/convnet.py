"""A ResNet's compute on one device: every convolution as the implicit GEMM cuDNN runs it,
and BatchNorm, ReLU and the residual adds at memory bandwidth.

A convolution of ``cin -> cout`` channels with a ``k x k`` kernel over ``H x W`` output
positions is the GEMM ``(b H W) x (cin k^2) @ (cin k^2) x cout`` (Chetlur et al. 2014,
"cuDNN: Efficient Primitives for Deep Learning", sec. 3.1: the implicit-GEMM formulation),
so the GEMM efficiency fitted per GPU generation prices it at its true shape; the backward
runs the data and weight gradients, two GEMMs of the same dimensions (3x the forward in
all). ResNet-50 at 224 px is 4.09 G multiply-accumulates forward per image, torchvision's
published ``_ops`` (checked in ``tests/cost/test_cost_vision.py``).
"""

from __future__ import annotations

from advisor.cost.shape import Gemm
from advisor.model.convnet import ConvNet

# BatchNorm in training reads its input twice (batch statistics, then normalisation) and
# writes its output (Ioffe & Szegedy 2015, Algorithm 1); the in-place ReLU reads and writes
# it; a residual add reads two tensors and writes one, once per block: 5 passes over every
# convolution's output, forward. Backward moves about twice that (BatchNorm's backward reads
# the input, the output gradient and writes the input gradient, plus its two reductions).
BN_RELU_PASSES = 5.0


def conv_gemms(net: ConvNet, images: int) -> list[Gemm]:
    """The forward GEMMs of every convolution and the classifier, for ``images`` images."""
    out = [Gemm(m=images * c.size_out**2, n=c.cout, k=c.cin * c.kernel**2) for c in net.convs]
    out.append(Gemm(m=images, n=net.classes, k=net.features))
    return out


def elementwise_bytes(net: ConvNet, images: int, act_bytes: int) -> float:
    """Forward bytes BatchNorm, ReLU and the residual adds move for ``images`` images."""
    return BN_RELU_PASSES * act_bytes * images * sum(c.out_elems for c in net.convs)
