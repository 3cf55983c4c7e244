"""``torchcaffe plot LOG``: a PNG of the loss and accuracy curves of a training log."""
from __future__ import annotations

import argparse

from ..logs import LogSession, log
from ..plot import plot_log
from .registry import register_verb


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", metavar="LOG", help="a training log of torchcaffe train or of Caffe")
    parser.add_argument("--out", default=None, metavar="FILE.png",
                        help="where to write the PNG (default: the log's name with .png)")


@register_verb("plot", "plot the loss and accuracy curves of a training log", _arguments)
def plot(args: argparse.Namespace, session: LogSession) -> int:
    path = plot_log(args.log, args.out)
    log.info("Wrote %s", path)
    return 0
