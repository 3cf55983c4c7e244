"""convert_imageset, compute_image_mean, extract_features and the upgrade tools."""
from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest

import torchcaffe
from torchcaffe.data.datum import datum_image, parse_datum
from torchcaffe.data.db import open_database
from torchcaffe.data.errors import DataError
from torchcaffe.data.tools import (compute_image_mean, convert_imageset, extract_features, upgrade_net_proto_binary,
                                   upgrade_net_proto_text, upgrade_solver_proto_text)
from torchcaffe.io.binaryproto import read_blobproto
from torchcaffe.io.prototxt import read_net
from torchcaffe.proto import caffe_pb2

from .fixtures import write_list, write_png


@pytest.fixture
def images(tmp_path):
    """Four colour PNGs (6x7) in ``tmp_path/img/`` and a list file with labels 10..13."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    pixels = [rng.integers(0, 256, (6, 7, 3), dtype=np.uint8) for _ in range(4)]
    for i, image in enumerate(pixels):
        write_png(tmp_path / "img" / f"{i}.png", image)
    listing = write_list(tmp_path / "list.txt", [f"{i}.png {10 + i}" for i in range(4)])
    return pixels, listing, str(tmp_path / "img") + "/"


def records(path, backend="lmdb"):
    return [(key, parse_datum(value, "x")) for key, value in open_database(str(path), backend).items()]


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_imageset_writes_caffe_keys_and_raw_datums(tmp_path, images, backend):
    pixels, listing, root = images
    report = convert_imageset(root, listing, str(tmp_path / "db"), backend=backend)
    assert report.written == 4 and not report.skipped
    stored = records(tmp_path / "db", backend)
    assert [key for key, _ in stored] == [b"00000000_0.png", b"00000001_1.png", b"00000002_2.png", b"00000003_3.png"]
    for (key, datum), image, label in zip(stored, pixels, range(10, 14)):
        assert datum.label == label and not datum.encoded
        np.testing.assert_array_equal(datum_image(datum, "x"), image.transpose(2, 0, 1))


def test_convert_imageset_shuffle_gray_resize(tmp_path, images):
    pixels, listing, root = images
    convert_imageset(root, listing, str(tmp_path / "a"), shuffle=True, seed=3, gray=True,
                     resize_height=4, resize_width=5)
    convert_imageset(root, listing, str(tmp_path / "b"), shuffle=True, seed=3, gray=True,
                     resize_height=4, resize_width=5)
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert [k for k, _ in a] == [k for k, _ in b], "seeded shuffle repeats"
    assert sorted(d.label for _, d in a) == [10, 11, 12, 13]
    keys = [k.decode() for k, _ in a]
    assert [k[:9] for k in keys] == ["00000000_", "00000001_", "00000002_", "00000003_"], "index after shuffle"
    key, datum = a[0]
    name = key.decode()[9:]
    grey = cv2.imread(root + name, cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(datum_image(datum, "x")[0], cv2.resize(grey, (5, 4), interpolation=cv2.INTER_LINEAR))


def test_convert_imageset_encoded(tmp_path, images):
    pixels, listing, root = images
    convert_imageset(root, listing, str(tmp_path / "png"), encoded=True)
    key, datum = records(tmp_path / "png")[0]
    assert datum.encoded and datum.data == (tmp_path / "img" / "0.png").read_bytes(), "the file itself"
    convert_imageset(root, listing, str(tmp_path / "jpg"), encoded=True, encode_type="jpg")
    _, datum = records(tmp_path / "jpg")[0]
    assert datum.data[:2] == b"\xff\xd8", "re-encoded as JPEG"
    convert_imageset(root, listing, str(tmp_path / "small"), encoded=True, resize_height=3, resize_width=3)
    _, datum = records(tmp_path / "small")[0]
    assert datum_image(datum, "x").shape == (3, 3, 3), "resized images are re-encoded"


def test_convert_imageset_skips_unreadable_images_as_caffe(tmp_path, images, caplog):
    _, listing, root = images
    write_list(listing, ["0.png 1", "missing.png 2", "2.png 3"])
    report = convert_imageset(root, listing, str(tmp_path / "db"))
    assert report.written == 2 and report.skipped[0][:2] == (2, "missing.png")
    assert [k for k, _ in records(tmp_path / "db")] == [b"00000000_0.png", b"00000002_2.png"]
    assert "missing.png" in caplog.text


def test_convert_imageset_check_size_and_nothing_readable(tmp_path, images):
    _, listing, root = images
    write_png(tmp_path / "img" / "big.png", np.zeros((9, 9, 3), np.uint8))
    write_list(listing, ["0.png 1", "big.png 2"])
    with pytest.raises(DataError, match=r"'big.png' is 3 x 9 x 9 .* first image is 3 x 6 x 7"):
        convert_imageset(root, listing, str(tmp_path / "db"), check_size=True)
    assert not (tmp_path / "db").exists(), "no half-written database"
    write_list(listing, ["nope.png 1"])
    with pytest.raises(DataError, match="none of the 1 listed images could be read"):
        convert_imageset(root, listing, str(tmp_path / "db"))
    assert not (tmp_path / "db").exists()


def test_compute_image_mean_matches_numpy_and_writes_caffes_layout(tmp_path, images):
    pixels, listing, root = images
    convert_imageset(root, listing, str(tmp_path / "db"))
    mean = compute_image_mean(str(tmp_path / "db"), str(tmp_path / "mean.binaryproto"))
    expected = np.mean([p.transpose(2, 0, 1).astype(np.float64) for p in pixels], axis=0)
    assert mean.shape == (1, 3, 6, 7) and mean.dtype == np.float32
    np.testing.assert_allclose(mean[0], expected, rtol=1e-6)
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 6, 7) and not blob.HasField("shape")
    np.testing.assert_array_equal(read_blobproto(tmp_path / "mean.binaryproto"), mean)


def test_compute_image_mean_refuses_mixed_sizes(tmp_path):
    from .fixtures import random_images, write_datums

    source = write_datums(tmp_path / "db", random_images(1, (3, 4, 4)) + random_images(1, (3, 5, 4)))
    with pytest.raises(DataError, match="key '00000001_im1'.*3 x 5 x 4"):
        compute_image_mean(source)


FEATURE_NET = """name: "f"
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
"""


def feature_net(tmp_path):
    """A net fed by a Data layer (4 one-pixel-row records) and weights for its InnerProduct."""
    from .fixtures import write_datums

    source = write_datums(tmp_path / "in_db", [np.full((1, 1, 3), i, np.float32) for i in range(4)])
    text = FEATURE_NET.replace('type: "MemoryData"', 'type: "Data"').replace(
        "memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 }",
        f'data_param {{ source: "{source}" backend: LMDB batch_size: 2 }}')
    (tmp_path / "net.prototxt").write_text(text)
    net = torchcaffe.Net(str(tmp_path / "net.prototxt"), torchcaffe.TEST)
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.params["ip"][0].data[...] = weights
    net.params["ip"][1].data[...] = [1, -1]
    net.save(str(tmp_path / "w.caffemodel"))
    return str(tmp_path / "w.caffemodel"), str(tmp_path / "net.prototxt"), weights


@pytest.mark.parametrize("db_type", ["lmdb", "leveldb", "hdf5"])
def test_extract_features(tmp_path, db_type):
    weights_file, proto, weights = feature_net(tmp_path)
    out = str(tmp_path / ("features.h5" if db_type == "hdf5" else "features"))
    extract_features(weights_file, proto, "ip,data", f"{out},{out}_data", 2, db_type)
    expected = np.array([[w.sum() * i + b for w, b in zip(weights, (1, -1))] for i in range(4)], np.float32)
    if db_type == "hdf5":
        with h5py.File(out, "r") as h5:
            np.testing.assert_allclose(h5["ip"][()], expected)
        return
    stored = records(out, db_type)
    assert [k for k, _ in stored] == [b"0000000000", b"0000000001", b"0000000002", b"0000000003"]
    _, datum = stored[3]
    assert (datum.channels, datum.height, datum.width) == (2, 1, 1) and not datum.data
    np.testing.assert_allclose(list(datum.float_data), expected[3])
    _, datum = records(f"{out}_data", db_type)[1]
    assert (datum.channels, datum.height, datum.width) == (1, 1, 3) and list(datum.float_data) == [1, 1, 1]


def test_extract_features_errors(tmp_path):
    weights_file, proto, _ = feature_net(tmp_path)
    with pytest.raises(DataError, match="2 blob name"):
        extract_features(weights_file, proto, "ip,data", "only_one", 1)
    with pytest.raises(DataError, match="no blob named \\['nope'\\]"):
        extract_features(weights_file, proto, ["nope"], [str(tmp_path / "x")], 1)


V1_NET = """name: "old"
layers { name: "data" type: DATA top: "data" top: "label"
         data_param { source: "db" batch_size: 4 scale: 0.5 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2
         inner_product_param { num_output: 3 } }
"""


def test_upgrade_net_proto_text(tmp_path):
    (tmp_path / "old.prototxt").write_text(V1_NET)
    assert upgrade_net_proto_text(str(tmp_path / "old.prototxt"), str(tmp_path / "new.prototxt")) is True
    text = (tmp_path / "new.prototxt").read_text()
    assert 'type: "Data"' in text and "transform_param {\n    scale: 0.5" in text and "lr_mult: 2" in text
    upgraded = read_net(str(tmp_path / "new.prototxt"))
    assert [l.type for l in upgraded.layer] == ["Data", "InnerProduct"]
    assert upgrade_net_proto_text(str(tmp_path / "new.prototxt"), str(tmp_path / "again.prototxt")) is False
    assert (tmp_path / "again.prototxt").read_text() == text


def test_upgrade_net_proto_binary_keeps_the_blobs(tmp_path):
    old = caffe_pb2.NetParameter(name="old")
    layer = old.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.blobs.add(data=[1.0, 2.0], num=1, channels=1, height=1, width=2)
    layer.blobs_lr.append(3)
    (tmp_path / "old.caffemodel").write_bytes(old.SerializeToString())
    assert upgrade_net_proto_binary(str(tmp_path / "old.caffemodel"), str(tmp_path / "new.caffemodel"))
    new = caffe_pb2.NetParameter.FromString((tmp_path / "new.caffemodel").read_bytes())
    assert not new.layers and new.layer[0].type == "InnerProduct"
    assert list(new.layer[0].blobs[0].data) == [1.0, 2.0] and new.layer[0].param[0].lr_mult == 3
    (tmp_path / "junk").write_bytes(b"\x0a\xff\xff")
    with pytest.raises(torchcaffe.ParseError, match="junk: not a binary NetParameter"):
        upgrade_net_proto_binary(str(tmp_path / "junk"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_upgrade_solver_proto_text(tmp_path):
    (tmp_path / "solver.prototxt").write_text('net: "n.prototxt"\nsolver_type: ADAM\nbase_lr: 0.001\n')
    assert upgrade_solver_proto_text(str(tmp_path / "solver.prototxt"), str(tmp_path / "out.prototxt"))
    text = (tmp_path / "out.prototxt").read_text()
    assert 'type: "Adam"' in text and "solver_type" not in text and "snapshot_prefix" not in text
