"""Each solver's update on small parameters against a hand-written numpy version of Caffe's rule.

The nets are ``Parameter`` layers only; the gradient of every iteration is put into the diffs by an
``on_gradients_ready`` callback (pycaffe's ``add_callback``), so ``step()`` runs Caffe's whole
update pipeline on known values: clipping, ``iter_size`` normalization, regularization,
``lr_mult``/``decay_mult``, the rule, ``w -= update``.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

import torchcaffe
from torchcaffe.solvers import SolverError

SETTINGS = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "delta: 0.0001",
    "RMSProp": "rms_decay: 0.9 delta: 0.000001",
    "AdaDelta": "momentum: 0.95 delta: 0.000001",
    "Adam": "momentum: 0.9 momentum2: 0.999 delta: 0.00000001",
}
KINDS = sorted(SETTINGS)
SHAPES = {"a": (2, 3), "b": (4,)}


def make_solver(kind: str, settings: str = "", specs: dict | None = None, base_lr: float = 0.1, defaults=True):
    specs = specs or {}
    layers = " ".join(
        f'layer {{ name: "{name}" type: "Parameter" top: "{name}" '
        f'parameter_param {{ shape {{ {" ".join(f"dim: {d}" for d in shape)} }} }} {specs.get(name, "")} }}'
        for name, shape in SHAPES.items())
    text = (f'type: "{kind}" base_lr: {base_lr} lr_policy: "step" gamma: 0.5 stepsize: 2 solver_mode: CPU '
            f'{SETTINGS[kind] if defaults else ""} {settings}\ntrain_net_param {{ name: "params" {layers} }}')
    return torchcaffe.get_solver(text)


def run(solver, weights: dict, grads: list[dict]) -> list[dict]:
    """Set the weights, then one step per entry of ``grads``; the weights after each step."""
    for name, value in weights.items():
        solver.net.params[name][0].data[...] = value
    it = iter(grads)

    def ready():
        for name, g in next(it).items():
            solver.net.params[name][0].diff[...] = g

    solver.add_callback(lambda: None, ready)
    seen = []
    for _ in grads:
        solver.step(1)
        seen.append({name: solver.net.params[name][0].data.copy() for name in weights})
    return seen


def reference(kind: str, p: dict, weights: dict, grads: list[dict], specs: dict) -> list[dict]:
    """Caffe's pipeline in float64 numpy, written from the solver sources' formulas."""
    w = {k: v.astype(np.float64).copy() for k, v in weights.items()}
    h = {k: np.zeros_like(v) for k, v in w.items()}
    h2 = {k: np.zeros_like(v) for k, v in w.items()}
    seen = []
    for it, step_grads in enumerate(grads):
        rate = p["base_lr"] * 0.5 ** (it // 2)
        g = {k: v.astype(np.float64).copy() for k, v in step_grads.items()}
        norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
        if p["clip"] >= 0 and norm > p["clip"]:
            g = {k: x * p["clip"] / norm for k, x in g.items()}
        for k in w:
            lr_mult, decay_mult = specs.get(k, (1.0, 1.0))
            x = g[k] / p["iter_size"]
            decay = p["wd"] * decay_mult
            x = x + decay * (w[k] if p["reg"] == "L2" else np.sign(w[k]))
            lr = rate * lr_mult
            if kind == "SGD":
                h[k] = p["momentum"] * h[k] + lr * x
                u = h[k]
            elif kind == "Nesterov":
                old = h[k]
                h[k] = p["momentum"] * h[k] + lr * x
                u = (1 + p["momentum"]) * h[k] - p["momentum"] * old
            elif kind == "AdaGrad":
                h[k] = h[k] + x * x
                u = lr * x / (np.sqrt(h[k]) + p["delta"])
            elif kind == "RMSProp":
                h[k] = p["rms_decay"] * h[k] + (1 - p["rms_decay"]) * x * x
                u = lr * x / (np.sqrt(h[k]) + p["delta"])
            elif kind == "AdaDelta":
                m = p["momentum"]
                h[k] = m * h[k] + (1 - m) * x * x
                x = x * np.sqrt((h2[k] + p["delta"]) / (h[k] + p["delta"]))
                h2[k] = m * h2[k] + (1 - m) * x * x
                u = lr * x
            else:  # Adam
                b1, b2, t = p["momentum"], p["momentum2"], it + 1
                h[k] = b1 * h[k] + (1 - b1) * x
                h2[k] = b2 * h2[k] + (1 - b2) * x * x
                u = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * h[k] / (np.sqrt(h2[k]) + p["delta"])
            w[k] = w[k] - u
        seen.append({k: v.copy() for k, v in w.items()})
    return seen


def params_of(kind: str, **overrides) -> dict:
    p = dict(base_lr=0.1, momentum=0.0, momentum2=0.999, delta=1e-8, rms_decay=0.99, wd=0.0, reg="L2",
             clip=-1.0, iter_size=1)
    text = SETTINGS[kind].split()
    for key, value in zip(text[::2], text[1::2]):
        p[key.rstrip(":")] = float(value)
    p.update(overrides)
    return p


def random_problem(seed: int, iters: int = 5):
    rng = np.random.default_rng(seed)
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(iters)]
    return weights, grads


def check(kind, settings, specs_text, specs, seed=0, **overrides):
    weights, grads = random_problem(seed)
    solver = make_solver(kind, settings, specs_text)
    ours = run(solver, weights, grads)
    expected = reference(kind, params_of(kind, **overrides), weights, grads, specs)
    for it, (got, want) in enumerate(zip(ours, expected)):
        for name in got:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6,
                                       err_msg=f"{kind}, step {it}, {name}")
    return solver


@pytest.mark.parametrize("kind", KINDS)
def test_plain_rule(kind):
    check(kind, "", {}, {})


@pytest.mark.parametrize("kind", KINDS)
def test_l2_decay_with_lr_and_decay_mult(kind):
    specs_text = {"a": "param { lr_mult: 0.5 decay_mult: 2 }", "b": "param { lr_mult: 2 decay_mult: 0 }"}
    check(kind, "weight_decay: 0.05", specs_text, {"a": (0.5, 2.0), "b": (2.0, 0.0)}, wd=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_l1_decay(kind):
    check(kind, 'weight_decay: 0.05 regularization_type: "L1"', {"b": "param { decay_mult: 3 }"},
          {"b": (1.0, 3.0)}, wd=0.05, reg="L1")


@pytest.mark.parametrize("kind", KINDS)
def test_iter_size_divides_the_accumulated_diff(kind):
    check(kind, "iter_size: 3 weight_decay: 0.01", {}, {}, iter_size=3, wd=0.01)


@pytest.mark.parametrize("kind", KINDS)
def test_clip_gradients_uses_the_global_norm_before_normalization(kind, caplog):
    with caplog.at_level(logging.INFO, logger="torchcaffe"):
        check(kind, "clip_gradients: 0.5 iter_size: 2", {}, {}, clip=0.5, iter_size=2)
    assert "Gradient clipping: scaling down gradients (L2 norm" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_lr_mult_zero_never_changes_the_parameter(kind, reg):
    specs_text = {"a": "param { lr_mult: 0 }"}
    solver = check(kind, f'weight_decay: 0.1 regularization_type: "{reg}"', specs_text, {"a": (0.0, 1.0)},
                   wd=0.1, reg=reg)
    weights, _ = random_problem(0)
    np.testing.assert_array_equal(solver.net.params["a"][0].data, weights["a"])


def test_the_diff_holds_the_update_value_after_a_step():
    weights, grads = random_problem(1, iters=2)
    solver = make_solver("SGD")
    run(solver, weights, grads)
    for index, name in enumerate(SHAPES):  # SGD: the update is the momentum history
        np.testing.assert_array_equal(solver.net.params[name][0].diff, solver.history[index].numpy())


@pytest.mark.parametrize("kind,sets", [("SGD", 1), ("Nesterov", 1), ("AdaGrad", 1), ("RMSProp", 1),
                                       ("AdaDelta", 2), ("Adam", 2)])
def test_history_blobs_in_caffes_order(kind, sets):
    solver = make_solver(kind)
    shapes = [tuple(h.shape) for h in solver.history]
    assert shapes == [s for _ in range(sets) for s in SHAPES.values()]


def test_adam_keeps_first_then_second_moments():
    weights, grads = random_problem(2, iters=1)
    solver = make_solver("Adam")
    run(solver, weights, grads)
    g = grads[0]["a"].astype(np.float64)
    np.testing.assert_allclose(solver.history[0].numpy(), 0.1 * g, rtol=1e-5)  # m = (1 - b1) g
    np.testing.assert_allclose(solver.history[2].numpy(), 0.001 * g * g, rtol=1e-4)  # v = (1 - b2) g^2


@pytest.mark.parametrize("kind,settings,words", [
    ("AdaGrad", "momentum: 0.9", ["momentum cannot be used with AdaGrad"]),
    ("RMSProp", "momentum: 0.9", ["momentum cannot be used with RMSProp"]),
    ("RMSProp", "rms_decay: 1", ["rms_decay must lie in [0, 1)"]),
])
def test_solver_specific_checks(kind, settings, words):
    with pytest.raises(SolverError) as info:
        make_solver(kind, settings, defaults=False)
    for word in words:
        assert word in str(info.value)


def test_pycaffe_classes_use_their_own_rule_whatever_the_type_field():
    text = ('type: "SGD" base_lr: 0.1 lr_policy: "fixed" solver_mode: CPU momentum: 0.9 momentum2: 0.999\n'
            'train_net_param { name: "p" layer { name: "a" type: "Parameter" top: "a" '
            'parameter_param { shape { dim: 2 } } } }')
    solver = torchcaffe.AdamSolver(text)
    assert solver.type == "Adam" and len(solver.history) == 2
    assert type(torchcaffe.get_solver(text)) is torchcaffe.SGDSolver
