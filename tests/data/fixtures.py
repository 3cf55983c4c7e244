"""Helpers that write the databases, images and lists the data tests read."""
from __future__ import annotations

import cv2
import numpy as np

from torchcaffe.data.datum import array_to_datum, encoded_datum
from torchcaffe.data.db import create_database, imageset_key


def write_png(path, image: np.ndarray) -> str:
    """Write an (H, W, C) or (H, W) uint8 image losslessly; returns the path."""
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    with open(path, "wb") as f:
        f.write(buffer.tobytes())
    return str(path)


def write_datums(path, images, labels=None, backend="lmdb", encoding: str | None = None) -> str:
    """A database of Datums from (C, H, W) arrays: uint8 -> raw ``data``, other types ->
    ``float_data``, or the image encoded (PNG/JPEG, BGR) when ``encoding`` is given. Keys follow
    convert_imageset (``%08d_im<i>``)."""
    labels = list(range(len(images))) if labels is None else labels
    with create_database(str(path), backend) as db:
        for i, (image, label) in enumerate(zip(images, labels)):
            if encoding:
                ok, buffer = cv2.imencode("." + encoding, np.ascontiguousarray(image.transpose(1, 2, 0)))
                assert ok
                datum = encoded_datum(buffer.tobytes(), label)
            else:
                datum = array_to_datum(image, label)
            db.put(imageset_key(i, f"im{i}"), datum.SerializeToString())
    return str(path)


def random_images(count: int, shape=(3, 6, 5), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def write_list(path, lines) -> str:
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    return str(path)
