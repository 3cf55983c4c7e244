"""Caffe's protobuf schema for torchcaffe.

``caffe_pb2`` is generated from ``caffe.proto`` in this directory, our own schema
that is wire- and text-format-compatible with BVLC Caffe's. It is checked in;
after editing ``caffe.proto`` regenerate it with ``python scripts/gen_proto.py``.
Nothing is compiled at import time.

    from torchcaffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
"""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
