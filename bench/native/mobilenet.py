"""MobileNet v1 (shicai/MobileNet-Caffe ``mobilenet_deploy.prototxt``): depthwise-separable
blocks of conv (no bias) + batch norm + ReLU, global average pooling, a 1x1 conv classifier."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """Convolution without bias, then BatchNorm2d (Caffe's BatchNorm + Scale) and ReLU."""

    def __init__(self, channels: int, out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class MobileNetV1(nn.Module):
    #: (Caffe block name, output channels, stride of the depthwise conv)
    BLOCKS = (("conv2_1", 64, 1), ("conv2_2", 128, 2), ("conv3_1", 128, 1), ("conv3_2", 256, 2),
              ("conv4_1", 256, 1), ("conv4_2", 512, 2), ("conv5_1", 512, 1), ("conv5_2", 512, 1),
              ("conv5_3", 512, 1), ("conv5_4", 512, 1), ("conv5_5", 512, 1), ("conv5_6", 1024, 2),
              ("conv6", 1024, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = ConvBN(3, 32, 3, stride=2)
        self.blocks = nn.ModuleList()
        channels = 32
        for _, out, stride in self.BLOCKS:
            self.blocks.append(nn.Sequential(ConvBN(channels, channels, 3, stride, groups=channels),
                                             ConvBN(channels, out, 1)))
            channels = out
        self.fc7 = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return F.softmax(self.fc7(x.mean((2, 3), keepdim=True)), dim=1)

    def caffe_modules(self) -> dict[str, nn.Module]:
        modules = _conv_bn("conv1", self.conv1)
        for (name, _, _), (depthwise, pointwise) in zip(self.BLOCKS, self.blocks):
            modules.update(_conv_bn(f"{name}/dw", depthwise))
            modules.update(_conv_bn(f"{name}/sep", pointwise))
        modules["fc7"] = self.fc7
        return modules


def _conv_bn(name: str, block: ConvBN) -> dict[str, nn.Module]:
    return {name: block.conv, f"{name}/bn": block.bn, f"{name}/scale": block.bn}
