"""Layers that bring data into the net without reading a database: Input and DummyData.

(The database and image readers — Data, ImageData, HDF5Data, MemoryData, WindowData — come with
the data pipeline.)
"""
from __future__ import annotations

import torch

from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, LayerSetup, Sample
from .registry import register_layer


def _shapes_for_tops(layer: Layer, shapes, num_tops: int, field_name: str) -> list[torch.Size]:
    """Caffe's rule for per-top shapes: given once (for every top), once per top, or never."""
    shapes = [torch.Size(tuple(int(d) for d in s.dim)) for s in shapes]
    if len(shapes) == 1:
        return shapes * num_tops
    if len(shapes) == num_tops:
        return shapes
    if not shapes:
        return [torch.Size([0])] * num_tops
    raise layer.fail(f"'{field_name}' must be given once, once per top ({num_tops}) or not at all; "
                     f"got {len(shapes)}")


@register_layer("Input")
class Input(Layer):
    """The net's input blobs: tops whose values the caller sets (pycaffe ``net.blobs[...]``).

    ``input_param { shape { dim: N dim: C ... } }`` once for all tops or once per top; without a
    shape the top must be reshaped before use. The net reads its tops from the input blobs; the
    layer computes nothing.

    Shapes: () -> tops as declared.
    """

    exact_bottoms = 0
    min_tops = 1
    is_input = True
    samples = ()  # exercised by every other sample: the harness feeds layers through Input layers

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.shapes = _shapes_for_tops(self, setup.param.input_param.shape, setup.num_tops, "shape")

    def top_shapes(self, bottom_shapes):
        return self.shapes

    def forward(self):
        raise RuntimeError("Input layers are fed by the net; they are never called")


@register_layer("DummyData")
class DummyData(Layer):
    """Tops filled by fillers: ``dummy_data_param { shape {...} data_filler {...} }``.

    One filler for all tops or one per top (default: constant 0). Constant fillers fill once;
    other fillers draw new values at every forward, as Caffe's ``refill_`` does. Shapes come from
    ``shape`` or the legacy ``num/channels/height/width`` lists.
    """

    exact_bottoms = 0
    min_tops = 1
    differentiable = False
    samples = (
        Sample("dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'constant' value: 1.5 } }",
               bottoms=(), tops=1, gradcheck=False, note="constant filler, filled once"),
        Sample("dummy_data_param { num: 2 channels: 1 height: 2 width: 3 num: 1 channels: 2 height: 1 width: 1 "
               "data_filler { type: 'gaussian' std: 2 } }",
               bottoms=(), tops=2, gradcheck=False, note="legacy 4-D shapes, one filler for both tops"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.dummy_data_param
        n = setup.num_tops
        self.shapes = self._declared_shapes(p, n)
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter()]
        if len(fillers) == 1:
            fillers = fillers * n
        if len(fillers) != n:
            raise self.fail(f"data_filler must be given 0, 1 or {n} times (once per top); got {len(fillers)}")
        self.fillers = fillers
        for i, (shape, filler) in enumerate(zip(self.shapes, fillers)):
            value = torch.zeros(shape)
            if filler.type == "constant":
                fill(value, filler, self.label)
            self.register_buffer(f"_top{i}", value, persistent=False)

    def _declared_shapes(self, p, n: int) -> list[torch.Size]:
        legacy = (p.num, p.channels, p.height, p.width)
        if any(legacy):
            if p.shape:
                raise self.fail("give either 'shape' or num/channels/height/width, not both")
            if len({len(x) for x in legacy}) != 1:
                raise self.fail("num, channels, height and width must be given the same number of times")
            shapes = [caffe_pb2.BlobShape(dim=dims) for dims in zip(*legacy)]
        else:
            shapes = list(p.shape)
        return _shapes_for_tops(self, shapes, n, "shape")

    def top_shapes(self, bottom_shapes):
        return self.shapes

    def forward(self):
        tops = []
        for i, filler in enumerate(self.fillers):
            top = getattr(self, f"_top{i}")
            if filler.type != "constant":
                fill(top, filler, self.label)
            tops.append(top.clone())
        return tuple(tops)
