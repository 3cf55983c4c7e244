#!/usr/bin/env python3
"""Regenerate torchcaffe/proto/caffe_pb2.py (and caffe_pb2.pyi) from caffe.proto.

Run this after every edit to torchcaffe/proto/caffe.proto and commit the
regenerated files with it. torchcaffe imports the checked-in module and never
runs the compiler at import time, so nothing else rebuilds them.

    python scripts/gen_proto.py            # from any directory

Needs grpcio-tools (for its bundled protoc); only --python_out and --pyi_out are
used, no gRPC stubs. The generated code needs a protobuf runtime at least as new
as the protoc bundled with grpcio-tools.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "torchcaffe" / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"


def main() -> int:
    try:
        from grpc_tools import protoc
    except ImportError:
        print("gen_proto: grpcio-tools is not installed (pip install grpcio-tools)",
              file=sys.stderr)
        return 1

    if not PROTO_FILE.is_file():
        print(f"gen_proto: {PROTO_FILE} not found", file=sys.stderr)
        return 1

    # protoc names outputs after the path relative to -I, so with -I at the
    # proto directory the files land beside caffe.proto as caffe_pb2.py/.pyi.
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={PROTO_DIR}",
        f"--pyi_out={PROTO_DIR}",
        str(PROTO_FILE),
    ]
    status = protoc.main(args)
    if status != 0:
        print(f"gen_proto: protoc failed with status {status}", file=sys.stderr)
        return status

    for name in ("caffe_pb2.py", "caffe_pb2.pyi"):
        print(f"gen_proto: wrote {(PROTO_DIR / name).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
