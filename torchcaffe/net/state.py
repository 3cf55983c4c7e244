"""NetState filtering: which layers of a NetParameter exist in a given phase, level and stages.

Caffe's rules (``Net::FilterNet`` / ``Net::StateMeetsRule``): a layer has ``include`` rules or
``exclude`` rules, never both. With include rules it exists when the state meets any one of them;
with exclude rules it exists unless the state meets one; with neither it always exists. A rule is
met when its phase (if set) equals the state's, the level lies within ``[min_level, max_level]``
(each bound only if set), every ``stage`` of the rule is among the state's stages and no
``not_stage`` is.
"""
from __future__ import annotations

from ..errors import NetError, layer_label
from ..proto import caffe_pb2


def make_state(phase: int, level: int = 0, stages=(), base: caffe_pb2.NetState | None = None) -> caffe_pb2.NetState:
    """The state Caffe's ``Net(file, phase, level, stages)`` builds: the file's own ``state`` with
    the phase and level replaced and the stages appended."""
    state = caffe_pb2.NetState()
    if base is not None:
        state.CopyFrom(base)
    state.phase = phase
    state.level = level
    state.stage.extend(stages or ())
    return state


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def layer_included(state: caffe_pb2.NetState, layer: caffe_pb2.LayerParameter) -> bool:
    if layer.include and layer.exclude:
        raise NetError(f"{layer_label(layer.name, layer.type)}: has both include and exclude rules; "
                       f"Caffe accepts one kind or the other")
    if layer.include:
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def filter_net(param: caffe_pb2.NetParameter, state: caffe_pb2.NetState) -> caffe_pb2.NetParameter:
    """A copy of ``param`` holding only the layers that exist in ``state`` (and the state itself)."""
    kept = caffe_pb2.NetParameter()
    kept.CopyFrom(param)
    del kept.layer[:]
    kept.state.CopyFrom(state)
    for layer in param.layer:
        if layer_included(state, layer):
            kept.layer.add().CopyFrom(layer)
    return kept
