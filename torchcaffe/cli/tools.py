"""Caffe's dataset and model tools as verbs (``tools/*.cpp`` in Caffe, one binary each there):

    torchcaffe convert_imageset [--gray] [--shuffle] [--backend lmdb|leveldb] [--resize_width W]
                                [--resize_height H] [--check_size] [--encoded] [--encode_type png]
                                ROOTFOLDER/ LISTFILE DB_NAME
    torchcaffe compute_image_mean [--backend lmdb] INPUT_DB [OUTPUT_FILE]
    torchcaffe extract_features PRETRAINED_NET_PARAM FEATURE_EXTRACTION_PROTO BLOB[,BLOB...]
                                DATASET[,DATASET...] NUM_MINI_BATCHES lmdb|leveldb|hdf5 [CPU|GPU [DEVICE_ID]]
    torchcaffe upgrade_net_proto_text IN OUT       torchcaffe upgrade_net_proto_binary IN OUT
    torchcaffe upgrade_solver_proto_text IN OUT

The arguments are Caffe's, positional where Caffe's are; the work is done by
:mod:`torchcaffe.data.tools` (see there for the exact semantics).
"""
from __future__ import annotations

import argparse

from ..data import tools
from ..logs import LogSession, log
from .common import UsageError, add_bool_flag
from .registry import register_verb


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root_folder", metavar="ROOTFOLDER/", help="prefix of the image paths of the list")
    parser.add_argument("listfile", metavar="LISTFILE", help="lines '<path> <label>'")
    parser.add_argument("db_name", metavar="DB_NAME", help="the database to create (must not exist)")
    add_bool_flag(parser, "gray", "read the images in grey")
    add_bool_flag(parser, "shuffle", "shuffle the lines first")
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"), help="the database type")
    parser.add_argument("--resize_width", type=int, default=0, help="resize to this width (with --resize_height)")
    parser.add_argument("--resize_height", type=int, default=0, help="resize to this height (with --resize_width)")
    add_bool_flag(parser, "check_size", "require every image to have the first's size")
    add_bool_flag(parser, "encoded", "store the encoded image, not raw pixels")
    parser.add_argument("--encode_type", default="", help="the encoding with --encoded (png, jpg...)")
    parser.add_argument("--seed", type=int, default=None, help="the shuffle's seed (ours)")


@register_verb("convert_imageset", "convert a list of images into an LMDB/LevelDB of Datums", _convert_arguments)
def convert_imageset(args: argparse.Namespace, session: LogSession) -> int:
    report = tools.convert_imageset(args.root_folder, args.listfile, args.db_name, gray=args.gray,
                                    shuffle=args.shuffle, backend=args.backend, resize_width=args.resize_width,
                                    resize_height=args.resize_height, check_size=args.check_size,
                                    encoded=args.encoded, encode_type=args.encode_type, seed=args.seed)
    return 0


def _mean_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_db", metavar="INPUT_DB")
    parser.add_argument("output_file", metavar="OUTPUT_FILE", nargs="?", default=None,
                        help="the binaryproto to write (default: only log the means)")
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"))


@register_verb("compute_image_mean", "compute the mean image of a database (binaryproto)", _mean_arguments)
def compute_image_mean(args: argparse.Namespace, session: LogSession) -> int:
    tools.compute_image_mean(args.input_db, args.output_file, args.backend)
    return 0


def _features_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pretrained", metavar="PRETRAINED_NET_PARAM", help="the weights (.caffemodel)")
    parser.add_argument("proto", metavar="FEATURE_EXTRACTION_PROTO", help="the net (read in TEST)")
    parser.add_argument("blobs", metavar="BLOB[,BLOB...]")
    parser.add_argument("datasets", metavar="DATASET[,DATASET...]", help="one output per blob")
    parser.add_argument("batches", metavar="NUM_MINI_BATCHES", type=int)
    parser.add_argument("db_type", metavar="DB_TYPE", choices=("lmdb", "leveldb", "hdf5"))
    parser.add_argument("mode", metavar="CPU|GPU", nargs="?", default="CPU", choices=("CPU", "GPU"))
    parser.add_argument("device_id", metavar="DEVICE_ID", nargs="?", type=int, default=0)


@register_verb("extract_features", "store blobs of a trained net for a dataset (LMDB/LevelDB/HDF5)",
               _features_arguments)
def extract_features(args: argparse.Namespace, session: LogSession) -> int:
    if args.batches <= 0:
        raise UsageError(f"NUM_MINI_BATCHES must be positive, got {args.batches}")
    device = f"cuda:{args.device_id}" if args.mode == "GPU" else "cpu"
    tools.extract_features(args.pretrained, args.proto, args.blobs, args.datasets, args.batches,
                           args.db_type, device)
    log.info("Successfully extracted the features!")
    return 0


def _upgrade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN")
    parser.add_argument("output", metavar="OUT")


def _upgrade_verb(name: str, summary: str, upgrade) -> None:
    @register_verb(name, summary, _upgrade_arguments)
    def verb(args: argparse.Namespace, session: LogSession) -> int:
        upgrade(args.input, args.output)
        log.info("Wrote upgraded %s to %s", "NetParameter" if "net" in name else "SolverParameter", args.output)
        return 0


_upgrade_verb("upgrade_net_proto_text", "upgrade a net prototxt to the current format", tools.upgrade_net_proto_text)
_upgrade_verb("upgrade_net_proto_binary", "upgrade a binary net (.caffemodel) to the current format",
              tools.upgrade_net_proto_binary)
_upgrade_verb("upgrade_solver_proto_text", "upgrade a solver prototxt to the current format",
              tools.upgrade_solver_proto_text)
