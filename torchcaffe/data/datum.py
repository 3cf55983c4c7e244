"""Caffe's ``Datum`` records: one example (image + label) as stored in LMDB/LevelDB databases.

A Datum holds ``channels``, ``height``, ``width`` and ``label`` and its pixels in one of three
forms:

* ``data``: raw uint8 bytes in Caffe's blob layout (C, H, W) — what ``convert_imageset`` writes
  without ``--encoded`` (its ``CVMatToDatum`` reorders OpenCV's H, W, C pixels into C, H, W);
* ``float_data``: float32 values, same layout (``extract_features`` writes these);
* ``encoded: true`` and ``data`` holding a whole image file (JPEG, PNG, ...), decoded with
  OpenCV into **BGR** (colour) or grey; ``channels/height/width`` are then unset.

    parse_datum(value, where) -> caffe_pb2.Datum
    datum_image(datum, where, color=None) -> (C, H, W) uint8 or float32 array
    image_to_datum(image, label) / encoded_datum(buffer, label)     (what convert_imageset writes)
    datum_to_array(datum) / array_to_datum(array, label)            (pycaffe's caffe.io helpers)

Serialized Datums are byte for byte what Caffe writes: protobuf serializes set fields in field
number order in both languages, and ``image_to_datum`` sets exactly the fields Caffe's
``CVMatToDatum`` sets (``encoded: false`` included).

Differs from Caffe: a record whose pixel count does not match ``channels * height * width`` is
an error naming the record (Caffe reads past the end of the buffer).
"""
from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2
from .errors import DataError
from .image import decode_image, to_chw


def parse_datum(value: bytes, where: str) -> caffe_pb2.Datum:
    """The Datum serialized in ``value``; a record that is not one raises naming ``where``."""
    return _parse(caffe_pb2.Datum(), value, where, "Datum")


def parse_annotated_datum(value: bytes, where: str) -> caffe_pb2.AnnotatedDatum:
    """The ``AnnotatedDatum`` (SSD's records: a Datum and its boxes) serialized in ``value``."""
    return _parse(caffe_pb2.AnnotatedDatum(), value, where, "AnnotatedDatum")


def _parse(message, value: bytes, where: str, kind: str):
    try:
        message.ParseFromString(bytes(value))
    except (DecodeError, RuntimeError, ValueError) as err:
        raise DataError(f"{where}: the record is not a valid {kind} ({len(value)} bytes): "
                        f"{err or 'damaged'}") from None
    return message


def datum_image(datum: caffe_pb2.Datum, where: str, color: bool | None = None) -> np.ndarray:
    """The pixels of ``datum`` as a (C, H, W) array: uint8 for ``data`` and encoded images,
    float32 for ``float_data``. ``color`` (True/False) forces how an encoded image is decoded;
    ``None`` keeps its own channels, as ``DecodeDatumToCVMatNative``."""
    if datum.encoded:
        return to_chw(decode_image(datum.data, color, where))
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) <= 0:
        raise DataError(f"{where}: the Datum has channels x height x width = "
                        f"{' x '.join(map(str, shape))}; all three must be positive")
    count = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != count:
            raise DataError(f"{where}: the Datum's data holds {len(datum.data)} bytes but "
                            f"channels x height x width = {count}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        what = "holds no pixels (neither data nor float_data)" if not datum.float_data else \
            f"has {len(datum.float_data)} float_data values"
        raise DataError(f"{where}: the Datum {what} but channels x height x width = {count}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def image_to_datum(image: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """Caffe's ``CVMatToDatum``: an (H, W, C) uint8 image as raw C, H, W bytes."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise DataError(f"an image to store must be (height, width, channels) uint8, got "
                        f"{image.dtype} of shape {image.shape}")
    datum = caffe_pb2.Datum(channels=image.shape[2], height=image.shape[0], width=image.shape[1],
                            data=to_chw(image).tobytes(), encoded=False)
    if label is not None:
        datum.label = int(label)
    return datum


def encoded_datum(buffer: bytes, label: int | None = None) -> caffe_pb2.Datum:
    """Caffe's ``ReadFileToDatum`` / ``EncodeCVMatToDatum``: an encoded image file as it is."""
    datum = caffe_pb2.Datum(data=bytes(buffer), encoded=True)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """pycaffe's ``caffe.io.datum_to_array``: (C, H, W) uint8 from ``data``, else float64 from
    ``float_data``. Encoded Datums are not decoded (as in pycaffe); use :func:`datum_image`."""
    if datum.data:
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(datum.channels, datum.height, datum.width)
    return np.asarray(datum.float_data, dtype=np.float64).reshape(datum.channels, datum.height, datum.width)


def array_to_datum(array: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """pycaffe's ``caffe.io.array_to_datum``: a (C, H, W) array; uint8 becomes ``data``, any
    other type ``float_data``."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array_to_datum needs a (channels, height, width) array, got shape {array.shape}")
    datum = caffe_pb2.Datum(channels=array.shape[0], height=array.shape[1], width=array.shape[2])
    if array.dtype == np.uint8:
        datum.data = array.tobytes()
    else:
        datum.float_data.extend(array.astype(np.float64).flat)
    if label is not None:
        datum.label = int(label)
    return datum
