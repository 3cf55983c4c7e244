"""pycaffe's test_io.py, as behaviour (BlobProto and Datum conversions), and the rest of
``caffe.io``: the Transformer's order, image loading and resizing, oversampling."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import torchcaffe as caffe
from torchcaffe.io.binaryproto import read_blobproto_vector
from torchcaffe.proto import caffe_pb2


# -- BlobProto -------------------------------------------------------------------------------------
def test_legacy_shape_comes_back_4d():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 10, 10
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 10, 10)


def test_shape_field_comes_back_as_given():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    blob.shape.dim.extend([10, 10])
    assert caffe.io.blobproto_to_array(blob).shape == (10, 10)


def test_values_without_a_shape_are_refused():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    with pytest.raises(ValueError, match="no shape"):
        caffe.io.blobproto_to_array(blob)


def test_one_value_without_a_shape_is_a_scalar():
    blob = caffe_pb2.BlobProto()
    blob.data.append(123)
    assert caffe.io.blobproto_to_array(blob) == 123


def test_array_to_blobproto_round_trips_data_and_diff():
    data = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    blob = caffe.io.array_to_blobproto(data, diff=-data)
    assert list(blob.shape.dim) == [2, 3, 4] and len(blob.data) == 24
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), data)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), -data)


def test_blobproto_vectors_round_trip_and_match_the_file_reader(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 3, 2, 2), np.float32)]
    data = caffe.io.arraylist_to_blobprotovector_str(arrays)
    back = caffe.io.blobprotovector_str_to_arraylist(data)
    path = tmp_path / "vector.binaryproto"
    path.write_bytes(data)
    for original, decoded, from_file in zip(arrays, back, read_blobproto_vector(path)):
        np.testing.assert_array_equal(decoded, original)
        np.testing.assert_array_equal(from_file, original)


# -- Datum -------------------------------------------------------------------------------------------
def test_datum_label_only_when_given():
    with_label = caffe.io.array_to_datum(np.ones((10, 10, 3)), label=1)
    without = caffe.io.array_to_datum(np.ones((10, 10, 3)))
    assert len(with_label.SerializeToString()) > len(without.SerializeToString())
    assert with_label.label == 1 and not without.HasField("label")


def test_datum_round_trips_bytes_and_floats():
    image = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    datum = caffe.io.array_to_datum(image, label=7)
    assert datum.data == image.tobytes() and not datum.float_data
    np.testing.assert_array_equal(caffe.io.datum_to_array(datum), image)
    floats = np.random.default_rng(1).standard_normal((2, 3, 3)).astype(np.float32)
    datum = caffe.io.array_to_datum(floats)
    assert not datum.data and len(datum.float_data) == 18
    np.testing.assert_allclose(caffe.io.datum_to_array(datum), floats)
    with pytest.raises(ValueError, match="channels, height, width"):
        caffe.io.array_to_datum(np.zeros((2, 2)))


# -- Transformer -----------------------------------------------------------------------------------
def test_preprocess_applies_pycaffe_order_and_deprocess_inverts_it():
    shape = (1, 3, 4, 5)
    t = caffe.io.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    mean = np.array([104.0, 117.0, 123.0])
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    image = np.random.default_rng(2).uniform(size=(4, 5, 3)).astype(np.float32)
    before = image.copy()
    out = t.preprocess("data", image)
    expected = (image.transpose(2, 0, 1)[::-1] * 255.0 - mean[:, None, None]) * 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(image, before)  # the input is never written
    np.testing.assert_allclose(t.deprocess("data", out[None]), image, rtol=1e-5, atol=1e-5)


def test_preprocess_resizes_to_the_input():
    t = caffe.io.Transformer({"data": (1, 3, 6, 8)})
    t.set_transpose("data", (2, 0, 1))
    assert t.preprocess("data", np.random.default_rng(3).uniform(size=(12, 16, 3))).shape == (3, 6, 8)


def test_transformer_checks_its_settings():
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(ValueError, match="not one of the net inputs"):
        t.set_raw_scale("image", 255)
    with pytest.raises(ValueError, match="3 channels"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="mean has 2 channels"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="incompatible"):
        t.set_mean("data", np.zeros((3, 5, 5)))
    t.set_mean("data", np.zeros((3, 4, 5)))  # an elementwise mean of the input's shape is fine


# -- images ----------------------------------------------------------------------------------------
def test_load_image_gives_rgb_floats(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    path = str(tmp_path / "image.png")
    cv2.imwrite(path, rgb[:, :, ::-1])  # OpenCV writes BGR
    image = caffe.io.load_image(path)
    assert image.dtype == np.float32 and image.shape == (5, 6, 3)
    np.testing.assert_allclose(image, rgb / 255.0, rtol=1e-6)
    grey = caffe.io.load_image(path, color=False)
    assert grey.shape == (5, 6, 1)
    np.testing.assert_allclose(grey[:, :, 0], (rgb / 255.0) @ [0.2125, 0.7154, 0.0721], rtol=1e-5)


def test_load_image_grey_16_bit_and_alpha(tmp_path):
    grey = np.random.default_rng(5).integers(0, 65536, (4, 3)).astype(np.uint16)
    path = str(tmp_path / "grey16.png")
    cv2.imwrite(path, grey)
    image = caffe.io.load_image(path)
    assert image.shape == (4, 3, 3)
    np.testing.assert_allclose(image[:, :, 1], grey / 65535.0, rtol=1e-6)
    assert caffe.io.load_image(path, color=False).shape == (4, 3, 1)
    rgba = np.random.default_rng(6).integers(0, 256, (3, 3, 4)).astype(np.uint8)
    path = str(tmp_path / "alpha.png")
    cv2.imwrite(path, rgba)
    np.testing.assert_allclose(caffe.io.load_image(path), rgba[:, :, 2::-1] / 255.0, rtol=1e-6)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(OSError, match="missing.png"):
        caffe.io.load_image(str(tmp_path / "missing.png"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(caffe.CaffeError, match="text.png: not an image"):
        caffe.io.load_image(str(tmp_path / "text.png"))


def test_resize_reads_zero_outside_the_image_as_scikit_image_does():
    # scikit-image's resize(order=1, mode='constant'): centres aligned, neighbours outside read 0
    row = np.array([[[0.0], [1.0]]])
    np.testing.assert_allclose(caffe.io.resize_image(row, (1, 4))[0, :, 0], [0.0, 0.25, 0.75, 0.75])


def test_resize_halving_matches_opencv_bilinear():
    image = np.random.default_rng(7).uniform(size=(8, 10, 3)).astype(np.float32)
    ours = caffe.io.resize_image(image, (4, 5))
    np.testing.assert_allclose(ours, cv2.resize(image, (5, 4), interpolation=cv2.INTER_LINEAR), atol=1e-6)


def test_resize_keeps_range_and_constant_images():
    image = np.random.default_rng(8).uniform(10, 20, size=(5, 7, 1))
    out = caffe.io.resize_image(image, (9, 3))
    assert out.shape == (9, 3, 1) and out.dtype == np.float32
    assert out.min() >= 10 - 1e-4 and out.max() <= 20 + 1e-4
    flat = caffe.io.resize_image(np.full((3, 3, 3), 7.0), (5, 5))
    assert flat.shape == (5, 5, 3) and (flat == 7).all()


def test_resize_other_channel_counts_aligns_corners():
    image = np.zeros((2, 2, 2))
    image[1, 1] = 1.0
    out = caffe.io.resize_image(image, (3, 3))
    np.testing.assert_allclose(out[:, :, 0], [[0, 0, 0], [0, 0.25, 0.5], [0, 0.5, 1.0]])


def test_oversample_gives_corners_centre_and_mirrors():
    image = np.arange(6 * 8 * 2, dtype=np.float32).reshape(6, 8, 2)
    crops = caffe.io.oversample([image, image + 1], (4, 4))
    assert crops.shape == (20, 4, 4, 2)
    np.testing.assert_array_equal(crops[0], image[:4, :4])
    np.testing.assert_array_equal(crops[3], image[2:, 4:])
    np.testing.assert_array_equal(crops[4], image[1:5, 2:6])
    np.testing.assert_array_equal(crops[5:10], crops[0:5, :, ::-1])
    np.testing.assert_array_equal(crops[10], image[:4, :4] + 1)
