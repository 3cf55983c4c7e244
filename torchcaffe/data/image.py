"""Images as Caffe reads them: OpenCV's decoders, BGR channel order, ``cv::resize``.

    read_image(path, height=0, width=0, is_color=True) -> (H, W, C) uint8, BGR
    decode_image(buffer, color=None, where="") -> (H, W, C) uint8
    encode_image(image, encoding, where="") -> bytes
    resize_image(image, height, width, interpolation=cv2.INTER_LINEAR)
    to_chw(image) / to_hwc(array)

Caffe's ``ReadImageToCVMat`` reads with ``cv::imread`` in colour (3 channels, BGR) or grey (1
channel) and resizes with ``cv::resize`` (bilinear, ``INTER_LINEAR``) only when *both*
``height`` and ``width`` are positive. ``DecodeDatumToCVMatNative`` decodes with
``IMREAD_ANYCOLOR`` (the file's own channel count), ``DecodeDatumToCVMat`` in colour or grey.
Images here are always 3-D ``(height, width, channels)`` arrays, grey ones with one channel;
the data transformer takes Caffe's blob layout ``(channels, height, width)`` (:func:`to_chw`).

Differs from Caffe: a file that cannot be read raises :class:`DataError` naming it (Caffe logs
``Could not open or find file`` and goes on with an empty image, which then fails a CHECK or,
in ``convert_imageset``, skips the line).
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from ..limits import check_blob
from .errors import DataError

#: OpenCV's interpolation codes by the names of SSD's ``ResizeParameter.Interp_mode``.
INTERPOLATIONS = {"LINEAR": cv2.INTER_LINEAR, "AREA": cv2.INTER_AREA, "NEAREST": cv2.INTER_NEAREST,
                  "CUBIC": cv2.INTER_CUBIC, "LANCZOS4": cv2.INTER_LANCZOS4}


def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True,
               interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Caffe's ``ReadImageToCVMat``: the image at ``path`` as (H, W, C) uint8, BGR or grey,
    resized to ``height`` x ``width`` when both are positive."""
    flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such image file" if not os.path.exists(path)
                        else f"{path}: is not a file, cannot read it as an image")
    image = cv2.imread(path, flag)
    if image is None:
        raise DataError(f"{path}: OpenCV cannot decode this file as an image")
    image = _three_axes(image)
    if height > 0 and width > 0:
        image = resize_image(image, height, width, interpolation)
    return image


def decode_image(buffer, color: bool | None = None, where: str = "") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) as Caffe's ``DecodeDatumToCVMat``: in colour
    (``color=True``), grey (``False``) or the file's own channels (``None``, ``...Native``)."""
    flag = cv2.IMREAD_ANYCOLOR if color is None else (cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    data = np.frombuffer(buffer, dtype=np.uint8)
    size = declared_image_size(bytes(buffer[:65536]))
    if size is not None:  # refuse a header that declares a giant image before OpenCV allocates it
        channels = 4 if color is None else (3 if color else 1)
        check_blob(where, "the encoded image", (channels, size[1], size[0]))
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise DataError(f"{where}: the encoded image ({data.size} bytes) cannot be decoded "
                        f"(not a JPEG/PNG/... OpenCV reads, or truncated)")
    return _three_axes(image)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (the ones that carry the image size): C0-CF but DHT, JPG and DAC.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def declared_image_size(head: bytes) -> tuple[int, int] | None:
    """The (width, height) a PNG's IHDR or a JPEG's start-of-frame declares, read from the first
    bytes of the file; None for other formats or a header not found there."""
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a segment
            pos += 2
            continue
        length = int.from_bytes(head[pos + 2:pos + 4], "big")
        if marker in _JPEG_FRAMES:
            frame = head[pos + 4:pos + 9]
            return (int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")) if len(frame) == 5 else None
        pos += 2 + length
    return None


def encode_image(image: np.ndarray, encoding: str, where: str = "") -> bytes:
    """Caffe's ``EncodeCVMatToDatum``: ``cv::imencode("." + encoding, image)``."""
    try:
        ok, buffer = cv2.imencode("." + encoding, image)
    except cv2.error:
        ok = False
    if not ok:
        raise DataError(f"{where}: OpenCV cannot encode an image as {encoding!r} "
                        f"(try jpg or png)")
    return buffer.tobytes()


def resize_image(image: np.ndarray, height: int, width: int,
                 interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``cv::resize`` to ``height`` x ``width``, keeping the channel axis of grey images."""
    return _three_axes(cv2.resize(image, (int(width), int(height)), interpolation=interpolation))


def matches_extension(filename: str, encoding: str) -> bool:
    """Caffe's ``matchExt``: the file's extension is the encoding (``jpeg`` counts as ``jpg``)."""
    dot = filename.rfind(".")
    ext = (filename[dot + 1:] if dot >= 0 else filename).lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def to_chw(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (C, H, W), Caffe's blob layout."""
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def to_hwc(array: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C), OpenCV's layout."""
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _three_axes(image: np.ndarray) -> np.ndarray:
    return image[:, :, None] if image.ndim == 2 else image
