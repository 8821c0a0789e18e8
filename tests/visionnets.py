"""Image models in plain PyTorch, written after torchvision's (which the venv does not ship):
a ResNet (``torchvision.models.resnet``: bottleneck or basic blocks, the stride on the 3x3
convolution, a 1x1 projection shortcut, in-place ReLUs and ``out += identity``) and a Vision
Transformer (``torchvision.models.vision_transformer``: a patch convolution, a class token,
a learned position table, pre-LN encoder blocks with a fused qkv projection, GELU MLP, a
final LayerNorm and a linear head). Same module tree, same tensors and same forward ops,
so their parameter counts and saved tensors are the reference models'.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, width: int, stride: int, downsample: Any) -> None:
        super().__init__()
        planes = width * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Any) -> Any:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, width: int, stride: int, downsample: Any) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Any) -> Any:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(
        self,
        layers: list[int],
        bottleneck: bool = True,
        width: int = 64,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        block: Any = Bottleneck if bottleneck else BasicBlock
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        stages = []
        for i, n in enumerate(layers):
            w = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if j == 0 and (s != 1 or inplanes != w * block.expansion):
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, w * block.expansion, 1, s, bias=False),
                        nn.BatchNorm2d(w * block.expansion),
                    )
                blocks.append(block(inplanes, w, s, down))
                inplanes = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: Any) -> Any:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class EncoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.in_proj = nn.Linear(hidden, 3 * hidden)  # nn.MultiheadAttention's in_proj
        self.out_proj = nn.Linear(hidden, hidden)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp_0 = nn.Linear(hidden, mlp)
        self.mlp_3 = nn.Linear(mlp, hidden)

    def forward(self, x: Any) -> Any:
        b, s, h = x.shape
        q, k, v = self.in_proj(self.ln_1(x)).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, h)
        x = x + self.out_proj(y)
        return x + self.mlp_3(F.gelu(self.mlp_0(self.ln_2(x))))


class VisionTransformer(nn.Module):
    def __init__(
        self,
        image: int,
        patch: int,
        layers: int,
        heads: int,
        hidden: int,
        mlp: int,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch = patch
        self.conv_proj = nn.Conv2d(3, hidden, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        tokens = (image // patch) ** 2 + 1
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
        self.layers = nn.ModuleList(EncoderBlock(hidden, heads, mlp) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Any) -> Any:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embedding
        for block in self.layers:
            x = block(x)
        return self.head(self.ln(x)[:, 0])


def resnet50() -> ResNet:
    return ResNet([3, 4, 6, 3])


def vit(name: str) -> VisionTransformer:
    """ViT-B/16 or ViT-L/16 (Dosovitskiy et al. 2021, Table 1) at 224 px."""
    layers, heads, hidden, mlp = {"b": (12, 12, 768, 3072), "l": (24, 16, 1024, 4096)}[name]
    return VisionTransformer(224, 16, layers, heads, hidden, mlp)
