"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``), one pure function each.

Every policy has the same signature, ``policy(param, it, current_step) -> (rate, current_step)``:
``param`` is the ``SolverParameter`` (``base_lr``, ``gamma``, ``power``, ``stepsize``,
``stepvalue``, ``max_iter``), ``it`` the solver's iteration (the number of updates done so far)
and ``current_step`` the solver state Caffe keeps and snapshots (``SolverState.current_step``).
Only ``step`` and ``multistep`` change it; the others hand it back unchanged.

Arithmetic follows Caffe's: the solver fields are float32, the expressions Caffe writes in
``Dtype`` are computed in float32 and ``pow``/``exp`` in double; the result is rounded to
float32, Caffe's ``Dtype rate``. (The last bit of ``pow``/``exp`` may differ from the C library's.)

A policy that Caffe would refuse with a ``CHECK`` (a negative ``gamma``, ``stepsize`` <= 0)
raises ``ValueError`` naming the field; the solver adds the file to the message.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

f32 = np.float32

__all__ = ["POLICIES", "learning_rate", "fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]


def _pow(x: float, y: float) -> float:
    """C's ``pow``: NaN for a negative base with a fractional exponent, inf on overflow."""
    if x == 0 and y < 0:
        return math.inf
    try:
        return math.pow(x, y)
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf


def _check_gamma(param) -> None:
    if param.gamma < 0:
        raise ValueError(f"gamma must be >= 0 for lr_policy \"{param.lr_policy}\", got {param.gamma}")


def _check_stepsize(param) -> None:
    if param.stepsize <= 0:
        raise ValueError(f"stepsize must be > 0 for lr_policy \"{param.lr_policy}\", got {param.stepsize}")


def fixed(param, it: int, current_step: int) -> tuple[float, int]:
    """``rate = base_lr``."""
    return float(f32(param.base_lr)), current_step


def step(param, it: int, current_step: int) -> tuple[float, int]:
    """``current_step = floor(iter / stepsize)``; ``rate = base_lr * gamma ^ current_step``."""
    _check_stepsize(param)
    _check_gamma(param)
    current_step = it // param.stepsize
    return float(f32(param.base_lr * _pow(param.gamma, current_step))), current_step


def exp(param, it: int, current_step: int) -> tuple[float, int]:
    """``rate = base_lr * gamma ^ iter``."""
    _check_gamma(param)
    return float(f32(param.base_lr * _pow(param.gamma, it))), current_step


def inv(param, it: int, current_step: int) -> tuple[float, int]:
    """``rate = base_lr * (1 + gamma * iter) ^ (-power)``."""
    _check_gamma(param)
    base = f32(1) + f32(param.gamma) * f32(it)
    return float(f32(param.base_lr * _pow(float(base), -param.power))), current_step


def multistep(param, it: int, current_step: int) -> tuple[float, int]:
    """``rate = base_lr * gamma ^ current_step``, where ``current_step`` counts the ``stepvalue``
    entries passed so far: at each call, when ``iter >= stepvalue[current_step]`` it advances by
    one (by one per call, as Caffe's does: the solver calls it once per iteration)."""
    if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
        current_step += 1
    _check_gamma(param)
    return float(f32(param.base_lr * _pow(param.gamma, current_step))), current_step


def poly(param, it: int, current_step: int) -> tuple[float, int]:
    """``rate = base_lr * (1 - iter / max_iter) ^ power`` (zero at ``max_iter``)."""
    if param.max_iter <= 0:
        raise ValueError(f"max_iter must be > 0 for lr_policy \"poly\", got {param.max_iter}")
    base = f32(1) - f32(it) / f32(param.max_iter)
    return float(f32(param.base_lr * _pow(float(base), param.power))), current_step


def sigmoid(param, it: int, current_step: int) -> tuple[float, int]:
    """``rate = base_lr / (1 + exp(-gamma * (iter - stepsize)))``."""
    _check_gamma(param)
    _check_stepsize(param)
    x = -f32(param.gamma) * (f32(it) - f32(param.stepsize))
    try:
        e = math.exp(float(x))
    except OverflowError:
        e = math.inf
    return float(f32(param.base_lr * (1.0 / (1.0 + e)))), current_step


#: lr_policy name -> policy function.
POLICIES: dict[str, Callable] = {
    "fixed": fixed, "step": step, "exp": exp, "inv": inv, "multistep": multistep, "poly": poly,
    "sigmoid": sigmoid,
}


def learning_rate(param, it: int, current_step: int = 0) -> tuple[float, int]:
    """The rate for iteration ``it`` under ``param.lr_policy``, and the new ``current_step``."""
    try:
        policy = POLICIES[param.lr_policy]
    except KeyError:
        known = ", ".join(f'"{name}"' for name in POLICIES)
        raise ValueError(f"unknown lr_policy \"{param.lr_policy}\"; known policies: {known}") from None
    return policy(param, it, current_step)
