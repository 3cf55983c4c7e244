"""Stand-in for py-faster-rcnn's ProposalLayer: region proposals (batch index, x1, y1, x2, y2)."""
import numpy as np

import torchcaffe as caffe

from _common import RNG, boxes, params

NUM_PROPOSALS = 32


class ProposalLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.feat_stride = params(self.param_str_)["feat_stride"]
        top[0].reshape(1, 5)
        if len(top) > 1:
            top[1].reshape(1, 1, 1, 1)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        height, width = bottom[2].data[0, :2]
        rois = np.zeros((NUM_PROPOSALS, 5), np.float32)
        rois[:, 1:] = boxes(NUM_PROPOSALS, height, width)
        top[0].reshape(*rois.shape)
        top[0].data[...] = rois
        if len(top) > 1:
            top[1].reshape(NUM_PROPOSALS, 1)
            top[1].data[...] = RNG.random((NUM_PROPOSALS, 1))

    def backward(self, top, propagate_down, bottom):
        pass
