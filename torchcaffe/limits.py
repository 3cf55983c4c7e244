"""Resource limits: how large a blob, and all of a net's blobs together, may be.

A net file is untrusted input. ``input_param { shape { dim: 1000000 dim: 1000000 } }`` or a
convolution with ``num_output: 1000000000`` would otherwise make torchcaffe ask the allocator
for terabytes, and the process dies by the out-of-memory killer instead of with a message. Every
blob is therefore checked when the net is built, *before* anything is allocated: its declared
shape (Input, DummyData, Parameter...), every parameter blob a layer creates, and every top shape
the net infers. Weight files are checked as they are read (``torchcaffe.io.weights``).

Two limits, read from the environment at import and changeable at run time:

=========================  ==============================  ====================================
limit                      environment variable            default
=========================  ==============================  ====================================
``max_blob_elements``      ``TORCHCAFFE_MAX_BLOB_ELEMENTS``  2**31 - 1 (Caffe's own: a blob's
                                                           count must fit an ``int``)
``max_total_bytes``        ``TORCHCAFFE_MAX_TOTAL_BYTES``    128 GiB for all the blobs (data and
                                                           parameters, float32) of one net
=========================  ==============================  ====================================

Environment values are integers, optionally with a binary suffix (``64G``, ``512M``, ``2T``).
Change them for the whole process or for a block::

    torchcaffe.limits.set(max_total_bytes=512 * 2**30)          # from now on
    with torchcaffe.limits.set(max_blob_elements=10**6):          # only inside the block
        net = torchcaffe.Net("untrusted.prototxt")

A blob over a limit raises :class:`ResourceLimitError` (a :class:`~torchcaffe.errors.NetError`)
naming the file, the layer, the blob, its shape and its size.

Differs from Caffe: Caffe checks only ``count <= INT_MAX`` (``Blob::Reshape``) and otherwise
lets the allocation fail.
"""
from __future__ import annotations

import math
import os
import re
from typing import NamedTuple, Sequence

from .errors import CaffeError, NetError, WeightsError

__all__ = ["Limits", "ResourceLimitError", "current", "set", "check_blob", "check_declared_shapes",
           "MemoryBudget", "format_bytes"]

_DEFAULT_ELEMENTS = 2**31 - 1
_DEFAULT_TOTAL_BYTES = 128 * 2**30
_ENV = {"max_blob_elements": "TORCHCAFFE_MAX_BLOB_ELEMENTS",
        "max_total_bytes": "TORCHCAFFE_MAX_TOTAL_BYTES"}
_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class ResourceLimitError(NetError, WeightsError):
    """A blob, or a whole net, larger than the configured limits (see :mod:`torchcaffe.limits`):
    a NetError when a net is built, a WeightsError when a weights file declares it."""


class Limits(NamedTuple):
    """The limits in force: elements per blob, and bytes for all the blobs of one net."""

    max_blob_elements: int = _DEFAULT_ELEMENTS
    max_total_bytes: int = _DEFAULT_TOTAL_BYTES


def _parse_size(name: str, text: str) -> int:
    """``"64G"`` -> 68719476736; a value that is not a positive size is an error naming the variable."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match or int(match.group(1)) <= 0:
        raise CaffeError(f"environment variable {name}={text!r} is not a positive size "
                         f"(an integer, optionally with K, M, G or T)")
    return int(match.group(1)) * _SUFFIXES[match.group(2).upper()]


def _from_environment() -> Limits:
    values = {field: _parse_size(var, os.environ[var]) for field, var in _ENV.items() if os.environ.get(var)}
    return Limits()._replace(**values)


_current = _from_environment()


def current() -> Limits:
    """The limits in force now."""
    return _current


class set:  # noqa: A001 - the module's verb, as ``torch.set_grad_enabled`` is torch's
    """Change limits from now on; used as a context manager, only until the block ends.

    ``set(max_blob_elements=None, max_total_bytes=None)``: ``None`` leaves a limit as it is.
    """

    def __init__(self, max_blob_elements: int | None = None, max_total_bytes: int | None = None):
        global _current
        changes = {k: v for k, v in (("max_blob_elements", max_blob_elements),
                                     ("max_total_bytes", max_total_bytes)) if v is not None}
        for key, value in changes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"torchcaffe.limits.set: {key} must be a positive integer, got {value!r}")
        self.previous = _current
        _current = _current._replace(**changes)

    def __enter__(self) -> Limits:
        return _current

    def __exit__(self, *exc) -> None:
        global _current
        _current = self.previous


def format_bytes(count: float) -> str:
    """``1.5 GiB``-style sizes for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"  # pragma: no cover


def _elements(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def check_blob(where: str, what: str, shape: Sequence[int], itemsize: int = 4) -> int:
    """Raise :class:`ResourceLimitError` when a blob of ``shape`` has more elements than allowed;
    return its size in bytes. ``where`` names the file and layer, ``what`` the blob."""
    count = _elements(shape)
    limit = _current.max_blob_elements
    if count > limit:
        raise ResourceLimitError(
            f"{where}: {what} would have shape {tuple(int(d) for d in shape)} = {count} elements "
            f"({format_bytes(count * itemsize)} as float32), over the limit of {limit} elements per "
            f"blob. If the net is meant to be this large, raise the limit with "
            f"torchcaffe.limits.set(max_blob_elements=...) or {_ENV['max_blob_elements']}.")
    return count * itemsize


class MemoryBudget:
    """The bytes of all the blobs of one net, added up as the net is built."""

    def __init__(self, source: str = ""):
        self.source = source
        self.total = 0

    def add(self, where: str, what: str, shape: Sequence[int], itemsize: int = 4) -> None:
        """Check one blob against both limits and count it."""
        self.total += check_blob(where, what, shape, itemsize)
        limit = _current.max_total_bytes
        if self.total > limit:
            raise ResourceLimitError(
                f"{where}: {what} of shape {tuple(int(d) for d in shape)} brings the net's blobs to "
                f"{format_bytes(self.total)}, over the limit of {format_bytes(limit)} for one net. "
                f"If the net is meant to be this large, raise the limit with "
                f"torchcaffe.limits.set(max_total_bytes=...) or {_ENV['max_total_bytes']}.")


def check_declared_shapes(message, where: str, path: str = "") -> None:
    """Check every ``BlobShape`` set anywhere in ``message`` (a LayerParameter's ``input_param``,
    ``dummy_data_param``, ``parameter_param``...) before the layer is built from it."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        values = value if field.is_repeated else [value]
        for index, item in enumerate(values):
            name = path + (f"{field.name}[{index}]" if field.is_repeated else field.name)
            if field.message_type.name == "BlobShape":
                check_blob(where, f"the blob declared by {name}", item.dim)
            else:
                check_declared_shapes(item, where, name + ".")
