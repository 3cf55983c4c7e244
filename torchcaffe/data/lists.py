"""The text files that list a data layer's images, read as Caffe reads them.

    read_image_list(source) -> [(filename, label)]     ImageData, convert_imageset
    read_pairs(source) -> [(image, label_image)]       SegNet's DenseImageData, HED's ImageLabelmapData
    read_segmentation_list(source, with_label) -> [(image, label_or_"")]   DeepLab's ImageSegData

* ImageData / ``convert_imageset``: one example per line, ``<path> <label>``; the label is what
  follows the **last** space, so paths may contain spaces.
* DenseImageData / ImageLabelmapData: whitespace-separated pairs ``<image> <label image>``.
* ImageSegData: per line, an image and (unless the labels are NONE) a label image or number.

Paths are used as written, joined to ``root_folder`` by plain concatenation (Caffe's
``root_folder + path``: give ``root_folder`` a trailing slash).

Differs from Caffe: blank lines are skipped (Caffe turns them into an empty file name, which
then fails to load); a line without a label, a label that is not an integer (Caffe's ``atoi``
reads it as 0) or an odd number of names in a pair list is an error naming the file and line;
an empty list is an error (Caffe's ImageData checks it, the forks index past the end).
"""
from __future__ import annotations

import os

from .errors import DataError


def _lines(source: str, what: str) -> list[str]:
    if not source:
        raise DataError(f"{what} is not set: give the text file that lists the images")
    try:
        with open(source, encoding="utf-8", errors="surrogateescape", newline=None) as f:
            return f.read().splitlines()
    except OSError as err:
        raise DataError(f"cannot read the list file {source!r} ({what}; relative paths are "
                        f"relative to the working directory {os.getcwd()!r}): "
                        f"{err.strerror or err}") from None


def read_image_list(source: str, what: str = "image_data_param.source") -> list[tuple[str, int]]:
    """``(filename, label)`` per non-blank line of ``source``."""
    entries = []
    for number, line in enumerate(_lines(source, what), 1):
        if not line.strip():
            continue
        name, space, label = line.rpartition(" ")
        if not space or not name:
            raise DataError(f"{source}:{number}: expected '<image path> <label>', got {line!r}")
        try:
            entries.append((name, int(label)))
        except ValueError:
            raise DataError(f"{source}:{number}: the label {label!r} is not an integer") from None
    if not entries:
        raise DataError(f"{source}: the list holds no images ({what})")
    return entries


def read_pairs(source: str, what: str) -> list[tuple[str, str]]:
    """Whitespace-separated ``(image, label image)`` pairs."""
    tokens = [(number, token) for number, line in enumerate(_lines(source, what), 1) for token in line.split()]
    if len(tokens) % 2:
        number, token = tokens[-1]
        raise DataError(f"{source}:{number}: {token!r} has no label image after it (the list "
                        f"holds pairs '<image> <label image>')")
    if not tokens:
        raise DataError(f"{source}: the list holds no images ({what})")
    return [(tokens[i][1], tokens[i + 1][1]) for i in range(0, len(tokens), 2)]


def read_segmentation_list(source: str, with_label: bool, what: str = "image_data_param.source"
                           ) -> list[tuple[str, str]]:
    """DeepLab's lists: per line the image, then (``with_label``) its label image or number."""
    entries = []
    for number, line in enumerate(_lines(source, what), 1):
        words = line.split()
        if not words:
            continue
        if with_label and len(words) < 2:
            raise DataError(f"{source}:{number}: expected '<image> <label>', got {line!r}")
        entries.append((words[0], words[1] if with_label else ""))
    if not entries:
        raise DataError(f"{source}: the list holds no images ({what})")
    return entries
