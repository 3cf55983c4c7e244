"""Stand-in for py-faster-rcnn's RoIDataLayer: one image, its size and its ground-truth boxes."""
import numpy as np

import torchcaffe as caffe

from _common import HEIGHT, RNG, WIDTH, boxes, image, params

NUM_GT = 3


class RoIDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.num_classes = params(self.param_str_)["num_classes"]
        top[0].reshape(1, 3, HEIGHT, WIDTH)
        top[1].reshape(1, 3)
        top[2].reshape(NUM_GT, 5)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = image() - 120
        top[1].data[...] = [[HEIGHT, WIDTH, 1.0]]
        gt = np.zeros((NUM_GT, 5), np.float32)
        gt[:, :4] = boxes(NUM_GT, HEIGHT, WIDTH)
        gt[:, 4] = RNG.integers(1, self.num_classes, NUM_GT)
        top[2].data[...] = gt
