"""Leave Caffe behind: export a TEST net to ONNX, or to plain PyTorch source with safetensors weights.

    from torchcaffe.export import export_onnx, export_pytorch
    export_onnx("deploy.prototxt", "model.caffemodel", "model.onnx")
    export_pytorch("deploy.prototxt", "model.caffemodel", "model_pt/")   # model.py + weights.safetensors

Both check what they wrote against torchcaffe (``verify=True``). Layers that need help define
their export beside their forward (``export_onnx`` and ``export_source`` methods); see
``docs/export.md``.
"""
from .common import ExportError
from .to_onnx import OPSET, export_onnx
from .to_pytorch import export_pytorch, load_generated

__all__ = ["ExportError", "OPSET", "export_onnx", "export_pytorch", "load_generated"]
