"""Loaders of the forks' image + label-image layers: an image and a per-pixel label map, cropped
and flipped together.

* SegNet's ``DenseImageData`` (alexgkendall/caffe-segnet): pairs ``<image> <label image>``;
  labels read in grey and, with ``new_height``/``new_width``, resized with nearest-neighbour
  interpolation. The image goes through ``transform_param`` (mean, scale); the label keeps its
  values. SegNet refuses ``mirror`` and ``crop_size`` ("any stochastic transformation will break
  layer"); here they are allowed and applied to both with one draw.
* HED's ``ImageLabelmapData`` (s9xie/hed): pairs ``<image> <edge map>``; the edge map is read in
  grey, resized bilinearly, and divided by 255 with OpenCV's rounding, so labels are 0 or 1
  (pixels >= 128 become 1: HED's "consensus sampling" of the BSDS maps). Its crop is random
  in both phases (HED's ``LocTransform`` ignores the phase), the mirror coin too.
* DeepLab's ``ImageSegData`` (deeplab-public-ver2): per line an image and, by
  ``label_type``, a label image (PIXEL), one class for the whole image (IMAGE) or none (NONE:
  every pixel ``ignore_label``; DeepLab v1's ``has_label: false`` means NONE). Both are resized
  bilinearly to ``new_height``/``new_width`` when set. DeepLab's ``TransformImgAndSeg``: a
  mirror coin; a factor drawn from ``scale_factors`` rescales the image (bilinear) and label
  (nearest); an image smaller than the crop is padded at the bottom and right with the mean
  values (the label with ``ignore_label``); the crop (``crop_size``, or ``crop_height`` and
  ``crop_width``) is random in TRAIN, centred in TEST; the image becomes
  ``(pixel - mean_value) * scale``. ``mean_file`` is refused, as DeepLab does. An optional
  third top ``data_dim`` (N, 1, 1, 2) holds each image's (height, width), at most the top's.

Tops: data (N, C, h, w), label (N, 1, h, w) as floats.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..proto import caffe_pb2
from .errors import DataError
from .image import resize_image, to_chw, to_hwc
from .loaders import BatchBuilder, ListOrder, read_listed_image
from .transformer import DataTransformer

F32 = np.float32
LabelType = caffe_pb2.ImageDataParameter


def _same_size(image: np.ndarray, label: np.ndarray, where: str) -> None:
    if image.shape[1:] != label.shape[1:]:
        raise DataError(f"{where}: the image is {image.shape[1]} x {image.shape[2]} but its label "
                        f"image is {label.shape[1]} x {label.shape[2]}; they must match")


class PairedBatches:
    """Image and label image through one crop and mirror (SegNet's and HED's layers).

    ``label_map(label)`` turns the read label (C=1, uint8) into label values (HED: /255).
    """

    def __init__(self, order: ListOrder, root_folder: str, batch_size: int, new_size: tuple[int, int],
                 is_color: bool, transformer: DataTransformer, label_interpolation: int, label_map):
        self.order = order
        self.root = root_folder
        self.batch_size = batch_size
        self.size = new_size
        self.is_color = is_color
        self.transformer = transformer
        self.label_interpolation = label_interpolation
        self.label_map = label_map
        image, label = self._read(order.peek())
        channels, height, width = transformer.output_shape(image.shape)
        self.shapes = [(batch_size, channels, height, width), (batch_size, 1, height, width)]

    def _read(self, entry) -> tuple[np.ndarray, np.ndarray]:
        image_name, label_name = entry
        source = self.order.source
        image = read_listed_image(self.root, image_name, source, self.size, self.is_color)
        label = read_listed_image(self.root, label_name, source, self.size, False, self.label_interpolation)
        _same_size(image, label, f"{source}: {image_name!r}")
        return image, self.label_map(label)

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        data, labels = BatchBuilder(self.batch_size), BatchBuilder(self.batch_size)
        for i in range(self.batch_size):
            entry = self.order.next()
            where = f"{self.order.source}: {entry[0]!r}"
            image, label = self._read(entry)
            transformer = self.transformer
            mirror = bool(transformer.param.mirror and transformer.rng.integers(2))
            try:
                placement = transformer.place(image.shape[1], image.shape[2], mirror)
            except DataError as err:
                raise DataError(f"{where}: {err}") from None
            data.put(i, transformer.apply(image, placement), where)
            rows = slice(placement.h_off, placement.h_off + placement.height)
            cols = slice(placement.w_off, placement.w_off + placement.width)
            window = label[:, rows, cols]
            labels.put(i, (window[:, :, ::-1] if mirror else window).astype(F32), where)
        return data.data, labels.data


def hed_edge_labels(label: np.ndarray) -> np.ndarray:
    """HED's ``cv_gt / 255`` on uint8: rounded to the nearest integer, so 0 or 1."""
    return np.rint(label.astype(F32) * F32(1 / 255)).astype(np.uint8)


def keep_labels(label: np.ndarray) -> np.ndarray:
    return label


# -- DeepLab ----------------------------------------------------------------------------------

class SegmentationBatches:
    """DeepLab v2's ImageSegData loader (see the module docstring)."""

    def __init__(self, order: ListOrder, param: caffe_pb2.ImageDataParameter,
                 transform: caffe_pb2.TransformationParameter, phase: int, label_type: int,
                 rng: np.random.Generator, num_tops: int):
        if transform.HasField("mean_file"):
            raise DataError("ImageSegData does not support mean_file (DeepLab refuses it); use mean_value")
        if transform.HasField("crop_size") and (transform.HasField("crop_height") or transform.HasField("crop_width")):
            raise DataError("give either crop_size or both crop_height and crop_width, not both")
        if transform.HasField("crop_height") != transform.HasField("crop_width"):
            raise DataError("crop_height and crop_width must be given together")
        from .loaders import check_new_size

        self.order = order
        self.root = param.root_folder
        self.batch_size = int(param.batch_size)
        self.size = check_new_size(param.new_height, param.new_width)
        self.is_color = param.is_color
        self.label_type = label_type
        self.ignore_label = int(param.ignore_label)
        self.transform = transform
        self.phase = phase
        self.rng = rng
        self.num_tops = num_tops
        self.crop = (int(transform.crop_size),) * 2 if transform.crop_size else \
            (int(transform.crop_height), int(transform.crop_width))
        self.mean_values = np.asarray(transform.mean_value, dtype=F32)
        self.scale = F32(transform.scale)
        image, _ = self._read(order.peek())
        channels = image.shape[0]
        if len(self.mean_values) not in (0, 1, channels):
            raise DataError(f"give 1 mean_value or one per channel ({channels}), got {len(self.mean_values)}")
        height, width = (self.crop if all(self.crop) else image.shape[1:])
        self.top_size = (height, width)
        self.shapes = [(self.batch_size, channels, height, width), (self.batch_size, 1, height, width),
                       (self.batch_size, 1, 1, 2)][:num_tops]

    def _read(self, entry) -> tuple[np.ndarray, np.ndarray]:
        image_name, label_name = entry
        source = self.order.source
        image = read_listed_image(self.root, image_name, source, self.size, self.is_color)
        if self.label_type == LabelType.PIXEL:
            label = read_listed_image(self.root, label_name, source, self.size, False)
            _same_size(image, label, f"{source}: {image_name!r}")
        else:
            value = self.ignore_label
            if self.label_type == LabelType.IMAGE:
                try:
                    value = int(label_name)
                except ValueError:
                    raise DataError(f"{source}: {image_name!r}: the image label {label_name!r} is "
                                    f"not an integer (label_type IMAGE)") from None
            label = np.full((1,) + image.shape[1:], np.clip(value, 0, 255), dtype=np.uint8)
        return image, label

    def __call__(self) -> tuple[np.ndarray, ...]:
        data, labels = BatchBuilder(self.batch_size), BatchBuilder(self.batch_size)
        dims = np.empty((self.batch_size, 1, 1, 2), dtype=F32)
        for i in range(self.batch_size):
            entry = self.order.next()
            where = f"{self.order.source}: {entry[0]!r}"
            image, label = self._read(entry)
            dims[i, 0, 0] = [min(self.top_size[0], image.shape[1]), min(self.top_size[1], image.shape[2])]
            out_image, out_label = self._transform(image, label, where)
            data.put(i, out_image, where)
            labels.put(i, out_label, where)
        return (data.data, labels.data, dims)[:self.num_tops]

    def _transform(self, image: np.ndarray, label: np.ndarray, where: str):
        """DeepLab's ``TransformImgAndSeg``."""
        mirror = bool(self.transform.mirror and self.rng.integers(2))
        factors = list(self.transform.scale_factors)
        if factors:
            factor = F32(factors[int(self.rng.integers(len(factors)))])
            if factor != 1:
                height, width = int(image.shape[1] * factor), int(image.shape[2] * factor)
                image = to_chw(resize_image(to_hwc(image), height, width, cv2.INTER_LINEAR))
                label = to_chw(resize_image(to_hwc(label), height, width, cv2.INTER_NEAREST))
        image = image.astype(F32)
        crop_h, crop_w = self.crop
        pad_h, pad_w = max(crop_h - image.shape[1], 0), max(crop_w - image.shape[2], 0)
        if pad_h or pad_w:
            fill = np.resize(self.mean_values if len(self.mean_values) else np.zeros(1, F32), image.shape[0])
            image = np.stack([np.pad(channel, ((0, pad_h), (0, pad_w)), constant_values=value)
                              for channel, value in zip(image, fill)])
            label = np.pad(label, ((0, 0), (0, pad_h), (0, pad_w)),
                           constant_values=int(np.clip(self.ignore_label, 0, 255)))
        h_off = w_off = 0
        if crop_h and crop_w:
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(self.rng.integers(image.shape[1] - crop_h + 1))
                w_off = int(self.rng.integers(image.shape[2] - crop_w + 1))
            else:
                h_off, w_off = (image.shape[1] - crop_h) // 2, (image.shape[2] - crop_w) // 2
            image = image[:, h_off:h_off + crop_h, w_off:w_off + crop_w]
            label = label[:, h_off:h_off + crop_h, w_off:w_off + crop_w]
        if image.shape[1:] != self.top_size:
            raise DataError(f"{where}: the image is {image.shape[1]} x {image.shape[2]} but the "
                            f"batch is {self.top_size[0]} x {self.top_size[1]} (set a crop, or make "
                            f"the images one size)")
        if len(self.mean_values):
            image = image - np.resize(self.mean_values, image.shape[0]).reshape(-1, 1, 1)
        image = (image * self.scale).astype(F32)
        if mirror:
            image, label = image[:, :, ::-1], label[:, :, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label, dtype=F32)
