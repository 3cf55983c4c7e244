"""Python layers the compat tests name in ``python_param { module: 'tests.compat.pylayers' }``.

The first group mirrors the layers of pycaffe's own test suite (behaviour, not code); the
BatchNorm pair reproduces seed 001: a hand-written batch-normalisation backward that is right
for batch statistics and wrong when the forward uses fixed (global) statistics.
"""
import json

import numpy as np
import torch

import torchcaffe as caffe


class TimesTen(caffe.Layer):
    """top = 10 * bottom, backward likewise."""

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class TimesParamStr(caffe.Layer):
    """top = float(param_str) * bottom."""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("param_str must be a number") from None

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


class FailsInSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("this layer refuses to be set up")


class OneBlob(caffe.Layer):
    """A blob of one value, 0 at setup; backward sets its diff to 1; forward passes nothing."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class ReportsPhase(caffe.Layer):
    """No bottoms; a 0-d top holding the phase."""

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class EuclideanLoss(caffe.Layer):
    """pycaffe's example loss, scaled by the top's diff (its loss weight)."""

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise ValueError("EuclideanLoss needs bottoms of the same size")
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class L2Norm(caffe.TorchLayer):
    """Seed 000: channel-wise L2 normalisation, forward only."""

    def forward(self, x):
        return x / (x * x).sum((2, 3), keepdim=True).add(1e-12).sqrt()


class LearnedScale(caffe.TorchLayer):
    """top = w * bottom with one learned weight per channel, 1 + param_str at setup."""

    def setup(self, bottom_shapes):
        start = 1.0 + float(self.param_str or 0)
        self.w = torch.nn.Parameter(torch.full((bottom_shapes[0][1],), start))

    def forward(self, x):
        return x * self.w.view(1, -1, *([1] * (x.dim() - 2)))


class _BatchNorm(caffe.Layer):
    """Batch normalisation over axis 0 of an (N, D) bottom with a learned scale and shift
    (blobs: gamma, beta), as seed 001's TensorFlow layer: batch statistics when training, the
    fixed statistics mean 0, variance 1 otherwise (``param_str``: ``{"global_stats": true}``
    forces them). Subclasses supply the backward."""

    eps = 1e-7

    def setup(self, bottom, top):
        options = json.loads(self.param_str or "{}")
        self.global_stats = options.get("global_stats", self.phase == caffe.TEST)
        size = bottom[0].data.shape[1]
        self.blobs.add_blob(size)
        self.blobs.add_blob(size)
        self.blobs[0].data[...] = 1.0 + 0.1 * np.arange(size)
        self.blobs[1].data[...] = 0.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        mean, var = (np.zeros(x.shape[1]), np.ones(x.shape[1])) if self.global_stats else (x.mean(0), x.var(0))
        self.xhat = (x - mean) / np.sqrt(var + self.eps)
        self.std = np.sqrt(var + self.eps)
        top[0].data[...] = self.blobs[0].data * self.xhat + self.blobs[1].data


class BatchNormSeed001(_BatchNorm):
    """Seed 001's hand-written backward: it always differentiates through the *batch* mean and
    variance, recomputed from x — right for training, wrong when the forward used fixed
    statistics."""

    def backward(self, top, propagate_down, bottom):
        dout, x, gamma = top[0].diff, bottom[0].data, self.blobs[0].data
        n = x.shape[0]
        mu = x.sum(0) / n
        xmu = x - mu
        var = (xmu ** 2).sum(0) / n
        sqrtvar = np.sqrt(var + self.eps)
        ivar = 1.0 / sqrtvar
        xhat = xmu * ivar
        self.blobs[1].diff[...] += dout.sum(0)
        self.blobs[0].diff[...] += (dout * xhat).sum(0)
        dxhat = dout * gamma
        divar = (dxhat * xmu).sum(0)
        dxmu1 = dxhat * ivar
        dsqrtvar = -divar / sqrtvar ** 2
        dvar = 0.5 / np.sqrt(var + self.eps) * dsqrtvar
        dxmu2 = 2 * xmu * np.ones_like(x) * dvar / n
        dmu = -(dxmu1 + dxmu2).sum(0)
        if propagate_down[0]:
            bottom[0].diff[...] = dxmu1 + dxmu2 + dmu / n


class BatchNormRight(_BatchNorm):
    """The backward that matches the forward in both modes."""

    def backward(self, top, propagate_down, bottom):
        dout, gamma = top[0].diff, self.blobs[0].data
        self.blobs[1].diff[...] += dout.sum(0)
        self.blobs[0].diff[...] += (dout * self.xhat).sum(0)
        if not propagate_down[0]:
            return
        dxhat = dout * gamma
        if self.global_stats:  # fixed statistics: a constant affine map
            bottom[0].diff[...] = dxhat / self.std
            return
        bottom[0].diff[...] = (dxhat - dxhat.mean(0) - self.xhat * (dxhat * self.xhat).mean(0)) / self.std
