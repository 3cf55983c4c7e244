"""Stand-ins for FCN's voc_layers: an image and its label map (21 PASCAL classes, 255 = void)."""
import torchcaffe as caffe

from _common import HEIGHT, RNG, WIDTH, image, params


class VOCSegDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.params = params(self.param_str)
        if len(top) != 2 or bottom:
            raise Exception("Need to define two tops: data and label; no bottoms.")

    def reshape(self, bottom, top):
        top[0].reshape(1, 3, HEIGHT, WIDTH)
        top[1].reshape(1, 1, HEIGHT, WIDTH)

    def forward(self, bottom, top):
        top[0].data[...] = image() - 120
        labels = RNG.integers(0, 21, size=(1, 1, HEIGHT, WIDTH))
        labels[RNG.random(labels.shape) < 0.05] = 255
        top[1].data[...] = labels


class SBDDSegDataLayer(VOCSegDataLayer):
    pass
