"""Caffe's data pipeline: databases of Datums, images, the data transformer, loading ahead of
the net, and the dataset tools.

    from torchcaffe.data import convert_imageset, compute_image_mean, open_database

Modules: :mod:`.db` (LMDB/LevelDB), :mod:`.datum` (Datum records), :mod:`.image` (OpenCV
reading, BGR), :mod:`.transformer` (``transform_param``), :mod:`.prefetch` (the background
loader), :mod:`.loaders`, :mod:`.windows`, :mod:`.annotated`, :mod:`.segmentation` (the data
layers' batch loaders), :mod:`.lists` (list files), :mod:`.tools` (``convert_imageset`` & co.).
The layers themselves are in :mod:`torchcaffe.layers.data`. Submodules load on first use, so
``import torchcaffe`` does not import OpenCV or the database bindings.
"""
from __future__ import annotations

import importlib

from .errors import DataError

#: Public name -> the submodule defining it (loaded when the name is first used).
_EXPORTS = {
    "open_database": "db", "create_database": "db", "RecordCycle": "db", "imageset_key": "db",
    "feature_key": "db", "Database": "db", "DatabaseWriter": "db",
    "parse_datum": "datum", "parse_annotated_datum": "datum", "datum_image": "datum",
    "image_to_datum": "datum", "encoded_datum": "datum", "datum_to_array": "datum", "array_to_datum": "datum",
    "read_image": "image", "decode_image": "image", "encode_image": "image", "resize_image": "image",
    "DataTransformer": "transformer", "BatchQueue": "prefetch",
    "convert_imageset": "tools", "compute_image_mean": "tools", "extract_features": "tools",
    "upgrade_net_proto_text": "tools", "upgrade_net_proto_binary": "tools", "upgrade_solver_proto_text": "tools",
}

__all__ = ["DataError", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchcaffe.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
