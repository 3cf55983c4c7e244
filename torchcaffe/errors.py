"""The one exception family torchcaffe raises for bad input.

Every message states what was expected, what was found and, where it helps, the fix; and it
names the place: the file, the layer (``layer "conv1" (Convolution)``) and the field.
"""
from __future__ import annotations


class CaffeError(Exception):
    """Bad Caffe input: a malformed file, a net that Caffe would refuse, a shape that does not fit."""


class ParseError(CaffeError):
    """A text or binary protobuf file that cannot be read."""


class NetError(CaffeError):
    """A net definition that Caffe would refuse (unknown layer, missing bottom, bad arity...)."""


class WeightsError(CaffeError):
    """Weights that do not fit the net (wrong blob count or shape) or a damaged weights file."""


class GradientCheckError(CaffeError):
    """A backward pass that disagrees with finite differences (``torchcaffe.GradientChecker``):
    the message names the layer, the blob and the index of the worst mismatch; ``report`` holds
    the whole comparison."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def layer_label(name: str, type_: str) -> str:
    """How every message names a layer: ``layer "conv1" (Convolution)``."""
    return f'layer "{name}" ({type_})'
