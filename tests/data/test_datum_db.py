"""Datums, images and the LMDB/LevelDB readers and writers."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from torchcaffe.data.datum import (array_to_datum, datum_image, datum_to_array, encoded_datum, image_to_datum,
                                   parse_datum)
from torchcaffe.data.db import RecordCycle, create_database, feature_key, imageset_key, open_database
from torchcaffe.data.errors import DataError
from torchcaffe.data.image import decode_image, encode_image, matches_extension, read_image
from torchcaffe.proto import caffe_pb2

from .fixtures import write_png

BACKENDS = ["lmdb", "leveldb"]


# -- Datum --------------------------------------------------------------------------------------

def test_image_to_datum_stores_channels_first_like_cvmat_to_datum():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # H=2, W=3, C=3 (BGR)
    datum = image_to_datum(image, 4)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 2, 3, 4)
    assert datum.data == image.transpose(2, 0, 1).tobytes(), "C, H, W order"
    assert datum.HasField("encoded") and not datum.encoded, "CVMatToDatum sets encoded: false"


def test_serialized_bytes_are_what_caffe_writes():
    # field 1 channels, 2 height, 3 width, 4 data, 5 label, 7 encoded — in field order
    datum = image_to_datum(np.full((1, 2, 1), 9, np.uint8), 300)
    assert datum.SerializeToString() == b"\x08\x01\x10\x01\x18\x02\x22\x02\x09\x09\x28\xac\x02\x38\x00"
    encoded = encoded_datum(b"PNG", 1)
    assert encoded.SerializeToString() == b"\x22\x03PNG\x28\x01\x38\x01"


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_array_to_datum_round_trip_like_pycaffe(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 200).astype(dtype)
    datum = parse_datum(array_to_datum(array, 3).SerializeToString(), "x")
    back = datum_to_array(datum)
    assert back.dtype == (np.uint8 if dtype == np.uint8 else np.float64)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(datum_image(datum, "x"), array)
    assert datum.label == 3
    with pytest.raises(ValueError, match="channels, height, width"):
        array_to_datum(np.zeros((2, 3)))


def test_encoded_datums_decode_to_bgr_native_or_forced():
    image = np.zeros((3, 4, 3), np.uint8)
    image[..., 2] = 255  # red in BGR
    datum = encoded_datum(encode_image(image, "png"), 0)
    native = datum_image(datum, "x")
    assert native.shape == (3, 3, 4) and native[2].min() == 255 and native[0].max() == 0
    assert datum_image(datum, "x", color=False).shape == (1, 3, 4)
    grey = encoded_datum(encode_image(image[..., 2], "png"))
    assert datum_image(grey, "x").shape == (1, 3, 4) and datum_image(grey, "x", color=True).shape == (3, 3, 4)


@pytest.mark.parametrize("datum,words", [
    (caffe_pb2.Datum(channels=3, height=2, width=2, data=b"123"), ["holds 3 bytes", "= 12"]),
    (caffe_pb2.Datum(channels=1, height=2, width=2, float_data=[1.0]), ["has 1 float_data", "= 4"]),
    (caffe_pb2.Datum(channels=1, height=2, width=2), ["holds no pixels"]),
    (caffe_pb2.Datum(channels=0, height=2, width=2, data=b""), ["all three must be positive"]),
    (caffe_pb2.Datum(encoded=True, data=b"not an image"), ["cannot be decoded"]),
])
def test_bad_datums_name_the_record(datum, words):
    with pytest.raises(DataError) as info:
        datum_image(datum, "db key 'k'")
    assert str(info.value).startswith("db key 'k': ")
    for word in words:
        assert word in str(info.value)


def test_corrupt_record():
    with pytest.raises(DataError, match="db key 'k': the record is not a valid Datum"):
        parse_datum(b"\x0a\xff\xff\xff", "db key 'k'")


# -- images --------------------------------------------------------------------------------------

def test_read_image_like_read_image_to_cvmat(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = write_png(tmp_path / "a.png", image)
    np.testing.assert_array_equal(read_image(path), image)
    assert read_image(path, is_color=False).shape == (5, 6, 1)
    np.testing.assert_array_equal(read_image(path, 3, 4), cv2.resize(image, (4, 3), interpolation=cv2.INTER_LINEAR))
    assert read_image(path, 3, 0).shape == (5, 6, 3), "resized only when both sizes are set"
    with pytest.raises(DataError, match="no such image file"):
        read_image(str(tmp_path / "absent.png"))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        read_image(str(tmp_path / "junk.png"))


def test_decode_and_extension_rules():
    image = np.full((2, 2, 3), 7, np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(image, "png")), image)
    assert matches_extension("a/b.JPEG", "jpg") and matches_extension("x.png", "PNG")
    assert not matches_extension("x.png", "jpg")
    with pytest.raises(DataError, match="cannot encode"):
        encode_image(image, "nosuchformat")


# -- databases -------------------------------------------------------------------------------------

def test_keys():
    assert imageset_key(7, "cat/1.jpg") == b"00000007_cat/1.jpg"
    assert imageset_key(123456789, "x") == b"123456789_x"
    assert feature_key(42) == b"0000000042"


@pytest.mark.parametrize("backend", BACKENDS)
def test_writer_reader_round_trip_in_key_order(tmp_path, backend):
    path = str(tmp_path / "db")
    records = {imageset_key(i, f"f{i}"): f"value {i}".encode() for i in (3, 1, 10, 2)}
    with create_database(path, backend, commit_every=2) as db:
        for key, value in records.items():
            db.put(key, value)
    database = open_database(path, backend)
    assert list(database.items()) == sorted(records.items())
    assert database.count() == 4 and database.first() == min(records.items())
    cycle = RecordCycle(database)
    keys = [cycle.next()[0] for _ in range(6)]
    assert keys == sorted(records)[:4] + sorted(records)[:2], "wraps to the first record"


def test_lmdb_map_grows_when_full(tmp_path, monkeypatch):
    import torchcaffe.data.db as db_module

    monkeypatch.setattr(db_module, "_INITIAL_MAP_SIZE", 1 << 16)
    path = str(tmp_path / "db")
    with create_database(path, "lmdb") as db:
        for i in range(40):
            db.put(feature_key(i), bytes(4000))
    assert open_database(path, "lmdb").count() == 40


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_write_leaves_nothing(tmp_path, backend):
    path = tmp_path / "db"
    with pytest.raises(RuntimeError):
        with create_database(str(path), backend) as db:
            db.put(b"k", b"v")
            raise RuntimeError("stop")
    assert not path.exists() and os.listdir(tmp_path) == []


def test_existing_database_is_not_overwritten(tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(DataError, match="already exists"):
        with create_database(str(tmp_path / "db"), "lmdb"):
            pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_database_opened_twice_in_a_process(tmp_path, backend):
    path = str(tmp_path / "db")
    with create_database(path, backend) as db:
        db.put(b"a", b"1")
    first, second = open_database(path, backend), open_database(path, backend)
    assert first.first() == second.first() == (b"a", b"1")
    first.close()
    assert second.first() == (b"a", b"1")


@pytest.mark.parametrize("backend,other", [("lmdb", "leveldb"), ("leveldb", "lmdb")])
def test_wrong_backend_is_named(tmp_path, backend, other):
    path = str(tmp_path / "db")
    with create_database(path, other) as db:
        db.put(b"a", b"1")
    with pytest.raises(DataError, match=f"is an? {'LMDB' if other == 'lmdb' else 'LevelDB'} database"):
        open_database(path, backend)


def test_missing_and_empty_databases(tmp_path):
    with pytest.raises(DataError, match="no such database folder"):
        open_database(str(tmp_path / "absent"), "lmdb")
    with pytest.raises(DataError, match="data_param.source is empty"):
        open_database("", "lmdb")
    with create_database(str(tmp_path / "empty"), "leveldb"):
        pass
    with pytest.raises(DataError, match="database is empty"):
        RecordCycle(open_database(str(tmp_path / "empty"), "leveldb"))
