"""Stand-in for py-faster-rcnn's ProposalTargetLayer: sampled RoIs with class and box targets."""
import numpy as np

import torchcaffe as caffe

from _common import RNG, params

BATCH = 16


class ProposalTargetLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.num_classes = params(self.param_str_)["num_classes"]
        top[0].reshape(1, 5)
        top[1].reshape(1, 1)
        for blob in top[2:]:
            blob.reshape(1, self.num_classes * 4)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        rois = bottom[0].data[RNG.integers(0, bottom[0].num, BATCH)]
        labels = RNG.integers(0, self.num_classes, BATCH)
        targets = np.zeros((BATCH, 4 * self.num_classes), np.float32)
        weights = np.zeros_like(targets)
        for i, label in enumerate(labels):
            if label:
                targets[i, 4 * label:4 * label + 4] = RNG.standard_normal(4)
                weights[i, 4 * label:4 * label + 4] = 1
        for blob, value in zip(top, (rois, labels, targets, weights, weights)):
            blob.reshape(*value.shape)
            blob.data[...] = value

    def backward(self, top, propagate_down, bottom):
        pass
