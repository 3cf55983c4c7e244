"""Batch loaders of the BVLC data layers: ``Data`` (Datum databases) and ``ImageData`` (image lists).

A loader is set up the way Caffe's ``DataLayerSetUp`` is — it reads the first record to learn
the top shapes (``loader.shapes``) — and each call ``loader()`` returns the next batch as numpy
arrays, one per top, reading records in order. It is called by one thread at a time (the
layer's prefetch thread, see :mod:`.prefetch`) and owns its random generators, so its batches do
not depend on whether loading runs ahead.

Caffe reshapes a batch after the first record of that batch ("on single input batches allows for
inputs of varying dimension"); so do these loaders: images within a batch must share a shape,
successive batches may differ.
"""
from __future__ import annotations

import numpy as np

from .datum import datum_image, parse_datum
from .db import RecordCycle
from .errors import DataError
from .image import read_image, to_chw
from .transformer import DataTransformer


def generators(seed: int, count: int) -> list[np.random.Generator]:
    """``count`` independent generators from one seed (one per random stream of a layer)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


class BatchBuilder:
    """Fills a batch item by item; the first item fixes the shape (Caffe's per-batch reshape)."""

    def __init__(self, size: int):
        self.size = size
        self.data: np.ndarray | None = None

    def put(self, index: int, item: np.ndarray, where: str) -> None:
        if self.data is None:
            self.data = np.empty((self.size,) + item.shape, dtype=np.float32)
        elif item.shape != self.data.shape[1:]:
            raise DataError(f"{where}: the transformed image is {_dims(item.shape)} but the first "
                            f"image of this batch is {_dims(self.data.shape[1:])}; images of one "
                            f"batch must have one size (resize them, or use batch_size 1)")
        self.data[index] = item


def _dims(shape) -> str:
    return " x ".join(str(d) for d in shape)


class DatumBatches:
    """``Data``: ``batch_size`` Datums at a time from a database, in key order, wrapping around.

    Tops: data (N, C, h, w) transformed; label (N,) the Datums' labels (when asked for).
    ``rand_skip`` skips ``rand() % rand_skip`` records at set-up (old Caffe's DataLayer).
    """

    def __init__(self, records: RecordCycle, batch_size: int, transformer: DataTransformer,
                 with_labels: bool, color: bool | None, rand_skip: int, rng: np.random.Generator):
        self.records = records
        self.batch_size = batch_size
        self.transformer = transformer
        self.with_labels = with_labels
        self.color = color
        if rand_skip:
            records.skip(int(rng.integers(rand_skip)))
        key, value = records.peek()
        shape = transformer.output_shape(self._image(key, value)[1].shape)
        self.shapes = [(batch_size,) + shape] + ([(batch_size,)] if with_labels else [])

    def _image(self, key: bytes, value: bytes):
        where = self.records.where(key)
        datum = parse_datum(value, where)
        return datum, datum_image(datum, where, self.color)

    def __call__(self) -> tuple[np.ndarray, ...]:
        data = BatchBuilder(self.batch_size)
        labels = np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            key, value = self.records.next()
            datum, image = self._image(key, value)
            where = self.records.where(key)
            data.put(i, _transform(self.transformer, image, where), where)
            labels[i] = datum.label
        return (data.data, labels) if self.with_labels else (data.data,)


def _transform(transformer: DataTransformer, image: np.ndarray, where: str) -> np.ndarray:
    try:
        return transformer.transform(image)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


class ListOrder:
    """Caffe's walk through a list file (``lines_``, ``lines_id_``): in order, permuted at
    set-up and after every pass with ``shuffle``, starting at ``rand() % rand_skip``."""

    def __init__(self, entries: list, source: str, shuffle: bool, rand_skip: int,
                 shuffle_rng: np.random.Generator, skip_rng: np.random.Generator):
        self.entries = list(entries)
        self.source = source
        self.shuffle = shuffle
        self.rng = shuffle_rng
        if shuffle:
            self._shuffle()
        self.position = 0
        if rand_skip:
            skip = int(skip_rng.integers(rand_skip))
            if skip >= len(self.entries):
                raise DataError(f"{source}: rand_skip drew {skip} but the list has only "
                                f"{len(self.entries)} entries (Caffe: 'Not enough points to skip')")
            self.position = skip

    def _shuffle(self) -> None:
        order = self.rng.permutation(len(self.entries))
        self.entries = [self.entries[i] for i in order]

    def peek(self):
        """The entry :meth:`next` returns next."""
        return self.entries[self.position]

    def next(self):
        """The current entry; the position moves on (back to the start, reshuffled, at the end)."""
        entry = self.entries[self.position]
        self.position += 1
        if self.position >= len(self.entries):
            self.position = 0
            if self.shuffle:
                self._shuffle()
        return entry


def check_new_size(new_height: int, new_width: int) -> tuple[int, int]:
    """Caffe's check that ``new_height`` and ``new_width`` are set together."""
    if (new_height > 0) != (new_width > 0):
        raise DataError(f"new_height ({new_height}) and new_width ({new_width}) must be set "
                        f"together (Caffe resizes only when both are)")
    return int(new_height), int(new_width)


def read_listed_image(root: str, name: str, source: str, size=(0, 0), is_color: bool = True,
                      interpolation: int | None = None) -> np.ndarray:
    """An image named in a list file, as (C, H, W); errors name the list and the entry."""
    try:
        if interpolation is None:
            return to_chw(read_image(root + name, *size, is_color))
        return to_chw(read_image(root + name, *size, is_color, interpolation))
    except DataError as err:
        raise DataError(f"{source}: {name!r}: {err}") from None


class ImageListBatches:
    """``ImageData``: images named in a list file, read with OpenCV, in list order (see
    :class:`ListOrder` for ``shuffle`` and ``rand_skip``). Tops: data (N, C, h, w); label (N,)."""

    def __init__(self, order: ListOrder, root_folder: str, batch_size: int, new_size: tuple[int, int],
                 is_color: bool, transformer: DataTransformer, with_labels: bool):
        self.order = order
        self.root = root_folder
        self.batch_size = batch_size
        self.size = new_size
        self.is_color = is_color
        self.transformer = transformer
        self.with_labels = with_labels
        shape = transformer.output_shape(self._read(order.peek()[0]).shape)
        self.shapes = [(batch_size,) + shape] + ([(batch_size,)] if with_labels else [])

    def _read(self, name: str) -> np.ndarray:
        return read_listed_image(self.root, name, self.order.source, self.size, self.is_color)

    def __call__(self) -> tuple[np.ndarray, ...]:
        data = BatchBuilder(self.batch_size)
        labels = np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            name, label = self.order.next()
            where = f"{self.order.source}: {name!r}"
            data.put(i, _transform(self.transformer, self._read(name), where), where)
            labels[i] = label
        return (data.data, labels) if self.with_labels else (data.data,)
