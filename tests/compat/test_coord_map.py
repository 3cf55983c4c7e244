"""pycaffe's test_coord_map.py, as behaviour: the maps of convolution, pooling and
deconvolution, their composition, and the crop that aligns an FCN's output to its input."""
from __future__ import annotations

import numpy as np
import pytest

import torchcaffe as caffe
from torchcaffe import layers as L
from torchcaffe import params as P
from torchcaffe.compat.coord_map import coord_map_from_to, crop


def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [s * 2 for s in dstride] if isinstance(dstride, list) else dstride * 2
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=deconv_ks, stride=dstride, pad=dpad)
    return n


def _ends(n):
    return n.deconv, n.data


def test_conv_pool_deconv_maps_back_with_an_offset():
    ax, a, b = coord_map_from_to(*_ends(coord_net_spec()))  # 2x pooling undone by 2x deconvolution
    assert ax == 1 and (a == 1).all() and (b == 0).all()
    ax, a, b = coord_map_from_to(*_ends(coord_net_spec(pool=4, dstride=4)))  # 4x: shifted by one
    assert ax == 1 and (a == 1).all() and (b == -1).all()
    n = coord_net_spec()
    _, a, b = coord_map_from_to(n.pool, n.data)
    assert (a == 2).all() and (b == 1.5).all()  # a pooled pixel's centre in input coordinates


def test_pass_through_layers_keep_the_map():
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.bn = L.BatchNorm(n.relu)
    ax_pass, a_pass, b_pass = coord_map_from_to(n.bn, n.data)
    assert ax == ax_pass and (a == a_pass).all() and (b == b_pass).all()


def test_padding_shifts_the_offset():
    _, a, b = coord_map_from_to(*_ends(coord_net_spec()))
    for pad in range(1, 4):
        _, a_pad, b_pad = coord_map_from_to(*_ends(coord_net_spec(pad=pad)))
        assert (a == a_pad).all() and (b - pad == b_pad).all()
        _, a_pad, b_pad = coord_map_from_to(*_ends(coord_net_spec(dpad=pad)))
        assert (a == a_pad).all() and (b + pad == b_pad).all()
        _, a_pad, b_pad = coord_map_from_to(*_ends(coord_net_spec(pad=pad, dpad=pad)))
        assert (a == a_pad).all() and (b == b_pad).all()


def test_rectangular_kernels_map_each_axis_on_its_own():
    _, a33, b33 = coord_map_from_to(*_ends(coord_net_spec(ks=3, stride=1, pad=0)))
    _, a55, b55 = coord_map_from_to(*_ends(coord_net_spec(ks=5, stride=2, pad=10)))
    ax, a35, b35 = coord_map_from_to(*_ends(coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])))
    assert ax == 1
    assert (a35[0], b35[0]) == (a33[0], b33[0]) and (a35[1], b35[1]) == (a55[0], b55[0])


def test_crop_of_crop_composes():
    n = coord_net_spec()
    offset = int(np.random.default_rng(0).integers(1, 10))
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
    ax_crop, a_crop, b_crop = coord_map_from_to(n.crop, n.data)
    assert ax == ax_crop and (a == a_crop).all() and (b + offset == b_crop).all()


def test_crop_helper_builds_a_net_that_aligns(tmp_path):
    n = coord_net_spec(pool=4, dstride=4)
    n.crop = crop(n.deconv, n.data)
    proto = n.to_proto()
    layer = proto.layer[-1]
    assert layer.type == "Crop" and layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [1]
    path = tmp_path / "fcn.prototxt"
    path.write_text(str(proto))
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs["deconv"].data.shape[2:] == (104, 104)
    assert net.blobs["crop"].data.shape == (2, 10, 100, 100)


def test_unconnected_tops_raise():
    n = coord_net_spec()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError):
        coord_map_from_to(n.ip, n.data)


def test_scale_mismatch_and_negative_offsets_are_refused():
    n = coord_net_spec()
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.pool, n.data)
    n = coord_net_spec(dpad=10)
    with pytest.raises(AssertionError, match="negative offset"):
        crop(n.deconv, n.data)
