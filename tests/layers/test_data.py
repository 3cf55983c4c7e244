"""HDF5Data and HDF5Output: what the generic sample table cannot show (row order across files,
wrap-around, shuffling, conversions, errors, the files HDF5Output writes)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from torchcaffe.errors import NetError

from .harness import make_layer


def write_files(folder, rows=(4, 2), name="data", label="label"):
    paths = []
    for i, n in enumerate(rows):
        path = folder / f"part{i}.h5"
        with h5py.File(path, "w") as h5:
            h5.create_dataset(name, data=(np.arange(n * 3, dtype=np.float64).reshape(n, 3) + 100 * i))
            h5.create_dataset(label, data=np.arange(n, dtype=np.int16) + 10 * i)
        paths.append(str(path))
    listing = folder / "list.txt"
    listing.write_text("  ".join(paths[:1]) + "\n" + "\n".join(paths[1:]) + "\n")
    return listing


def hdf5_data(listing, batch, shuffle=False, tops=("data", "label")):
    params = f"hdf5_data_param {{ source: '{listing}' batch_size: {batch} shuffle: {str(shuffle).lower()} }}"
    return make_layer("HDF5Data", params, tops=len(tops), top_names=list(tops))


def test_rows_in_file_order_with_wrap_around(tmp_path):
    layer = hdf5_data(write_files(tmp_path), batch=3)
    assert layer.top_shapes([]) == [torch.Size([3, 3]), torch.Size([3])]
    labels = [layer()[1].tolist() for _ in range(4)]
    # file 0 has labels 0..3, file 1 has 10, 11; batches run across files and wrap to the start
    assert labels == [[0, 1, 2], [3, 10, 11], [0, 1, 2], [3, 10, 11]]
    data, label = layer()
    assert data.dtype == torch.float32 and label.dtype == torch.float32  # int16 labels become floats
    assert data[0].tolist() == [0.0, 1.0, 2.0]


def test_a_batch_longer_than_the_data_cycles(tmp_path):
    layer = hdf5_data(write_files(tmp_path, rows=(2,)), batch=5)
    assert layer()[1].tolist() == [0, 1, 0, 1, 0]
    assert layer()[1].tolist() == [1, 0, 1, 0, 1]


def test_shuffle_permutes_files_and_rows_with_torchs_rng(tmp_path):
    listing = write_files(tmp_path, rows=(5, 3))
    torch.manual_seed(0)
    layer = hdf5_data(listing, batch=8, shuffle=True)
    epochs = [sorted(layer()[1].tolist()) for _ in range(3)]
    assert all(e == [0, 1, 2, 3, 4, 10, 11, 12] for e in epochs), "each pass serves every row once"
    orders = {tuple(layer()[1].tolist()) for _ in range(6)}
    assert len(orders) > 1, "rows are reshuffled at each pass"
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        again = hdf5_data(listing, batch=3, shuffle=True)
        runs.append([again()[1].tolist() for _ in range(5)])
    assert runs[0] == runs[1], "seeded: reproducible"


def test_relative_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    write_files(tmp_path)
    (tmp_path / "rel.txt").write_text("part0.h5\n")
    monkeypatch.chdir(tmp_path)
    assert hdf5_data("rel.txt", batch=2)()[1].tolist() == [0, 1]


@pytest.mark.parametrize("case,words", [
    ("missing_dataset", ["part0.h5", "no dataset 'label'", "'data'"]),
    ("row_mismatch", ["same number of rows", "'data': 4", "'label': 3"]),
    ("empty_source", ["lists no HDF5 file"]),
    ("no_source_file", ["cannot read hdf5_data_param.source", "absent.txt"]),
    ("shape_mismatch", ["part1.h5", "rows of shape (4,)", "(3,)"]),
])
def test_errors_name_the_file_and_dataset(tmp_path, case, words):
    listing = tmp_path / "list.txt"
    if case == "missing_dataset":
        with h5py.File(tmp_path / "part0.h5", "w") as h5:
            h5.create_dataset("data", data=np.zeros((2, 3)))
        listing.write_text(str(tmp_path / "part0.h5"))
    elif case == "row_mismatch":
        with h5py.File(tmp_path / "part0.h5", "w") as h5:
            h5.create_dataset("data", data=np.zeros((4, 3)))
            h5.create_dataset("label", data=np.zeros(3))
        listing.write_text(str(tmp_path / "part0.h5"))
    elif case == "empty_source":
        listing.write_text("\n  \n")
    elif case == "no_source_file":
        listing = tmp_path / "absent.txt"
    else:
        write_files(tmp_path)
        with h5py.File(tmp_path / "part1.h5", "w") as h5:
            h5.create_dataset("data", data=np.zeros((2, 4)))
            h5.create_dataset("label", data=np.zeros(2))
        listing = tmp_path / "list.txt"
    with pytest.raises(NetError) as info:
        hdf5_data(listing, batch=2)
    message = str(info.value)
    assert 'layer "L" (HDF5Data)' in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_settings_caffe_refuses(tmp_path):
    listing = write_files(tmp_path)
    with pytest.raises(NetError, match="batch_size must be > 0"):
        hdf5_data(listing, batch=0)
    with pytest.raises(NetError, match="does not transform data"):
        make_layer("HDF5Data", f"hdf5_data_param {{ source: '{listing}' batch_size: 1 }} "
                   "transform_param { scale: 2 }", tops=1, top_names=["data"])


def test_hdf5_output_writes_legacy_4d_datasets(tmp_path):
    out = tmp_path / "out.h5"
    layer = make_layer("HDF5Output", f"hdf5_output_param {{ file_name: '{out}' }}", (2, 3), (2,), tops=0)
    with h5py.File(out, "r") as h5:
        assert list(h5) == [], "created empty at setup, as Caffe's"
    data, label = torch.arange(6.0).reshape(2, 3), torch.tensor([1.0, 0.0])
    assert layer(data, label) == ()
    with h5py.File(out, "r") as h5:
        assert h5["data"].shape == (2, 3, 1, 1) and h5["label"].shape == (2, 1, 1, 1)
        np.testing.assert_array_equal(h5["data"][()].reshape(2, 3), data.numpy())
    layer(data * 2, label)  # every forward rewrites the file (Caffe can write only once)
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5["data"][()].reshape(2, 3), 2 * data.numpy())
    with pytest.raises(NetError, match="same number of rows"):
        layer(data, torch.zeros(3))
