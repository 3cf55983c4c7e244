"""SSD's layers (weiliu89/caffe, branch ssd) and the two forks' SmoothL1Loss.

The references below are straightforward loop implementations of the forks' CPU code, written
from bbox_util.cpp, prior_box_layer.cpp, normalize_layer.cpp, detection_output_layer.cpp,
multibox_loss_layer.cpp and the two smooth_L1_loss_layer files: one box, one prior, one class at
a time, with float32 scalars where the fork computes in ``float`` (its ``NormalizedBBox``). They
share no code with ``torchcaffe/layers/detection.py``. The MultiBoxLoss reference also computes
the fork's *backward* by hand (the internal SmoothL1 / Softmax layers' diffs copied back), which
the autograd gradient must equal.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe import NetError

from .harness import expect_error, make_layer

RNG = np.random.default_rng(2024)
f32 = np.float32
FLT_MIN = float(np.finfo(np.float32).tiny)
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ================================================================================================
# Box references (bbox_util.cpp, one box at a time)
# ================================================================================================
def ref_size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return f32(0)
    return f32(f32(b[2] - b[0]) * f32(b[3] - b[1]))


def ref_jaccard(b1, b2):
    if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
        inter = [f32(0)] * 4
    else:
        inter = [max(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), min(b1[3], b2[3])]
    w, h = f32(inter[2] - inter[0]), f32(inter[3] - inter[1])
    if w > 0 and h > 0:
        i = f32(w * h)
        return f32(i / f32(f32(ref_size(b1) + ref_size(b2)) - i))
    return f32(0)


def ref_decode(p, v, l, code, vit):
    p, v, l = [f32(x) for x in p], [f32(x) for x in v], [f32(x) for x in l]
    if code == CORNER:
        return [f32(p[k] + (l[k] if vit else f32(v[k] * l[k]))) for k in range(4)]
    pw, ph = f32(p[2] - p[0]), f32(p[3] - p[1])
    if code == CENTER_SIZE:
        pcx, pcy = f32((p[0] + p[2]) / f32(2)), f32((p[1] + p[3]) / f32(2))
        if vit:
            cx, cy = f32(f32(l[0] * pw) + pcx), f32(f32(l[1] * ph) + pcy)
            w, h = f32(f32(np.exp(l[2])) * pw), f32(f32(np.exp(l[3])) * ph)
        else:
            cx, cy = f32(f32(f32(v[0] * l[0]) * pw) + pcx), f32(f32(f32(v[1] * l[1]) * ph) + pcy)
            w, h = f32(f32(np.exp(f32(v[2] * l[2]))) * pw), f32(f32(np.exp(f32(v[3] * l[3]))) * ph)
        return [f32(cx - w / 2), f32(cy - h / 2), f32(cx + w / 2), f32(cy + h / 2)]
    scale = [pw, ph, pw, ph]
    return [f32(p[k] + f32((l[k] if vit else f32(v[k] * l[k])) * scale[k])) for k in range(4)]


def ref_encode(p, v, g, code, vit):
    p, v, g = [f32(x) for x in p], [f32(x) for x in v], [f32(x) for x in g]
    if code == CORNER:
        return [f32(g[k] - p[k]) if vit else f32(f32(g[k] - p[k]) / v[k]) for k in range(4)]
    pw, ph = f32(p[2] - p[0]), f32(p[3] - p[1])
    if code == CENTER_SIZE:
        pcx, pcy = f32((p[0] + p[2]) / f32(2)), f32((p[1] + p[3]) / f32(2))
        gw, gh = f32(g[2] - g[0]), f32(g[3] - g[1])
        gcx, gcy = f32((g[0] + g[2]) / f32(2)), f32((g[1] + g[3]) / f32(2))
        out = [f32(f32(gcx - pcx) / pw), f32(f32(gcy - pcy) / ph), f32(np.log(f32(gw / pw))), f32(np.log(f32(gh / ph)))]
    else:
        scale = [pw, ph, pw, ph]
        out = [f32(f32(g[k] - p[k]) / scale[k]) for k in range(4)]
    return out if vit else [f32(out[k] / v[k]) for k in range(4)]


def ref_nms_fast(boxes, scores, score_thr, nms_thr, eta, top_k):
    pairs = [(f32(s), i) for i, s in enumerate(scores) if f32(s) > f32(score_thr)]
    pairs = sorted(pairs, key=lambda p: -p[0])  # Python's sort is stable, like std::stable_sort
    if top_k > -1:
        pairs = pairs[:top_k]
    thr, kept = f32(nms_thr), []
    for _, idx in pairs:
        keep = all(ref_jaccard(boxes[idx], boxes[k]) <= thr for k in kept)
        if keep:
            kept.append(idx)
            if eta < 1 and thr > 0.5:
                thr = f32(thr * f32(eta))
    return kept


# ================================================================================================
# PriorBox
# ================================================================================================
def ref_prior_box(layer_hw, img_hw, min_sizes, max_sizes=(), ars=(), flip=True, clip=False, variance=(),
                  step=None, offset=0.5):
    """prior_box_layer.cpp's loops: float32 centres and sides, double coordinates, then Dtype."""
    lh, lw = layer_hw
    ih, iw = img_hw
    ratios = [f32(1)]
    for r in ars:
        r = f32(r)
        if any(abs(float(f32(r - a))) < 1e-6 for a in ratios):
            continue
        ratios.append(r)
        if flip:
            ratios.append(f32(1.0 / float(r)))
    if step is None:
        sw, sh = f32(f32(iw) / f32(lw)), f32(f32(ih) / f32(lh))
    else:
        sh, sw = f32(step[0]), f32(step[1])
    out = []
    for h in range(lh):
        for w in range(lw):
            cx, cy = float(f32(f32(f32(w) + f32(offset)) * sw)), float(f32(f32(f32(h) + f32(offset)) * sh))

            def add(bw, bh):
                bw, bh = float(f32(bw)), float(f32(bh))
                out.extend([(cx - bw / 2.) / iw, (cy - bh / 2.) / ih, (cx + bw / 2.) / iw, (cy + bh / 2.) / ih])

            for s, m in enumerate(min_sizes):
                m = int(f32(m))
                add(m, m)
                if max_sizes:
                    mx = int(f32(max_sizes[s]))
                    add(math.sqrt(m * mx), math.sqrt(m * mx))
                for r in ratios:
                    if abs(float(r) - 1.) < 1e-6:
                        continue
                    add(m * math.sqrt(float(r)), m / math.sqrt(float(r)))
    boxes = np.asarray(out, dtype=np.float32)
    if clip:
        boxes = np.clip(boxes, 0, 1)
    var = [f32(v) for v in variance] or [f32(0.1)]
    variances = np.asarray([var[k % len(var)] if len(var) == 4 else var[0] for k in range(boxes.size)], np.float32)
    return np.stack([boxes, variances])[None]


PRIOR_CASES = [
    # (prototxt, feature shape, image shape, reference kwargs)
    ("min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 "
     "variance: 0.2 step: 8 offset: 0.5", (1, 2, 3, 3), (1, 3, 300, 300),
     dict(min_sizes=[30], max_sizes=[60], ars=[2], variance=[.1, .1, .2, .2], step=(8, 8))),
    ("min_size: 7 aspect_ratio: 2 aspect_ratio: 3 clip: true", (2, 1, 2, 3), (2, 3, 10, 13),
     dict(min_sizes=[7], ars=[2, 3], clip=True)),
    ("min_size: 5.7 min_size: 9 max_size: 8.9 max_size: 12 aspect_ratio: 2 aspect_ratio: 0.5 flip: false variance: 0.3",
     (1, 4, 2, 2), (1, 3, 17, 31),
     dict(min_sizes=[5.7, 9], max_sizes=[8.9, 12], ars=[2, .5], flip=False, variance=[.3])),
    ("min_size: 20 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 1 aspect_ratio: 2.0000001 flip: true offset: 0",
     (1, 1, 2, 2), (1, 1, 40, 40), dict(min_sizes=[20], ars=[2, .5, 1, 2.0000001], offset=0)),
    ("min_size: 60.0 max_size: 150.0 aspect_ratio: 2.0 aspect_ratio: 3.0 flip: true clip: false variance: 0.1 "
     "variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5", (1, 1, 10, 10), (1, 3, 300, 300),
     dict(min_sizes=[60], max_sizes=[150], ars=[2, 3], variance=[.1, .1, .2, .2])),
]


@pytest.mark.parametrize("params,feature,image,kwargs", PRIOR_CASES)
def test_prior_box_matches_the_fork_loops(params, feature, image, kwargs):
    layer = make_layer("PriorBox", f"prior_box_param {{ {params} }}", feature, image)
    top = layer(torch.zeros(feature), torch.zeros(image)).numpy()
    ref = ref_prior_box(feature[2:], image[2:], **kwargs)
    assert top.shape == ref.shape
    np.testing.assert_array_equal(top, ref)


def test_prior_box_order_and_values_of_the_first_cell():
    """SSD300 conv4_3: per cell min square, sqrt(min*max) square, then ratio 2 and its flip 1/2."""
    layer = make_layer("PriorBox", "prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 step: 8 }",
                       (1, 1, 38, 38), (1, 3, 300, 300))
    top = layer(torch.zeros(1, 1, 38, 38), torch.zeros(1, 3, 300, 300))
    assert top.shape == (1, 2, 38 * 38 * 4 * 4)
    first = top[0, 0, :16].reshape(4, 4).double().numpy()
    c, big, w = 4.0, math.sqrt(1800), 30 * math.sqrt(2)
    expect = [[c - 15, c - 15, c + 15, c + 15], [c - big / 2, c - big / 2, c + big / 2, c + big / 2],
              [c - w / 2, c - w / 4, c + w / 2, c + w / 4], [c - w / 4, c - w / 2, c + w / 4, c + w / 2]]
    np.testing.assert_allclose(first, np.asarray(expect) / 300, rtol=1e-6)
    np.testing.assert_allclose(top[0, 1].numpy(), 0.1)  # no variance given: 0.1 everywhere


def test_prior_box_truncates_sizes_to_integers_and_uses_explicit_sizes():
    """The fork stores min_size in an int: 5.7 behaves as 5. img_h/img_w and step_h/step_w replace the
    image bottom and the computed steps (one bottom is then enough)."""
    a = make_layer("PriorBox", "prior_box_param { min_size: 5.7 img_size: 20 step: 4 }", (1, 1, 2, 2))
    b = make_layer("PriorBox", "prior_box_param { min_size: 5 img_h: 20 img_w: 20 step_h: 4 step_w: 4 }",
                   (1, 1, 2, 2))
    ta, tb = a(torch.zeros(1, 1, 2, 2)), b(torch.zeros(1, 1, 2, 2))
    np.testing.assert_array_equal(ta.numpy(), tb.numpy())
    np.testing.assert_allclose(ta[0, 0, :4].numpy(), [(2 - 2.5) / 20, (2 - 2.5) / 20, 4.5 / 20, 4.5 / 20], rtol=1e-6)
    c = make_layer("PriorBox", "prior_box_param { min_size: 3 img_h: 8 img_w: 16 step_h: 2 step_w: 5 offset: 0.25 }",
                   (1, 1, 1, 2))
    np.testing.assert_allclose(c(torch.zeros(1, 1, 1, 2))[0, 0].numpy(),
                               np.asarray(ref_prior_box((1, 2), (8, 16), [3], step=(2, 5), offset=0.25))[0, 0])


def test_prior_box_is_float64_in_a_double_net():
    layer = make_layer("PriorBox", "prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 step: 8 }",
                       (1, 1, 2, 2), (1, 3, 300, 300)).double()
    top = layer(torch.zeros(1, 1, 2, 2, dtype=torch.float64), torch.zeros(1, 3, 300, 300, dtype=torch.float64))
    assert top.dtype == torch.float64
    np.testing.assert_allclose(top[0, 0, 0].item(), (4 - 15) / 300, rtol=1e-15)  # double, not rounded to float


@pytest.mark.parametrize("params,words", [
    ("", ["min_size", "required"]),
    ("min_size: 0", ["min_size", "positive"]),
    ("min_size: 10 max_size: 10", ["max_size", "greater"]),
    ("min_size: 10 min_size: 20 max_size: 30", ["max_size", "one max_size per min_size"]),
    ("min_size: 10 variance: 0.1 variance: 0.2", ["variance", "four"]),
    ("min_size: 10 variance: 0", ["variance", "positive"]),
    ("min_size: 10 img_size: 30 img_h: 30 img_w: 30", ["img_size", "not both"]),
    ("min_size: 10 img_h: 30", ["img_h", "img_w"]),
    ("min_size: 10 step: 8 step_h: 8 step_w: 8", ["step", "not both"]),
    ("min_size: 10 width: 3 height: 4", ["width", "OpenCV"]),
])
def test_prior_box_refuses_bad_parameters(params, words):
    expect_error(['"L" (PriorBox)', *words], make_layer, "PriorBox", f"prior_box_param {{ {params} }}",
                 (1, 1, 2, 2), (1, 3, 8, 8))


def test_prior_box_needs_the_image_or_its_size():
    expect_error(["bottom 1", "img_size"], make_layer, "PriorBox", "prior_box_param { min_size: 4 }", (1, 1, 2, 2))


# ================================================================================================
# Normalize
# ================================================================================================
def ref_normalize(x, across, scale, eps):
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    out = np.empty_like(flat)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (c,))
    for i in range(n):
        if across:
            norm = math.sqrt(sum(v * v for v in flat[i].ravel()) + eps)
            out[i] = flat[i] / norm
        else:
            for k in range(flat.shape[2]):
                norm = math.sqrt(sum(flat[i, ch, k] ** 2 for ch in range(c)) + eps)
                out[i, :, k] = flat[i, :, k] / norm
        out[i] *= s[:, None]
    return out.reshape(x.shape)


@pytest.mark.parametrize("across,shared,shape,eps", [
    (True, True, (2, 3, 4, 3), 1e-10), (False, False, (2, 4, 3, 2), 1e-10), (True, False, (1, 3, 2, 2), 0.3),
    (False, True, (3, 5), 1e-10), (False, False, (2, 3, 5), 2.0)])
def test_normalize_matches_the_fork(across, shared, shape, eps):
    params = (f"norm_param {{ across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} eps: {eps} "
              f"scale_filler {{ type: 'uniform' min: 0.5 max: 3 }} }}")
    layer = make_layer("Normalize", params, shape, seed=3).double()
    x = RNG.standard_normal(shape)
    top = layer(t64(x)).detach().numpy()
    np.testing.assert_allclose(top, ref_normalize(x, across, layer.scale.detach().numpy(), float(f32(eps))), rtol=1e-12)
    assert tuple(layer.scale.shape) == (() if shared else (shape[1],))


def test_normalize_eps_is_inside_the_square_root():
    layer = make_layer("Normalize", "norm_param { eps: 0.5 }", (1, 1, 1, 1))
    np.testing.assert_allclose(layer(torch.tensor([[[[1.0]]]])).item(), 1 / math.sqrt(1.5), rtol=1e-6)


def test_normalize_default_scale_is_one_and_ssd_fills_twenty():
    a = make_layer("Normalize", "", (1, 3, 2, 2))
    b = make_layer("Normalize", "norm_param { across_spatial: false channel_shared: false "
                   "scale_filler { type: 'constant' value: 20 } }", (1, 3, 2, 2))
    assert a.scale.item() == 1.0 and b.scale.tolist() == [20.0] * 3


def test_normalize_gradient_is_the_forks_backward():
    """normalize_layer.cpp Backward_cpu (across_spatial): (top_diff - x * (x . top_diff) / norm^2) / norm * scale."""
    params = "norm_param { scale_filler { type: 'constant' value: 2.5 } }"
    layer = make_layer("Normalize", params, (2, 3, 2, 2)).double()
    x, g = RNG.standard_normal((2, 3, 2, 2)), RNG.standard_normal((2, 3, 2, 2))
    xt = t64(x, True)
    top = layer(xt)
    top.backward(t64(g))
    for i in range(2):
        norm = math.sqrt((x[i] ** 2).sum() + 1e-10)
        a = (x[i] * g[i]).sum()
        want = (g[i] - x[i] * a / norm / norm) / norm * 2.5
        np.testing.assert_allclose(xt.grad[i].numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(layer.scale.grad.item(), (top.detach().numpy() * g).sum() / 2.5, rtol=1e-10)


def test_normalize_refuses_one_axis():
    expect_error(['"L" (Normalize)', "2 axes"], make_layer, "Normalize", "", (5,))


# ================================================================================================
# Permute
# ================================================================================================
@pytest.mark.parametrize("order,shape,full", [([0, 2, 3, 1], (2, 3, 4, 5), [0, 2, 3, 1]),
                                              ([0, 2], (2, 3, 4, 2), [0, 2, 1, 3]),
                                              ([3], (1, 2, 3, 4), [3, 0, 1, 2]), ([], (2, 3), [0, 1])])
def test_permute_matches_numpy_transpose(order, shape, full):
    params = "permute_param { " + " ".join(f"order: {o}" for o in order) + " }"
    layer = make_layer("Permute", params, shape)
    x = RNG.standard_normal(shape)
    xt = t64(x, True)
    top = layer(xt)
    np.testing.assert_array_equal(top.detach().numpy(), np.transpose(x, full))
    g = RNG.standard_normal(top.shape)
    top.backward(t64(g))
    np.testing.assert_array_equal(xt.grad.numpy(), np.transpose(g, np.argsort(full)))
    if full == list(range(len(shape))):
        assert top is xt  # the fork shares the data when nothing moves


@pytest.mark.parametrize("order,words", [([0, 4], ["order 4", "out of range"]), ([1, 1], ["order 1", "twice"])])
def test_permute_refuses_bad_orders(order, words):
    params = "permute_param { " + " ".join(f"order: {o}" for o in order) + " }"
    expect_error(['"L" (Permute)', "permute_param", *words], make_layer, "Permute", params, (2, 3, 4, 5))


# ================================================================================================
# DetectionOutput
# ================================================================================================
def ref_detection_output(loc, conf, prior, num_classes, share=True, bg=0, code=CORNER, vit=False, keep_top_k=-1,
                         conf_thr=None, nms=0.3, top_k=-1, eta=1.0, clip=False):
    """detection_output_layer.cpp Forward_cpu, box by box."""
    n = loc.shape[0]
    p = prior.size // 8
    boxes_p, var_p = prior.reshape(-1)[:4 * p].reshape(p, 4), prior.reshape(-1)[4 * p:8 * p].reshape(p, 4)
    lc = 1 if share else num_classes
    locs = loc.reshape(n, p, lc, 4)
    confs = conf.reshape(n, p, num_classes)
    thr = -np.finfo(np.float32).max if conf_thr is None else conf_thr
    rows = []
    for i in range(n):
        decoded = {}
        for c in range(lc):
            label = -1 if share else c
            if not share and label == bg:
                continue
            bs = [ref_decode(boxes_p[j], var_p[j], locs[i, j, c], code, vit) for j in range(p)]
            decoded[label] = [[min(max(v, f32(0)), f32(1)) for v in b] for b in bs] if clip else bs
        indices = {}
        for c in range(num_classes):
            if c == bg:
                continue
            indices[c] = ref_nms_fast(decoded[-1 if share else c], confs[i, :, c], thr, nms, eta, top_k)
        num_det = sum(len(v) for v in indices.values())
        if keep_top_k > -1 and num_det > keep_top_k:
            pairs = [(f32(confs[i, j, c]), c, j) for c in sorted(indices) for j in indices[c]]
            pairs = sorted(pairs, key=lambda t: -t[0])[:keep_top_k]
            new = {}
            for _, c, j in pairs:
                new.setdefault(c, []).append(j)
            indices = new
        for c in sorted(indices):
            for j in indices[c]:
                rows.append([i, c, f32(confs[i, j, c]), *decoded[-1 if share else c][j]])
    if not rows:
        rows = [[i, -1, -1, -1, -1, -1, -1] for i in range(n)]
    return np.asarray(rows, dtype=np.float32).reshape(1, 1, -1, 7)


def random_priors(p, rng=RNG):
    centre = rng.uniform(0.1, 0.9, size=(p, 2))
    size = rng.uniform(0.1, 0.5, size=(p, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (p, 1))
    return np.stack([boxes.reshape(-1), var.reshape(-1)])[None].astype(np.float32)


def softmax_scores(n, p, c, rng=RNG):
    x = rng.standard_normal((n, p, c)) * 2
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).reshape(n, p * c).astype(np.float32)


def run_detection(params, loc, conf, prior, *extra):
    layer = make_layer("DetectionOutput", f"detection_output_param {{ {params} }}",
                       loc.shape, conf.shape, prior.shape, *[e.shape for e in extra])
    return layer(*[torch.tensor(a) for a in (loc, conf, prior, *extra)]).numpy()


DETECTION_CASES = [
    ("num_classes: 4 nms_param { nms_threshold: 0.45 top_k: 20 } code_type: CENTER_SIZE keep_top_k: 10 "
     "confidence_threshold: 0.05", dict(num_classes=4, code=CENTER_SIZE, nms=0.45, top_k=20, keep_top_k=10,
                                        conf_thr=0.05), 2, 30, True),
    ("num_classes: 3 code_type: CENTER_SIZE variance_encoded_in_target: true nms_param { nms_threshold: 0.3 }",
     dict(num_classes=3, code=CENTER_SIZE, vit=True), 1, 25, True),
    ("num_classes: 3 code_type: CORNER", dict(num_classes=3, code=CORNER), 2, 20, True),
    ("num_classes: 3 code_type: CORNER variance_encoded_in_target: true keep_top_k: 7",
     dict(num_classes=3, code=CORNER, vit=True, keep_top_k=7), 2, 20, True),
    ("num_classes: 3 code_type: CORNER_SIZE nms_param { nms_threshold: 0.5 top_k: 6 }",
     dict(num_classes=3, code=CORNER_SIZE, nms=0.5, top_k=6), 1, 20, True),
    ("num_classes: 3 code_type: CORNER_SIZE variance_encoded_in_target: true",
     dict(num_classes=3, code=CORNER_SIZE, vit=True), 1, 20, True),
    ("num_classes: 4 share_location: false background_label_id: 2 code_type: CENTER_SIZE keep_top_k: 12",
     dict(num_classes=4, share=False, bg=2, code=CENTER_SIZE, keep_top_k=12), 2, 15, False),
    ("num_classes: 3 background_label_id: -1 code_type: CENTER_SIZE nms_param { nms_threshold: 0.9 eta: 0.7 }",
     dict(num_classes=3, bg=-1, code=CENTER_SIZE, nms=0.9, eta=0.7), 1, 25, True),
    ("num_classes: 2 code_type: CENTER_SIZE clip: true confidence_threshold: 0.2",
     dict(num_classes=2, code=CENTER_SIZE, clip=True, conf_thr=0.2), 2, 30, True),
]


@pytest.mark.parametrize("params,kwargs,n,p,share", DETECTION_CASES)
def test_detection_output_matches_the_fork(params, kwargs, n, p, share):
    c = kwargs["num_classes"]
    loc = (RNG.standard_normal((n, p * 4 * (1 if share else c))) * 2).astype(np.float32)
    conf, prior = softmax_scores(n, p, c), random_priors(p)
    got = run_detection(params, loc, conf, prior)
    want = ref_detection_output(loc, conf, prior, **kwargs)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_detection_output_nms_ties_keep_the_lower_prior_first():
    """Equal scores: std::stable_sort keeps the lower index first; the second box overlaps it and goes."""
    prior = np.stack([np.array([0, 0, .5, .5, 0, 0, .5, .5, .6, .6, .9, .9, .01, 0, .51, .5], np.float32),
                      np.full(16, 0.1, np.float32)])[None]
    conf = np.array([[.2, .8, .2, .8, .3, .7, .2, .8]], np.float32)  # priors 0, 1, 3 tie at 0.8
    loc = np.zeros((1, 16), np.float32)
    out = run_detection("num_classes: 2 nms_param { nms_threshold: 0.5 }", loc, conf, prior)
    np.testing.assert_allclose(out[0, 0, :, :3], [[0, 1, .8], [0, 1, .7]])
    np.testing.assert_allclose(out[0, 0, 0, 3:], [0, 0, .5, .5])  # prior 0, not 1 or 3 (identical/overlapping)
    # top_k 1 keeps only the first of the three tied scores
    out = run_detection("num_classes: 2 nms_param { nms_threshold: 0.5 top_k: 1 }", loc, conf, prior)
    assert out.shape == (1, 1, 1, 7) and out[0, 0, 0, 3] == 0


def test_detection_output_threshold_is_strict_and_no_detection_gives_one_row_per_image():
    boxes = np.array([0, 0, .3, .3, .4, .4, .6, .6, .7, .7, 1, 1], np.float32)
    prior = np.stack([boxes, np.full(12, .1, np.float32)])[None]
    conf = np.array([[.5, .5, .75, .25, .6, .4], [.5, .5, .9, .1, .5, .5]], np.float32)  # class 1: .5 .25 .4 / .5 .1 .5
    loc = np.zeros((2, 12), np.float32)
    out = run_detection("num_classes: 2 confidence_threshold: 0.5", loc, conf, prior)
    np.testing.assert_array_equal(out[0, 0], [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])
    out = run_detection("num_classes: 2 confidence_threshold: 0.49", loc, conf, prior)
    np.testing.assert_allclose(out[0, 0], [[0, 1, .5, 0, 0, .3, .3], [1, 1, .5, 0, 0, .3, .3],
                                           [1, 1, .5, .7, .7, 1, 1]], rtol=1e-6)
    out = run_detection("num_classes: 2 keep_top_k: 0", loc, conf, prior)
    np.testing.assert_array_equal(out[0, 0, :, :2], [[0, -1], [1, -1]])


def test_detection_output_rows_by_image_label_then_score():
    loc, conf, prior = np.zeros((2, 20), np.float32), softmax_scores(2, 5, 3), random_priors(5)
    out = run_detection("num_classes: 3 nms_param { nms_threshold: 1 }", loc, conf, prior)[0, 0]
    assert out.shape == (2 * 5 * 2, 7)  # threshold 1: nothing suppressed
    keys = [(r[0], r[1], -r[2]) for r in out]
    assert keys == sorted(keys)


def test_detection_output_adaptive_eta_lowers_the_threshold():
    """Three boxes at overlap 0.6 with box 0: eta 0.8 turns the threshold 0.7 into 0.56 after box 0."""
    prior = np.stack([np.array([0, 0, 1, 1, .0, 0, .6, 1, .4, 0, 1, 1], np.float32), np.full(12, .1, np.float32)])[None]
    conf = np.array([[0, .9, 0, .8, 0, .7]], np.float32)
    loc = np.zeros((1, 12), np.float32)
    plain = run_detection("num_classes: 2 nms_param { nms_threshold: 0.7 }", loc, conf, prior)
    adaptive = run_detection("num_classes: 2 nms_param { nms_threshold: 0.7 eta: 0.8 }", loc, conf, prior)
    assert plain.shape[2] == 3 and adaptive.shape[2] == 1


def test_detection_output_shape_before_forward_is_cafes_reshape():
    net = torchcaffe.Net(_det_net("num_classes: 2"), torchcaffe.TEST)
    assert net.blobs["det"].shape == (1, 1, 1, 7)


def _det_net(params):
    from google.protobuf import text_format
    from torchcaffe.proto import caffe_pb2
    return text_format.Parse(f"""
        layer {{ name: "in" type: "Input" top: "loc" top: "conf" top: "prior"
                input_param {{ shape {{ dim: 2 dim: 12 }} shape {{ dim: 2 dim: 6 }}
                              shape {{ dim: 1 dim: 2 dim: 12 }} }} }}
        layer {{ name: "d" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
                detection_output_param {{ {params} }} }}""", caffe_pb2.NetParameter())


@pytest.mark.parametrize("params,shapes,words", [
    ("share_location: true", None, ["num_classes", "required"]),
    ("num_classes: 2 nms_param { eta: 0 }", None, ["eta", "(0, 1]"]),
    ("num_classes: 2 nms_param { nms_threshold: -1 }", None, ["nms_threshold", "non-negative"]),
    ("num_classes: 3", None, ["confidence values", "3 classes"]),
    ("num_classes: 2", ((2, 16), (2, 6), (1, 2, 12)), ["location values"]),
    ("num_classes: 2", ((1, 12), (2, 6), (1, 2, 12)), ["same number of images"]),
    ("num_classes: 2 normalized_bbox: false", None, ["normalized_bbox"]),
])
def test_detection_output_refuses_bad_parameters(params, shapes, words):
    shapes = shapes or ((2, 12), (2, 6), (1, 2, 12))
    expect_error(['"L" (DetectionOutput)', *words], make_layer, "DetectionOutput",
                 f"detection_output_param {{ {params} }}", *shapes)


def test_detection_output_refuses_empty_priors_for_center_size():
    prior = np.stack([np.array([0, 0, .5, .5, .3, .3, .3, .6], np.float32), np.full(8, .1, np.float32)])[None]
    with pytest.raises(NetError, match="positive width and height"):
        run_detection("num_classes: 2 code_type: CENTER_SIZE", np.zeros((1, 8), np.float32),
                      np.full((1, 4), .5, np.float32), prior)


# ================================================================================================
# MultiBoxLoss: a reference of the fork's forward *and* backward
# ================================================================================================
def ref_match(gts, preds, label, match_type, thr, ignore_cross):
    """MatchBBox with its map<int, map<int, float>> of overlaps."""
    idx, best = [-1] * len(preds), [f32(0)] * len(preds)
    gt_ids = [g for g in range(len(gts)) if label == -1 or gts[g]["label"] == label]
    if not gt_ids:
        return idx, best
    overlaps = {}
    for i, pb in enumerate(preds):
        if ignore_cross and any(v < 0 or v > 1 for v in pb):
            idx[i] = -2
            continue
        for j, g in enumerate(gt_ids):
            o = ref_jaccard(pb, gts[g]["box"])
            if o > 1e-6:
                best[i] = max(best[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gt_ids)))
    while pool:
        mi, mj, mo = -1, -1, -1.0
        for i in sorted(overlaps):
            if idx[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > mo:
                    mi, mj, mo = i, j, overlaps[i][j]
        if mi == -1:
            break
        idx[mi], best[mi] = gt_ids[mj], f32(mo)
        pool.remove(mj)
    if match_type == "PER_PREDICTION":
        for i in sorted(overlaps):
            if idx[i] != -1:
                continue
            mj, mo = -1, -1.0
            for j in range(len(gt_ids)):
                if j in overlaps[i] and overlaps[i][j] >= f32(thr) and overlaps[i][j] > mo:
                    mj, mo = j, overlaps[i][j]
            if mj != -1:
                idx[i], best[i] = gt_ids[mj], f32(mo)
    return idx, best


def ref_multibox(loc, conf, prior, gt, *, num_classes, bg=0, share=True, match="PER_PREDICTION", thr=0.5,
                 use_prior=True, difficult=True, mining="MAX_NEGATIVE", ratio=3.0, neg_overlap=0.5, code=CORNER,
                 vit=False, loc_type="SMOOTH_L1", conf_type="SOFTMAX", loc_weight=1.0, norm="VALID",
                 ignore_cross=False, sample_size=64, agnostic=False):
    """multibox_loss_layer.cpp + bbox_util.cpp (no NMS in mining): loss, loc diff, conf diff for a top diff of 1."""
    n = loc.shape[0]
    p = prior.size // 8
    lc = 1 if share else num_classes
    pb = prior.reshape(-1)[:4 * p].reshape(p, 4).astype(np.float32)
    pv = prior.reshape(-1)[4 * p:8 * p].reshape(p, 4).astype(np.float32)
    locs = loc.reshape(n, p, lc, 4)
    confs = conf.reshape(n, p, num_classes)
    gts = {}
    for row in gt.reshape(-1, 8):
        item = int(row[0])
        if item == -1:
            continue
        assert int(row[1]) != bg
        if not difficult and row[7] != 0:
            continue
        gts.setdefault(item, []).append({"label": int(row[1]), "box": [f32(v) for v in row[3:7]]})
    # FindMatches
    matches = []
    for i in range(n):
        m = {}
        if i in gts:
            if not use_prior:
                for c in range(lc):
                    label = -1 if share else c
                    if not share and label == bg:
                        continue
                    boxes = [ref_decode(pb[j], pv[j], locs[i, j, c], code, vit) for j in range(p)]
                    m[label] = ref_match(gts[i], boxes, label, match, thr, ignore_cross)
            else:
                idx, best = ref_match(gts[i], pb, -1, match, thr, ignore_cross)
                if share:
                    m[-1] = (idx, best)
                else:
                    for c in range(lc):
                        if c == bg:
                            continue
                        m[c] = ([g if g > -1 and gts[i][g]["label"] == c else -1 for g in idx], list(best))
        matches.append(m)
    num_matches = sum(1 for m in matches for idx, _ in m.values() for g in idx if g > -1)

    def enc(i, j, g):
        return ref_encode(pb[j], pv[j], gts[i][g]["box"], code, vit)

    # MineHardExamples
    negs = [[] for _ in range(n)]
    if mining != "NONE":
        for i in range(n):
            if not matches[i]:
                continue
            losses = []
            for j in range(p):
                label = bg
                for lab in sorted(matches[i]):
                    if matches[i][lab][0][j] > -1:
                        label = gts[i][matches[i][lab][0][j]]["label"]
                        break
                x = confs[i, j].astype(np.float64)
                if conf_type == "SOFTMAX":
                    e = np.exp(x - x.max())
                    lval = -math.log(max(e[label] / e.sum(), FLT_MIN))
                else:
                    lval = sum(max(v, 0) - v * (c == label) + math.log1p(math.exp(-abs(v))) for c, v in enumerate(x))
                if mining == "HARD_EXAMPLE":
                    for lab in sorted(matches[i]):
                        g = matches[i][lab][0][j]
                        if g > -1:
                            d = np.asarray(locs[i, j, 0], np.float64) - np.asarray(enc(i, j, g), np.float64)
                            lval += sum(0.5 * v * v if abs(v) < 1 else abs(v) - 0.5 for v in d)
                losses.append(f32(lval))
            for lab in sorted(matches[i]):
                idx, best = matches[i][lab]
                if mining == "MAX_NEGATIVE":
                    eligible = [j for j in range(p) if idx[j] == -1 and best[j] < f32(neg_overlap)]
                    num_sel = min(int(f32(sum(g > -1 for g in idx)) * f32(ratio)), len(eligible))
                else:
                    eligible = list(range(p))
                    num_sel = min(sample_size, len(eligible))
                chosen = set(sorted(eligible, key=lambda j: -losses[j])[:num_sel])
                for j in range(p):
                    if idx[j] > -1:
                        if mining == "HARD_EXAMPLE" and j not in chosen:
                            idx[j] = -1
                            num_matches -= 1
                    elif idx[j] == -1 and j in chosen:
                        negs[i].append(j)
    normalizer = max(1, {"VALID": num_matches, "FULL": n * p, "BATCH_SIZE": n, "NONE": 1}[norm])
    loss = 0.0
    dloc = np.zeros_like(locs, dtype=np.float64)
    dconf = np.zeros_like(confs, dtype=np.float64)
    # localization: the internal loss over (pred - target), its diff copied back
    for i in range(n):
        for lab in sorted(matches[i]):
            slot = 0 if share else lab
            for j, g in enumerate(matches[i][lab][0]):
                if g <= -1:
                    continue
                t = np.asarray(enc(i, j, g), np.float64)
                pred = np.asarray(locs[i, j, slot], np.float64)
                if vit:
                    pred, t = pred / pv[j], t / pv[j]
                d = pred - t
                if loc_type == "SMOOTH_L1":
                    loss += loc_weight * sum(0.5 * v * v if abs(v) < 1 else abs(v) - 0.5 for v in d) / normalizer
                    dloc[i, j, slot] = loc_weight * np.where(np.abs(d) < 1, d, np.sign(d)) / normalizer
                else:
                    loss += loc_weight * 0.5 * (d * d).sum() / normalizer
                    dloc[i, j, slot] = loc_weight * d / normalizer
    # confidence: rows and their targets
    rows = []  # (image, prior, label)
    if mining != "NONE":
        for i in range(n):
            if i not in gts:
                continue
            for lab in sorted(matches[i]):
                for j, g in enumerate(matches[i][lab][0]):
                    if g > -1:
                        rows.append((i, j, bg + 1 if agnostic else gts[i][g]["label"]))
            rows.extend((i, j, bg) for j in negs[i])
    else:
        labels = np.full((n, p), bg)
        for i in range(n):
            if i not in gts:
                continue
            for lab in sorted(matches[i]):
                for j, g in enumerate(matches[i][lab][0]):
                    if g > -1:
                        labels[i, j] = bg + 1 if agnostic else gts[i][g]["label"]
        rows = [(i, j, labels[i, j]) for i in range(n) for j in range(p)]
    for i, j, label in rows:
        x = confs[i, j].astype(np.float64)
        if conf_type == "SOFTMAX":
            e = np.exp(x - x.max())
            prob = e / e.sum()
            loss += -math.log(max(prob[label], FLT_MIN)) / normalizer
            dconf[i, j] = (prob - np.eye(num_classes)[label]) / normalizer
        else:
            t = np.full(num_classes, float(bg))  # the fork fills the targets with the background id
            t[label] = 1
            sig = 1 / (1 + np.exp(-x))
            loss += sum(max(v, 0) - v * tt + math.log1p(math.exp(-abs(v))) for v, tt in zip(x, t)) / normalizer
            dconf[i, j] = (sig - t) / normalizer
    return loss, dloc.reshape(loc.shape), dconf.reshape(conf.shape), num_matches, negs


def mbl_params(**kw):
    return "multibox_loss_param { " + " ".join(f"{k}: {v}" for k, v in kw.items()) + " }"


def run_mbl(params, loc, conf, prior, gt, extra=""):
    layer = make_layer("MultiBoxLoss", params + extra, loc.shape, conf.shape, prior.shape, gt.shape)
    lt, ct = t64(loc, True), t64(conf, True)
    out = layer(lt, ct, t64(prior), t64(gt))
    if out.requires_grad:
        out.backward()
    grad = lambda t: np.zeros(t.shape) if t.grad is None else t.grad.numpy()  # noqa: E731
    return out.item(), grad(lt), grad(ct), layer


def handmade():
    """One image, six priors, two objects.

    Priors (x0, y0, x1, y1): 0 = [0, 0, .5, .5], 1 = [0, 0, .4, .5] (overlap .8 with object A),
    2 = [.5, .5, 1, 1] (object B), 3 = [.55, .5, 1, 1] (overlap .9 with B), 4 = [0, .5, .5, 1],
    5 = [.25, .25, .75, .75] (overlap 1/7 with A and B: a negative candidate under .5).
    Objects: A = [0, 0, .5, .5] label 1, B = [.5, .5, 1, 1] label 2.
    """
    boxes = np.array([[0, 0, .5, .5], [0, 0, .4, .5], [.5, .5, 1, 1], [.55, .5, 1, 1], [0, .5, .5, 1],
                      [.25, .25, .75, .75]], np.float32)
    prior = np.stack([boxes.reshape(-1), np.tile(np.array([.1, .1, .2, .2], np.float32), 6)])[None]
    gt = np.array([[[[0, 1, 0, 0, 0, .5, .5, 0], [0, 2, 1, .5, .5, 1, 1, 0]]]], np.float32)
    return prior, gt


def test_multibox_handmade_matching_and_mining():
    prior, gt = handmade()
    rng = np.random.default_rng(5)
    loc = rng.standard_normal((1, 24)) * 0.3
    # background logit: priors 4 and 5 are the hardest negatives (lowest background probability)
    conf = np.zeros((1, 6, 3))
    conf[0, :, 0] = [2, 2, 2, 2, -1.5, -1.0]
    conf = conf.reshape(1, 18)
    params = mbl_params(num_classes=3, neg_pos_ratio=0.5)
    value, dloc, dconf, layer = run_mbl(params, loc, conf, prior, gt)
    plan = layer._plan(t64(loc), t64(conf), t64(prior), t64(gt))
    # bipartite: A-prior 0 (overlap 1), B-prior 2 (1); per prediction: prior 1 (.8 >= .5) -> A, prior 3 (.9) -> B
    assert plan.num_matches == 4
    assert [j.tolist() for j in plan.pos_prior] == [[0, 1, 2, 3]]
    assert plan.pos_label[0].tolist() == [1, 1, 2, 2]
    # int(4 * 0.5) = 2 negatives among priors 4 and 5 (the only unmatched ones): both, hardest first by loss
    assert sorted(plan.negatives[0].tolist()) == [4, 5]
    ref, ref_dloc, ref_dconf, num_matches, negs = ref_multibox(loc, conf, prior, gt, num_classes=3, ratio=0.5)
    assert num_matches == 4 and sorted(negs[0]) == [4, 5]
    np.testing.assert_allclose(value, ref, rtol=1e-6)
    np.testing.assert_allclose(dloc, ref_dloc, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dconf, ref_dconf, rtol=1e-6, atol=1e-7)
    # ratio 0.25: int(4 * .25) = 1: only the hardest negative, prior 4
    _, _, dconf1, layer = run_mbl(mbl_params(num_classes=3, neg_pos_ratio=0.25), loc, conf, prior, gt)
    assert np.abs(dconf1.reshape(6, 3)[5]).sum() == 0 and np.abs(dconf1.reshape(6, 3)[4]).sum() > 0
    # BIPARTITE only: priors 0 and 2
    bipartite = make_layer("MultiBoxLoss", mbl_params(num_classes=3, match_type="BIPARTITE"), (1, 24), (1, 18),
                           prior.shape, gt.shape)
    plan = bipartite._plan(t64(loc), t64(conf), t64(prior), t64(gt))
    assert [j.tolist() for j in plan.pos_prior] == [[0, 2]]


def test_multibox_bipartite_ties_go_to_the_lower_prior_then_the_lower_box():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], np.float32)
    prior = np.stack([boxes.reshape(-1), np.full(12, .1, np.float32)])[None]
    gt = np.array([[[[0, 1, 0, 0, 0, 1, 1, 0], [0, 2, 0, 0, 0, 1, 1, 0]]]], np.float32)
    layer = make_layer("MultiBoxLoss", mbl_params(num_classes=3, match_type="BIPARTITE"), (1, 12), (1, 9),
                       prior.shape, gt.shape)
    plan = layer._plan(t64(np.zeros((1, 12))), t64(np.zeros((1, 9))), t64(prior), t64(gt))
    assert plan.pos_prior[0].tolist() == [0, 1] and plan.pos_label[0].tolist() == [1, 2]


MBL_CASES = [
    (dict(num_classes=4, code_type="CENTER_SIZE"), dict(num_classes=4, code=CENTER_SIZE)),
    (dict(num_classes=4, code_type="CENTER_SIZE", encode_variance_in_target="true"),
     dict(num_classes=4, code=CENTER_SIZE, vit=True)),
    (dict(num_classes=4, code_type="CORNER_SIZE", loc_loss_type="L2", loc_weight=0.6),
     dict(num_classes=4, code=CORNER_SIZE, loc_type="L2", loc_weight=0.6)),
    (dict(num_classes=4, code_type="CORNER", encode_variance_in_target="true", mining_type="NONE"),
     dict(num_classes=4, code=CORNER, vit=True, mining="NONE")),
    (dict(num_classes=4, code_type="CENTER_SIZE", mining_type="HARD_EXAMPLE", sample_size=9),
     dict(num_classes=4, code=CENTER_SIZE, mining="HARD_EXAMPLE", sample_size=9)),
    (dict(num_classes=4, code_type="CENTER_SIZE", conf_loss_type="LOGISTIC"),
     dict(num_classes=4, code=CENTER_SIZE, conf_type="LOGISTIC")),
    (dict(num_classes=4, code_type="CENTER_SIZE", match_type="BIPARTITE", overlap_threshold=0.3, neg_overlap=0.4,
          neg_pos_ratio=2), dict(num_classes=4, code=CENTER_SIZE, match="BIPARTITE", thr=0.3, neg_overlap=0.4,
                                 ratio=2.0)),
    (dict(num_classes=4, code_type="CENTER_SIZE", use_prior_for_matching="false", overlap_threshold=0.2),
     dict(num_classes=4, code=CENTER_SIZE, use_prior=False, thr=0.2)),
    (dict(num_classes=4, code_type="CENTER_SIZE", share_location="false", mining_type="NONE"),
     dict(num_classes=4, code=CENTER_SIZE, share=False, mining="NONE")),
    (dict(num_classes=4, code_type="CENTER_SIZE", share_location="false", mining_type="NONE",
          use_prior_for_matching="false", overlap_threshold=0.2),
     dict(num_classes=4, code=CENTER_SIZE, share=False, mining="NONE", use_prior=False, thr=0.2)),
    (dict(num_classes=4, code_type="CENTER_SIZE", use_difficult_gt="false", ignore_cross_boundary_bbox="true"),
     dict(num_classes=4, code=CENTER_SIZE, difficult=False, ignore_cross=True)),
    (dict(num_classes=4, background_label_id=3, code_type="CENTER_SIZE"), dict(num_classes=4, bg=3, code=CENTER_SIZE)),
    (dict(num_classes=2, map_object_to_agnostic="true", code_type="CENTER_SIZE"),
     dict(num_classes=2, code=CENTER_SIZE, agnostic=True)),
]


def realistic(num=2, p=40, num_classes=4, lc=1, gts_per_image=3, bg=0, rng=None, with_padding=True):
    rng = rng or np.random.default_rng(7)
    prior = random_priors(p, rng)
    rows = []
    for i in range(num):
        for k in range(gts_per_image):
            centre = rng.uniform(0.2, 0.8, 2)
            size = rng.uniform(0.15, 0.5, 2)
            label = int(rng.choice([c for c in range(num_classes) if c != bg]))
            rows.append([i, label, k, *(centre - size / 2), *(centre + size / 2), float(k == 1)])
    if with_padding:
        rows.append([-1] * 8)
    gt = np.asarray(rows, np.float32)[None, None]
    loc = rng.standard_normal((num, p * 4 * lc)) * 0.5
    conf = rng.standard_normal((num, p * num_classes))
    return loc, conf, prior, gt


@pytest.mark.parametrize("params,kwargs", MBL_CASES)
def test_multibox_matches_the_forks_forward_and_backward(params, kwargs):
    c = kwargs["num_classes"]
    lc = 1 if kwargs.get("share", True) else c
    loc, conf, prior, gt = realistic(num_classes=c, lc=lc, bg=kwargs.get("bg", 0),
                                     gts_per_image=1 if kwargs.get("agnostic") else 3)
    if kwargs.get("agnostic"):
        gt[..., 1] = 1
    value, dloc, dconf, _ = run_mbl(mbl_params(**params), loc, conf, prior, gt)
    ref, ref_dloc, ref_dconf, num_matches, _ = ref_multibox(loc, conf, prior, gt, **kwargs)
    assert num_matches > 0
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(dloc, ref_dloc, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dconf, ref_dconf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm,divisor", [("FULL", lambda n, p, m: n * p), ("BATCH_SIZE", lambda n, p, m: n),
                                          ("NONE", lambda n, p, m: 1), ("VALID", lambda n, p, m: m)])
def test_multibox_normalization(norm, divisor):
    loc, conf, prior, gt = realistic()
    params = mbl_params(num_classes=4, code_type="CENTER_SIZE")
    base, _, _, layer = run_mbl(params + " loss_param { normalization: NONE }", loc, conf, prior, gt)
    value, *_ = run_mbl(mbl_params(num_classes=4, code_type="CENTER_SIZE") + f" loss_param {{ normalization: {norm} }}",
                        loc, conf, prior, gt)
    matches = layer._plan(t64(loc), t64(conf), t64(prior), t64(gt)).num_matches
    np.testing.assert_allclose(value, base / divisor(2, 40, matches), rtol=1e-10)
    legacy, *_ = run_mbl(mbl_params(num_classes=4, code_type="CENTER_SIZE") + " loss_param { normalize: false }",
                         loc, conf, prior, gt)
    np.testing.assert_allclose(legacy, base / 2, rtol=1e-10)  # deprecated normalize: false is BATCH_SIZE


def test_multibox_encode_variance_in_target_gradient_leaves_the_variance_out():
    """The fork divides predictions and targets by the variances, then copies the diff back undivided."""
    loc, conf, prior, gt = realistic()
    _, dloc, _, _ = run_mbl(mbl_params(num_classes=4, code_type="CENTER_SIZE", encode_variance_in_target="true"),
                            loc, conf, prior, gt)
    _, ref_dloc, _, _, _ = ref_multibox(loc, conf, prior, gt, num_classes=4, code=CENTER_SIZE, vit=True)
    np.testing.assert_allclose(dloc, ref_dloc, rtol=1e-6, atol=1e-8)
    lt = t64(loc, True)
    params = mbl_params(num_classes=4, code_type="CENTER_SIZE", encode_variance_in_target="true")
    layer = make_layer("MultiBoxLoss", params, loc.shape, conf.shape, prior.shape, gt.shape)
    exact = torch.autograd.gradcheck(lambda x: layer(x, t64(conf), t64(prior), t64(gt)), (lt,), raise_exception=False,
                                     fast_mode=True)
    assert not exact  # not the derivative of its own forward


def test_multibox_bp_inside_stops_gradients_of_outside_coordinates():
    prior, gt = handmade()
    boxes = prior[0, 0].reshape(6, 4)
    boxes[1] = [-.1, 0, .4, .5]  # matched to A, its xmin is outside the image
    prior[0, 0] = boxes.reshape(-1)
    loc = np.random.default_rng(1).standard_normal((1, 24)) * 0.3
    conf = np.zeros((1, 18))
    _, plain, _, _ = run_mbl(mbl_params(num_classes=3), loc, conf, prior, gt)
    _, inside, _, _ = run_mbl(mbl_params(num_classes=3, bp_inside="true"), loc, conf, prior, gt)
    plain, inside = plain.reshape(6, 4), inside.reshape(6, 4)
    assert plain[1, 0] != 0 and inside[1, 0] == 0
    np.testing.assert_allclose(inside[1, 1:], plain[1, 1:])  # the other coordinates are unchanged
    assert (inside[[0, 2, 3]] != 0).all()


def test_multibox_ignore_cross_boundary_priors_are_neither_positive_nor_negative():
    prior, gt = handmade()
    boxes = prior[0, 0].reshape(6, 4)
    boxes[0] = [-0.01, 0, .5, .5]
    prior[0, 0] = boxes.reshape(-1)
    layer = make_layer("MultiBoxLoss", mbl_params(num_classes=3, ignore_cross_boundary_bbox="true", mining_type="NONE"),
                       (1, 24), (1, 18), prior.shape, gt.shape)
    plan = layer._plan(t64(np.zeros((1, 24))), t64(np.zeros((1, 18))), t64(prior), t64(gt))
    assert 0 not in plan.pos_prior[0].tolist() and 1 in plan.pos_prior[0].tolist()


def test_multibox_propagate_down_leaves_terms_out_of_the_loss():
    loc, conf, prior, gt = realistic()
    params = mbl_params(num_classes=4, code_type="CENTER_SIZE")
    both, *_ = run_mbl(params, loc, conf, prior, gt)
    only_loc, dloc, dconf, _ = run_mbl(params, loc, conf, prior, gt, " propagate_down: true propagate_down: false "
                                                                      "propagate_down: false propagate_down: false")
    only_conf, *_ = run_mbl(params, loc, conf, prior, gt, " propagate_down: false propagate_down: true "
                                                         "propagate_down: false propagate_down: false")
    np.testing.assert_allclose(only_loc + only_conf, both, rtol=1e-12)
    assert not dconf.any() and dloc.any()


def test_multibox_gradcheck_with_a_fixed_matching():
    """Autograd of the loss with the matching/mining held fixed (no near-ties in this draw)."""
    loc, conf, prior, gt = realistic(p=12, gts_per_image=2, rng=np.random.default_rng(3))
    for extra in ("", " mining_type: HARD_EXAMPLE sample_size: 12", " conf_loss_type: LOGISTIC loc_loss_type: L2"):
        params = "multibox_loss_param { num_classes: 4 code_type: CENTER_SIZE" + extra + " }"
        layer = make_layer("MultiBoxLoss", params, loc.shape, conf.shape, prior.shape, gt.shape)
        inputs = (t64(loc, True), t64(conf, True))
        assert torch.autograd.gradcheck(lambda a, b: layer(a, b, t64(prior), t64(gt)), inputs, eps=1e-6, atol=1e-6,
                                        rtol=1e-4)


def test_multibox_logistic_without_mining_writes_targets_at_the_forks_offsets():
    """EncodeConfPrediction steps the LOGISTIC target pointer by P (not P * C) per image."""
    prior, gt = handmade()
    gt = np.concatenate([gt, gt.copy()], axis=2)
    gt[0, 0, 2:, 0] = 1  # the same two objects in image 1
    loc, conf = np.zeros((2, 24)), np.zeros((2, 18))
    layer = make_layer("MultiBoxLoss", mbl_params(num_classes=3, mining_type="NONE", conf_loss_type="LOGISTIC"),
                       loc.shape, conf.shape, prior.shape, gt.shape)
    ct = t64(conf, True)
    layer(t64(loc), ct, t64(prior), t64(gt)).backward()
    # with zero scores the gradient is (0.5 - target) / num_matches: the targets are where it is negative
    ones = np.flatnonzero(ct.grad.numpy().reshape(-1) < 0).tolist()
    want = sorted({i * 6 + j * 3 + lab for i in (0, 1) for j, lab in ((0, 1), (1, 1), (2, 2), (3, 2))})
    assert ones == want


@pytest.mark.parametrize("params,words", [
    ("multibox_loss_param { share_location: true }", ["num_classes", "required"]),
    ("multibox_loss_param { num_classes: 3 do_neg_mining: false }", ["do_neg_mining", "mining_type"]),
    ("multibox_loss_param { num_classes: 3 share_location: false }", ["share_location", "mining"]),
    ("multibox_loss_param { num_classes: 3 background_label_id: 3 }", ["background_label_id", "SOFTMAX"]),
    ("multibox_loss_param { num_classes: 3 map_object_to_agnostic: true }",
     ["map_object_to_agnostic", "num_classes: 2"]),
    ("multibox_loss_param { num_classes: 3 mining_type: HARD_EXAMPLE sample_size: 0 }", ["sample_size"]),
])
def test_multibox_refuses_bad_parameters(params, words):
    prior, gt = handmade()
    expect_error(['"L" (MultiBoxLoss)', *words], make_layer, "MultiBoxLoss", params, (1, 24), (1, 18), prior.shape,
                 gt.shape)


def test_multibox_refuses_shape_mismatches_and_background_objects():
    prior, gt = handmade()
    expect_error(["location values"], make_layer, "MultiBoxLoss", mbl_params(num_classes=3), (1, 20), (1, 18),
                 prior.shape, gt.shape)
    expect_error(["confidence values"], make_layer, "MultiBoxLoss", mbl_params(num_classes=4), (1, 24), (1, 18),
                 prior.shape, gt.shape)
    gt[0, 0, 0, 1] = 0
    with pytest.raises(NetError, match="background label"):
        run_mbl(mbl_params(num_classes=3), np.zeros((1, 24)), np.zeros((1, 18)), prior, gt)


# ================================================================================================
# SmoothL1Loss
# ================================================================================================
def ref_frcnn(a, b, w_in, w_out, sigma):
    s2 = sigma * sigma
    d = (a - b) * w_in
    f = np.where(np.abs(d) < 1 / s2, 0.5 * d * d * s2, np.abs(d) - 0.5 / s2)
    df = np.where(np.abs(d) < 1 / s2, s2 * d, np.sign(d))
    n = a.shape[0]
    return (f * w_out).sum() / n, df * w_in * w_out / n, -df * w_in * w_out / n


def ref_ssd(a, b, w):
    d = (a - b) * w
    f = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)
    df = np.where(np.abs(d) < 1, d, np.sign(d))
    n = a.shape[0]
    return f.sum() / n, df / n, -df / n  # the fork's backward: no factor w


def run_sl1(params, *arrays):
    layer = make_layer("SmoothL1Loss", params, *[a.shape for a in arrays])
    ts = [t64(a, True) for a in arrays]
    out = layer(*ts)
    out.backward()
    return out.item(), [t.grad for t in ts]


@pytest.mark.parametrize("sigma,weights", [(1.0, False), (3.0, True), (0.5, True), (1.0, True)])
def test_smooth_l1_faster_rcnn(sigma, weights):
    shape = (3, 4, 2, 2)
    a, b = RNG.uniform(-2, 2, shape), RNG.uniform(-2, 2, shape)
    w_in, w_out = (RNG.uniform(0, 2, shape), RNG.uniform(0, 2, shape)) if weights else (np.ones(shape), np.ones(shape))
    arrays = (a, b, w_in, w_out) if weights else (a, b)
    value, grads = run_sl1(f"smooth_l1_loss_param {{ sigma: {sigma} }}", *arrays)
    ref, da, db = ref_frcnn(a, b, w_in, w_out, sigma)
    np.testing.assert_allclose(value, ref, rtol=1e-12)
    np.testing.assert_allclose(grads[0].numpy(), da, rtol=1e-12)
    np.testing.assert_allclose(grads[1].numpy(), db, rtol=1e-12)
    if weights:
        assert grads[2] is None and grads[3] is None


def test_smooth_l1_ssd_weights_and_its_backward():
    shape = (2, 8)
    a, b, w = RNG.uniform(-3, 3, shape), RNG.uniform(-3, 3, shape), RNG.choice([0.0, 0.5, 1.0, 2.0], shape)
    value, grads = run_sl1("", a, b, w)
    ref, da, db = ref_ssd(a, b, w)
    np.testing.assert_allclose(value, ref, rtol=1e-12)
    np.testing.assert_allclose(grads[0].numpy(), da, rtol=1e-12)
    np.testing.assert_allclose(grads[1].numpy(), db, rtol=1e-12)
    assert grads[2] is None


def test_smooth_l1_two_bottoms_agree_between_the_forks():
    a, b = RNG.uniform(-3, 3, (4, 5)), RNG.uniform(-3, 3, (4, 5))
    value, grads = run_sl1("", a, b)
    ref, da, db = ref_ssd(a, b, np.ones((4, 5)))
    ref2, da2, _ = ref_frcnn(a, b, 1, 1, 1.0)
    np.testing.assert_allclose([value, ref2], [ref, ref], rtol=1e-12)
    np.testing.assert_allclose(grads[0].numpy(), da, rtol=1e-12)
    np.testing.assert_allclose(da2, da, rtol=1e-12)


def test_smooth_l1_allows_force_backward_everywhere():
    layer = make_layer("SmoothL1Loss", "", (2, 3), (2, 3))
    assert all(layer.allow_force_backward(i) for i in range(4))


@pytest.mark.parametrize("params,shapes,words", [
    ("smooth_l1_loss_param { sigma: 2 }", ((2, 3), (2, 3), (2, 3)), ["3 bottoms", "smooth_l1_loss_param"]),
    ("", ((2, 3), (3, 3)), ["same first dimension"]),
    ("", ((2, 3), (2, 4)), ["bottom 1", "channels"]),
    ("", ((2, 3), (2, 3), (2, 3), (2, 5)), ["bottom 3", "channels"]),
    ("", ((2, 3),), ["at least 2"]),
])
def test_smooth_l1_refuses_bad_setups(params, shapes, words):
    expect_error(['"L" (SmoothL1Loss)', *words], make_layer, "SmoothL1Loss", params, *shapes)


# ================================================================================================
# The SSD nets of the corpus
# ================================================================================================
CORPUS = "/work/shared/corpus"


@pytest.mark.parametrize("relative", ["ssd300_vgg16/deploy.prototxt", "mobilenet_ssd/MobileNetSSD_deploy.prototxt",
                                      "opencv_face_detector/deploy.prototxt"])
def test_corpus_ssd_deploy_nets_run(relative):
    import os
    path = os.path.join(CORPUS, relative)
    if not os.path.exists(path):
        pytest.skip("the shared corpus is not available")
    torch.manual_seed(0)
    net = torchcaffe.Net(path, torchcaffe.TEST)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, var, factor = layer.blobs
            mean.data[...], var.data[...], factor.data[...] = 0, 1, 1
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = np.random.default_rng(0).random(blob.shape, dtype=np.float32) * 255
    out = net.forward()
    det = out["detection_out"]
    assert det.ndim == 4 and det.shape[:2] == (1, 1) and det.shape[3] == 7
    assert set(np.unique(det[0, 0, :, 0])) <= set(range(net.blobs[net.inputs[0]].shape[0]))
