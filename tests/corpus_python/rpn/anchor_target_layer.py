"""Stand-in for py-faster-rcnn's AnchorTargetLayer: labels and box targets for every anchor."""
import torchcaffe as caffe

from _common import RNG, params


class AnchorTargetLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.feat_stride = params(self.param_str_)["feat_stride"]
        self.reshape(bottom, top)

    def reshape(self, bottom, top):
        anchors, height, width = bottom[0].channels // 2, bottom[0].height, bottom[0].width
        top[0].reshape(1, 1, anchors * height, width)
        for blob in top[1:]:
            blob.reshape(1, anchors * 4, height, width)

    def forward(self, bottom, top):
        top[0].data[...] = RNG.choice([-1, 0, 1], size=top[0].data.shape)
        top[1].data[...] = RNG.standard_normal(top[1].data.shape)
        weights = (RNG.random(top[2].data.shape) < 0.3).astype(float)
        top[2].data[...] = weights
        top[3].data[...] = weights / max(weights.sum(), 1)

    def backward(self, top, propagate_down, bottom):
        pass
