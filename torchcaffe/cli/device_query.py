"""``torchcaffe device_query``: the properties of CUDA devices (Caffe's ``caffe device_query``)."""
from __future__ import annotations

import argparse

import torch

from ..logs import LogSession, log
from .common import DeviceError, add_gpu_flag, no_cuda_reason, parse_gpus
from .registry import register_verb

#: (Caffe's label, attribute of torch's device properties); attributes this torch lacks are skipped.
_PROPERTIES = (
    ("Major revision number", "major"),
    ("Minor revision number", "minor"),
    ("Name", "name"),
    ("Total global memory", "total_memory"),
    ("Total shared memory per block", "shared_memory_per_block"),
    ("Total registers per block", "regs_per_multiprocessor"),
    ("Warp size", "warp_size"),
    ("Maximum threads per block", "max_threads_per_block"),
    ("Maximum threads per multiprocessor", "max_threads_per_multi_processor"),
    ("Clock rate", "clock_rate"),
    ("L2 cache size", "L2_cache_size"),
    ("Number of multiprocessors", "multi_processor_count"),
    ("Integrated", "is_integrated"),
    ("Multi-GPU board", "is_multi_gpu_board"),
)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_gpu_flag(parser, "device ids separated by ',' or 'all' (default: all)")


@register_verb("device_query", "show GPU diagnostic information", _arguments)
def device_query(args: argparse.Namespace, session: LogSession) -> int:
    gpu = args.gpu or "all"
    log.info("Querying GPUs %s", gpu)
    if not torch.cuda.is_available():
        raise DeviceError(f"no device to query: {no_cuda_reason()}")
    for device in parse_gpus(gpu):
        log_device_properties(device)
    return 0


def log_device_properties(device: int) -> None:
    """Caffe's ``Caffe::DeviceQuery`` lines for one device, as far as torch reports them."""
    props = torch.cuda.get_device_properties(device)
    log.info("Device id:                     %d", device)
    for label, attr in _PROPERTIES:
        value = getattr(props, attr, None)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "Yes" if value else "No"
        log.info("%-31s%s", label + ":", value)
