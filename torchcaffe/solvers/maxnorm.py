"""Max-norm constraints: after each update, no slice of a parameter may have an L2 norm above a bound.

Declared per parameter blob in the prototxt (``ParamSpec`` fields ``max_norm``, 0 = off, and
``max_norm_axis``, default 0)::

    layer { name: "ip1" type: "InnerProduct" ...
            param { lr_mult: 1 max_norm: 1.5 }     # each output neuron's incoming weights
            param { lr_mult: 2 } }

For an InnerProduct weight ``(N, K)`` and axis 0, each of the N rows (one output neuron's K
incoming weights) is a slice; for a Convolution weight ``(O, C, kh, kw)`` and axis 0, each output
filter. A slice whose norm exceeds ``max_norm`` is scaled back to exactly ``max_norm``; the others
are left alone. This is Torch's ``renorm`` and TensorFlow's ``clip_by_norm(axes=...)`` with the
complementary axes (seed 003). Caffe has no such constraint.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["renorm", "renorm_"]


def renorm_(tensor: torch.Tensor, axis: int, max_norm: float) -> torch.Tensor:
    """In place: scale each slice ``tensor.select(axis, i)`` whose L2 norm exceeds ``max_norm``
    to norm ``max_norm``. Returns ``tensor``. Norms are accumulated in float64.

    Differs from ``torch.renorm``: that one scales by ``max_norm / (norm + 1e-7)``, leaving the
    slice a hair under the bound; this one scales by ``max_norm / norm``.
    """
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if tensor.dim() == 0:
        raise ValueError("max-norm needs a tensor with at least one axis, got a 0-d tensor")
    if not -tensor.dim() <= axis < tensor.dim():
        raise ValueError(f"axis {axis} is out of range for a {tensor.dim()}-D tensor of shape "
                         f"{tuple(tensor.shape)} (allowed: {-tensor.dim()}..{tensor.dim() - 1})")
    axis %= tensor.dim()
    others = [d for d in range(tensor.dim()) if d != axis]
    with torch.no_grad():
        norms = torch.linalg.vector_norm(tensor, dim=others, keepdim=True, dtype=torch.float64) \
            if others else tensor.abs().to(torch.float64)
        scale = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
        if bool((scale != 1).any()):
            tensor.mul_(scale.to(tensor.dtype))
    return tensor


def renorm(tensor, axis: int, max_norm: float):
    """A copy of ``tensor`` (a torch tensor or an array) with every slice along ``axis`` whose L2
    norm exceeds ``max_norm`` scaled to norm ``max_norm``; numpy in, numpy out.

    >>> renorm(np.array([[0., 0.], [3., 4.], [30., 40.], [300., 400.]]), 0, 10)
    array([[0., 0.],
           [3., 4.],
           [6., 8.],
           [6., 8.]])
    """
    if isinstance(tensor, torch.Tensor):
        return renorm_(tensor.detach().clone(), axis, max_norm)
    array = np.asarray(tensor)
    dtype = array.dtype if array.dtype.kind == "f" else np.float64
    return renorm_(torch.from_numpy(np.array(array, dtype=dtype)), axis, max_norm).numpy()
