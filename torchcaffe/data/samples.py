"""Small databases, images and list files for the data layers' sample tables (the generic layer
tests build nets from them). Written once per process, on first use, into a temporary folder
removed at exit — never at import.

    sample_paths() -> {"lmdb": ..., "leveldb": ..., "mean": ..., "images": ..., ...}
"""
from __future__ import annotations

import os

import numpy as np

_PATHS: dict[str, str] = {}


def sample_paths() -> dict[str, str]:
    """Every sample file, made on the first call (see the functions below for their content)."""
    if not _PATHS:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="torchcaffe-data-samples-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        rng = np.random.default_rng(0)
        _PATHS.update(_datum_databases(folder, rng))
        _PATHS.update(_image_list(folder, rng))
        _PATHS.update(_window_file(folder, rng))
        _PATHS.update(_annotated_database(folder, rng))
        _PATHS.update(_segmentation_lists(folder, rng))
        _PATHS["root"] = folder + os.sep
    return _PATHS


def _datum_databases(folder: str, rng) -> dict[str, str]:
    """``lmdb``: 5 raw 3x6x5 Datums, labels 0..4; ``leveldb``: 4 PNG-encoded 3x6x5 Datums;
    ``mean``: a 1x3x6x5 mean file."""
    from ..io.binaryproto import write_blobproto
    from .datum import encoded_datum, image_to_datum
    from .db import create_database, imageset_key
    from .image import encode_image

    paths = {"lmdb": os.path.join(folder, "raw_lmdb"), "leveldb": os.path.join(folder, "png_leveldb"),
             "mean": os.path.join(folder, "mean.binaryproto")}
    with create_database(paths["lmdb"], "lmdb") as db:
        for i in range(5):
            image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            db.put(imageset_key(i, f"im{i}.png"), image_to_datum(image, i).SerializeToString())
    with create_database(paths["leveldb"], "leveldb") as db:
        for i in range(4):
            image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            db.put(imageset_key(i, f"im{i}.png"), encoded_datum(encode_image(image, "png"), i).SerializeToString())
    write_blobproto(paths["mean"], rng.uniform(0, 255, (1, 3, 6, 5)).astype(np.float32))
    return paths


def _write_png(path: str, image: np.ndarray) -> None:
    from .image import encode_image

    with open(path, "wb") as f:
        f.write(encode_image(image, "png"))


def _image_list(folder: str, rng) -> dict[str, str]:
    """``images``: a list of 4 colour 7x8 PNGs with labels (``root`` is their folder)."""
    listing = os.path.join(folder, "images.txt")
    with open(listing, "w") as f:
        for i in range(4):
            _write_png(os.path.join(folder, f"img{i}.png"), rng.integers(0, 256, (7, 8, 3), dtype=np.uint8))
            f.write(f"img{i}.png {i % 3}\n")
    return {"images": listing}


def _window_file(folder: str, rng) -> dict[str, str]:
    """``windows``: two 20x24 colour images with foreground and background windows."""
    listing = os.path.join(folder, "windows.txt")
    lines = []
    for i in range(2):
        _write_png(os.path.join(folder, f"win{i}.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
        lines += [f"# {i}", f"win{i}.png", "3", "20", "24", "3",
                  f"{i + 1} 0.9 2 3 12 15", f"{i + 2} 0.6 5 1 20 18", "4 0.2 0 0 23 19"]
    with open(listing, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"windows": listing}


def _annotated_database(folder: str, rng) -> dict[str, str]:
    """``annotated``: 3 AnnotatedDatums (12x16 PNG, two boxes in two classes each)."""
    from ..proto import caffe_pb2
    from .datum import encoded_datum
    from .db import create_database, imageset_key
    from .image import encode_image

    path = os.path.join(folder, "anno_lmdb")
    with create_database(path, "lmdb") as db:
        for i in range(3):
            record = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            record.datum.CopyFrom(encoded_datum(encode_image(image, "png"), 0))
            for label, box in ((1, (0.1, 0.2, 0.5, 0.6)), (2 + i % 2, (0.4, 0.3, 0.9, 0.95))):
                group = record.annotation_group.add(group_label=label)
                annotation = group.annotation.add(instance_id=0)
                annotation.bbox.xmin, annotation.bbox.ymin, annotation.bbox.xmax, annotation.bbox.ymax = box
            db.put(imageset_key(i, f"anno{i}.png"), record.SerializeToString())
    return {"annotated": path}


def _segmentation_lists(folder: str, rng) -> dict[str, str]:
    """``pairs`` (SegNet: 9x10 images, labels 0..3), ``edges`` (HED: 0/255 edge maps),
    ``segments`` (DeepLab: 6x7 images and labels, smaller than the sample's crop)."""
    paths = {name: os.path.join(folder, f"{name}.txt") for name in ("pairs", "edges", "segments")}
    with open(paths["pairs"], "w") as pairs, open(paths["edges"], "w") as edges, \
            open(paths["segments"], "w") as segments:
        for i in range(3):
            _write_png(os.path.join(folder, f"seg{i}.png"), rng.integers(0, 256, (9, 10, 3), dtype=np.uint8))
            _write_png(os.path.join(folder, f"lab{i}.png"), rng.integers(0, 4, (9, 10), dtype=np.uint8))
            _write_png(os.path.join(folder, f"edge{i}.png"), (rng.random((9, 10)) < 0.3).astype(np.uint8) * 255)
            _write_png(os.path.join(folder, f"small{i}.png"), rng.integers(0, 256, (6, 7, 3), dtype=np.uint8))
            _write_png(os.path.join(folder, f"smalllab{i}.png"), rng.integers(0, 21, (6, 7), dtype=np.uint8))
            pairs.write(f"seg{i}.png lab{i}.png\n")
            edges.write(f"seg{i}.png edge{i}.png\n")
            segments.write(f"small{i}.png smalllab{i}.png\n")
    return paths
