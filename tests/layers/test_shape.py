"""Concat, Slice, Split, Flatten, Reshape, Tile, Silence, Filter and BatchReindex against numpy
references of Caffe's CPU code.

Covers what the sample table cannot: Caffe's shape rules (Reshape's 0 and -1, Flatten's
``end_axis``, legacy ``concat_dim``/``slice_dim``), value-dependent tops (Filter with dropped
items), gradients into repeated or dropped items, the bottoms Caffe never back-propagates into,
the in-place refusals, and the configuration errors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from .harness import expect_error, float64_tensor as t, make_layer, net_from

RNG = np.random.default_rng(20240613)


# -- Concat ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,shapes,axis", [
    ("", [(2, 3, 2), (2, 1, 2), (2, 2, 2)], 1), ("concat_param { axis: 0 }", [(1, 3), (2, 3)], 0),
    ("concat_param { axis: -1 }", [(2, 2, 3), (2, 2, 1)], 2), ("concat_param { concat_dim: 2 }", [(1, 2, 3), (1, 2, 2)], 2)])
def test_concat_matches_numpy(params, shapes, axis):
    layer = make_layer("Concat", params, *shapes)
    xs = [RNG.standard_normal(s) for s in shapes]
    inputs = [t(x, grad=True) for x in xs]
    y = layer(*inputs)
    np.testing.assert_array_equal(y.detach().numpy(), np.concatenate(xs, axis=axis))
    top_diff = RNG.standard_normal(y.shape)
    y.backward(t(top_diff))
    parts = np.split(top_diff, np.cumsum([s[axis] for s in shapes])[:-1], axis=axis)
    for x, part in zip(inputs, parts):
        np.testing.assert_array_equal(x.grad.numpy(), part)


def test_concat_one_bottom_is_the_bottom():
    layer = make_layer("Concat", "", (2, 3))
    x = torch.zeros(2, 3)
    assert layer(x) is x


def test_concat_errors():
    expect_error(['"L"', "concat_dim", "axis"], make_layer, "Concat", "concat_param { axis: 1 concat_dim: 1 }", (2, 3), (2, 3))
    expect_error(['"L"', "bottom 1", "(2, 3, 4)", "(2, 3, 5)"], make_layer, "Concat", "", (2, 3, 4), (2, 3, 5))
    expect_error(['"L"', "bottom 1"], make_layer, "Concat", "", (2, 3, 4), (2, 3))
    expect_error(['"L"', "concat_dim 3"], make_layer, "Concat", "concat_param { concat_dim: 3 }", (2, 3, 4), (2, 3, 4))


# -- Slice ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,shape,tops,axis,sizes", [
    ("", (2, 4, 3), 2, 1, [2, 2]), ("slice_param { axis: 2 slice_point: 1 slice_point: 4 }", (2, 2, 5), 3, 2, [1, 3, 1]),
    ("slice_param { axis: -1 }", (1, 2, 6), 3, 2, [2, 2, 2]), ("slice_param { slice_dim: 0 slice_point: 1 }", (3, 2), 2, 0, [1, 2]),
    ("slice_param { slice_point: 3 }", (2, 3), 2, 1, [3, 0])])
def test_slice_matches_numpy(params, shape, tops, axis, sizes):
    layer = make_layer("Slice", params, shape, tops=tops)
    x = RNG.standard_normal(shape)
    xt = t(x, grad=True)
    ys = layer(xt)
    parts = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    assert len(ys) == tops
    for y, part in zip(ys, parts):
        np.testing.assert_array_equal(y.detach().numpy(), part)
    diffs = [RNG.standard_normal(y.shape) for y in ys]
    torch.autograd.backward(list(ys), [t(d) for d in diffs])
    np.testing.assert_array_equal(xt.grad.numpy(), np.concatenate(diffs, axis=axis))


def test_slice_errors():
    expect_error(['"L"', "slice_point", "2"], make_layer, "Slice", "slice_param { slice_point: 1 }", (2, 6), tops=3)
    expect_error(['"L"', "slice_point", "ascending"], make_layer, "Slice", "slice_param { slice_point: 3 slice_point: 2 }",
                 (2, 6), tops=3)
    expect_error(['"L"', "slice_point", "ascending"], make_layer, "Slice", "slice_param { slice_point: 0 }", (2, 6), tops=2)
    expect_error(['"L"', "slice_point"], make_layer, "Slice", "slice_param { slice_point: 7 }", (2, 6), tops=2)
    expect_error(['"L"', "equal parts", "4", "slice_point"], make_layer, "Slice", "", (2, 6), tops=4)
    expect_error(['"L"', "slice_dim", "axis"], make_layer, "Slice", "slice_param { axis: 1 slice_dim: 1 }", (2, 6), tops=2)


# -- Split ----------------------------------------------------------------------------------------
def test_split_tops_are_the_bottom_and_keep_their_own_diffs():
    net = net_from("""force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "Power" bottom: "x" top: "a" power_param { scale: 2 } loss_weight: 1 }
        layer { name: "b" type: "Power" bottom: "x" top: "b" power_param { scale: -5 } loss_weight: 1 }""")
    assert net.layer_dict["x_x_0_split"].type == "Split"
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    for k in range(2):
        np.testing.assert_array_equal(net.blobs[f"x_x_0_split_{k}"].data, x)
    net.backward()
    np.testing.assert_allclose(net.blobs["x_x_0_split_0"].diff, 2.0)
    np.testing.assert_allclose(net.blobs["x_x_0_split_1"].diff, -5.0)
    np.testing.assert_allclose(net.blobs["x"].diff, -3.0)


def test_split_refuses_in_place():
    expect_error(['"L"', "in place"], make_layer, "Split", "", (2, 3), tops=2, bottoms=["x"], top_names=["y", "x"])


# -- Flatten --------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,shape,expected", [
    ("", (2, 3, 4, 5), (2, 60)), ("flatten_param { axis: 2 end_axis: 3 }", (2, 2, 3, 2, 2), (2, 2, 6, 2)),
    ("flatten_param { axis: 0 }", (1, 3, 2), (6,)), ("flatten_param { axis: -2 end_axis: -2 }", (2, 3, 2), (2, 3, 2)),
    ("flatten_param { axis: 2 end_axis: 1 }", (2, 3, 2), (2, 3, 1, 2)), ("flatten_param { end_axis: -2 }", (2, 3, 4, 5), (2, 12, 5))])
def test_flatten_shapes(params, shape, expected):
    layer = make_layer("Flatten", params, shape)
    x = RNG.standard_normal(shape)
    y = layer(t(x))
    assert tuple(y.shape) == expected
    np.testing.assert_array_equal(y.numpy().reshape(-1), x.reshape(-1))


def test_flatten_errors():
    expect_error(['"L"', "end_axis"], make_layer, "Flatten", "flatten_param { axis: 2 end_axis: 0 }", (2, 3, 4))
    expect_error(['"L"', "flatten_param axis"], make_layer, "Flatten", "flatten_param { axis: 3 }", (2, 3, 4))
    expect_error(['"L"', "in place"], make_layer, "Flatten", "", (2, 3), bottoms=["x"], top_names=["x"])


# -- Reshape --------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,shape,expected", [
    ("shape { dim: 0 dim: -1 }", (2, 3, 6, 5), (2, 90)),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", (2, 3, 6, 5), (2, 3, 6, 5)),
    ("shape { dim: 0 dim: 0 dim: 0 dim: -1 }", (2, 3, 6, 5), (2, 3, 6, 5)),
    ("shape { dim: 6 dim: 0 dim: -1 }", (2, 3, 6, 5), (6, 3, 10)),
    ("shape { dim: 0 dim: 6 dim: -1 }", (2, 3, 6, 5), (2, 6, 15)),
    ("shape { dim: 1 } axis: 0 num_axes: 0", (2, 3, 6, 5), (1, 2, 3, 6, 5)),
    ("shape { dim: 1 } axis: 1 num_axes: 0", (2, 3, 6, 5), (2, 1, 3, 6, 5)),
    ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 3, 6, 5), (2, 3, 6, 5, 1)),
    ("shape { dim: 1 } axis: -1", (2, 3), (2, 3, 1)),
    ("shape { dim: 1 dim: 1 dim: 1 } axis: 0 num_axes: 2", (1, 1, 4), (1, 1, 1, 4)),
    ("shape { dim: 1 dim: 1 dim: 1 } axis: -1 num_axes: 0", (1, 1, 4), (1, 1, 4, 1, 1, 1)),
    ("shape { dim: 2 dim: -1 } axis: 1 num_axes: 2", (2, 3, 6, 5), (2, 2, 9, 5)),
    ("shape { dim: -1 dim: 0 } axis: 1", (2, 3, 4, 2), (2, 6, 4)),
    ("shape { } axis: 1 num_axes: 1", (2, 1, 3), (2, 3)),
    ("shape { dim: 3 dim: 2 dim: 2 }", (2, 6), (3, 2, 2)),
])
def test_reshape_shapes(params, shape, expected):
    layer = make_layer("Reshape", f"reshape_param {{ {params} }}", shape)
    x = RNG.standard_normal(shape)
    y = layer(t(x))
    assert tuple(y.shape) == expected
    np.testing.assert_array_equal(y.numpy().reshape(-1), x.reshape(-1))


@pytest.mark.parametrize("params,shape,words", [
    ("shape { dim: -1 dim: -1 }", (2, 3), ["-1"]),
    ("shape { dim: 0 dim: 0 dim: 0 }", (2, 3), ["0 at position 2", "axis 2"]),
    ("shape { dim: 0 dim: 0 } axis: 1", (2, 3), ["axis 2"]),
    ("shape { dim: 4 dim: -1 }", (2, 3), ["divisible", "4"]),
    ("shape { dim: 4 dim: 2 }", (2, 3), ["counts", "8", "6"]),
    ("shape { dim: 6 } axis: 3", (2, 3), ["axis 3"]),
    ("shape { dim: 6 } axis: -4", (2, 3), ["axis -4"]),
    ("shape { dim: 6 } axis: 1 num_axes: 2", (2, 3), ["num_axes"]),
    ("shape { dim: 6 } num_axes: -2", (2, 3), ["num_axes"]),
])
def test_reshape_errors(params, shape, words):
    expect_error(['"L"', "reshape_param", *words], make_layer, "Reshape", f"reshape_param {{ {params} }}", shape)


def test_reshape_refuses_in_place():
    expect_error(['"L"', "in place"], make_layer, "Reshape", "reshape_param { shape { dim: -1 } }", (2, 3),
                 bottoms=["x"], top_names=["x"])


def test_reshape_follows_a_new_bottom_shape():
    net = net_from("""
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 } } }
        layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } } }""")
    assert net.blobs["y"].shape == (2, 6)
    net.blobs["x"].reshape(4, 1, 5)
    net.reshape()
    assert net.blobs["y"].shape == (4, 5)


# -- Tile -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,tiles", [((2, 2, 3), 1, 3), ((1, 3, 2), -1, 2), ((2, 3), 0, 2), ((2, 3), 1, 1)])
def test_tile_matches_loop(shape, axis, tiles):
    layer = make_layer("Tile", f"tile_param {{ axis: {axis} tiles: {tiles} }}", shape)
    x = RNG.standard_normal(shape)
    a = axis % len(shape)
    outer = int(np.prod(shape[:a]))
    blocks = x.reshape(outer, -1)
    expected = np.stack([np.concatenate([blocks[i]] * tiles) for i in range(outer)])
    top_shape = list(shape)
    top_shape[a] *= tiles
    xt = t(x, grad=True)
    y = layer(xt)
    np.testing.assert_array_equal(y.detach().numpy(), expected.reshape(top_shape))
    top_diff = RNG.standard_normal(top_shape)
    y.backward(t(top_diff))
    expected_grad = top_diff.reshape(outer, tiles, -1).sum(1).reshape(shape)
    np.testing.assert_allclose(xt.grad.numpy(), expected_grad, rtol=1e-12)


def test_tile_errors():
    expect_error(['"L"', "tiles"], make_layer, "Tile", "tile_param { axis: 1 }", (2, 3))
    expect_error(['"L"', "tiles", "0"], make_layer, "Tile", "tile_param { tiles: 0 }", (2, 3))
    expect_error(['"L"', "tile_param axis"], make_layer, "Tile", "tile_param { tiles: 2 axis: 2 }", (2, 3))


# -- Silence --------------------------------------------------------------------------------------
def test_silence_consumes_and_gives_zero_diffs():
    net = net_from("""force_backward: true
        layer { name: "x" type: "Input" top: "x" top: "z" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { scale: 2 } }
        layer { name: "s" type: "Silence" bottom: "y" bottom: "z" }""")
    assert net.outputs == []
    net.blobs["x"].data[...] = 1.0
    net.forward()
    net.backward()
    assert not net.blobs["x"].diff.any() and not net.blobs["z"].diff.any()


# -- Filter ---------------------------------------------------------------------------------------
def test_filter_keeps_selected_items_and_routes_their_gradient():
    layer = make_layer("Filter", "", (5, 3), (5, 2, 1), (5,), tops=2)
    xs = [RNG.standard_normal((5, 3)), RNG.standard_normal((5, 2, 1))]
    selector = np.array([1.0, 0.0, -2.0, 0.0, 0.5])
    inputs = [t(x, grad=True) for x in xs]
    ys = layer(*inputs, t(selector))
    kept = [n for n in range(5) if selector[n] != 0]
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(y.detach().numpy(), x[kept])
    diffs = [RNG.standard_normal(y.shape) for y in ys]
    torch.autograd.backward(list(ys), [t(d) for d in diffs])
    for x, d in zip(inputs, diffs):
        expected = np.zeros(x.shape)
        expected[kept] = d
        np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_filter_gradcheck_with_dropped_items():
    layer = make_layer("Filter", "", (4, 3), (4, 1))
    selector = t([[0.0], [1.0], [0.0], [3.0]])
    assert torch.autograd.gradcheck(lambda x: layer(x, selector), (t(RNG.standard_normal((4, 3)), grad=True),))


def test_filter_tops_start_full_then_follow_the_selector():
    net = net_from("""force_backward: true
        layer { name: "x" type: "Input" top: "x" top: "sel" input_param { shape { dim: 4 dim: 2 } shape { dim: 4 } } }
        layer { name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "y" }""")
    assert net.blobs["y"].shape == (4, 2)  # Caffe's first Reshape: the whole batch
    x = RNG.standard_normal((4, 2)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["sel"].data[...] = [0, 1, 1, 0]
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, x[[1, 2]])
    net.blobs["y"].diff[...] = 1.0
    net.backward()  # force_backward must not ask for the selector's gradient
    np.testing.assert_array_equal(net.blobs["x"].diff, [[0, 0], [1, 1], [1, 1], [0, 0]])
    assert not net.blobs["sel"].diff.any()


def test_filter_errors():
    expect_error(['"L"', "one top per filtered bottom", "2"], make_layer, "Filter", "", (3, 2), (3, 1), (3,), tops=1)
    expect_error(['"L"', "selector", "(3, 2)"], make_layer, "Filter", "", (3, 2), (3, 2))
    expect_error(['"L"', "bottom 0", "(4, 2)", "3"], make_layer, "Filter", "", (4, 2), (3,))


# -- BatchReindex ---------------------------------------------------------------------------------
def test_batch_reindex_matches_loop_and_scatters_gradient():
    layer = make_layer("BatchReindex", "", (4, 2, 3), (6,))
    x = RNG.standard_normal((4, 2, 3))
    idx = np.array([3.0, 0.0, 3.0, 1.0, 3.0, 0.0])
    xt = t(x, grad=True)
    y = layer(xt, t(idx))
    np.testing.assert_array_equal(y.detach().numpy(), np.stack([x[int(i)] for i in idx]))
    top_diff = RNG.standard_normal((6, 2, 3))
    y.backward(t(top_diff))
    expected = np.zeros_like(x)
    for k, i in enumerate(idx):
        expected[int(i)] += top_diff[k]
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-12)


def test_batch_reindex_indices_get_no_gradient_even_when_forced():
    net = net_from("""force_backward: true
        layer { name: "x" type: "Input" top: "x" top: "i" input_param { shape { dim: 3 dim: 2 } shape { dim: 2 } } }
        layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" loss_weight: 1 }""")
    net.blobs["i"].data[...] = [2, 2]
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, [[0, 0], [0, 0], [2, 2]])
    assert not net.blobs["i"].diff.any()


@pytest.mark.parametrize("bad", [3.0, -0.5, -1.0])
def test_batch_reindex_rejects_out_of_range_indices(bad):
    layer = make_layer("BatchReindex", "", (3, 2), (2,))
    expect_error(['"L"', "bottom 1", "[0, 3)"], layer, torch.zeros(3, 2), torch.tensor([0.0, bad]))


def test_batch_reindex_needs_1d_indices():
    expect_error(['"L"', "1-D", "(2, 1)"], make_layer, "BatchReindex", "", (3, 2), (2, 1))
