"""The data layers: what the generic sample table cannot show.

HDF5Data and HDF5Output (row order across files, wrap-around, shuffling, conversions, errors, the
files HDF5Output writes); then the readers — Data, ImageData, MemoryData, WindowData, AnnotatedData,
DenseImageData, ImageLabelmapData, ImageSegData — each against databases, images and lists the
test writes, and their bad-data errors."""
from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch

import torchcaffe
from torchcaffe.data.transformer import DataTransformer
from torchcaffe.errors import NetError
from torchcaffe.proto import caffe_pb2

from ..data.fixtures import random_images, write_datums, write_list, write_png
from .harness import expect_error, make_layer, net_from


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


# ================================================================================================
# The database and image readers (Data, ImageData, MemoryData, WindowData and the forks' layers)
# ================================================================================================


def data_layer(source, batch, backend="LMDB", transform="", extra="", tops=2, phase=torchcaffe.TRAIN, seed=0):
    params = (f"data_param {{ source: '{source}' batch_size: {batch} backend: {backend} {extra} }} "
              f"transform_param {{ {transform} }}")
    return make_layer("Data", params, tops=tops, phase=phase, seed=seed)


def chw(image_hwc):
    return np.ascontiguousarray(image_hwc.transpose(2, 0, 1))


# -- Data -----------------------------------------------------------------------------------------

def test_data_serves_raw_datums_in_key_order_wrapping_around(tmp_path):
    images = random_images(5)
    layer = data_layer(write_datums(tmp_path / "db", images), batch=3, phase=torchcaffe.TEST)
    assert layer.top_shapes([]) == [torch.Size([3, 3, 6, 5]), torch.Size([3])]
    first, second = layer(), layer()
    assert first[1].tolist() == [0, 1, 2] and second[1].tolist() == [3, 4, 0]
    np.testing.assert_array_equal(first[0][1].numpy(), images[1].astype(np.float32))
    np.testing.assert_array_equal(second[0][2].numpy(), images[0].astype(np.float32))


def test_data_applies_mean_values_and_scale_as_caffe(tmp_path):
    images = random_images(2)
    layer = data_layer(write_datums(tmp_path / "db", images), batch=2, phase=torchcaffe.TEST,
                       transform="scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30")
    data, _ = layer()
    mean = np.array([10, 20, 30], np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(data[0].numpy(), (images[0].astype(np.float32) - mean) * np.float32(0.5))


def test_data_reads_leveldb_by_default_and_decodes_encoded_images_to_bgr(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0] = 200  # blue in OpenCV's BGR order
    image[1, 2] = (1, 2, 3)
    source = write_datums(tmp_path / "db", [chw(image)], backend="leveldb", encoding="png")
    layer = make_layer("Data", f"data_param {{ source: '{source}' batch_size: 1 }}", tops=1, seed=0)
    (data,) = layer()
    assert data.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(data[0].numpy(), chw(image).astype(np.float32))


def test_data_decodes_jpeg_like_opencv(tmp_path):
    image = random_images(1, (3, 16, 16))[0]
    source = write_datums(tmp_path / "db", [image], encoding="jpg")
    (data,) = data_layer(source, batch=1, tops=1)()
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(image.transpose(1, 2, 0)))
    expected = cv2.imdecode(buffer, cv2.IMREAD_ANYCOLOR).transpose(2, 0, 1)
    np.testing.assert_array_equal(data[0].numpy(), expected.astype(np.float32))


def test_force_encoded_color_and_force_gray_choose_the_channels(tmp_path):
    grey = random_images(1, (1, 4, 5))[0]
    colour = random_images(1, (3, 4, 5), seed=1)[0]
    grey_db = write_datums(tmp_path / "grey", [grey], encoding="png")
    colour_db = write_datums(tmp_path / "colour", [colour], encoding="png")
    assert data_layer(grey_db, 1, tops=1)()[0].shape == (1, 1, 4, 5)
    (forced,) = data_layer(grey_db, 1, tops=1, extra="force_encoded_color: true")()
    assert forced.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(forced[0, 0].numpy(), grey[0].astype(np.float32))
    (same,) = data_layer(grey_db, 1, tops=1, transform="force_color: true")()
    assert torch.equal(same, forced)
    (gray,) = data_layer(colour_db, 1, tops=1, transform="force_gray: true")()
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(colour.transpose(1, 2, 0)))
    expected = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)  # OpenCV's own grey decoding
    assert gray.shape == (1, 1, 4, 5)
    np.testing.assert_array_equal(gray[0, 0].numpy(), expected.astype(np.float32))


def test_data_reads_float_data(tmp_path):
    values = [np.arange(12, dtype=np.float32).reshape(1, 3, 4) / 7]
    (data,) = data_layer(write_datums(tmp_path / "db", values), 1, tops=1, transform="scale: 2")()
    np.testing.assert_allclose(data[0].numpy(), values[0] * 2, rtol=0)


def test_data_rand_skip_starts_further_in_and_repeats_with_the_seed(tmp_path):
    source = write_datums(tmp_path / "db", random_images(5))
    firsts = {data_layer(source, 1, extra="rand_skip: 5", seed=s)()[1].item() for s in range(12)}
    assert len(firsts) > 1 and firsts <= {0, 1, 2, 3, 4}
    again = [data_layer(source, 1, extra="rand_skip: 5", seed=3)()[1].item() for _ in range(2)]
    assert again[0] == again[1]


def test_data_batches_do_not_depend_on_prefetch(tmp_path):
    source = write_datums(tmp_path / "db", random_images(7, (3, 8, 8)))
    runs = []
    for prefetch in (0, 1, 4):
        layer = data_layer(source, 3, transform="crop_size: 5 mirror: true", extra=f"prefetch: {prefetch}", seed=11)
        runs.append([torch.cat([t.flatten() for t in layer()]) for _ in range(5)])
        layer.close()
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_data_top_shape_from_the_first_record_and_per_batch_size(tmp_path):
    images = [random_images(1, (3, 6, 5))[0], random_images(1, (3, 7, 4))[0]]
    layer = data_layer(write_datums(tmp_path / "db", images), 1, tops=1)
    assert layer.top_shapes([]) == [torch.Size([1, 3, 6, 5])]
    assert layer()[0].shape == (1, 3, 6, 5) and layer()[0].shape == (1, 3, 7, 4), "batch size 1: shapes may vary"
    layer = data_layer(write_datums(tmp_path / "db2", images), 2, tops=1)
    expect_error(["db2 key '00000001_im1'", "3 x 7 x 4", "3 x 6 x 5", "one size"], layer)


def test_data_layer_in_a_net_with_cuda_style_device_following(tmp_path):
    source = write_datums(tmp_path / "db", random_images(4))
    net = net_from(f"""layer {{ name: "d" type: "Data" top: "data" top: "label"
                     data_param {{ source: "{source}" backend: LMDB batch_size: 2 }} }}
                     layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                     inner_product_param {{ num_output: 2 }} }}""")
    net.double()
    out = net.forward()
    assert net.blobs["data"].data.dtype == np.float64 and net.blobs["label"].data.tolist() == [0, 1]
    assert out["ip"].shape == (2, 2)


@pytest.mark.parametrize("case,words", [
    ("missing", ["layer \"L\" (Data)", "absent_db", "no such database folder"]),
    ("empty", ["empty_db", "is empty"]),
    ("wrong_backend", ["is an LMDB database", "backend: LMDB"]),
    ("corrupt", ["bad_db key '00000001_x'", "not a valid Datum"]),
    ("short", ["short_db key 'k'", "holds 5 bytes", "= 90"]),
    ("crop", ["crop 9 x 9 is larger than the 6 x 5 image"]),
    ("batch", ["data_param.batch_size must be > 0"]),
])
def test_data_errors_name_the_database_and_key(tmp_path, case, words):
    from torchcaffe.data.db import create_database

    backend, transform, batch = "LMDB", "", 2
    source = tmp_path / f"{case}_db"
    if case == "missing":
        source = tmp_path / "absent_db"
    elif case == "empty":
        with create_database(str(source), "lmdb"):
            pass
    elif case == "wrong_backend":
        write_datums(source, random_images(1))
        backend = "LEVELDB"
    elif case == "corrupt":
        source = tmp_path / "bad_db"
        with create_database(str(source), "lmdb") as db:
            db.put(b"00000000_x", caffe_pb2.Datum(channels=1, height=1, width=1, data=b"\x01").SerializeToString())
            db.put(b"00000001_x", b"\xff\xff\xff garbage")
    elif case == "short":
        with create_database(str(source), "lmdb") as db:
            db.put(b"k", caffe_pb2.Datum(channels=3, height=6, width=5, data=b"12345").SerializeToString())
    elif case == "crop":
        write_datums(source, random_images(1))
        transform = "crop_size: 9"
    else:
        write_datums(source, random_images(1))
        batch = 0
    build = lambda: data_layer(source, batch, backend=backend, transform=transform)  # noqa: E731
    if case == "corrupt":
        layer = build()
        expect_error(words, layer)
        expect_error(words, layer)  # the error stays: the prefetch thread has ended
        return
    expect_error(words, build)


def test_a_loading_error_in_the_prefetch_thread_reaches_the_net(tmp_path):
    from torchcaffe.data.db import create_database

    source = tmp_path / "db"
    good = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\x01\x02\x03\x04", label=1)
    with create_database(str(source), "lmdb") as db:
        for i in range(3):
            db.put(f"{i:08d}".encode(), good.SerializeToString())
        db.put(b"00000003", caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\x01").SerializeToString())
    net = net_from(f"""layer {{ name: "feed" type: "Data" top: "data" top: "label"
                     data_param {{ source: "{source}" backend: LMDB batch_size: 2 prefetch: 3 }} }}""")
    net.forward()
    message = expect_error(['layer "feed" (Data)', "key '00000003'", "holds 1 bytes"], net.forward)
    assert "Traceback" not in message


# -- ImageData ------------------------------------------------------------------------------------

def image_folder(tmp_path, count=4, shape=(6, 7, 3), seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
    for i, image in enumerate(images):
        write_png(tmp_path / f"im {i}.png", image)  # a space in the name: the label follows the last one
    listing = write_list(tmp_path / "list.txt", [f"im {i}.png {10 + i}" for i in range(count)])
    return images, listing


def image_data(listing, root, batch, extra="", transform="", tops=2, phase=torchcaffe.TRAIN, seed=0):
    params = (f"image_data_param {{ source: '{listing}' root_folder: '{root}/' batch_size: {batch} {extra} }} "
              f"transform_param {{ {transform} }}")
    return make_layer("ImageData", params, tops=tops, phase=phase, seed=seed)


def test_image_data_reads_the_list_in_order_in_bgr(tmp_path):
    images, listing = image_folder(tmp_path)
    layer = image_data(listing, tmp_path, batch=3)
    assert layer.top_shapes([]) == [torch.Size([3, 3, 6, 7]), torch.Size([3])]
    data, labels = layer()
    assert labels.tolist() == [10, 11, 12] and layer()[1].tolist() == [13, 10, 11]
    np.testing.assert_array_equal(data[2].numpy(), chw(images[2]).astype(np.float32))


def test_image_data_grey_and_resize_like_opencv(tmp_path):
    images, listing = image_folder(tmp_path)
    layer = image_data(listing, tmp_path, batch=1, extra="is_color: false new_height: 4 new_width: 9", tops=1)
    (data,) = layer()
    grey = cv2.imread(str(tmp_path / "im 0.png"), cv2.IMREAD_GRAYSCALE)
    expected = cv2.resize(grey, (9, 4), interpolation=cv2.INTER_LINEAR)
    assert data.shape == (1, 1, 4, 9)
    np.testing.assert_array_equal(data[0, 0].numpy(), expected.astype(np.float32))


def test_image_data_shuffle_serves_every_image_once_per_pass(tmp_path):
    _, listing = image_folder(tmp_path, count=5)
    layer = image_data(listing, tmp_path, batch=5, extra="shuffle: true", seed=4)
    passes = [layer()[1].tolist() for _ in range(4)]
    assert all(sorted(p) == [10, 11, 12, 13, 14] for p in passes)
    assert len({tuple(p) for p in passes}) > 1, "reshuffled after each pass"
    again = image_data(listing, tmp_path, batch=5, extra="shuffle: true", seed=4)
    assert again()[1].tolist() == passes[0], "seeded: repeatable"


@pytest.mark.parametrize("case,words", [
    ("missing_image", ["list.txt", "'gone.png'", "no such image file"]),
    ("empty_list", ["holds no images"]),
    ("bad_label", ["list.txt:2", "'x'", "not an integer"]),
    ("new_size", ["new_height (4) and new_width (0) must be set together"]),
])
def test_image_data_errors(tmp_path, case, words):
    images, listing = image_folder(tmp_path, count=2)
    extra = ""
    if case == "missing_image":
        write_list(listing, ["im 0.png 1", "gone.png 2"])
    elif case == "empty_list":
        write_list(listing, ["", "  "])
    elif case == "bad_label":
        write_list(listing, ["im 0.png 1", "im 1.png x"])
    else:
        extra = "new_height: 4"
    if case == "missing_image":
        layer = image_data(listing, tmp_path, batch=2)
        expect_error(words, layer)
    else:
        expect_error(words, image_data, listing, tmp_path, 2, extra)


# -- MemoryData -----------------------------------------------------------------------------------

def memory_data(batch=2, transform="", **kwargs):
    params = f"memory_data_param {{ batch_size: {batch} channels: 1 height: 2 width: 3 }} {transform}"
    return make_layer("MemoryData", params, tops=2, **kwargs)


def test_memory_data_serves_the_arrays_in_batches_and_shares_them():
    layer = memory_data()
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([5, 6, 7, 8], dtype=np.float32)
    layer.set_input_arrays(data, labels)
    first, second, third = layer(), layer(), layer()
    assert first[1].tolist() == [5, 6] and second[1].tolist() == [7, 8] and third[1].tolist() == [5, 6]
    np.testing.assert_array_equal(second[0].numpy(), data[2:])
    data[2] += 100  # Caffe keeps a pointer to the caller's array
    assert layer()[0][0, 0, 0, 0].item() == 100 + 12
    layer.reset(data, labels, 2)
    assert layer()[1].tolist() == [5, 6]
    assert layer()[1].tolist() == [5, 6], "n = 2: the first two items only"


def test_memory_data_in_a_net_and_before_any_data(caplog):
    net = net_from("""layer { name: "mem" type: "MemoryData" top: "data" top: "label"
                      memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }""")
    with caplog.at_level("WARNING", logger="torchcaffe"):
        net.forward()
    assert not net.blobs["data"].data.any() and "set_input_arrays" in caplog.text
    net.layer_dict["mem"].set_input_arrays(np.ones((2, 1, 2, 3), np.float32), np.array([1.0, 2.0]))
    net.forward()
    assert net.blobs["label"].data.tolist() == [1, 2] and net.blobs["data"].data.all()


def test_memory_data_checks_like_pycaffe():
    layer = memory_data()
    expect_error(["data must be (N, 1, 2, 3)", "(4, 2, 2, 3)"], layer.set_input_arrays,
                 np.zeros((4, 2, 2, 3)), np.zeros(4))
    expect_error(["labels must be (4,)", "(3,)"], layer.set_input_arrays, np.zeros((4, 1, 2, 3)), np.zeros(3))
    expect_error(["multiple of the batch size (2)"], layer.set_input_arrays, np.zeros((3, 1, 2, 3)), np.zeros(3))
    expect_error(["must be given and positive"], make_layer, "MemoryData",
                 "memory_data_param { batch_size: 2 channels: 1 height: 0 width: 3 }", tops=2)


def test_memory_data_add_mat_vector_transforms():
    layer = make_layer("MemoryData", "memory_data_param { batch_size: 1 channels: 1 height: 2 width: 2 } "
                       "transform_param { crop_size: 2 scale: 2 }", tops=2, phase=torchcaffe.TEST)
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    layer.add_mat_vector([image], [3])
    data, label = layer()
    np.testing.assert_array_equal(data[0, 0].numpy(), image[0:2, 1:3].astype(np.float32) * 2)  # centred crop
    assert label.tolist() == [3]
    from torchcaffe.data.datum import array_to_datum

    layer.add_datum_vector([array_to_datum(image[None], 5)])
    data, label = layer()
    np.testing.assert_array_equal(data[0, 0].numpy(), image[0:2, 1:3].astype(np.float32) * 2)
    assert label.tolist() == [5]
    expect_error(["positive multiple of the batch size"], layer.add_mat_vector, [], [])


# -- WindowData -----------------------------------------------------------------------------------

def window_setup(tmp_path, windows, size=(20, 24), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    write_png(tmp_path / "w.png", image)
    lines = ["# 0", "w.png", "3", str(size[0]), str(size[1]), str(len(windows))] + list(windows)
    return image, write_list(tmp_path / "windows.txt", lines)


def window_data(listing, root, batch, fg_fraction, crop, extra="", transform="", seed=0):
    params = (f"window_data_param {{ source: '{listing}' root_folder: '{root}/' batch_size: {batch} "
              f"fg_fraction: {fg_fraction} {extra} }} transform_param {{ crop_size: {crop} {transform} }}")
    return make_layer("WindowData", params, tops=2, seed=seed)


def test_window_data_warps_windows_and_labels_them(tmp_path):
    image, listing = window_setup(tmp_path, ["3 0.8 2 3 11 15", "4 0.1 5 5 20 17"])
    layer = window_data(listing, tmp_path, batch=4, fg_fraction=0.5, crop=8,
                        extra="scale: 0.5", transform="mean_value: 10")
    data, labels = layer()
    assert labels.tolist() == [0, 0, 3, 3], "background first, then foreground"
    expected = cv2.resize(image[3:16, 2:12], (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(data[2].numpy(), (expected.astype(np.float32) - 10) * np.float32(0.5))
    background = cv2.resize(image[5:18, 5:21], (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(data[0].numpy(), (background.astype(np.float32) - 10) * np.float32(0.5))


def test_window_data_context_padding_leaves_zeros_outside_the_image(tmp_path):
    image, listing = window_setup(tmp_path, ["1 0.9 0 0 9 9"])
    layer = window_data(listing, tmp_path, batch=1, fg_fraction=1, crop=10, extra="context_pad: 2")
    data, _ = layer()
    # the box grown by 10/6 around its centre (5, 5) starts at -3: 3 scaled columns/rows are padding
    assert not data[0, :, :2, :].any() and not data[0, :, :, :2].any()
    assert data[0, :, 3:, 3:].any()


def test_window_data_mirror_flips_and_square_mode(tmp_path):
    image, listing = window_setup(tmp_path, ["1 0.9 4 2 9 17"])
    seen = set()
    for seed in range(6):
        layer = window_data(listing, tmp_path, batch=1, fg_fraction=1, crop=6, transform="mirror: true",
                            extra="crop_mode: 'square'", seed=seed)
        seen.add(layer()[0].flatten()[:5].tolist().__repr__())
    assert len(seen) == 2, "mirrored and not"


def test_window_data_errors(tmp_path):
    _, listing = window_setup(tmp_path, ["1 0.9 2 3 11 15"])
    expect_error(["no background window", "each batch takes 1"], window_data, listing, tmp_path, 2, 0.5, 6)
    expect_error(["needs transform_param.crop_size"], window_data, listing, tmp_path, 2, 1, 0)
    write_list(listing, ["# 1", "w.png", "3", "20", "24", "0"])
    expect_error(["windows.txt:1", "image index 1", "0, 1, 2"], window_data, listing, tmp_path, 1, 1, 6)
    write_list(listing, ["# 0", "nope.png", "3", "20", "24", "1", "1 0.9 1 1 5 5"])
    layer = window_data(listing, tmp_path, 1, 1, 6)
    expect_error(["windows.txt", "nope.png", "no such image file"], layer)


# -- AnnotatedData ----------------------------------------------------------------------------------

def annotated_db(path, images, boxes_per_image, typed=True):
    from torchcaffe.data.datum import encoded_datum
    from torchcaffe.data.db import create_database

    with create_database(str(path), "lmdb") as db:
        for i, (image, boxes) in enumerate(zip(images, boxes_per_image)):
            record = caffe_pb2.AnnotatedDatum()
            if typed:
                record.type = caffe_pb2.AnnotatedDatum.BBOX
            ok, buffer = cv2.imencode(".png", image)
            record.datum.CopyFrom(encoded_datum(buffer.tobytes(), 7 + i))
            for label, box, difficult in boxes:
                group = record.annotation_group.add(group_label=label)
                anno = group.annotation.add(instance_id=0)
                anno.bbox.xmin, anno.bbox.ymin, anno.bbox.xmax, anno.bbox.ymax = box
                anno.bbox.difficult = difficult
            db.put(f"{i:08d}".encode(), record.SerializeToString())
    return str(path)


def annotated(source, batch, transform="", extra="", tops=2, seed=0, phase=torchcaffe.TRAIN):
    params = (f"data_param {{ source: '{source}' batch_size: {batch} backend: LMDB }} "
              f"transform_param {{ {transform} }} annotated_data_param {{ {extra} }}")
    return make_layer("AnnotatedData", params, tops=tops, seed=seed, phase=phase)


def test_annotated_data_label_rows(tmp_path):
    images = [np.full((8, 10, 3), i * 40, np.uint8) for i in range(2)]
    boxes = [[(1, (0.1, 0.2, 0.5, 0.6), False), (3, (0.25, 0.25, 0.75, 1.0), True)], [(2, (0.0, 0.0, 1.0, 1.0), False)]]
    layer = annotated(annotated_db(tmp_path / "db", images, boxes), batch=2)
    assert layer.top_shapes([]) == [torch.Size([2, 3, 8, 10]), torch.Size([1, 1, 2, 8])]
    data, label = layer()
    assert label.shape == (1, 1, 3, 8)
    np.testing.assert_allclose(label[0, 0].numpy(), np.array([
        [0, 1, 0, 0.1, 0.2, 0.5, 0.6, 0], [0, 3, 0, 0.25, 0.25, 0.75, 1.0, 1], [1, 2, 0, 0, 0, 1, 1, 0]],
        np.float32), rtol=1e-6)
    assert data[1].eq(40).all()


def test_annotated_data_mirror_flips_boxes_and_resize_keeps_them(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    source = annotated_db(tmp_path / "db", [image], [[(1, (0.1, 0.2, 0.4, 0.6), False)]])
    rows = set()
    for seed in range(8):
        layer = annotated(source, 1, transform="mirror: true resize_param { height: 6 width: 12 }", seed=seed)
        data, label = layer()
        assert data.shape == (1, 3, 6, 12)
        rows.add(tuple(round(float(v), 5) for v in label[0, 0, 0, 3:7]))
    assert rows == {(0.1, 0.2, 0.4, 0.6), (0.6, 0.2, 0.9, 0.6)}


def test_annotated_data_samplers_crop_and_project_boxes(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    source = annotated_db(tmp_path / "db", [image], [[(1, (0.2, 0.2, 0.6, 0.7), False)]])
    sampler = ("batch_sampler { sampler { min_scale: 0.3 max_scale: 0.6 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }"
               " sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 50 }")
    layer = annotated(source, 1, transform="resize_param { height: 20 width: 20 } "
                      "emit_constraint { emit_type: CENTER }",
                      extra=sampler, seed=5)
    for _ in range(10):
        data, label = layer()
        assert data.shape == (1, 3, 20, 20)
        rows = label[0, 0].numpy()
        if rows[0, 0] == -1:
            continue
        assert ((rows[:, 3:7] >= 0) & (rows[:, 3:7] <= 1)).all()
        assert (rows[:, 5] > rows[:, 3]).all() and (rows[:, 6] > rows[:, 4]).all()


def test_annotated_data_expand_fills_with_the_mean_and_no_box_gives_minus_ones(tmp_path):
    image = np.full((10, 10, 3), 200, np.uint8)
    source = annotated_db(tmp_path / "db", [image], [[]])
    layer = annotated(source, 1, transform="mean_value: 104 mean_value: 117 mean_value: 123 "
                      "expand_param { prob: 1 max_expand_ratio: 3 }", seed=2)
    data, label = layer()
    assert label.tolist() == [[[[-1.0] * 8]]]
    values = set(np.unique(data.numpy()).tolist())
    assert values <= {0.0, 200 - 104.0, 200 - 117.0, 200 - 123.0} and 0.0 in values, "canvas = mean -> 0"


def test_annotated_data_without_types_gives_class_labels(tmp_path):
    images = [np.zeros((4, 4, 3), np.uint8)] * 2
    source = annotated_db(tmp_path / "db", images, [[], []], typed=False)
    layer = annotated(source, 2)
    assert layer.top_shapes([])[1] == torch.Size([2, 1, 1, 1])
    assert layer()[1].flatten().tolist() == [7, 8]


# -- the forks' image + label-image layers ----------------------------------------------------------

def pair_folder(tmp_path, label_values, count=2, shape=(6, 8), seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        labels = rng.choice(label_values, size=shape).astype(np.uint8)
        image = np.stack([labels, rng.integers(0, 256, shape), rng.integers(0, 256, shape)], -1).astype(np.uint8)
        write_png(tmp_path / f"img{i}.png", image)
        write_png(tmp_path / f"lab{i}.png", labels)
        lines.append(f"img{i}.png lab{i}.png")
    return write_list(tmp_path / "pairs.txt", lines)


def test_dense_image_data_crops_and_mirrors_image_and_label_together(tmp_path):
    listing = pair_folder(tmp_path, [0, 1, 2, 3])
    params = (f"dense_image_data_param {{ source: '{listing}' root_folder: '{tmp_path}/' batch_size: 2 }} "
              "transform_param { crop_size: 4 mirror: true scale: 2 }")
    for seed in range(4):
        data, label = make_layer("DenseImageData", params, tops=2, seed=seed)()
        assert data.shape == (2, 3, 4, 4) and label.shape == (2, 1, 4, 4)
        assert torch.equal(data[:, 0], label[:, 0] * 2), "channel 0 is the label map: same window and flip"
        assert set(label.unique().tolist()) <= {0, 1, 2, 3}


def test_image_labelmap_data_scales_edges_like_hed_and_crops_at_random_in_test(tmp_path):
    listing = pair_folder(tmp_path, [0, 127, 128, 255], count=1, shape=(9, 9))
    params = (f"image_data_param {{ source: '{listing}' root_folder: '{tmp_path}/' batch_size: 1 }} "
              "transform_param { crop_size: 5 }")
    layer = make_layer("ImageLabelmapData", params, tops=2, phase=torchcaffe.TEST, seed=0)
    windows = set()
    for _ in range(8):
        data, label = layer()
        assert set(label.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(label[:, 0], (data[:, 0] >= 128).float()), "127 -> 0, 128 -> 1"
        windows.add(tuple(data[0, 1].flatten()[:4].tolist()))
    assert len(windows) > 1, "HED crops at random in TEST too"


def test_image_seg_data_pads_with_mean_and_ignore_label(tmp_path):
    listing = pair_folder(tmp_path, [1, 2], count=1, shape=(5, 6))
    write_list(listing, ["img0.png lab0.png"])
    params = (f"image_data_param {{ source: '{listing}' root_folder: '{tmp_path}/' batch_size: 1 label_type: PIXEL }} "
              "transform_param { crop_size: 8 mean_value: 1 mean_value: 2 mean_value: 3 }")
    data, label, dims = make_layer("ImageSegData", params, tops=3, phase=torchcaffe.TEST, seed=0)()
    assert data.shape == (1, 3, 8, 8) and label.shape == (1, 1, 8, 8)
    # padded at the bottom and right; TEST crops the centre of the 8x8 padded image = all of it
    assert not data[0, :, 5:, :].any() and not data[0, :, :, 6:].any(), "pad = mean value, minus the mean = 0"
    assert label[0, 0, 5:, :].eq(255).all() and label[0, 0, :5, 6:].eq(255).all()
    assert torch.equal(label[0, 0, :5, :6], data[0, 0, :5, :6] + 1)
    assert dims.tolist() == [[[[5.0, 6.0]]]]


def test_image_seg_data_label_types(tmp_path):
    listing = pair_folder(tmp_path, [1], count=1, shape=(4, 4))
    write_list(listing, ["img0.png 7"])
    base = f"source: '{listing}' root_folder: '{tmp_path}/' batch_size: 1"
    _, label = make_layer("ImageSegData", f"image_data_param {{ {base} label_type: IMAGE }}", tops=2)()
    assert label.eq(7).all()
    _, label = make_layer("ImageSegData", f"image_data_param {{ {base} label_type: NONE ignore_label: 99 }}", tops=2)()
    assert label.eq(99).all()
    expect_error(["does not support mean_file"], make_layer, "ImageSegData",
                 f"image_data_param {{ {base} }} transform_param {{ mean_file: 'm' }}", tops=2)


def test_transformer_used_by_layers_is_the_one_documented():
    transformer = DataTransformer(caffe_pb2.TransformationParameter(crop_size=2), torchcaffe.TEST,
                                  np.random.default_rng(0))
    assert transformer.output_shape((3, 5, 4)) == (3, 2, 2)


def test_window_file_empty_is_an_error_at_set_up(tmp_path):
    listing = write_list(tmp_path / "windows.txt", [])
    expect_error(["windows.txt", "window file is empty"], window_data, listing, tmp_path, 1, 1, 6)


def test_a_solver_trains_and_tests_from_one_database(tmp_path):
    """Train and test nets read the same LMDB (one shared environment), each with its own cursor."""
    from google.protobuf import text_format

    images = [np.full((1, 4, 4), 10 * i, np.uint8) for i in range(6)]
    source = write_datums(tmp_path / "db", images, labels=[i % 2 for i in range(6)])
    net = f"""name: "tiny"
    layer {{ name: "d" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
             data_param {{ source: "{source}" backend: LMDB batch_size: 4 }} transform_param {{ scale: 0.01 }} }}
    layer {{ name: "d" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
             data_param {{ source: "{source}" backend: LMDB batch_size: 3 prefetch: 0 }}
             transform_param {{ scale: 0.01 }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
             inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}"""
    param = text_format.Parse(f"net_param {{ {net} }} base_lr: 0.1 lr_policy: 'fixed' max_iter: 10 "
                              f"test_iter: 2 test_interval: 1000 random_seed: 3 snapshot_after_train: false",
                              caffe_pb2.SolverParameter())
    solver = torchcaffe.SGDSolver(param)
    solver.step(3)
    assert solver.net.blobs["label"].data.tolist() == [0, 1, 0, 1], "iteration 3: records 2..5"
    scores = solver.test(0)
    assert len(scores) == 1 and np.isfinite(scores[0])
    assert solver.test_nets[0].blobs["label"].data.tolist() == [1, 0, 1], "test batches 0..2, then 3..5"
