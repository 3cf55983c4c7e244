"""pycaffe's ``caffe.draw``: a net as a Graphviz graph (pydot), and as an image.

    net = torchcaffe.io.prototxt.read_net("train_val.prototxt")    # a NetParameter
    torchcaffe.draw.draw_net_to_file(net, "net.png", rankdir="LR", phase=torchcaffe.TRAIN)

pycaffe's picture: each layer is a box labelled with its name and type (pooling method for
Pooling; kernel size, stride and pad for Convolution, Deconvolution and Pooling; with
``display_lrm``, the lr_mults of Convolution, Deconvolution and InnerProduct), coloured by type
(in-place layers green); each blob is an octagon; edges from a layer to its tops are labelled
with Data's batch size or the num_output of Convolution, Deconvolution and InnerProduct.
``phase`` keeps the layers whose include/exclude rules admit that phase (None: every layer).

Writing ``.dot``, ``.gv`` or ``.raw`` gives the Graphviz source and needs nothing else; other
formats (``png``, ``svg``, ``pdf``...) are laid out by Graphviz's ``dot`` program, which must be
installed (``apt-get install graphviz``; pip cannot install it).

Differs from pycaffe: a rule without a ``phase`` matches every phase (pycaffe reads it as
TRAIN); every blob is drawn as an octagon (pycaffe leaves the net's output blobs plain); a
missing ``dot`` is one clear error.
"""
from __future__ import annotations

import argparse
import os
import shutil

from ..errors import CaffeError
from ..io.files import atomic_output_file
from ..proto import caffe_pb2

__all__ = ["get_pydot_graph", "draw_net", "draw_net_to_file", "get_layer_label", "get_edge_label",
           "get_layer_lr_mult", "choose_color_by_layertype", "add_arguments", "run"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                "InnerProduct": "#CC33FF"}
_LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
_SOURCE_FORMATS = ("dot", "gv", "raw")


class GraphvizMissingError(CaffeError, RuntimeError):
    """Rendering an image needs Graphviz's ``dot`` program."""


def choose_color_by_layertype(layertype: str) -> str:
    return _TYPE_COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """Data's batch size, or the num_output of Convolution, Deconvolution and InnerProduct."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The lr_mults of a Convolution, Deconvolution or InnerProduct layer's weights and bias
    (1.0 where no ``param`` block gives one)."""
    if layer.type not in _LEARNING_TYPES:
        raise CaffeError(f'layer "{layer.name}" ({layer.type}): only {", ".join(_LEARNING_TYPES)} layers '
                         f"have drawn learning rate multipliers")
    mults = [spec.lr_mult if spec.HasField("lr_mult") else 1.0 for spec in layer.param[:2]]
    return tuple(mults + [1.0] * (2 - len(mults)))


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """The quoted, multi-line node label of a layer (lines joined by spaces for TB/BT layouts)."""
    separator = " " if rankdir in ("TB", "BT") else "\\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        parts.append(f"({layer.type} {method})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        kernel, stride, pad = _spatial_params(layer)
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in _LEARNING_TYPES:
        lrm0, lrm1 = get_layer_lr_mult(layer)
        if lrm0 or lrm1:
            parts.append(f"lr mult: {lrm0:.1f}, {lrm1:.1f}")
    return '"%s"' % separator.join(parts)


def _spatial_params(layer: caffe_pb2.LayerParameter) -> tuple[int, int, int]:
    if layer.type == "Pooling":
        p = layer.pooling_param
        return p.kernel_size, p.stride, p.pad
    p = layer.convolution_param
    return (p.kernel_size[0] if p.kernel_size else 1, p.stride[0] if p.stride else 1, p.pad[0] if p.pad else 0)


def _in_phase(layer: caffe_pb2.LayerParameter, phase) -> bool:
    if phase is None:
        return True
    if layer.include and layer.exclude:
        raise CaffeError(f'layer "{layer.name}" ({layer.type}): has both include and exclude rules; '
                         f"Caffe accepts one kind or the other")
    def matches(rule):
        return not rule.HasField("phase") or rule.phase == phase
    if layer.include:
        return any(matches(rule) for rule in layer.include)
    return not any(matches(rule) and rule.HasField("phase") for rule in layer.exclude)


def get_pydot_graph(caffe_net: caffe_pb2.NetParameter, rankdir: str, label_edges: bool = True,
                    phase=None, display_lrm: bool = False):
    """A ``pydot.Dot`` graph of ``caffe_net`` (see the module docstring)."""
    import pydot  # imported here: drawing is optional, `import torchcaffe` stays light

    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, object] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if not _in_phase(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node_name = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = dict(NEURON_LAYER_STYLE) if in_place else dict(LAYER_STYLE_DEFAULT,
                                                                fillcolor=choose_color_by_layertype(layer.type))
        nodes[node_name] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(_quoted(bottom), **BLOB_STYLE)
            edges.append((bottom + "_blob", node_name, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(_quoted(top), **BLOB_STYLE)
            edges.append((node_name, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def _quoted(name: str) -> str:
    """A blob name as a Graphviz ID (names such as ``conv1/3x3`` need quotes)."""
    return '"%s"' % name.replace('"', '\\"')


def draw_net(caffe_net: caffe_pb2.NetParameter, rankdir: str, ext: str = "png", phase=None,
             display_lrm: bool = False) -> bytes:
    """The drawing of ``caffe_net`` in format ``ext`` (``png``, ``svg``, ``pdf``... via Graphviz's
    ``dot``; ``dot``/``gv``/``raw``: the Graphviz source)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in _SOURCE_FORMATS:
        return graph.to_string().encode()
    if shutil.which("dot") is None:
        raise GraphvizMissingError(
            f"drawing a .{ext} file needs Graphviz's `dot` program, which is not installed: install the "
            f"system package `graphviz` (apt-get install graphviz, brew install graphviz, conda install "
            f"graphviz), or write a .dot file and render it elsewhere")
    try:
        return graph.create(format=ext)
    except Exception as err:  # pydot reports dot's own failures (unknown format...) as exceptions
        raise CaffeError(f"Graphviz's dot could not draw the net as .{ext}: {err}") from None


def draw_net_to_file(caffe_net: caffe_pb2.NetParameter, filename, rankdir: str = "LR", phase=None,
                     display_lrm: bool = False) -> None:
    """Draw ``caffe_net`` into ``filename``, in the format its extension names (written whole or
    not at all)."""
    filename = os.fspath(filename)
    ext = filename[filename.rfind(".") + 1:] if "." in os.path.basename(filename) else ""
    if not ext:
        raise CaffeError(f"{filename}: give the file an extension naming the format (.png, .svg, .pdf, .dot)")
    image = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with atomic_output_file(filename, CaffeError) as f:
        f.write(image)


_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of Caffe's ``python/draw_net.py`` (the ``torchcaffe draw`` verb)."""
    parser.add_argument("input_net_proto_file", help="the net's prototxt")
    parser.add_argument("output_image_file", help="the picture to write: .png, .svg, .pdf... (needs Graphviz) "
                                                  "or .dot (Graphviz source)")
    parser.add_argument("--rankdir", default="LR", choices=["LR", "RL", "TB", "BT"],
                        help="direction of the layout (default LR: left to right)")
    parser.add_argument("--phase", default="ALL", choices=sorted(_PHASES),
                        help="draw the layers of this phase only (default ALL)")
    parser.add_argument("--display_lrm", action="store_true",
                        help="show the lr_mults of Convolution, Deconvolution and InnerProduct layers")


def run(args: argparse.Namespace) -> int:
    """Draw ``args.input_net_proto_file`` into ``args.output_image_file``; returns 0."""
    from ..io.prototxt import read_net
    net = read_net(args.input_net_proto_file)
    draw_net_to_file(net, args.output_image_file, args.rankdir, _PHASES[args.phase], args.display_lrm)
    return 0
