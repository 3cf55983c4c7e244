"""The ``Net`` methods pycaffe adds in Python (``python/caffe/pycaffe.py``), attached to
:class:`torchcaffe.Net` the way pycaffe attaches them: functions assigned onto the class, so that
every net — those a solver builds included — has them.

``Net`` itself already has what pycaffe's C++ binding provides (``blobs``, ``params``,
``layer_dict``, ``layers``, ``inputs``/``outputs``, ``forward``/``backward`` with
``start``/``end``, the hooks, ``top_names``/``bottom_names``, ``share_with``, ``save``...).
Added here: ``forward_all``, ``forward_backward_all``, ``set_input_arrays``, ``_batch`` and the
index-based accessors of the binding (``_inputs``, ``_outputs``, ``_top_ids``, ``_bottom_ids``,
``_blobs``, ``_blob_loss_weights``, ``_forward``, ``_backward``).
"""
from __future__ import annotations

from itertools import zip_longest
from typing import Iterator, Mapping

import numpy as np

from ..errors import NetError
from ..net.net import Net


def _net_batch(self: Net, blobs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """pycaffe's ``_batch``: cut arrays (all of the same length) into batches of the net's batch
    size — the first axis of its first blob — zero-padding the last one."""
    if not blobs:
        return
    num = len(next(iter(blobs.values())))
    batch_size = next(iter(self.blobs.values())).shape[0]
    for start in range(0, num - num % batch_size, batch_size):
        yield {name: np.asarray(array)[start:start + batch_size] for name, array in blobs.items()}
    remainder = num % batch_size
    if remainder:
        padded = {}
        for name, array in blobs.items():
            array = np.asarray(array)
            padding = np.zeros((batch_size - remainder,) + array.shape[1:], dtype=array.dtype)
            padded[name] = np.concatenate([array[-remainder:], padding])
        yield padded


def _net_forward_all(self: Net, blobs=None, **kwargs) -> dict[str, np.ndarray]:
    """pycaffe's ``forward_all(blobs=None, **inputs)``: run the inputs through the net in
    batches and return ``{blob: array over all items}`` for the outputs and ``blobs`` (the
    padding of the last batch removed)."""
    wanted = list(dict.fromkeys(list(self.outputs) + list(blobs or [])))
    if not kwargs:
        outs = self.forward(blobs=blobs)
        return {name: np.array(outs[name], copy=True) for name in wanted}
    collected: dict[str, list] = {name: [] for name in wanted}
    for batch in self._batch(kwargs):
        outs = self.forward(blobs=blobs, **batch)
        for name in wanted:
            collected[name].extend(np.array(outs[name], copy=True))
    return _unpad({name: np.asarray(values) for name, values in collected.items()}, _length(kwargs))


def _net_forward_backward_all(self: Net, blobs=None, diffs=None, **kwargs):
    """pycaffe's ``forward_backward_all(blobs=None, diffs=None, **inputs_and_output_diffs)``:
    batched forward (inputs from ``kwargs``) and backward (output diffs from ``kwargs``);
    returns ``(outputs, diffs)``, each ``{blob: array over all items}``."""
    out_names = list(dict.fromkeys(list(self.outputs) + list(blobs or [])))
    diff_names = list(dict.fromkeys(list(self.inputs) + list(diffs or [])))
    all_outs: dict[str, list] = {name: [] for name in out_names}
    all_diffs: dict[str, list] = {name: [] for name in diff_names}
    forward_batches = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs})
    backward_batches = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs})
    for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
        outs = self.forward(blobs=blobs, **fb)
        grads = self.backward(diffs=diffs, **bb)
        for name in out_names:
            all_outs[name].extend(np.array(outs[name], copy=True))
        for name in diff_names:
            all_diffs[name].extend(np.array(grads[name], copy=True))
    length = _length(kwargs)
    return (_unpad({k: np.asarray(v) for k, v in all_outs.items()}, length),
            _unpad({k: np.asarray(v) for k, v in all_diffs.items()}, length))


def _length(arrays: Mapping) -> int | None:
    return len(next(iter(arrays.values()))) if arrays else None


def _unpad(arrays: dict[str, np.ndarray], length: int | None) -> dict[str, np.ndarray]:
    if length is None:
        return arrays
    return {name: array[:length] for name, array in arrays.items()}


def _net_set_input_arrays(self: Net, data: np.ndarray, labels: np.ndarray):
    """pycaffe's ``set_input_arrays(data, labels)`` for nets whose first layer is ``MemoryData``:
    1-D labels become N x 1 x 1 x 1, then the layer takes the arrays (Caffe's checks: 4-D
    float32, C-contiguous, the layer's channels/height/width, as many labels as images, a
    multiple of the batch size)."""
    first = self.layers[0] if len(self.layers) else None
    if first is None or first.type != "MemoryData" or not hasattr(first, "set_input_arrays"):
        raise NetError("set_input_arrays may only be called if the first layer is a MemoryData layer "
                       f"(this net's first layer is {first.label if first is not None else 'missing'})")
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
    return first.set_input_arrays(np.asarray(data), labels)


def _net_inputs_ids(self: Net) -> list[int]:
    names = list(self.blobs)
    return [names.index(name) for name in self.inputs]


def _net_outputs_ids(self: Net) -> list[int]:
    names = list(self.blobs)
    return [names.index(name) for name in self.outputs]


def _net_top_ids(self: Net, i: int) -> list[int]:
    names = list(self.blobs)
    return [names.index(n) for n in self.top_names[self._layer_names[i]] if n in self.blobs]


def _net_bottom_ids(self: Net, i: int) -> list[int]:
    names = list(self.blobs)
    return [names.index(n) for n in self.bottom_names[self._layer_names[i]] if n in self.blobs]


def _net_forward_from_to(self: Net, start: int, end: int) -> float:
    """The binding's ``_forward(start, end)``: layers ``start..end`` by index; returns the loss."""
    self.forward(start=self._layer_names[start], end=self._layer_names[end])
    return sum(weight * float(self.blobs[name].data.sum())
               for name, weight in self.blob_loss_weights.items() if weight and name in self.blobs)


def _net_backward_from_to(self: Net, start: int, end: int) -> None:
    """The binding's ``_backward(start, end)``: layers ``start`` down to ``end`` by index."""
    self.backward(start=self._layer_names[start], end=self._layer_names[end])


Net.forward_all = _net_forward_all
Net.forward_backward_all = _net_forward_backward_all
Net.set_input_arrays = _net_set_input_arrays
Net._batch = _net_batch
Net._inputs = property(_net_inputs_ids)
Net._outputs = property(_net_outputs_ids)
Net._top_ids = _net_top_ids
Net._bottom_ids = _net_bottom_ids
Net._blobs = property(lambda self: list(self.blobs.values()))
Net._blob_loss_weights = property(lambda self: list(self.blob_loss_weights.values()))
Net._forward = _net_forward_from_to
Net._backward = _net_backward_from_to
