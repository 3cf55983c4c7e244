"""Caffe's weight fillers (``FillerParameter``), drawn with torch's random generator.

Caffe's values cannot be reproduced bit for bit (its RNG is Boost's mt19937); the distributions
and every rule that shapes them are Caffe's:

* ``constant``: ``value``.  ``uniform``: U(min, max).  ``gaussian``: N(mean, std); with
  ``sparse >= 0`` each weight is kept with probability ``sparse / shape[0]``.
* ``positive_unitball``: U(0, 1), then each slice along axis 0 divided by its sum.
* ``xavier``: U(-sqrt(3/n), +sqrt(3/n)); ``msra``: N(0, sqrt(2/n)); ``n`` is
  ``fan_in = count / shape[0]`` (default), ``fan_out = count / shape[1]`` (``count`` for 1-D
  blobs) or their mean, chosen by ``variance_norm``.
* ``bilinear``: the kernel of bilinear upsampling for Deconvolution, with
  ``f = ceil(k / 2)`` and centre ``c = (2f - 1 - f % 2) / (2f)``;
  ``w(x, y) = (1 - |x/f - c|) (1 - |y/f - c|)``.
"""
from __future__ import annotations

import math

import torch

from .errors import NetError
from .proto import caffe_pb2

VarianceNorm = caffe_pb2.FillerParameter


def fill(blob: torch.Tensor, param: caffe_pb2.FillerParameter, owner: str = "blob") -> torch.Tensor:
    """Fill ``blob`` in place as ``param`` says and return it; ``owner`` names it in errors."""
    kind = param.type
    try:
        filler = _FILLERS[kind]
    except KeyError:
        raise NetError(f"{owner}: unknown filler type {kind!r} (known: {', '.join(sorted(_FILLERS))})") from None
    if param.sparse != -1 and kind != "gaussian":
        raise NetError(f"{owner}: filler {kind!r} does not support 'sparse' (only 'gaussian' does)")
    if blob.numel() == 0:
        return blob
    with torch.no_grad():
        filler(blob, param, owner)
    return blob


def _constant(blob, param, owner):
    blob.fill_(param.value)


def _uniform(blob, param, owner):
    blob.uniform_(param.min, param.max)


def _gaussian(blob, param, owner):
    blob.normal_(param.mean, param.std)
    if param.sparse >= 0:
        if param.sparse < -1:
            raise NetError(f"{owner}: filler 'sparse' must be >= -1, got {param.sparse}")
        keep = param.sparse / blob.shape[0]
        blob.mul_(torch.bernoulli(torch.full_like(blob, min(keep, 1.0))))


def _positive_unitball(blob, param, owner):
    blob.uniform_(0, 1)
    rows = blob.view(blob.shape[0], -1)
    rows.div_(rows.sum(dim=1, keepdim=True))


def _fan(blob, param) -> float:
    count = blob.numel()
    fan_in = count / blob.shape[0]
    fan_out = count / blob.shape[1] if blob.dim() > 1 else count
    norm = param.variance_norm
    if norm == VarianceNorm.AVERAGE:
        return (fan_in + fan_out) / 2
    if norm == VarianceNorm.FAN_OUT:
        return fan_out
    return fan_in


def _xavier(blob, param, owner):
    scale = math.sqrt(3.0 / _fan(blob, param))
    blob.uniform_(-scale, scale)


def _msra(blob, param, owner):
    blob.normal_(0.0, math.sqrt(2.0 / _fan(blob, param)))


def _bilinear(blob, param, owner):
    if blob.dim() != 4 or blob.shape[2] != blob.shape[3]:
        raise NetError(f"{owner}: the bilinear filler needs a 4-D blob with a square kernel, "
                       f"got shape {tuple(blob.shape)}")
    k = blob.shape[3]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    axis = 1 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
    blob.copy_((axis[:, None] * axis[None, :]).expand_as(blob))


_FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}
