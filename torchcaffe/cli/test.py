"""``torchcaffe test``: score a model in the TEST phase (Caffe's ``caffe test``)."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ..amp import autocast, mixed_precision
from ..logs import LogSession, format_float, log
from ..net.net import TEST, Net
from .common import (UsageError, add_amp_flag, add_gpu_flag, add_iterations_flag, add_net_state_flags,
                     add_optimize_flag, add_python_layers_flag, net_options, single_device, split_list)
from .registry import register_verb

f32 = np.float32


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", metavar="FILE", help="the net definition (prototxt)")
    parser.add_argument("--weights", default="", metavar="A,B",
                        help="the trained weights (.caffemodel or .caffemodel.h5), several separated by ','")
    add_iterations_flag(parser, "the number of batches to score")
    add_gpu_flag(parser, "the CUDA device to run on (the first of several ids); default: the CPU")
    add_net_state_flags(parser, "the net")
    add_amp_flag(parser)
    add_optimize_flag(parser)
    add_python_layers_flag(parser)


@register_verb("test", "score a model", _arguments)
def test(args: argparse.Namespace, session: LogSession) -> int:
    if not args.model:
        raise UsageError("Need a model definition to score: give --model FILE")
    if not split_list(args.weights):
        raise UsageError("Need model weights to score: give --weights FILE")
    device = single_device(args.gpu)
    amp = mixed_precision(args.amp, device)
    net = Net(args.model, TEST, level=args.level or 0, stages=split_list(args.stage), **net_options(args))
    net.to(device)
    for path in split_list(args.weights):
        net.copy_from(path)
    log.info("Running for %d iterations.", args.iterations)
    score_batches(net, args.iterations, amp)
    return 0


def score_batches(net: Net, iterations: int, amp=None) -> list[float]:
    """Run ``iterations`` forward passes logging every output value (``Batch i, name = v``), then
    the mean loss (``Loss: L``) and each output's mean with its loss weight
    (``name = mean (* w = w*mean loss)``), sums in float32 as Caffe keeps them. Returns the means.
    ``amp`` (a :class:`~torchcaffe.amp.MixedPrecision`) runs the passes under autocast."""
    sums: np.ndarray | None = None
    loss = f32(0)
    names: list[str] = []
    with torch.no_grad(), autocast(amp):
        for i in range(iterations):
            batch_loss, outputs = _forward(net)
            loss += f32(batch_loss)
            values, names = _output_values(outputs)
            for name, value in zip(names, values):
                log.info("Batch %d, %s = %s", i, name, format_float(value))
            sums = values if sums is None else sums + values
    loss /= f32(iterations)
    log.info("Loss: %s", format_float(loss))
    means = [] if sums is None else list(sums / f32(iterations))
    for name, mean in zip(names, means):
        weight = f32(net.blob_loss_weights.get(name, 0.0))
        extra = f" (* {format_float(weight)} = {format_float(weight * mean)} loss)" if weight else ""
        log.info("%s = %s%s", name, format_float(mean), extra)
    return [float(m) for m in means]


def _forward(net: Net) -> tuple[float, dict[str, torch.Tensor]]:
    """One forward: the weighted loss and the output blobs. An optimized net (``--optimize``) runs
    its inference plan through ``net()``; a plain one Caffe's way, leaving every blob readable."""
    if net.optimized is None:
        loss = net.forward_loss()
        return loss, {name: net._blob_data(name) for name in net.outputs}
    outputs = net()
    loss = sum(float(net.blob_loss_weights.get(name, 0.0)) * float(value.float().sum())
               for name, value in outputs.items())
    return loss, outputs


def _output_values(outputs: dict[str, torch.Tensor]) -> tuple[np.ndarray, list[str]]:
    """Every value of every output blob in order (float32, whatever precision autocast left
    them in), with the blob's name for each."""
    arrays = [value.detach().to("cpu", torch.float32).numpy().reshape(-1) for value in outputs.values()]
    names = [name for name, array in zip(outputs, arrays) for _ in range(array.size)]
    values = np.concatenate(arrays) if arrays else np.zeros(0, f32)
    return values, names
