"""Caffe's dataset and model tools as functions (the command line verbs call them).

    convert_imageset(root_folder, listfile, db_name, *, gray, shuffle, backend, resize_width,
                     resize_height, check_size, encoded, encode_type, seed) -> ConvertReport
    compute_image_mean(input_db, output_file=None, backend="lmdb") -> np.ndarray (1, C, H, W)
    extract_features(pretrained_net_param, feature_extraction_proto, blob_names, dataset_names,
                     num_mini_batches, db_type="lmdb", device="cpu") -> list[str]
    upgrade_net_proto_text(input, output) / upgrade_net_proto_binary(input, output)
    upgrade_solver_proto_text(input, output)                 -> bool: whether anything changed

Arguments keep the names and defaults of Caffe's ``tools/*.cpp`` flags. Databases are written
the way Caffe writes them (same keys, same Datum bytes), into a temporary folder renamed onto
the target when complete; other outputs are written atomically too. Progress goes to the
``torchcaffe`` logger in Caffe's words ("Processed 1000 files.").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaffeError, ParseError
from ..proto import caffe_pb2
from .datum import datum_image, encoded_datum, image_to_datum, parse_datum
from .db import COMMIT_EVERY, create_database, describe_key, feature_key, imageset_key, open_database
from .errors import DataError
from .image import encode_image, matches_extension, read_image
from .lists import read_image_list

log = logging.getLogger("torchcaffe")
F32 = np.float32


# -- convert_imageset ---------------------------------------------------------------------------

@dataclass
class ConvertReport:
    """What ``convert_imageset`` wrote: the record count and the lines it skipped (Caffe skips
    images OpenCV cannot read, with an error line each)."""

    written: int
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (line, file, problem)


def convert_imageset(root_folder: str, listfile: str, db_name: str, *, gray: bool = False,
                     shuffle: bool = False, backend: str = "lmdb", resize_width: int = 0,
                     resize_height: int = 0, check_size: bool = False, encoded: bool = False,
                     encode_type: str = "", seed: int | None = None) -> ConvertReport:
    """Caffe's ``convert_imageset ROOTFOLDER/ LISTFILE DB_NAME``: the images of ``listfile``
    (lines ``<path> <label>``) into a new LMDB/LevelDB of Datums keyed ``%08d_<path>`` (the
    line's index after shuffling).

    ``gray`` reads in grey; ``resize_height``/``resize_width`` (both > 0) resize bilinearly;
    ``encoded`` stores the image file itself (as it is when its format is ``encode_type`` and
    nothing was resized or converted, else re-encoded), ``encode_type`` defaulting to the first
    file's extension; ``shuffle`` permutes the lines (with ``seed``); ``check_size`` requires
    every image to have the first one's channels x height x width.

    Differs from Caffe: an image that cannot be read is skipped with a warning as in Caffe, but
    the report lists it; ``check_size`` compares decoded sizes, so it also works with
    ``encoded`` (Caffe compares raw byte counts and fails on encoded images); nothing readable
    at all is an error, and so is an encoding that cannot be guessed.
    """
    entries = read_image_list(listfile, "the list file")
    if shuffle:
        log.info("Shuffling data")
        order = np.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    log.info("A total of %d images.", len(entries))
    encoding = _encoding(encoded, encode_type, entries[0][0])
    report = ConvertReport(0)
    first_shape = None
    with create_database(db_name, backend) as db:
        for index, (name, label) in enumerate(entries):
            path = root_folder + name
            try:
                image = read_image(path, resize_height, resize_width, not gray)
            except DataError as err:
                log.warning("Could not open or find file %s (%s); line %d skipped", path, err, index + 1)
                report.skipped.append((index + 1, name, str(err)))
                continue
            if check_size:
                first_shape = _check_size(first_shape, image, listfile, name)
            datum = _image_datum(path, image, label, encoding, not gray, bool(resize_height and resize_width))
            db.put(imageset_key(index, name), datum.SerializeToString())
            report.written += 1
            if report.written % COMMIT_EVERY == 0:
                log.info("Processed %d files.", report.written)
        if report.written == 0:
            raise DataError(f"{listfile}: none of the {len(entries)} listed images could be read "
                            f"(root_folder {root_folder!r}); no database written")
    if report.written % COMMIT_EVERY:
        log.info("Processed %d files.", report.written)
    return report


def _encoding(encoded: bool, encode_type: str, first_file: str) -> str:
    """The encoding to store, or "" for raw pixels (Caffe guesses it from the first file)."""
    if encode_type and not encoded:
        log.warning("encode_type %r is used only with encoded=True; storing raw pixels", encode_type)
        return ""
    if not encoded or encode_type:
        return encode_type.lower()
    dot = first_file.rfind(".")
    if dot < 0:
        raise DataError(f"cannot guess the encoding of {first_file!r} (no extension); give encode_type")
    return first_file[dot + 1:].lower()


def _check_size(first_shape, image: np.ndarray, listfile: str, name: str):
    if first_shape is None:
        return image.shape
    if image.shape != first_shape:
        got, want = (f"{s[2]} x {s[0]} x {s[1]}" for s in (image.shape, first_shape))
        raise DataError(f"{listfile}: {name!r} is {got} (channels x height x width) but the first "
                        f"image is {want}; check_size requires one size")
    return first_shape


def _image_datum(path: str, image: np.ndarray, label: int, encoding: str, is_color: bool,
                 resized: bool) -> caffe_pb2.Datum:
    """Caffe's ``ReadImageToDatum``: raw pixels, the file as it is, or re-encoded."""
    if not encoding:
        return image_to_datum(image, label)
    if (image.shape[2] == 3) == is_color and not resized and matches_extension(path, encoding):
        with open(path, "rb") as f:
            return encoded_datum(f.read(), label)
    return encoded_datum(encode_image(image, encoding, path), label)


# -- compute_image_mean ---------------------------------------------------------------------------

def compute_image_mean(input_db: str, output_file: str | None = None, backend: str = "lmdb") -> np.ndarray:
    """Caffe's ``compute_image_mean INPUT_DB [OUTPUT_FILE] --backend``: the mean of every record
    (encoded images decoded as stored), as a (1, C, H, W) float32 array; written to
    ``output_file`` as a ``BlobProto`` with Caffe's legacy num/channels/height/width shape.

    Sums are kept in float32 and divided by the count, as Caffe does; the per-channel means are
    logged (``mean_value channel [c]: v``). Records of another size are an error naming the key.
    """
    database = open_database(input_db, backend)
    try:
        total, count, shape = None, 0, None
        for key, value in database.items():
            where = f"{database.path} key {describe_key(key)}"
            pixels = datum_image(parse_datum(value, where), where)
            if total is None:
                shape, total = pixels.shape, np.zeros(pixels.shape, dtype=F32)
            elif pixels.shape != shape:
                raise DataError(f"{where}: the record is {_dims(pixels.shape)} but the first is "
                                f"{_dims(shape)}; compute_image_mean needs one size")
            total += pixels.astype(F32)
            count += 1
            if count % 10000 == 0:
                log.info("Processed %d files.", count)
    finally:
        database.close()
    if total is None:
        raise DataError(f"{input_db}: the database is empty; there is no mean to compute")
    if count % 10000:
        log.info("Processed %d files.", count)
    mean = (total / F32(count)).astype(F32).reshape((1,) + shape)
    if output_file is not None:
        log.info("Write to %s", output_file)
        _write_mean(output_file, mean)
    dim = shape[1] * shape[2]
    for c in range(shape[0]):
        log.info("mean_value channel [%d]: %g", c, float(mean[0, c].sum(dtype=np.float64)) / dim)
    return mean


def _dims(shape) -> str:
    return " x ".join(str(d) for d in shape)


def _write_mean(path: str, mean: np.ndarray) -> None:
    """The mean as Caffe's ``compute_image_mean`` writes it: legacy 4-D shape + float data."""
    from ..io.files import atomic_output_file

    _, channels, height, width = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=channels, height=height, width=width)
    blob.data.extend(mean.reshape(-1).tolist())
    with atomic_output_file(path, DataError) as f:
        f.write(blob.SerializeToString())


# -- extract_features -----------------------------------------------------------------------------

def extract_features(pretrained_net_param: str, feature_extraction_proto: str, blob_names,
                     dataset_names, num_mini_batches: int, db_type: str = "lmdb",
                     device: str = "cpu") -> list[str]:
    """Caffe's ``extract_features``: build the net in TEST, load the weights, run
    ``num_mini_batches`` forwards and store each image's values of every blob in
    ``blob_names`` (a list or Caffe's comma-separated string) to the matching entry of
    ``dataset_names``.

    ``db_type`` lmdb or leveldb: Datums with ``float_data``, ``channels``/``height``/``width``
    the blob's legacy 4-D shape, keys ``%010d`` (the image's number); hdf5 (ours): one file per
    dataset holding a float32 dataset named after the blob, (images, *blob shape[1:]).
    Returns the paths written.
    """
    import torch

    from ..net.net import TEST, Net

    blobs = _names(blob_names)
    datasets = _names(dataset_names)
    if len(blobs) != len(datasets):
        raise DataError(f"extract_features: {len(blobs)} blob name(s) but {len(datasets)} dataset "
                        f"name(s); give one dataset per blob")
    if num_mini_batches <= 0:
        raise DataError(f"extract_features: num_mini_batches must be > 0, got {num_mini_batches}")
    net = Net(feature_extraction_proto, TEST, weights=pretrained_net_param).to(device)
    missing = [b for b in blobs if b not in net.blobs]
    if missing:
        raise DataError(f"{feature_extraction_proto}: no blob named {missing} in the net "
                        f"(blobs: {list(net.blobs)})")
    features: dict[str, list[np.ndarray]] = {b: [] for b in blobs}
    with torch.no_grad():
        for batch in range(num_mini_batches):
            net.forward()
            for name in blobs:
                features[name].append(np.array(net.blobs[name].data, dtype=F32, copy=True))
            log.info("Extracted features of %d query images.", (batch + 1) * features[blobs[0]][-1].shape[0])
    db_type = db_type.lower()
    for name, dataset in zip(blobs, datasets):
        values = np.concatenate(features[name])
        if db_type == "hdf5":
            _write_features_hdf5(dataset, name, values)
        else:
            _write_features_db(dataset, db_type, values)
        log.info("Extracted features of %d query images for feature blob %s", len(values), name)
    return datasets


def _names(names) -> list[str]:
    return [n for n in names.split(",") if n] if isinstance(names, str) else list(names)


def _write_features_db(path: str, backend: str, values: np.ndarray) -> None:
    if values.ndim > 4:
        raise DataError(f"{path}: blobs of {values.ndim - 1} axes do not fit a Datum "
                        f"(channels x height x width)")
    legacy = values.shape[1:] + (1,) * (4 - values.ndim)
    with create_database(path, backend) as db:
        for index, row in enumerate(values):
            datum = caffe_pb2.Datum(channels=legacy[0], height=legacy[1], width=legacy[2])
            datum.float_data.extend(row.reshape(-1).tolist())
            db.put(feature_key(index), datum.SerializeToString())


def _write_features_hdf5(path: str, blob: str, values: np.ndarray) -> None:
    import h5py

    from ..io.files import atomic_output_path

    with atomic_output_path(path, DataError) as temp:
        with h5py.File(temp, "w") as h5:
            h5.create_dataset(blob, data=values)


# -- upgrades -----------------------------------------------------------------------------------

def upgrade_net_proto_text(input_file: str, output_file: str) -> bool:
    """Caffe's ``upgrade_net_proto_text``: read a net prototxt (any version), upgrade it to the
    current format and write it as Caffe's text printer does. Returns whether it needed an
    upgrade (Caffe writes the output either way)."""
    from ..io.prototxt import net_to_text, parse_text
    from ..io.upgrade import net_needs_upgrade, upgrade_net

    net = parse_text(_read_text(input_file), caffe_pb2.NetParameter(), input_file)
    needed = net_needs_upgrade(net)
    if not needed:
        log.warning("File already in latest proto format: %s", input_file)
    _write_bytes(output_file, net_to_text(upgrade_net(net, input_file)).encode("utf-8"))
    return needed


def upgrade_net_proto_binary(input_file: str, output_file: str) -> bool:
    """Caffe's ``upgrade_net_proto_binary``: the same for a binary NetParameter (a
    ``.caffemodel``: the learned blobs are kept)."""
    from google.protobuf.message import DecodeError

    from ..io.files import read_file_bytes
    from ..io.upgrade import net_needs_upgrade, upgrade_net

    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(bytes(read_file_bytes(input_file, ParseError)))
    except DecodeError as err:
        raise ParseError(f"{input_file}: not a binary NetParameter: {err or 'damaged'}") from None
    needed = net_needs_upgrade(net)
    if not needed:
        log.warning("File already in latest proto format: %s", input_file)
    _write_bytes(output_file, upgrade_net(net, input_file).SerializeToString())
    return needed


def upgrade_solver_proto_text(input_file: str, output_file: str) -> bool:
    """Caffe's ``upgrade_solver_proto_text``: ``solver_type`` enum -> ``type`` string (the
    ``snapshot_prefix`` is left as written, as Caffe's tool leaves it)."""
    from ..io.prototxt import net_to_text, parse_text
    from ..io.upgrade import solver_needs_type_upgrade, upgrade_solver

    solver = parse_text(_read_text(input_file), caffe_pb2.SolverParameter(), input_file)
    needed = solver_needs_type_upgrade(solver)
    if not needed:
        log.warning("File already in latest proto format: %s", input_file)
    _write_bytes(output_file, net_to_text(upgrade_solver(solver, input_file)).encode("utf-8"))
    return needed


def _read_text(path: str) -> bytes:
    from ..io.files import open_for_reading

    with open_for_reading(path, ParseError) as f:
        return f.read()


def _write_bytes(path: str, data: bytes) -> None:
    from ..io.files import atomic_output_file

    with atomic_output_file(path, CaffeError) as f:
        f.write(data)


__all__ = ["ConvertReport", "convert_imageset", "compute_image_mean", "extract_features",
           "upgrade_net_proto_text", "upgrade_net_proto_binary", "upgrade_solver_proto_text"]
