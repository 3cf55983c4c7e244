"""``torchcaffe draw NET.prototxt OUT.png [--rankdir LR] [--phase ALL] [--display_lrm]``: a net as a
picture, as Caffe's ``python/draw_net.py`` draws it (see :mod:`torchcaffe.compat.draw`).

``.dot``/``.gv``/``.raw`` files hold the Graphviz source and need nothing else; images (``.png``,
``.svg``, ``.pdf``...) need Graphviz's ``dot`` program (the system package ``graphviz``).
"""
from __future__ import annotations

import argparse

from ..compat import draw as drawing
from ..logs import LogSession, log
from .registry import register_verb


@register_verb("draw", "draw a net as a picture (Graphviz)", drawing.add_arguments)
def draw(args: argparse.Namespace, session: LogSession) -> int:
    log.info("Drawing net to %s", args.output_image_file)
    return drawing.run(args)
