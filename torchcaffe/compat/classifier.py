"""pycaffe's ``Classifier``: a TEST-phase net that takes H x W x K images and returns class
probabilities, optionally averaged over ten crops."""
from __future__ import annotations

import numpy as np

from ..net.net import TEST, Net
from . import io as caffe_io


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: the net, with a :class:`~torchcaffe.compat.io.Transformer`
    for its first input (transpose ``(2, 0, 1)`` plus the given mean, scales and channel swap).
    Images are resized to ``image_dims`` (default: the input's size) and then cropped to the
    input's size."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None and len(image_dims) else self.crop_dims)

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """Class scores (the first output) for a list of H x W x K images: with ``oversample``,
        the mean over the ten crops of :func:`~torchcaffe.compat.io.oversample`, else of the
        centre crop. Returns (N, classes)."""
        inputs = [np.asarray(im) for im in inputs]
        height, width = (int(d) for d in self.image_dims)
        batch = np.zeros((len(inputs), height, width, inputs[0].shape[2]), dtype=np.float32)
        for i, image in enumerate(inputs):
            batch[i] = caffe_io.resize_image(image, (height, width))
        if oversample:
            batch = caffe_io.oversample(batch, self.crop_dims)
        else:
            centre = np.array([height, width]) / 2.0
            box = (np.tile(centre, 2) + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])).astype(int)
            batch = batch[:, box[0]:box[2], box[1]:box[3], :]
        in_ = self.inputs[0]
        caffe_in = np.zeros(np.array(batch.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for i, crop in enumerate(batch):
            caffe_in[i] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions


def input_transformer(net: Net, mean, input_scale, raw_scale, channel_swap) -> caffe_io.Transformer:
    """The Transformer of the net's first input that pycaffe's Classifier and Detector set up:
    transpose ``(2, 0, 1)`` and whichever of mean, scales and channel swap are given."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    for value, setter in ((mean, transformer.set_mean), (input_scale, transformer.set_input_scale),
                          (raw_scale, transformer.set_raw_scale), (channel_swap, transformer.set_channel_swap)):
        if value is not None:
            setter(in_, value)
    return transformer
