"""pycaffe's ``caffe.io``: the input ``Transformer``, image loading and resizing, oversampling,
and conversions between numpy arrays and ``BlobProto``/``Datum`` messages.

pycaffe reads and resizes images with scikit-image; we use OpenCV (Caffe's own image library)
to decode and numpy to resize, reproducing scikit-image's numbers (see :func:`load_image` and
:func:`resize_image` for what is matched and where it differs). ``import torchcaffe as caffe``
exposes these names as ``caffe.io.Transformer`` & co.
"""
from __future__ import annotations

import os

import numpy as np

from ..data.datum import array_to_datum, datum_to_array  # noqa: F401  (pycaffe's names, one implementation)
from ..errors import CaffeError
from ..io import wire
from ..io.weights import FieldProblem, blob_values, decode_blobproto, encode_blobproto
from ..proto import caffe_pb2

__all__ = ["Transformer", "load_image", "resize_image", "oversample", "blobproto_to_array",
           "array_to_blobproto", "arraylist_to_blobprotovector_str", "blobprotovector_str_to_arraylist",
           "array_to_datum", "datum_to_array"]


class IoValueError(CaffeError, ValueError):
    """A value pycaffe's ``caffe.io`` refuses with ``ValueError`` (or a bare ``Exception``)."""


class ImageReadError(CaffeError, OSError):
    """An image file that cannot be read."""


# ---------------------------------------------------------------------------------------------
# BlobProto (Datum conversions: torchcaffe.data.datum, re-exported above)
# ---------------------------------------------------------------------------------------------

def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """A ``BlobProto``'s data (or diff) as an array: the legacy num/channels/height/width shape
    when any of those fields is set, else ``shape.dim``. A blob with neither holds one value
    (a 0-d array); more values without a shape are an error, as in pycaffe.

    Values come back as stored: float32 (``data``) or float64 (``double_data``); pycaffe
    always returns float64.
    """
    buf = blob.SerializeToString()
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    try:
        decoded = decode_blobproto(buf, 0, len(buf))
    except FieldProblem as err:
        raise IoValueError(f"BlobProto: {err.problem}") from None
    values = decoded.diff if return_diff else decoded.data
    if values is None:
        values = np.zeros(decoded.shape, dtype=decoded.data.dtype)
    if not legacy and not blob.HasField("shape") and values.size != 1:
        raise IoValueError(f"BlobProto has {values.size} values but no shape (neither shape.dim nor "
                           f"num/channels/height/width)")
    return values.reshape(()) if not legacy and not blob.HasField("shape") else values


def array_to_blobproto(arr, diff=None) -> caffe_pb2.BlobProto:
    """A ``BlobProto`` with ``arr``'s shape and values (float32 ``data``, and ``diff`` if given),
    as pycaffe and Caffe's ``Blob::ToProto`` write it."""
    return caffe_pb2.BlobProto.FromString(_blobproto_bytes(arr, diff))


def _blobproto_bytes(arr, diff=None) -> bytes:
    data = blob_values(np.asarray(arr, dtype=np.float32), "array_to_blobproto", IoValueError)
    if diff is not None:
        diff = np.asarray(diff, dtype=np.float32)
        if diff.shape != data.shape:
            raise IoValueError(f"array_to_blobproto: diff has shape {diff.shape}, data has {data.shape}")
    _, pieces = encode_blobproto(data, diff)
    return b"".join(p.tobytes() if isinstance(p, np.ndarray) else bytes(p) for p in pieces)


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """The serialized ``BlobProtoVector`` holding ``arraylist`` (one ``BlobProto`` each)."""
    out = bytearray()
    for arr in arraylist:
        blob = _blobproto_bytes(arr)
        out += wire.length_delimited_header(1, len(blob)) + blob
    return bytes(out)


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """The arrays of a serialized ``BlobProtoVector``."""
    vector = caffe_pb2.BlobProtoVector.FromString(data)
    return [blobproto_to_array(blob) for blob in vector.blobs]


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

#: scikit-image's ``rgb2gray`` weights (ITU-R BT.709), which pycaffe's ``load_image`` applies.
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


def load_image(filename, color: bool = True) -> np.ndarray:
    """An image as float32 H x W x 3 (RGB, ``color=True``) or H x W x 1 in [0, 1].

    Like pycaffe (scikit-image's ``imread`` + ``img_as_float``): 8-bit values are divided by
    255, 16-bit by 65535; a grey image is repeated into three channels when ``color``; a
    fourth (alpha) channel is dropped; ``color=False`` makes colour images grey with
    scikit-image's weights ``0.2125 R + 0.7154 G + 0.0721 B``. Decoding is OpenCV's, so the
    formats are OpenCV's (no GIF), and EXIF orientation is ignored, as scikit-image does.
    """
    path = os.fspath(filename)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read the image ({err.strerror or err})") from None
    import cv2  # decoding needs OpenCV; importing it only here keeps `import torchcaffe` light
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if image is None:
        raise ImageReadError(f"{path}: not an image OpenCV can decode")
    image = _as_float(image)
    if image.ndim == 3:
        image = image[:, :, :3][:, :, ::-1] if image.shape[2] >= 3 else image[:, :, :1]  # BGR(A) -> RGB
    if not color and image.ndim == 3 and image.shape[2] == 3:
        image = image @ _GRAY_WEIGHTS
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if color and image.shape[2] == 1:
        image = np.tile(image, (1, 1, 3))
    return np.ascontiguousarray(image, dtype=np.float32)


def _as_float(image: np.ndarray) -> np.ndarray:
    """scikit-image's ``img_as_float``: unsigned integers scaled to [0, 1], floats kept."""
    if image.dtype.kind == "u":
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    if image.dtype.kind == "b":
        return image.astype(np.float64)
    return image.astype(np.float64, copy=False)


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K image to ``new_dims`` (height, width); float32.

    pycaffe's rules: with 1 or 3 channels the image is scaled to [0, 1], resized the way
    scikit-image's ``resize(order, mode='constant')`` does — pixel centres aligned, samples
    outside the image read 0 (the image's minimum once scaled back), the result clipped to the
    input's range — and scaled back; a constant image stays constant. Other channel counts are
    resized the way ``scipy.ndimage.zoom`` does, corners aligned. ``interp_order`` 0 (nearest)
    and 1 (bilinear) are supported; scikit-image's anti-aliasing (newer versions blur before
    shrinking) is not applied, matching the scikit-image pycaffe was written against.
    """
    im = np.asarray(im)
    if interp_order not in (0, 1):
        raise IoValueError(f"resize_image: interp_order must be 0 (nearest) or 1 (bilinear), got {interp_order}")
    new_dims = tuple(int(d) for d in new_dims)
    if len(new_dims) != 2 or min(new_dims) < 1:
        raise IoValueError(f"resize_image: new_dims must be (height, width), positive, got {new_dims}")
    if im.ndim not in (2, 3):
        raise IoValueError(f"resize_image needs an H x W or H x W x K image, got shape {im.shape}")
    if im.shape[-1] in (1, 3):
        low, high = float(im.min()), float(im.max())
        if high <= low:
            return np.full(new_dims + im.shape[2:], low, dtype=np.float32)
        unit = (im.astype(np.float64) - low) / (high - low)
        resized = _resample(unit, new_dims, interp_order, align_corners=False)
        return (np.clip(resized, 0.0, 1.0) * (high - low) + low).astype(np.float32)
    return _resample(im.astype(np.float64), new_dims, interp_order, align_corners=True).astype(np.float32)


def _resample(image: np.ndarray, new_dims: tuple[int, int], order: int, align_corners: bool) -> np.ndarray:
    """Separable resampling of the first two axes."""
    for axis, size in enumerate(new_dims):
        image = _resample_axis(image, axis, size, order, align_corners)
    return image


def _resample_axis(image: np.ndarray, axis: int, size: int, order: int, align_corners: bool) -> np.ndarray:
    """Resample one axis to ``size`` samples.

    ``align_corners=False`` (scikit-image): output sample ``o`` reads input position
    ``(o + 0.5) * n / size - 0.5``, and neighbours outside the image count as 0.
    ``align_corners=True`` (scipy's zoom): position ``o * (n - 1) / (size - 1)``.
    """
    n = image.shape[axis]
    out = np.arange(size, dtype=np.float64)
    if align_corners:
        pos = out * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
    else:
        pos = (out + 0.5) * (n / size) - 0.5
    moved = np.moveaxis(image, axis, 0)
    padded = np.concatenate([np.zeros_like(moved[:1]), moved, np.zeros_like(moved[:1])])  # index i -> i + 1
    if order == 0:
        index = np.clip(np.floor(pos + 0.5).astype(np.int64), -1, n) + 1
        return np.moveaxis(padded[index], 0, axis)
    low = np.floor(pos).astype(np.int64)
    frac = (pos - low).reshape((-1,) + (1,) * (moved.ndim - 1))
    low = np.clip(low, -1, n)
    high = np.clip(low + 1, -1, n)
    result = (1.0 - frac) * padded[low + 1] + frac * padded[high + 1]
    return np.moveaxis(result, 0, axis)


def oversample(images, crop_dims) -> np.ndarray:
    """pycaffe's 10-crop oversampling: for each H x W x K image, the four corner crops and the
    centre crop of ``crop_dims`` (height, width), then the same five mirrored left-right;
    returns float32 ``(10 * len(images), crop_h, crop_w, K)``."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise IoValueError("oversample needs at least one image")
    im_shape = np.array(images[0].shape)
    crop_dims = np.array([int(d) for d in crop_dims])
    if crop_dims.size != 2 or (crop_dims > im_shape[:2]).any():
        raise IoValueError(f"oversample: crop_dims {tuple(crop_dims)} must be (height, width) no larger "
                           f"than the images' {tuple(im_shape[:2])}")
    corners = [(i, j) for i in (0, im_shape[0] - crop_dims[0]) for j in (0, im_shape[1] - crop_dims[1])]
    centre = np.trunc(im_shape[:2] / 2.0 - crop_dims / 2.0).astype(int)  # pycaffe truncates
    starts = corners + [tuple(centre)]
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    index = 0
    for im in images:
        for i, j in starts:
            crops[index] = im[i:i + crop_dims[0], j:j + crop_dims[1], :]
            index += 1
        crops[index:index + 5] = crops[index - 5:index, :, ::-1, :]
        index += 5
    return crops


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------

class Transformer:
    """pycaffe's ``Transformer({input name: blob shape})``: turn H x W x K images into the
    net's C x H x W input and back.

    ``preprocess`` applies, in pycaffe's order: convert to float32, resize to the input's
    height and width, ``set_transpose`` (e.g. ``(2, 0, 1)``), ``set_channel_swap`` (e.g.
    ``(2, 1, 0)``: RGB to BGR), ``set_raw_scale`` (e.g. 255), subtract ``set_mean``, multiply
    by ``set_input_scale``. ``deprocess`` undoes them in reverse (without resizing). Unlike
    pycaffe, ``preprocess`` never writes into the array it is given.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in dict(inputs).items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check_input(self, in_) -> None:
        if in_ not in self.inputs:
            raise IoValueError(f"{in_!r} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_, data) -> np.ndarray:
        """Format ``data`` (H x W x K) for input ``in_`` (see the class docstring)."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        transpose = self.transpose.get(in_)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        caffe_in = np.array(caffe_in, dtype=np.float32)  # a fresh array to scale in place
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            caffe_in *= raw_scale
        mean = self.mean.get(in_)
        if mean is not None:
            caffe_in -= mean
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data) -> np.ndarray:
        """Invert :meth:`preprocess` for one C x H x W array (a leading axis of 1 is squeezed)."""
        self._check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        mean = self.mean.get(in_)
        if mean is not None:
            decaf_in += mean
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            decaf_in /= raw_scale
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order) -> None:
        """The axis order taking an H x W x K image to the input's layout, e.g. ``(2, 0, 1)``."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise IoValueError(f"transpose order {tuple(order)} needs {len(self.inputs[in_]) - 1} axes, as "
                               f"input {in_!r} of shape {self.inputs[in_]} has after its batch axis")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order) -> None:
        """The channel order taken after transposing, e.g. ``(2, 1, 0)`` for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise IoValueError(f"channel swap {tuple(order)} must list the {self.inputs[in_][1]} channels of "
                               f"input {in_!r}")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale) -> None:
        """Multiply by ``scale`` after the channel swap (e.g. 255: [0, 1] images to [0, 255])."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean) -> None:
        """Subtract ``mean``: one value per channel (shape (C,)), or an image of the input's
        C x H x W (or H x W) shape."""
        self._check_input(in_)
        mean = np.asarray(mean)
        shape = mean.shape
        if mean.ndim == 1:
            if shape[0] != self.inputs[in_][1]:
                raise IoValueError(f"mean has {shape[0]} channels, input {in_!r} has {self.inputs[in_][1]}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3:
                raise IoValueError(f"mean must be (C,), (H, W) or (C, H, W), got shape {mean.shape}")
            if shape != self.inputs[in_][1:]:
                raise IoValueError(f"mean shape {mean.shape} is incompatible with input {in_!r} of shape "
                                   f"{self.inputs[in_]}")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale) -> None:
        """Multiply by ``scale`` after subtracting the mean (the last step)."""
        self._check_input(in_)
        self.input_scale[in_] = scale
