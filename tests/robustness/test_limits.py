"""Resource limits (torchcaffe/limits.py): absurd shapes fail at build time, before allocating,
with the layer and the size in the message; weights files cannot make us allocate what they do
not hold; the limits can be changed."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

import torchcaffe
from torchcaffe import limits
from torchcaffe.errors import NetError, WeightsError
from torchcaffe.io.weights import read_weights
from torchcaffe.limits import ResourceLimitError

INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
CONV = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        'convolution_param { num_output: 4096 kernel_size: 1 } }\n')


def net_file(tmp_path, text: str) -> str:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return str(path)


def dims(*values) -> str:
    return " ".join(f"dim: {v}" for v in values)


def test_input_of_a_trillion_elements_fails_naming_layer_and_size(tmp_path):
    path = net_file(tmp_path, INPUT.format(dims=dims(10**6, 10**6)))
    with pytest.raises(ResourceLimitError) as info:
        torchcaffe.Net(path)
    message = str(info.value)
    assert path in message and 'layer "data" (Input)' in message and "input_param.shape[0]" in message
    assert "1000000000000 elements" in message and "3.6 TiB" in message and "max_blob_elements" in message
    assert isinstance(info.value, NetError)


def test_convolution_whose_output_needs_terabytes_fails_before_allocating(tmp_path):
    path = net_file(tmp_path, INPUT.format(dims=dims(16, 3, 4096, 4096)) + CONV)
    with pytest.raises(ResourceLimitError) as info:
        torchcaffe.Net(path)
    assert 'layer "conv1" (Convolution)' in str(info.value) and "top blob 'conv1'" in str(info.value)
    assert "(16, 4096, 4096, 4096)" in str(info.value) and "TiB" in str(info.value)


def test_huge_parameter_blob_is_refused_before_it_is_created(tmp_path):
    text = INPUT.format(dims=dims(1, 1000)) + ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                                               'inner_product_param { num_output: 1000000000 } }')
    with pytest.raises(ResourceLimitError, match=r'layer "fc" \(InnerProduct\): parameter blob 0 \(weight\)'):
        torchcaffe.Net(net_file(tmp_path, text))


def test_dummy_data_shape_is_checked_before_the_layer_fills_it(tmp_path):
    text = 'layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 100000 dim: 100000 } } }'
    with pytest.raises(ResourceLimitError, match="dummy_data_param.shape"):
        torchcaffe.Net(net_file(tmp_path, text))


def test_total_bytes_limit_counts_every_blob_and_is_configurable(tmp_path):
    path = net_file(tmp_path, INPUT.format(dims=dims(1, 3, 64, 64)) + CONV.replace("4096", "8"))
    torchcaffe.Net(path)  # 48 KiB + 128 KiB of tops: fine by default
    with limits.set(max_total_bytes=100 * 1024):
        with pytest.raises(ResourceLimitError, match=r"brings the net's blobs to .* over the limit of 100.0 KiB"):
            torchcaffe.Net(path)
    torchcaffe.Net(path)  # the block restored the limit


def test_element_limit_set_globally_and_restored(tmp_path):
    path = net_file(tmp_path, INPUT.format(dims=dims(2, 3, 4, 4)))
    previous = limits.current()
    handle = limits.set(max_blob_elements=10)
    try:
        assert limits.current().max_blob_elements == 10
        with pytest.raises(ResourceLimitError, match="over the limit of 10 elements"):
            torchcaffe.Net(path)
    finally:
        handle.__exit__(None, None, None)
    assert limits.current() == previous
    with pytest.raises(ValueError, match="positive integer"):
        limits.set(max_blob_elements=0)


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("TORCHCAFFE_MAX_BLOB_ELEMENTS", "1000")
    monkeypatch.setenv("TORCHCAFFE_MAX_TOTAL_BYTES", "64G")
    assert limits._from_environment() == limits.Limits(1000, 64 * 2**30)
    monkeypatch.setenv("TORCHCAFFE_MAX_TOTAL_BYTES", "lots")
    with pytest.raises(torchcaffe.CaffeError, match="TORCHCAFFE_MAX_TOTAL_BYTES='lots'"):
        limits._from_environment()


def test_caffemodel_whose_blob_shape_disagrees_with_its_payload_is_refused(tmp_path):
    from torchcaffe.io.weights import write_caffemodel
    from torchcaffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="ip", type="InnerProduct")
    path = str(tmp_path / "w.caffemodel")
    write_caffemodel(path, net, [[np.ones((2, 3), np.float32)]])
    raw = bytearray(open(path, "rb").read())
    at = raw.index(bytes([0x3A, 0x04, 0x0A, 0x02, 0x02, 0x03]))  # shape { dim: [2, 3] } packed
    raw[at + 4:at + 6] = bytes([0x7F, 0x7F])  # declare (127, 127): 16129 values, 6 stored
    open(path, "wb").write(bytes(raw))
    with pytest.raises(WeightsError, match=r"has 6 values but shape \(127, 127\) needs 16129"):
        read_weights(path)


def test_hdf5_dataset_declaring_more_than_it_stores_is_refused(tmp_path):
    path = str(tmp_path / "w.caffemodel.h5")
    with h5py.File(path, "w") as h5:
        h5.create_group("data/ip").create_dataset("0", shape=(2**40,), dtype="f4", chunks=(1024,))
    with pytest.raises(ResourceLimitError, match=r'dataset "0" would have shape \(1099511627776,\)'):
        read_weights(path)
    with h5py.File(path, "w") as h5:
        h5.create_group("data/ip").create_dataset("0", shape=(1000, 1000), dtype="f4")  # never written
    with pytest.raises(WeightsError, match=r"declares shape \(1000, 1000\) \(4000000 bytes\) but the file stores 0"):
        read_weights(path)


def test_encoded_image_declaring_a_giant_size_is_refused_before_decoding():
    """A PNG/JPEG header is read before OpenCV allocates: a declared 2^16 x 2^16 image is refused."""
    import cv2

    from torchcaffe.data.image import decode_image, declared_image_size

    image = np.zeros((5, 7, 3), np.uint8)
    png, jpeg = (cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg"))
    assert declared_image_size(png) == (7, 5) and declared_image_size(jpeg) == (7, 5)
    assert declared_image_size(b"BM not an image") is None
    giant = png[:16] + (2**16).to_bytes(4, "big") * 2 + png[24:]
    with pytest.raises(ResourceLimitError, match=r"record 3: the encoded image would have shape \(3, 65536, 65536\)"):
        decode_image(giant, True, "record 3")
    with torchcaffe.limits.set(max_blob_elements=100):
        with pytest.raises(ResourceLimitError, match="over the limit of 100 elements"):
            decode_image(jpeg, True, "x")
    assert decode_image(png, True, "x").shape == (5, 7, 3)
