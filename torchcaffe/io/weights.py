"""Reading and writing Caffe weights: ``.caffemodel`` (binary ``NetParameter``) and ``.caffemodel.h5``.

    read_weights(path) -> list[LayerWeights]
    write_caffemodel(path, net_param, blobs, diffs=None)
    write_caffemodel_h5(path, layers, diffs=None)

``LayerWeights(name, type, blobs)`` holds one layer's ``BlobData(data, shape, legacy, diff)``;
``data`` (and ``diff``) already have the shape ``shape``.

Reading a binary ``.caffemodel``
    Caffe parses the whole ``NetParameter``; we scan it with :mod:`torchcaffe.io.wire` instead and
    look only at what weights need: ``layer`` (field 100: name 1, type 2, blobs 7), the
    deprecated ``layers`` (field 2, V1: name 4, type 5 as an enum, blobs 6, whose type is
    reported by its V1 enum name such as ``"CONVOLUTION"``, or the number when it has none)
    and the V0 layer nested in a V1 entry (field 1: name 1, type 2 as a string, blobs 50),
    which, as in Caffe's upgrade, replaces the entry's own name, type and blobs. Every other
    field is skipped unparsed, so files from Caffe forks that reuse field numbers for their own
    parameters still load. Packed float arrays become numpy arrays over the file's buffer
    without a per-value loop; the arrays are writable views into one buffer that holds the
    whole file (kept alive by the arrays), which is faster than copying them out.

Blob shapes follow Caffe's ``Blob::FromProto``
    When any of the legacy ``num``/``channels``/``height``/``width`` fields is present the shape
    is that 4-tuple (missing ones count as 0) and wins over ``shape``; otherwise it is
    ``shape.dim``; a blob with neither is 0-d (Caffe writes 0-d blobs, e.g. PReLU's
    ``channel_shared`` slope, that way). ``double_data`` wins over ``data`` and gives float64.
    The value count must equal the shape's product. Where we differ: a blob with no shape at
    all and a value count other than 1 is read as 1-d instead of refused.

Reading an HDF5 file
    Detected by content (the HDF5 signature at offset 0, 512, 1024, ...) as Caffe's
    ``H5Fis_hdf5`` does, whatever the file's name. The layout is ``Net::ToHDF5``'s: group
    ``data`` with one group per layer holding datasets ``"0"``, ``"1"``, ... (and the same under
    ``diff`` when present). Layers come in the file's (alphabetical) order with type ``""``,
    since the file does not record types. Caffe leaves out the data of parameters a layer
    shares with an earlier layer (it still writes their diffs); such a gap in the numbering is a
    ``None`` in ``blobs``.

Writing
    ``write_caffemodel`` produces the bytes that Caffe's ``Net::ToProto`` + ``SerializeToString``
    produce for the same net, and ``write_caffemodel_h5`` the layout of ``Net::ToHDF5``. Both
    write a temporary file in the target's directory and rename it over the target, so a
    failure never leaves a partial file behind.

Every problem raises one :class:`~torchcaffe.errors.WeightsError` naming the file, the layer (name,
type and index), the blob and the field.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field as dataclass_field
from typing import Sequence

import numpy as np

from torchcaffe.errors import CaffeError, WeightsError, layer_label
from torchcaffe.io import wire
from torchcaffe.io.files import atomic_output_file, atomic_output_path, read_file_bytes, write_pieces
from torchcaffe.io.wire import FIXED32, FIXED64, LENGTH_DELIMITED, VARINT, WireError
from torchcaffe.limits import MemoryBudget
from torchcaffe.proto import caffe_pb2

__all__ = [
    "BlobData",
    "LayerWeights",
    "read_weights",
    "write_caffemodel",
    "write_caffemodel_h5",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CORRUPT = "the file is truncated or corrupt"


@dataclass
class BlobData:
    """One stored parameter blob.

    ``data`` is float32, or float64 when the blob used ``double_data``, and has shape ``shape``.
    ``legacy`` is ``(num, channels, height, width)`` when the blob carried any of those fields
    (Caffe then compares shapes the legacy way, right-aligned); ``diff`` is the stored gradient.
    """

    data: np.ndarray
    shape: tuple[int, ...]
    legacy: tuple[int, int, int, int] | None = None
    diff: np.ndarray | None = None


@dataclass
class LayerWeights:
    """The blobs of one layer, in the order the file lists them."""

    name: str
    type: str
    blobs: list[BlobData]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class FieldProblem(CaffeError):
    """Something wrong with one field of a layer or a BlobProto; the caller adds file and layer."""

    def __init__(self, problem: str, corrupt: bool = True):
        super().__init__(problem)
        self.problem = problem
        self.corrupt = corrupt


def _layer_place(index: int, name: str | None, type_: str | None) -> str:
    """``layer "conv1" (Convolution) at index 3``; a layer whose name was not read is ``layer 3``."""
    if name is None:
        return f"layer at index {index}"
    return f"{layer_label(name, type_ or '?')} at index {index}"


def wire_problem(err: WireError) -> str:
    """A wire error's text followed by what it most likely means."""
    return f"{err} — {CORRUPT}"


# ---------------------------------------------------------------------------------------------
# Recognising HDF5 files (reading and atomic writing live in torchcaffe.io.files)
# ---------------------------------------------------------------------------------------------


def is_hdf5_file(path: str) -> bool:
    """Whether the file starts an HDF5 superblock at offset 0, 512, 1024, ... (``H5Fis_hdf5``)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                f.seek(offset)
                if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False  # the reader that follows reports the problem
    return False


# ---------------------------------------------------------------------------------------------
# BlobProto decoding (shared with binaryproto.py)
# ---------------------------------------------------------------------------------------------

_BLOB_LEGACY_FIELDS = {1: "num", 2: "channels", 3: "height", 4: "width"}
# field number -> (name, dtype, fixed wire type of the non-packed encoding)
_BLOB_ARRAY_FIELDS = {
    5: ("data", np.dtype("<f4"), FIXED32),
    6: ("diff", np.dtype("<f4"), FIXED32),
    8: ("double_data", np.dtype("<f8"), FIXED64),
    9: ("double_diff", np.dtype("<f8"), FIXED64),
}
_BLOB_SHAPE_FIELD = 7
_BLOBSHAPE_DIM_FIELD = 1


def decode_blobproto(buf, start: int, end: int) -> BlobData:
    """Decode the BlobProto in ``buf[start:end]`` following Caffe's ``Blob::FromProto``.

    Raises :class:`FieldProblem` (or :class:`~torchcaffe.io.wire.WireError`) describing the field.
    """
    arrays: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in _BLOB_ARRAY_FIELDS.values()}
    legacy: dict[str, int] = {}
    dims: list[int] | None = None
    pos = start
    while pos < end:
        field, wire_type, value, next_pos = wire.read_field(buf, pos, end)
        if field in _BLOB_ARRAY_FIELDS:
            name, dtype, fixed_type = _BLOB_ARRAY_FIELDS[field]
            chunk, next_pos = _read_float_field(buf, pos, end, field, wire_type, value, next_pos,
                                                name, dtype, fixed_type)
            arrays[name].append(chunk)
        elif field == _BLOB_SHAPE_FIELD:
            _expect_wire_type("shape", field, wire_type, LENGTH_DELIMITED)
            dims = (dims or []) + _decode_blobshape(buf, *value)
        elif field in _BLOB_LEGACY_FIELDS:
            name = _BLOB_LEGACY_FIELDS[field]
            _expect_wire_type(name, field, wire_type, VARINT)
            legacy[name] = _legacy_dim(name, value)
        pos = next_pos
    return _assemble_blob(arrays, legacy, dims)


def decode_blobproto_at(buf, start: int, end: int, place: str, error_type: type[CaffeError]) -> BlobData:
    """:func:`decode_blobproto`, its problems raised as ``error_type`` naming ``place``."""
    try:
        return decode_blobproto(buf, start, end)
    except WireError as err:
        raise error_type(f"{place}: {wire_problem(err)}") from None
    except FieldProblem as err:
        suffix = f" — {CORRUPT}" if err.corrupt else ""
        raise error_type(f"{place}: {err.problem}{suffix}") from None


def _read_float_field(buf, pos, end, field, wire_type, value, next_pos, name, dtype, fixed_type):
    """One occurrence of a repeated float/double field: a packed slice or a run of single values."""
    if wire_type == LENGTH_DELIMITED:
        chunk_start, chunk_end = value
        if (chunk_end - chunk_start) % dtype.itemsize:
            raise FieldProblem(f"field {name} ({field}): packed length {chunk_end - chunk_start} bytes "
                              f"is not a multiple of {dtype.itemsize}")
        count = (chunk_end - chunk_start) // dtype.itemsize
        return _native(np.frombuffer(buf, dtype=dtype, count=count, offset=chunk_start)), next_pos
    if wire_type == fixed_type:
        tag = bytes(buf[pos:value])
        stride = len(tag) + dtype.itemsize
        count = wire.fixed_run_length(buf, pos, end, tag, dtype.itemsize)
        run = np.ndarray((count,), dtype=dtype, buffer=buf, offset=value, strides=(stride,))
        return _native(run.copy()), pos + count * stride
    raise FieldProblem(_wrong_wire_type_text(name, field, wire_type, LENGTH_DELIMITED))


def _native(array: np.ndarray) -> np.ndarray:
    """The array in the machine's byte order (a no-op on little-endian machines)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _decode_blobshape(buf, start: int, end: int) -> list[int]:
    """The ``dim`` values of a BlobShape, packed or not."""
    dims: list[int] = []
    for field, wire_type, value in wire.iter_fields(buf, start, end):
        if field != _BLOBSHAPE_DIM_FIELD:
            continue
        if wire_type == VARINT:
            dims.append(wire.as_signed64(value))
        elif wire_type == LENGTH_DELIMITED:
            pos, stop = value
            while pos < stop:
                dim, pos = wire.read_varint(buf, pos, stop)
                dims.append(wire.as_signed64(dim))
        else:
            raise FieldProblem(_wrong_wire_type_text("shape.dim", field, wire_type, VARINT))
    negative = [d for d in dims if d < 0]
    if negative:
        raise FieldProblem(f"field shape has a negative dimension {negative[0]}: {tuple(dims)}")
    return dims


def _legacy_dim(name: str, value: int) -> int:
    """A legacy int32 dimension; negative or oversized values are refused."""
    dim = wire.as_signed64(value)
    if not 0 <= dim < 2**31:
        raise FieldProblem(f"field {name} is {dim}, not a valid dimension")
    return dim


def _assemble_blob(arrays: dict[str, list[np.ndarray]], legacy: dict[str, int],
                   dims: list[int] | None) -> BlobData:
    """Pick shape, data and diff the way ``Blob::FromProto`` does and check the counts."""
    data_name = "double_data" if arrays["double_data"] else "data"
    data = _concatenated(arrays[data_name], data_name)
    legacy_shape = None
    if legacy:
        legacy_shape = tuple(legacy.get(n, 0) for n in ("num", "channels", "height", "width"))
        shape = legacy_shape
    elif dims is not None:
        shape = tuple(dims)
    else:
        shape = () if data.size == 1 else (data.size,)
    data = _shaped(data, shape, data_name)
    diff_name = "double_diff" if arrays["double_diff"] else "diff"
    diff = None
    if arrays[diff_name]:
        diff = _shaped(_concatenated(arrays[diff_name], diff_name), shape, diff_name)
    return BlobData(data=data, shape=shape, legacy=legacy_shape, diff=diff)


def _concatenated(chunks: list[np.ndarray], name: str) -> np.ndarray:
    """All occurrences of a repeated field as one array (usually there is exactly one)."""
    if len(chunks) == 1:
        return chunks[0]
    dtype = np.float64 if name.startswith("double") else np.float32
    if not chunks:
        return np.empty(0, dtype=dtype)
    return np.concatenate(chunks)


def _shaped(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``values`` reshaped to ``shape``; a count mismatch is Caffe's count check failing."""
    needed = math.prod(shape)
    if values.size != needed:
        raise FieldProblem(f"{name} has {values.size} values but shape {shape} needs {needed}"
                          f" — {CORRUPT}", corrupt=False)
    return values.reshape(shape)


def _expect_wire_type(name: str, field: int, wire_type: int, expected: int) -> None:
    """Refuse a known field sent with the wrong wire type."""
    if wire_type != expected:
        raise FieldProblem(_wrong_wire_type_text(name, field, wire_type, expected))


def _wrong_wire_type_text(name: str, field: int, wire_type: int, expected: int) -> str:
    """The message for a known field with an unexpected wire type."""
    got = wire.WIRE_TYPE_NAMES.get(wire_type, str(wire_type))
    return (f"field {name} ({field}) has wire type {got}, expected "
            f"{wire.WIRE_TYPE_NAMES[expected]}")


# ---------------------------------------------------------------------------------------------
# NetParameter scanning
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerFormat:
    """Where one layer format keeps the fields weights need."""

    kind: str
    name_field: int
    type_field: int
    type_is_enum: bool
    blobs_field: int
    v0_field: int | None = None


_NET_LAYER_FIELD = 100
_NET_V1_LAYERS_FIELD = 2
_V2 = _LayerFormat("layer", name_field=1, type_field=2, type_is_enum=False, blobs_field=7)
_V1 = _LayerFormat("V1 layers", name_field=4, type_field=5, type_is_enum=True, blobs_field=6, v0_field=1)
_V0 = _LayerFormat("V0 layer", name_field=1, type_field=2, type_is_enum=False, blobs_field=50)
_LAYER_FORMATS_BY_NET_FIELD = {_NET_LAYER_FIELD: _V2, _NET_V1_LAYERS_FIELD: _V1}


@dataclass
class _ScannedLayer:
    """A layer's name, type and the byte ranges of its BlobProtos, before decoding them."""

    name: str | None = None
    type: str | None = None
    blob_ranges: list[tuple[int, int]] = dataclass_field(default_factory=list)


def read_weights(path) -> list[LayerWeights]:
    """Read a ``.caffemodel`` (binary) or ``.caffemodel.h5`` file; see the module docstring."""
    path = os.fspath(path)
    if is_hdf5_file(path):
        return _read_hdf5_weights(path)
    buf = read_file_bytes(path, WeightsError)
    return _scan_net(buf, path)


def _scan_net(buf, path: str) -> list[LayerWeights]:
    """Walk the top-level NetParameter fields and decode every layer's blobs."""
    layers: list[LayerWeights] = []
    formats_seen: set[str] = set()
    pos, end = 0, len(buf)
    while pos < end:
        try:
            field, wire_type, value, next_pos = wire.read_field(buf, pos, end)
        except WireError as err:
            raise WeightsError(f"{path}: {_top_level_place(buf, pos, end, len(layers))}: "
                               f"{wire_problem(err)}") from None
        layer_format = _LAYER_FORMATS_BY_NET_FIELD.get(field)
        if layer_format is not None:
            if wire_type != LENGTH_DELIMITED:
                problem = _wrong_wire_type_text(layer_format.kind, field, wire_type, LENGTH_DELIMITED)
                raise WeightsError(f"{path}: {_layer_place(len(layers), None, None)}: NetParameter "
                                   f"{problem} — {CORRUPT}")
            formats_seen.add(layer_format.kind)
            layers.append(_read_layer(buf, value[0], value[1], layer_format, len(layers), path))
        pos = next_pos
    if len(formats_seen) > 1:
        raise WeightsError(f"{path}: the net has both 'layer' (field 100) and V1 'layers' (field 2) "
                           "entries; Caffe refuses to upgrade such a file")
    return layers


def _top_level_place(buf, pos: int, end: int, index: int) -> str:
    """Name what was being read when the top level broke: the next layer if that is what it is."""
    try:
        tag, after_tag = wire.read_varint(buf, pos, end)
    except WireError:
        return f"after {index} layers"
    layer_format = _LAYER_FORMATS_BY_NET_FIELD.get(tag >> 3)
    if layer_format is None:
        return f"NetParameter field {tag >> 3} after {index} layers"
    try:
        _, content_start = wire.read_varint(buf, after_tag, end)
    except WireError:
        return _layer_place(index, None, None)
    partial = _scan_layer_leniently(buf, content_start, end, layer_format)
    return _layer_place(index, partial.name, partial.type)


def _scan_layer_leniently(buf, start: int, end: int, layer_format: _LayerFormat) -> _ScannedLayer:
    """Whatever name and type can be read from a damaged layer, for the error message."""
    scanned = _ScannedLayer()
    try:
        _scan_layer_fields(buf, start, end, layer_format, scanned)
    except (WireError, FieldProblem):
        pass
    return scanned


def _read_layer(buf, start: int, end: int, layer_format: _LayerFormat, index: int,
                path: str) -> LayerWeights:
    """Scan one layer and decode its blobs, naming the layer in any error."""
    scanned = _ScannedLayer()
    try:
        _scan_layer_fields(buf, start, end, layer_format, scanned)
    except WireError as err:
        raise WeightsError(f"{path}: {_layer_place(index, scanned.name, scanned.type)}: "
                           f"{wire_problem(err)}") from None
    except FieldProblem as err:
        raise WeightsError(f"{path}: {_layer_place(index, scanned.name, scanned.type)}: {err.problem}"
                           f" — {CORRUPT}") from None
    name = scanned.name if scanned.name is not None else ""
    type_ = scanned.type if scanned.type is not None else ""
    blobs = []
    for blob_index, (blob_start, blob_end) in enumerate(scanned.blob_ranges):
        place = f"{_layer_place(index, name, type_)}, blob {blob_index}"
        blobs.append(decode_blobproto_at(buf, blob_start, blob_end, f"{path}: {place}", WeightsError))
    return LayerWeights(name=name, type=type_, blobs=blobs)


def _scan_layer_fields(buf, start: int, end: int, layer_format: _LayerFormat,
                       scanned: _ScannedLayer) -> None:
    """Fill ``scanned`` from the layer's fields; a nested V0 layer replaces the V1 entry's own."""
    own = _ScannedLayer()
    nested: _ScannedLayer | None = None
    for field, wire_type, value in wire.iter_fields(buf, start, end):
        if field == layer_format.name_field:
            _expect_wire_type("name", field, wire_type, LENGTH_DELIMITED)
            own.name = _decode_text(buf, *value)
            scanned.name = own.name
        elif field == layer_format.type_field:
            own.type = _decode_layer_type(buf, field, wire_type, value, layer_format)
            scanned.type = own.type
        elif field == layer_format.blobs_field:
            _expect_wire_type("blobs", field, wire_type, LENGTH_DELIMITED)
            own.blob_ranges.append(value)
        elif field == layer_format.v0_field:
            _expect_wire_type("layer (V0)", field, wire_type, LENGTH_DELIMITED)
            nested = _ScannedLayer()
            _scan_layer_fields(buf, value[0], value[1], _V0, nested)
    chosen = nested if nested is not None else own
    scanned.name, scanned.type, scanned.blob_ranges = chosen.name, chosen.type, chosen.blob_ranges


def _decode_layer_type(buf, field: int, wire_type: int, value, layer_format: _LayerFormat) -> str:
    """A layer's type: the string, or for V1 layers the enum's name (its number if unnamed)."""
    if not layer_format.type_is_enum:
        _expect_wire_type("type", field, wire_type, LENGTH_DELIMITED)
        return _decode_text(buf, *value)
    _expect_wire_type("type", field, wire_type, VARINT)
    number = wire.as_signed64(value)
    try:
        return caffe_pb2.V1LayerParameter.LayerType.Name(number)
    except ValueError:
        return str(number)


def _decode_text(buf, start: int, end: int) -> str:
    """A protobuf string field; undecodable bytes are replaced rather than refused."""
    return bytes(buf[start:end]).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# HDF5 reading
# ---------------------------------------------------------------------------------------------


#: What h5py raises for a damaged file, at open or anywhere later while walking it (TypeError:
#: a datatype numpy has no equivalent for).
_HDF5_LIBRARY_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@contextmanager
def reading_hdf5(path: str, error_type: type[CaffeError]):
    """``h5py.File(path, "r")`` for the block; whatever the HDF5 library raises on a damaged file,
    when opening it or anywhere in the block, becomes one ``error_type`` naming the file."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except _HDF5_LIBRARY_ERRORS as err:
        raise error_type(f"{path}: cannot open the HDF5 file: {err}") from None
    try:
        with h5:
            yield h5
    except _HDF5_LIBRARY_ERRORS as err:
        raise error_type(f"{path}: cannot read the HDF5 file: {err} — {CORRUPT}") from None


def _read_hdf5_weights(path: str) -> list[LayerWeights]:
    """Read ``Net::ToHDF5``'s layout; see the module docstring."""
    with reading_hdf5(path, WeightsError) as h5:
        data_group = _hdf5_group(h5, "data", path, required=True)
        diff_group = _hdf5_group(h5, "diff", path, required=False)
        budget = MemoryBudget(path)
        layers = []
        for index, layer_name in enumerate(data_group.keys()):
            place = f"{path}: {_layer_place(index, layer_name, '')} (HDF5 group data/{layer_name})"
            arrays = _hdf5_layer_arrays(data_group, layer_name, place, budget)
            diffs = _hdf5_layer_arrays(diff_group, layer_name, place, budget) if diff_group is not None else {}
            blobs = _hdf5_blobs(arrays, diffs, place)
            layers.append(LayerWeights(name=layer_name, type="", blobs=blobs))
    return layers


def _hdf5_group(h5, name: str, path: str, required: bool):
    """The top-level group ``name``; None when optional and absent."""
    import h5py

    item = h5.get(name, getlink=False)
    if item is None:
        if required:
            raise WeightsError(f'{path}: HDF5 weights need a group "{name}" (Caffe\'s Net::ToHDF5 '
                               f"layout); the file has {sorted(h5.keys())}")
        return None
    if not isinstance(item, h5py.Group):
        raise WeightsError(f'{path}: "{name}" is an HDF5 dataset, expected a group of layers')
    return item


def _hdf5_layer_arrays(group, layer_name: str, place: str, budget: MemoryBudget) -> dict[int, np.ndarray]:
    """The datasets of one layer group, keyed by blob index."""
    import h5py

    layer_group = group.get(layer_name)
    if layer_group is None:
        return {}
    if not isinstance(layer_group, h5py.Group):
        raise WeightsError(f"{place}: {group.name}/{layer_name} is a dataset, expected a group of blobs")
    arrays = {}
    for key, item in layer_group.items():
        if not (key.isdigit() and str(int(key)) == key):
            raise WeightsError(f'{place}: dataset "{key}" is not a blob index ("0", "1", ...)')
        if not isinstance(item, h5py.Dataset):
            raise WeightsError(f'{place}: "{key}" is a group, expected a dataset')
        arrays[int(key)] = hdf5_dataset_array(item, place, key, budget)
    return arrays


def hdf5_dataset_array(dataset, place: str, key: str, budget: MemoryBudget,
                       error_type: type[CaffeError] = WeightsError) -> np.ndarray:
    """A dataset as float64 (when stored as float64) or float32, as Caffe would load it.

    Its declared size is checked against ``torchcaffe.limits`` (and counted in ``budget``) before
    it is read, and a contiguous dataset must store exactly the bytes its shape declares: a
    hostile file cannot make us allocate what it does not hold."""
    if dataset.dtype.kind not in "fiub":
        raise error_type(f'{place}: dataset "{key}" holds {dataset.dtype} values, expected numbers')
    if dataset.shape is None:
        raise error_type(f'{place}: dataset "{key}" is empty (no dataspace), expected an array')
    budget.add(place, f'dataset "{key}"', dataset.shape, dataset.dtype.itemsize)
    _check_hdf5_storage(dataset, place, key, error_type)
    try:
        values = dataset[()]
    except OSError as err:
        raise error_type(f'{place}: dataset "{key}" cannot be read: {err} — {CORRUPT}') from None
    dtype = np.float64 if dataset.dtype == np.float64 else np.float32
    return np.asarray(values, dtype=dtype)


def _check_hdf5_storage(dataset, place: str, key: str, error_type: type[CaffeError]) -> None:
    """A contiguous dataset (what Caffe writes) stores exactly ``size * itemsize`` bytes, or none
    yet; chunked ones may be compressed, and their declared size was checked by the limits."""
    import h5py

    if dataset.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS:
        return
    declared = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if stored != declared:
        raise error_type(f'{place}: dataset "{key}" declares shape {dataset.shape} ({declared} bytes) '
                         f"but the file stores {stored} bytes for it — {CORRUPT}")


def _hdf5_blobs(arrays: dict[int, np.ndarray], diffs: dict[int, np.ndarray], place: str) -> list:
    """Blobs in index order; an index Caffe left out (a shared parameter) becomes None.

    Caffe writes diffs even for shared parameters whose data it leaves out; such a diff is
    dropped along with its blob.
    """
    for index, diff in diffs.items():
        if index in arrays and diff.shape != arrays[index].shape:
            raise WeightsError(f"{place}, blob {index}: diff shape {diff.shape} differs from data "
                               f"shape {arrays[index].shape}")
    count = max(arrays) + 1 if arrays else 0
    blobs = []
    for index in range(count):
        data = arrays.get(index)
        blobs.append(None if data is None else
                     BlobData(data=data, shape=tuple(data.shape), legacy=None, diff=diffs.get(index)))
    return blobs


# ---------------------------------------------------------------------------------------------
# Encoding BlobProtos (shared with binaryproto.py)
# ---------------------------------------------------------------------------------------------


def blob_values(array, what: str, error_type: type[CaffeError] = WeightsError) -> np.ndarray:
    """An array as Caffe stores it: float64 stays float64, other real numbers become float32."""
    values = np.asarray(array)
    if values.dtype.kind not in "fiub":
        raise error_type(f"{what}: cannot store {values.dtype} values in a Caffe blob")
    dtype = np.dtype("<f8") if values.dtype == np.float64 else np.dtype("<f4")
    return np.asarray(values, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def encode_blobproto(data: np.ndarray, diff: np.ndarray | None = None) -> tuple[int, list]:
    """The BlobProto that ``Blob::ToProto`` writes for ``data`` (and ``diff``).

    Returns ``(length, pieces)``: the pieces (bytes and contiguous arrays, to be written in
    order) make up ``length`` bytes. Fields come in field-number order as protobuf serializes
    them: ``data`` 5, ``diff`` 6, ``shape`` 7 for float32; ``shape`` 7, ``double_data`` 8,
    ``double_diff`` 9 for float64. Empty arrays and the shape of a 0-d blob are not written.
    """
    double = data.dtype == np.float64
    data_field, diff_field = (8, 9) if double else (5, 6)
    arrays = [(data_field, data)]
    if diff is not None:
        arrays.append((diff_field, np.asarray(diff, dtype=data.dtype, order="C")))
    shape_field = _encode_shape_field(data.shape)
    pieces: list = [shape_field] if double else []
    for field, values in arrays:
        if values.size:
            pieces.append(wire.length_delimited_header(field, values.nbytes))
            pieces.append(values.reshape(-1))
    if not double:
        pieces.append(shape_field)
    pieces = [p for p in pieces if len(p)]
    return sum(_piece_length(p) for p in pieces), pieces


def _encode_shape_field(shape: tuple[int, ...]) -> bytes:
    """Field 7, a BlobShape with packed dims; nothing for a 0-d blob (Caffe adds no dims)."""
    if not shape:
        return b""
    dims = b"".join(wire.encode_varint(d) for d in shape)
    blobshape = wire.encode_length_delimited(_BLOBSHAPE_DIM_FIELD, dims)
    return wire.encode_length_delimited(_BLOB_SHAPE_FIELD, blobshape)


def _piece_length(piece) -> int:
    """Byte length of a piece: bytes or a contiguous array."""
    return piece.nbytes if isinstance(piece, np.ndarray) else len(piece)


# ---------------------------------------------------------------------------------------------
# Writing .caffemodel
# ---------------------------------------------------------------------------------------------


def write_caffemodel(path, net_param: caffe_pb2.NetParameter, blobs: Sequence[Sequence[np.ndarray]],
                     diffs: Sequence[Sequence[np.ndarray]] | None = None) -> None:
    """Write ``net_param`` with ``blobs[i]`` as the blobs of ``net_param.layer[i]``.

    Any blobs already in ``net_param`` are ignored. The bytes equal Caffe's ``Net::ToProto``
    followed by ``SerializeToString`` (diffs included when given, like ``write_diff``).
    float64 arrays become ``double_data``/``double_diff``, everything else float32.
    """
    path = os.fspath(path)
    _check_writer_arguments(path, net_param, blobs, diffs)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    layer_params = list(net.layer)
    del net.layer[:]
    pieces = _net_pieces(path, net, layer_params, blobs, diffs)
    with atomic_output_file(path, WeightsError) as f:
        write_pieces(f, pieces)


def _check_writer_arguments(path: str, net_param, blobs, diffs) -> None:
    """Refuse arguments that do not describe one blob list per layer."""
    if not isinstance(net_param, caffe_pb2.NetParameter):
        raise WeightsError(f"{path}: net_param must be a caffe_pb2.NetParameter, "
                           f"got {type(net_param).__name__}")
    if len(net_param.layers):
        raise WeightsError(f"{path}: net_param uses V1 'layers'; upgrade it to 'layer' "
                           "before writing weights")
    if len(blobs) != len(net_param.layer):
        raise WeightsError(f"{path}: {len(blobs)} blob lists for {len(net_param.layer)} layers")
    if diffs is not None and len(diffs) != len(blobs):
        raise WeightsError(f"{path}: {len(diffs)} diff lists for {len(blobs)} layers")


def _net_pieces(path, net, layer_params, blobs, diffs) -> list:
    """The whole file: the net's own fields with every layer spliced in at field 100's place."""
    head = net.SerializeToString()
    split = _insertion_offset(head, _NET_LAYER_FIELD, net.DESCRIPTOR)
    pieces: list = [head[:split]]
    for index, layer in enumerate(layer_params):
        layer_diffs = diffs[index] if diffs is not None else None
        pieces.extend(_layer_pieces(path, index, layer, blobs[index], layer_diffs))
    pieces.append(head[split:])
    return pieces


def _layer_pieces(path, index, layer, layer_blobs, layer_diffs) -> list:
    """One ``layer`` field: the LayerParameter without blobs, with the blobs at field 7's place."""
    del layer.blobs[:]
    body = layer.SerializeToString()
    split = _insertion_offset(body, _V2.blobs_field, layer.DESCRIPTOR)
    place = f"{path}: {_layer_place(index, layer.name, layer.type)}"
    if layer_diffs is not None and len(layer_diffs) != len(layer_blobs):
        raise WeightsError(f"{place}: {len(layer_diffs)} diffs for {len(layer_blobs)} blobs")
    blob_pieces: list = []
    for blob_index, array in enumerate(layer_blobs):
        data = blob_values(array, f"{place}, blob {blob_index}")
        diff = None
        if layer_diffs is not None:
            diff = blob_values(layer_diffs[blob_index], f"{place}, blob {blob_index} diff")
            if diff.shape != data.shape:
                raise WeightsError(f"{place}, blob {blob_index}: diff shape {diff.shape} differs "
                                   f"from data shape {data.shape}")
        length, pieces = encode_blobproto(data, diff)
        blob_pieces.append(wire.length_delimited_header(_V2.blobs_field, length))
        blob_pieces.extend(pieces)
    body_length = len(body) + sum(_piece_length(p) for p in blob_pieces)
    return [wire.length_delimited_header(_NET_LAYER_FIELD, body_length), body[:split], *blob_pieces,
            body[split:]]


def _insertion_offset(serialized: bytes, field_number: int, descriptor) -> int:
    """Where protobuf would put ``field_number`` in this serialization of the message.

    Protobuf writes known fields in field-number order and unknown fields after them, so the
    place is before the first field that is unknown or has a higher number.
    """
    known = descriptor.fields_by_number
    pos = 0
    while pos < len(serialized):
        number, _, _, next_pos = wire.read_field(serialized, pos, len(serialized))
        if number > field_number or number not in known:
            return pos
        pos = next_pos
    return pos


# ---------------------------------------------------------------------------------------------
# Writing .caffemodel.h5
# ---------------------------------------------------------------------------------------------


def write_caffemodel_h5(path, layers: Sequence[tuple[str, Sequence[np.ndarray | None]]],
                        diffs: Sequence[Sequence[np.ndarray | None]] | None = None) -> None:
    """Write weights in ``Net::ToHDF5``'s layout: ``data/<layer>/<blob index>`` (and ``diff/...``).

    Like Caffe, every layer gets a group, even one without blobs; a ``None`` blob is left out
    (Caffe leaves out parameters shared with an earlier layer). float64 arrays stay float64,
    everything else becomes float32.
    """
    import h5py

    path = os.fspath(path)
    if diffs is not None and len(diffs) != len(layers):
        raise WeightsError(f"{path}: {len(diffs)} diff lists for {len(layers)} layers")
    _check_hdf5_layer_names(path, [name for name, _ in layers])
    with atomic_output_path(path, WeightsError) as temp:
        with h5py.File(temp, "w") as h5:
            _write_hdf5_group(h5.create_group("data"), path, layers, [blobs for _, blobs in layers])
            if diffs is not None:
                _write_hdf5_group(h5.create_group("diff"), path, layers, diffs)


def _check_hdf5_layer_names(path: str, names: list[str]) -> None:
    """Layer names must be usable as distinct HDF5 group names."""
    seen = set()
    for index, name in enumerate(names):
        if not name or "/" in name or name in (".",):
            raise WeightsError(f"{path}: {_layer_place(index, name, '')}: the name cannot be "
                               "an HDF5 group name")
        if name in seen:
            raise WeightsError(f"{path}: {_layer_place(index, name, '')}: the name is used twice")
        seen.add(name)


def _write_hdf5_group(group, path: str, layers, arrays_per_layer) -> None:
    """One group per layer with one dataset per blob."""
    for index, ((name, _), arrays) in enumerate(zip(layers, arrays_per_layer)):
        layer_group = group.create_group(name)
        for blob_index, array in enumerate(arrays):
            if array is not None:
                place = f"{path}: {_layer_place(index, name, '')}, blob {blob_index}"
                values = blob_values(array, place)
                layer_group.create_dataset(str(blob_index), data=values)
