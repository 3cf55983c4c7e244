"""pycaffe's ``net_spec``: write a net in Python and get its ``NetParameter``.

    from torchcaffe import layers as L, params as P     # as `from caffe import layers as L, params as P`
    n = torchcaffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64])], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label)
    text = str(n.to_proto())                          # prototxt that Caffe and torchcaffe read

pycaffe's rules: ``L.<Type>(*bottoms, **params)`` makes a layer of that type; keyword arguments
go into the type's own parameter message (``kernel_size`` into ``convolution_param`` for
``Convolution``: the message named ``<Type>Parameter``) when it has that field, else into the
``LayerParameter`` itself (``param``, ``loss_weight``, ``include``...); names ending in
``param`` always go to the ``LayerParameter``. Lists fill repeated fields, dicts fill messages,
a single value given to a repeated field becomes a one-element list. ``ntop=`` sets the number of
tops (0 returns the layer itself, several a tuple); ``in_place=True`` makes the tops the bottoms.
``P.<Param>.<ENUM>`` is an enum value of ``<Param>Parameter``. Blobs and layers take the names
they are assigned to in a ``NetSpec``; others are named ``<Type><k>``, counting per type.

Differs from pycaffe: ``Deconvolution`` keywords go into ``convolution_param`` (pycaffe has no
``DeconvolutionParameter`` and fails); a keyword that fits neither message is one error naming
the layer type and the keyword.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from ..errors import CaffeError
from ..proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "param_name_dict", "assign_proto"]

#: The most tops one layer may have: more is a mistake in the script, not a net (``ntop=10**9``).
MAX_TOPS = 2**16
#: Layer types that read another type's parameter message (Caffe shares it in C++).
_SHARED_PARAMS = {"Deconvolution": "convolution"}


class NetSpecError(CaffeError, TypeError):
    """A layer specification that cannot become a ``LayerParameter``."""


def param_name_dict() -> dict[str, str]:
    """``{type name: parameter field prefix}`` from the schema: every ``LayerParameter`` field
    ``<x>_param`` whose message is ``<Type>Parameter`` gives ``Type -> x``."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    for type_name, prefix in _SHARED_PARAMS.items():
        names.setdefault(type_name, prefix)
    return names


def to_proto(*tops) -> caffe_pb2.NetParameter:
    """A ``NetParameter`` with every layer needed to compute ``tops`` (blobs named automatically)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto, name: str, val) -> None:
    """Set field ``name`` of message ``proto`` from a Python value: lists fill repeated fields
    (dicts in a list add messages), dicts fill a message, anything else is assigned; a single
    value for a repeated field becomes a one-element list."""
    field = getattr(proto, name)
    is_repeated = hasattr(field, "extend")
    if is_repeated and not isinstance(val, (list, tuple)):
        val = [val]
    if isinstance(val, (list, tuple)):
        if val and isinstance(val[0], dict):
            for item in val:
                message = field.add()
                for key, value in item.items():
                    assign_proto(message, key, value)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for key, value in val.items():
            assign_proto(field, key, value)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer (``fn``), the ``n``-th of its tops."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The layers needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, its bottoms (``Top``\\ s) and its parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        self.type_name = type_name
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise NetSpecError(f"{type_name} input {index} is not a Top (type is {type(bottom)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if not isinstance(self.ntop, int) or isinstance(self.ntop, bool) or not 0 <= self.ntop <= MAX_TOPS:
            raise NetSpecError(f"{type_name}: ntop must be a number of tops (0 to {MAX_TOPS}), got {self.ntop!r}")
        if self.in_place and self.ntop > len(inputs):
            raise NetSpecError(f"{type_name}: in_place=True makes the tops the bottoms, but the layer has "
                               f"{len(inputs)} bottom(s) for {self.ntop} top(s)")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames) -> str:
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames) -> None:
        if self in layers:
            return
        bottom_names = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottom_names.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer: caffe_pb2.LayerParameter, key: str, value) -> None:
        """Put one keyword where pycaffe puts it (see the module docstring)."""
        prefix = _PARAM_NAMES.get(self.type_name)
        try:
            if not key.endswith("param") and prefix is not None:
                message = getattr(layer, prefix + "_param")
                if key in message.DESCRIPTOR.fields_by_name:
                    assign_proto(message, key, value)
                    return
            assign_proto(layer, key, value)
        except AttributeError:
            where = f"{prefix}_param nor LayerParameter" if prefix else "LayerParameter"
            raise NetSpecError(f"{self.type_name}: keyword {key!r} is a field of neither {where}") from None
        except (TypeError, ValueError, OverflowError) as err:  # protobuf refuses the value
            raise NetSpecError(f"{self.type_name}: keyword {key}={value!r}: {err}") from None


class NetSpec:
    """Named tops: assign ``n.<name> = L.<Type>(...)`` (or ``n[name] = ...``); ``to_proto()``
    gives every layer needed for them, blobs and layers named by the assignment."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.tops[item]

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.<Type>(*bottoms, **params)`` makes a layer (see the module docstring)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return layer_function(name)


def layer_function(type_name: str):
    """The function that ``L.<type_name>`` is: it returns the top, the tops, or the layer."""

    def make_layer(*args, **kwargs):
        fn = Function(type_name, args, kwargs)
        if fn.ntop == 0:
            return fn
        if fn.ntop == 1:
            return fn.tops[0]
        return fn.tops

    make_layer.__name__ = make_layer.__qualname__ = type_name
    return make_layer


class Parameters:
    """``P.<Param>.<ENUM>``: the value of enum ``ENUM`` of message ``<Param>Parameter``."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter", None)
        if message is None:
            raise AttributeError(f"no message {name}Parameter in caffe.proto")
        return _EnumValues(message)


class _EnumValues:
    def __init__(self, message):
        self._message = message

    def __getattr__(self, name: str):
        try:
            return getattr(self._message, name)
        except AttributeError:
            raise AttributeError(f"{self._message.DESCRIPTOR.name} has no enum value {name}") from None


_PARAM_NAMES = param_name_dict()
layers = Layers()
params = Parameters()
