"""Numerical faults: Caffe's ``debug_info`` lines, and stopping on NaN/Inf naming the layer.

``debug_info: true`` in a solver makes Caffe's ``Net`` log, on every display iteration, the mean
absolute value (``asum / count``) of each blob as it is computed::

        [Forward] Layer conv1, top blob conv1 data: 0.123
        [Forward] Layer conv1, param blob 0 data: 0.0456
        [Backward] Layer conv1, bottom blob data diff: 0.00012
        [Backward] Layer conv1, param blob 0 diff: 0.0031
        [Backward] All net params (data, diff): L1 norm = (12.3, 0.45); L2 norm = (1.2, 0.03)
        [Update] Layer conv1, param 0 data: 0.0456; diff: 0.0003

(``Net::ForwardDebugInfo``, ``BackwardDebugInfo``, ``Backward`` and ``UpdateDebugInfo``). A
parameter is shown by its ``ParamSpec`` name when it has one, else by its index, as Caffe's
``param_display_names_``; a shared parameter's update line names its owner. The forward and
backward lines come from the net's per-layer hooks (``after_forward``/``after_backward``), so
they are interleaved with the computation as in Caffe. Differs from Caffe: BVLC's current
``Net::Update`` no longer prints the ``[Update]`` lines; we print them, as Caffe did before
(they show what the solver is about to apply).

Non-finite values: :func:`check_finite` looks at the loss and every parameter diff after an
iteration's backward (one reduction, one host sync). When something is NaN or Inf it finds the
first layer that produced it — in forward order the first top that is not finite although the
layer's bottoms are, else in backward order the first bottom or parameter diff — and raises
:class:`NonFiniteError` naming it, instead of letting the solver train on garbage. Caffe has no
such check (it trains on until the weights are all NaN).
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ..errors import CaffeError
from ..logs import format_float

log = logging.getLogger("torchcaffe")

__all__ = ["NonFiniteError", "debug_info", "log_all_params", "log_update", "check_finite"]


class NonFiniteError(CaffeError):
    """Training produced NaN or Inf; the message names the first layer and blob that did."""


def _asum_mean(tensor: torch.Tensor | None) -> float:
    """Caffe's ``asum / count`` of a blob (0 for an empty one)."""
    if tensor is None or tensor.numel() == 0:
        return 0.0
    return float(tensor.detach().abs().sum(dtype=torch.float32)) / tensor.numel()


def _param_display_name(net, layer_index: int, blob_index: int) -> str:
    for entry in net._graph.params:
        if entry.layer == layer_index and entry.blob == blob_index:
            return entry.name or str(blob_index)
    return str(blob_index)


# -- debug_info ------------------------------------------------------------------------------------

def _forward_lines(net, index: int, values: list) -> None:
    node = net._graph.nodes[index]
    for name, slot in zip(node.tops, node.top_slots):
        tensor = values[slot] if slot < len(values) else None
        if tensor is None and name in net._data:
            tensor = net._data[name]
        log.info("    [Forward] Layer %s, top blob %s data: %s", node.name, name, format_float(_asum_mean(tensor)))
    for j, tensor in enumerate(node.layer.caffe_blobs()):
        log.info("    [Forward] Layer %s, param blob %s data: %s", node.name,
                 _param_display_name(net, index, j), format_float(_asum_mean(tensor)))


def _backward_lines(net, index: int) -> None:
    node = net._graph.nodes[index]
    if not node.need_backward:
        return
    for name, need in zip(node.bottoms, node.bottom_need_backward):
        if need:
            log.info("    [Backward] Layer %s, bottom blob %s diff: %s", node.name, name,
                     format_float(_asum_mean(net._diff.get(name))))
    for j, (attr, propagate) in enumerate(zip(node.layer.blob_names, node.param_propagate_down)):
        if propagate:
            log.info("    [Backward] Layer %s, param blob %d diff: %s", node.name, j,
                     format_float(_asum_mean(_diff_of(node.layer, attr))))


def _diff_of(layer, attr: str) -> torch.Tensor | None:
    tensor = getattr(layer, attr)
    if attr in layer._parameters:
        return tensor.grad
    return layer.__dict__.get("_buffer_diffs", {}).get(attr)


@contextmanager
def debug_info(net, enabled: bool = True) -> Iterator[None]:
    """While the block runs ``net``'s forward and backward, log Caffe's ``[Forward]`` and
    ``[Backward]`` lines layer by layer, then the ``All net params`` line (Caffe's
    ``Net::set_debug_info(true)`` for one iteration). Does nothing when not ``enabled``.

    The net publishes its blob values when a forward ends, so the ``[Forward]`` lines of a pass
    are written then (before its first ``[Backward]`` line, in Caffe's order)."""
    if not enabled:
        yield
        return
    pending: list[int] = []

    def flush_forward() -> None:
        for index in pending:
            _forward_lines(net, index, net._vals or [])
        pending.clear()

    def after_backward(index: int) -> None:
        flush_forward()
        _backward_lines(net, index)

    hooks = net._caffe_hooks
    hooks["after_forward"].append(pending.append)
    hooks["after_backward"].append(after_backward)
    try:
        yield
    finally:
        hooks["after_forward"].remove(pending.append)
        hooks["after_backward"].remove(after_backward)
    flush_forward()
    log_all_params(net)


def log_all_params(net) -> None:
    """``[Backward] All net params (data, diff): L1 norm = (a, b); L2 norm = (c, d)``."""
    sums = [0.0, 0.0, 0.0, 0.0]
    for entry in net.learnable_params:
        layer = net._graph.nodes[entry.layer].layer
        attr = layer.blob_names[entry.blob]
        for k, tensor in enumerate((getattr(layer, attr), _diff_of(layer, attr))):
            if tensor is not None:
                t = tensor.detach().float()
                sums[k] += float(t.abs().sum())
                sums[k + 2] += float((t * t).sum())
    log.info("    [Backward] All net params (data, diff): L1 norm = (%s, %s); L2 norm = (%s, %s)",
             format_float(sums[0]), format_float(sums[1]), format_float(math.sqrt(sums[2])),
             format_float(math.sqrt(sums[3])))


def log_update(net, entries: Sequence, tensors: Sequence[torch.Tensor], diffs: Sequence[torch.Tensor]) -> None:
    """``[Update] Layer L, param P data: x; diff: y`` per learnable parameter; a shared one is
    ``[Update] Layer L, param blob P (owned by layer O, param Q) diff: y``."""
    for entry, w, g in zip(entries, tensors, diffs):
        node = net._graph.nodes[entry.layer]
        name = _param_display_name(net, entry.layer, entry.blob)
        log.info("    [Update] Layer %s, param %s data: %s; diff: %s", node.name, name,
                 format_float(_asum_mean(w)), format_float(_asum_mean(g)))
    for entry in net._graph.params:
        if entry.owner >= 0:
            owner = net._graph.params[entry.owner]
            layer = net._graph.nodes[entry.layer].layer
            log.info("    [Update] Layer %s, param blob %s (owned by layer %s, param %s) diff: %s",
                     net._graph.nodes[entry.layer].name, entry.name or entry.blob,
                     net._graph.nodes[owner.layer].name, owner.name or owner.blob,
                     format_float(_asum_mean(_diff_of(layer, layer.blob_names[entry.blob]))))


# -- non-finite values -------------------------------------------------------------------------------

def _finite(tensor: torch.Tensor | None) -> bool:
    return tensor is None or bool(torch.isfinite(tensor.detach()).all())


def _param_diffs(net) -> list[tuple[int, int, torch.Tensor]]:
    found = []
    for node in net._graph.nodes:
        for j, attr in enumerate(node.layer.blob_names):
            diff = _diff_of(node.layer, attr) if attr in node.layer._parameters else None
            if diff is not None:
                found.append((node.index, j, diff))
    return found


def check_finite(net, loss: float, iteration: int) -> None:
    """Raise :class:`NonFiniteError` when ``loss`` or any parameter diff is NaN or Inf, naming
    the first layer that produced a non-finite value (see the module docstring)."""
    diffs = [d for _, _, d in _param_diffs(net)]
    grads_finite = not diffs or bool(torch.stack([torch.isfinite(d).all() for d in diffs]).all())
    if math.isfinite(loss) and grads_finite:
        return
    what = f"the loss is {loss}" if not math.isfinite(loss) else "a gradient is not finite"
    culprit = _first_forward_culprit(net) or _first_backward_culprit(net) or "no single layer could be blamed"
    raise NonFiniteError(
        f"iteration {iteration}: {what}; {culprit}. Training stopped rather than going on with NaN/Inf "
        f"weights: lower base_lr, set clip_gradients, or check the data. To go on anyway, pass "
        f"allow_nonfinite=True to the solver (torchcaffe train --allow_nonfinite).")


def _describe(tensor: torch.Tensor) -> str:
    t = tensor.detach()
    return f"{int(torch.isnan(t).sum())} NaN and {int(torch.isinf(t).sum())} Inf among {t.numel()} values"


def _first_forward_culprit(net) -> str | None:
    """The first layer (in forward order) whose finite bottoms gave a non-finite top."""
    values = net._vals or []
    for node in net._graph.nodes:
        bottoms = [values[s] if s < len(values) else None for s in node.bottom_slots]
        if not all(_finite(b) for b in bottoms):
            continue
        for name, slot in zip(node.tops, node.top_slots):
            top = values[slot] if slot < len(values) else None
            if not _finite(top):
                return f"{node.label} is the first to produce one, in its top blob {name!r} ({_describe(top)})"
    return None


def _first_backward_culprit(net) -> str | None:
    """The first layer (in backward order) whose bottom diff or parameter diff is not finite."""
    params = {(layer, j): diff for layer, j, diff in _param_diffs(net)}
    for node in reversed(net._graph.nodes):
        for name, need in zip(node.bottoms, node.bottom_need_backward):
            diff = net._diff.get(name)
            if need and not _finite(diff):
                return f"{node.label} is the first to produce one in backward, in the diff of bottom {name!r} " \
                       f"({_describe(diff)})"
        for j in range(len(node.layer.blob_names)):
            diff = params.get((node.index, j))
            if not _finite(diff):
                return f"{node.label} is the first to produce one in backward, in the diff of its param blob {j} " \
                       f"({_describe(diff)})"
    return None
