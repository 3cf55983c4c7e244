"""pycaffe's ``coord_map``: how spatial layers map coordinates, and the ``Crop`` that aligns two
tops of a ``NetSpec`` (what fully convolutional nets need after upsampling).

A layer maps a top coordinate ``y`` to its bottom coordinate ``x = a * y + b`` along the spatial
axes from ``axis`` on; composing maps along the net gives the map between any two tops with a
common ancestor. For Convolution, Pooling and Im2col with stride ``s``, (dilated) kernel ``k``
and pad ``p``: ``a = 1/s``, ``b = (p - (k - 1)/2) / s`` as the *bottom-to-top* map; Deconvolution
inverts it (``a = s``, ``b = (k - 1)/2 - p``); element-wise layers pass coordinates through; Crop
shifts by ``-offset``.

    from torchcaffe.compat.coord_map import crop
    n.score = crop(n.upscore, n.data)          # L.Crop(n.upscore, n.data, crop_param={axis, offset})
"""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from .net_spec import Top, layers as L

__all__ = ["coord_map", "coord_map_from_to", "compose", "inverse", "crop", "conv_params", "crop_params",
           "UndefinedMapException", "AxisMismatchException", "PASS_THROUGH_LAYERS"]

#: Layers that keep every coordinate where it is.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]


class UndefinedMapException(CaffeError):
    """The layer has no coordinate map (it is not spatial, or not known to keep coordinates)."""


class AxisMismatchException(CaffeError):
    """Two maps start at different axes and cannot be composed."""


class CoordMapError(CaffeError, AssertionError):
    """The two tops cannot be aligned by a crop (pycaffe asserts)."""


class UnconnectedTopsError(CaffeError, RuntimeError):
    """The two tops have no common ancestor reachable through spatial layers."""


def conv_params(fn) -> tuple:
    """``(axis, stride, dilated kernel extent, pad)`` of a Convolution/Pooling/Deconvolution
    ``Function``, read from its keywords or its ``convolution_param`` dict."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(params)
    if legacy:
        raise CaffeError(f"{fn.type_name}: cropping does not support the legacy _h/_w parameters {sorted(legacy)}")
    if "kernel_size" not in params:
        raise CaffeError(f"{fn.type_name}: coord_map needs its kernel_size")
    axis = params.get("axis", 1)
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (axis, np.array(params.get("stride", 1), ndmin=1), (kernel - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn) -> tuple:
    """``(axis, offset)`` of a Crop ``Function`` (axis 2 by default: the spatial axes of NCHW)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn) -> tuple:
    """``(axis, a, b)``: the map from ``fn``'s top coordinates to its bottom's, ``x = a*y + b``
    (axis ``None`` for layers that apply to every axis)."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # -1: the axis before the first cropped one
    raise UndefinedMapException(f"{fn.type_name} has no coordinate map")


def compose(base_map: tuple, next_map: tuple) -> tuple:
    """The map of ``base_map`` followed by ``next_map``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException(f"cannot compose maps starting at axes {ax1} and {ax2}")
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map_: tuple) -> tuple:
    axis, a, b = coord_map_
    return axis, 1 / a, -b / a


def _bottoms(top: Top) -> tuple:
    """The bottoms a top's coordinates come from (a Crop's reference bottom does not count)."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def coord_map_from_to(top_from: Top, top_to: Top) -> tuple:
    """The map from ``top_from``'s coordinates to ``top_to``'s, through their common ancestor."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        top = frontier.pop()
        try:
            for bottom in _bottoms(top):
                from_maps[bottom] = compose(from_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            pass
    to_maps = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            for bottom in _bottoms(top):
                to_maps[bottom] = compose(to_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            continue
    raise UnconnectedTopsError("could not compute the map between the tops: are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top) -> Top:
    """``L.Crop(top_from, top_to, crop_param=...)`` with the axis and offsets that align
    ``top_from`` to ``top_to``'s coordinates."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    if not (np.asarray(a) == 1).all():
        raise CoordMapError(f"scale mismatch on crop (a = {a})")
    if not (np.asarray(b) <= 0).all():
        raise CoordMapError(f"cannot crop negative offset (b = {b})")
    if not (np.round(b) == b).all():
        raise CoordMapError(f"cannot crop noninteger offset (b = {b})")
    offsets = [int(v) for v in -np.round(np.asarray(b, dtype=float)).astype(int).reshape(-1)]
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offsets))
