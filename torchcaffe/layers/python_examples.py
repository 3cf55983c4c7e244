"""Example Python layers, one of each style; the generic layer tests run them, the docs show them.

Name them in a prototxt as ``python_param { module: 'torchcaffe.layers.python_examples' layer: ... }``.
"""
from __future__ import annotations

import numpy as np
import torch

from .python import PythonLayer, TorchLayer


class ChannelL2Norm(TorchLayer):
    """Seed 000's channel-wise L2 normalisation: only the forward is written; autograd does the rest."""

    def forward(self, x):
        return x / (x * x).sum((2, 3), keepdim=True).add(1e-12).sqrt()


class ScaledSum(TorchLayer):
    """``top = param_str * (a + w * b)`` with a learned per-column weight ``w`` (a blob)."""

    def setup(self, bottom_shapes):
        self.factor = float(self.param_str or 1)
        self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, bottom_shapes[1][-1]))

    def forward(self, a, b):
        return self.factor * (a + self.w * b)


class EuclideanLoss(PythonLayer):
    """pycaffe's classic example: the Euclidean loss with a hand-written numpy backward."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError("EuclideanLoss needs two bottoms")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise ValueError("EuclideanLoss bottoms must have the same number of values")
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * self.diff * top[0].diff / bottom[i].num
