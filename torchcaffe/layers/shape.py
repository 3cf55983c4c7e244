"""Layers that move values around without computing new ones: Concat, Slice, Split, Flatten,
Reshape, Tile, Silence, Filter and BatchReindex.
"""
from __future__ import annotations

import math

import torch

from .base import Layer, LayerSetup, Sample, axis_index
from .registry import register_layer


def _count(shape, start: int = 0, end: int | None = None) -> int:
    """Caffe's ``Blob::count(start, end)``: the product of the dims in [start, end)."""
    return math.prod(int(d) for d in tuple(shape)[start:end])


def _refuse_in_place(layer: Layer, setup: LayerSetup) -> None:
    """Caffe's ``CHECK_NE(top[i], bottom[0])`` for layers that cannot run in place."""
    p = setup.param
    if p.bottom and any(top == p.bottom[0] for top in p.top):
        raise layer.fail(f"cannot run in place (top {p.bottom[0]!r} is also its bottom); "
                         f"give the top a new name")


def _legacy_axis(layer: Layer, param, axis_field: str, dim_field: str, num_axes: int) -> int:
    """The axis of Concat/Slice: ``axis`` (may be negative) or the deprecated ``*_dim`` (not both)."""
    if param.HasField(dim_field):
        value = getattr(param, dim_field)
        if value >= num_axes:
            raise layer.fail(f"{dim_field} {value} is out of range for a {num_axes}-D bottom")
        return value
    return axis_index(layer, getattr(param, axis_field), num_axes, axis_field)


def _check_axis_fields(layer: Layer, param, axis_field: str, dim_field: str, section: str) -> None:
    if param.HasField(axis_field) and param.HasField(dim_field):
        raise layer.fail(f"{section} gives both {axis_field} and the deprecated {dim_field}; keep only {axis_field}")


@register_layer("Concat")
class Concat(Layer):
    """Join the bottoms along ``axis``; every other axis must agree.

    Parameters: ``concat_param { axis (1) concat_dim (deprecated, non-negative) }``.
    Shapes: ``(.., a_i, ..) x n -> (.., sum a_i, ..)``. One bottom: the top is the bottom.

    Example: ``layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "ab" concat_param { axis: 1 } }``
    """

    min_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 2), (2, 1, 2), (2, 2, 2))),
        Sample("concat_param { axis: 0 }", bottoms=((1, 3), (2, 3)), note="axis 0, batch 1"),
        Sample("concat_param { axis: -1 }", bottoms=((2, 2, 3), (2, 2, 1)), note="negative axis"),
        Sample("concat_param { concat_dim: 2 }", bottoms=((1, 2, 3), (1, 2, 2)), note="legacy concat_dim"),
        Sample(bottoms=((2, 3),), note="one bottom"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.param = p = setup.param.concat_param
        _check_axis_fields(self, p, "axis", "concat_dim", "concat_param")
        self._axis(setup.bottom_shapes)

    def _axis(self, shapes) -> int:
        first = tuple(shapes[0])
        axis = _legacy_axis(self, self.param, "axis", "concat_dim", len(first))
        for i, shape in enumerate(shapes[1:], 1):
            shape = tuple(shape)
            if len(shape) != len(first) or any(a != b for j, (a, b) in enumerate(zip(shape, first)) if j != axis):
                raise self.fail(f"every bottom must have the shape of bottom 0 {first} except along "
                                f"axis {axis}, but bottom {i} has {shape}")
        return axis

    def forward(self, *xs):
        axis = self._axis([x.shape for x in xs])
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=axis)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        if len(code.bottoms) == 1:
            return code.line(code.bottoms[0])
        return code.line(f"torch.cat([{', '.join(code.bottoms)}], {self._axis(code.bottom_shapes)})")


@register_layer("Slice")
class Slice(Layer):
    """Cut the bottom along ``axis`` into the tops, at ``slice_point``s or into equal parts.

    Parameters: ``slice_param { axis (1) slice_point (ascending, one fewer than the tops; unset:
    equal parts) slice_dim (deprecated, non-negative) }``.
    Shapes: ``(.., a, ..) -> (.., a_0, ..), (.., a_1, ..), ...``. One top: the top is the bottom.

    Example: ``layer { name: "slice" type: "Slice" bottom: "x" top: "x0" top: "x1"
    slice_param { axis: 1 slice_point: 2 } }``
    """

    exact_bottoms = 1
    min_tops = 1
    samples = (
        Sample(bottoms=((2, 4, 3),), tops=2, note="equal parts"),
        Sample("slice_param { axis: 2 slice_point: 1 slice_point: 4 }", bottoms=((2, 2, 5),), tops=3),
        Sample("slice_param { axis: 0 slice_point: 1 }", bottoms=((3, 2),), tops=2, note="axis 0"),
        Sample("slice_param { axis: -1 }", bottoms=((1, 2, 6),), tops=3, note="negative axis, batch 1"),
        Sample("slice_param { slice_dim: 1 slice_point: 2 }", bottoms=((2, 3),), tops=2, note="legacy slice_dim"),
        Sample(bottoms=((2, 3),), tops=1, note="one top"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.param = p = setup.param.slice_param
        _check_axis_fields(self, p, "axis", "slice_dim", "slice_param")
        self.points = list(p.slice_point)
        if self.points and len(self.points) != self.num_tops - 1:
            raise self.fail(f"slice_param slice_point must be given once fewer than the tops "
                            f"({self.num_tops - 1} times), got {len(self.points)}")
        self._sizes(setup.bottom_shapes[0])

    def _sizes(self, shape) -> tuple[int, list[int]]:
        axis = _legacy_axis(self, self.param, "axis", "slice_dim", len(shape))
        length, tops = int(shape[axis]), self.num_tops
        if not self.points:
            if length % tops:
                raise self.fail(f"cannot cut axis {axis} (size {length}) into {tops} equal parts; "
                                f"give slice_param slice_point, or a number of tops dividing {length}")
            return axis, [length // tops] * tops
        if tops > length:
            raise self.fail(f"{tops} tops are more than the size of axis {axis} ({length})")
        bounds = [0] + self.points + [length]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        if any(s <= 0 for s in sizes[:-1]) or sizes[-1] < 0:
            raise self.fail(f"slice_param slice_point {self.points} must be strictly ascending, "
                            f"positive and at most {length} (the size of axis {axis})")
        return axis, sizes

    def forward(self, x):
        axis, sizes = self._sizes(x.shape)
        if len(sizes) == 1:
            return x
        return tuple(torch.split(x, sizes, dim=axis))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        axis, sizes = self._sizes(code.bottom_shapes[0])
        x = code.bottoms[0]
        if len(sizes) == 1:
            return code.line(x)
        return code.line(f"torch.split({x}, {sizes}, dim={axis})")


@register_layer("Split")
class Split(Layer):
    """Hand one bottom to several consumers: every top is the bottom (their gradients add).

    The net inserts Split layers by itself wherever a blob fans out (Caffe's ``insert_splits``).
    Shapes: (*) -> (*), (*), ...

    Example: ``layer { name: "x_split" type: "Split" bottom: "x" top: "x_a" top: "x_b" }``

    The tops are views of the bottom, not copies; each view is a separate node of the autograd
    graph, so each top's diff is its own consumer's gradient, as in Caffe.
    """

    exact_bottoms = 1
    min_tops = 1
    samples = (
        Sample(bottoms=((2, 3),), tops=2),
        Sample(bottoms=((1, 2, 3),), tops=3, note="three tops, batch 1"),
        Sample(bottoms=((4,),), tops=1, note="one top"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        _refuse_in_place(self, setup)

    def forward(self, x):
        return tuple(x.view_as(x) for _ in range(self.num_tops))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        return code.same_as_bottoms()


@register_layer("Flatten")
class Flatten(Layer):
    """Merge the axes ``axis .. end_axis`` (inclusive) into one.

    Parameters: ``flatten_param { axis (1) end_axis (-1) }``.
    Shapes: ``(N, C, H, W) -> (N, C*H*W)`` by default.

    Example: ``layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }``

    Caffe refuses to run it in place. ``end_axis = axis - 1`` inserts an axis of size 1 (an empty
    product), as Caffe's ``count(axis, end_axis + 1)`` does.
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample(bottoms=((2, 3, 2, 2),)),
        Sample("flatten_param { axis: 2 end_axis: 3 }", bottoms=((2, 2, 3, 2, 2),)),
        Sample("flatten_param { axis: 0 }", bottoms=((1, 3, 2),), note="everything, batch 1"),
        Sample("flatten_param { axis: -2 end_axis: -2 }", bottoms=((2, 3, 2),), note="one axis: no change"),
        Sample("flatten_param { axis: 2 end_axis: 1 }", bottoms=((2, 3, 2),), note="end before axis: a new 1"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        _refuse_in_place(self, setup)
        self.param = setup.param.flatten_param
        self._top_shape(setup.bottom_shapes[0])

    def _top_shape(self, shape) -> tuple[int, ...]:
        shape = tuple(int(d) for d in shape)
        start = axis_index(self, self.param.axis, len(shape), "flatten_param axis")
        end = axis_index(self, self.param.end_axis, len(shape), "flatten_param end_axis")
        if end + 1 < start:
            raise self.fail(f"flatten_param end_axis ({self.param.end_axis}, axis {end}) must not "
                            f"come before axis ({self.param.axis}, axis {start}) minus one")
        return shape[:start] + (_count(shape, start, end + 1),) + shape[end + 1:]

    def forward(self, x):
        return x.reshape(self._top_shape(x.shape))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def _axes(self, num_axes: int) -> tuple[int, int]:
        start = axis_index(self, self.param.axis, num_axes, "flatten_param axis")
        return start, axis_index(self, self.param.end_axis, num_axes, "flatten_param end_axis")

    def export_onnx(self, x):
        """``torch.flatten`` keeps the batch axis symbolic (the forward's shape is all constants)."""
        start, end = self._axes(x.dim())
        return x.unsqueeze(start) if end + 1 == start else x.flatten(start, end)

    def export_source(self, code):
        x, shape = code.bottoms[0], code.bottom_shapes[0]
        start, end = self._axes(len(shape))
        if end + 1 == start:
            return code.line(f"{x}.unsqueeze({start})")
        return code.line(f"{x}.flatten({start})" if end == len(shape) - 1 else f"{x}.flatten({start}, {end})")


@register_layer("Reshape")
class Reshape(Layer):
    """Give the bottom a new shape with the same values.

    ``shape`` replaces the bottom's axes ``[axis, axis + num_axes)``: a ``0`` copies the bottom's
    dim at that position, one ``-1`` is inferred from the count.

    Parameters: ``reshape_param { shape { dim... } axis (0) num_axes (-1: to the end) }``.
    Shapes: (*) -> as described.

    Example: ``layer { name: "r" type: "Reshape" bottom: "x" top: "y"
    reshape_param { shape { dim: 0 dim: -1 } } }``

    Differs from torch: ``0`` means "copy", and only a range of axes is replaced. Caffe refuses
    to run it in place. A negative ``axis`` counts from the end *plus one* (``-1`` appends
    after the last axis).
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("reshape_param { shape { dim: 0 dim: -1 } }", bottoms=((2, 3, 2),)),
        Sample("reshape_param { shape { dim: 3 dim: 2 dim: 2 } }", bottoms=((2, 6),)),
        Sample("reshape_param { shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 }", bottoms=((1, 4, 3),),
               note="replace one axis, batch 1"),
        Sample("reshape_param { shape { dim: 1 } axis: -1 }", bottoms=((2, 3),), note="append an axis"),
        Sample("reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 }", bottoms=((2, 3),), note="insert an axis"),
        Sample("reshape_param { shape { dim: -1 dim: 0 } axis: 1 }", bottoms=((2, 3, 4, 2),),
               note="0 copies the bottom dim at its own position"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        _refuse_in_place(self, setup)
        p = setup.param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        self.axis, self.num_axes = p.axis, p.num_axes
        if self.dims.count(-1) > 1:
            raise self.fail(f"reshape_param shape {self.dims} has more than one -1; at most one dim "
                            f"may be inferred")
        if any(d < -1 for d in self.dims):
            raise self.fail(f"reshape_param shape {self.dims} has a dim below -1")
        if self.num_axes < -1:
            raise self.fail(f"reshape_param num_axes must be >= 0, or -1 for all, got {self.num_axes}")
        self._top_shape(setup.bottom_shapes[0])

    def _top_shape(self, shape) -> tuple[int, ...]:
        shape = tuple(int(d) for d in shape)
        n = len(shape)
        start = self.axis if self.axis >= 0 else n + self.axis + 1
        if not 0 <= start <= n:
            raise self.fail(f"reshape_param axis {self.axis} is out of range for a {n}-D bottom")
        end = n if self.num_axes == -1 else start + self.num_axes
        if end > n:
            raise self.fail(f"reshape_param axis + num_axes ({start} + {self.num_axes}) exceeds the "
                            f"bottom's {n} axes")
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.fail(f"reshape_param shape {self.dims} has a 0 at position {i}, but the "
                                    f"{n}-D bottom has no axis {start + i} to copy")
                new[i] = shape[start + i]
        total = _count(shape)
        if -1 in new:
            known = _count(shape, 0, start) * _count(shape, end) * math.prod(d for d in new if d != -1)
            if known == 0 or total % known:
                raise self.fail(f"cannot infer the -1 of reshape_param shape {self.dims}: the bottom's "
                                f"{total} values are not divisible by the other dims' product {known}")
            new[new.index(-1)] = total // known
        top = shape[:start] + tuple(new) + shape[end:]
        if _count(top) != total:
            raise self.fail(f"reshape_param shape {self.dims} gives {top} ({_count(top)} values) for a "
                            f"bottom of shape {shape} ({total} values); the counts must match")
        return top

    def forward(self, x):
        return x.reshape(self._top_shape(x.shape))

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def symbolic_top_shape(self, sizes: list, static_shape) -> list:
        """The top shape with each copied axis (a ``0``, or an axis outside ``[axis, axis + num_axes)``)
        taken from ``sizes`` — traced sizes, or source text — and a ``-1`` kept, so that the batch
        axis stays symbolic; ``static_shape`` is the bottom's shape for Caffe's checks."""
        n = len(static_shape)
        self._top_shape(static_shape)
        start = self.axis if self.axis >= 0 else n + self.axis + 1
        end = n if self.num_axes == -1 else start + self.num_axes
        return sizes[:start] + [sizes[start + i] if d == 0 else d for i, d in enumerate(self.dims)] + sizes[end:]

    def export_onnx(self, x):
        return x.reshape(self.symbolic_top_shape(list(x.shape), x.shape))

    def export_source(self, code):
        x, shape = code.bottoms[0], code.bottom_shapes[0]
        sizes = self.symbolic_top_shape([f"{x}.shape[{i}]" for i in range(len(shape))], shape)
        return code.line(f"{x}.reshape({', '.join(map(str, sizes))})")


@register_layer("Tile")
class Tile(Layer):
    """Repeat the bottom ``tiles`` times along ``axis`` (the whole block, like ``Tensor.repeat``).

    Parameters: ``tile_param { axis (1) tiles (required, > 0) }``.
    Shapes: ``(.., a, ..) -> (.., a * tiles, ..)``.

    Example: ``layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 } }``
    """

    exact_bottoms = 1
    exact_tops = 1
    samples = (
        Sample("tile_param { tiles: 3 }", bottoms=((2, 2, 3),)),
        Sample("tile_param { axis: -1 tiles: 2 }", bottoms=((1, 3, 2),), note="last axis, batch 1"),
        Sample("tile_param { axis: 0 tiles: 2 }", bottoms=((2, 3),), note="axis 0"),
        Sample("tile_param { tiles: 1 }", bottoms=((2, 3),), note="one tile"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.tile_param
        if not p.HasField("tiles"):
            raise self.fail("tile_param tiles must be given (the number of copies)")
        if p.tiles <= 0:
            raise self.fail(f"tile_param tiles must be positive, got {p.tiles}")
        self.axis, self.tiles = p.axis, p.tiles
        axis_index(self, p.axis, len(setup.bottom_shapes[0]), "tile_param axis")

    def forward(self, x):
        axis = axis_index(self, self.axis, x.dim(), "tile_param axis")
        repeats = [1] * x.dim()
        repeats[axis] = self.tiles
        return x.repeat(repeats)

    # -- export hooks (torchcaffe.export) ----------------------------------------------------------
    def export_source(self, code):
        x, shape = code.bottoms[0], code.bottom_shapes[0]
        repeats = [1] * len(shape)
        repeats[axis_index(self, self.axis, len(shape), "tile_param axis")] = self.tiles
        return code.line(f"{x}.repeat({', '.join(map(str, repeats))})")


@register_layer("Silence")
class Silence(Layer):
    """Consume bottoms and produce nothing (so that they are not net outputs).

    Backward gives the bottoms zero diffs. Shapes: (*), ... -> nothing.

    Example: ``layer { name: "silence" type: "Silence" bottom: "unused" }``
    """

    min_bottoms = 1
    exact_tops = 0
    samples = (
        Sample(bottoms=((2, 3),), gradcheck=False),
        Sample(bottoms=((1, 2), (3,)), gradcheck=False, note="two bottoms"),
    )

    def top_shapes(self, bottom_shapes):
        return []

    def forward(self, *xs):
        return ()


@register_layer("Filter")
class Filter(Layer):
    """Keep the items (along axis 0) whose selector value is non-zero.

    The last bottom is the selector, ``N`` values (its other axes must be 1); each other bottom
    (first axis ``N``) gives one top holding its selected items in order. The gradient of a kept
    item is its top's; dropped items get 0; the selector gets none.

    Shapes: ``(N, ...), ..., selector (N, 1, ...) -> (S, ...), ...`` with ``S`` the number of
    non-zero selector values. At construction (before any value is known) the tops have the full
    ``N`` items, as Caffe's first Reshape gives them.

    Example: ``layer { name: "f" type: "Filter" bottom: "feat" bottom: "keep" top: "kept" }``

    Differs from Caffe: Caffe aborts when asked to back-propagate into the selector (also under
    ``force_backward``); here it simply receives no gradient.
    """

    min_bottoms = 2
    min_tops = 1
    samples = (
        Sample(bottoms=((4, 3), (4,)), values=(None, ("choice_int", 1, 2, -1))),
        Sample(bottoms=((3, 2, 2), (3, 1), (3, 1, 1)), tops=2,
               values=(None, None, ("choice_int", 1, 3)), note="two filtered bottoms"),
        Sample(bottoms=((1, 5), (1,)), values=(None, ("choice_int", 1)), note="batch 1"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        if self.num_tops != len(setup.bottom_shapes) - 1:
            raise self.fail(f"needs one top per filtered bottom ({len(setup.bottom_shapes) - 1}: every "
                            f"bottom but the last, the selector), got {self.num_tops}")
        self.num_bottoms = len(setup.bottom_shapes)
        self._check(setup.bottom_shapes)

    def _check(self, shapes) -> None:
        selector = tuple(shapes[-1])
        if len(selector) == 0 or any(d != 1 for d in selector[1:]):
            raise self.fail(f"the selector (last bottom) must have shape (N,) or (N, 1, ...), got {selector}")
        for i, shape in enumerate(shapes[:-1]):
            if len(shape) == 0 or shape[0] != selector[0]:
                raise self.fail(f"bottom {i} (shape {tuple(shape)}) must have as many items on axis 0 "
                                f"as the selector ({selector[0]})")

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != self.num_bottoms - 1

    def top_shapes(self, bottom_shapes):
        self._check(bottom_shapes)
        return [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *xs):
        self._check([x.shape for x in xs])
        keep = torch.nonzero(xs[-1].detach().reshape(-1) != 0).flatten()
        return tuple(x.index_select(0, keep) for x in xs[:-1])


@register_layer("BatchReindex")
class BatchReindex(Layer):
    """Pick items of bottom 0 along axis 0 by the indices in bottom 1: ``top[i] = x[idx[i]]``.

    Indices may repeat or be left out; the gradient of bottom 0 adds up over repeats; bottom 1
    gets none. Shapes: ``(N, ...), (M,) -> (M, ...)``.

    Example: ``layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "idx" top: "y" }``

    Caffe cannot back-propagate into the indices (it aborts when asked, also under
    ``force_backward``); here they simply receive no gradient.
    """

    exact_bottoms = 2
    exact_tops = 1
    samples = (
        Sample(bottoms=((4, 3), (5,)), values=(None, ("int", 0, 4))),
        Sample(bottoms=((3, 2, 2), (2,)), values=(None, ("choice_int", 2, 2)), note="repeated index"),
        Sample(bottoms=((1, 4), (3,)), values=(None, ("int", 0, 1)), note="batch 1"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self._check(setup.bottom_shapes)

    def _check(self, shapes) -> None:
        if len(shapes[1]) != 1:
            raise self.fail(f"the indices (bottom 1) must be 1-D, got shape {tuple(shapes[1])}")
        if len(shapes[0]) == 0:
            raise self.fail("bottom 0 must have at least one axis")

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def forward(self, x, idx):
        self._check([x.shape, idx.shape])
        idx = idx.detach()
        if not idx.is_meta and idx.numel():
            bad = (idx < 0) | (idx >= x.shape[0])  # Caffe compares the float values
            if bool(bad.any()):
                raise self.fail(f"index {idx[bad][0].item()!r} (bottom 1) is outside [0, {x.shape[0]}), "
                                f"the items of bottom 0")
        return x.index_select(0, idx.to(torch.long))
