"""Image models in the cost model: convolution FLOPs against torchvision's published
operation counts and against a real model's layers, ViT's GEMMs against its published count,
and the directions the step time must move in.

torchvision's model cards give ``_ops`` in giga multiply-accumulates ("GFLOPS" in its docs):
ResNet50_Weights.IMAGENET1K_V1 4.089, ViT_B_16_Weights.IMAGENET1K_V1 17.564,
ViT_L_16_Weights.IMAGENET1K_V1 61.555 (at 224 px).
"""

from __future__ import annotations

import math

import pytest

from advisor.config import Precision, Task, TrainingConfig
from advisor.cost import block_gemms, predict_step_time
from advisor.cost.convnet import conv_gemms
from advisor.hardware.profiles import get_hardware_profile
from advisor.memory.convnet import WORKSPACE_CAP, conv_workspace_bytes
from advisor.memory.dtypes import dtypes
from advisor.model import get_model_profile
from advisor.model.convnet import resnet_layers

RESNET = get_model_profile("resnet-50")


def test_resnet50_forward_is_torchvisions_4_089_gmacs() -> None:
    assert RESNET.cnn is not None
    net = resnet_layers(RESNET.cnn)
    assert net.macs / 1e9 == pytest.approx(4.089, abs=0.0005)
    # The implicit GEMMs the cost model prices are the same work: 2 FLOPs per MAC.
    assert sum(g.flops for g in conv_gemms(net, 1)) == 2 * net.macs
    # He et al. 2016, Table 1 counts 3.8e9 "FLOPs" (multiply-adds) for ResNet-50: the same
    # order, its convention leaves out the projection shortcuts' strides (V1 vs V1.5).
    assert net.macs / 3.8e9 == pytest.approx(1.0, abs=0.08)


@pytest.mark.heavy
def test_convolution_shapes_match_a_real_resnet50() -> None:
    torch = pytest.importorskip("torch")
    from tests.visionnets import resnet50

    model = resnet50().eval()
    macs: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def count(mod, _inp, out):  # type: ignore[no-untyped-def]
            k = mod.kernel_size[0] * mod.kernel_size[1]
            macs[name] = out.numel() * mod.in_channels * k // mod.groups

        return count

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    assert RESNET.cnn is not None
    walked = {c.name: c.macs for c in resnet_layers(RESNET.cnn).convs}
    assert walked == macs


@pytest.mark.parametrize(("ident", "published"), [("vit-b-16", 17.564), ("vit-l-16", 61.555)])
def test_vit_gemms_and_attention_are_torchvisions_count(ident: str, published: float) -> None:
    spec = get_model_profile(ident)
    assert spec.vision is not None
    s, h, layers = spec.vision.tokens, spec.hidden_size or 0, spec.num_layers or 0
    blocks = sum(g.flops for g in block_gemms(spec, s)) / 2 * layers
    attention = 2 * s * s * h * layers  # QK^T and PV
    patches = (s - 1) * spec.vision.patch_width * h  # the patch convolution
    head = h * spec.vision.num_classes
    assert (blocks + attention + patches + head) / 1e9 == pytest.approx(published, rel=0.002)


def _step(spec_id: str, micro: int, hw: str = "a100-sxm-80gb", **kw: object) -> float:
    spec = get_model_profile(spec_id)
    config = TrainingConfig(
        task=Task.PRETRAIN,
        optimizer="sgd-momentum",
        precision=Precision.BF16_MIXED,
        micro_batch=micro,
        seq_len=1,
        **kw,  # type: ignore[arg-type]
    )
    return predict_step_time(
        spec, config, hardware=get_hardware_profile(hw), calibration=None
    ).seconds


def test_resnet_step_time_grows_with_images_and_has_no_attention() -> None:
    spec = get_model_profile("resnet-50")
    config = TrainingConfig(
        task=Task.PRETRAIN,
        optimizer="sgd-momentum",
        precision=Precision.BF16_MIXED,
        micro_batch=64,
        seq_len=1,
    )
    st = predict_step_time(
        spec, config, hardware=get_hardware_profile("a100-sxm-80gb"), calibration=None
    )
    assert st.components["attention"].seconds == 0
    assert st.components["lm_head"].seconds == 0
    # Per image, a bigger batch is no slower (better GEMM shapes), and never free.
    assert _step("resnet-50", 128) / 128 <= _step("resnet-50", 8) / 8
    assert _step("resnet-50", 128) > _step("resnet-50", 64)


def test_cudnn_workspace_is_the_largest_im2col_capped_at_1_gib() -> None:
    assert RESNET.cnn is not None
    net = resnet_layers(RESNET.cnn)
    dt = dtypes(Precision.FP16_MIXED)
    # DL4J measured 150-180 MB per ResNet-50 convolution at mini-batches of 32-64
    # (deeplearning4j#5536): the largest im2col buffer at 64 images is that order.
    at_64 = conv_workspace_bytes(net, 64, dt)
    assert 100e6 < at_64 < 400e6
    assert conv_workspace_bytes(net, 4096, dt) == WORKSPACE_CAP
    assert math.isclose(conv_workspace_bytes(net, 32, dt) * 2, at_64)
