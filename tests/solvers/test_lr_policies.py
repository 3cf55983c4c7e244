"""Every lr policy against its closed form (Caffe's ``SGDSolver::GetLearningRate`` comment)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import text_format

from torchcaffe.proto import caffe_pb2
from torchcaffe.solvers import lr_policies
from torchcaffe.solvers.lr_policies import learning_rate


def solver_param(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


def f32(x) -> float:
    return float(np.float32(x))


# The formulas use the fields as the SolverParameter holds them (float32 values, as in Caffe).
CLOSED_FORMS = {
    "fixed": ("base_lr: 0.01", lambda p, it: p.base_lr),
    "step": ("base_lr: 0.01 gamma: 0.1 stepsize: 7", lambda p, it: p.base_lr * p.gamma ** (it // p.stepsize)),
    "exp": ("base_lr: 0.01 gamma: 0.97", lambda p, it: p.base_lr * p.gamma ** it),
    "inv": ("base_lr: 0.01 gamma: 0.0001 power: 0.75",
            lambda p, it: p.base_lr * (1 + p.gamma * it) ** -p.power),
    "poly": ("base_lr: 0.01 power: 2 max_iter: 40", lambda p, it: p.base_lr * (1 - it / p.max_iter) ** p.power),
    "sigmoid": ("base_lr: 0.01 gamma: 0.25 stepsize: 10",
                lambda p, it: p.base_lr / (1 + math.exp(-p.gamma * (it - p.stepsize)))),
}


@pytest.mark.parametrize("policy", sorted(CLOSED_FORMS))
def test_policy_matches_its_formula(policy):
    fields, formula = CLOSED_FORMS[policy]
    param = solver_param(f'lr_policy: "{policy}" {fields}')
    for it in range(0, 41):
        rate, _ = learning_rate(param, it, 0)
        # Caffe computes 1 - iter/max_iter (poly) and 1 + gamma*iter (inv) in float32
        assert rate == pytest.approx(formula(param, it), rel=2e-6, abs=1e-12), f"iter {it}"
        assert rate == f32(rate), "Caffe's rate is a float32 (Dtype)"


def test_sigmoid_formula_with_a_real_gamma():
    param = solver_param('lr_policy: "sigmoid" base_lr: 0.05 gamma: 0.5 stepsize: 8')
    for it in range(20):
        expected = 0.05 / (1 + math.exp(-0.5 * (it - 8)))
        assert learning_rate(param, it, 0)[0] == pytest.approx(expected, rel=2e-7)
    assert learning_rate(param, 8, 0)[0] == pytest.approx(0.025, rel=1e-7)  # the midpoint


def test_step_sets_current_step_as_caffe_does():
    param = solver_param('lr_policy: "step" base_lr: 1 gamma: 0.5 stepsize: 3')
    assert [learning_rate(param, it, 99)[1] for it in (0, 2, 3, 8, 9)] == [0, 0, 1, 2, 3]


def test_multistep_counts_passed_stepvalues_one_per_call():
    param = solver_param('lr_policy: "multistep" base_lr: 0.1 gamma: 0.3 stepvalue: 4 stepvalue: 11 stepvalue: 12')
    step, rates = 0, []
    for it in range(20):
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
        passed = sum(it >= v for v in (4, 11, 12))
        assert step == passed
        assert rate == pytest.approx(0.1 * 0.3 ** passed, rel=2e-7)
    # Caffe advances at most one step per call: resumed at iteration 15 with current_step 0,
    # the schedule catches up one step per iteration, exactly as Caffe's would.
    assert [learning_rate(param, 15, s)[1] for s in (0, 1, 2, 3)] == [1, 2, 3, 3]


def test_poly_reaches_zero_at_max_iter():
    param = solver_param('lr_policy: "poly" base_lr: 0.01 power: 0.5 max_iter: 10')
    assert learning_rate(param, 10, 0)[0] == 0.0
    assert math.isnan(learning_rate(param, 11, 0)[0])  # C's pow of a negative base, as in Caffe


def test_every_policy_is_listed_once():
    assert sorted(lr_policies.POLICIES) == sorted(["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"])
    for name, fn in lr_policies.POLICIES.items():
        assert "rate" in fn.__doc__ or "gamma" in fn.__doc__, f"{name}: the docstring states the formula"


@pytest.mark.parametrize("text,words", [
    ('lr_policy: "stepz" base_lr: 0.1', ["unknown lr_policy", "stepz", '"step"']),
    ('lr_policy: "step" base_lr: 0.1 gamma: 0.1', ["stepsize must be > 0"]),
    ('lr_policy: "exp" base_lr: 0.1 gamma: -1', ["gamma must be >= 0"]),
    ('lr_policy: "sigmoid" base_lr: 0.1 gamma: 1', ["stepsize must be > 0"]),
    ('lr_policy: "poly" base_lr: 0.1 power: 1', ["max_iter must be > 0"]),
])
def test_refused_settings(text, words):
    with pytest.raises(ValueError) as info:
        learning_rate(solver_param(text), 0, 0)
    for word in words:
        assert word in str(info.value)
