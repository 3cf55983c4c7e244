"""Single arrays in Caffe's binary protobuf files: mean files (``.binaryproto``) and blob vectors.

    read_blobproto(path) -> np.ndarray
    write_blobproto(path, array)
    read_blobproto_vector(path) -> list[np.ndarray]
    write_blobproto_vector(path, arrays)

A mean file is one serialized ``BlobProto``, as ``compute_image_mean`` writes it (with the legacy
``num``/``channels``/``height``/``width`` shape, so a mean image comes back as 1 x C x H x W); a
``BlobProtoVector`` (field 1: blobs) holds several. Arrays come back in their stored shape,
float32, or float64 for ``double_data``; shapes and value counts are checked the way Caffe's
``Blob::FromProto`` checks them (see :mod:`torchcaffe.io.weights`, which holds the one BlobProto
decoder and encoder of the package). Writers store ``shape`` plus packed data, like
``Blob::ToProto``, into a temporary file that is renamed onto the target.

Problems raise :class:`~torchcaffe.errors.ParseError` naming the file (and the blob's index in a
vector).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from torchcaffe.errors import ParseError
from torchcaffe.io import wire
from torchcaffe.io.files import atomic_output_file, read_file_bytes, write_pieces
from torchcaffe.io.weights import (CORRUPT, blob_values, decode_blobproto_at, encode_blobproto, is_hdf5_file,
                                   wire_problem)
from torchcaffe.io.wire import LENGTH_DELIMITED, WireError

__all__ = ["read_blobproto", "write_blobproto", "read_blobproto_vector", "write_blobproto_vector"]

_VECTOR_BLOBS_FIELD = 1


def read_blobproto(path) -> np.ndarray:
    """The array stored in a binary ``BlobProto`` file (e.g. a mean file), in its stored shape."""
    path = os.fspath(path)
    buf = _read(path)
    return decode_blobproto_at(buf, 0, len(buf), path, ParseError).data


def read_blobproto_vector(path) -> list[np.ndarray]:
    """The arrays stored in a binary ``BlobProtoVector`` file, in order."""
    path = os.fspath(path)
    buf = _read(path)
    arrays = []
    pos, end = 0, len(buf)
    while pos < end:
        try:
            field, wire_type, value, pos = wire.read_field(buf, pos, end)
        except WireError as err:
            raise ParseError(f"{path}: blob {len(arrays)}: {wire_problem(err)}") from None
        if field != _VECTOR_BLOBS_FIELD:
            continue
        if wire_type != LENGTH_DELIMITED:
            got = wire.WIRE_TYPE_NAMES.get(wire_type, wire_type)
            raise ParseError(f"{path}: blob {len(arrays)}: field blobs (1) has wire type {got}, "
                             f"expected length-delimited — {CORRUPT}")
        arrays.append(decode_blobproto_at(buf, *value, f"{path}: blob {len(arrays)}", ParseError).data)
    return arrays


def write_blobproto(path, array) -> None:
    """Write ``array`` as one ``BlobProto`` (shape + packed data; float64 as ``double_data``)."""
    path = os.fspath(path)
    _, pieces = encode_blobproto(blob_values(array, path, ParseError))
    with atomic_output_file(path, ParseError) as f:
        write_pieces(f, pieces)


def write_blobproto_vector(path, arrays: Sequence) -> None:
    """Write ``arrays`` as a ``BlobProtoVector``, one ``BlobProto`` each."""
    path = os.fspath(path)
    pieces: list = []
    for index, array in enumerate(arrays):
        length, blob_pieces = encode_blobproto(blob_values(array, f"{path}: blob {index}", ParseError))
        pieces.append(wire.length_delimited_header(_VECTOR_BLOBS_FIELD, length))
        pieces.extend(blob_pieces)
    with atomic_output_file(path, ParseError) as f:
        write_pieces(f, pieces)


def _read(path: str):
    """The file's bytes; HDF5 files are refused with a clear message."""
    if is_hdf5_file(path):
        raise ParseError(f"{path}: is an HDF5 file, expected a binary BlobProto")
    return read_file_bytes(path, ParseError)
