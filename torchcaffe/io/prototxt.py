"""Reading and writing Caffe's protobuf text format (``.prototxt``) and binary net files.

* ``parse_text(text, message, source="<string>")`` merges text format into ``message``.
* ``read_net(path_or_text)`` reads a net (text, or binary as in a ``.caffemodel``) and returns
  it upgraded to the current format (``torchcaffe.io.upgrade.upgrade_net``).
* ``read_solver(path_or_text)`` reads a solver and upgrades it (``upgrade_solver``).
* ``net_to_text(message)`` prints a message the way Caffe's ``WriteProtoToTextFile`` does.

Caffe parses with protobuf's C++ ``TextFormat::Parse``; we use protobuf's Python
``text_format.Parse``, which takes the same language: ``#`` comments, ``'`` or ``"`` strings,
``true``/``True``/``t``/``1`` and ``false``/``False``/``f``/``0`` for booleans, enum values by
name or number, an optional ``:`` before ``{``, ``<...>`` blocks, ``[a, b]`` lists, ``,`` or
``;`` after a field, a ``f`` suffix on floats. Like Caffe's parser it refuses a non-repeated
field given twice, and a message left without a ``required`` field. Beyond Caffe we accept
a UTF-8 byte-order mark (Caffe's parser stops at it) and lone-CR line ends; CRLF line ends,
a missing final newline and bytes that are not UTF-8 inside comments (old files with Latin-1
or GBK comments; we replace them by U+FFFD) are accepted by both.

Every failure is one ``ParseError`` whose message starts with ``<file>:<line>:<column>:``
(1-based, counted after the byte-order mark is removed, as an editor shows them) and names the
layer and field it happened in, with a close spelling when a field or enum name is unknown.
"""
from __future__ import annotations

import bisect
import difflib
import logging
import math
import os
import re
import struct
from dataclasses import dataclass, field as dataclass_field
from typing import Optional, Union

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import text_encoding, text_format

from torchcaffe.errors import ParseError, layer_label
from torchcaffe.io.files import open_for_reading
from torchcaffe.io.upgrade import upgrade_net, upgrade_snapshot_prefix, upgrade_solver
from torchcaffe.proto import caffe_pb2

__all__ = ["parse_text", "read_net", "read_solver", "net_to_text", "normalise_text",
           "format_float", "format_double"]

_log = logging.getLogger("torchcaffe")

_BOM = "\ufeff"
_LAYER_FIELDS = ("layer", "layers")  # NetParameter.layer (current) and .layers (V1)

PathOrText = Union[str, bytes, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# Parsing text
# ---------------------------------------------------------------------------------------------

def parse_text(text: Union[str, bytes], message: _message.Message,
               source: str = "<string>") -> _message.Message:
    """Merge protobuf text format into ``message`` and return it.

    ``source`` names the text in error messages (usually the file path). Fields already set in
    ``message`` stay; a non-repeated field set both there and in ``text`` is an error, as in
    Caffe's parser. After parsing, missing ``required`` fields are an error too (Caffe's
    ``ReadProtoFromTextFile`` fails on them the same way).
    """
    text = normalise_text(text, source)
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise _explain_parse_error(err, text, message.DESCRIPTOR, source) from None
    except (ValueError, TypeError) as err:  # a value the runtime refuses after parsing it
        raise ParseError(f"{source}: {err}") from None
    _check_required_fields(message, text, source)
    return message


def normalise_text(text: Union[str, bytes], source: str = "<string>") -> str:
    """The text as ``str`` with a leading byte-order mark removed and every line end ``\\n``.

    Bytes are decoded as UTF-8; bytes that are not UTF-8 become U+FFFD with a warning
    (Caffe's parser works on raw bytes and skips such bytes inside comments).
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = _decode_utf8(bytes(text), source)
    if text.startswith(_BOM):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _decode_utf8(data: bytes, source: str) -> str:
    """``data`` decoded as UTF-8, replacing (and warning about) bytes that are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        _log.warning("%s:%d: bytes that are not UTF-8 replaced by U+FFFD", source, line)
        return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# Where in the text an error happened: a light tokenizer that follows the block structure
# ---------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<punct>[{}<>:\[\],;])
    | (?P<word>[^\s{}<>:\[\],;\#"']+)
    | (?P<other>.)
""", re.VERBOSE)
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class _Token:
    kind: str
    text: str
    line: int
    col: int

    @property
    def pos(self) -> tuple[int, int]:
        return (self.line, self.col)


@dataclass
class _Block:
    """One ``name { ... }`` block open at some point of the text."""
    field: str                      # the field that opened it ("" for the whole message)
    descriptor: Optional[_descriptor.Descriptor]
    path: str                       # as FindInitializationErrors writes it: layer[2].clip_param
    line: int
    col: int
    name: Optional[str] = None      # the block's own ``name:`` value, once seen
    type: Optional[str] = None      # the block's own ``type:`` value, once seen
    counts: dict = dataclass_field(default_factory=dict)  # repeated child blocks seen so far


@dataclass
class _Context:
    """The open blocks at a position, and the field whose value starts there (if any)."""
    blocks: list
    value_field: Optional[str] = None
    opened: dict = dataclass_field(default_factory=dict)  # every block seen: path -> _Block


def _tokenize(text: str) -> list:
    """Tokens (no spaces or comments) with 1-based line and column, as protobuf counts them."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    tokens = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind in ("space", "comment"):
            continue
        line = bisect.bisect_right(line_starts, m.start())
        tokens.append(_Token(kind, m.group(), line, m.start() - line_starts[line - 1] + 1))
    return tokens


def _unquote(token: _Token) -> str:
    if token.kind == "string":
        return token.text[1:-1]
    return token.text


def _child_descriptor(block: _Block, name: str) -> Optional[_descriptor.Descriptor]:
    if block.descriptor is None:
        return None
    fd = block.descriptor.fields_by_name.get(name)
    return fd.message_type if fd is not None else None


def _open_block(stack: list, name: str, token: _Token) -> _Block:
    parent = stack[-1]
    index = parent.counts.get(name, 0)
    parent.counts[name] = index + 1
    fd = parent.descriptor.fields_by_name.get(name) if parent.descriptor is not None else None
    step = f"{name}[{index}]" if fd is None or fd.is_repeated else name
    path = f"{parent.path}.{step}" if parent.path else step
    block = _Block(name, _child_descriptor(parent, name), path, token.line, token.col)
    stack.append(block)
    return block


def _skip_list(tokens: list, i: int, stop) -> tuple[int, bool]:
    """From the ``[`` at ``i``, the index after the matching ``]``; True if ``stop`` is inside."""
    while i < len(tokens) and tokens[i].text != "]":
        if stop is not None and tokens[i].pos >= stop:
            return i, True
        i += 1
    return i + 1, False


def _scan(text: str, root: _descriptor.Descriptor, stop: Optional[tuple] = None) -> _Context:
    """Follow the block structure of ``text`` up to position ``stop`` (or to the end)."""
    tokens = _tokenize(text)
    stack = [_Block("", root, "", 1, 1)]
    ctx = _Context(stack)
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        if stop is not None and tok.pos >= stop:
            break
        if tok.text in ("}", ">"):
            if len(stack) > 1:
                stack.pop()
            i += 1
            continue
        if tok.kind != "word" or not _IDENTIFIER_RE.match(tok.text):
            i += 1
            continue
        name, j = tok.text, i + 1
        if j < n and tokens[j].text == ":":
            j += 1
        if j < n and tokens[j].text in ("{", "<"):
            if stop is not None and tokens[j].pos >= stop:
                ctx.value_field = name
                break
            block = _open_block(stack, name, tok)
            ctx.opened[block.path] = block
            i = j + 1
            continue
        if stop is not None and (j >= n or tokens[j].pos >= stop):
            ctx.value_field = name
            break
        if tokens[j].text == "[":
            i, inside = _skip_list(tokens, j + 1, stop)
            if inside:
                ctx.value_field = name
                break
            continue
        if name == "name" and stack[-1].name is None:
            stack[-1].name = _unquote(tokens[j])
        elif name == "type" and stack[-1].type is None:
            stack[-1].type = _unquote(tokens[j])
        i = j + 1
    return ctx


def _innermost_layer(blocks: list) -> Optional[int]:
    """Index in ``blocks`` of the innermost layer block (``layer``/``layers``), if any."""
    for k in range(len(blocks) - 1, 0, -1):
        if blocks[k].field in _LAYER_FIELDS:
            return k
    return None


def _describe_place(blocks: list, value_field: Optional[str] = None) -> str:
    """``layer "conv1" (Convolution): convolution_param.kernel_size: `` for the given blocks."""
    k = _innermost_layer(blocks)
    parts = []
    if k is not None:
        layer = blocks[k]
        if layer.name is not None:
            label = (layer_label(layer.name, layer.type) if layer.type is not None
                     else f'layer "{layer.name}"')
        else:
            label = f"layer #{_layer_number(layer)}"
        parts.append(label)
        inner = [b.field for b in blocks[k + 1:]]
    else:
        inner = [b.field for b in blocks[1:]]
    if value_field is not None:
        inner.append(value_field)
    if inner:
        parts.append(".".join(inner))
    return "".join(p + ": " for p in parts)


def _layer_number(block: _Block) -> int:
    """1-based position of a layer block among its siblings, read from its path."""
    m = re.search(r"\[(\d+)\]\Z", block.path)
    return int(m.group(1)) + 1 if m else 1


# ---------------------------------------------------------------------------------------------
# Turning protobuf's error into ours
# ---------------------------------------------------------------------------------------------

_LOCATION_PREFIX_RE = re.compile(r"^\d+(?::\d+)? : ")
_UNKNOWN_FIELD_RE = re.compile(r'^Message type "([\w.]+)" has no field named "(\w+)"\.$')
_UNKNOWN_ENUM_RE = re.compile(r'^Enum type "([\w.]+)" has no value (named|with number) (\S+?)\.$')
_DUPLICATE_RE = re.compile(r'^Message type "([\w.]+)" should not have multiple "(\w+)" fields\.$')
_EXPECTED_CLOSE_RE = re.compile(r'^Expected "([}>])"\.$')
_STRAY_CLOSE_RE = re.compile(r"^Expected identifier or number, got ([}>])\.$")


def _short(full_name: str) -> str:
    """``caffe.PoolingParameter.PoolMethod`` -> ``PoolMethod``."""
    return full_name.rsplit(".", 1)[-1]


def _did_you_mean(word: str, choices) -> str:
    """A hint for an unknown name: the closest of ``choices``, if any is close.

    The schema holds the fields of the common Caffe forks too (docs/schema.md), so an unknown
    name is a misspelling or a field of a fork we do not cover.
    """
    choices = list(choices)
    by_case = [c for c in choices if c.lower() == word.lower()]
    close = by_case or difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f' — did you mean "{close[0]}"?' if close else ""


def _bare_problem(err: text_format.ParseError, lines: list) -> str:
    """protobuf's message without its ``line:col : `` prefix and quoted source line."""
    problem = _LOCATION_PREFIX_RE.sub("", str(err), count=1)
    line = err.GetLine()
    candidates = [""]
    if line is not None and 1 <= line <= len(lines):
        candidates.insert(0, lines[line - 1])
    for quoted in candidates:
        prefix = f"'{quoted}': "
        if problem.startswith(prefix):
            return problem[len(prefix):]
    return problem


def _explain_parse_error(err: text_format.ParseError, text: str,
                         root: _descriptor.Descriptor, source: str) -> ParseError:
    """One ParseError saying where (file:line:col, layer, field) and what went wrong."""
    line, col = err.GetLine() or 1, err.GetColumn() or 1
    problem = _bare_problem(err, text.split("\n"))
    tokens = _tokenize(text)
    ctx = _scan(text, root, stop=(line, col))
    place = _describe_place(ctx.blocks, ctx.value_field)
    braces = _explain_braces(problem, text, root, tokens, (line, col))
    if braces is not None:
        return ParseError(f"{source}:{line}:{col}: {braces}")
    duplicate = _explain_duplicate(problem)
    if duplicate is not None:
        return ParseError(f"{source}:{line}:{col}: {_describe_place(ctx.blocks)}{duplicate}")
    explained = (_explain_unknown_field(problem, ctx, root)
                 or _explain_unknown_enum(problem, root))
    if explained is None:
        if not any(t.pos >= (line, col) for t in tokens):
            explained = f"the file ends too early ({problem[0].lower()}{problem[1:]})"
        else:
            explained = _with_found_token(problem, tokens, (line, col))
    return ParseError(f"{source}:{line}:{col}: {place}{explained}")


def _with_found_token(problem: str, tokens: list, pos: tuple) -> str:
    """Add ``, found X`` when protobuf's message does not already show the offending token."""
    token = next((t for t in tokens if t.pos == pos), None)
    if token is None or token.text in problem:
        return problem
    return f'{problem.rstrip(".")}, found {token.text}'


def _explain_unknown_field(problem: str, ctx: _Context,
                           root: _descriptor.Descriptor) -> Optional[str]:
    m = _UNKNOWN_FIELD_RE.match(problem)
    if not m:
        return None
    full_name, name = m.groups()
    desc = root.file.pool.FindMessageTypeByName(full_name)
    message = f'{_short(full_name)} has no field named "{name}"'
    message += _did_you_mean(name, desc.fields_by_name)
    for block in reversed(ctx.blocks[:-1]):  # a field of an outer block: a "}" is missing
        if block.descriptor is not None and name in block.descriptor.fields_by_name:
            inner = ctx.blocks[-1]
            message += (f' (is a "}}" missing? "{inner.field}" opened at '
                        f"{inner.line}:{inner.col} is still open)")
            break
    return message


def _explain_unknown_enum(problem: str, root: _descriptor.Descriptor) -> Optional[str]:
    m = _UNKNOWN_ENUM_RE.match(problem)
    if not m:
        return None
    full_name, how, value = m.groups()
    enum = root.file.pool.FindEnumTypeByName(full_name)
    names = [v.name for v in enum.values]
    shown = value if how == "named" else f"number {value}"
    hint = _did_you_mean(value, names) if how == "named" else ""
    listed = f" (expected one of {', '.join(names)})" if len(names) <= 12 else ""
    return f"{_short(full_name)} has no value {shown}{hint}{listed}"


def _explain_duplicate(problem: str) -> Optional[str]:
    m = _DUPLICATE_RE.match(problem)
    if not m:
        return None
    full_name, name = m.groups()
    return (f'{_short(full_name)} field "{name}" is given more than once '
            f"(it is not repeated; Caffe's parser refuses this too)")


def _explain_braces(problem: str, text: str, root: _descriptor.Descriptor, tokens: list,
                    pos: tuple) -> Optional[str]:
    """Messages for a block left open at the end of the file and for a stray ``}``."""
    m = _EXPECTED_CLOSE_RE.match(problem)
    if m and not any(t.pos > pos for t in tokens):
        unclosed = _scan(text, root).blocks[1:]  # what is still open at the end of the file
        if not unclosed:
            return f'unbalanced braces: the file ends before a closing "{m.group(1)}"'
        outer = unclosed[0]
        where = (_describe_place([None, outer]).rstrip(": ") if outer.field in _LAYER_FIELDS
                 else f'"{outer.field}"')
        return (f"unbalanced braces: the file ends inside {where} opened at "
                f'{outer.line}:{outer.col} ({len(unclosed)} closing "{m.group(1)}" missing)')
    m = _STRAY_CLOSE_RE.match(problem)
    if m:
        return f'unbalanced braces: "{m.group(1)}" closes nothing (no block is open here)'
    return None


def _check_required_fields(message: _message.Message, text: str, source: str) -> None:
    """Raise ParseError for the first ``required`` field left unset, at its block's position."""
    if message.IsInitialized():
        return
    missing = message.FindInitializationErrors()[0]  # e.g. "layer[3].clip_param.max"
    parent_path, _, field_name = missing.rpartition(".")
    ctx = _scan(text, message.DESCRIPTOR)
    if not parent_path:
        ctx.opened[""] = ctx.blocks[0]
    block = ctx.opened.get(parent_path)
    if block is None:  # the block came from the caller's message, not from this text
        raise ParseError(f'{source}: required field "{missing}" is not set')
    chain = _blocks_on_path(ctx, parent_path)
    owner = _short(block.descriptor.full_name) if block.descriptor is not None else block.field
    raise ParseError(f"{source}:{block.line}:{block.col}: {_describe_place(chain)}"
                     f'{owner} is missing its required field "{field_name}"')


def _blocks_on_path(ctx: _Context, path: str) -> list:
    """The blocks from the root down to the block at ``path``."""
    chain = [_Block("", None, "", 1, 1)]
    prefix = ""
    for step in path.split("."):
        prefix = f"{prefix}.{step}" if prefix else step
        block = ctx.opened.get(prefix)
        if block is not None:
            chain.append(block)
    return chain


# ---------------------------------------------------------------------------------------------
# Reading nets and solvers
# ---------------------------------------------------------------------------------------------

def read_net(path_or_text: PathOrText) -> caffe_pb2.NetParameter:
    """Read a NetParameter and return it upgraded to the current format.

    ``path_or_text`` is a file path, prototxt text (a ``str`` holding a newline, ``{`` or
    ``: ``), the bytes of a file, or a NetParameter (only upgraded). Caffe has one reader for
    text (``.prototxt``) and one for binary (``.caffemodel``) and the caller picks; we look at
    the bytes: data with control bytes that text never has is read as binary first, anything
    else as text. Then the deprecated formats are upgraded as Caffe's ``UpgradeNetAsNeeded``
    does.
    """
    if isinstance(path_or_text, caffe_pb2.NetParameter):
        return upgrade_net(path_or_text, source="<NetParameter>")
    data, source = _load(path_or_text)
    if isinstance(data, str):
        net = parse_text(data, caffe_pb2.NetParameter(), source)
    else:
        net = _parse_text_or_binary_net(data, source)
    return upgrade_net(net, source=source)


def read_solver(path_or_text: PathOrText) -> caffe_pb2.SolverParameter:
    """Read a SolverParameter (text format) and upgrade it as Caffe does.

    ``upgrade_solver`` turns the deprecated ``solver_type`` enum into ``type`` (and upgrades
    inline nets). When reading from a file, ``snapshot_prefix`` is then completed as in Caffe's
    ``ReadSolverParamsFromTextFileOrDie`` (see ``upgrade_snapshot_prefix``).
    """
    data, source = _load(path_or_text)
    solver = parse_text(data, caffe_pb2.SolverParameter(), source)
    solver = upgrade_solver(solver, source=source)
    if _is_path(path_or_text):
        upgrade_snapshot_prefix(solver, os.fspath(path_or_text))
    return solver


def _is_path(path_or_text) -> bool:
    if isinstance(path_or_text, os.PathLike):
        return True
    return isinstance(path_or_text, str) and not _looks_like_text(path_or_text)


def _looks_like_text(value: str) -> bool:
    """True for a ``str`` that is prototxt rather than a file path."""
    return (not value.strip() or "\n" in value or "{" in value or "}" in value
            or re.search(r":\s", value) is not None)


def _load(path_or_text: PathOrText) -> tuple:
    """``(data, source)``: file bytes and the path, or the given text or bytes and a label."""
    if isinstance(path_or_text, (bytes, bytearray, memoryview)):
        return bytes(path_or_text), "<bytes>"
    if isinstance(path_or_text, str) and _looks_like_text(path_or_text):
        return path_or_text, "<string>"
    if not isinstance(path_or_text, (str, os.PathLike)):
        raise TypeError(f"expected a path, prototxt text or bytes, "
                        f"got {type(path_or_text).__name__}")
    path = os.fspath(path_or_text)
    with open_for_reading(path, ParseError, expected="a net or solver file") as f:
        return f.read(), path


_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1f]")


def _looks_binary(data: bytes) -> bool:
    """True if the first 64 KiB hold control bytes that text files do not contain."""
    if data.startswith(b"\xef\xbb\xbf"):
        return False
    return _BINARY_BYTES.search(data, 0, 1 << 16) is not None


def _parse_text_or_binary_net(data: bytes, source: str) -> caffe_pb2.NetParameter:
    """A NetParameter from file bytes: binary if they look binary, else text.

    Bytes that look binary but do not decode are still read as text when they are valid
    UTF-8 (a text file with a stray control byte, such as a DOS end-of-file mark).
    """
    if _looks_binary(data):
        net = caffe_pb2.NetParameter()
        try:
            net.ParseFromString(data)
            return net
        except _message.DecodeError as err:
            if not _is_utf8(data):
                raise ParseError(f"{source}: neither text format nor a valid binary "
                                 f"NetParameter ({err or 'damaged'})") from None
    return parse_text(data, caffe_pb2.NetParameter(), source)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Writing text
# ---------------------------------------------------------------------------------------------

def net_to_text(message: _message.Message) -> str:
    """``message`` in text format, laid out as Caffe writes it (``WriteProtoToTextFile``).

    Caffe prints with protobuf's C++ ``TextFormat::Print``: fields in field-number order, two
    spaces of indent per level, strings C-escaped (bytes above 127 as octal), and floats in
    the shortest of ``%.6g``/``%.9g`` that reads back exactly (``lr_mult: 1``, not ``1.0``;
    doubles use ``%.15g``/``%.17g``). Python's ``text_format`` differs on floats, so we print
    ourselves. Unknown fields (kept from binary files written by forks) are not printed.
    """
    out: list = []
    _print_message(message, 0, out)
    return "".join(out)


def _print_message(message: _message.Message, indent: int, out: list) -> None:
    pad = "  " * indent
    for fd, value in message.ListFields():
        values = value if fd.is_repeated else [value]
        for item in values:
            if fd.cpp_type == _descriptor.FieldDescriptor.CPPTYPE_MESSAGE:
                out.append(f"{pad}{fd.name} {{\n")
                _print_message(item, indent + 1, out)
                out.append(f"{pad}}}\n")
            else:
                out.append(f"{pad}{fd.name}: {_format_scalar(fd, item)}\n")


def _format_scalar(fd: _descriptor.FieldDescriptor, value) -> str:
    kind = fd.cpp_type
    if kind == _descriptor.FieldDescriptor.CPPTYPE_STRING:
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        return '"' + text_encoding.CEscape(raw, as_utf8=False) + '"'
    if kind == _descriptor.FieldDescriptor.CPPTYPE_BOOL:
        return "true" if value else "false"
    if kind == _descriptor.FieldDescriptor.CPPTYPE_ENUM:
        enum_value = fd.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else str(value)
    if kind == _descriptor.FieldDescriptor.CPPTYPE_FLOAT:
        return format_float(value)
    if kind == _descriptor.FieldDescriptor.CPPTYPE_DOUBLE:
        return format_double(value)
    return str(value)


def _format_special(value: float) -> Optional[str]:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def format_float(value: float) -> str:
    """A float32 as protobuf's C++ printer writes it: ``%.6g`` unless that does not read back."""
    special = _format_special(value)
    if special is not None:
        return special
    value = _to_float32(value)
    if math.isinf(value):
        return _format_special(value)
    short = "%.6g" % value
    return short if _to_float32(float(short)) == value else "%.9g" % value


def _to_float32(value: float) -> float:
    """``value`` rounded to float32 (beyond float32's range: infinity, as a float field holds)."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def format_double(value: float) -> str:
    """A double as protobuf's C++ printer writes it: ``%.15g`` unless that does not read back."""
    special = _format_special(value)
    if special is not None:
        return special
    short = "%.15g" % value
    return short if float(short) == value else "%.17g" % value
