"""``torchcaffe gradcheck NET.prototxt [--layer NAME]``: compare each layer's backward (autograd, or
a classic Python layer's own) with finite differences, Caffe's way (see :mod:`torchcaffe.gradcheck`).

Prints, per layer, the worst mismatch of each bottom and parameter; the exit status is 1 when any
mismatch exceeds ``--threshold`` (or the net cannot be built), 0 otherwise.
"""
from __future__ import annotations

import argparse

from .. import gradcheck as checking
from ..logs import LogSession
from .registry import register_verb


@register_verb("gradcheck", "check every layer's backward against finite differences", checking.add_arguments)
def gradcheck(args: argparse.Namespace, session: LogSession) -> int:
    return checking.run(args)
