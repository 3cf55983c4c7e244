"""``torchcaffe export``: a TEST net to ONNX or to plain PyTorch source (ours; Caffe has no such verb).

    torchcaffe export NET.prototxt [WEIGHTS.caffemodel] --to onnx OUT.onnx [--outputs a,b] [--opset N]
                      [--nodynamic_batch] [--noverify]
    torchcaffe export NET.prototxt [WEIGHTS.caffemodel] --to pytorch OUT_DIR [--class_name Name]

Without weights the net keeps its fillers' random values. Both exports are checked against
torchcaffe before the verb succeeds (``--noverify`` skips that); see ``docs/export.md``.
"""
from __future__ import annotations

import argparse

from ..logs import LogSession, log
from .common import UsageError, add_bool_flag, split_list
from .registry import register_verb


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="NET.prototxt", help="the net (built in the TEST phase)")
    parser.add_argument("weights", metavar="WEIGHTS", nargs="?", default=None,
                        help="the weights (.caffemodel or .h5; default: the fillers' random values)")
    parser.add_argument("--to", required=True, nargs=2, metavar=("onnx|pytorch", "OUT"),
                        help="the format, then the .onnx file or the output folder")
    parser.add_argument("--outputs", default="", metavar="A,B", help="the blobs to export (default: the net's outputs)")
    parser.add_argument("--opset", type=int, default=None, help="the ONNX opset (default: the newest torch writes)")
    parser.add_argument("--class_name", default=None, help="the generated nn.Module's name (default: from the net's)")
    add_bool_flag(parser, "dynamic_batch", "ONNX: a symbolic batch axis (--nodynamic_batch keeps the "
                  "prototxt's size)", default=True)
    add_bool_flag(parser, "verify", "compare the export with torchcaffe (--noverify skips it)", default=True)


@register_verb("export", "export a net to ONNX or to PyTorch source + safetensors", _arguments)
def export(args: argparse.Namespace, session: LogSession) -> int:
    from .. import export as exporters

    to, out = args.to
    if to not in ("onnx", "pytorch"):
        raise UsageError(f"--to takes onnx or pytorch, then the output, got --to {to} {out}")
    weights = args.weights
    outputs = split_list(args.outputs) or None
    verify = args.verify
    if to == "onnx":
        opset = args.opset if args.opset is not None else exporters.OPSET
        exporters.export_onnx(args.model, weights, out, outputs=outputs, opset=opset,
                              dynamic_batch=args.dynamic_batch, verify=verify)
    else:
        if args.opset is not None:
            raise UsageError("--opset is for --to onnx")
        out = exporters.export_pytorch(args.model, weights, out, outputs=outputs, class_name=args.class_name,
                                       verify=verify)
    log.info("Wrote %s%s", out, " (checked against torchcaffe)" if verify else "")
    return 0
