"""SSD's ``AnnotatedData`` layer (weiliu89/caffe, branch ``ssd``): images with boxes, augmented.

Records are ``AnnotatedDatum`` messages: a Datum (usually an encoded JPEG) and groups of boxes
(``group_label`` = the class; each annotation an ``instance_id`` and a ``NormalizedBBox`` in
[0, 1] image coordinates with a ``difficult`` flag). Per image, in the fork's order
(``annotated_data_layer.cpp``, ``data_transformer.cpp``, ``im_transforms.cpp``, ``sampler.cpp``):

1. ``distort_param``: photometric distortion (``ApplyDistort``): a coin chooses the order
   brightness, contrast, saturation, hue, channel order — or brightness, saturation, hue,
   contrast, channel order; each is applied with its own probability and a uniform delta.
2. ``expand_param``: with probability ``prob``, zoom out: the image is pasted at a random
   place of a canvas ``ratio`` times larger (``ratio`` uniform in [1, max_expand_ratio]),
   filled with the mean values; the boxes follow.
3. ``batch_sampler``s: each sampler draws up to ``max_trials`` boxes of random scale and aspect
   ratio, keeping those that meet its ``sample_constraint`` (Jaccard overlap / coverage with
   some ground-truth box), at most ``max_sample``; one kept box, chosen uniformly, crops the
   image; the boxes are projected into it (``emit_constraint`` decides which survive).
4. the transformer: resize (``resize_param``, boxes updated by the resize policy), crop,
   mirror (boxes flipped), mean and scale — see :mod:`.transformer`; the boxes are projected into
   the crop window and those failing the emit constraint are dropped.

Tops: data (N, C, h, w), and label (1, 1, num_boxes, 8) with rows
``[item, group_label, instance_id, xmin, ymin, xmax, ymax, difficult]`` for every kept box of
the batch (one row of -1 when none is left). Without an annotation type (neither in the
records nor ``anno_type``) the label is the Datums' label, shaped (N, 1, 1, 1). The label map
file is not read by the layer (the fork only keeps its name); :func:`read_label_map` reads one.

Differs from the fork: the fork re-encodes the image as JPEG after distortion, expansion and
cropping (lossy); here the decoded pixels are kept. The fork's raw-Datum expansion fills the
canvas with the byte 32 (``' '``); here it is always the mean values. Random draws follow the
fork's order and ranges, from the layer's own generator.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..layers.detection import box_sizes, jaccard
from ..proto import caffe_pb2
from .datum import datum_image, parse_annotated_datum
from .db import RecordCycle
from .errors import DataError
from .image import to_chw, to_hwc
from .loaders import BatchBuilder
from .transformer import DataTransformer, Placement

F32 = np.float32
Resize = caffe_pb2.ResizeParameter
Emit = caffe_pb2.EmitConstraint
BBOX = caffe_pb2.AnnotatedDatum.BBOX
UNIT = np.array([0, 0, 1, 1], dtype=F32)


# -- boxes (bbox_util.cpp): float32 arrays [xmin, ymin, xmax, ymax] ---------------------------------

def clip_box(box: np.ndarray) -> np.ndarray:
    """``ClipBBox``: every coordinate into [0, 1]."""
    return np.clip(box, F32(0), F32(1)).astype(F32)


def coverage(a: np.ndarray, b: np.ndarray) -> F32:
    """``BBoxCoverage``: the share of ``a``'s area that ``b`` covers."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return F32(0)
    inter = np.concatenate([np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])])
    inter_size = box_sizes(inter)
    return F32(inter_size / box_sizes(a)) if inter_size > 0 else F32(0)


def project_box(source: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """``ProjectBBox``: ``box`` in the coordinates of the window ``source``, clipped; None when
    they do not overlap or nothing is left."""
    if box[0] >= source[2] or box[2] <= source[0] or box[1] >= source[3] or box[3] <= source[1]:
        return None
    size = np.array([source[2] - source[0], source[3] - source[1]] * 2, dtype=F32)
    projected = clip_box(((box - np.tile(source[:2], 2)) / size).astype(F32))
    return projected if box_sizes(projected) > 0 else None


def meets_emit_constraint(source: np.ndarray, box: np.ndarray, emit: caffe_pb2.EmitConstraint) -> bool:
    """``MeetEmitConstraint``: CENTER — the box's centre lies in ``source``; MIN_OVERLAP — more
    than ``emit_overlap`` of the box lies in it."""
    if emit.emit_type == Emit.CENTER:
        cx, cy = (box[0] + box[2]) / F32(2), (box[1] + box[3]) / F32(2)
        return bool(source[0] <= cx <= source[2] and source[1] <= cy <= source[3])
    return bool(coverage(box, source) > F32(emit.emit_overlap))


# -- annotations ------------------------------------------------------------------------------

class Annotations:
    """The boxes of one image: ``groups`` = [(group_label, [(instance_id, box, difficult)])]."""

    def __init__(self, groups):
        self.groups = groups

    @classmethod
    def from_proto(cls, record: caffe_pb2.AnnotatedDatum) -> "Annotations":
        groups = []
        for group in record.annotation_group:
            boxes = [(a.instance_id, np.array([a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax], dtype=F32),
                      bool(a.bbox.difficult)) for a in group.annotation]
            groups.append((group.group_label, boxes))
        return cls(groups)

    def boxes(self) -> np.ndarray:
        """Every box, (num, 4)."""
        rows = [box for _, annotations in self.groups for _, box, _ in annotations]
        return np.array(rows, dtype=F32).reshape(-1, 4)

    def count(self) -> int:
        return sum(len(annotations) for _, annotations in self.groups)

    def transformed(self, window: np.ndarray, emit: caffe_pb2.EmitConstraint | None, mirror: bool = False,
                    update=None) -> "Annotations":
        """``TransformAnnotation``: each box (first passed through ``update``, the resize policy)
        checked against the emit constraint, projected into ``window``, flipped if ``mirror``;
        groups left empty are dropped."""
        groups = []
        for label, annotations in self.groups:
            kept = []
            for instance, box, difficult in annotations:
                box = update(box) if update is not None else box
                if emit is not None and not meets_emit_constraint(window, box, emit):
                    continue
                projected = project_box(window, box)
                if projected is None:
                    continue
                if mirror:
                    projected = np.array([F32(1) - projected[2], projected[1], F32(1) - projected[0], projected[3]],
                                         dtype=F32)
                kept.append((instance, projected, difficult))
            if kept:
                groups.append((label, kept))
        return Annotations(groups)

    def rows(self, item: int) -> list[list[float]]:
        """Label rows ``[item, group_label, instance_id, xmin, ymin, xmax, ymax, difficult]``."""
        return [[item, label, instance, *box.tolist(), float(difficult)]
                for label, annotations in self.groups for instance, box, difficult in annotations]


def read_label_map(path: str) -> caffe_pb2.LabelMap:
    """A ``LabelMap`` prototxt (``item { name label display_name }``)."""
    from ..errors import CaffeError
    from ..io.prototxt import parse_text

    try:
        with open(path, encoding="utf-8") as f:
            return parse_text(f.read(), caffe_pb2.LabelMap(), path)
    except OSError as err:
        raise DataError(f"cannot read the label map {path!r}: {err.strerror or err}") from None
    except CaffeError as err:
        raise DataError(str(err)) from None


# -- batch sampling (sampler.cpp) ---------------------------------------------------------------

def check_sampler(sampler: caffe_pb2.BatchSampler, index: int) -> None:
    """The fork's CHECKs on a sampler, at set-up."""
    s = sampler.sampler
    problems = []
    if not 0 < s.min_scale <= s.max_scale <= 1:
        problems.append(f"needs 0 < min_scale <= max_scale <= 1, got {s.min_scale} and {s.max_scale}")
    if not 0 < s.min_aspect_ratio <= s.max_aspect_ratio:
        problems.append(f"needs 0 < min_aspect_ratio <= max_aspect_ratio, got {s.min_aspect_ratio} "
                        f"and {s.max_aspect_ratio}")
    if problems:
        raise DataError(f"annotated_data_param.batch_sampler[{index}]: " + "; ".join(problems))


def _uniform(rng: np.random.Generator, low, high) -> F32:
    return F32(rng.uniform(float(low), float(high))) if high > low else F32(low)


def sample_box(sampler: caffe_pb2.Sampler, rng: np.random.Generator) -> np.ndarray:
    """``SampleBBox``: scale and aspect ratio drawn uniformly, the box placed uniformly."""
    scale = _uniform(rng, sampler.min_scale, sampler.max_scale)
    aspect = _uniform(rng, sampler.min_aspect_ratio, sampler.max_aspect_ratio)
    aspect = F32(min(max(aspect, F32(scale ** 2)), F32(1 / scale ** 2)))
    width = min(F32(scale * np.sqrt(aspect)), F32(1))
    height = min(F32(scale / np.sqrt(aspect)), F32(1))
    w_off = _uniform(rng, 0, F32(1) - width)
    h_off = _uniform(rng, 0, F32(1) - height)
    return np.array([w_off, h_off, w_off + width, h_off + height], dtype=F32)


def satisfies(sampled: np.ndarray, objects: np.ndarray, constraint: caffe_pb2.SampleConstraint) -> bool:
    """``SatisfySampleConstraint``: true without constraints, else when some object box meets
    every bound given (Jaccard overlap, share of the sample covered, share of the object covered)."""
    has = constraint.HasField
    checks = [(("min_jaccard_overlap", "max_jaccard_overlap"), lambda o: jaccard(sampled[None], o[None])[0, 0]),
              (("min_sample_coverage", "max_sample_coverage"), lambda o: coverage(sampled, o)),
              (("min_object_coverage", "max_object_coverage"), lambda o: coverage(o, sampled))]
    active = [(names, measure) for names, measure in checks if has(names[0]) or has(names[1])]
    if not active:
        return True
    for box in objects:
        if all(_within(measure(box), constraint, *names) for names, measure in active):
            return True
    return False


def _within(value, constraint, low_name: str, high_name: str) -> bool:
    if constraint.HasField(low_name) and value < F32(getattr(constraint, low_name)):
        return False
    return not (constraint.HasField(high_name) and value > F32(getattr(constraint, high_name)))


def generate_samples(objects: np.ndarray, samplers, rng: np.random.Generator) -> list[np.ndarray]:
    """``GenerateBatchSamples``: the boxes every sampler (with ``use_original_image``) keeps."""
    kept = []
    for sampler in samplers:
        if not sampler.use_original_image:
            continue
        found = 0
        for _ in range(sampler.max_trials):
            if sampler.HasField("max_sample") and found >= sampler.max_sample:
                break
            box = sample_box(sampler.sampler, rng)  # located in the unit box: unchanged
            if satisfies(box, objects, sampler.sample_constraint):
                found += 1
                kept.append(box)
    return kept


def crop_to_box(image: np.ndarray, box: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``CropImage``: the pixels of the clipped ``box`` (offsets and sizes truncated to
    integers) and the clipped box."""
    clipped = clip_box(box)
    height, width = image.shape[1:]
    scaled = clipped * np.array([width, height, width, height], dtype=F32)
    w_off, h_off = int(scaled[0]), int(scaled[1])
    crop_w, crop_h = int(scaled[2] - scaled[0]), int(scaled[3] - scaled[1])
    if crop_w <= 0 or crop_h <= 0:
        raise DataError(f"{where}: a sampled box covers no whole pixel of the {height} x {width} image")
    return np.ascontiguousarray(image[:, h_off:h_off + crop_h, w_off:w_off + crop_w]), clipped


# -- photometric distortion (ApplyDistort) ------------------------------------------------------

def _convert(channel: np.ndarray, alpha, beta) -> np.ndarray:
    """OpenCV's ``convertTo(-1, alpha, beta)`` on uint8: rounded, saturated."""
    return np.clip(np.rint(channel.astype(F32) * F32(alpha) + F32(beta)), 0, 255).astype(np.uint8)


def distort_image(image: np.ndarray, param: caffe_pb2.DistortionParameter, rng: np.random.Generator,
                  where: str) -> np.ndarray:
    """The fork's ``ApplyDistort`` on a (C, H, W) BGR uint8 image."""
    if image.shape[0] != 3 or image.dtype != np.uint8:
        raise DataError(f"{where}: distort_param needs 3-channel 8-bit colour images, got "
                        f"{image.dtype} with {image.shape[0]} channel(s)")
    hwc = to_hwc(image)
    steps = [_brightness, _contrast, _saturation, _hue] if rng.uniform() > 0.5 else \
        [_brightness, _saturation, _hue, _contrast]
    for step in steps:
        hwc = step(hwc, param, rng)
    if rng.uniform() < param.random_order_prob:
        hwc = np.ascontiguousarray(hwc[:, :, rng.permutation(3)])
    return to_chw(hwc)


def _drawn(rng, probability) -> bool:
    return bool(F32(rng.uniform()) < F32(probability))


def _brightness(hwc, param, rng):
    if not _drawn(rng, param.brightness_prob):
        return hwc
    delta = _uniform(rng, -param.brightness_delta, param.brightness_delta)
    return _convert(hwc, 1, delta) if abs(delta) > 0 else hwc


def _contrast(hwc, param, rng):
    if not _drawn(rng, param.contrast_prob):
        return hwc
    delta = _uniform(rng, param.contrast_lower, param.contrast_upper)
    return _convert(hwc, delta, 0) if abs(delta - 1) > 1e-3 else hwc


def _saturation(hwc, param, rng):
    if not _drawn(rng, param.saturation_prob):
        return hwc
    delta = _uniform(rng, param.saturation_lower, param.saturation_upper)
    hsv = cv2.cvtColor(hwc, cv2.COLOR_BGR2HSV)  # the fork converts whatever the delta
    hsv[:, :, 1] = _convert(hsv[:, :, 1], delta, 0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _hue(hwc, param, rng):
    if not _drawn(rng, param.hue_prob):
        return hwc
    delta = _uniform(rng, -param.hue_delta, param.hue_delta)
    if abs(delta) == 0:
        return hwc
    hsv = cv2.cvtColor(hwc, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = _convert(hsv[:, :, 0], 1, delta)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


# -- zoom out (ExpandImage) ---------------------------------------------------------------------

def expand_image(image: np.ndarray, param: caffe_pb2.ExpansionParameter, fill: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """The fork's ``ExpandImage``: None when the coin says no (``prob``) or the ratio range is
    empty; else the image pasted into a canvas ``ratio`` times larger filled with ``fill`` (one
    value per channel), and where the original lies in the canvas' terms (``expand_bbox``)."""
    if F32(rng.uniform()) > F32(param.prob) or abs(param.max_expand_ratio - 1.0) < 1e-2:
        return None
    ratio = _uniform(rng, 1, param.max_expand_ratio)
    channels, height, width = image.shape
    new_h, new_w = int(height * ratio), int(width * ratio)
    h_off = F32(np.floor(_uniform(rng, 0, new_h - height)))
    w_off = F32(np.floor(_uniform(rng, 0, new_w - width)))
    canvas = np.empty((channels, new_h, new_w), dtype=image.dtype)
    canvas[...] = fill.reshape(-1, 1, 1).astype(image.dtype)
    canvas[:, int(h_off):int(h_off) + height, int(w_off):int(w_off) + width] = image
    box = np.array([-w_off / F32(width), -h_off / F32(height), (F32(new_w) - w_off) / F32(width),
                    (F32(new_h) - h_off) / F32(height)], dtype=F32)
    return canvas, box


# -- the resize policy on boxes (UpdateBBoxByResizePolicy, ExtrapolateBBox) -----------------------

def resize_box(box: np.ndarray, param: caffe_pb2.ResizeParameter, old_w: int, old_h: int) -> np.ndarray:
    """``UpdateBBoxByResizePolicy``: a box of an ``old_w`` x ``old_h`` image in the coordinates
    of the resized image (WARP: clipped; FIT_SMALL_SIZE: aspect kept; FIT_LARGE_SIZE_AND_PAD:
    shifted by the padding — with the fork's misplaced parenthesis when the image is taller
    than the target)."""
    new_h, new_w = F32(param.height), F32(param.width)
    aspect, target = F32(old_w) / F32(old_h), new_w / new_h
    x0, y0, x1, y1 = box * np.array([old_w, old_h, old_w, old_h], dtype=F32)
    zero = F32(0)
    if param.resize_mode == Resize.FIT_LARGE_SIZE_AND_PAD:
        if aspect > target:
            pad = (new_h - new_w / aspect) / F32(2)
            x0, x1 = max(zero, x0 * new_w / F32(old_w)), min(new_w, x1 * new_w / F32(old_w))
            y0 = pad + max(zero, y0 * (new_h - F32(2) * pad) / F32(old_h))
            y1 = pad + min(new_h, y1 * (new_h - F32(2) * pad) / F32(old_h))
        else:
            pad = new_w - aspect * new_h / F32(2)  # sic: the fork's formula
            x0 = pad + max(zero, x0 * (new_w - F32(2) * pad) / F32(old_w))
            x1 = pad + min(new_w, x1 * (new_w - F32(2) * pad) / F32(old_w))
            y0, y1 = max(zero, y0 * new_h / F32(old_h)), min(new_h, y1 * new_h / F32(old_h))
    else:
        if param.resize_mode == Resize.FIT_SMALL_SIZE:
            if aspect < target:
                new_h = new_w / aspect
            else:
                new_w = aspect * new_h
        x0, x1 = max(zero, x0 * new_w / F32(old_w)), min(new_w, x1 * new_w / F32(old_w))
        y0, y1 = max(zero, y0 * new_h / F32(old_h)), min(new_h, y1 * new_h / F32(old_h))
    return np.array([x0 / new_w, y0 / new_h, x1 / new_w, y1 / new_h], dtype=F32)


def extrapolate_box(box: np.ndarray, param: caffe_pb2.ResizeParameter, height: int, width: int,
                    window: np.ndarray, where: str) -> np.ndarray:
    """``ExtrapolateBBox``: FIT_SMALL_SIZE with ``height_scale``/``width_scale`` rescales the
    boxes to that reference size; every other policy leaves them."""
    if not (param.height_scale > 0 and param.width_scale > 0 and param.resize_mode == Resize.FIT_SMALL_SIZE):
        return box
    aspect = F32(width) / F32(height)
    resize_h, resize_w = F32(param.height), F32(param.width)
    if aspect < resize_w / resize_h:
        resize_h = resize_w / aspect
    else:
        resize_w = resize_h * aspect
    crop_h = resize_h * (window[3] - window[1])
    crop_w = resize_w * (window[2] - window[0])
    if crop_w < param.width_scale or crop_h < param.height_scale:
        raise DataError(f"{where}: the crop ({crop_w} x {crop_h}) is smaller than width_scale x "
                        f"height_scale ({param.width_scale} x {param.height_scale})")
    factor = np.array([crop_w / F32(param.width_scale), crop_h / F32(param.height_scale)] * 2, dtype=F32)
    return (box * factor).astype(F32)


# -- the loader -------------------------------------------------------------------------------

class AnnotatedBatches:
    """The AnnotatedData loader (see the module docstring)."""

    def __init__(self, records: RecordCycle, batch_size: int, transformer: DataTransformer,
                 param: caffe_pb2.AnnotatedDataParameter, with_labels: bool, rand_skip: int,
                 rng: np.random.Generator):
        self.records = records
        self.batch_size = batch_size
        self.transformer = transformer
        self.transform_param = transformer.param
        self.samplers = list(param.batch_sampler)
        for i, sampler in enumerate(self.samplers):
            check_sampler(sampler, i)
        self.with_labels = with_labels
        self.rng = rng
        resize = self.transform_param.resize_param if self.transform_param.HasField("resize_param") else None
        if resize is not None and resize.resize_mode == Resize.FIT_SMALL_SIZE and batch_size != 1:
            raise DataError(f"resize_mode FIT_SMALL_SIZE needs batch_size 1 (images keep their "
                            f"aspect ratio, so their sizes differ), got {batch_size}")
        if rand_skip:
            records.skip(int(rng.integers(rand_skip)))
        key, value = records.peek()
        record, image = self._read(key, value)
        self.type_from_param = param.HasField("anno_type")
        self.anno_type = param.anno_type if self.type_from_param else (
            record.type if record.HasField("type") else None)
        if self.anno_type is not None and self.anno_type != BBOX:
            raise DataError(f"{records.where(key)}: unknown annotation type {self.anno_type} (SSD knows BBOX)")
        data_shape = (batch_size,) + transformer.output_shape(image.shape)
        if not with_labels:
            label_shape = None
        elif self.anno_type is None:
            label_shape = (batch_size, 1, 1, 1)
        else:
            label_shape = (1, 1, max(Annotations.from_proto(record).count(), 1), 8)
        self.shapes = [data_shape] + ([label_shape] if label_shape else [])

    def _read(self, key: bytes, value: bytes):
        where = self.records.where(key)
        record = parse_annotated_datum(value, where)
        return record, datum_image(record.datum, where, self.transformer.decode_color)

    def __call__(self) -> tuple[np.ndarray, ...]:
        data = BatchBuilder(self.batch_size)
        rows: list[list[float]] = []
        labels = np.empty((self.batch_size, 1, 1, 1), dtype=F32)
        for item in range(self.batch_size):
            key, value = self.records.next()
            where = self.records.where(key)
            record, image = self._read(key, value)
            annotations = Annotations.from_proto(record)
            self._check_type(record, where)
            image, annotations = self._augment(image, annotations, where)
            try:
                out, placement = self.transformer.transform_placed(image)
            except DataError as err:
                raise DataError(f"{where}: {err}") from None
            data.put(item, out, where)
            if self.anno_type is None:
                labels[item] = record.datum.label
            else:
                rows += self._final_boxes(annotations, image, placement, where).rows(item)
        if not self.with_labels:
            return (data.data,)
        if self.anno_type is None:
            return data.data, labels
        table = np.array(rows, dtype=F32).reshape(1, 1, -1, 8) if rows else np.full((1, 1, 1, 8), -1, F32)
        return data.data, table

    def _check_type(self, record: caffe_pb2.AnnotatedDatum, where: str) -> None:
        """Every record has the first one's annotation type (unless ``anno_type`` overrides it)."""
        if self.anno_type is None or self.type_from_param:
            return
        if not record.HasField("type") or record.type != self.anno_type:
            raise DataError(f"{where}: the record's annotation type differs from the first "
                            f"record's (or is missing); set annotated_data_param.anno_type")

    def _augment(self, image: np.ndarray, annotations: Annotations, where: str):
        """Distortion, expansion, then the batch samplers' crop."""
        tp = self.transform_param
        if tp.HasField("distort_param"):
            image = distort_image(image, tp.distort_param, self.rng, where)
        if tp.HasField("expand_param"):
            fill = self._expand_fill(image.shape[0], where)
            expanded = expand_image(image, tp.expand_param, fill, self.rng)
            if expanded is not None:
                image, box = expanded
                annotations = annotations.transformed(box, self._emit)
        if self.samplers:
            boxes = generate_samples(annotations.boxes(), self.samplers, self.rng)
            if boxes:
                image, window = crop_to_box(image, boxes[int(self.rng.integers(len(boxes)))], where)
                annotations = annotations.transformed(window, self._emit)
        return image, annotations

    @property
    def _emit(self):
        return self.transform_param.emit_constraint if self.transform_param.HasField("emit_constraint") else None

    def _expand_fill(self, channels: int, where: str) -> np.ndarray:
        values = list(self.transform_param.mean_value) or [0.0]
        if len(values) not in (1, channels):
            raise DataError(f"{where}: give 1 mean_value or one per channel ({channels}), got {len(values)}")
        return np.clip(np.rint(np.resize(np.asarray(values, dtype=np.float64), channels)), 0, 255)

    def _final_boxes(self, annotations: Annotations, image: np.ndarray, placement: Placement,
                     where: str) -> Annotations:
        """The boxes after the transformer's resize, crop and mirror."""
        tp = self.transform_param
        window = np.array(placement.crop_box, dtype=F32)
        height, width = image.shape[1:]
        resize = tp.resize_param if tp.HasField("resize_param") else None
        update = (lambda box: resize_box(box, resize, width, height)) if resize is not None else None
        out = annotations.transformed(window, self._emit, placement.mirror, update)
        if resize is not None:
            for _, kept in out.groups:
                for k, (instance, box, difficult) in enumerate(kept):
                    kept[k] = (instance, extrapolate_box(box, resize, height, width, window, where), difficult)
        return out
