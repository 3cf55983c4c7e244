"""Caffe's update rules, one solver class each, written as Caffe states them (``solvers/*.cpp``).

Each ``compute_update_value(i, w, g, local_rate)`` receives the diff ``g`` of learnable parameter
``i`` already clipped, divided by ``iter_size`` and regularized, and ``local_rate = rate * lr_mult``;
it leaves in ``g`` the value the solver then subtracts (``w -= g``). ``h`` is ``history[i]``, ``h2``
is ``history[N + i]`` for the solvers that keep two (N learnable parameters).

=========  ===================================================================================
SGD        ``h = momentum * h + local_rate * g``; ``g = h`` (the rate is *inside* the momentum
           history, unlike ``torch.optim.SGD``)
Nesterov   ``h_old = h``; ``h = momentum * h + local_rate * g``;
           ``g = (1 + momentum) * h - momentum * h_old``
AdaGrad    ``h += g^2``; ``g = local_rate * g / (sqrt(h) + delta)`` (``momentum`` must be 0)
RMSProp    ``h = rms_decay * h + (1 - rms_decay) * g^2``; ``g = local_rate * g / (sqrt(h) + delta)``
           (``momentum`` must be 0, ``0 <= rms_decay < 1``)
AdaDelta   ``h = momentum * h + (1 - momentum) * g^2``;
           ``g = g * sqrt((h2 + delta) / (h + delta))``;
           ``h2 = momentum * h2 + (1 - momentum) * g^2``; ``g = local_rate * g``
Adam       ``h = b1 * h + (1 - b1) * g``; ``h2 = b2 * h2 + (1 - b2) * g^2``;
           ``g = local_rate * sqrt(1 - b2^t) / (1 - b1^t) * h / (sqrt(h2) + delta)``, t = iter + 1,
           b1 = ``momentum``, b2 = ``momentum2``
=========  ===================================================================================

Scalars are float32 as Caffe's ``Dtype``; Adam's correction is computed in double and rounded, as
Caffe's ``pow`` returns double.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import Solver

f32 = np.float32

__all__ = ["SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "SOLVER_TYPES"]


def _f(value) -> float:
    """A solver field as the float32 value Caffe computes with."""
    return float(f32(value))


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum, Caffe's way: ``h = momentum * h + local_rate * g``,
    ``w -= h``. One history blob per parameter (the momentum)."""

    type = "SGD"

    def compute_update_value(self, index, w, g, local_rate):
        h = self.history[index]
        h.mul_(_f(self.param.momentum)).add_(g, alpha=local_rate)
        g.copy_(h)


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: the momentum step, then a look-ahead correction
    ``update = (1 + momentum) * h_new - momentum * h_old``."""

    type = "Nesterov"

    def compute_update_value(self, index, w, g, local_rate):
        h = self.history[index]
        momentum = _f(self.param.momentum)
        old = h.clone()
        h.mul_(momentum).add_(g, alpha=local_rate)
        torch.mul(h, _f(f32(1) + f32(momentum)), out=g)
        g.sub_(old, alpha=momentum)


class AdaGradSolver(SGDSolver):
    """AdaGrad: ``h += g^2``, ``update = local_rate * g / (sqrt(h) + delta)``."""

    type = "AdaGrad"

    def check_solver_settings(self):
        if self.param.momentum != 0:
            raise self._fail(f"momentum cannot be used with AdaGrad: remove it (got momentum: {self.param.momentum})")

    def compute_update_value(self, index, w, g, local_rate):
        h = self.history[index]
        h.add_(g * g)
        update = h.sqrt().add_(_f(self.param.delta))
        torch.div(g, update, out=update)
        torch.mul(update, local_rate, out=g)


class RMSPropSolver(SGDSolver):
    """RMSProp: ``h = rms_decay * h + (1 - rms_decay) * g^2``,
    ``update = local_rate * g / (sqrt(h) + delta)``."""

    type = "RMSProp"

    def check_solver_settings(self):
        p = self.param
        if p.momentum != 0:
            raise self._fail(f"momentum cannot be used with RMSProp: remove it (got momentum: {p.momentum})")
        if not 0 <= p.rms_decay < 1:
            raise self._fail(f"rms_decay must lie in [0, 1), got {p.rms_decay}")

    def compute_update_value(self, index, w, g, local_rate):
        h = self.history[index]
        decay = f32(self.param.rms_decay)
        h.mul_(float(decay)).add_(g * g, alpha=float(f32(1) - decay))
        update = h.sqrt().add_(_f(self.param.delta))
        torch.div(g, update, out=update)
        torch.mul(update, local_rate, out=g)


class AdaDeltaSolver(SGDSolver):
    """AdaDelta (Zeiler 2012) as Caffe has it: ``momentum`` is the decay of both running averages,
    ``delta`` sits inside both square roots, and the step is multiplied by the learning rate
    (use ``base_lr: 1`` for the paper's rule). Two history blobs per parameter: the squared-gradient
    average, then (after all of those) the squared-update average."""

    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, index, w, g, local_rate):
        n = len(self.history) // 2
        h, h2 = self.history[index], self.history[n + index]
        momentum = f32(self.param.momentum)
        rest = float(f32(1) - momentum)
        delta = _f(self.param.delta)
        h.mul_(float(momentum)).add_(g * g, alpha=rest)
        ratio = (h2 + delta).div_(h + delta).sqrt_()
        g.mul_(ratio)
        h2.mul_(float(momentum)).add_(g * g, alpha=rest)
        g.mul_(local_rate)


class AdamSolver(SGDSolver):
    """Adam (Kingma & Ba): ``momentum`` is beta1, ``momentum2`` beta2, ``delta`` epsilon; the bias
    correction ``sqrt(1 - beta2^t) / (1 - beta1^t)`` (t = iter + 1) is folded into the rate. Two
    history blobs per parameter: the first moments, then (after all of those) the second moments."""

    type = "Adam"
    history_sets = 2

    def compute_update_value(self, index, w, g, local_rate):
        n = len(self.history) // 2
        m, v = self.history[index], self.history[n + index]
        beta1, beta2 = f32(self.param.momentum), f32(self.param.momentum2)
        t = self.iter + 1
        correction = f32(math.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
        m.mul_(float(beta1)).add_(g, alpha=float(f32(1) - beta1))
        v.mul_(float(beta2)).add_(g * g, alpha=float(f32(1) - beta2))
        update = v.sqrt().add_(_f(self.param.delta))
        torch.div(m, update, out=update)
        torch.mul(update, float(f32(local_rate) * correction), out=g)


#: Caffe's solver type strings (``SolverParameter.type``) and their classes.
SOLVER_TYPES: dict[str, type[Solver]] = {cls.type: cls for cls in (
    SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)}
