"""pycaffe's Classifier and Detector on a small deploy net."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import torchcaffe as caffe

DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""
MEAN = np.array([100.0, 110.0, 120.0])


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    caffe.set_random_seed(3)
    weights = tmp_path / "tiny.caffemodel"
    caffe.Net(str(model), caffe.TEST).save(str(weights))
    return str(model), str(weights)


def test_classifier_centre_crop_matches_the_manual_pipeline(files):
    clf = caffe.Classifier(*files, image_dims=(10, 12), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    images = [np.random.default_rng(i).uniform(size=(20, 16, 3)).astype(np.float32) for i in range(3)]
    scores = clf.predict(images, oversample=False)
    assert scores.shape == (3, 5)
    np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-5)
    resized = caffe.io.resize_image(images[1], (10, 12))[1:9, 2:10]
    x = (resized.transpose(2, 0, 1)[::-1] * 255 - MEAN[:, None, None])[None].astype(np.float32)
    net = caffe.Net(files[0], caffe.TEST, weights=files[1])
    net.blobs["data"].reshape(1, 3, 8, 8)
    expected = net.forward(data=x)["prob"][0]
    np.testing.assert_allclose(scores[1], expected, rtol=1e-4, atol=1e-6)


def test_classifier_oversampling_averages_ten_crops(files):
    clf = caffe.Classifier(*files, image_dims=(10, 10))
    images = [np.random.default_rng(7).uniform(size=(10, 10, 3)).astype(np.float32)]
    scores = clf.predict(images)
    crops = caffe.io.oversample([caffe.io.resize_image(images[0], (10, 10))], (8, 8))
    batch = np.stack([clf.transformer.preprocess("data", c) for c in crops])
    expected = clf.forward_all(data=batch)["prob"].mean(0)
    np.testing.assert_allclose(scores[0], expected, rtol=1e-4, atol=1e-6)


def test_detector_classifies_windows(files, tmp_path):
    image = (np.random.default_rng(8).uniform(size=(30, 40, 3)) * 255).astype(np.uint8)
    path = str(tmp_path / "scene.png")
    cv2.imwrite(path, image[:, :, ::-1])
    det = caffe.Detector(*files, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    windows = [np.array([0, 0, 16, 16]), np.array([5, 10, 25, 38])]
    found = det.detect_windows([(path, windows)])
    assert [d["filename"] for d in found] == [path, path]
    assert all(d["prediction"].shape == (5,) for d in found)
    padded = caffe.Detector(*files, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=2)
    crop = padded.crop(caffe.io.load_image(path), windows[1])
    assert crop.shape == (8, 8, 3)
    with pytest.raises(caffe.CaffeError, match="selective_search"):
        det.detect_selective_search([path])
