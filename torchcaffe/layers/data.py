"""Layers that bring data into the net or write it out.

* ``Input`` (tops set by the caller), ``DummyData`` (fillers), ``MemoryData`` (arrays handed in
  by code), ``HDF5Data`` / ``HDF5Output``;
* the prefetching readers (:class:`PrefetchingData`): ``Data`` (LMDB/LevelDB Datums),
  ``ImageData`` (image lists), ``WindowData`` (R-CNN window files), and the forks'
  ``AnnotatedData`` (SSD), ``DenseImageData`` (SegNet), ``ImageLabelmapData`` (HED),
  ``ImageSegData`` (DeepLab).

The readers' machinery — databases, Datums, images, the data transformer, the loaders and the
prefetch thread — lives in :mod:`torchcaffe.data`; ``docs/data.md`` describes it.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch

from ..data.errors import DataError
from ..data.prefetch import BatchQueue
from ..errors import CaffeError, NetError
from ..fillers import fill
from ..proto import caffe_pb2
from .base import TEST, Layer, LayerSetup, Sample
from .registry import register_layer

log = logging.getLogger("torchcaffe")


def _shapes_for_tops(layer: Layer, shapes, num_tops: int, field_name: str) -> list[torch.Size]:
    """Caffe's rule for per-top shapes: given once (for every top), once per top, or never."""
    shapes = [torch.Size(tuple(int(d) for d in s.dim)) for s in shapes]
    if len(shapes) == 1:
        return shapes * num_tops
    if len(shapes) == num_tops:
        return shapes
    if not shapes:
        return [torch.Size([0])] * num_tops
    raise layer.fail(f"'{field_name}' must be given once, once per top ({num_tops}) or not at all; "
                     f"got {len(shapes)}")


@register_layer("Input")
class Input(Layer):
    """The net's input blobs: tops whose values the caller sets (pycaffe ``net.blobs[...]``).

    ``input_param { shape { dim: N dim: C ... } }`` once for all tops or once per top; without a
    shape the top must be reshaped before use. The net reads its tops from the input blobs; the
    layer computes nothing.

    Shapes: () -> tops as declared.
    """

    exact_bottoms = 0
    min_tops = 1
    is_input = True
    samples = ()  # exercised by every other sample: the harness feeds layers through Input layers

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.shapes = _shapes_for_tops(self, setup.param.input_param.shape, setup.num_tops, "shape")

    def top_shapes(self, bottom_shapes):
        return self.shapes

    def forward(self):
        raise RuntimeError("Input layers are fed by the net; they are never called")


@register_layer("DummyData")
class DummyData(Layer):
    """Tops filled by fillers: ``dummy_data_param { shape {...} data_filler {...} }``.

    One filler for all tops or one per top (default: constant 0). Constant fillers fill once;
    other fillers draw new values at every forward, as Caffe's ``refill_`` does. Shapes come from
    ``shape`` or the legacy ``num/channels/height/width`` lists.
    """

    exact_bottoms = 0
    min_tops = 1
    differentiable = False
    samples = (
        Sample("dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'constant' value: 1.5 } }",
               bottoms=(), tops=1, gradcheck=False, note="constant filler, filled once"),
        Sample("dummy_data_param { num: 2 channels: 1 height: 2 width: 3 num: 1 channels: 2 height: 1 width: 1 "
               "data_filler { type: 'gaussian' std: 2 } }",
               bottoms=(), tops=2, gradcheck=False, note="legacy 4-D shapes, one filler for both tops"),
    )

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.dummy_data_param
        n = setup.num_tops
        self.shapes = self._declared_shapes(p, n)
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter()]
        if len(fillers) == 1:
            fillers = fillers * n
        if len(fillers) != n:
            raise self.fail(f"data_filler must be given 0, 1 or {n} times (once per top); got {len(fillers)}")
        self.fillers = fillers
        for i, (shape, filler) in enumerate(zip(self.shapes, fillers)):
            value = torch.zeros(shape)
            if filler.type == "constant":
                fill(value, filler, self.label)
            self.register_buffer(f"_top{i}", value, persistent=False)

    def _declared_shapes(self, p, n: int) -> list[torch.Size]:
        legacy = (p.num, p.channels, p.height, p.width)
        if any(legacy):
            if p.shape:
                raise self.fail("give either 'shape' or num/channels/height/width, not both")
            if len({len(x) for x in legacy}) != 1:
                raise self.fail("num, channels, height and width must be given the same number of times")
            shapes = [caffe_pb2.BlobShape(dim=dims) for dims in zip(*legacy)]
        else:
            shapes = list(p.shape)
        return _shapes_for_tops(self, shapes, n, "shape")

    def top_shapes(self, bottom_shapes):
        return self.shapes

    def forward(self):
        tops = []
        for i, filler in enumerate(self.fillers):
            top = getattr(self, f"_top{i}")
            if filler.type != "constant":
                fill(top, filler, self.label)
            tops.append(top.clone())
        return tuple(tops)


# -- HDF5 ---------------------------------------------------------------------------------------

def _read_source_list(layer: Layer, source: str) -> list[str]:
    """The file names listed in ``source``, whitespace-separated as Caffe reads them."""
    if not source:
        raise layer.fail("hdf5_data_param.source is not set: give a text file listing one .h5 file per line")
    try:
        with open(source, encoding="utf-8", errors="surrogateescape") as f:
            names = f.read().split()
    except OSError as err:
        raise layer.fail(f"cannot read hdf5_data_param.source {source!r} (relative paths are "
                         f"relative to the working directory {os.getcwd()!r}): {err.strerror or err}") from None
    if not names:
        raise layer.fail(f"hdf5_data_param.source {source!r} lists no HDF5 file; it must name at least one")
    return names


def _hdf5_dataset_meta(layer: Layer, path: str, names: Sequence[str]) -> list[tuple[int, ...]]:
    """The shapes of the datasets ``names`` in ``path``, checked as Caffe's ``hdf5_load_nd_dataset``."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise layer.fail(f"cannot open HDF5 file {path!r}: {err}") from None
    with h5:
        shapes = []
        for name in names:
            dataset = h5.get(name)
            if not isinstance(dataset, h5py.Dataset):
                found = sorted(k for k, v in h5.items() if isinstance(v, h5py.Dataset))
                raise layer.fail(f"HDF5 file {path!r} has no dataset {name!r} (the layer's tops name "
                                 f"the datasets it reads); datasets in the file: {found}")
            if dataset.dtype.kind not in "fiub":
                raise layer.fail(f"HDF5 file {path!r}, dataset {name!r}: {dataset.dtype} values cannot be "
                                 f"read as numbers (Caffe reads float and integer datasets)")
            if dataset.ndim < 1:
                raise layer.fail(f"HDF5 file {path!r}, dataset {name!r} is a scalar; it needs at least "
                                 f"one axis (rows)")
            shapes.append(tuple(int(d) for d in dataset.shape))
    rows = {shape[0] for shape in shapes}
    if len(rows) != 1:
        counts = ", ".join(f"{n!r}: {s[0]}" for n, s in zip(names, shapes))
        raise layer.fail(f"HDF5 file {path!r}: the datasets must have the same number of rows, got {counts}")
    if shapes[0][0] == 0:
        raise layer.fail(f"HDF5 file {path!r}: the datasets have no rows")
    return shapes


@register_layer("HDF5Data")
class HDF5Data(Layer):
    """Rows of HDF5 datasets: ``hdf5_data_param { source batch_size shuffle }``.

    ``source`` is a text file listing HDF5 files (whitespace-separated; paths relative to the
    working directory, as Caffe opens them). Each top reads the dataset of the same name; all
    tops' datasets in a file have the same number of rows. Every forward copies ``batch_size``
    rows into the tops, Caffe's ``HDF5DataLayer`` order: row by row through the current file,
    then the next file (loaded when reached), back to the first after the last. With
    ``shuffle: true`` the file order is permuted at setup and at each pass over the files, and the
    row order when a file is loaded and at each pass over its rows. Values become floats
    (integer datasets too).

    Shapes: () -> per top (batch_size, *dataset.shape[1:]).

    Example::

        layer { name: "data" type: "HDF5Data" top: "data" top: "label"
                hdf5_data_param { source: "train_h5.txt" batch_size: 64 } }

    Differs from Caffe: the permutations come from torch's RNG (seeded by the solver's
    ``random_seed``), not ``std::random_shuffle``; every listed file is opened at setup to check
    its datasets (Caffe opens each when it reaches it), so a bad file is reported before training.
    """

    exact_bottoms = 0
    min_tops = 1
    differentiable = False

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.hdf5_data_param
        if setup.param.HasField("transform_param"):
            raise self.fail("HDF5Data does not transform data: remove transform_param (Caffe refuses it too)")
        if p.batch_size <= 0:
            raise self.fail(f"hdf5_data_param.batch_size must be > 0, got {p.batch_size}")
        self.batch_size = int(p.batch_size)
        self.shuffle = p.shuffle
        self.datasets = list(setup.param.top)[:setup.num_tops]
        self.files = _read_source_list(self, p.source)
        shapes = [_hdf5_dataset_meta(self, path, self.datasets) for path in self.files]
        for path, file_shapes in zip(self.files[1:], shapes[1:]):
            for name, first, shape in zip(self.datasets, shapes[0], file_shapes):
                if first[1:] != shape[1:]:
                    raise self.fail(f"HDF5 file {path!r}, dataset {name!r}: rows of shape {shape[1:]} "
                                    f"differ from {first[1:]} in {self.files[0]!r}")
        self.shapes = [torch.Size((self.batch_size,) + shape[1:]) for shape in shapes[0]]
        self.register_buffer("_device", torch.zeros(0), persistent=False)  # follows .to()
        self.file_order = self._permutation(len(self.files))
        self.current_file = 0
        self._load(self.files[int(self.file_order[0])])

    def _permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n) if self.shuffle else torch.arange(n)

    def _load(self, path: str) -> None:
        """Caffe's ``LoadHDF5FileData``: read the file's datasets; rows in order (or shuffled)."""
        import h5py

        _hdf5_dataset_meta(self, path, self.datasets)
        with h5py.File(path, "r") as h5:
            self.rows = [torch.from_numpy(np.asarray(h5[name][()], dtype=np.float32)) for name in self.datasets]
        self.row_order = self._permutation(self.rows[0].shape[0])
        self.current_row = 0

    def _advance(self, n: int) -> None:
        """Move ``n`` rows on (never past the file's end); at the end, Caffe's wrap-around."""
        self.current_row += n
        if self.current_row < self.rows[0].shape[0]:
            return
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.file_order = self._permutation(len(self.files))
            self._load(self.files[int(self.file_order[self.current_file])])
        self.current_row = 0
        if self.shuffle:
            self.row_order = self._permutation(self.rows[0].shape[0])

    def top_shapes(self, bottom_shapes):
        return self.shapes

    def forward(self):
        pieces: list[list[torch.Tensor]] = [[] for _ in self.datasets]
        filled = 0
        while filled < self.batch_size:
            n = min(self.batch_size - filled, self.rows[0].shape[0] - self.current_row)
            index = self.row_order[self.current_row:self.current_row + n]
            for piece, rows in zip(pieces, self.rows):
                piece.append(rows.index_select(0, index))
            filled += n
            self._advance(n)
        anchor = self._device
        return tuple(torch.cat(piece).to(anchor.device, anchor.dtype) for piece in pieces)

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        files = sample_files()
        return (
            Sample(f"hdf5_data_param {{ source: '{files['list']}' batch_size: 3 }}", bottoms=(), tops=2,
                   gradcheck=False, note="two files of 4 and 2 rows: a batch crosses files"),
            Sample(f"hdf5_data_param {{ source: '{files['list']}' batch_size: 7 shuffle: true }}", bottoms=(),
                   tops=1, gradcheck=False, note="shuffled, a batch longer than a file"),
        )


@register_layer("HDF5Output")
class HDF5Output(Layer):
    """Writes its two bottoms to an HDF5 file: ``hdf5_output_param { file_name }``.

    Datasets ``data`` (bottom 0) and ``label`` (bottom 1), each in Caffe's legacy 4-D shape
    ``(num, channels, height, width)`` (missing axes are 1), float32. As in Caffe the file is
    created (emptied) when the layer is set up, with a path relative to the working directory;
    the bottoms must have the same number of rows. The layer has no tops and no backward.

    Shapes: (N, ...), (N, ...) -> ().

    Differs from Caffe: Caffe can write only once (a second forward fails, the datasets exist);
    here every forward rewrites the file (atomically: temp file + rename) with the last batch.
    """

    exact_bottoms = 2
    exact_tops = 0
    differentiable = False

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.file_name = setup.param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.fail("hdf5_output_param.file_name is not set")
        for j, shape in enumerate(setup.bottom_shapes):
            if len(shape) > 4:
                raise self.fail(f"bottom {j} has {len(shape)} axes {tuple(shape)}; Caffe's HDF5Output "
                                f"writes legacy 4-D blobs (at most 4 axes)")
        self._write([])  # Caffe creates (truncates) the file at setup

    def _write(self, arrays: list[np.ndarray]) -> None:
        import h5py

        from ..errors import NetError
        from ..io.files import atomic_output_path

        with atomic_output_path(self.file_name, NetError) as temp:
            with h5py.File(temp, "w") as h5:
                for name, array in zip(("data", "label"), arrays):
                    h5.create_dataset(name, data=array)

    def top_shapes(self, bottom_shapes):
        if bottom_shapes[0][:1] != bottom_shapes[1][:1]:
            raise self.fail(f"data and label must have the same number of rows, got shapes "
                            f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        return []

    def forward(self, data, label):
        if data.shape[:1] != label.shape[:1]:
            raise self.fail(f"data and label must have the same number of rows, got shapes "
                            f"{tuple(data.shape)} and {tuple(label.shape)}")
        arrays = []
        for bottom in (data, label):
            shape = tuple(bottom.shape) + (1,) * (4 - bottom.dim())
            arrays.append(bottom.detach().to("cpu", torch.float32).reshape(shape).numpy())
        self._write(arrays)
        return ()

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        out = sample_files()["out"]
        return (Sample(f"hdf5_output_param {{ file_name: '{out}' }}", bottoms=((2, 3), (2,)), tops=0,
                       gradcheck=False, note="writes data (2,3,1,1) and label (2,1,1,1)"),)


# -- the prefetching data layers (databases, image lists, window files) ----------------------------

def _layer_error(label: str):
    """Turns a loading error into the NetError a data layer raises, its name in front."""
    def convert(error: BaseException) -> BaseException:
        if isinstance(error, CaffeError) and not isinstance(error, DataError):
            return error
        detail = str(error) if isinstance(error, DataError) else \
            f"loading a batch failed: {type(error).__name__}: {error}"
        return NetError(f"{label}: {detail}")
    return convert


def _seed() -> int:
    """A seed for a layer's own generators, drawn from torch's RNG (so ``torch.manual_seed`` and
    the solver's ``random_seed`` make the data repeat, as Caffe's seeded ``caffe_rng``)."""
    return int(torch.randint(0, 2 ** 62, ()).item())


def _warn_deprecated(layer: Layer, message, names: Sequence[str]) -> None:
    """Caffe's V2 data layers ignore the pre-transform_param fields; say so."""
    given = [n for n in names if message.HasField(n)]
    if given:
        log.warning("%s: %s ignored: the data transformation is read from transform_param "
                    "(upgrade_net_proto_text moves them there)", layer.label, ", ".join(given))


class PrefetchingData(Layer):
    """Base of the layers that load batches in a background thread (Caffe's
    ``BasePrefetchingDataLayer``): the subclass builds a loader (see :mod:`torchcaffe.data`),
    which reads the first record for the top shapes; ``prefetch`` batches are loaded ahead of the net
    (``data_param.prefetch``, default 4; 0 loads each batch when the net asks for it). The
    loader's batches do not depend on the prefetch depth. Call :meth:`close` to stop the thread
    early (it also stops when the layer is garbage collected)."""

    exact_bottoms = 0
    differentiable = False

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        self.register_buffer("_device", torch.zeros(0), persistent=False)  # follows .to()
        try:
            loader = self.make_loader(setup)
        except DataError as err:
            raise self.fail(str(err)) from None
        self.loader = loader
        self.shapes = [torch.Size(s) for s in loader.shapes]
        self.batches = BatchQueue(loader, self.prefetch_depth(setup.param), self.label, _layer_error(self.label))

    def make_loader(self, setup: LayerSetup):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @staticmethod
    def prefetch_depth(param: caffe_pb2.LayerParameter) -> int:
        return int(param.data_param.prefetch)

    def with_labels(self) -> bool:
        return self.num_tops > 1

    def top_shapes(self, bottom_shapes):
        return self.shapes

    def forward(self):
        anchor = self._device
        return tuple(torch.from_numpy(array).to(anchor.device, anchor.dtype) for array in self.batches.get())

    def close(self) -> None:
        """Stop loading ahead (the prefetch thread ends; the next forward would fail)."""
        self.batches.close()


def _check_batch_size(layer: Layer, field: str, value: int) -> int:
    if value <= 0:
        raise layer.fail(f"{field} must be > 0, got {value}")
    return int(value)


@register_layer("Data")
class Data(PrefetchingData):
    """Batches of ``Datum`` records from an LMDB or LevelDB database, in key order.

    ``data_param { source backend batch_size rand_skip prefetch force_encoded_color }``:
    ``source`` is the database folder, ``backend`` LEVELDB (Caffe's default) or LMDB. Records
    are raw uint8 pixels, ``float_data`` or encoded images (decoded to BGR by OpenCV; in colour
    when ``force_encoded_color`` or ``transform_param.force_color``, grey with ``force_gray``,
    else as stored). ``transform_param`` applies (see :mod:`torchcaffe.data.transformer`). After
    the last record the first comes again. ``rand_skip`` skips ``rand() % rand_skip`` records at
    set-up. The top shapes come from the first record, as Caffe's ``DataLayerSetUp`` reads one;
    each batch takes its size from its own first record.

    Shapes: () -> data (batch_size, C, h, w), label (batch_size,) if a second top is named.

    Example::

        layer { name: "mnist" type: "Data" top: "data" top: "label"
                data_param { source: "mnist_train_lmdb" backend: LMDB batch_size: 64 }
                transform_param { scale: 0.00390625 } }

    Differs from Caffe: randomness (mirror, crop, rand_skip) comes from a generator seeded by
    torch's RNG, not Caffe's; a corrupt record, a record of another size within a batch or an
    empty database is an error naming the database and key. The deprecated ``scale``,
    ``mean_file``, ``crop_size``, ``mirror`` of data_param are ignored with a warning (Caffe
    ignores them silently).
    """

    min_tops = 1
    max_tops = 2

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        from ..data.samples import sample_paths

        paths = sample_paths()
        return (
            Sample(f"data_param {{ source: '{paths['lmdb']}' backend: LMDB batch_size: 3 }} "
                   "transform_param { crop_size: 4 mirror: true scale: 0.5 }", bottoms=(), tops=2,
                   gradcheck=False, note="raw 3x6x5 Datums, random crop and mirror, a batch wraps around"),
            Sample(f"data_param {{ source: '{paths['leveldb']}' batch_size: 2 prefetch: 0 }} "
                   f"transform_param {{ mean_file: '{paths['mean']}' }}", bottoms=(), tops=1, phase=TEST,
                   gradcheck=False, note="LevelDB (the default backend) of PNG-encoded Datums, mean file"),
        )

    def make_loader(self, setup: LayerSetup):
        from ..data.db import RecordCycle, open_database
        from ..data.loaders import DatumBatches, generators
        from ..data.transformer import DataTransformer

        p = setup.param.data_param
        _warn_deprecated(self, p, ("scale", "mean_file", "crop_size", "mirror"))
        batch_size = _check_batch_size(self, "data_param.batch_size", p.batch_size)
        transform_rng, skip_rng = generators(_seed(), 2)
        transformer = DataTransformer(setup.param.transform_param, setup.phase, transform_rng)
        color = True if p.force_encoded_color else transformer.decode_color
        records = RecordCycle(open_database(p.source, p.backend))
        return DatumBatches(records, batch_size, transformer, self.with_labels(), color, p.rand_skip, skip_rng)


@register_layer("ImageData")
class ImageData(PrefetchingData):
    """Images named in a list file, with their labels: ``image_data_param { source root_folder
    batch_size shuffle rand_skip new_height new_width is_color }``.

    ``source`` lists one ``<path> <label>`` per line (the label follows the last space); images
    are read with OpenCV from ``root_folder + path``, in colour (BGR) or grey (``is_color:
    false``), resized bilinearly to ``new_height`` x ``new_width`` when both are set, then
    transformed by ``transform_param``. ``shuffle`` permutes the list at set-up and after each
    pass; ``rand_skip`` starts at line ``rand() % rand_skip``.

    Shapes: () -> data (batch_size, C, h, w), label (batch_size,).

    Differs from Caffe: a missing or unreadable image, a malformed line or an empty list is an
    error naming the list file and the line or image; blank lines are skipped.
    """

    min_tops = 1
    max_tops = 2

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        from ..data.samples import sample_paths

        paths = sample_paths()
        return (
            Sample(f"image_data_param {{ source: '{paths['images']}' root_folder: '{paths['root']}' "
                   "batch_size: 3 shuffle: true } transform_param { mean_value: 10 mean_value: 20 mean_value: 30 }",
                   bottoms=(), tops=2, gradcheck=False, note="colour PNGs, shuffled, per-channel means"),
            Sample(f"image_data_param {{ source: '{paths['images']}' root_folder: '{paths['root']}' "
                   "batch_size: 2 new_height: 5 new_width: 6 is_color: false }", bottoms=(), tops=1,
                   gradcheck=False, note="grey, resized"),
        )

    def make_loader(self, setup: LayerSetup):
        from ..data.lists import read_image_list
        from ..data.loaders import ImageListBatches, ListOrder, check_new_size, generators
        from ..data.transformer import DataTransformer

        p = setup.param.image_data_param
        _warn_deprecated(self, p, ("scale", "mean_file", "crop_size", "mirror"))
        batch_size = _check_batch_size(self, "image_data_param.batch_size", p.batch_size)
        transform_rng, shuffle_rng, skip_rng = generators(_seed(), 3)
        transformer = DataTransformer(setup.param.transform_param, setup.phase, transform_rng)
        order = ListOrder(read_image_list(p.source), p.source, p.shuffle, p.rand_skip, shuffle_rng, skip_rng)
        return ImageListBatches(order, p.root_folder, batch_size, check_new_size(p.new_height, p.new_width),
                                p.is_color, transformer, self.with_labels())


@register_layer("WindowData")
class WindowData(PrefetchingData):
    """R-CNN's window sampler: crops of object proposals warped to ``crop_size``, a share of
    them foreground. ``window_data_param { source batch_size fg_threshold bg_threshold
    fg_fraction context_pad crop_mode cache_images root_folder scale }``.

    The window file format, the sampling and the warp are described in
    :mod:`torchcaffe.data.windows`. ``transform_param`` gives ``crop_size`` (required),
    ``mirror``, ``mean_file`` (its centre crop is subtracted) or ``mean_value``; the scale is
    ``window_data_param.scale`` as in Caffe.

    Shapes: () -> data (batch_size, 3, crop_size, crop_size), label (batch_size,).
    """

    exact_tops = 2

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        from ..data.samples import sample_paths

        paths = sample_paths()
        return (Sample(f"window_data_param {{ source: '{paths['windows']}' root_folder: '{paths['root']}' "
                       "batch_size: 4 fg_fraction: 0.5 context_pad: 2 crop_mode: 'square' } "
                       "transform_param { crop_size: 9 mirror: true }", bottoms=(), tops=2, gradcheck=False,
                       note="square crops with context, half foreground"),)

    def make_loader(self, setup: LayerSetup):
        from ..data.loaders import generators
        from ..data.windows import WindowBatches

        if setup.param.transform_param.scale != 1:
            log.warning("%s: transform_param.scale is ignored; WindowData scales by "
                        "window_data_param.scale (as Caffe does)", self.label)
        (rng,) = generators(_seed(), 1)
        return WindowBatches(setup.param.window_data_param, setup.param.transform_param, rng)


@register_layer("AnnotatedData")
class AnnotatedData(PrefetchingData):
    """SSD's images with boxes, augmented: ``data_param`` (source, backend, batch_size,
    rand_skip, prefetch), ``annotated_data_param { batch_sampler label_map_file anno_type }`` and
    ``transform_param`` with SSD's ``resize_param``, ``distort_param``, ``expand_param``,
    ``emit_constraint``.

    The pipeline (distort, expand, sample a crop, resize, crop, mirror, mean, scale) is described
    in :mod:`torchcaffe.data.annotated`.

    Shapes: () -> data (batch_size, C, h, w), label (1, 1, num_boxes, 8) with rows
    ``[item, label, instance, xmin, ymin, xmax, ymax, difficult]`` (num_boxes varies per batch;
    at set-up it is the first record's count), or (batch_size, 1, 1, 1) class labels for records
    without annotations.
    """

    min_tops = 1
    max_tops = 2
    origin = "SSD (weiliu89/caffe, branch ssd)"

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        from ..data.samples import sample_paths

        source = sample_paths()["annotated"]
        return (
            Sample(f"data_param {{ source: '{source}' backend: LMDB batch_size: 1 }} "
                   "transform_param { mirror: true resize_param { height: 10 width: 12 resize_mode: WARP } }",
                   bottoms=(), tops=2, gradcheck=False, note="boxes kept whole: two label rows per batch"),
            Sample(f"data_param {{ source: '{source}' backend: LMDB batch_size: 2 }} "
                   "transform_param { mean_value: 104 mean_value: 117 mean_value: 123 "
                   "resize_param { height: 8 width: 8 interp_mode: LINEAR interp_mode: NEAREST } "
                   "distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 "
                   "contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 "
                   "saturation_lower: 0.5 saturation_upper: 1.5 } expand_param { prob: 0.5 max_expand_ratio: 2 } "
                   "emit_constraint { emit_type: CENTER } } annotated_data_param { batch_sampler { max_sample: 1 "
                   "max_trials: 1 } batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 "
                   "max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 "
                   "max_trials: 50 } }", bottoms=(), tops=1, gradcheck=False,
                   note="SSD's augmentation: distort, expand, sample, resize"),
        )

    def make_loader(self, setup: LayerSetup):
        from ..data.annotated import AnnotatedBatches
        from ..data.db import RecordCycle, open_database
        from ..data.loaders import generators
        from ..data.transformer import DataTransformer

        p = setup.param.data_param
        batch_size = _check_batch_size(self, "data_param.batch_size", p.batch_size)
        transform_rng, rng = generators(_seed(), 2)
        transformer = DataTransformer(setup.param.transform_param, setup.phase, transform_rng)
        records = RecordCycle(open_database(p.source, p.backend))
        return AnnotatedBatches(records, batch_size, transformer, setup.param.annotated_data_param,
                                self.with_labels(), p.rand_skip, rng)


@register_layer("DenseImageData")
class DenseImageData(PrefetchingData):
    """SegNet's image + label image pairs: ``dense_image_data_param { source root_folder
    batch_size shuffle rand_skip new_height new_width is_color }``.

    ``source`` lists ``<image> <label image>`` pairs; labels are read in grey (resized with
    nearest-neighbour interpolation) and keep their values; the image goes through
    ``transform_param``. See :mod:`torchcaffe.data.segmentation`.

    Shapes: () -> data (batch_size, C, h, w), label (batch_size, 1, h, w).

    Differs from SegNet: ``mirror`` and ``crop_size`` are applied to image and label alike
    (SegNet refuses them); the SegNet forks' own ``mean_file``/``mirror``/``crop_*`` fields of
    ``dense_image_data_param`` are refused: put them in ``transform_param``.
    """

    exact_tops = 2
    origin = "SegNet (alexgkendall/caffe-segnet)"

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        from ..data.samples import sample_paths

        paths = sample_paths()
        return (Sample(f"dense_image_data_param {{ source: '{paths['pairs']}' root_folder: '{paths['root']}' "
                       "batch_size: 2 } transform_param { scale: 0.1 }", bottoms=(), tops=2, gradcheck=False,
                       note="9x10 images with class maps"),)

    def make_loader(self, setup: LayerSetup):
        import cv2

        from ..data.lists import read_pairs
        from ..data.loaders import ListOrder, check_new_size, generators
        from ..data.segmentation import PairedBatches, keep_labels
        from ..data.transformer import DataTransformer

        p = setup.param.dense_image_data_param
        own = [n for n in ("mean_file", "mirror", "crop_width", "crop_height") if p.HasField(n)]
        if own:
            raise self.fail(f"dense_image_data_param.{', '.join(own)} is not supported; give the "
                            f"transformation in transform_param")
        batch_size = _check_batch_size(self, "dense_image_data_param.batch_size", p.batch_size)
        transform_rng, shuffle_rng, skip_rng = generators(_seed(), 3)
        transformer = DataTransformer(setup.param.transform_param, setup.phase, transform_rng)
        order = ListOrder(read_pairs(p.source, "dense_image_data_param.source"), p.source, p.shuffle,
                          p.rand_skip, shuffle_rng, skip_rng)
        return PairedBatches(order, p.root_folder, batch_size, check_new_size(p.new_height, p.new_width),
                             p.is_color, transformer, cv2.INTER_NEAREST, keep_labels)


@register_layer("ImageLabelmapData")
class ImageLabelmapData(PrefetchingData):
    """HED's image + edge map pairs: ``image_data_param { source root_folder batch_size shuffle
    rand_skip new_height new_width is_color }``.

    Edge maps are read in grey, resized bilinearly with the image, and scaled to 0/1 as HED does
    (``map / 255`` rounded). One random crop (``crop_size``) and mirror coin serve both, in
    both phases (HED's ``LocTransform`` crops at random in TEST too); the image also gets mean
    and scale. See :mod:`torchcaffe.data.segmentation`.

    Shapes: () -> data (batch_size, C, h, w), label (batch_size, 1, h, w).
    """

    exact_tops = 2
    origin = "HED (s9xie/hed)"

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        from ..data.samples import sample_paths

        paths = sample_paths()
        return (Sample(f"image_data_param {{ source: '{paths['edges']}' root_folder: '{paths['root']}' "
                       "batch_size: 2 } transform_param { crop_size: 5 mirror: true mean_value: 100 }",
                       bottoms=(), tops=2, phase=TEST, gradcheck=False,
                       note="edge maps to 0/1, crop random in TEST too"),)

    def make_loader(self, setup: LayerSetup):
        import cv2

        from ..data.lists import read_pairs
        from ..data.loaders import ListOrder, check_new_size, generators
        from ..data.segmentation import PairedBatches, hed_edge_labels
        from ..data.transformer import DataTransformer

        p = setup.param.image_data_param
        batch_size = _check_batch_size(self, "image_data_param.batch_size", p.batch_size)
        transform_rng, shuffle_rng, skip_rng = generators(_seed(), 3)
        transformer = DataTransformer(setup.param.transform_param, caffe_pb2.TRAIN, transform_rng)
        order = ListOrder(read_pairs(p.source, "image_data_param.source"), p.source, p.shuffle, p.rand_skip,
                          shuffle_rng, skip_rng)
        return PairedBatches(order, p.root_folder, batch_size, check_new_size(p.new_height, p.new_width),
                             p.is_color, transformer, cv2.INTER_LINEAR, hed_edge_labels)


@register_layer("ImageSegData")
class ImageSegData(PrefetchingData):
    """DeepLab's images with segmentation labels: ``image_data_param { source root_folder
    batch_size shuffle rand_skip new_height new_width is_color label_type ignore_label }`` and
    ``transform_param { mean_value scale mirror crop_size | crop_height crop_width
    scale_factors }``.

    Images smaller than the crop are padded (image with the mean values, label with
    ``ignore_label``, 255 by default) at the bottom and right; see
    :mod:`torchcaffe.data.segmentation` for the whole transformation.

    Shapes: () -> data (batch_size, C, h, w), label (batch_size, 1, h, w), and optionally
    data_dim (batch_size, 1, 1, 2) holding each image's (height, width) capped at (h, w).
    """

    min_tops = 1
    max_tops = 3
    origin = "DeepLab v2 (deeplab-public-ver2; also hszhao/PSPNet)"

    @classmethod
    def _samples(cls) -> tuple[Sample, ...]:
        from ..data.samples import sample_paths

        paths = sample_paths()
        return (
            Sample(f"image_data_param {{ source: '{paths['segments']}' root_folder: '{paths['root']}' "
                   "batch_size: 2 label_type: PIXEL } transform_param { crop_size: 9 mirror: true "
                   "mean_value: 1 mean_value: 2 mean_value: 3 }", bottoms=(), tops=3, gradcheck=False,
                   note="6x7 images padded to the 9x9 crop, data_dim top"),
            Sample(f"image_data_param {{ source: '{paths['segments']}' root_folder: '{paths['root']}' "
                   "batch_size: 1 label_type: NONE } transform_param { crop_height: 4 crop_width: 5 "
                   "scale_factors: 0.5 scale_factors: 1 }", bottoms=(), tops=2, phase=TEST, gradcheck=False,
                   note="no labels (all ignore_label), DeepLab's crop_height/width and scale factors"),
        )

    def make_loader(self, setup: LayerSetup):
        from ..data.lists import read_segmentation_list
        from ..data.loaders import ListOrder, generators
        from ..data.segmentation import SegmentationBatches

        p = setup.param.image_data_param
        _check_batch_size(self, "image_data_param.batch_size", p.batch_size)
        label_type = p.label_type
        if p.HasField("has_label") and not p.has_label:  # DeepLab v1's switch
            label_type = caffe_pb2.ImageDataParameter.NONE
        rng, shuffle_rng, skip_rng = generators(_seed(), 3)
        entries = read_segmentation_list(p.source, label_type != caffe_pb2.ImageDataParameter.NONE)
        order = ListOrder(entries, p.source, p.shuffle, p.rand_skip, shuffle_rng, skip_rng)
        return SegmentationBatches(order, p, setup.param.transform_param, setup.phase, label_type, rng,
                                   self.num_tops)


@register_layer("MemoryData")
class MemoryData(Layer):
    """Batches from arrays handed in by code: ``memory_data_param { batch_size channels height
    width }``.

    :meth:`set_input_arrays` (pycaffe's ``net.set_input_arrays``) or :meth:`reset` give N
    images (N, channels, height, width) and N labels, N a multiple of ``batch_size``; every
    forward returns the next ``batch_size`` of them, wrapping around. The arrays are used as
    they are — not copied, not transformed (Caffe's ``Reset``); :meth:`add_datum_vector` and
    :meth:`add_mat_vector` transform Datums or images with ``transform_param`` first.

    Shapes: () -> data (batch_size, channels, height, width), label (batch_size,).

    Differs from Caffe: before any data is given, the tops are zeros and a warning is logged
    (Caffe stops with "MemoryDataLayer needs to be initialized by calling Reset"), so that a net
    can be built, shaped and exported before it is fed. Caffe reshapes the label to
    (batch_size, 1, 1, 1) at the first forward; here it stays (batch_size,).
    """

    exact_bottoms = 0
    exact_tops = 2
    differentiable = False
    samples = (Sample("memory_data_param { batch_size: 2 channels: 3 height: 4 width: 5 }", bottoms=(), tops=2,
                      gradcheck=False, note="no arrays given yet: zero tops"),)

    def __init__(self, setup: LayerSetup):
        super().__init__(setup)
        p = setup.param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = (int(v) for v in (p.batch_size, p.channels,
                                                                                    p.height, p.width))
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.fail("batch_size, channels, height and width must be given and positive in "
                            f"memory_data_param, got {self.batch_size}, {self.channels}, {self.height}, "
                            f"{self.width}")
        self.transform_param = setup.param.transform_param
        self.has_transform_param = setup.param.HasField("transform_param")
        self.phase_for_transform = setup.phase
        self.register_buffer("_device", torch.zeros(0), persistent=False)
        self.data: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.position = 0
        self._transformer = None
        self._warned = False

    def top_shapes(self, bottom_shapes):
        return [torch.Size((self.batch_size, self.channels, self.height, self.width)),
                torch.Size((self.batch_size,))]

    def set_input_arrays(self, data, labels) -> None:
        """pycaffe's ``Net.set_input_arrays(data, labels)``: ``data`` (N, channels, height,
        width), ``labels`` (N,) or (N, 1, 1, 1), N a multiple of ``batch_size``. float32
        C-contiguous arrays are used in place (later changes to them are seen, as in Caffe);
        other arrays are converted once."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        expected = (self.channels, self.height, self.width)
        if data.ndim != 4 or data.shape[1:] != expected:
            raise self.fail(f"set_input_arrays: data must be (N, {', '.join(map(str, expected))}), got "
                            f"shape {data.shape}")
        if labels.shape not in ((data.shape[0],), (data.shape[0], 1, 1, 1)):
            raise self.fail(f"set_input_arrays: labels must be ({data.shape[0]},) or "
                            f"({data.shape[0]}, 1, 1, 1) to match the data, got shape {labels.shape}")
        self.reset(data, labels.reshape(-1), data.shape[0])

    def reset(self, data, labels, n: int) -> None:
        """Caffe's ``Reset(data, labels, n)``: serve the first ``n`` items of ``data``/``labels``
        (``n`` a multiple of ``batch_size``) from the start."""
        n = int(n)
        if n <= 0 or n % self.batch_size:
            raise self.fail(f"the number of items ({n}) must be a positive multiple of the batch size "
                            f"({self.batch_size})")
        if self.has_transform_param:
            log.warning("%s: arrays given to reset/set_input_arrays are not transformed (as in Caffe)",
                        self.label)
        self.data = torch.as_tensor(data).reshape(-1, self.channels, self.height, self.width)[:n]
        self.labels = torch.as_tensor(labels).reshape(-1)[:n]
        if self.data.shape[0] < n or self.labels.shape[0] < n:
            raise self.fail(f"reset: n = {n} but only {self.data.shape[0]} images and "
                            f"{self.labels.shape[0]} labels were given")
        self.position = 0

    def set_batch_size(self, batch_size: int) -> None:
        """Caffe's ``set_batch_size``: serve batches of another size from now on."""
        if batch_size <= 0:
            raise self.fail(f"batch_size must be > 0, got {batch_size}")
        self.batch_size = int(batch_size)

    def add_datum_vector(self, datums) -> None:
        """Caffe's ``AddDatumVector``: Datums transformed by ``transform_param``, with their labels."""
        from ..data.datum import datum_image

        images = [datum_image(d, f"{self.label}: datum {i}", self._decode_color()) for i, d in enumerate(datums)]
        self._add_transformed(images, [d.label for d in datums])

    def add_mat_vector(self, images, labels) -> None:
        """Caffe's ``AddMatVector``: OpenCV images (H, W, C) transformed by ``transform_param``."""
        from ..data.image import to_chw

        images = [to_chw(np.asarray(im)[:, :, None] if np.asarray(im).ndim == 2 else np.asarray(im)) for im in images]
        self._add_transformed(images, list(labels))

    def _decode_color(self):
        return self._get_transformer().decode_color

    def _get_transformer(self):
        if self._transformer is None:
            from ..data.loaders import generators
            from ..data.transformer import DataTransformer

            try:
                self._transformer = DataTransformer(self.transform_param, self.phase_for_transform,
                                                    generators(_seed(), 1)[0])
            except DataError as err:
                raise self.fail(str(err)) from None
        return self._transformer

    def _add_transformed(self, images, labels) -> None:
        if not images or len(images) % self.batch_size or len(images) != len(labels):
            raise self.fail(f"add {len(images)} images with {len(labels)} labels: there must be a "
                            f"positive multiple of the batch size ({self.batch_size}), one label each")
        transformer = self._get_transformer()
        try:
            data = np.stack([transformer.transform(image) for image in images])
        except DataError as err:
            raise self.fail(str(err)) from None
        expected = (self.channels, self.height, self.width)
        if data.shape[1:] != expected:
            raise self.fail(f"the transformed images are {data.shape[1:]} but memory_data_param says {expected}")
        self.data = torch.from_numpy(data)
        self.labels = torch.tensor(labels, dtype=torch.float32)
        self.position = 0

    def forward(self):
        anchor = self._device
        if self.data is None:
            if not self._warned:
                log.warning("%s: no data yet (call set_input_arrays or reset); the tops are zeros", self.label)
                self._warned = True
            data = anchor.new_zeros((self.batch_size, self.channels, self.height, self.width))
            return data, anchor.new_zeros((self.batch_size,))
        n = self.data.shape[0]
        if n % self.batch_size:
            raise self.fail(f"{n} items are not a multiple of the batch size {self.batch_size}")
        rows = slice(self.position, self.position + self.batch_size)
        self.position = (self.position + self.batch_size) % n
        return (self.data[rows].to(anchor.device, anchor.dtype), self.labels[rows].to(anchor.device, anchor.dtype))


# -- sample files for the generic layer tests -----------------------------------------------------

class _LazySamples:
    """A ``samples`` table built on first access: the HDF5 layers' samples need files on disk,
    which are written then (into a temporary folder), never at import."""

    def __init__(self):
        self.value = None

    def __get__(self, obj, cls):
        if self.value is None:
            self.value = cls._samples()
        return self.value


HDF5Data.samples = _LazySamples()
HDF5Output.samples = _LazySamples()
for _reader in (Data, ImageData, WindowData, AnnotatedData, DenseImageData, ImageLabelmapData, ImageSegData):
    _reader.samples = _LazySamples()
_SAMPLE_FILES: dict[str, str] = {}


def sample_files() -> dict[str, str]:
    """Small HDF5 files for the samples (made once per process in a temporary folder): ``list``
    names two files holding datasets ``t0`` (rows of 2x3) and ``t1`` (labels), 4 and 2 rows;
    ``out`` is where HDF5Output's sample writes."""
    if not _SAMPLE_FILES:
        import atexit
        import shutil
        import tempfile

        import h5py

        folder = tempfile.mkdtemp(prefix="torchcaffe-hdf5-samples-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        names = []
        for i, rows in enumerate((4, 2)):
            path = os.path.join(folder, f"part{i}.h5")
            with h5py.File(path, "w") as h5:
                h5.create_dataset("t0", data=np.arange(rows * 6, dtype=np.float64).reshape(rows, 2, 3) + 100 * i)
                h5.create_dataset("t1", data=np.arange(rows, dtype=np.int32) + 10 * i)
            names.append(path)
        listing = os.path.join(folder, "files.txt")
        with open(listing, "w") as f:
            f.write("\n".join(names) + "\n")
        _SAMPLE_FILES.update(list=listing, out=os.path.join(folder, "out.h5"))
    return _SAMPLE_FILES
