"""Caffe's automatic Split layers (``insert_splits.cpp``), reproduced name for name.

When one produced blob feeds several layers (or feeds one layer and also carries a prototxt
``loss_weight``), Caffe inserts a ``Split`` layer right after the producer and gives each consumer
its own copy. pycaffe shows those layers and blobs, so we build them the same way:

* layer name ``<blob>_<producer>_<top index>_split``;
* tops ``<blob>_<producer>_<top index>_split_<k>``, handed to consumers in net order;
* a loss weight on the shared top moves to split top 0, and — Caffe's quirk — *all* loss weights
  of the producing layer are cleared.

An in-place consumer has its bottom renamed but keeps its top name, so it becomes
out-of-place (``x_split_1 -> x``); the blob's diff still ends as the gradient with respect to its
first value, because the Split layer writes the summed gradient last.
"""
from __future__ import annotations

from collections import defaultdict

from ..errors import NetError, layer_label
from ..proto import caffe_pb2


def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def insert_splits(param: caffe_pb2.NetParameter, source: str = "") -> caffe_pb2.NetParameter:
    """A copy of ``param`` with Split layers wherever a top is consumed more than once."""
    last_producer: dict[str, tuple[int, int]] = {}
    source_of_bottom: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = defaultdict(int)
    loss_weight_of: dict[tuple[int, int], float] = {}
    where = f" in {source}" if source else ""
    for i, layer in enumerate(param.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_producer:
                raise NetError(f"{layer_label(layer.name, layer.type)}: unknown bottom blob {blob!r} "
                               f"(bottom {j}){where}: no earlier layer produces it. Check the "
                               f"spelling, the layer order, and include/exclude rules of its producer.")
            source_of_bottom[(i, j)] = last_producer[blob]
            consumers[last_producer[blob]] += 1
        for j, blob in enumerate(layer.top):
            last_producer[blob] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_producer[layer.top[j]]
            loss_weight_of[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[top] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = defaultdict(int)
    for i, original in enumerate(param.layer):
        layer = out.layer.add()
        layer.CopyFrom(original)
        for j in range(len(layer.bottom)):
            top = source_of_bottom[(i, j)]
            if consumers[top] > 1:
                producer = param.layer[top[0]].name
                layer.bottom[j] = split_blob_name(producer, layer.bottom[j], top[1], next_split[top])
                next_split[top] += 1
        for j, blob in enumerate(original.top):
            count = consumers[(i, j)]
            if count > 1:
                weight = loss_weight_of.get((i, j), 0.0)
                split = out.layer.add()
                split.name = split_layer_name(original.name, blob, j)
                split.type = "Split"
                split.bottom.append(blob)
                split.top.extend(split_blob_name(original.name, blob, j, k) for k in range(count))
                if weight:
                    split.loss_weight.extend([weight] + [0.0] * (count - 1))
                    del layer.loss_weight[:]
                    next_split[(i, j)] += 1
    return out
