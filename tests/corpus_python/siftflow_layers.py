"""Stand-in for FCN's SIFT Flow layer: an image, its semantic (33 classes) and geometric (3) labels."""
import torchcaffe as caffe

from _common import HEIGHT, RNG, WIDTH, image, params


class SIFTFlowSegDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.params = params(self.param_str)
        if len(top) != 3 or bottom:
            raise Exception("Need to define three tops: data, semantic label, and geometric label.")

    def reshape(self, bottom, top):
        top[0].reshape(1, 3, HEIGHT, WIDTH)
        for blob in top[1:]:
            blob.reshape(1, 1, HEIGHT, WIDTH)

    def forward(self, bottom, top):
        top[0].data[...] = image() - 120
        top[1].data[...] = RNG.integers(0, 33, size=(1, 1, HEIGHT, WIDTH))
        top[2].data[...] = RNG.integers(0, 3, size=(1, 1, HEIGHT, WIDTH))
