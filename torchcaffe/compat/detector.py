"""pycaffe's ``Detector``: a TEST-phase net that classifies windows of images (R-CNN style),
optionally with context padding around each window."""
from __future__ import annotations

import os

import numpy as np

from ..errors import CaffeError
from ..net.net import TEST, Net
from . import io as caffe_io
from .classifier import input_transformer


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``: the net, a Transformer for its first input
    (transpose ``(2, 0, 1)``), and R-CNN's window cropping with ``context_pad`` pixels of
    context (padded with the mean)."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows) -> list[dict]:
        """Classify windows: ``images_windows`` is ``[(image file, [(ymin, xmin, ymax, xmax), ...]),
        ...]``; returns one ``{'window', 'prediction', 'filename'}`` per window, in order."""
        images_windows = [(name, [np.asarray(w) for w in windows]) for name, windows in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = caffe_io.load_image(filename).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            return []
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]), dtype=np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections, index = [], 0
        for filename, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[index], "filename": filename})
                index += 1
        return detections

    def detect_selective_search(self, image_fnames) -> list[dict]:
        """Windows from R-CNN's selective search (the MATLAB-backed
        ``selective_search_ijcv_with_python`` package, which must be installed), then
        :meth:`detect_windows`."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise CaffeError("detect_selective_search needs the selective_search_ijcv_with_python package "
                             "(and MATLAB); compute the windows yourself and call detect_windows") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im: np.ndarray, window) -> np.ndarray:
        """The window ``(ymin, xmin, ymax, xmax)`` of ``im``; with ``context_pad``, R-CNN's
        warp: the box grown so that the padding fits, clipped to the image, resized into the
        input's size and placed on a mean-coloured canvas."""
        window = np.asarray(window).astype(int)
        if not self.context_pad:
            return im[window[0]:window[2], window[1]:window[3]]
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        full_h, full_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        scale_h, scale_w = crop_size / full_h, crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))  # how far the box leaves the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w]).astype(int)
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise CaffeError(f"window {tuple(window)} lies outside the {im_h} x {im_w} image")
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        context = caffe_io.resize_image(im[box[0]:box[2], box[1]:box[3]], (crop_h, crop_w))
        canvas = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        canvas[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return canvas

    def configure_crop(self, context_pad) -> None:
        """Set ``crop_dims`` (the input's size in image layout) and, with ``context_pad``, the
        mean in unprocessed image space that pads the context crops."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        inverse = list(np.argsort(transpose))
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(np.broadcast_to(mean, self.blobs[in_].data.shape[1:]), dtype=np.float32).transpose(inverse)
        channel_order = self.transformer.channel_swap.get(in_)
        if channel_order is not None:
            crop_mean = crop_mean[:, :, list(np.argsort(channel_order))]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
