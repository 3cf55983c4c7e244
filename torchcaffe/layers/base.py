"""The base class of every layer, and the sample table each layer ships for the generic tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from ..errors import NetError, layer_label
from ..fillers import fill
from ..limits import check_blob
from ..proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


@dataclass(frozen=True)
class Sample:
    """One entry of a layer's sample table (the idea of PyTorch's OpInfo).

    params:   text that goes inside ``layer { ... }`` besides name/type/bottom/top, e.g.
              ``'convolution_param { num_output: 3 kernel_size: 2 }'``.
    bottoms:  the bottom shapes.
    tops:     how many tops to give the layer (default: the layer's minimum).
    values:   per bottom, how to draw its values: ``None`` = standard normal;
              ``("int", lo, hi)`` = integers in [lo, hi) (labels, indices: never differentiated);
              ``("uniform", lo, hi)``; ``("choice", v0, v1, ...)`` = values drawn from the list;
              ``("const", v)``.
    phase:    TRAIN or TEST.
    gradcheck: False where the layer is not differentiable at the drawn values (or at all).
    inplace:  True when Caffe allows ``top == bottom`` for this layer (tested for equality).
    note:     what the sample covers.
    """

    params: str = ""
    bottoms: Sequence[Sequence[int]] = ((2, 3),)
    tops: int | None = None
    values: Sequence[tuple | None] | None = None
    phase: int = TRAIN
    gradcheck: bool = True
    inplace: bool = False
    note: str = ""


@dataclass
class LayerSetup:
    """What a layer knows when it is built: its LayerParameter, bottom shapes and the net's phase."""

    param: caffe_pb2.LayerParameter
    bottom_shapes: list[torch.Size]
    phase: int = TRAIN
    source: str = ""  # the file the layer came from, for error messages
    num_tops: int = -1  # -1: as many as the prototxt names
    allow_python: bool = True  # False: Python layers are refused (Net(allow_python_layers=False))

    def __post_init__(self):
        if self.num_tops < 0:
            self.num_tops = len(self.param.top)


class Layer(nn.Module):
    """One Caffe layer as a small ``nn.Module``.

    A subclass declares its arity (Caffe's ``ExactNumBottomBlobs`` & co.) as class attributes,
    builds Caffe's blobs in ``__init__`` with :meth:`add_blob` (parameters and buffers in Caffe's
    order), and computes its tops in ``forward(*bottoms)`` with torch ops; autograd supplies the
    backward. ``forward`` never writes into its bottoms: an in-place layer (``top == bottom`` in the
    prototxt) is in place only in the net's bookkeeping.
    """

    type: ClassVar[str] = ""
    exact_bottoms: ClassVar[int | None] = None
    min_bottoms: ClassVar[int | None] = None
    max_bottoms: ClassVar[int | None] = None
    exact_tops: ClassVar[int | None] = None
    min_tops: ClassVar[int | None] = None
    max_tops: ClassVar[int | None] = None
    #: Loss layers put loss_weight 1 on their first top unless the prototxt says otherwise.
    is_loss: ClassVar[bool] = False
    #: False for layers without a backward in Caffe (ArgMax, Accuracy, Threshold...).
    differentiable: ClassVar[bool] = True
    #: The samples the generic layer tests run this type through.
    samples: ClassVar[tuple[Sample, ...]] = ()
    #: Where the layer type comes from (BVLC Caffe, or the fork that introduced it).
    origin: ClassVar[str] = "BVLC Caffe"

    def __init__(self, setup: LayerSetup):
        super().__init__()
        self.name = setup.param.name
        self.phase = setup.phase
        self.num_tops = setup.num_tops
        self.blob_names: list[str] = []
        self.check_arity(setup)

    # -- construction helpers -------------------------------------------------------------------
    @property
    def label(self) -> str:
        return layer_label(self.name, self.type)

    def check_arity(self, setup: LayerSetup) -> None:
        """Caffe's CheckBlobCounts: the numbers of bottoms and tops against the declared arity."""
        for what, count in (("bottom", len(setup.bottom_shapes)), ("top", setup.num_tops)):
            exact, low, high = (getattr(self, f"{k}_{what}s") for k in ("exact", "min", "max"))
            if exact is not None and count != exact:
                wanted = f"exactly {exact}"
            elif low is not None and count < low:
                wanted = f"at least {low}"
            elif high is not None and count > high:
                wanted = f"at most {high}"
            else:
                continue
            raise NetError(f"{self.label}: takes {wanted} {what} blob(s), got {count}. "
                           f"Fix the layer's '{what}:' lines{setup_source(setup)}.")

    def fail(self, message: str) -> NetError:
        """An error about this layer's configuration, to ``raise``."""
        return NetError(f"{self.label}: {message}")

    def add_blob(self, name: str, shape: Sequence[int], filler: caffe_pb2.FillerParameter | None = None,
                 *, learnable: bool = True) -> torch.Tensor:
        """Create one of Caffe's blobs (in Caffe's order), filled by ``filler`` (zeros if None).

        Learnable blobs become ``nn.Parameter``s, others (BatchNorm's statistics) buffers.
        """
        check_blob(self.label, f"parameter blob {len(self.blob_names)} ({name})", shape)  # before allocating
        tensor = torch.zeros(tuple(int(d) for d in shape), dtype=torch.float32)
        if filler is not None:
            fill(tensor, filler, self.label)
        if learnable:
            self.register_parameter(name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)
        self.blob_names.append(name)
        return getattr(self, name)

    def caffe_blobs(self) -> list[torch.Tensor]:
        """Caffe's blobs of this layer, in Caffe's order (what a .caffemodel stores for it)."""
        return [getattr(self, name) for name in self.blob_names]

    @property
    def blobs(self) -> list:
        """pycaffe's ``layer.blobs``: numpy views of the layer's blobs."""
        from ..net.blob import ParamBlob
        return [ParamBlob(self, name) for name in self.blob_names]

    def buffer_diff(self, name: str) -> torch.Tensor:
        """The diff Caffe keeps for a non-learnable blob (never written: zeros)."""
        diffs = self.__dict__.setdefault("_buffer_diffs", {})
        tensor = getattr(self, name)
        if name not in diffs or diffs[name].shape != tensor.shape:
            diffs[name] = torch.zeros_like(tensor)
        return diffs[name]

    # -- Caffe's net-level hooks ------------------------------------------------------------------
    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether ``force_backward`` may make this layer compute the diff of that bottom."""
        return not self.is_loss or bottom_index != 1

    def forward(self, *bottoms: torch.Tensor):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f'name="{self.name}"'


def setup_source(setup: LayerSetup) -> str:
    return f" in {setup.source}" if setup.source else ""


def axis_index(layer: Layer, axis: int, num_axes: int, field_name: str) -> int:
    """Caffe's CanonicalAxisIndex: a possibly negative axis checked against ``num_axes``."""
    if not -num_axes <= axis < num_axes:
        raise layer.fail(f"{field_name} {axis} is out of range for a {num_axes}-D bottom "
                         f"(allowed: {-num_axes}..{num_axes - 1})")
    return axis % num_axes
