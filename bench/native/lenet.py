"""LeNet as in Caffe's ``examples/mnist/lenet.prototxt``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.ip1 = nn.Linear(50 * 4 * 4, 500)
        self.ip2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2, 2)
        x = F.max_pool2d(self.conv2(x), 2, 2)
        x = F.relu(self.ip1(x.flatten(1)), inplace=True)
        return F.softmax(self.ip2(x), dim=1)

    def caffe_modules(self) -> dict[str, nn.Module]:
        return {"conv1": self.conv1, "conv2": self.conv2, "ip1": self.ip1, "ip2": self.ip2}
