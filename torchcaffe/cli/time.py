"""``torchcaffe time``: per-layer forward and backward times (Caffe's ``caffe time``).

As Caffe's benchmark does, every layer runs on its own: its forward on the bottoms the layers
before it produced, then, walking back, its backward from its tops to its bottoms and parameters
(``torch.autograd.grad`` over that one layer). Each bottom is cut from the graph of the layer that
made it, so a layer's backward time is its own. The gradients fed to the tops are ones (the
values do not change the time); the initial ``Net`` forward/backward runs once before timing, as
in Caffe, so allocations are done. On a GPU the device is synchronised around every timed step
(Caffe times with CUDA events; a synchronisation measures the same span).

Output, as Caffe prints it: ``Iteration: k forward-backward time: t ms.`` per iteration, then per
layer ``<name right-aligned in 10>\\tforward: t ms.`` and ``...\\tbackward: t ms.``, then the
``Average Forward pass``, ``Average Backward pass``, ``Average Forward-Backward`` and
``Total Time`` lines.
"""
from __future__ import annotations

import argparse
import time as clock
from dataclasses import dataclass, field

import torch

from ..amp import autocast, mixed_precision
from ..logs import LogSession, format_float, log
from ..net.net import TEST, TRAIN, Net
from .common import (UsageError, add_amp_flag, add_gpu_flag, add_iterations_flag, add_net_state_flags,
                     add_python_layers_flag, net_options, single_device, split_list)
from .registry import register_verb

_PHASES = {"TRAIN": TRAIN, "TEST": TEST}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", metavar="FILE", help="the net definition (prototxt)")
    parser.add_argument("--weights", default="", metavar="A,B",
                        help="optional weights to load first, several separated by ','")
    add_iterations_flag(parser, "the number of timed forward-backward passes")
    parser.add_argument("--phase", default="TRAIN", metavar="PHASE", help="TRAIN (default) or TEST")
    add_gpu_flag(parser, "the CUDA device to time on (the first of several ids); default: the CPU")
    add_net_state_flags(parser, "the net")
    add_amp_flag(parser)
    add_python_layers_flag(parser)


@register_verb("time", "benchmark model execution time", _arguments)
def time(args: argparse.Namespace, session: LogSession) -> int:
    if not args.model:
        raise UsageError("Need a model definition to time: give --model FILE")
    if args.phase not in _PHASES:
        raise UsageError(f'--phase must be "TRAIN" or "TEST", got "{args.phase}"')
    device = single_device(args.gpu)
    amp = mixed_precision(args.amp, device)
    net = Net(args.model, _PHASES[args.phase], level=args.level or 0, stages=split_list(args.stage),
              **net_options(args))
    net.to(device)
    for path in split_list(args.weights):
        net.copy_from(path)
    with autocast(amp):
        log.info("Performing Forward")
        loss = net.forward_loss()
        log.info("Initial loss: %s", format_float(loss))
        log.info("Performing Backward")
        net.backward()
        timings = benchmark(net, args.iterations, device)
    _log_averages(timings, args.iterations)
    return 0


@dataclass
class Timings:
    """Summed milliseconds over the timed iterations, per layer (the net's order) and in total."""

    names: list[str]
    forward: list[float] = field(default_factory=list)
    backward: list[float] = field(default_factory=list)
    forward_total: float = 0.0
    backward_total: float = 0.0
    total: float = 0.0


def benchmark(net: Net, iterations: int, device: torch.device) -> Timings:
    """Time ``iterations`` layer-by-layer forward and backward passes of ``net``."""
    nodes = net._graph.nodes
    timings = Timings([node.name for node in nodes], [0.0] * len(nodes), [0.0] * len(nodes))
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    sync = _synchronizer(device)
    sync()
    start_all = clock.perf_counter()
    for j in range(iterations):
        start_iter = clock.perf_counter()
        steps = _timed_forward(net, timings.forward, sync)
        middle = clock.perf_counter()
        _timed_backward(nodes, steps, timings.backward, sync)
        end = clock.perf_counter()
        timings.forward_total += (middle - start_iter) * 1000
        timings.backward_total += (end - middle) * 1000
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, format_float((end - start_iter) * 1000))
    timings.total = (clock.perf_counter() - start_all) * 1000
    return timings


def _synchronizer(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _timed_forward(net: Net, totals: list[float], sync) -> list:
    """Run each layer on its own, adding its milliseconds to ``totals``; returns per layer the
    (bottoms that need a gradient, tops) pair its backward starts from."""
    vals: list = [None] * len(net._graph.slot_names)
    steps: list = []
    with torch.enable_grad():
        for node in net._graph.nodes:
            if getattr(node.layer, "is_input", False):
                for name, slot in zip(node.tops, node.top_slots):
                    vals[slot] = net._blob_data(name)
                steps.append(([], []))
                continue
            bottoms = [_cut(vals[slot], need) for slot, need in zip(node.bottom_slots, node.bottom_need_backward)]
            begin = clock.perf_counter()
            tops = node.layer(*bottoms)
            sync()
            totals[node.index] += (clock.perf_counter() - begin) * 1000
            tops = tops if isinstance(tops, tuple) else (tops,)
            for slot, tensor in zip(node.top_slots, tops):
                vals[slot] = tensor
            needed = [b for b, need in zip(bottoms, node.bottom_need_backward) if need and b.requires_grad]
            steps.append((needed, list(tops)))
    return steps


def _cut(tensor: torch.Tensor, need: bool) -> torch.Tensor:
    """``tensor`` cut from the graph behind it; a leaf that wants its gradient when ``need``."""
    leaf = tensor.detach()
    return leaf.requires_grad_() if need and leaf.is_floating_point() else leaf


def _timed_backward(nodes, steps: list, totals: list[float], sync) -> None:
    for node, (bottoms, tops) in zip(reversed(nodes), reversed(steps)):
        outputs = [t for t in tops if isinstance(t, torch.Tensor) and t.requires_grad]
        params = [p for p in node.layer.parameters() if p.requires_grad] if node.need_backward else []
        inputs = bottoms + params
        begin = clock.perf_counter()
        if outputs and inputs:
            torch.autograd.grad(outputs, inputs, [torch.ones_like(t) for t in outputs], allow_unused=True)
        sync()
        totals[node.index] += (clock.perf_counter() - begin) * 1000


def _log_averages(timings: Timings, iterations: int) -> None:
    log.info("Average time per layer: ")
    for name, forward, backward in zip(timings.names, timings.forward, timings.backward):
        log.info("%10s\tforward: %s ms.", name, format_float(forward / iterations))
        log.info("%10s\tbackward: %s ms.", name, format_float(backward / iterations))
    log.info("Average Forward pass: %s ms.", format_float(timings.forward_total / iterations))
    log.info("Average Backward pass: %s ms.", format_float(timings.backward_total / iterations))
    log.info("Average Forward-Backward: %s ms.", format_float(timings.total / iterations))
    log.info("Total Time: %s ms.", format_float(timings.total))
    log.info("*** Benchmark ends ***")
