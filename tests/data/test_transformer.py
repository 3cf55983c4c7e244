"""The data transformer against a reference written from Caffe's index arithmetic, loop by loop."""
from __future__ import annotations

import numpy as np
import pytest

from torchcaffe.data.errors import DataError
from torchcaffe.data.transformer import DataTransformer, Placement
from torchcaffe.io.binaryproto import write_blobproto
from torchcaffe.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
F32 = np.float32


def caffe_reference(image, h_off, w_off, height, width, mirror, scale=1.0, mean=None, mean_values=None):
    """``data_transformer.cpp``'s loop: data_index in the uncropped image, top_index flipped."""
    channels, full_h, full_w = image.shape
    top = np.zeros((channels, height, width), F32)
    values = None if mean_values is None else np.resize(np.asarray(mean_values, F32), channels)
    for c in range(channels):
        for h in range(height):
            for w in range(width):
                pixel = F32(image[c, h_off + h, w_off + w])
                top_w = width - 1 - w if mirror else w
                if mean is not None:
                    value = (pixel - F32(mean[c, h_off + h, w_off + w])) * F32(scale)
                elif values is not None:
                    value = (pixel - values[c]) * F32(scale)
                else:
                    value = pixel * F32(scale)
                top[c, h, top_w] = value
    return top


def transformer(phase=TRAIN, seed=0, **fields):
    return DataTransformer(caffe_pb2.TransformationParameter(**fields), phase, np.random.default_rng(seed))


@pytest.fixture
def image():
    return np.random.default_rng(1).integers(0, 256, (3, 7, 6), dtype=np.uint8)


def test_mean_file_is_indexed_at_the_uncropped_position(tmp_path, image):
    mean = np.random.default_rng(2).uniform(0, 255, (1, 3, 7, 6)).astype(F32)
    write_blobproto(tmp_path / "mean.binaryproto", mean)
    t = transformer(TRAIN, crop_size=4, mirror=True, scale=0.25, mean_file=str(tmp_path / "mean.binaryproto"))
    for _ in range(20):
        out, placement = t.transform_placed(image)
        expected = caffe_reference(image, placement.h_off, placement.w_off, 4, 4, placement.mirror, 0.25, mean[0])
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("values", [[7.5], [1, 2, 3]])
def test_mean_values_one_or_per_channel(image, values):
    t = transformer(TEST, mean_value=values, scale=2)
    out = t.transform(image)
    np.testing.assert_array_equal(out, caffe_reference(image, 0, 0, 7, 6, False, 2, mean_values=values))


def test_train_crops_at_random_test_crops_the_centre(image):
    train = transformer(TRAIN, crop_size=3)
    offsets = {(p.h_off, p.w_off) for p in (train.transform_placed(image)[1] for _ in range(400))}
    assert offsets == {(h, w) for h in range(5) for w in range(4)}, "every offset in [0, H - crop]"
    test = transformer(TEST, crop_size=3)
    placements = {test.transform_placed(image)[1] for _ in range(20)}
    assert placements == {Placement(2, 1, 3, 3, 7, 6, False)}, "(7 - 3) // 2, (6 - 3) // 2"
    np.testing.assert_array_equal(test.transform(image), caffe_reference(image, 2, 1, 3, 3, False))


def test_mirror_is_random_in_both_phases(image):
    for phase in (TRAIN, TEST):
        t = transformer(phase, mirror=True)
        flips = [t.transform_placed(image)[1].mirror for _ in range(100)]
        assert 20 < sum(flips) < 80
        out, placement = t.transform_placed(image)
        np.testing.assert_array_equal(out, caffe_reference(image, 0, 0, 7, 6, placement.mirror))


def test_no_mirror_no_crop_draws_nothing(image):
    t = transformer(TRAIN, scale=0.5)
    state = t.rng.bit_generator.state
    np.testing.assert_array_equal(t.transform(image), image.astype(F32) * F32(0.5))
    assert t.rng.bit_generator.state == state


def test_float_pixels_and_output_shape(image):
    t = transformer(TRAIN, crop_size=5)
    assert t.output_shape((3, 7, 6)) == (3, 5, 5)
    values = image.astype(F32) / 3
    out, p = t.transform_placed(values)
    np.testing.assert_array_equal(out, caffe_reference(values, p.h_off, p.w_off, 5, 5, False))


def test_seeded_generators_repeat(image):
    a = [transformer(TRAIN, seed=5, crop_size=3, mirror=True).transform(image) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])


def test_crop_box_is_normalized_float32():
    p = Placement(1, 2, 3, 4, 6, 8, False)
    assert p.crop_box == (F32(2 / 8), F32(1 / 6), F32(6 / 8), F32(4 / 6))


def test_resize_param_resizes_before_the_crop(image):
    resize = caffe_pb2.ResizeParameter(height=10, width=12)
    t = transformer(TEST, resize_param=resize, crop_size=8)
    assert t.output_shape((3, 7, 6)) == (3, 8, 8)
    out, p = t.transform_placed(image)
    assert (p.source_height, p.source_width, p.h_off, p.w_off) == (10, 12, 1, 2)


@pytest.mark.parametrize("fields,words", [
    (dict(mean_file="m.binaryproto", mean_value=[1]), ["mean_file or mean_value, not both"]),
    (dict(force_color=True, force_gray=True), ["force_color and force_gray cannot both"]),
    (dict(mean_file="/absent/mean.binaryproto"), ["cannot read mean_file", "/absent/mean.binaryproto"]),
    (dict(noise_param=caffe_pb2.NoiseParameter(prob=0.5)), ["noise_param is not supported"]),
])
def test_configuration_errors(fields, words):
    with pytest.raises(DataError) as info:
        transformer(**fields)
    for word in words:
        assert word in str(info.value)


def test_image_errors(tmp_path, image):
    write_blobproto(tmp_path / "m.binaryproto", np.zeros((1, 3, 5, 5), F32))
    t = transformer(mean_file=str(tmp_path / "m.binaryproto"))
    with pytest.raises(DataError, match="holds a 3 x 5 x 5 mean but the image is 3 x 7 x 6"):
        t.transform(image)
    with pytest.raises(DataError, match=r"give 1 mean_value or one per channel \(3\), got 2"):
        transformer(mean_value=[1, 2]).transform(image)
    with pytest.raises(DataError, match="crop 8 x 8 is larger than the 7 x 6 image"):
        transformer(crop_size=8).output_shape(image.shape)
