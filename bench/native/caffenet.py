"""CaffeNet (BVLC's AlexNet variant: pooling before normalization), ``bvlc_reference_caffenet``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CaffeNet(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.max_pool2d(F.relu(self.conv1(x), inplace=True), 3, 2, ceil_mode=True))
        x = self.norm(F.max_pool2d(F.relu(self.conv2(x), inplace=True), 3, 2, ceil_mode=True))
        x = F.relu(self.conv3(x), inplace=True)
        x = F.relu(self.conv4(x), inplace=True)
        x = F.max_pool2d(F.relu(self.conv5(x), inplace=True), 3, 2, ceil_mode=True)
        x = self.dropout(F.relu(self.fc6(x.flatten(1)), inplace=True))
        x = self.dropout(F.relu(self.fc7(x), inplace=True))
        return F.softmax(self.fc8(x), dim=1)

    def caffe_modules(self) -> dict[str, nn.Module]:
        names = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
        return {name: getattr(self, name) for name in names}
