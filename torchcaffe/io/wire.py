"""The few pieces of the protobuf wire format that our fast readers and writers need.

Parsing a 500 MB ``.caffemodel`` with protobuf turns every float into a Python object. We
instead walk the message structure field by field (a few thousand fields for a big net) and
hand every large payload to numpy as a slice of the file's buffer, so a packed float array is
never walked element by element.

Reading works on any buffer that indexes to ints (``bytes``, ``bytearray``, ``memoryview``):

* ``read_varint(buf, pos, end) -> (value, next_pos)``
* ``read_field(buf, pos, end) -> (field_number, wire_type, value, next_pos)``: ``value`` is the
  int for a varint, the byte offset of the payload for fixed32/fixed64, and a ``(start, end)``
  slice for a length-delimited field or a group (the group's content, without its end tag).
* ``iter_fields(buf, start, end)`` yields ``(field_number, wire_type, value)`` the same way.
* ``fixed_run_length(buf, pos, end, tag, width)``: how many consecutive copies of one
  non-packed fixed-width field start at ``pos`` (tag then ``width`` bytes each), counted with
  numpy, so an unpacked ``repeated float`` is decoded without a Python loop either.

Writing: ``encode_varint``, ``encode_tag``, ``length_delimited_header`` (tag and length, for a
payload written separately) and ``encode_length_delimited``.

Damage (a truncated buffer, a length running past the end, a varint longer than ten bytes, a
field number 0, an unknown wire type) raises ``WireError`` carrying the byte offset; callers
add the file and the layer to the message.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from torchcaffe.errors import ParseError

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
START_GROUP = 3
END_GROUP = 4
FIXED32 = 5

WIRE_TYPE_NAMES = {
    VARINT: "varint",
    FIXED64: "fixed64",
    LENGTH_DELIMITED: "length-delimited",
    START_GROUP: "start-group",
    END_GROUP: "end-group",
    FIXED32: "fixed32",
}

_MAX_VARINT_BYTES = 10
_UINT64_MASK = (1 << 64) - 1


class WireError(ParseError):
    """Bytes that break the protobuf wire format; ``offset`` is where the problem starts."""

    def __init__(self, problem: str, offset: int):
        super().__init__(f"{problem} (byte offset {offset})")
        self.problem = problem
        self.offset = offset


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``pos``; returns ``(value, next_pos)`` (value < 2**64)."""
    if pos >= end:
        raise WireError("the data ends where a varint should start", pos)
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    return _read_long_varint(buf, pos, end)


def _read_long_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """The multi-byte case of ``read_varint``."""
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("the data ends inside a varint", start)
        if pos - start >= _MAX_VARINT_BYTES:
            raise WireError("varint longer than 10 bytes", start)
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            if value > _UINT64_MASK:
                raise WireError("varint does not fit in 64 bits", start)
            return value, pos
        shift += 7


def as_signed64(value: int) -> int:
    """Reinterpret a decoded varint as a two's-complement int64 (how int32/int64 are sent)."""
    return value - (1 << 64) if value >= (1 << 63) else value


def read_field(buf, pos: int, end: int) -> tuple[int, int, object, int]:
    """Decode the field at ``pos``: ``(field_number, wire_type, value, next_pos)``.

    ``value`` is an int (varint), the payload offset (fixed32/fixed64) or a ``(start, end)``
    slice (length-delimited, or a group's content).
    """
    tag_pos = pos
    tag, pos = read_varint(buf, pos, end)
    field_number = tag >> 3
    wire_type = tag & 7
    if field_number == 0:
        raise WireError("field number 0 is not allowed", tag_pos)
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos, end)
        return field_number, wire_type, value, pos
    if wire_type == LENGTH_DELIMITED:
        length, start = read_varint(buf, pos, end)
        stop = start + length
        if stop > end:
            raise WireError(
                f"field {field_number} claims {length} bytes but only {end - start} are left", tag_pos
            )
        return field_number, wire_type, (start, stop), stop
    if wire_type == FIXED32:
        return field_number, wire_type, pos, _checked_advance(pos, 4, end, field_number, tag_pos)
    if wire_type == FIXED64:
        return field_number, wire_type, pos, _checked_advance(pos, 8, end, field_number, tag_pos)
    if wire_type == START_GROUP:
        content_start = pos
        content_end, pos = _skip_group(buf, pos, end, field_number, tag_pos)
        return field_number, wire_type, (content_start, content_end), pos
    if wire_type == END_GROUP:
        raise WireError(f"end-group tag for field {field_number} without a start", tag_pos)
    raise WireError(f"field {field_number} has invalid wire type {wire_type}", tag_pos)


def _checked_advance(pos: int, width: int, end: int, field_number: int, tag_pos: int) -> int:
    """``pos + width``, or a WireError when that runs past ``end``."""
    if pos + width > end:
        raise WireError(f"the data ends inside the {width}-byte value of field {field_number}", tag_pos)
    return pos + width


def _skip_group(buf, pos: int, end: int, field_number: int, tag_pos: int) -> tuple[int, int]:
    """Skip a (deprecated) group's content; returns ``(content_end, pos_after_end_tag)``."""
    while True:
        if pos >= end:
            raise WireError(f"group field {field_number} has no end tag", tag_pos)
        inner_tag, after_tag = read_varint(buf, pos, end)
        if inner_tag & 7 == END_GROUP:
            if inner_tag >> 3 != field_number:
                raise WireError(f"group field {field_number} closed by field {inner_tag >> 3}", pos)
            return pos, after_tag
        _, _, _, pos = read_field(buf, pos, end)


def iter_fields(buf, start: int, end: int) -> Iterator[tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)`` for each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        field_number, wire_type, value, pos = read_field(buf, pos, end)
        yield field_number, wire_type, value


def fixed_run_length(buf, pos: int, end: int, tag: bytes, width: int) -> int:
    """Count the consecutive ``tag + width-byte value`` records starting at ``pos``.

    Used for the non-packed encoding of ``repeated float``/``double`` (one tag per value). The
    caller has already checked that a full record starts at ``pos``. Windows grow geometrically,
    so the cost is proportional to the run's length, not to what follows it.
    """
    stride = len(tag) + width
    available = (end - pos) // stride
    count = _short_run_length(buf, pos, tag, stride, min(available, _SHORT_RUN))
    if count < _SHORT_RUN:
        return count
    raw = np.frombuffer(buf, dtype=np.uint8, count=end - pos, offset=pos)
    window = 64
    while count < available:
        rows = min(window, available - count)
        block = raw[count * stride:(count + rows) * stride].reshape(rows, stride)[:, :len(tag)]
        matches = np.all(block == np.frombuffer(tag, dtype=np.uint8), axis=1)
        if not matches.all():
            return count + int(np.argmin(matches))
        count += rows
        window *= 4
    return count


_SHORT_RUN = 16


def _short_run_length(buf, pos: int, tag: bytes, stride: int, limit: int) -> int:
    """``fixed_run_length`` for the first ``limit`` records, in Python (cheaper for short runs)."""
    count = 0
    while count < limit and buf[pos + count * stride:pos + count * stride + len(tag)] == tag:
        count += 1
    return count


def encode_varint(value: int) -> bytes:
    """The base-128 varint bytes of a non-negative ``value`` (negatives as 64-bit two's complement)."""
    if value < 0:
        value &= _UINT64_MASK
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(field_number: int, wire_type: int) -> bytes:
    """The tag bytes that start a field."""
    return encode_varint((field_number << 3) | wire_type)


def length_delimited_header(field_number: int, payload_length: int) -> bytes:
    """The tag and length prefix of a length-delimited field; its payload follows them."""
    return encode_tag(field_number, LENGTH_DELIMITED) + encode_varint(payload_length)


def encode_length_delimited(field_number: int, payload: bytes) -> bytes:
    """A whole length-delimited field: tag, length, payload."""
    return length_delimited_header(field_number, len(payload)) + payload
