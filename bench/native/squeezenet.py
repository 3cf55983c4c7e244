"""SqueezeNet 1.1 (forresti/SqueezeNet ``SqueezeNet_v1.1/deploy.prototxt``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Fire(nn.Module):
    def __init__(self, channels: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(channels, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x), inplace=True)
        return torch.cat([F.relu(self.expand1x1(x), inplace=True),
                          F.relu(self.expand3x3(x), inplace=True)], 1)


class SqueezeNet11(nn.Module):
    #: (name, squeeze, expand) per fire module; a max pooling follows fire3 and fire5.
    FIRES = (("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), ("fire5", 32, 128),
             ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256))
    POOL_AFTER = ("fire3", "fire5")

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2)
        self.fires = nn.ModuleDict()
        channels = 64
        for name, squeeze, expand in self.FIRES:
            self.fires[name] = Fire(channels, squeeze, expand)
            channels = 2 * expand
        self.dropout = nn.Dropout(0.5)
        self.conv10 = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x), inplace=True), 3, 2, ceil_mode=True)
        for name, fire in self.fires.items():
            x = fire(x)
            if name in self.POOL_AFTER:
                x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = F.relu(self.conv10(self.dropout(x)), inplace=True)
        return F.softmax(x.mean((2, 3), keepdim=True), dim=1)

    def caffe_modules(self) -> dict[str, nn.Module]:
        modules = {"conv1": self.conv1, "conv10": self.conv10}
        for name, fire in self.fires.items():
            modules.update({f"{name}/squeeze1x1": fire.squeeze, f"{name}/expand1x1": fire.expand1x1,
                            f"{name}/expand3x3": fire.expand3x3})
        return modules
