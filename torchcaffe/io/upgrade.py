"""Upgrading deprecated Caffe net and solver definitions, rule by rule as Caffe does.

Caffe reads every net through ``UpgradeNetAsNeeded`` (``src/caffe/util/upgrade_proto.cpp``),
which applies these rules, each only when its check says the net needs it, in this order:

1. V0 -> V1 (``net_needs_v0_to_v1_upgrade``, ``upgrade_v0_net``): the first nets wrapped a flat
   ``V0LayerParameter`` (``layers { layer { type: "conv" ... } }``); padding layers are folded
   into the convolution or pooling layer after them and every setting moves to its
   ``*_param`` message.
2. Data transformation (``net_needs_data_upgrade``, ``upgrade_net_data_transformation``):
   ``scale``, ``mean_file``, ``crop_size`` and ``mirror`` move from the data layers' own
   parameters into ``transform_param``.
3. V1 -> V2 (``net_needs_v1_to_v2_upgrade``, ``upgrade_v1_net``): ``layers`` entries with an
   enum ``type`` become ``layer`` entries with a string ``type``; the per-blob lists
   (``blobs_lr``, ``weight_decay``, ``param``, ``blob_share_mode``) become ``param`` specs.
4. Inputs (``net_needs_input_upgrade``, ``upgrade_net_input``): the net-level ``input`` with
   ``input_shape`` or ``input_dim`` becomes one ``Input`` layer at the front.
5. BatchNorm (``net_needs_batch_norm_upgrade``, ``upgrade_net_batch_norm``): BatchNorm layers
   that list three ``param`` specs get ``lr_mult: 0`` and ``decay_mult: 0`` in each.

``upgrade_net`` applies them to a copy. Solvers: ``upgrade_solver`` (``solver_type`` enum ->
``type`` string) and ``upgrade_snapshot_prefix``.

Where we differ from Caffe: Caffe logs a problem and goes on with a broken net where we raise
one ``NetError`` (``ParseError`` for solvers) that names the layer: a net that mixes ``layer``
and ``layers`` (Caffe silently drops the ``layer`` entries), a V0 net with entries that are not
V0, a padding layer in front of something other than a convolution or pooling layer, an
unknown layer type, inputs whose shapes are missing. V0 settings that do not apply to their
layer's type are dropped with a warning, as Caffe drops them with an error line.
"""
from __future__ import annotations

import logging
import os

from google.protobuf import descriptor as _descriptor

from torchcaffe.errors import NetError, ParseError, layer_label
from torchcaffe.proto import caffe_pb2

__all__ = [
    "upgrade_net", "net_needs_upgrade",
    "net_needs_v0_to_v1_upgrade", "upgrade_v0_net", "upgrade_v0_padding_layers",
    "upgrade_v0_layer_parameter", "upgrade_v0_layer_type",
    "net_needs_data_upgrade", "upgrade_net_data_transformation",
    "net_needs_v1_to_v2_upgrade", "upgrade_v1_net", "upgrade_v1_layer_parameter",
    "upgrade_v1_layer_type",
    "net_needs_input_upgrade", "upgrade_net_input",
    "net_needs_batch_norm_upgrade", "upgrade_net_batch_norm",
    "solver_needs_type_upgrade", "upgrade_solver_type", "upgrade_solver",
    "upgrade_snapshot_prefix",
    "V0_LAYER_TYPES", "V1_LAYER_TYPE_NAMES", "SOLVER_TYPE_NAMES",
]

_log = logging.getLogger("torchcaffe")

NetParameter = caffe_pb2.NetParameter
V1LayerParameter = caffe_pb2.V1LayerParameter
_MESSAGE = _descriptor.FieldDescriptor.CPPTYPE_MESSAGE
_ENUM = _descriptor.FieldDescriptor.CPPTYPE_ENUM


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


# ---------------------------------------------------------------------------------------------
# All rules
# ---------------------------------------------------------------------------------------------

def upgrade_net(param: NetParameter, source: str = "") -> NetParameter:
    """A copy of ``param`` with every needed upgrade applied, in Caffe's order.

    ``source`` (a file name) starts every log line and error message. A net already in the
    current format comes back as an equal copy. One INFO line is logged per rule applied.
    """
    net = NetParameter()
    net.CopyFrom(param)
    _check_not_mixed(net, source)
    if net_needs_v0_to_v1_upgrade(net):
        net = upgrade_v0_net(net, source)
        _log.info("%supgraded V0 layer definitions (layers { layer { ... } }) to V1",
                  _prefix(source))
    if net_needs_data_upgrade(net):
        upgrade_net_data_transformation(net)
        _log.info("%smoved deprecated data-layer scale/mean_file/crop_size/mirror into "
                  "transform_param", _prefix(source))
    if net_needs_v1_to_v2_upgrade(net):
        net = upgrade_v1_net(net, source)
        _log.info("%supgraded V1 layer definitions (layers) to the current format (layer)",
                  _prefix(source))
    if net_needs_input_upgrade(net):
        upgrade_net_input(net, source)
        _log.info("%sreplaced the deprecated net inputs (input, input_dim/input_shape) "
                  "by an Input layer", _prefix(source))
    if net_needs_batch_norm_upgrade(net):
        upgrade_net_batch_norm(net)
        _log.info("%sset lr_mult and decay_mult to 0 in BatchNorm layers' three param specs",
                  _prefix(source))
    return net


def net_needs_upgrade(param: NetParameter) -> bool:
    """True if any rule of ``upgrade_net`` would change ``param``."""
    return (net_needs_v0_to_v1_upgrade(param) or net_needs_data_upgrade(param)
            or net_needs_v1_to_v2_upgrade(param) or net_needs_input_upgrade(param)
            or net_needs_batch_norm_upgrade(param))


def _check_not_mixed(param: NetParameter, source: str) -> None:
    """A net lists its layers as ``layer`` (current) or ``layers`` (V0/V1), never both.

    Caffe's ``UpgradeV1Net`` logs an error and keeps only the ``layers`` entries; we refuse.
    """
    if len(param.layer) and len(param.layers):
        raise NetError(
            f"{_prefix(source)}the net mixes {len(param.layer)} 'layer' entries (current format) "
            f"with {len(param.layers)} 'layers' entries (deprecated V1 format); Caffe would "
            f"drop the 'layer' ones. Write all layers in one format.")


# ---------------------------------------------------------------------------------------------
# Rule 1: V0 -> V1
# ---------------------------------------------------------------------------------------------

#: V0 type strings and the V1 enum each becomes (Caffe's ``UpgradeV0LayerType``). "padding"
#: is not here: padding layers are folded away first (``upgrade_v0_padding_layers``).
V0_LAYER_TYPES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# V0 setting -> {V0 type: (V1 *_param field, field inside it)}; a type not listed for a
# setting means the setting does not apply to it (Caffe: "Unknown parameter ... for layer type").
_V0_SETTINGS = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"),
               "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}

# V0 settings that go to transform_param whatever the layer type.
_V0_TRANSFORM_SETTINGS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
                          "mirror": "mirror"}
# V0 settings copied as they are into the V1 layer.
_V0_COPIED_LISTS = ("blobs", "blobs_lr", "weight_decay")


def net_needs_v0_to_v1_upgrade(param: NetParameter) -> bool:
    """True if any ``layers`` entry wraps a V0 layer (its ``layer`` field is set)."""
    return any(entry.HasField("layer") for entry in param.layers)


def upgrade_v0_net(param: NetParameter, source: str = "") -> NetParameter:
    """A V1 net (``layers`` with enum types) from a V0 net, as Caffe's ``UpgradeV0Net``.

    Padding layers are folded first (``upgrade_v0_padding_layers``), then each entry is
    converted by ``upgrade_v0_layer_parameter``. Like Caffe, the new net keeps only ``name``,
    ``input``, ``input_dim`` and ``force_backward`` of the net-level fields (V0 had no others).
    Every ``layers`` entry must wrap a V0 layer; Caffe would turn one that does not into a
    layer with no type, so we raise ``NetError`` instead.
    """
    for index, entry in enumerate(param.layers):
        if not entry.HasField("layer"):
            raise NetError(
                f"{_prefix(source)}'layers' entry #{index + 1} ({_v1_label(entry)}) is not a V0 "
                f"layer while others are (layers {{ layer {{ ... }} }}); V0 and V1 layers "
                f"cannot be mixed in one net")
    padded = upgrade_v0_padding_layers(param, source)
    net = NetParameter()
    if padded.HasField("name"):
        net.name = padded.name
    for entry in padded.layers:
        net.layers.add().CopyFrom(upgrade_v0_layer_parameter(entry, source))
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        net.force_backward = padded.force_backward
    return net


def upgrade_v0_padding_layers(param: NetParameter, source: str = "") -> NetParameter:
    """A copy of a V0 net without its ``padding`` layers, as Caffe's ``UpgradeV0PaddingLayers``.

    Each layer reading a padding layer's output reads the padding layer's input instead and
    takes its ``pad``. Caffe requires (CHECK) that such a layer is a ``conv`` or ``pool`` with
    one bottom, and that the padding layer has one bottom and one top; a bottom that no
    earlier layer (or net input) produces is fatal too. We raise ``NetError`` for each.
    """
    out = NetParameter()
    out.CopyFrom(param)
    out.ClearField("layers")
    last_producer = {blob: -1 for blob in param.input}  # blob -> index of its latest producer
    for index, entry in enumerate(param.layers):
        if entry.layer.type != "padding":
            out.layers.add().CopyFrom(entry)
        for j, blob in enumerate(entry.bottom):
            if blob not in last_producer:
                raise NetError(f"{_prefix(source)}{_v0_label(entry)}: bottom \"{blob}\" is "
                               f"neither a net input nor the top of an earlier layer")
            producer = last_producer[blob]
            if producer >= 0 and param.layers[producer].layer.type == "padding":
                padding = param.layers[producer]
                _check_padding_fold(entry, padding, source)
                target = out.layers[len(out.layers) - 1]
                target.layer.pad = padding.layer.pad
                target.bottom[j] = padding.bottom[0]
        for blob in entry.top:
            last_producer[blob] = index
    return out


def _check_padding_fold(entry: V1LayerParameter, padding: V1LayerParameter,
                        source: str) -> None:
    """The conditions Caffe CHECKs before folding ``padding`` into ``entry``."""
    where = f"{_prefix(source)}{_v0_label(entry)} reads padding {_v0_label(padding)}"
    if entry.layer.type not in ("conv", "pool"):
        raise NetError(f"{where}: a padding layer can only feed a conv or pool layer")
    if len(entry.bottom) != 1:
        raise NetError(f"{where}: a layer fed by a padding layer must have exactly one bottom")
    if len(padding.bottom) != 1 or len(padding.top) != 1:
        raise NetError(f"{where}: a padding layer must have exactly one bottom and one top")


def upgrade_v0_layer_parameter(entry: V1LayerParameter, source: str = "") -> V1LayerParameter:
    """The V1 layer for one V0 ``layers { layer { ... } bottom top }`` entry.

    Caffe's ``UpgradeV0LayerParameter``: bottoms and tops are kept; from the V0 layer, ``name``
    is kept, ``type`` is mapped (``upgrade_v0_layer_type``), ``blobs``, ``blobs_lr`` and
    ``weight_decay`` are copied, ``scale``/``meanfile``/``cropsize``/``mirror`` go to
    ``transform_param`` for any type, and every other setting goes to the ``*_param`` of the
    types it applies to (``num_output`` -> ``convolution_param`` or ``inner_product_param``,
    ``biasterm`` -> ``bias_term``, ``kernelsize`` -> ``kernel_size``, ``batchsize`` ->
    ``batch_size``, ``shuffle_images`` -> ``shuffle``, ``det_*`` -> ``window_data_param``...).
    A setting given for a type it does not apply to is dropped with a warning (Caffe logs an
    error and drops it). ``new_num`` and ``new_channels`` have no V1 place; Caffe drops them
    silently, we warn. Other fields of the wrapping entry (it should have none) are dropped.
    """
    out = V1LayerParameter()
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    if not entry.HasField("layer"):
        return out
    v0 = entry.layer
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        out.type = upgrade_v0_layer_type(v0.type, source, _v0_label(entry))
    for fd, value in v0.ListFields():
        _upgrade_v0_setting(fd, value, v0.type, out, entry, source)
    return out


def _upgrade_v0_setting(fd, value, v0_type: str, out: V1LayerParameter,
                        entry: V1LayerParameter, source: str) -> None:
    """Move one set V0 field into its place in the V1 layer ``out``."""
    name = fd.name
    if name in ("name", "type"):
        return
    if name in _V0_COPIED_LISTS:
        target = getattr(out, name)
        if fd.cpp_type == _MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
        return
    if name in _V0_TRANSFORM_SETTINGS:
        setattr(out.transform_param, _V0_TRANSFORM_SETTINGS[name], value)
        return
    places = _V0_SETTINGS.get(name)
    if places is None or v0_type not in places:
        why = ("has no place in the V1 format" if places is None
               else f'does not apply to type "{v0_type}"')
        _log.warning("%s%s: V0 setting \"%s\" %s; dropped (as Caffe does)",
                     _prefix(source), _v0_label(entry), name, why)
        return
    param_name, field_name = places[v0_type]
    _assign(getattr(out, param_name), field_name, fd, value)


def _assign(message, field_name, source_fd, value) -> None:
    """Set ``message.field_name`` (or the whole ``message`` when None) from a V0 value.

    Repeated targets get the value appended; enums are matched by value name.
    """
    message.SetInParent()
    if field_name is None:
        message.CopyFrom(value)
        return
    target_fd = message.DESCRIPTOR.fields_by_name[field_name]
    if target_fd.cpp_type == _MESSAGE:
        getattr(message, field_name).SetInParent()
        getattr(message, field_name).CopyFrom(value)
        return
    if target_fd.cpp_type == _ENUM and source_fd.enum_type is not target_fd.enum_type:
        value_name = source_fd.enum_type.values_by_number[value].name
        value = target_fd.enum_type.values_by_name[value_name].number
    if target_fd.is_repeated:
        getattr(message, field_name).append(value)
    else:
        setattr(message, field_name, value)


def upgrade_v0_layer_type(v0_type: str, source: str = "", label: str = "") -> int:
    """The V1 ``LayerType`` enum value for a V0 type string (Caffe's ``UpgradeV0LayerType``).

    Unknown strings are fatal in Caffe; we raise ``NetError`` listing the known ones.
    """
    enum_name = V0_LAYER_TYPES.get(v0_type)
    if enum_name is None:
        where = f"{label}: " if label else ""
        raise NetError(f"{_prefix(source)}{where}unknown V0 layer type \"{v0_type}\" "
                       f"(known: {', '.join(sorted(V0_LAYER_TYPES))}, and padding)")
    return V1LayerParameter.LayerType.Value(enum_name)


def _v0_label(entry: V1LayerParameter) -> str:
    return layer_label(entry.layer.name, entry.layer.type)


# ---------------------------------------------------------------------------------------------
# Rule 2: data transformation fields -> transform_param
# ---------------------------------------------------------------------------------------------

# V1 data layer types and the parameter message holding their deprecated transformation fields.
_DATA_LAYER_PARAMS = (
    (V1LayerParameter.DATA, "data_param"),
    (V1LayerParameter.IMAGE_DATA, "image_data_param"),
    (V1LayerParameter.WINDOW_DATA, "window_data_param"),
)
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def net_needs_data_upgrade(param: NetParameter) -> bool:
    """True if a V1 DATA, IMAGE_DATA or WINDOW_DATA layer sets ``scale``, ``mean_file``,
    ``crop_size`` or ``mirror`` in its own ``*_param`` (Caffe's ``NetNeedsDataUpgrade``; it
    looks at ``layers`` only, so current-format layers are never changed by this rule)."""
    for entry in param.layers:
        for layer_type, param_name in _DATA_LAYER_PARAMS:
            if entry.type == layer_type and any(
                    getattr(entry, param_name).HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def upgrade_net_data_transformation(param: NetParameter) -> None:
    """Move the deprecated transformation fields into ``transform_param``, in place.

    Caffe's ``UpgradeNetDataTransformation``: for every V1 DATA, IMAGE_DATA and WINDOW_DATA
    layer, each of ``scale``, ``mean_file``, ``crop_size``, ``mirror`` set in the layer's
    ``*_param`` is copied to ``transform_param`` (overwriting) and cleared. Like Caffe, every
    such layer ends up with a (possibly empty) ``transform_param`` and ``*_param`` present.
    """
    for entry in param.layers:
        for layer_type, param_name in _DATA_LAYER_PARAMS:
            if entry.type != layer_type:
                continue
            old = getattr(entry, param_name)
            old.SetInParent()
            entry.transform_param.SetInParent()
            for name in _TRANSFORM_FIELDS:
                if old.HasField(name):
                    setattr(entry.transform_param, name, getattr(old, name))
                    old.ClearField(name)


# ---------------------------------------------------------------------------------------------
# Rule 3: V1 -> V2
# ---------------------------------------------------------------------------------------------

#: V1 ``LayerType`` enum names and the type string each becomes (``UpgradeV1LayerType``).
V1_LAYER_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    # DeepLab v1's layer types, as DeepLab v2 registers them (PADDING and DOMINANT_CHANNEL
    # have no DeepLab v2 layer; their strings follow the v1 class names).
    "IMAGE_SEG_DATA": "ImageSegData",
    "SEG_ACCURACY": "SegAccuracy",
    "INTERP": "Interp",
    "PADDING": "Padding",
    "MAT_WRITE": "MatWrite",
    "MAT_READ": "MatRead",
    "DENSE_CRF": "DenseCRF",
    "DOMINANT_CHANNEL": "DominantChannel",
    "BIAS_CHANNEL": "BiasChannel",
    "UNIQUE_LABEL": "UniqueLabel",
    "ADAPTIVE_BIAS_CHANNEL": "AdaptiveBiasChannel",
}

# V1 fields that upgrade_v1_layer_parameter handles one by one; every other set field must be
# a *_param message with a same-named, same-typed field in LayerParameter.
_V1_SPECIAL_FIELDS = frozenset({
    "bottom", "top", "name", "include", "exclude", "type", "blobs", "param",
    "blob_share_mode", "blobs_lr", "weight_decay", "loss_weight", "layer", "strict_dim"})


def net_needs_v1_to_v2_upgrade(param: NetParameter) -> bool:
    """True if the net has any ``layers`` entry (Caffe's ``NetNeedsV1ToV2Upgrade``)."""
    return len(param.layers) > 0


def upgrade_v1_net(param: NetParameter, source: str = "") -> NetParameter:
    """A copy of ``param`` with each ``layers`` entry upgraded into ``layer`` (``UpgradeV1Net``).

    Net-level fields are kept. Caffe ignores (with an error line) ``layer`` entries already
    present; we refuse such a net (see ``upgrade_net``).
    """
    _check_not_mixed(param, source)
    net = NetParameter()
    net.CopyFrom(param)
    net.ClearField("layers")
    for index, entry in enumerate(param.layers):
        net.layer.add().CopyFrom(upgrade_v1_layer_parameter(entry, source, index))
    return net


def upgrade_v1_layer_parameter(entry: V1LayerParameter, source: str = "",
                               index: int = 0) -> caffe_pb2.LayerParameter:
    """The current-format layer for one V1 layer (Caffe's ``UpgradeV1LayerParameter``).

    ``bottom``, ``top``, ``name``, ``include``, ``exclude``, ``blobs`` and ``loss_weight`` are
    copied; ``type`` becomes a string (``upgrade_v1_layer_type``); blob ``i``'s ``param`` name,
    ``blob_share_mode``, ``blobs_lr`` and ``weight_decay`` become ``param[i]``'s ``name``,
    ``share_mode``, ``lr_mult`` and ``decay_mult`` (as many specs as the longest list); every
    ``*_param`` message is copied to the same field. A V1 field with no such counterpart raises
    ``NetError`` naming the layer (Caffe would drop it silently). A wrapped V0 ``layer`` is
    ignored with a warning, as in Caffe (``upgrade_net`` upgrades V0 first, so it has none).

    DeepLab v1 fields: its ``*_param`` messages are copied like BVLC's (the schema has them in
    both formats); ``softmaxloss_param`` is copied too, and its one ``ignore_label`` (if it
    has exactly one) also becomes ``loss_param.ignore_label`` unless that is set, so that
    SoftmaxWithLoss ignores it; ``strict_dim`` (a weight-loading switch with no current-format
    field) is dropped with a warning.
    """
    out = caffe_pb2.LayerParameter()
    label = _v1_label(entry, index)
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    if entry.HasField("name"):
        out.name = entry.name
    for rule in entry.include:
        out.include.add().CopyFrom(rule)
    for rule in entry.exclude:
        out.exclude.add().CopyFrom(rule)
    if entry.HasField("type"):
        out.type = upgrade_v1_layer_type(entry.type, source, label)
    for blob in entry.blobs:
        out.blobs.add().CopyFrom(blob)
    _upgrade_v1_param_specs(entry, out)
    out.loss_weight.extend(entry.loss_weight)
    for fd, value in entry.ListFields():
        if fd.name not in _V1_SPECIAL_FIELDS:
            _copy_v1_layer_param(fd, value, out, source, label)
    if entry.HasField("softmaxloss_param"):
        ignore = entry.softmaxloss_param.ignore_label
        if len(ignore) == 1 and not out.loss_param.HasField("ignore_label"):
            out.loss_param.ignore_label = ignore[0]
    if entry.HasField("strict_dim"):
        _log.warning("%s%s: DeepLab's 'strict_dim' has no current-format field; dropped",
                     _prefix(source), label)
    if entry.HasField("layer"):
        _log.warning("%s%s: has a V0 'layer' inside a V1 layer; ignored (as Caffe does)",
                     _prefix(source), label)
    return out


def _upgrade_v1_param_specs(entry: V1LayerParameter, out: caffe_pb2.LayerParameter) -> None:
    """Build ``out.param`` from the V1 per-blob lists (the i-th entries describe blob i)."""
    count = max(len(entry.param), len(entry.blob_share_mode), len(entry.blobs_lr),
                len(entry.weight_decay))
    specs = [out.param.add() for _ in range(count)]
    for spec, name in zip(specs, entry.param):
        spec.name = name
    for spec, mode in zip(specs, entry.blob_share_mode):
        spec.share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(
            V1LayerParameter.DimCheckMode.Name(mode))
    for spec, lr in zip(specs, entry.blobs_lr):
        spec.lr_mult = lr
    for spec, decay in zip(specs, entry.weight_decay):
        spec.decay_mult = decay


def _copy_v1_layer_param(fd, value, out: caffe_pb2.LayerParameter, source: str,
                         label: str) -> None:
    """Copy a V1 ``*_param`` message into the same-named field of the current layer."""
    target = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name.get(fd.name)
    if (target is None or fd.cpp_type != _MESSAGE or fd.is_repeated or target.is_repeated
            or target.message_type is not fd.message_type):
        raise NetError(f"{_prefix(source)}{label}: the V1 field \"{fd.name}\" has no "
                       f"counterpart in the current LayerParameter, so the layer cannot be "
                       f"upgraded")
    field = getattr(out, fd.name)
    field.SetInParent()
    field.CopyFrom(value)


def upgrade_v1_layer_type(layer_type: int, source: str = "", label: str = "") -> str:
    """The type string for a V1 ``LayerType`` value (``UpgradeV1LayerType``); NONE gives "".

    A value with no type string (an enum value added by a fork, or a number unknown to the
    schema) is fatal in Caffe; we raise ``NetError``.
    """
    enum = V1LayerParameter.LayerType.DESCRIPTOR.values_by_number.get(layer_type)
    name = V1_LAYER_TYPE_NAMES.get(enum.name) if enum is not None else None
    if name is None:
        shown = enum.name if enum is not None else str(layer_type)
        where = f"{label}: " if label else ""
        raise NetError(f"{_prefix(source)}{where}V1 layer type {shown} has no current-format "
                       f"type")
    return name


def _v1_label(entry: V1LayerParameter, index: int = -1) -> str:
    enum = V1LayerParameter.LayerType.DESCRIPTOR.values_by_number.get(entry.type)
    type_name = enum.name if enum is not None else str(entry.type)
    if entry.HasField("name"):
        return layer_label(entry.name, type_name)
    return f"layer #{index + 1} ({type_name})" if index >= 0 else f"unnamed layer ({type_name})"


# ---------------------------------------------------------------------------------------------
# Rule 4: net inputs -> Input layer
# ---------------------------------------------------------------------------------------------

def net_needs_input_upgrade(param: NetParameter) -> bool:
    """True if the net declares deprecated ``input`` blobs (Caffe's ``NetNeedsInputUpgrade``)."""
    return len(param.input) > 0


def upgrade_net_input(param: NetParameter, source: str = "") -> None:
    """Replace the deprecated net inputs by an ``Input`` layer, in place (``UpgradeNetInput``).

    When ``input_shape`` or ``input_dim`` is given, ONE layer named ``"input"`` of type
    ``"Input"`` is inserted at the front; its tops are the ``input`` names in order and its
    ``input_param.shape`` has one shape per input: ``input_shape[i]``, or else
    ``input_dim[4i:4i+4]``. With neither (an old ``.caffemodel``, which stores the names only)
    no layer is added. ``input``, ``input_shape`` and ``input_dim`` are then cleared.
    Caffe reads past the end when shapes are missing; we raise ``NetError`` unless there is
    exactly one ``input_shape`` or four ``input_dim`` per input (``input_shape`` wins when
    both are given, as in Caffe).
    """
    names = list(param.input)
    if len(param.input_shape):
        shapes = [list(shape.dim) for shape in param.input_shape]
        _check_input_count(len(shapes), 1, names, "input_shape entries", source)
    elif len(param.input_dim):
        dims = list(param.input_dim)
        _check_input_count(len(dims), 4, names, "input_dim values", source)
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    else:
        shapes = None
    if shapes is not None:
        layer = caffe_pb2.LayerParameter(name="input", type="Input", top=names)
        for dims in shapes:
            layer.input_param.shape.add().dim.extend(dims)
        layers = [layer] + list(param.layer)
        param.ClearField("layer")
        param.layer.extend(layers)
    param.ClearField("input")
    param.ClearField("input_shape")
    param.ClearField("input_dim")


def _check_input_count(found: int, per_input: int, names: list, what: str,
                       source: str) -> None:
    expected = per_input * len(names)
    if found != expected:
        raise NetError(f"{_prefix(source)}the net declares {len(names)} input blob(s) "
                       f"({', '.join(names)}) but gives {found} {what}; expected {expected}")


# ---------------------------------------------------------------------------------------------
# Rule 5: BatchNorm param specs
# ---------------------------------------------------------------------------------------------

def _is_old_batch_norm(layer: caffe_pb2.LayerParameter) -> bool:
    return layer.type == "BatchNorm" and len(layer.param) == 3


def _is_frozen(spec: caffe_pb2.ParamSpec) -> bool:
    return (spec.HasField("lr_mult") and spec.lr_mult == 0
            and spec.HasField("decay_mult") and spec.decay_mult == 0)


def net_needs_batch_norm_upgrade(param: NetParameter) -> bool:
    """True if a BatchNorm layer lists exactly three ``param`` specs that are not all already
    ``lr_mult: 0, decay_mult: 0``.

    Caffe's ``NetNeedsBatchNormUpgrade`` checks the count only, so it says yes again after the
    upgrade; skipping specs already set to zero changes nothing in the result and keeps a
    second ``upgrade_net`` from logging the rule again.
    """
    return any(_is_old_batch_norm(layer) and not all(_is_frozen(s) for s in layer.param)
               for layer in param.layer)


def upgrade_net_batch_norm(param: NetParameter) -> None:
    """Zero ``lr_mult`` and ``decay_mult`` in old-style BatchNorm specs, in place.

    Caffe's ``UpgradeNetBatchNorm`` in master: a BatchNorm layer with exactly three ``param``
    specs (the old way to keep its statistics out of learning) gets ``lr_mult: 0`` and
    ``decay_mult: 0`` set in all three; names and share modes stay. (Older Caffe cleared the
    specs instead; the effect on training is the same.)
    """
    for layer in param.layer:
        if _is_old_batch_norm(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ---------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------

#: Deprecated ``SolverParameter.SolverType`` enum names and the ``type`` string each becomes.
SOLVER_TYPE_NAMES = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}


def solver_needs_type_upgrade(param: caffe_pb2.SolverParameter) -> bool:
    """True if the deprecated ``solver_type`` enum is set (``SolverNeedsTypeUpgrade``)."""
    return param.HasField("solver_type")


def upgrade_solver_type(param: caffe_pb2.SolverParameter, source: str = "") -> None:
    """Turn ``solver_type: ADAM`` into ``type: "Adam"`` (and so on), in place.

    Caffe's ``UpgradeSolverType`` refuses (CHECK) a solver that sets both ``solver_type`` and
    ``type``, even when they agree; so do we, with a ``ParseError``.
    """
    if not param.HasField("solver_type"):
        return
    enum_name = caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)
    if param.HasField("type"):
        raise ParseError(
            f"{_prefix(source)}the solver sets both the deprecated solver_type ({enum_name}) "
            f"and type (\"{param.type}\"); Caffe refuses this. Keep only "
            f"type: \"{param.type}\".")
    param.type = SOLVER_TYPE_NAMES[enum_name]
    param.ClearField("solver_type")


def upgrade_solver(param: caffe_pb2.SolverParameter,
                   source: str = "") -> caffe_pb2.SolverParameter:
    """A copy of ``param`` with the solver type upgraded (``UpgradeSolverAsNeeded``).

    Where we go further than Caffe: nets written inline (``net_param``, ``train_net_param``,
    ``test_net_param``) are upgraded with ``upgrade_net`` too. Caffe builds them as written,
    so an inline V1 net there never gets its ``layers`` upgraded.
    """
    solver = caffe_pb2.SolverParameter()
    solver.CopyFrom(param)
    if solver_needs_type_upgrade(solver):
        upgrade_solver_type(solver, source)
        _log.info("%supgraded the deprecated solver_type enum to type \"%s\"",
                  _prefix(source), solver.type)
    for name in ("net_param", "train_net_param"):
        if solver.HasField(name):
            getattr(solver, name).CopyFrom(
                upgrade_net(getattr(solver, name), _inline_source(source, name)))
    for i, net in enumerate(solver.test_net_param):
        net.CopyFrom(upgrade_net(net, _inline_source(source, f"test_net_param[{i}]")))
    return solver


def _inline_source(source: str, field: str) -> str:
    return f"{source} ({field})" if source else field


def upgrade_snapshot_prefix(param: caffe_pb2.SolverParameter, solver_path: str) -> None:
    """Complete ``snapshot_prefix`` from the solver file's path, in place.

    Caffe's ``UpgradeSnapshotPrefixProperty`` (run when a solver is read from a file): with no
    ``snapshot_prefix``, it becomes the solver path without its extension
    (``models/x/solver.prototxt`` -> ``models/x/solver``); when it names an existing directory
    (checked relative to the working directory, as Caffe does), the solver file's stem is
    appended (``snapshots/`` -> ``snapshots/solver``).
    """
    stem, _ = os.path.splitext(solver_path)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = stem
        _log.info("snapshot_prefix was not set; set to %s", param.snapshot_prefix)
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, os.path.basename(stem))
        _log.info("snapshot_prefix names a directory; set to %s", param.snapshot_prefix)
