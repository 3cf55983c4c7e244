"""``type: "Python"``: layers written in Python, pycaffe's way or torch's way.

``python_param { module layer param_str share_in_parallel }`` names a class that must subclass
one of:

* :class:`PythonLayer` (exported as ``torchcaffe.Layer``, pycaffe's ``caffe.Layer``): the classic
  interface — ``setup(bottom, top)``, ``reshape(bottom, top)``, ``forward(bottom, top)``,
  ``backward(top, propagate_down, bottom)`` on blobs holding numpy ``data``/``diff`` arrays, with
  learnable blobs added by ``self.blobs.add_blob(*shape)``. Its backward is the one it writes.
* :class:`TorchLayer` (``torchcaffe.TorchLayer``): ``forward(self, *bottoms)`` on tensors,
  returning the top (or a tuple of tops); optionally ``setup(self, bottom_shapes)``. Its
  ``nn.Parameter``\\ s become its blobs, its backward comes from autograd and it runs on the net's
  device.

Both get ``param_str`` (and ``param_str_``, as the Faster R-CNN fork spells it) and ``phase``
before ``setup``. Anything else the module/layer names resolve to — ``os.system``, a function, a
class of another kind — is refused before it is called; ``Net(..., allow_python_layers=False)``
refuses every Python layer. ``Python.from_class(cls, bottom_shapes, param_str, phase)`` builds
the layer from a class directly (scripts, tests, the gradient checker). See
``docs/python_layers.md``.
"""
from __future__ import annotations

import importlib
import numpy as np
import torch
from torch import nn

from ..net.blob import ArrayBlob, ParamBlob, sync_host_mirrors
from ..proto import caffe_pb2
from .base import TRAIN, Layer, LayerSetup, Sample
from .registry import register_layer


class PythonLayer:
    """pycaffe's ``caffe.Layer``: subclass it and write ``setup``, ``reshape``, ``forward`` and
    ``backward`` on blobs (``bottom[i].data``, ``top[i].reshape(...)``, ``bottom[i].diff[...] = ``)."""

    param_str: str = ""
    param_str_: str = ""
    phase: int = TRAIN

    def setup(self, bottom, top) -> None:
        pass

    def reshape(self, bottom, top) -> None:
        pass

    def forward(self, bottom, top) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define forward(self, bottom, top)")

    def backward(self, top, propagate_down, bottom) -> None:
        pass


class TorchLayer(nn.Module):
    """A Python layer written in torch: define ``forward(self, *bottoms)`` returning the top (or a
    tuple of tops); ``setup(self, bottom_shapes)`` may create ``nn.Parameter``\\ s, which become
    the layer's blobs (``net.params[name]``). Autograd gives the backward; it runs on the net's
    device. Example — channel-wise L2 normalisation (seed 000)::

        class L2Norm(torchcaffe.TorchLayer):
            def forward(self, x):
                return x / (x * x).sum((2, 3), keepdim=True).add(1e-12).sqrt()
    """

    param_str: str = ""
    param_str_: str = ""
    phase: int = TRAIN

    def setup(self, bottom_shapes: list[torch.Size]) -> None:
        pass


def resolve_python_layer(module: str, name: str, owner: Layer) -> type:
    """Import ``module`` and return its class ``name``, refusing anything that is not a layer class."""
    if not module or not name:
        raise owner.fail("python_param needs both 'module' and 'layer'")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise owner.fail(f"cannot import python_param module {module!r}: {error}. Put the folder that "
                         f"holds it on PYTHONPATH (sys.path)") from None
    except AttributeError:
        raise owner.fail(f"python_param module {module!r} has no {name!r}") from None
    if not (isinstance(found, type) and issubclass(found, (PythonLayer, TorchLayer))):
        raise owner.fail(f"python_param {module}.{name} is {type(found).__name__} {found!r}, not a subclass "
                         f"of torchcaffe.Layer (pycaffe's caffe.Layer) or torchcaffe.TorchLayer; refusing "
                         f"to call it")
    return found


class _BlobList(list):
    """pycaffe's ``self.blobs`` of a classic Python layer; ``add_blob(*shape)`` makes a learnable one."""

    def __init__(self, host: "Python"):
        super().__init__()
        self._host = host

    def add_blob(self, *shape: int) -> ParamBlob:
        name = f"blob{len(self)}"
        self._host.add_blob(name, tuple(int(d) for d in shape))
        self.append(ParamBlob(self._host, name))
        return self[-1]


@register_layer("Python")
class Python(Layer):
    """A layer written in Python (see the module docstring): pycaffe-style or torch-style.

    Parameters: ``python_param { module layer param_str share_in_parallel }``.
    Shapes: whatever the Python class's ``reshape`` (classic) or ``forward`` (torch) gives.
    """

    origin = "BVLC Caffe (pycaffe)"
    samples = (
        Sample("python_param { module: 'torchcaffe.layers.python_examples' layer: 'ScaledSum' param_str: '2.5' }",
               bottoms=((2, 3), (2, 3)), note="a torch layer with a learned blob, param_str"),
        Sample("python_param { module: 'torchcaffe.layers.python_examples' layer: 'EuclideanLoss' }",
               bottoms=((4, 3), (4, 3)), note="a classic numpy layer with its own backward"),
        Sample("python_param { module: 'torchcaffe.layers.python_examples' layer: 'ChannelL2Norm' }",
               bottoms=((2, 3, 4, 5),), note="seed 000's L2 normalisation as a TorchLayer"),
    )

    def __init__(self, setup: LayerSetup, cls: type | None = None):
        super().__init__(setup)
        p = setup.param.python_param
        if not setup.allow_python:
            raise self.fail("Python layers are refused in this net (allow_python_layers=False)")
        if cls is None:
            cls = resolve_python_layer(p.module, p.layer, self)
        elif not (isinstance(cls, type) and issubclass(cls, (PythonLayer, TorchLayer))):
            raise self.fail(f"{cls!r} is not a subclass of torchcaffe.Layer (pycaffe's caffe.Layer) or "
                            f"torchcaffe.TorchLayer; refusing to call it")
        impl = cls()
        impl.param_str = impl.param_str_ = p.param_str
        impl.phase = setup.phase
        self.torch_style = isinstance(impl, TorchLayer)
        if self.torch_style:
            self._setup_torch(impl, setup.bottom_shapes)
        else:
            self._setup_classic(impl, setup.bottom_shapes)

    @classmethod
    def from_class(cls, layer_class: type, bottom_shapes, param_str: str = "", phase: int = TRAIN,
                   name: str = "python", num_tops: int = 1) -> "Python":
        """The layer that ``python_param { module layer param_str }`` naming ``layer_class`` would
        build, made directly from the class (for classes defined in a script or a test, and for
        the gradient checker): ``Python.from_class(MyLayer, [(2, 3)], param_str="4")``."""
        param = caffe_pb2.LayerParameter(name=name, type="Python")
        param.python_param.module = getattr(layer_class, "__module__", "") or ""
        param.python_param.layer = getattr(layer_class, "__qualname__", "") or ""
        param.python_param.param_str = param_str
        param.top.extend(f"{name}_top{i}" for i in range(num_tops))
        setup = LayerSetup(param, [torch.Size(tuple(s)) for s in bottom_shapes], phase)
        return cls(setup, layer_class)

    # -- torch style -------------------------------------------------------------------------------
    def _setup_torch(self, impl: TorchLayer, bottom_shapes) -> None:
        impl.setup(list(bottom_shapes))
        self.impl = impl
        self._owners = []
        for i, (name, param) in enumerate(list(impl.named_parameters())):
            module, _, attr = name.rpartition(".")
            self._owners.append((impl.get_submodule(module) if module else impl, attr))
            self.register_parameter(f"blob{i}", param)
            self.blob_names.append(f"blob{i}")

    # -- classic style -----------------------------------------------------------------------------
    def _setup_classic(self, impl: PythonLayer, bottom_shapes) -> None:
        self.__dict__["classic"] = impl  # not a module: keep it out of nn.Module's bookkeeping
        impl.blobs = _BlobList(self)
        # The tops persist like Caffe's blobs: a layer may shape them in setup and never again.
        self.__dict__["tops"] = [ArrayBlob(np.zeros((0,), np.float32)) for _ in range(self.num_tops)]
        impl.setup([ArrayBlob(np.zeros(tuple(s), np.float32)) for s in bottom_shapes], self.tops)

    def top_shapes(self, bottom_shapes):
        if self.torch_style:
            return _torch_top_shapes(self, bottom_shapes)
        self.classic.reshape([ArrayBlob(np.zeros(tuple(s), np.float32)) for s in bottom_shapes], self.tops)
        return [torch.Size(t.shape) for t in self.tops]

    def forward(self, *bottoms: torch.Tensor):
        if self.torch_style:
            for i, (module, attr) in enumerate(self._owners):  # follow blobs the net re-pointed
                module._parameters[attr] = self._parameters[f"blob{i}"]
            return self.impl(*bottoms)
        params = [getattr(self, n) for n in self.blob_names]
        tops = _ClassicPython.apply(self, len(bottoms), *bottoms, *params)
        return tops[0] if len(tops) == 1 else tops


def _torch_top_shapes(layer: Python, bottom_shapes):
    with torch.no_grad():
        tops = layer(*[torch.zeros(tuple(s)) for s in bottom_shapes])
    return [t.shape for t in (tops if isinstance(tops, tuple) else (tops,))]


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", copy=tensor.device.type != "cpu").numpy()


class _ClassicPython(torch.autograd.Function):
    """Runs a classic layer's numpy forward, and its own backward when autograd asks for one."""

    @staticmethod
    def forward(ctx, host: Python, num_bottoms: int, *tensors):
        bottoms = tensors[:num_bottoms]
        like = bottoms[0] if bottoms else (tensors[num_bottoms] if len(tensors) > num_bottoms else None)
        device = like.device if like is not None else torch.device("cpu")
        dtype = like.dtype if like is not None else torch.float32
        bottom = [ArrayBlob(_to_numpy(b)) for b in bottoms]
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        for top in host.tops:  # the net's precision (float64 for gradient checks)
            if top.data.dtype != np_dtype:
                top.data = top.data.astype(np_dtype)
        host.classic.reshape(bottom, host.tops)
        host.classic.forward(bottom, host.tops)
        sync_host_mirrors()  # on a GPU, what the layer wrote into its blobs goes back to the device
        ctx.host, ctx.bottom, ctx.num_bottoms = host, bottom, num_bottoms
        ctx.top = [ArrayBlob(np.array(t.data, copy=True)) for t in host.tops]  # this call's values
        ctx.device, ctx.dtype = device, dtype
        return tuple(torch.from_numpy(t.data).to(device, dtype) for t in ctx.top)

    @staticmethod
    def backward(ctx, *grads):
        host, bottom, top = ctx.host, ctx.bottom, ctx.top
        for blob, grad in zip(top, grads):
            blob.diff = _to_numpy(grad) if grad is not None else np.zeros_like(blob.data)
        for blob in bottom:
            blob.diff = np.zeros_like(blob.data)
        propagate_down = [bool(ctx.needs_input_grad[2 + i]) for i in range(ctx.num_bottoms)]
        host.classic.backward(top, propagate_down, bottom)
        sync_host_mirrors()  # on a GPU, the blob diffs it wrote reach the parameters' .grad now
        bottom_grads = tuple(torch.from_numpy(np.asarray(b.diff)).to(ctx.device, ctx.dtype) if need else None
                             for b, need in zip(bottom, propagate_down))
        # parameter diffs: the layer wrote them into its blobs' diffs (the parameters' .grad) itself
        return (None, None) + bottom_grads + (None,) * (len(ctx.needs_input_grad) - 2 - ctx.num_bottoms)

