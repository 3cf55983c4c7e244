"""R-CNN's window files and the ``WindowData`` layer's batches (``window_data_layer.cpp``).

A window file lists images and candidate boxes, as whitespace-separated tokens::

    # 0                 (a hash sign and the image index: 0, 1, 2... in file order)
    /path/image.jpg     (joined to root_folder by plain concatenation)
    3 375 500           (channels, height, width)
    2                   (number of windows)
    7 0.82 10 20 110 220    (class, overlap with the ground truth, x1 y1 x2 y2: inclusive pixels)
    0 0.10 50 60 90 100

A window with ``overlap >= fg_threshold`` is foreground (its class must be > 0); one with
``overlap < bg_threshold`` is background (class and overlap become 0); the others are unused.

Each batch holds ``batch_size - int(batch_size * fg_fraction)`` background windows then the
foreground ones, each drawn uniformly with replacement. Per window: a mirror coin (when
``transform_param.mirror``); the image is read in colour (or decoded from the cache filled at
set-up with ``cache_images``); with ``context_pad > 0`` or ``crop_mode: "square"`` the box is
grown so that, once warped to ``crop_size``, ``context_pad`` pixels of context surround it
(``square`` first makes it square), clipped to the image with the clipped part left as zero
padding (mirrored with the image); the region is warped with bilinear ``cv::resize``, flipped,
and written as ``(pixel - mean) * scale`` into the zeroed ``crop_size`` x ``crop_size`` item.
``mean`` is the centre ``crop_size`` window of the ``mean_file`` image or ``mean_value[c]``.
As in Caffe, ``scale`` is ``window_data_param.scale`` (``transform_param.scale`` is ignored)
and the arithmetic is float32 with C's ``round``.

Differs from Caffe: a window file whose ``# index`` lines are not 0, 1, 2... in order, a missing
image or a window outside its image is an error naming the line or file (Caffe looks images up
by the index as given, logs the missing image and returns a partly filled batch, or crashes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from ..proto import caffe_pb2
from .errors import DataError
from .image import decode_image, read_image, resize_image

F32 = np.float32


@dataclass(frozen=True)
class Window:
    image: int
    label: int
    overlap: float
    x1: int
    y1: int
    x2: int
    y2: int
    line: int


@dataclass
class WindowFile:
    images: list[tuple[str, tuple[int, int, int]]]  # path (root joined), (channels, height, width)
    foreground: list[Window]
    background: list[Window]


class _Tokens:
    def __init__(self, path: str, text: str):
        self.path = path
        self.items = [(n, t) for n, line in enumerate(text.splitlines(), 1) for t in line.split()]
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.items)

    def take(self, kind, what: str):
        if not self.more():
            raise DataError(f"{self.path}: the file ends where {what} was expected")
        line, token = self.items[self.pos]
        self.pos += 1
        if kind is str:
            return token, line
        try:
            return kind(token), line
        except ValueError:
            raise DataError(f"{self.path}:{line}: expected {what} ({kind.__name__}), got {token!r}") from None


def read_window_file(path: str, root_folder: str, fg_threshold: float, bg_threshold: float) -> WindowFile:
    """Parse a window file and sort its windows into foreground and background."""
    if not path:
        raise DataError("window_data_param.source is not set: give the window file")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            tokens = _Tokens(path, f.read())
    except OSError as err:
        raise DataError(f"cannot read the window file {path!r}: {err.strerror or err}") from None
    if not tokens.more():
        raise DataError(f"{path}: the window file is empty")
    out = WindowFile([], [], [])
    fg_threshold, bg_threshold = F32(fg_threshold), F32(bg_threshold)
    while tokens.more():
        hashtag, line = tokens.take(str, "'#'")
        if hashtag != "#":
            raise DataError(f"{path}:{line}: expected '# <image index>', got {hashtag!r}")
        index, line = tokens.take(int, "the image index")
        if index != len(out.images):
            raise DataError(f"{path}:{line}: image index {index}, but it is image {len(out.images)} "
                            f"of the file (Caffe looks images up by this index: number them 0, 1, 2...)")
        name = tokens.take(str, "the image path")[0]
        size = tuple(tokens.take(int, what)[0] for what in ("channels", "height", "width"))
        out.images.append((root_folder + name, size))
        for _ in range(tokens.take(int, "the number of windows")[0]):
            label, line = tokens.take(int, "a window's class")
            overlap = F32(tokens.take(float, "a window's overlap")[0])
            x1, y1, x2, y2 = (tokens.take(int, "a window coordinate")[0] for _ in range(4))
            if overlap >= fg_threshold:
                if label <= 0:
                    raise DataError(f"{path}:{line}: a foreground window (overlap {overlap} >= "
                                    f"fg_threshold) must have a class > 0, got {label}")
                out.foreground.append(Window(index, label, float(overlap), x1, y1, x2, y2, line))
            elif overlap < bg_threshold:
                out.background.append(Window(index, 0, 0.0, x1, y1, x2, y2, line))
    return out


def _c_round(value) -> int:
    """C's ``round``: halves away from zero."""
    value = float(value)
    return int(np.floor(value + 0.5)) if value >= 0 else -int(np.floor(-value + 0.5))


class WindowBatches:
    """The WindowData loader: tops data (N, C, crop, crop) and label (N,)."""

    def __init__(self, param: caffe_pb2.WindowDataParameter, transform: caffe_pb2.TransformationParameter,
                 rng: np.random.Generator):
        if transform.crop_size <= 0:
            raise DataError("WindowData needs transform_param.crop_size > 0 (the warped size)")
        if param.batch_size <= 0:
            raise DataError(f"window_data_param.batch_size must be > 0, got {param.batch_size}")
        if param.crop_mode not in ("warp", "square"):
            raise DataError(f"window_data_param.crop_mode must be 'warp' or 'square', got {param.crop_mode!r}")
        self.crop = int(transform.crop_size)
        if 2 * param.context_pad >= self.crop:
            raise DataError(f"window_data_param.context_pad {param.context_pad} leaves no room in a "
                            f"crop of {self.crop} (it must be < crop_size / 2)")
        self.file = read_window_file(param.source, param.root_folder, param.fg_threshold, param.bg_threshold)
        self.batch_size = int(param.batch_size)
        self.num_fg = int(F32(self.batch_size) * F32(param.fg_fraction))
        for wanted, windows, kind in ((self.batch_size - self.num_fg, self.file.background, "background"),
                                      (self.num_fg, self.file.foreground, "foreground")):
            if wanted and not windows:
                raise DataError(f"{param.source}: the file has no {kind} window but each batch "
                                f"takes {wanted} (check fg_threshold, bg_threshold and fg_fraction)")
        self.param = param
        self.mirror = transform.mirror
        self.scale = F32(param.scale)
        self.context_pad = int(param.context_pad)
        self.square = param.crop_mode == "square"
        self.rng = rng
        self.channels = self.file.images[-1][1][0]
        if self.channels != 3:
            raise DataError(f"{param.source}: images are declared with {self.channels} channels; "
                            f"WindowData reads them in colour (3 channels)")
        self.mean = self._mean(transform)
        self.cache = [self._file_bytes(path) for path, _ in self.file.images] if param.cache_images else None
        self.shapes = [(self.batch_size, self.channels, self.crop, self.crop), (self.batch_size,)]

    def _mean(self, transform) -> np.ndarray:
        """The mean to subtract for every (c, h, w) of a crop: the mean file's centre window
        (offset ``(mean_width - crop) / 2`` on both axes, as Caffe), mean values, or 0."""
        from .transformer import _read_mean_file

        if transform.HasField("mean_file") and len(transform.mean_value):
            raise DataError("give mean_file or mean_value, not both (Caffe refuses both)")
        if transform.HasField("mean_file"):
            mean = _read_mean_file(transform.mean_file, "transform_param")
            off = (mean.shape[2] - self.crop) // 2
            if off < 0 or off + self.crop > mean.shape[1] or mean.shape[0] != self.channels:
                raise DataError(f"transform_param.mean_file {transform.mean_file!r} is "
                                f"{' x '.join(map(str, mean.shape))}; WindowData needs "
                                f"{self.channels} channels and at least {self.crop} x {self.crop}")
            return np.ascontiguousarray(mean[:, off:off + self.crop, off:off + self.crop])
        values = np.asarray(transform.mean_value, dtype=F32)
        if len(values) not in (0, 1, self.channels):
            raise DataError(f"give 1 mean_value or one per channel ({self.channels}), got {len(values)}")
        return np.broadcast_to(values.reshape(-1, 1, 1) if len(values) else F32(0),
                               (self.channels, self.crop, self.crop))

    def _file_bytes(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as err:
            raise DataError(f"{self.param.source}: cannot read image {path!r} (cache_images): "
                            f"{err.strerror or err}") from None

    def _image(self, index: int) -> np.ndarray:
        path = self.file.images[index][0]
        try:
            if self.cache is not None:
                return decode_image(self.cache[index], True, path)
            return read_image(path, is_color=True)
        except DataError as err:
            raise DataError(f"{self.param.source}: {err}") from None

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        data = np.zeros(self.shapes[0], dtype=F32)
        labels = np.empty(self.batch_size, dtype=F32)
        item = 0
        for windows, count in ((self.file.background, self.batch_size - self.num_fg),
                               (self.file.foreground, self.num_fg)):
            for _ in range(count):
                window = windows[int(self.rng.integers(len(windows)))]
                mirror = bool(self.mirror and self.rng.integers(2))
                self._fill(data[item], window, mirror)
                labels[item] = window.label
                item += 1
        return data, labels

    def _fill(self, out: np.ndarray, window: Window, mirror: bool) -> None:
        image = self._image(window.image)
        region, (width, height), pad_h, pad_w = self._region(window, image, mirror)
        if width <= 0 or height <= 0:
            raise DataError(f"{self.param.source}:{window.line}: the window warps to {width} x "
                            f"{height} pixels; it is too small")
        warped = resize_image(region, height, width, cv2.INTER_LINEAR)
        if mirror:
            warped = warped[:, ::-1]
        pixels = warped.transpose(2, 0, 1).astype(F32)
        rows, cols = slice(pad_h, pad_h + height), slice(pad_w, pad_w + width)
        out[:, rows, cols] = (pixels - self.mean[:, rows, cols]) * self.scale

    def _region(self, window: Window, image: np.ndarray, mirror: bool):
        """The image region to warp, the warped size and where it goes (Caffe's context/square
        arithmetic, float32)."""
        x1, y1, x2, y2 = window.x1, window.y1, window.x2, window.y2
        crop = F32(self.crop)
        size, pad_h, pad_w = (self.crop, self.crop), 0, 0
        if self.context_pad > 0 or self.square:
            context_scale = crop / F32(self.crop - 2 * self.context_pad)
            half_h, half_w = F32((y2 - y1 + 1) / 2.0), F32((x2 - x1 + 1) / 2.0)
            cx, cy = F32(x1) + half_w, F32(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _c_round(cx - half_w * context_scale), _c_round(cx + half_w * context_scale)
            y1, y2 = _c_round(cy - half_h * context_scale), _c_round(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - image.shape[1] + 1), max(0, y2 - image.shape[0] + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = crop / F32(unclipped_w), crop / F32(unclipped_h)
            width = _c_round(F32(x2 - x1 + 1) * scale_x)
            height = _c_round(F32(y2 - y1 + 1) * scale_y)
            pad_y1 = _c_round(F32(pad_y1) * scale_y)
            pad_h = pad_y1
            pad_w = _c_round(F32(pad_x2) * scale_x) if mirror else _c_round(F32(pad_x1) * scale_x)
            height = min(height, self.crop - pad_h)
            width = min(width, self.crop - pad_w)
            size = (width, height)
        if not (0 <= x1 <= x2 < image.shape[1] and 0 <= y1 <= y2 < image.shape[0]):
            raise DataError(f"{self.param.source}:{window.line}: the window ({window.x1}, {window.y1}, "
                            f"{window.x2}, {window.y2}) lies outside its {image.shape[1]} x "
                            f"{image.shape[0]} image {os.path.basename(self.file.images[window.image][0])!r}")
        return image[y1:y2 + 1, x1:x2 + 1], size, pad_h, pad_w
