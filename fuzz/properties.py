"""The hypothesis side of the fuzzers: input strategies per target and the property.

Inputs are raw bytes, seeds from ``corpus/<target>/`` with a few mutations (bit flips, bytes set to
edge values, insertions, deletions, truncation, splices of another seed and, for text targets,
prototxt tokens), or for ``net_spec`` plain bytes that ``net_spec_input`` reads as choices.
"""
from __future__ import annotations

from hypothesis import strategies as st

from fuzz.targets import TARGETS, run_one, seeds

_TEXT_TARGETS = {"prototxt", "solver_prototxt"}
_TOKENS = [b"{", b"}", b":", b" ", b"\n", b"layer", b"layers", b"name", b"type", b"bottom", b"top",
           b"\"Convolution\"", b"\"Input\"", b"CONVOLUTION", b"input_dim", b"input", b"param",
           b"shape { dim: 99999999999 dim: 99999999999 }", b"dim: -1", b"num_output: 2147483647",
           b"kernel_size: 0", b"stride: 0", b"pad: -5", b"1e999", b"nan", b"-inf", b"0x7fffffffffffffff",
           b"\"\\", b"#", b"include { phase: TRAIN }", b"net_param {", b"solver_type: 9",
           b"\xff\xfe", b"\x00", b"layer {" * 40]
_EDGE_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF]


@st.composite
def _mutated(draw, pool: list[bytes], text: bool) -> bytes:
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "edge", "insert", "delete", "truncate", "splice"]
                                  + (["token"] * 3 if text else [])))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "edge" and data:
            data[min(at, len(data) - 1)] = draw(st.sampled_from(_EDGE_BYTES))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(pool))
            start = draw(st.integers(0, len(other)))
            data[at:at] = other[start:start + draw(st.integers(1, 64))]
        elif op == "token":
            data[at:at] = draw(st.sampled_from(_TOKENS))
    return bytes(data)


def inputs(target: str) -> st.SearchStrategy[bytes]:
    """The bytes hypothesis feeds to ``target``."""
    if target not in TARGETS:
        raise KeyError(f"no fuzz target {target!r}; targets: {sorted(TARGETS)}")
    pool = seeds(target)
    random_bytes = st.binary(max_size=256)
    if target == "net_spec" or not pool:
        return random_bytes
    return st.one_of(random_bytes, _mutated(pool, target in _TEXT_TARGETS))


def check(target: str, data: bytes, limit: float | None = None) -> str:
    """The property: ``data`` loads or is refused with a CaffeError, within the deadline.
    Returns the outcome's kind; a failure raises AssertionError with the details."""
    outcome = run_one(target, data) if limit is None else run_one(target, data, limit)
    assert not outcome.failed, f"fuzz target {target!r} failed on {data!r}:\n{outcome.detail}"
    return outcome.kind
