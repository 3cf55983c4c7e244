"""Layers that bring data into the net (Input, DummyData, HDF5Data) or write it out (HDF5Output).

(The database and image readers — Data, ImageData, MemoryData, WindowData — come with the data
pipeline.)
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, LayerSetup, Sample
from .registry import register_layer


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
