"""GoogLeNet (BVLC's ``bvlc_googlenet/deploy.prototxt``, Inception v1 without auxiliary heads)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Inception(nn.Module):
    def __init__(self, channels: int, c1x1: int, c3x3_reduce: int, c3x3: int, c5x5_reduce: int,
                 c5x5: int, pool_proj: int):
        super().__init__()
        self.b1x1 = nn.Conv2d(channels, c1x1, 1)
        self.b3x3_reduce = nn.Conv2d(channels, c3x3_reduce, 1)
        self.b3x3 = nn.Conv2d(c3x3_reduce, c3x3, 3, padding=1)
        self.b5x5_reduce = nn.Conv2d(channels, c5x5_reduce, 1)
        self.b5x5 = nn.Conv2d(c5x5_reduce, c5x5, 5, padding=2)
        self.pool_proj = nn.Conv2d(channels, pool_proj, 1)
        self.out_channels = c1x1 + c3x3 + c5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = F.relu
        branches = [
            relu(self.b1x1(x), inplace=True),
            relu(self.b3x3(relu(self.b3x3_reduce(x), inplace=True)), inplace=True),
            relu(self.b5x5(relu(self.b5x5_reduce(x), inplace=True)), inplace=True),
            relu(self.pool_proj(F.max_pool2d(x, 3, 1, 1, ceil_mode=True)), inplace=True),
        ]
        return torch.cat(branches, 1)


class GoogLeNet(nn.Module):
    #: name -> (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); a max pooling follows 3b and 4e.
    INCEPTIONS = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
                  "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
                  "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
                  "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
                  "5b": (384, 192, 384, 48, 128, 128)}
    POOL_AFTER = ("3b", "4e")

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.conv2_reduce = nn.Conv2d(64, 64, 1)
        self.conv2 = nn.Conv2d(64, 192, 3, padding=1)
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.inceptions = nn.ModuleDict()
        channels = 192
        for name, widths in self.INCEPTIONS.items():
            self.inceptions[name] = Inception(channels, *widths)
            channels = self.inceptions[name].out_channels
        self.dropout = nn.Dropout(0.4)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.max_pool2d(F.relu(self.conv1(x), inplace=True), 3, 2, ceil_mode=True))
        x = F.relu(self.conv2(F.relu(self.conv2_reduce(x), inplace=True)), inplace=True)
        x = F.max_pool2d(self.norm(x), 3, 2, ceil_mode=True)
        for name, inception in self.inceptions.items():
            x = inception(x)
            if name in self.POOL_AFTER:
                x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = self.dropout(F.avg_pool2d(x, 7, 1))
        return F.softmax(self.classifier(x.flatten(1)), dim=1)

    def caffe_modules(self) -> dict[str, nn.Module]:
        modules = {"conv1/7x7_s2": self.conv1, "conv2/3x3_reduce": self.conv2_reduce, "conv2/3x3": self.conv2,
                   "loss3/classifier": self.classifier}
        for name, block in self.inceptions.items():
            modules.update({f"inception_{name}/1x1": block.b1x1, f"inception_{name}/3x3_reduce": block.b3x3_reduce,
                            f"inception_{name}/3x3": block.b3x3, f"inception_{name}/5x5_reduce": block.b5x5_reduce,
                            f"inception_{name}/5x5": block.b5x5, f"inception_{name}/pool_proj": block.pool_proj})
        return modules
