"""ResNet-50 as Kaiming He's Caffe release (``ResNet-50-deploy.prototxt``): the stride sits in the
first 1x1 convolution of a bottleneck (torchvision puts it in the 3x3), conv1 has a bias, the
others none, and every BatchNorm + Scale pair is one ``nn.BatchNorm2d``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    def __init__(self, channels: int, out: int, kernel: int, stride: int = 1, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, out, kernel, stride, kernel // 2, bias=bias)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, channels: int, width: int, stride: int, project: bool):
        super().__init__()
        self.branch2a = ConvBN(channels, width, 1, stride)
        self.branch2b = ConvBN(width, width, 3)
        self.branch2c = ConvBN(width, 4 * width, 1)
        self.branch1 = ConvBN(channels, 4 * width, 1, stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.branch1(x) if self.branch1 is not None else x
        y = F.relu(self.branch2a(x), inplace=True)
        y = F.relu(self.branch2b(y), inplace=True)
        return F.relu(self.branch2c(y) + shortcut, inplace=True)


class ResNet50(nn.Module):
    #: (stage number, blocks, bottleneck width, stride of the first block)
    STAGES = ((2, 3, 64, 1), (3, 4, 128, 2), (4, 6, 256, 2), (5, 3, 512, 2))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = ConvBN(3, 64, 7, stride=2, bias=True)
        self.blocks = nn.ModuleDict()
        channels = 64
        for stage, count, width, stride in self.STAGES:
            for i in range(count):
                name = f"{stage}{'abcdef'[i]}"
                self.blocks[name] = Bottleneck(channels, width, stride if i == 0 else 1, project=i == 0)
                channels = 4 * width
        self.fc1000 = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logits(x), dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``fc1000``: what the softmax (or a training loss) takes."""
        x = F.max_pool2d(F.relu(self.conv1(x), inplace=True), 3, 2, ceil_mode=True)
        for block in self.blocks.values():
            x = block(x)
        x = F.avg_pool2d(x, 7, 1)
        return self.fc1000(x.flatten(1))

    def caffe_modules(self) -> dict[str, nn.Module]:
        modules = {"conv1": self.conv1.conv, "bn_conv1": self.conv1.bn, "scale_conv1": self.conv1.bn,
                   "fc1000": self.fc1000}
        for name, block in self.blocks.items():
            for branch in ("branch1", "branch2a", "branch2b", "branch2c"):
                unit = getattr(block, branch)
                if unit is not None:
                    modules.update({f"res{name}_{branch}": unit.conv, f"bn{name}_{branch}": unit.bn,
                                    f"scale{name}_{branch}": unit.bn})
        return modules
