"""Bytes -> a net written with pycaffe's ``NetSpec``, for the ``net_spec`` fuzz target.

The bytes are read as a stream of choices (:class:`Choices`): how many layers, each layer's type
(a registered one, or a made-up name), its bottoms (earlier tops), keyword arguments (field names
of its parameter message and of ``LayerParameter``, or made-up ones) with values of every Python
kind (numbers at the edges, strings, lists, dicts, None...), ``ntop`` and ``in_place``. The
property: ``to_proto()`` either raises a :class:`~torchcaffe.errors.CaffeError`, or returns a
NetParameter whose text (``str(proto)``, what pycaffe scripts write to disk) parses back to the
same message.
"""
from __future__ import annotations

import math

from torchcaffe.compat.net_spec import NetSpec, layers as L, param_name_dict
from torchcaffe.io.prototxt import parse_text
from torchcaffe.layers.registry import layer_type_list
from torchcaffe.proto import caffe_pb2

_TYPES = layer_type_list() + ["NoSuchType", "Deconvolution", ""]
_PARAM_PREFIX = param_name_dict()
_LAYER_FIELDS = [f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields]
_ODD_NAMES = ["ntop", "in_place", "nonexistent_field", "top", "bottom", "name", "type"]
_NUMBERS = [0, 1, -1, 2**31 - 1, 2**31, -2**31 - 1, 2**63, 2**64, 0.5, -0.0, 1e300, math.inf,
            -math.inf, math.nan, True, False]


class Choices:
    """Reads choices from bytes; when they run out, every choice is the first option."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        return self.byte() % n if n > 0 else 0

    def pick(self, options):
        return options[self.below(len(options))]

    def text(self) -> str:
        size = self.below(12)
        raw = bytes(self.byte() for _ in range(size))
        return raw.decode("utf-8", "replace")

    def value(self, depth: int = 0):
        kind = self.below(8 if depth < 2 else 4)
        if kind == 0:
            return self.pick(_NUMBERS)
        if kind == 1:
            return self.byte() - 64
        if kind == 2:
            return self.text()
        if kind == 3:
            return self.pick([None, b"\xff\x00", object(), 1j])
        if kind in (4, 5):
            return [self.value(depth + 1) for _ in range(self.below(4))]
        return {self.field_name(None): self.value(depth + 1) for _ in range(self.below(3))}

    def field_name(self, type_name: str | None) -> str:
        kind = self.below(4)
        if kind == 0 and type_name in _PARAM_PREFIX:
            message = getattr(caffe_pb2.LayerParameter(), _PARAM_PREFIX[type_name] + "_param")
            return self.pick([f.name for f in message.DESCRIPTOR.fields])
        if kind == 1:
            return self.pick(_LAYER_FIELDS)
        if kind == 2:
            return self.pick(_ODD_NAMES)
        return self.text() or "x"


def build(data: bytes) -> caffe_pb2.NetParameter:
    """The NetParameter of the net the bytes describe (or the writer's error)."""
    choices = Choices(data)
    spec = NetSpec()
    tops: list = []
    for index in range(1 + choices.below(5)):
        type_name = choices.pick(_TYPES) if choices.below(8) else choices.text()
        bottoms = [choices.pick(tops) for _ in range(choices.below(3))] if tops else []
        kwargs = {choices.field_name(type_name): choices.value() for _ in range(choices.below(4))}
        result = getattr(L, type_name)(*bottoms, **kwargs) if type_name else L.Input(**kwargs)
        made = result if isinstance(result, tuple) else (result,)
        made = [t for t in made if hasattr(t, "fn")]
        tops.extend(made)
        if made:
            name = choices.text() if choices.below(4) == 0 else f"blob{index}"
            spec[name or f"blob{index}"] = made[0]
    return spec.to_proto()


def build_and_round_trip(data: bytes) -> None:
    """:func:`build`, then check that the text of the result reads back to the same message."""
    proto = build(data)
    text = str(proto)
    again = parse_text(text, caffe_pb2.NetParameter(), "<net_spec text>")
    if again.SerializeToString(deterministic=True) != proto.SerializeToString(deterministic=True):
        raise AssertionError(f"NetSpec text does not read back to the same net:\n{text}")
