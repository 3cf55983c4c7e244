"""InnerProduct, Embed, Softmax, Eltwise, Reduction, ArgMax, Accuracy and Parameter against
loop-by-loop numpy references of Caffe's CPU code.

Covers what the sample table cannot: the values themselves, Caffe's tie rules (Eltwise MAX's
winner, ArgMax's order, Accuracy's ``>=``), gradients Caffe routes differently from the obvious
torch call, the bottoms Caffe never back-propagates into, and the configuration errors.
"""
from __future__ import annotations

import itertools
from functools import partial

import numpy as np
import pytest
import torch

from .harness import expect_error, float64_tensor as t, make_layer, net_from

RNG = np.random.default_rng(20240612)


# Every layer of this file is built right after torch.manual_seed(0), so fillers draw the same values.
make = partial(make_layer, seed=0)


# -- InnerProduct ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,transpose", [((2, 3, 2, 2), 1, False), ((2, 3, 4, 1), 2, False),
                                                  ((3, 5), 1, True), ((2, 3, 4), -1, True), ((3, 2), 0, False)])
def test_inner_product_matches_loop(shape, axis, transpose):
    n_out = 3
    layer = make("InnerProduct", f"inner_product_param {{ num_output: {n_out} axis: {axis} transpose: "
                 f"{str(transpose).lower()} weight_filler {{ type: 'gaussian' }} bias_filler {{ type: 'gaussian' }} }}",
                 shape).double()
    x = RNG.standard_normal(shape)
    a = axis % len(shape)
    m, k = int(np.prod(shape[:a])), int(np.prod(shape[a:]))
    w = layer.weight.detach().numpy()
    assert w.shape == ((k, n_out) if transpose else (n_out, k))
    b = layer.bias.detach().numpy()
    flat = x.reshape(m, k)
    expected = np.zeros((m, n_out))
    for i in range(m):
        for j in range(n_out):
            expected[i, j] = b[j] + sum(flat[i, c] * (w[c, j] if transpose else w[j, c]) for c in range(k))
    y = layer(t(x)).detach().numpy()
    assert y.shape == tuple(shape[:a]) + (n_out,)
    np.testing.assert_allclose(y.reshape(m, n_out), expected, rtol=1e-10)


def test_inner_product_default_fillers_are_zero():
    layer = make("InnerProduct", "inner_product_param { num_output: 4 }", (2, 3))
    assert not layer.weight.any() and not layer.bias.any()
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == [(4, 3), (4,)]


def test_inner_product_errors():
    expect_error(['"L"', "InnerProduct", "num_output"], make, "InnerProduct", "inner_product_param { }", (2, 3))
    expect_error(['"L"', "axis"], make, "InnerProduct", "inner_product_param { num_output: 2 axis: 3 }", (2, 3))
    layer = make("InnerProduct", "inner_product_param { num_output: 2 }", (2, 3, 4))
    message = expect_error(['"L"', "12", "10"], layer, torch.zeros(2, 5, 2))  # K 12 expected, 10 given
    assert "incompatible" in message


# -- Embed ----------------------------------------------------------------------------------------
def test_embed_matches_lookup_and_accumulates_weight_grad():
    layer = make("Embed", "embed_param { num_output: 3 input_dim: 4 weight_filler { type: 'gaussian' } "
                 "bias_filler { type: 'gaussian' } }", (2, 3)).double()
    idx = np.array([[0, 3, 3], [1, 3, 0]], dtype=np.float64)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    y = layer(t(idx))
    assert y.shape == (2, 3, 3)
    expected = np.stack([[w[int(i)] + b for i in row] for row in idx])
    np.testing.assert_allclose(y.detach().numpy(), expected)
    top_diff = RNG.standard_normal(y.shape)
    y.backward(t(top_diff))
    w_grad = np.zeros_like(w)
    for pos in itertools.product(range(2), range(3)):
        w_grad[int(idx[pos])] += top_diff[pos]
    np.testing.assert_allclose(layer.weight.grad.numpy(), w_grad)
    np.testing.assert_allclose(layer.bias.grad.numpy(), top_diff.reshape(-1, 3).sum(0))


@pytest.mark.parametrize("bad", [4.0, -1.0, 1.5])
def test_embed_rejects_bad_indices(bad):
    layer = make("Embed", "embed_param { num_output: 2 input_dim: 4 }", (3,))
    expect_error(['"L"', "Embed", "input_dim", "4"], layer, torch.tensor([0.0, bad, 1.0]))


def test_embed_config_errors():
    expect_error(['"L"', "input_dim"], make, "Embed", "embed_param { num_output: 2 }", (3,))
    expect_error(['"L"', "num_output"], make, "Embed", "embed_param { input_dim: 2 }", (3,))


def test_embed_input_never_gets_a_gradient_even_when_forced():
    net = net_from("""force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 } } }
        layer { name: "e" type: "Embed" bottom: "x" top: "y" loss_weight: 1
                embed_param { num_output: 2 input_dim: 5 weight_filler { type: 'gaussian' } } }""")
    net.blobs["x"].data[...] = [4, 0, 4]
    net.forward()
    net.backward()
    assert not net.blobs["x"].diff.any()
    expected = np.zeros((5, 2))
    expected[0] = 1
    expected[4] = 2
    np.testing.assert_allclose(net.params["e"][0].diff, expected)


# -- Softmax --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [((2, 4, 3), 1), ((2, 3, 5), 2), ((1, 6), -1), ((3, 2), 0)])
def test_softmax_matches_loop(shape, axis):
    layer = make("Softmax", f"softmax_param {{ axis: {axis} }}", shape)
    x = RNG.standard_normal(shape) * 30 + 50  # large values: needs the max subtraction
    a = axis % len(shape)
    moved = np.moveaxis(x, a, -1)
    expected = np.empty_like(moved)
    for pos in np.ndindex(moved.shape[:-1]):
        v = moved[pos]
        e = np.exp(v - v.max())
        expected[pos] = e / e.sum()
    np.testing.assert_allclose(layer(t(x)).detach().numpy(), np.moveaxis(expected, -1, a), rtol=1e-10)


def test_softmax_axis_error():
    expect_error(['"L"', "softmax_param axis", "4"], make, "Softmax", "softmax_param { axis: 4 }", (2, 3))


# -- Eltwise --------------------------------------------------------------------------------------
def caffe_eltwise_max(xs):
    """Caffe's loop: bottom 1 unless bottom 0 is strictly greater; later bottoms strictly greater."""
    top, mask = np.empty_like(xs[0]), np.empty(xs[0].shape, dtype=int)
    for idx in np.ndindex(xs[0].shape):
        if xs[0][idx] > xs[1][idx]:
            top[idx], mask[idx] = xs[0][idx], 0
        else:
            top[idx], mask[idx] = xs[1][idx], 1
        for b in range(2, len(xs)):
            if xs[b][idx] > top[idx]:
                top[idx], mask[idx] = xs[b][idx], b
    return top, mask


@pytest.mark.parametrize("count", [2, 3, 4])
def test_eltwise_max_ties_and_winner_only_gradient(count):
    shape = (4, 6)
    layer = make("Eltwise", "eltwise_param { operation: MAX }", *[shape] * count)
    xs = [RNG.choice([0.0, 1.0, 2.0], size=shape) for _ in range(count)]  # many ties
    inputs = [t(x, grad=True) for x in xs]
    y = layer(*inputs)
    top, mask = caffe_eltwise_max(xs)
    np.testing.assert_array_equal(y.detach().numpy(), top)
    top_diff = RNG.standard_normal(shape)
    y.backward(t(top_diff))
    for b, x in enumerate(inputs):
        np.testing.assert_array_equal(x.grad.numpy(), np.where(mask == b, top_diff, 0.0), err_msg=f"bottom {b}")


def test_eltwise_max_tie_between_first_two_goes_to_bottom_1():
    layer = make("Eltwise", "eltwise_param { operation: MAX }", (1,), (1,), (1,))
    a, b, c = (t([1.0], grad=True) for _ in range(3))
    layer(a, b, c).backward(t([1.0]))
    assert (a.grad.item(), b.grad.item(), c.grad.item()) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("stable", ["true", "false"])
def test_eltwise_prod_gradient_is_product_of_others_even_at_zero(stable):
    shape = (3, 4)
    layer = make("Eltwise", f"eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}", shape, shape, shape)
    xs = [RNG.choice([0.0, -1.5, 2.0], size=shape) for _ in range(3)]
    inputs = [t(x, grad=True) for x in xs]
    y = layer(*inputs)
    np.testing.assert_allclose(y.detach().numpy(), xs[0] * xs[1] * xs[2])
    top_diff = RNG.standard_normal(shape)
    y.backward(t(top_diff))
    for b in range(3):
        others = np.prod([xs[j] for j in range(3) if j != b], axis=0)
        np.testing.assert_allclose(inputs[b].grad.numpy(), others * top_diff)


def test_eltwise_sum_coeffs():
    layer = make("Eltwise", "eltwise_param { coeff: 0.5 coeff: -2 coeff: 3 }", (2, 3), (2, 3), (2, 3))
    xs = [RNG.standard_normal((2, 3)) for _ in range(3)]
    inputs = [t(x, grad=True) for x in xs]
    y = layer(*inputs)
    np.testing.assert_allclose(y.detach().numpy(), 0.5 * xs[0] - 2 * xs[1] + 3 * xs[2])
    y.sum().backward()
    for x, c in zip(inputs, (0.5, -2, 3)):
        np.testing.assert_allclose(x.grad.numpy(), c)


def test_eltwise_errors():
    expect_error(['"L"', "coeff", "3", "2"], make, "Eltwise", "eltwise_param { coeff: 1 coeff: 2 }",
                 (2,), (2,), (2,))
    expect_error(['"L"', "coeff", "PROD"], make, "Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }",
                 (2,), (2,))
    expect_error(['"L"', "bottom 1", "(2, 3)", "(3, 2)"], make, "Eltwise", "", (2, 3), (3, 2))
    expect_error(['"L"', "at least 2 bottom"], make, "Eltwise", "", (2, 3))


# -- Reduction ------------------------------------------------------------------------------------
OPS = {"SUM": (lambda v: v.sum(), lambda v: np.ones_like(v)),
       "ASUM": (lambda v: np.abs(v).sum(), lambda v: np.sign(v)),
       "SUMSQ": (lambda v: (v * v).sum(), lambda v: 2 * v),
       "MEAN": (lambda v: v.mean(), lambda v: np.full_like(v, 1.0 / v.size))}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape,axis", [((2, 3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), -1), ((5,), 0)])
def test_reduction_matches_loop(op, shape, axis):
    coeff = -1.5
    layer = make("Reduction", f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}", shape)
    x = RNG.choice([0.0, 1.0, -2.0, 0.5], size=shape)  # zeros: ASUM's gradient is 0 there
    a = axis % len(shape)
    outer = int(np.prod(shape[:a]))
    rows = x.reshape(outer, -1)
    value, grad = OPS[op]
    expected = np.array([coeff * value(r) for r in rows]).reshape(shape[:a])
    xt = t(x, grad=True)
    y = layer(xt)
    assert tuple(y.shape) == tuple(shape[:a])
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12)
    top_diff = RNG.standard_normal(shape[:a])
    y.backward(t(top_diff))
    expected_grad = np.stack([coeff * d * grad(r) for r, d in zip(rows, top_diff.reshape(-1))]).reshape(shape)
    np.testing.assert_allclose(xt.grad.numpy(), expected_grad, rtol=1e-12)


def test_reduction_axis_error():
    expect_error(['"L"', "reduction_param axis"], make, "Reduction", "reduction_param { axis: 2 }", (2, 3))


# -- ArgMax ---------------------------------------------------------------------------------------
def caffe_top_k(values, k):
    """std::partial_sort of (value, index) pairs with std::greater: value, then larger index first."""
    pairs = sorted(((v, j) for j, v in enumerate(values)), reverse=True)[:k]
    return [v for v, _ in pairs], [j for _, j in pairs]


@pytest.mark.parametrize("shape,k,out_max_val", [((3, 6), 1, False), ((3, 6), 2, True), ((2, 3, 2, 2), 3, True),
                                                 ((2, 3, 2, 2), 2, False), ((4,), 1, True)])
def test_argmax_without_axis(shape, k, out_max_val):
    layer = make("ArgMax", f"argmax_param {{ top_k: {k} out_max_val: {str(out_max_val).lower()} }}", shape)
    x = RNG.choice([0.0, 1.0, 2.0], size=shape)  # ties everywhere
    n = shape[0]
    expected = np.zeros((n, 2 if out_max_val else 1, k) + (1,) * (len(shape) - 3))
    for i in range(n):
        vals, idx = caffe_top_k(list(x[i].reshape(-1)), k)
        expected[i, 0].reshape(-1)[:] = idx
        if out_max_val:
            expected[i, 1].reshape(-1)[:] = vals
    y = layer(t(x))
    assert tuple(y.shape) == expected.shape
    np.testing.assert_array_equal(y.numpy(), expected)


@pytest.mark.parametrize("shape,axis,k,out_max_val", [((2, 4, 3), 1, 2, False), ((1, 2, 5), -1, 3, True),
                                                      ((5, 3), 0, 5, False)])
def test_argmax_with_axis(shape, axis, k, out_max_val):
    layer = make("ArgMax", f"argmax_param {{ axis: {axis} top_k: {k} out_max_val: {str(out_max_val).lower()} }}",
                 shape)
    x = RNG.choice([0.0, 1.0, 2.0], size=shape)
    a = axis % len(shape)
    moved = np.moveaxis(x, a, -1)
    expected = np.zeros(moved.shape[:-1] + (k,))
    for pos in np.ndindex(moved.shape[:-1]):
        vals, idx = caffe_top_k(list(moved[pos]), k)
        expected[pos] = vals if out_max_val else idx
    np.testing.assert_array_equal(layer(t(x)).numpy(), np.moveaxis(expected, -1, a))


def test_argmax_errors():
    expect_error(['"L"', "top_k", "6"], make, "ArgMax", "argmax_param { top_k: 7 }", (2, 3, 2))
    expect_error(['"L"', "top_k", "3"], make, "ArgMax", "argmax_param { top_k: 4 axis: 1 }", (2, 3, 2))
    expect_error(['"L"', "top_k"], make, "ArgMax", "argmax_param { top_k: 0 }", (2, 3))
    expect_error(['"L"', "argmax_param axis"], make, "ArgMax", "argmax_param { axis: 2 }", (2, 3))


# -- Accuracy -------------------------------------------------------------------------------------
def caffe_accuracy(scores, labels, axis, top_k, ignore=None):
    """Caffe's CPU loop, ``num_better_predictions`` and all."""
    a = axis % scores.ndim
    outer, classes = int(np.prod(scores.shape[:a])), scores.shape[a]
    data = scores.reshape(outer, classes, -1)
    label = labels.reshape(outer, -1)
    accuracy, count = 0.0, 0
    hits, nums = np.zeros(classes), np.zeros(classes)
    for i in range(outer):
        for j in range(data.shape[2]):
            value = int(label[i, j])
            if ignore is not None and value == ignore:
                continue
            nums[value] += 1
            true = data[i, value, j]
            better = -1
            for c in range(classes):
                if better >= top_k:
                    break
                better += data[i, c, j] >= true
            if better < top_k:
                accuracy += 1
                hits[value] += 1
            count += 1
    per_class = np.array([h / n if n else 0.0 for h, n in zip(hits, nums)])
    return (accuracy / count if count else 0.0), per_class


@pytest.mark.parametrize("scores_shape,labels_shape,axis,top_k,ignore", [
    ((8, 5), (8,), 1, 1, None), ((8, 5), (8,), 1, 2, 1), ((2, 3, 2, 2), (2, 1, 2, 2), 1, 1, None),
    ((2, 3, 2, 2), (2, 2, 2), 1, 2, 0), ((1, 2, 4), (1, 2), -1, 3, None), ((6, 4), (6, 1, 1, 1), 1, 4, 3)])
def test_accuracy_matches_loop(scores_shape, labels_shape, axis, top_k, ignore):
    ignore_text = "" if ignore is None else f"ignore_label: {ignore}"
    layer = make("Accuracy", f"accuracy_param {{ axis: {axis} top_k: {top_k} {ignore_text} }}",
                 scores_shape, labels_shape, tops=2)
    classes = scores_shape[axis % len(scores_shape)]
    scores = RNG.choice([0.0, 0.5, 1.0], size=scores_shape)  # ties count against the true class
    labels = RNG.integers(0, classes, size=labels_shape).astype(np.float64)
    accuracy, per_class = layer(t(scores), t(labels))
    ref_accuracy, ref_per_class = caffe_accuracy(scores, labels, axis, top_k, ignore)
    assert accuracy.shape == () and per_class.shape == (classes,)
    np.testing.assert_allclose(accuracy.item(), ref_accuracy)
    np.testing.assert_allclose(per_class.numpy(), ref_per_class)


def test_accuracy_ties_count_against_the_true_class():
    layer = make("Accuracy", "", (2, 3), (2,))
    scores = t([[1.0, 1.0, 0.0], [2.0, 1.0, 2.0]])
    assert layer(scores, t([0.0, 2.0])).item() == 0.0  # each true class ties with another
    assert layer(scores, t([0.0, 0.0])).item() == 0.0


def test_accuracy_all_ignored_is_zero():
    layer = make("Accuracy", "accuracy_param { ignore_label: 2 }", (3, 4), (3,), tops=2)
    accuracy, per_class = layer(t(RNG.standard_normal((3, 4))), t([2.0, 2.0, 2.0]))
    assert accuracy.item() == 0.0 and not per_class.any()


def test_accuracy_errors():
    expect_error(['"L"', "top_k", "3"], make, "Accuracy", "accuracy_param { top_k: 4 }", (2, 3), (2,))
    expect_error(['"L"', "labels", "6", "4"], make, "Accuracy", "", (2, 3, 3), (4,))
    layer = make("Accuracy", "", (2, 3), (2,))
    expect_error(['"L"', "label 3", "[0, 3)"], layer, torch.zeros(2, 3), torch.tensor([0.0, 3.0]))


def test_accuracy_and_argmax_shapes_in_a_net():
    net = net_from("""
        layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
        layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" top: "per" }
        layer { name: "am" type: "ArgMax" bottom: "x" top: "am" }""")
    assert net.blobs["acc"].shape == () and net.blobs["per"].shape == (3,)
    assert net.blobs["am"].shape == (4, 1, 1)


# -- Parameter ------------------------------------------------------------------------------------
def test_parameter_top_is_the_blob_and_gets_its_diff():
    net = net_from("""
        layer { name: "p" type: "Parameter" top: "p" loss_weight: 2 parameter_param { shape { dim: 2 dim: 3 } } }""")
    assert net.params["p"][0].data.shape == (2, 3) and not net.params["p"][0].data.any()
    net.params["p"][0].data[...] = np.arange(6).reshape(2, 3)
    net.forward()
    np.testing.assert_array_equal(net.blobs["p"].data, np.arange(6).reshape(2, 3))
    net.backward()
    np.testing.assert_array_equal(net.params["p"][0].diff, np.full((2, 3), 2.0))


def test_parameter_scalar_shape():
    layer = make("Parameter", "parameter_param { shape { } }", tops=1)
    assert layer().shape == ()
