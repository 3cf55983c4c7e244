"""Loss-family semantics the sample table cannot cover, against loop implementations of Caffe's
formulas (BVLC master ``*_loss_layer.cpp``), plus the malformed-parameter errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import text_format

import torchcaffe
from torchcaffe.errors import NetError
from torchcaffe.io.binaryproto import write_blobproto
from torchcaffe.layers import Sample, registered_layers
from torchcaffe.proto import caffe_pb2

from .harness import build, run

FLT_MIN = float(np.finfo(np.float32).tiny)
LOG_THRESHOLD = float(np.float32(1e-20))
FULL, VALID, BATCH_SIZE, NONE = (caffe_pb2.LossParameter.FULL, caffe_pb2.LossParameter.VALID,
                                 caffe_pb2.LossParameter.BATCH_SIZE, caffe_pb2.LossParameter.NONE)
RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Every test draws the same values whatever runs before it."""
    global RNG
    RNG = np.random.default_rng(1234)


def loss_run(type_name, params, bottoms, *, tops=None, loss_weights=None, propagate_down=None,
             force_backward=True):
    """One loss layer fed by Input blobs b0.. (tops t0..): data and diffs after forward+backward."""
    sample = Sample(params, bottoms=tuple(np.shape(b) for b in bottoms), tops=tops)
    net = build(type_name, sample, loss_weights=loss_weights, propagate_down=propagate_down,
                force_backward=force_backward)
    return run(net, {f"b{i}": np.asarray(b, dtype=np.float64) for i, b in enumerate(bottoms)})


def assert_net_error(type_name, params, shapes, *needles, tops=None):
    sample = Sample(params, bottoms=tuple(shapes), tops=tops)
    with pytest.raises(NetError) as info:
        net = build(type_name, sample)
        run(net, {f"b{i}": np.zeros(s) for i, s in enumerate(shapes)}, backward=False)
    message = str(info.value)
    for needle in (f'"under_test" ({type_name})',) + needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def normalizer(mode, outer, inner, count):
    return max(1.0, {FULL: outer * inner, VALID: count, BATCH_SIZE: outer, NONE: 1}[mode])


def close(ours, ref, rtol=2e-5, atol=1e-6):
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)


# -- references: straightforward loops over Caffe's formulas ---------------------------------------
def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def softmax_loss_ref(x, label, axis=1, ignore=None, mode=VALID, weight=1.0, floor=FLT_MIN, h=None):
    """SoftmaxWithLoss (h None) or InfogainLoss (h = C x C): loss and bottom-0 diff."""
    outer, classes = math.prod(x.shape[:axis]), x.shape[axis]
    inner = math.prod(x.shape[axis + 1:])
    xs, labels = x.reshape(outer, classes, inner), label.reshape(outer, inner)
    loss, count, grad = 0.0, 0, np.zeros_like(xs)
    for i in range(outer):
        for j in range(inner):
            y = int(labels[i, j])  # static_cast<int>: toward zero
            if ignore is not None and y == ignore:
                continue
            p = softmax(xs[i, :, j])
            if h is None:
                loss -= math.log(max(p[y], floor))
                grad[i, :, j] = p - np.eye(classes)[y]
            else:
                loss -= sum(h[y, k] * math.log(max(p[k], floor)) for k in range(classes))
                grad[i, :, j] = p * h[y].sum() - h[y]
            count += 1
    norm = normalizer(mode, outer, inner, count)
    return loss / norm, grad.reshape(x.shape) * weight / norm


def sigmoid_ce_ref(x, t, ignore=None):
    x, t = x.ravel(), t.ravel()
    loss, count, grad = 0.0, 0, np.zeros_like(x)
    for i in range(x.size):
        if ignore is not None and int(t[i]) == ignore:
            continue
        pos = float(x[i] >= 0)
        loss -= x[i] * (t[i] - pos) - math.log(1 + math.exp(x[i] - 2 * x[i] * pos))
        grad[i] = 1 / (1 + math.exp(-x[i])) - t[i]
        count += 1
    return loss, grad, count


def hinge_ref(x, label, squared=False):
    n = x.shape[0]
    flat = x.reshape(n, -1).copy()
    for i in range(n):
        flat[i, int(label.ravel()[i])] *= -1
    margin = np.maximum(0, 1 + flat)
    loss = (margin ** 2 if squared else margin).sum() / n
    for i in range(n):
        margin[i, int(label.ravel()[i])] *= -1
    grad = 2 * margin / n if squared else np.sign(margin) / n
    return loss, grad.reshape(x.shape)


def contrastive_ref(a, b, y, margin=1.0, legacy=False):
    n = a.shape[0]
    diff = (a - b).reshape(n, -1)
    loss, ga = 0.0, np.zeros_like(diff)
    for i in range(n):
        d = float(diff[i] @ diff[i])
        if int(y.ravel()[i]):
            loss += d
            ga[i] = diff[i] / n
        elif legacy:
            loss += max(margin - d, 0)
            ga[i] = -diff[i] / n if margin - d > 0 else 0
        else:
            dist = math.sqrt(d)
            loss += max(margin - dist, 0) ** 2
            ga[i] = -(margin - dist) / (dist + 1e-4) * diff[i] / n if margin - dist > 0 else 0
    return loss / n / 2, ga.reshape(a.shape)


# -- SoftmaxWithLoss -------------------------------------------------------------------------------
SOFTMAX_CASES = [
    ("", (6, 5), (6,), 1, None, VALID),
    ("loss_param { ignore_label: 2 normalization: VALID }", (2, 4, 3, 3), (2, 1, 3, 3), 1, 2, VALID),
    ("loss_param { ignore_label: 2 normalization: FULL }", (2, 4, 3, 3), (2, 1, 3, 3), 1, 2, FULL),
    ("loss_param { ignore_label: 2 normalization: BATCH_SIZE }", (2, 4, 3, 3), (2, 1, 3, 3), 1, 2, BATCH_SIZE),
    ("loss_param { ignore_label: 2 normalization: NONE }", (2, 4, 3, 3), (2, 1, 3, 3), 1, 2, NONE),
    ("loss_param { normalize: false ignore_label: 0 }", (3, 4, 2), (3, 2), 1, 0, BATCH_SIZE),
    ("loss_param { normalize: true ignore_label: 0 }", (3, 4, 2), (3, 2), 1, 0, VALID),
    ("loss_param { normalize: false normalization: FULL ignore_label: 0 }", (3, 4, 2), (3, 2), 1, 0, FULL),
    ("softmax_param { axis: -1 }", (2, 3, 4), (2, 3), 2, None, VALID),
    ("softmax_param { axis: 2 } loss_param { ignore_label: 1 }", (2, 3, 4, 2), (2, 6), 2, 1, VALID),
]


@pytest.mark.parametrize("params,shape,label_shape,axis,ignore,mode", SOFTMAX_CASES)
def test_softmax_loss_matches_caffe(params, shape, label_shape, axis, ignore, mode):
    x = RNG.standard_normal(shape) * 3
    label = RNG.integers(0, shape[axis], size=label_shape).astype(float)
    got = loss_run("SoftmaxWithLoss", params + " loss_weight: 0.5", [x, label])
    loss, grad = softmax_loss_ref(x, label, axis, ignore, mode, weight=0.5)
    assert got["data/t0"].shape == ()
    close(got["data/t0"], loss)
    close(got["diff/b0"], grad)
    assert not got["diff/b1"].any(), "labels never get a diff"


def test_softmax_loss_labels_truncate_toward_zero():
    x = RNG.standard_normal((4, 3))
    got = loss_run("SoftmaxWithLoss", "loss_param { ignore_label: 0 }", [x, np.array([2.9, 1.2, 0.7, -0.5])])
    loss, grad = softmax_loss_ref(x, np.array([2, 1, 0, 0]), ignore=0)
    close(got["data/t0"], loss)
    close(got["diff/b0"], grad)


def test_softmax_loss_floors_the_log_but_not_the_gradient():
    # p(label) = e^-200 underflows: the loss per target is -log(FLT_MIN) = 87.34, and the gradient
    # is still p - 1 (Caffe's backward ignores the floor; autograd of a clamp would give 0).
    x = np.array([[0.0, 200.0], [0.0, 0.0]])
    got = loss_run("SoftmaxWithLoss", "", [x, np.array([0.0, 0.0])])
    close(got["data/t0"], (-math.log(FLT_MIN) + math.log(2)) / 2)
    close(got["diff/b0"], np.array([[-1.0, 1.0], [-0.5, 0.5]]) / 2)


def test_softmax_loss_all_ignored_gives_zero():
    x = RNG.standard_normal((3, 4))
    got = loss_run("SoftmaxWithLoss", "loss_param { ignore_label: 3 }", [x, np.full(3, 3.0)])
    assert got["data/t0"] == 0 and not got["diff/b0"].any()


def test_softmax_loss_probability_top():
    x = RNG.standard_normal((3, 5))
    label = np.array([0.0, 4.0, 2.0])
    one = loss_run("SoftmaxWithLoss", "", [x, label])
    got = loss_run("SoftmaxWithLoss", "", [x, label], tops=2, loss_weights=[1.0, 0.0])
    close(got["data/t1"], np.stack([softmax(r) for r in x]))
    close(got["data/t0"], one["data/t0"])
    close(got["diff/b0"], one["diff/b0"])
    # Caffe ignores the diff of the probability top: a weight on it changes no gradient.
    weighted = loss_run("SoftmaxWithLoss", "", [x, label], tops=2, loss_weights=[1.0, 3.0])
    close(weighted["diff/b0"], one["diff/b0"])


def test_softmax_loss_two_tops_need_two_loss_weights():
    # Caffe's LossLayer adds one default weight, then SetLossWeights wants one per top.
    assert_net_error("SoftmaxWithLoss", "", [(3, 5), (3,)], "loss_weight", tops=2)


def test_softmax_loss_label_out_of_range():
    sample = Sample("", bottoms=((2, 3), (2,)))
    net = build("SoftmaxWithLoss", sample)
    with pytest.raises(NetError, match=r'"under_test" \(SoftmaxWithLoss\).*label 7 is out of range.*ignore_label'):
        run(net, {"b0": np.zeros((2, 3)), "b1": np.array([1.0, 7.0])}, backward=False)
    ok = loss_run("SoftmaxWithLoss", "loss_param { ignore_label: 255 }", [np.zeros((2, 3)), np.array([1.0, 255.0])])
    close(ok["data/t0"], math.log(3))


def test_softmax_loss_bad_shapes():
    assert_net_error("SoftmaxWithLoss", "", [(2, 3, 4), (2, 3)], "bottom 1", "8 values")
    assert_net_error("SoftmaxWithLoss", "softmax_param { axis: 3 }", [(2, 3, 4), (2, 3)], "softmax_param.axis")
    assert_net_error("SoftmaxWithLoss", "", [(4, 3), (2, 2)], "same first dimension")


# -- EuclideanLoss ---------------------------------------------------------------------------------
def test_euclidean_loss_shapes_may_differ():
    a, b = RNG.standard_normal((3, 4, 1, 1)), RNG.standard_normal((3, 4))
    got = loss_run("EuclideanLoss", "", [a, b])
    diff = a.reshape(3, 4) - b
    close(got["data/t0"], (diff ** 2).sum() / 3 / 2)
    close(got["diff/b0"], diff.reshape(a.shape) / 3)
    close(got["diff/b1"], -diff / 3)


def test_euclidean_loss_bad_shapes():
    assert_net_error("EuclideanLoss", "", [(4, 3), (4, 2)], "same number of values per sample")
    assert_net_error("EuclideanLoss", "", [(4, 3), (2, 6)], "same first dimension")
    assert_net_error("EuclideanLoss", "", [(2, 1, 1, 1, 3), (2, 3)], "at most 4 axes")


SEED004_NET = """
force_backward: {force}
layer {{ name: "a" type: "Input" top: "a" input_param {{ shape {{ dim: 5 dim: 4 }} }} }}
layer {{ name: "b" type: "Input" top: "b" input_param {{ shape {{ dim: 5 dim: 4 }} }} }}
{middle}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "{pred}" bottom: "{target}" top: "loss" {extra} }}
"""
SEED004_IPS = """
layer { name: "ipa" type: "InnerProduct" bottom: "a" top: "pred"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ipb" type: "InnerProduct" bottom: "b" top: "label"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
"""
needs_inner_product = pytest.mark.skipif("InnerProduct" not in registered_layers(),
                                         reason="needs InnerProduct (utility family)")


def _seed004(extra, force=False, ips=False):
    text = SEED004_NET.format(force=str(force).lower(), extra=extra, middle=SEED004_IPS if ips else "",
                              pred="pred" if ips else "a", target="label" if ips else "b")
    net = torchcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), torchcaffe.TRAIN)
    net.blobs["a"].data[...] = RNG.standard_normal((5, 4))
    net.blobs["b"].data[...] = RNG.standard_normal((5, 4))
    out = net.forward()
    net.clear_param_diffs()
    net.backward()
    return net, out["loss"]


def test_seed004_euclidean_loss_signs_and_loss_weight():
    """Seed 004: loss = dot(a-b, a-b) / 2N; bottom 0 gets +(a-b)/N and bottom 1 -(a-b)/N, both
    times loss_weight (the loss blob itself stays unweighted)."""
    for weight in (1.0, 0.25):
        net, loss = _seed004(f"loss_weight: {weight}", force=True)
        diff = net.blobs["a"].data.astype(np.float64) - net.blobs["b"].data
        close(loss, (diff * diff).sum() / 5 / 2)
        close(net.blobs["a"].diff, weight * diff / 5)
        close(net.blobs["b"].diff, -weight * diff / 5)


@needs_inner_product
@pytest.mark.parametrize("force", [False, True])
def test_seed004_propagate_down_false_stops_the_second_bottom(force):
    """Seed 004: ``propagate_down: true propagate_down: false`` leaves the second bottom (and the
    layer producing it) without gradient; force_backward overrides propagate_down in Caffe."""
    net, _ = _seed004("loss_weight: 0.25 propagate_down: true propagate_down: false", force=force, ips=True)
    diff = net.blobs["pred"].data.astype(np.float64) - net.blobs["label"].data
    close(net.blobs["pred"].diff, 0.25 * diff / 5)
    close(net.params["ipa"][0].diff, (0.25 * diff / 5).T @ net.blobs["a"].data, rtol=1e-4, atol=1e-5)
    if force:
        close(net.blobs["label"].diff, -0.25 * diff / 5)
    else:
        assert not net.blobs["label"].diff.any()
        assert not any(p.diff.any() for p in net.params["ipb"]), "ipb gets no param diff"


@needs_inner_product
def test_seed004_lr_mult_zero_still_backprops():
    """Seed 004: lr_mult 0 on a layer's params gives them no diff, yet the gradient flows through
    the layer to the layers below (propagate_down is what stops it)."""
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 5 } } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
            inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y" param { lr_mult: 0 } param { lr_mult: 0 }
            inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                                  bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" loss_weight: 2 }
    """
    net = torchcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), torchcaffe.TRAIN)
    x, t = RNG.standard_normal((4, 5)), RNG.standard_normal((4, 3))
    net.blobs["x"].data[...] = x
    net.blobs["t"].data[...] = t
    net.forward()
    net.clear_param_diffs()
    net.backward()
    w1, b1 = (p.data.astype(np.float64) for p in net.params["ip1"])
    w2, b2 = (p.data.astype(np.float64) for p in net.params["ip2"])
    h = x @ w1.T + b1
    dy = 2 * (h @ w2.T + b2 - t) / 4
    dh = dy @ w2
    assert not any(p.diff.any() for p in net.params["ip2"]), "lr_mult 0: no param diff"
    close(net.params["ip1"][0].diff, dh.T @ x, rtol=1e-4, atol=1e-5)
    close(net.params["ip1"][1].diff, dh.sum(0), rtol=1e-4, atol=1e-5)
    close(net.blobs["h"].diff, dh, rtol=1e-4, atol=1e-5)


# -- SigmoidCrossEntropyLoss -----------------------------------------------------------------------
SIGMOID_CASES = [
    ("", None, BATCH_SIZE),
    ("loss_param { normalize: true }", None, VALID),
    ("loss_param { normalize: false }", None, BATCH_SIZE),
    ("loss_param { ignore_label: -1 }", -1, BATCH_SIZE),
    ("loss_param { ignore_label: -1 normalization: VALID }", -1, VALID),
    ("loss_param { ignore_label: -1 normalization: FULL }", -1, FULL),
    ("loss_param { ignore_label: -1 normalization: NONE normalize: true }", -1, NONE),
]


@pytest.mark.parametrize("params,ignore,mode", SIGMOID_CASES)
def test_sigmoid_cross_entropy_matches_caffe(params, ignore, mode):
    x = RNG.standard_normal((3, 2, 4)) * 4
    x[0, 0, :2] = (60.0, -60.0)  # the stable formula
    t = RNG.choice([-1.0, 0.0, 0.3, 1.0], size=(3, 8))
    got = loss_run("SigmoidCrossEntropyLoss", params + " loss_weight: 2", [x, t])
    loss, grad, count = sigmoid_ce_ref(x, t, ignore)
    norm = normalizer(mode, 3, 8, count)
    close(got["data/t0"], loss / norm)
    close(got["diff/b0"], 2 * grad.reshape(x.shape) / norm)
    assert not got["diff/b1"].any()


def test_sigmoid_cross_entropy_ignores_by_truncated_target():
    x = RNG.standard_normal((2, 3))
    t = np.array([[0.7, 1.0, 0.0], [-0.4, 0.2, 1.0]])  # int(0.7) == int(-0.4) == int(0.2) == 0
    got = loss_run("SigmoidCrossEntropyLoss", "loss_param { ignore_label: 0 normalization: VALID }", [x, t])
    loss, grad, count = sigmoid_ce_ref(x, t, ignore=0)
    assert count == 2
    close(got["data/t0"], loss / 2)
    close(got["diff/b0"], grad.reshape(x.shape) / 2)


def test_sigmoid_cross_entropy_bad_shapes():
    assert_net_error("SigmoidCrossEntropyLoss", "", [(3, 4), (3, 5)], "as many values")


# -- HingeLoss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 1, 2)])
def test_hinge_loss_matches_caffe(norm, shape):
    x = RNG.standard_normal(shape)
    dim = math.prod(shape[1:])
    label = RNG.integers(0, dim, size=shape[0]).astype(float)
    got = loss_run("HingeLoss", f"hinge_loss_param {{ norm: {norm} }} loss_weight: 3", [x, label])
    loss, grad = hinge_ref(x, label, squared=norm == "L2")
    close(got["data/t0"], loss)
    close(got["diff/b0"], 3 * grad)


def test_hinge_loss_kinks_have_zero_gradient():
    x = np.array([[1.0, -1.0, 0.5]])  # true class 0 at 1 - x = 0; class 1 at 1 + x = 0
    got = loss_run("HingeLoss", "", [x, np.array([0.0])])
    close(got["data/t0"], 1.5)
    close(got["diff/b0"], np.array([[0.0, 0.0, 1.0]]))


def test_hinge_loss_errors():
    sample = Sample("", bottoms=((2, 3), (2,)))
    net = build("HingeLoss", sample)
    with pytest.raises(NetError, match=r'\(HingeLoss\).*label 3 is out of range'):
        run(net, {"b0": np.zeros((2, 3)), "b1": np.array([0.0, 3.0])}, backward=False)
    assert_net_error("HingeLoss", "", [(2, 1, 1, 1, 3), (2,)], "at most 4 axes")


# -- MultinomialLogisticLoss -----------------------------------------------------------------------
def test_multinomial_logistic_loss_matches_caffe():
    p = RNG.uniform(0.05, 1, size=(4, 2, 1, 2))
    label = np.array([0.0, 3.0, 1.0, 2.0])
    p[2, 0, 0, 1] = 0.0  # below the 1e-20 floor
    got = loss_run("MultinomialLogisticLoss", "loss_weight: 0.5", [p, label])
    flat, loss = p.reshape(4, 4), 0.0
    grad = np.zeros_like(flat)
    for i in range(4):
        prob = max(flat[i, int(label[i])], LOG_THRESHOLD)
        loss -= math.log(prob)
        grad[i, int(label[i])] = -0.5 / 4 / prob  # Caffe keeps the floor in the backward
    close(got["data/t0"], loss / 4)
    close(got["diff/b0"], grad.reshape(p.shape))
    assert got["diff/b0"][2, 0, 0, 1] < -1e18


def test_multinomial_logistic_loss_errors():
    assert_net_error("MultinomialLogisticLoss", "", [(4, 3), (4, 2)], "one label per sample")
    sample = Sample("", bottoms=((2, 3), (2,)))
    net = build("MultinomialLogisticLoss", sample)
    with pytest.raises(NetError, match=r"label -1 is out of range"):
        run(net, {"b0": np.ones((2, 3)), "b1": np.array([0.0, -1.0])}, backward=False)


# -- ContrastiveLoss -------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_matches_caffe(legacy):
    a, b = RNG.uniform(-0.6, 0.6, size=(8, 3)), RNG.uniform(-0.6, 0.6, size=(8, 3))
    b[3] = a[3]  # a dissimilar pair at distance 0: Caffe's (dist + 1e-4) keeps it finite
    y = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 0.5, 0.0, -1.0])  # int(): 0.5 -> 0 (dissimilar)
    params = f"contrastive_loss_param {{ margin: 1.2 legacy_version: {str(legacy).lower()} }} loss_weight: 2"
    got = loss_run("ContrastiveLoss", params, [a, b, y])
    loss, ga = contrastive_ref(a, b, y, margin=1.2, legacy=legacy)
    close(got["data/t0"], loss)
    close(got["diff/b0"], 2 * ga)
    close(got["diff/b1"], -2 * ga)
    assert np.isfinite(got["diff/b0"]).all()
    assert not got["diff/b2"].any(), "force_backward never reaches the similarity labels"


def test_contrastive_loss_gradient_is_caffes_not_exact():
    # dist = 0.01, margin 1: exact factor 1/dist = 100, Caffe's 1/(dist + 1e-4) = 99.01.
    a, b = np.array([[0.01, 0.0]]), np.zeros((1, 2))
    got = loss_run("ContrastiveLoss", "", [a, b, np.zeros(1)])
    close(got["diff/b0"][0, 0], -(1 - 0.01) / (0.01 + 1e-4) * 0.01, rtol=1e-5)


def test_contrastive_loss_bad_shapes():
    assert_net_error("ContrastiveLoss", "", [(4, 3), (4, 2), (4,)], "same C")
    assert_net_error("ContrastiveLoss", "", [(4, 3, 2, 1), (4, 3, 2, 1), (4,)], "bottoms 0 and 1")
    assert_net_error("ContrastiveLoss", "", [(4, 3), (4, 3), (4, 2)], "bottom 2")


# -- InfogainLoss ----------------------------------------------------------------------------------
@pytest.mark.parametrize("params,ignore,mode", [
    ("", None, VALID),
    ("loss_param { ignore_label: 1 }", 1, VALID),
    ("loss_param { ignore_label: 1 normalization: FULL }", 1, FULL),
    ("loss_param { normalization: BATCH_SIZE }", None, BATCH_SIZE),
    ("loss_param { normalization: NONE }", None, NONE),
])
def test_infogain_loss_matches_caffe(params, ignore, mode):
    x = RNG.standard_normal((2, 3, 2, 2)) * 3
    x[0, :, 0, 0] = (60.0, 0.0, 0.0)  # p below 1e-20: floored in the loss, not in the gradient
    label = RNG.integers(0, 3, size=(2, 1, 2, 2)).astype(float)
    label[0, 0, 0, 0] = 1.0
    h = RNG.uniform(0, 2, size=(3, 3))
    got = loss_run("InfogainLoss", params + " loss_weight: 1.5", [x, label, h.reshape(1, 1, 3, 3)])
    loss, grad = softmax_loss_ref(x, label, 1, ignore, mode, weight=1.5, floor=LOG_THRESHOLD, h=h)
    close(got["data/t0"], loss)
    close(got["diff/b0"], grad)
    assert not got["diff/b1"].any() and not got["diff/b2"].any(), "no gradient to labels or H"


def test_infogain_loss_reads_h_from_source(tmp_path):
    h = RNG.uniform(0, 2, size=(1, 1, 4, 4)).astype(np.float32)
    path = tmp_path / "H.binaryproto"
    write_blobproto(path, h)
    x, label = RNG.standard_normal((3, 4)), np.array([0.0, 3.0, 2.0])
    from_file = loss_run("InfogainLoss", f'infogain_loss_param {{ source: "{path}" }}', [x, label])
    from_bottom = loss_run("InfogainLoss", "", [x, label, h])
    loss, grad = softmax_loss_ref(x, label, floor=LOG_THRESHOLD, h=h.reshape(4, 4).astype(float))
    close(from_file["data/t0"], loss)
    close(from_file["diff/b0"], grad)
    close(from_bottom["diff/b0"], from_file["diff/b0"])


def test_infogain_loss_identity_is_softmax_loss():
    x, label = RNG.standard_normal((5, 3)), np.array([0.0, 1.0, 2.0, 1.0, 0.0])
    info = loss_run("InfogainLoss", "", [x, label, np.eye(3)], tops=2, loss_weights=[1.0, 0.0])
    soft = loss_run("SoftmaxWithLoss", "", [x, label])
    close(info["data/t0"], soft["data/t0"])
    close(info["diff/b0"], soft["diff/b0"])
    close(info["data/t1"], np.stack([softmax(r) for r in x]))


def test_infogain_loss_errors(tmp_path):
    assert_net_error("InfogainLoss", "", [(3, 4), (3,)], "infogain_loss_param", "source")
    missing = tmp_path / "nope.binaryproto"
    assert_net_error("InfogainLoss", f'infogain_loss_param {{ source: "{missing}" }}', [(3, 4), (3,)],
                     "infogain_loss_param.source", "nope.binaryproto")
    assert_net_error("InfogainLoss", "loss_param { normalize: true }", [(3, 4), (3,), (4, 4)], "normalize")
    assert_net_error("InfogainLoss", "", [(3, 4), (3,), (3, 3)], "4 x 4")
    assert_net_error("InfogainLoss", "", [(3, 4), (2,), (4, 4)], "same first dimension")


# -- every loss layer -----------------------------------------------------------------------------
LOSS_TYPES = ["SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
              "MultinomialLogisticLoss", "ContrastiveLoss"]


@pytest.mark.parametrize("type_name", LOSS_TYPES)
def test_loss_top_is_a_0_axis_scalar_with_default_weight_1(type_name):
    sample = registered_layers()[type_name].samples[0]
    net = build(type_name, sample)
    assert net.blobs["t0"].shape == ()
    assert net.blob_loss_weights["t0"] == 1.0
    assert registered_layers()[type_name].is_loss


def test_unnamed_loss_top_still_counts():
    text = """
    force_backward: true
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "y" }
    """
    net = torchcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), torchcaffe.TRAIN)
    net.blobs["x"].data[...] = 1.0
    net.forward()
    net.backward()
    close(net.blobs["x"].diff, np.full((2, 3), 0.5))
