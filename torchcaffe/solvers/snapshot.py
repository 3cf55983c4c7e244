"""Caffe's solver snapshots: the file names, and the solver state in binary protobuf or HDF5.

A snapshot at iteration N is two files (``Solver::Snapshot``):

* the weights, ``<snapshot_prefix>_iter_<N>.caffemodel`` (``snapshot_format: BINARYPROTO``, the
  default) or ``<snapshot_prefix>_iter_<N>.caffemodel.h5`` (``HDF5``), diffs included with
  ``snapshot_diff: true``;
* the solver state, ``<prefix>_iter_<N>.solverstate`` or ``.solverstate.h5``.

The binary state is a ``SolverState`` message: ``iter`` (1), ``learned_net`` (2, the weights
file's path as written), ``history`` (3, one BlobProto per history blob, with its shape) and
``current_step`` (4), in that order, as protobuf serializes it. The HDF5 state
(``SGDSolver::SnapshotSolverStateToHDF5``) holds scalar datasets ``iter`` and ``current_step``
(int32), the string ``learned_net``, and a group ``history`` with float datasets ``"0"`` ..
``"n-1"`` in the blobs' shapes.

History blobs come in Caffe's order: one per learnable parameter (owners, in ``learnable_params``
order), then for AdaDelta and Adam a second set of the same length (AdaDelta: the squared-update
average; Adam: the second moment ``v``).

Every file is written to a temporary file that is renamed onto its name once complete, so a
failure halfway never leaves a truncated snapshot.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import CaffeError
from ..io import wire
from ..io.files import atomic_output_file, atomic_output_path, read_file_bytes, write_pieces
from ..io.weights import (blob_values, decode_blobproto_at, encode_blobproto, hdf5_dataset_array, is_hdf5_file,
                          reading_hdf5, wire_problem)
from ..io.wire import LENGTH_DELIMITED, VARINT, WireError
from ..limits import MemoryBudget

__all__ = ["SolverStateData", "snapshot_filename", "write_solverstate", "write_solverstate_h5",
           "read_solverstate", "SnapshotError"]

_ITER, _LEARNED_NET, _HISTORY, _CURRENT_STEP = 1, 2, 3, 4


class SnapshotError(CaffeError):
    """A solver state that cannot be written or read back."""


@dataclass
class SolverStateData:
    """What a solver state file holds: ``history`` arrays in Caffe's order."""

    iter: int = 0
    learned_net: str = ""
    current_step: int = 0
    history: list[np.ndarray] = field(default_factory=list)
    has_learned_net: bool = True


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """``<prefix>_iter_<N><extension>`` (Caffe's ``Solver::SnapshotFilename``)."""
    return f"{prefix}_iter_{iteration}{extension}"


# -- writing ----------------------------------------------------------------------------------------

def _varint_field(number: int, value: int) -> bytes:
    return wire.encode_tag(number, VARINT) + wire.encode_varint(value & ((1 << 64) - 1))


def write_solverstate(path: str, state: SolverStateData) -> None:
    """Write ``state`` as a binary ``SolverState`` (the bytes protobuf would produce)."""
    pieces: list = [_varint_field(_ITER, state.iter),
                    wire.encode_length_delimited(_LEARNED_NET, state.learned_net.encode())]
    for index, array in enumerate(state.history):
        length, blob = encode_blobproto(blob_values(array, f"{path}: history {index}", SnapshotError))
        pieces.append(wire.length_delimited_header(_HISTORY, length))
        pieces.extend(blob)
    pieces.append(_varint_field(_CURRENT_STEP, state.current_step))
    with atomic_output_file(path, SnapshotError) as f:
        write_pieces(f, pieces)


def write_solverstate_h5(path: str, state: SolverStateData) -> None:
    """Write ``state`` in the HDF5 layout of ``SGDSolver::SnapshotSolverStateToHDF5``."""
    import h5py

    with atomic_output_path(path, SnapshotError) as temp:
        with h5py.File(temp, "w") as h5:
            h5.create_dataset("iter", data=np.int32(state.iter))
            _write_h5_string(h5, "learned_net", state.learned_net)
            h5.create_dataset("current_step", data=np.int32(state.current_step))
            group = h5.create_group("history")
            for index, array in enumerate(state.history):
                group.create_dataset(str(index), data=blob_values(array, f"{path}: history {index}", SnapshotError))


def _write_h5_string(h5, name: str, text: str) -> None:
    """A scalar, null-terminated fixed-length string, as HDF5's ``H5LTmake_dataset_string``."""
    import h5py

    data = text.encode()
    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(data) + 1)
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    dataset = h5py.h5d.create(h5.id, name.encode(), string_type, h5py.h5s.create(h5py.h5s.SCALAR))
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(data + b"\0", dtype=f"S{len(data) + 1}"))


# -- reading ----------------------------------------------------------------------------------------

def read_solverstate(path: str) -> SolverStateData:
    """Read a binary or HDF5 solver state; the format is recognised by content, not by name."""
    path = os.fspath(path)
    if is_hdf5_file(path):
        return _read_h5(path)
    return _read_binary(path)


def _read_binary(path: str) -> SolverStateData:
    buf = read_file_bytes(path, SnapshotError)
    state = SolverStateData(has_learned_net=False)
    pos, end = 0, len(buf)
    names = {_ITER: "iter", _LEARNED_NET: "learned_net", _HISTORY: "history", _CURRENT_STEP: "current_step"}
    while pos < end:
        try:
            number, wire_type, value, pos = wire.read_field(buf, pos, end)
        except WireError as err:
            raise SnapshotError(f"{path}: not a SolverState: {wire_problem(err)}") from None
        if number not in names:
            continue  # fields of forks (iter_last_event, minimum_loss...) are skipped
        expected = LENGTH_DELIMITED if number in (_LEARNED_NET, _HISTORY) else VARINT
        if wire_type != expected:
            raise SnapshotError(f"{path}: not a SolverState: field {names[number]} ({number}) has wire type "
                                f"{wire.WIRE_TYPE_NAMES.get(wire_type, wire_type)}")
        if number == _ITER:
            state.iter = wire.as_signed64(value)
        elif number == _CURRENT_STEP:
            state.current_step = wire.as_signed64(value)
        elif number == _LEARNED_NET:
            state.learned_net = bytes(buf[value[0]:value[1]]).decode("utf-8", "surrogateescape")
            state.has_learned_net = True
        else:
            place = f"{path}: history blob {len(state.history)}"
            state.history.append(decode_blobproto_at(buf, *value, place, SnapshotError).data)
    return state


def _read_h5(path: str) -> SolverStateData:
    import h5py

    with reading_hdf5(path, SnapshotError) as h5:
        for name in ("iter", "current_step", "history"):
            if name not in h5:
                raise SnapshotError(f"{path}: not a solver state: it has no {name!r} "
                                    f"(found: {sorted(h5.keys())})")
        state = SolverStateData(iter=_h5_integer(h5, "iter", path), current_step=_h5_integer(h5, "current_step", path),
                                has_learned_net="learned_net" in h5)
        if state.has_learned_net:
            raw = _h5_dataset(h5, "learned_net", path)[()]
            raw = raw if isinstance(raw, bytes) else str(raw).encode()
            state.learned_net = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        group = h5["history"]
        if not isinstance(group, h5py.Group):
            raise SnapshotError(f"{path}: 'history' is a dataset, expected a group of history blobs")
        budget = MemoryBudget(path)
        for index in range(len(group)):
            if str(index) not in group:
                raise SnapshotError(f"{path}: history holds {len(group)} entries but no dataset {str(index)!r}")
            dataset = _h5_dataset(group, str(index), path)
            values = hdf5_dataset_array(dataset, f"{path}: history", str(index), budget, SnapshotError)
            state.history.append(values)
    return state


def _h5_dataset(group, name: str, path: str):
    """``group[name]``, which must be a dataset."""
    import h5py

    item = group[name]
    if not isinstance(item, h5py.Dataset):
        raise SnapshotError(f"{path}: {item.name!r} is a group, expected a dataset")
    return item


def _h5_integer(h5, name: str, path: str) -> int:
    """A scalar integer dataset (``iter``, ``current_step``)."""
    dataset = _h5_dataset(h5, name, path)
    if dataset.dtype.kind not in "iu" or dataset.shape not in ((), (1,)):
        raise SnapshotError(f"{path}: {name!r} must be one integer, found {dataset.dtype} values of shape "
                            f"{dataset.shape}")
    return int(np.asarray(dataset[()]).reshape(-1)[0])


def history_arrays(tensors: Sequence) -> list[np.ndarray]:
    """Host copies of the history tensors, float32 (or float64 for a double net)."""
    return [t.detach().cpu().numpy() for t in tensors]
