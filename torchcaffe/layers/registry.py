"""The one registry of layer types, keyed by Caffe's type string (Caffe's ``REGISTER_LAYER_CLASS``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from ..errors import NetError, layer_label

if TYPE_CHECKING:
    from .base import Layer

_LAYERS: dict[str, type["Layer"]] = {}
L = TypeVar("L", bound=type["Layer"])


def register_layer(*type_names: str) -> Callable[[L], L]:
    """Class decorator: ``@register_layer("ReLU")`` makes the class build layers of that type.

    Several names register aliases of one class (a fork's spelling of the same layer).
    Registering a name twice raises: two classes must never claim one type.
    """

    def decorate(cls: L) -> L:
        for name in type_names:
            if name in _LAYERS:
                raise ValueError(
                    f'layer type "{name}" is already registered by {_LAYERS[name].__qualname__}; '
                    f"{cls.__qualname__} cannot register it again")
            _LAYERS[name] = cls
        if "type" not in cls.__dict__:  # a subclass of a registered layer gets its own name
            cls.type = type_names[0]
        return cls

    return decorate


def layer_class(type_name: str, layer_name: str = "?") -> type["Layer"]:
    """The class registered for ``type_name``; an unknown type names the layer and lists the known ones."""
    try:
        return _LAYERS[type_name]
    except KeyError:
        known = ", ".join(sorted(_LAYERS))
        raise NetError(
            f"{layer_label(layer_name, type_name)}: unknown layer type {type_name!r}. "
            f"Known types: {known}. Check the spelling (types are case-sensitive), or register "
            f"a class for it with @torchcaffe.register_layer({type_name!r}).") from None


def layer_type_list() -> list[str]:
    """Every registered type name, sorted (pycaffe's ``caffe.layer_type_list()``)."""
    return sorted(_LAYERS)


def registered_layers() -> dict[str, type["Layer"]]:
    """A copy of the registry: type name -> class (aliases included)."""
    return dict(_LAYERS)
