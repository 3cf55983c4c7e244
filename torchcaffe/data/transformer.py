"""Caffe's ``DataTransformer``: the ``transform_param`` every data layer applies to its images.

For one image of shape (C, H, W) (a Datum's pixels, or a decoded image in Caffe's blob layout),
in Caffe's order (``data_transformer.cpp``):

1. ``mirror``: a fair coin is drawn (only when ``mirror: true``) — in **both** phases;
2. ``crop_size`` (or SSD's ``crop_h``/``crop_w``): the offsets are drawn uniformly in TRAIN
   (``h_off`` first, then ``w_off``, each in ``[0, H - crop]``), centred in TEST
   (``(H - crop) / 2`` rounded down);
3. each output pixel is ``(pixel - mean) * scale`` in float32, where ``mean`` is the
   ``mean_file`` value at the pixel's position in the **uncropped** image (the mean image has the
   input's size, not the crop's), or ``mean_value[c]`` (one value for every channel, or one per
   channel), or 0; the pixel is written at the cropped position, flipped left-right when the
   coin said so.

``mean_file`` and ``mean_value`` exclude each other. ``force_color``/``force_gray`` choose how
encoded images are decoded (3-channel BGR or 1-channel grey; the default keeps the file's own)
and may not both be set; they do nothing to raw Datums. Shapes (``InferBlobShape``): the crop
size when cropping, else the input's; a crop larger than the input is an error.

SSD's fork adds ``resize_param`` (the image is resized before the crop, with an interpolation
drawn among ``interp_mode``) and ``crop_h``/``crop_w``; they are applied here when set.
``noise_param`` is refused (not implemented).

Randomness comes from the ``numpy.random.Generator`` the layer gives (seeded from torch's RNG,
so ``torch.manual_seed`` / the solver's ``random_seed`` make runs repeat); the draws follow
Caffe's order and ranges, not its Boost mt19937 stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import CaffeError
from ..proto import caffe_pb2
from .errors import DataError
from .image import INTERPOLATIONS, resize_image, to_chw, to_hwc

TRAIN = caffe_pb2.TRAIN
Resize = caffe_pb2.ResizeParameter
F32 = np.float32


@dataclass(frozen=True)
class Placement:
    """Where the output window lies in the (resized) input: its offsets and size, the input's
    size, and whether it is flipped."""

    h_off: int
    w_off: int
    height: int
    width: int
    source_height: int
    source_width: int
    mirror: bool

    @property
    def crop_box(self) -> tuple[float, float, float, float]:
        """The window in the input's normalized coordinates (xmin, ymin, xmax, ymax), float32
        as SSD computes its ``crop_bbox``."""
        sw, sh = F32(self.source_width), F32(self.source_height)
        return (F32(self.w_off) / sw, F32(self.h_off) / sh,
                F32(self.w_off + self.width) / sw, F32(self.h_off + self.height) / sh)


class DataTransformer:
    """``transform_param`` for one layer: ``transform(image) -> float32 (C, h, w)``."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int, rng: np.random.Generator,
                 where: str = "transform_param"):
        self.param = param
        self.phase = phase
        self.rng = rng
        self.where = where
        if param.HasField("mean_file") and len(param.mean_value):
            raise DataError(f"{where}: give mean_file or mean_value, not both (Caffe refuses both)")
        if param.force_color and param.force_gray:
            raise DataError(f"{where}: force_color and force_gray cannot both be set")
        if param.HasField("noise_param"):
            raise DataError(f"{where}: SSD's noise_param is not supported; remove it")
        self.scale = F32(param.scale)
        self.crop_h, self.crop_w = _crop_size(param)
        self.mean = _read_mean_file(param.mean_file, where) if param.HasField("mean_file") else None
        self.mean_values = np.asarray(param.mean_value, dtype=F32) if len(param.mean_value) else None
        self.resize = param.resize_param if param.HasField("resize_param") else None
        if self.resize is not None and (self.resize.height <= 0 or self.resize.width <= 0):
            raise DataError(f"{where}: resize_param needs a positive height and width, got "
                            f"{self.resize.height} x {self.resize.width}")

    @property
    def decode_color(self) -> bool | None:
        """How to decode encoded images: colour (True), grey (False) or as stored (None)."""
        if self.param.force_color:
            return True
        return False if self.param.force_gray else None

    def output_shape(self, shape) -> tuple[int, int, int]:
        """Caffe's ``InferBlobShape``: the (C, h, w) an input of ``shape`` (C, H, W) becomes."""
        channels, height, width = (int(d) for d in shape)
        if self.resize is not None:
            height, width = self.resize.height, self.resize.width
        if height < self.crop_h or width < self.crop_w:
            raise DataError(f"{self.where}: crop {self.crop_h} x {self.crop_w} is larger than the "
                            f"{height} x {width} image")
        return channels, self.crop_h or height, self.crop_w or width

    def transform(self, image: np.ndarray) -> np.ndarray:
        """The transformed image (mirror coin, resize, crop offsets drawn now)."""
        return self.transform_placed(image)[0]

    def transform_placed(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        """:meth:`transform` and where the output window lies (SSD's ``crop_bbox``, mirror)."""
        mirror = bool(self.param.mirror and self.rng.integers(2))
        if self.resize is not None:
            image = apply_resize(image, self.resize, self.rng, self.where)
        placement = self.place(image.shape[1], image.shape[2], mirror)
        return self.apply(image, placement), placement

    def place(self, height: int, width: int, mirror: bool) -> Placement:
        """The crop window for an input of ``height`` x ``width``: drawn in TRAIN, centred in TEST."""
        crop_h, crop_w = self.crop_h, self.crop_w
        if height < crop_h or width < crop_w:
            raise DataError(f"{self.where}: crop {crop_h} x {crop_w} is larger than the "
                            f"{height} x {width} image")
        h_off = w_off = 0
        if crop_h and crop_w:
            if self.phase == TRAIN:
                h_off = int(self.rng.integers(height - crop_h + 1))
                w_off = int(self.rng.integers(width - crop_w + 1))
            else:
                h_off, w_off = (height - crop_h) // 2, (width - crop_w) // 2
        return Placement(h_off, w_off, crop_h or height, crop_w or width, height, width, mirror)

    def apply(self, image: np.ndarray, placement: Placement) -> np.ndarray:
        """``(pixel - mean) * scale`` over the window, flipped if ``placement.mirror``."""
        rows = slice(placement.h_off, placement.h_off + placement.height)
        cols = slice(placement.w_off, placement.w_off + placement.width)
        window = image[:, rows, cols]
        mean = self._mean_for(image)
        if mean is None:
            out = window.astype(F32)
        else:
            if self.mean is not None:  # the mean image is indexed at the uncropped position
                mean = mean[:, rows, cols]
            out = np.subtract(window, mean, dtype=F32)
        if placement.mirror:
            out = out[:, :, ::-1]
        out = np.multiply(out, self.scale, dtype=F32)
        return np.ascontiguousarray(out)

    def _mean_for(self, image: np.ndarray) -> np.ndarray | None:
        channels = image.shape[0]
        if self.mean is not None:
            if self.mean.shape != image.shape:
                raise DataError(f"{self.where}: the mean file {self.param.mean_file!r} holds a "
                                f"{_shape_text(self.mean.shape)} mean but the image is "
                                f"{_shape_text(image.shape)} (Caffe needs them equal)")
            return self.mean
        if self.mean_values is not None:
            if len(self.mean_values) not in (1, channels):
                raise DataError(f"{self.where}: give 1 mean_value or one per channel ({channels}), "
                                f"got {len(self.mean_values)}")
            return np.broadcast_to(self.mean_values, (channels,)).reshape(channels, 1, 1)
        return None


def _crop_size(param: caffe_pb2.TransformationParameter) -> tuple[int, int]:
    if param.crop_size:
        return int(param.crop_size), int(param.crop_size)
    if param.crop_h and param.crop_w:
        return int(param.crop_h), int(param.crop_w)
    return 0, 0


def _read_mean_file(path: str, where: str) -> np.ndarray:
    """The mean image as (C, H, W) float32 (a stored 1 x C x H x W blob loses its first axis)."""
    from ..io.binaryproto import read_blobproto

    try:
        mean = np.asarray(read_blobproto(path), dtype=F32)
    except CaffeError as err:
        raise DataError(f"{where}: cannot read mean_file: {err}") from None
    while mean.ndim > 3 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise DataError(f"{where}: the mean file {path!r} holds a blob of shape {mean.shape}; "
                        f"a mean image is 1 x channels x height x width")
    return np.ascontiguousarray(mean)


def _shape_text(shape) -> str:
    return " x ".join(str(d) for d in shape)


# -- SSD's resize (im_transforms.cpp: ApplyResize) ------------------------------------------------

def apply_resize(image: np.ndarray, param: caffe_pb2.ResizeParameter, rng: np.random.Generator,
                 where: str = "resize_param") -> np.ndarray:
    """SSD's ``ApplyResize`` on a (C, H, W) image: WARP to height x width, FIT_SMALL_SIZE (the
    shorter side to the target, aspect kept) or FIT_LARGE_SIZE_AND_PAD (the longer side, then
    padded); the interpolation is drawn uniformly among ``interp_mode`` (default bilinear)."""
    modes = [Resize.Interp_mode.Name(m) for m in param.interp_mode]
    interpolation = INTERPOLATIONS[modes[int(rng.integers(len(modes)))]] if modes else cv2.INTER_LINEAR
    hwc = to_hwc(image)
    height, width = hwc.shape[:2]
    new_h, new_w = int(param.height), int(param.width)
    if param.resize_mode == Resize.WARP:
        out = resize_image(hwc, new_h, new_w, interpolation)
    elif param.resize_mode == Resize.FIT_SMALL_SIZE:
        out = _resize_keeping_aspect(hwc, new_h, new_w, interpolation, by_small=True)
    elif param.resize_mode == Resize.FIT_LARGE_SIZE_AND_PAD:
        out = _resize_and_pad(hwc, new_h, new_w, interpolation, param, where)
    else:  # pragma: no cover - the enum has no other value
        raise DataError(f"{where}: unknown resize_mode {param.resize_mode}")
    return to_chw(out)


def _resize_keeping_aspect(image, new_h, new_w, interpolation, by_small: bool):
    """The fork's ``AspectKeepingResizeBySmall`` / the resize of ``...AndPad`` (by large)."""
    aspect = F32(image.shape[1]) / F32(image.shape[0])
    target = F32(new_w) / F32(new_h)
    if (aspect < target) if by_small else (aspect > target):
        return resize_image(image, int(np.floor(F32(new_w) / aspect)), new_w, interpolation)
    return resize_image(image, new_h, int(np.floor(aspect * F32(new_h))), interpolation)


def _resize_and_pad(image, new_h, new_w, interpolation, param, where):
    resized = _resize_keeping_aspect(image, new_h, new_w, interpolation, by_small=False)
    pad_mode = {Resize.CONSTANT: cv2.BORDER_CONSTANT, Resize.MIRRORED: cv2.BORDER_REFLECT_101,
                Resize.REPEAT_NEAREST: cv2.BORDER_REPLICATE}[param.pad_mode]
    channels = image.shape[2]
    values = list(param.pad_value) or [0.0]
    if len(values) not in (1, channels):
        raise DataError(f"{where}: give 1 pad_value or one per channel ({channels}), got {len(values)}")
    values = (values * channels)[:channels] if len(values) == 1 else values
    top = (new_h - resized.shape[0]) // 2
    left = (new_w - resized.shape[1]) // 2
    out = cv2.copyMakeBorder(resized, top, new_h - resized.shape[0] - top, left,
                             new_w - resized.shape[1] - left, pad_mode, value=values + [0] * (4 - channels))
    return out[:, :, None] if out.ndim == 2 else out
