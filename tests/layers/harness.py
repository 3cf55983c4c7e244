"""Build a one-layer net from a layer's ``Sample`` and drive it through the public ``Net`` API.

The family tests also build single layers without a net (``make_layer``) and share the small
helpers at the end of this file.
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe
from torchcaffe.errors import NetError
from torchcaffe.layers import LayerSetup, Sample, layer_class
from torchcaffe.proto import caffe_pb2

#: Where the generic tests run the layers: ``TORCHCAFFE_TEST_DEVICE=cuda`` runs them on a GPU.
DEVICE = os.environ.get("TORCHCAFFE_TEST_DEVICE", "cpu")


def bottom_names(sample: Sample) -> list[str]:
    return [f"b{i}" for i in range(len(sample.bottoms))]


def top_count(type_name: str, sample: Sample) -> int:
    if sample.tops is not None:
        return sample.tops
    cls = layer_class(type_name)
    return cls.exact_tops if cls.exact_tops is not None else max(cls.min_tops or 1, 1)


def differentiable_bottoms(sample: Sample) -> list[int]:
    values = sample.values or [None] * len(sample.bottoms)
    return [i for i, v in enumerate(values) if v is None or v[0] not in ("int", "choice_int")]


def net_param(type_name: str, sample: Sample, *, inplace: bool = False, loss_weights=None,
              propagate_down=None, force_backward: bool = False, learnable: bool = False
              ) -> caffe_pb2.NetParameter:
    """Layers producing the bottoms, then the layer under test with tops ``t0..``.

    Bottoms come from ``Input`` layers; with ``learnable``, the differentiable ones come from
    ``Parameter`` layers instead, so that Caffe's bookkeeping back-propagates into them without
    ``force_backward``.
    """
    net = caffe_pb2.NetParameter(name=f"sample_{type_name}", force_backward=force_backward)
    bottoms = bottom_names(sample)
    grad = set(differentiable_bottoms(sample)) if learnable else set()
    for i, (name, shape) in enumerate(zip(bottoms, sample.bottoms)):
        if i in grad:
            layer = net.layer.add(name=f"input_{name}", type="Parameter", top=[name])
            layer.parameter_param.shape.dim.extend(shape)
        else:
            layer = net.layer.add(name=f"input_{name}", type="Input", top=[name])
            layer.input_param.shape.add(dim=list(shape))
    layer = net.layer.add()
    text_format.Merge(sample.params, layer)
    layer.name, layer.type = "under_test", type_name
    layer.bottom.extend(bottoms)
    tops = bottoms[:1] if inplace else [f"t{i}" for i in range(top_count(type_name, sample))]
    layer.top.extend(tops)
    if loss_weights is not None and learnable and not layer_class(type_name).is_loss:
        _weigh_tops(net, tops, loss_weights, _top_shapes(net))
    elif loss_weights is not None:
        del layer.loss_weight[:]
        layer.loss_weight.extend(loss_weights)
    if propagate_down is not None:
        del layer.propagate_down[:]
        layer.propagate_down.extend(propagate_down)
    return net


def _top_shapes(net: caffe_pb2.NetParameter) -> dict[str, tuple]:
    built = torchcaffe.Net(net, net.state.phase if net.HasField("state") else torchcaffe.TRAIN)
    return {name: blob.shape for name, blob in built.blobs.items()}


def _weigh_tops(net: caffe_pb2.NetParameter, tops, weights, shapes) -> None:
    """Loss = sum_i w_i * sum(c_i * top_i) with fixed coefficients c_i in [0.5, 1.5): unlike a
    plain loss_weight on the top, it does not vanish for normalising layers (Softmax, BatchNorm).
    A 0-axis top simply carries the loss weight."""
    under_test = net.layer[-1]
    under_test.loss_weight.extend([w if shapes[t] == () else 0.0 for t, w in zip(tops, weights)])
    for top, weight in zip(tops, weights):
        if shapes[top] == ():
            continue
        scale = net.layer.add(name=f"weigh_{top}", type="Scale", bottom=[top], top=[f"weighted_{top}"])
        scale.param.add(lr_mult=0)
        scale.loss_weight.append(weight)
        scale.scale_param.axis = 0
        scale.scale_param.num_axes = -1
        scale.scale_param.filler.type = "uniform"
        scale.scale_param.filler.min, scale.scale_param.filler.max = 0.5, 1.5


def bottom_values(type_name: str, sample: Sample, index: int = 0) -> dict[str, np.ndarray]:
    """Deterministic bottom values drawn as the sample says."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name}/{index}".encode()))
    values = sample.values or [None] * len(sample.bottoms)
    out = {}
    for name, shape, how in zip(bottom_names(sample), sample.bottoms, values):
        shape = tuple(shape)
        if how is None:
            array = rng.standard_normal(shape)
        elif how[0] == "int":
            array = rng.integers(how[1], how[2], size=shape)
        elif how[0] == "uniform":
            array = rng.uniform(how[1], how[2], size=shape)
        elif how[0] in ("choice", "choice_int"):
            array = rng.choice(np.asarray(how[1:], dtype=np.float64), size=shape)
        elif how[0] == "const":
            array = np.full(shape, how[1])
        else:
            raise ValueError(f"unknown value kind {how!r}")
        out[name] = np.asarray(array, dtype=np.float64)
    return out


def build(type_name: str, sample: Sample, seed: int = 0, **kwargs) -> torchcaffe.Net:
    param = net_param(type_name, sample, **kwargs)
    torch.manual_seed(seed)
    return torchcaffe.Net(param, sample.phase).to(DEVICE)


def run(net: torchcaffe.Net, values: dict[str, np.ndarray], seed: int = 1, backward: bool = True):
    """Forward (and backward) through pycaffe's API; returns data and diffs of every blob and param."""
    for name, array in values.items():
        target = net.blobs[name] if name in net.inputs else net.params[f"input_{name}"][0]
        target.data[...] = array
    torch.manual_seed(seed)
    net.forward()
    result = {f"data/{k}": b.data.copy() for k, b in net.blobs.items()}
    if backward:
        net.clear_param_diffs()
        net.backward()
        result.update({f"diff/{k}": b.diff.copy() for k, b in net.blobs.items()})
        for layer, blobs in net.params.items():
            result.update({f"pdiff/{layer}/{i}": b.diff.copy() for i, b in enumerate(blobs)})
    return result


# -- one layer without a net, for family tests ----------------------------------------------------

def make_layer(type_name: str, params: str, *shapes, tops: int = 1, name: str = "L", bottoms=None,
               top_names=None, phase: int = torchcaffe.TRAIN, seed: int | None = None):
    """Build one layer directly, as the net would, for bottoms of ``shapes``.

    Bottoms are named ``b0..`` and tops ``t0..`` unless ``bottoms``/``top_names`` say otherwise.
    With ``seed``, torch is seeded first, so the layer's fillers draw the same values every run.
    """
    param = caffe_pb2.LayerParameter(name=name, type=type_name)
    text_format.Merge(params, param)
    param.bottom.extend(bottoms or [f"b{i}" for i in range(len(shapes))])
    param.top.extend(top_names or [f"t{i}" for i in range(tops)])
    if seed is not None:
        torch.manual_seed(seed)
    return layer_class(type_name)(LayerSetup(param, [torch.Size(s) for s in shapes], phase))


def float64_tensor(array, grad: bool = False) -> torch.Tensor:
    """``array`` as a float64 tensor, optionally requiring its gradient."""
    return torch.tensor(np.asarray(array, dtype=np.float64), requires_grad=grad)


def net_from(text: str, phase: int = torchcaffe.TRAIN) -> torchcaffe.Net:
    """A net from prototxt text."""
    return torchcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def expect_error(match_words, fn, *args, **kwargs) -> str:
    """Call ``fn`` expecting a NetError whose message holds every one of ``match_words``."""
    with pytest.raises(NetError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for word in match_words:
        assert word in message, f"{word!r} not in {message!r}"
    return message
