"""The error the data pipeline raises for bad data: a database, list file or image that cannot be
read as Caffe would read it.

Messages name the place (database and key, list file and line, image file) and the problem.
Data layers re-raise it as :class:`~torchcaffe.errors.NetError` with the layer's name in front.
"""
from __future__ import annotations

from ..errors import CaffeError


class DataError(CaffeError):
    """Data that Caffe could not read: a missing or corrupt record, image or list line."""
