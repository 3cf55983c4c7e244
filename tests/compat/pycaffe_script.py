"""A pycaffe script, written the way pycaffe users write them; only the import line differs
(``import caffe`` -> ``import torchcaffe as caffe``). Run by test_script.py in a fresh process
from a scratch folder (on PYTHONPATH, as pycaffe's layers need): it prints CHECK lines."""
import sys

import numpy as np

import torchcaffe as caffe
from torchcaffe import layers as L
from torchcaffe import params as P

caffe.set_mode_cpu()
caffe.set_random_seed(0)

# 1. a Python loss layer in a module of its own, as pycaffe's examples/pycaffe/layers/pyloss.py
with open("pyloss.py", "w") as f:
    f.write('''
import numpy as np
import torchcaffe as caffe

class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
''')

# 2. NetSpec generation: a regression net with that loss
def regression_net(batch):
    n = caffe.NetSpec()
    n.data, n.target = L.DummyData(shape=[dict(dim=[batch, 3, 8, 8]), dict(dim=[batch, 10])],
                                   data_filler=[dict(type="gaussian", std=1), dict(type="uniform")], ntop=2)
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, pad=1, weight_filler=dict(type="xavier"))
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.score = L.InnerProduct(n.pool, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.Python(n.score, n.target, module="pyloss", layer="EuclideanLossLayer", loss_weight=1)
    return n.to_proto()

with open("train.prototxt", "w") as f:
    f.write(str(regression_net(16)))

# 3. a deploy net with an input blob, loaded with weights from training
deploy = """name: "deploy"
input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score" type: "InnerProduct" bottom: "pool" top: "score" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""
with open("deploy.prototxt", "w") as f:
    f.write(deploy)

# 4. train with SGDSolver steps
with open("solver.prototxt", "w") as f:
    f.write('net: "train.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 50\n'
            'display: 0\nsnapshot_prefix: "reg"\n')
solver = caffe.SGDSolver("solver.prototxt")
solver.net.forward()
first_loss = solver.net.blobs["loss"].data.flat[0]
solver.step(30)
print("CHECK trained", solver.iter, first_loss, solver.net.blobs["loss"].data.flat[0])
assert solver.iter == 30
solver.net.save("trained.caffemodel")

# 5. deploy: set inputs through blobs[...].data[...], forward, read outputs
net = caffe.Net("deploy.prototxt", "trained.caffemodel", caffe.TEST)
print("CHECK blobs", [(k, v.data.shape) for k, v in net.blobs.items()])
print("CHECK params", [(k, v[0].data.shape, v[1].data.shape) for k, v in net.params.items()])
image = np.random.rand(2, 3, 8, 8).astype(np.float32)
net.blobs["data"].data[...] = image
out = net.forward()
prob = out["prob"]
assert prob.shape == (2, 10) and np.allclose(prob.sum(1), 1, atol=1e-5)
np.testing.assert_array_equal(net.params["score"][0].data, solver.net.params["score"][0].data)
print("CHECK predicted", prob.argmax(1).tolist())

# 6. net surgery through params: zero the scores' weights, the softmax becomes uniform
net.params["score"][0].data[...] = 0
net.params["score"][1].data[...] = np.arange(10)
prob = net.forward()["prob"]
expected = np.exp(np.arange(10)) / np.exp(np.arange(10)).sum()
assert np.allclose(prob, expected[None], atol=1e-5)
net.save("surgery.caffemodel")
again = caffe.Net("deploy.prototxt", caffe.TEST, weights="surgery.caffemodel")
assert (again.params["score"][1].data == np.arange(10)).all()
print("CHECK surgery ok")

# 7. caffe.io: classify an image through a Transformer
transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
transformer.set_transpose("data", (2, 0, 1))
transformer.set_raw_scale("data", 255)
transformer.set_channel_swap("data", (2, 1, 0))
picture = np.random.rand(20, 30, 3).astype(np.float32)
net.blobs["data"].data[0] = transformer.preprocess("data", picture)
print("CHECK transformer", net.forward()["prob"].shape)
sys.exit(0)
