"""pycaffe's ``Blob``: numpy views of a net's tensors, writable in place.

``net.blobs[name]`` views the blob's current value (and its diff); ``net.params[layer][i]``
views a layer's parameter (its diff is the parameter's ``.grad``). On the CPU the arrays share
memory with the tensors, so ``net.blobs['data'].data[...] = x`` changes what the next forward
reads. Shapes follow Caffe: ``num/channels/height/width`` index the legacy 4-D view.

On a GPU the array is a host mirror, kept coherent the way Caffe's SyncedMemory keeps its two
copies: reading a blob copies the device values to the host once; whatever is written into that
array goes back to the device before the net next runs (``sync_host_mirrors``), after which a
fresh read copies again.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .net import Net

#: Host mirrors of device tensors handed out since the last sync: id -> (tensor ref, array).
_MIRRORS: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array sharing memory with a CPU tensor, or the host mirror of a device tensor (or of
    a bfloat16 tensor, which numpy cannot hold: a float32 copy, as after an autocast forward)."""
    if tensor.device.type == "cpu" and tensor.dtype != torch.bfloat16:
        return tensor.detach().numpy()
    return host_mirror(tensor)


def host_mirror(tensor: torch.Tensor) -> np.ndarray:
    """The host copy of ``tensor`` handed out since the last sync (made on first request)."""
    entry = _MIRRORS.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        return entry[1]
    copy = tensor.detach().to("cpu", copy=True)
    array = (copy.float() if copy.dtype == torch.bfloat16 else copy).numpy()
    _MIRRORS[id(tensor)] = (weakref.ref(tensor), array)
    return array


def sync_host_mirrors() -> None:
    """Copy every host mirror back to its device tensor and forget it (Caffe's to_gpu())."""
    if not _MIRRORS:
        return
    with torch.no_grad():
        for ref, array in _MIRRORS.values():
            tensor = ref()
            if tensor is not None and tuple(tensor.shape) == array.shape:
                # through .data, like a numpy write on the CPU: autograd's version counter stays
                tensor.data.copy_(torch.from_numpy(array), non_blocking=True)
    _MIRRORS.clear()


class _BlobShape:
    """Caffe's shape accessors, shared by both kinds of blob views."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._tensor().shape)

    @property
    def count(self) -> int:
        return self._tensor().numel()

    def _legacy(self, index: int) -> int:
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, got {shape}")
        return shape[index] if index < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape}>"


class Blob(_BlobShape):
    """A named blob of a net: ``data`` is its current value, ``diff`` the gradient Caffe leaves."""

    __slots__ = ("_net", "_name")

    def __init__(self, net: "Net", name: str):
        self._net = net
        self._name = name

    def _tensor(self) -> torch.Tensor:
        return self._net._blob_data(self._name)

    @property
    def data(self) -> np.ndarray:
        return as_numpy(self._tensor())

    @property
    def diff(self) -> np.ndarray:
        return as_numpy(self._net._blob_diff(self._name))

    def reshape(self, *shape: int) -> None:
        """Give the blob a new shape (zeros); the next forward reshapes what depends on it."""
        self._net._reshape_blob(self._name, tuple(int(d) for d in shape))


class ParamBlob(_BlobShape):
    """One of a layer's blobs (weights, biases, BatchNorm statistics)."""

    __slots__ = ("_layer", "_attr")

    def __init__(self, layer: torch.nn.Module, attr: str):
        self._layer = layer
        self._attr = attr

    def _tensor(self) -> torch.Tensor:
        return getattr(self._layer, self._attr)

    @property
    def data(self) -> np.ndarray:
        return as_numpy(self._tensor())

    @property
    def diff(self) -> np.ndarray:
        tensor = self._tensor()
        if isinstance(tensor, torch.nn.Parameter) or tensor._base is not None:
            owner = tensor if tensor._base is None else tensor._base
            if owner.grad is None:
                owner.grad = torch.zeros_like(owner)
            grad = owner.grad
            return as_numpy(grad if grad.shape == tensor.shape else grad.view(tensor.shape))
        return as_numpy(self._layer.buffer_diff(self._attr))

    def reshape(self, *shape: int) -> None:
        raise NotImplementedError("parameter blobs keep the shape their layer gave them")


class ArrayBlob(_BlobShape):
    """A blob that is only numpy arrays: what a classic Python layer's ``bottom``/``top`` hold."""

    def __init__(self, data: np.ndarray, diff: np.ndarray | None = None):
        self.data = data
        self._diff = diff

    def _tensor(self):  # for _BlobShape's accessors
        return self.data

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(self.data.size)

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None or self._diff.shape != self.data.shape:
            self._diff = np.zeros_like(self.data)
        return self._diff

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._diff = value

    def reshape(self, *shape: int) -> None:
        shape = tuple(int(d) for d in shape)
        if shape != self.shape:
            self.data = np.zeros(shape, dtype=self.data.dtype if self.data.dtype.kind == "f" else np.float32)
            self._diff = None
