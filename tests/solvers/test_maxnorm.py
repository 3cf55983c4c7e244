"""Max-norm constraints: ``torchcaffe.renorm`` and the solver applying ``ParamSpec.max_norm``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe.errors import CaffeError
from torchcaffe.proto import caffe_pb2
from torchcaffe.solvers import renorm_

X = np.array([[0.0, 0.0], [3.0, 4.0], [30.0, 40.0], [300.0, 400.0]], dtype=np.float32)


def test_seed_rows():
    """Seed 003: rows have norms 0, 5, 50, 500; a bound of 10 rescales the last two to (6, 8)."""
    np.testing.assert_allclose(torchcaffe.renorm(X, 0, 10), [[0, 0], [3, 4], [6, 8], [6, 8]], rtol=1e-6)


def test_seed_columns():
    """Seed 003: columns have norms ~301.5 and ~402; a bound of 350 rescales the second."""
    got = torchcaffe.renorm(X, 1, 350)
    np.testing.assert_allclose(got, [[0, 0], [3, 3.48245788], [30, 34.82457733], [300, 348.24578857]], rtol=1e-6)
    assert np.linalg.norm(got[:, 1]) == pytest.approx(350, rel=1e-6)
    np.testing.assert_array_equal(got[:, 0], X[:, 0])


@pytest.mark.parametrize("shape,axis", [((5, 7), 0), ((5, 7), 1), ((4, 3, 2, 2), 0), ((4, 3, 2, 2), 1),
                                        ((4, 3, 2, 2), -1), ((6,), 0)])
def test_matches_torch_renorm(shape, axis):
    torch.manual_seed(0)
    w = torch.randn(shape) * 3
    ours = torchcaffe.renorm(w, axis, 2.0)
    theirs = torch.renorm(w, 2, axis % w.dim(), 2.0) if w.dim() > 1 else torch.renorm(w[:, None], 2, 0, 2.0)[:, 0]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)  # torch adds 1e-7 to the norm
    assert torch.equal(w, w.clone()), "renorm returns a copy"
    norms = ours.transpose(0, axis % w.dim()).reshape(shape[axis], -1).norm(dim=1)
    assert bool((norms <= 2.0 * (1 + 1e-6)).all())


def test_slices_below_the_bound_are_untouched_and_the_others_land_on_it():
    w = torch.tensor([[0.3, 0.4], [3.0, 4.0]])
    renorm_(w, 0, 1.0)
    assert w[0].tolist() == pytest.approx([0.3, 0.4])
    assert float(w[1].norm()) == pytest.approx(1.0, rel=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="out of range"):
        torchcaffe.renorm(torch.ones(2, 2), 2, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        torchcaffe.renorm(torch.ones(2, 2), 0, -1.0)


def solver_text(spec: str) -> str:
    return ('type: "SGD" base_lr: 1 lr_policy: "fixed" solver_mode: CPU\n'
            'train_net_param { name: "mn" layer { name: "w" type: "Parameter" top: "w" '
            f'parameter_param {{ shape {{ dim: 3 dim: 2 }} }} param {{ {spec} }} }} }}')


def run_steps(solver, grads):
    it = iter(grads)
    solver.add_callback(lambda: None, lambda: solver.net.params["w"][0].diff.__setitem__(Ellipsis, next(it)))
    for _ in grads:
        solver.step(1)
        yield solver.net.params["w"][0].data.copy()


def test_the_solver_applies_max_norm_after_every_update():
    assert caffe_pb2.ParamSpec.DESCRIPTOR.fields_by_name["max_norm"].number == 21000
    solver = torchcaffe.get_solver(solver_text("max_norm: 1.5 max_norm_axis: 0"))
    entry = solver.net.learnable_params[0]
    assert (entry.max_norm, entry.max_norm_axis) == (1.5, 0)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 2)).astype(np.float32) * 2 for _ in range(4)]
    w = np.zeros((3, 2))
    for got, g in zip(run_steps(solver, grads), grads):
        w = w - g
        norms = np.linalg.norm(w, axis=1, keepdims=True)
        w = np.where(norms > 1.5, w * 1.5 / norms, w)  # each row at most 1.5, after the update
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(got, axis=1).max() == pytest.approx(1.5, rel=1e-5)


def test_max_norm_along_axis_one():
    solver = torchcaffe.get_solver(solver_text("max_norm: 0.5 max_norm_axis: 1"))
    got = list(run_steps(solver, [np.full((3, 2), -1.0, np.float32)]))[-1]
    np.testing.assert_allclose(np.linalg.norm(got, axis=0), [0.5, 0.5], rtol=1e-6)


def test_max_norm_off_by_default():
    solver = torchcaffe.get_solver(solver_text("lr_mult: 1"))
    got = list(run_steps(solver, [np.full((3, 2), -10.0, np.float32)]))[-1]
    np.testing.assert_array_equal(got, np.full((3, 2), 10.0))


@pytest.mark.parametrize("spec,word", [("max_norm: 1 max_norm_axis: 2", "max_norm_axis"),
                                       ("max_norm: -1", "max_norm")])
def test_bad_max_norm_settings(spec, word):
    with pytest.raises(CaffeError) as info:
        torchcaffe.get_solver(solver_text(spec))
    assert word in str(info.value) and 'layer "w"' in str(info.value)
