"""Python objects as entries: pickle protocol 5, large buffers out of band.

Pure functions over buffers (no topics, no files), used by ``shmwal.Queue``.

An entry is one of three shapes, told apart by its first byte:

``0x80`` (pickle's PROTO opcode)
    a plain protocol-5 pickle: the object had no out-of-band buffer. Small
    objects take this path and pay nothing for the others.
``b"A"``
    ``HEAD`` (tag, buffer count, pickle length) | buffer lengths (u64 each) |
    pickle stream | zeros to a multiple of ``ALIGN`` | buffer 0 | zeros to a
    multiple of ``ALIGN`` | buffer 1 | ...  The buffers are what pickle handed
    to ``buffer_callback`` (numpy arrays, bytearrays, PickleBuffers), so they
    are never copied into the pickle stream: the writer copies each once,
    straight from the object into the entry.  Each buffer starts ``ALIGN``-
    aligned within the entry, so that a reader holding the entry in memory of
    its own (malloc's, 16-aligned) can hand out slices of it as the buffers:
    arrays over them are as aligned as numpy's own.
``b"B"``
    the same without the zeros, as shmwal 0.x wrote it before ``b"A"``: still read.
``b"R"``
    a top-level ``bytes`` object of at least ``RAW_MIN`` bytes, as is after
    the tag. Pickle always copies ``bytes`` into its stream (the C pickler
    never offers them to ``reducer_override``), so without this a large
    ``bytes`` item would be copied twice on the way in. ``bytes`` nested
    inside other objects still travel in the stream.

On the way out every out-of-band buffer comes back writable and in memory of its
own (as ``multiprocessing.Queue``'s arrays do), never the mapped block: from an
entry read into a ``bytearray`` (the compiled get, hot.c next_writable, copying
once), slices of it; from any other (bytes, or a zero-copy view of the block),
each buffer copied once into a ``bytearray`` of its own.
"""

from __future__ import annotations

import pickle
import struct

PROTOCOL = 5
TAG_PICKLE = 0x80
TAG_ALIGNED = ord("A")
TAG_BUFFERS = ord("B")
ALIGN = 64
TAG_RAW = ord("R")
HEAD = struct.Struct("<BxxxIQ")   # tag, buffer count, pickle stream length
RAW_MIN = 64 * 1024               # smaller bytes: a pickle costs less than a second shape
_RAW_TAG = bytes([TAG_RAW])
_ZEROS = bytes(ALIGN)

_dumps = pickle.dumps
_loads = pickle.loads


class NotAnItem(pickle.UnpicklingError):
    """An entry that no shmwal.Queue wrote (another writer used the topic)."""


def encode(obj) -> tuple[list, int]:
    """``(parts, total)``: the entry is the concatenation of ``parts`` (flat byte views)."""
    if type(obj) is bytes and len(obj) >= RAW_MIN:
        return [_RAW_TAG, obj], 1 + len(obj)
    buffers = []
    stream = _dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
    if not buffers:
        return [stream], len(stream)
    return with_buffers(stream, buffers)


def with_buffers(stream: bytes, buffers: list) -> tuple[list, int]:
    """``encode``'s parts for a pickle ``stream`` and the out-of-band ``buffers`` it named."""
    raws = [buffer.raw() for buffer in buffers]   # flat "B" views of the objects' own memory
    lengths = [raw.nbytes for raw in raws]
    head = HEAD.pack(TAG_ALIGNED, len(raws), len(stream)) + struct.pack(f"<{len(raws)}Q", *lengths)
    parts = [head, stream]
    at = len(head) + len(stream)
    for raw, n in zip(raws, lengths):
        pad = -at % ALIGN
        if pad:
            parts.append(_ZEROS[:pad])
        parts.append(raw)
        at += pad + n
    return parts, at


def write_parts(target, parts) -> None:
    """Copy ``parts`` back to back into the writable buffer ``target``."""
    view = memoryview(target)
    at = 0
    for part in parts:
        n = len(part) if type(part) is bytes else part.nbytes
        view[at:at + n] = part
        at += n


def gather(parts, total: int):
    """The entry as one object (when it cannot be written in place)."""
    if len(parts) == 1:
        return parts[0]
    out = bytearray(total)
    write_parts(out, parts)
    return out


def decode(data):
    """The object an entry holds; ``data`` is bytes or a (read-only) memoryview."""
    tag = data[0]
    if tag == TAG_PICKLE:
        return _loads(data)
    if tag == TAG_RAW:
        return bytes(memoryview(data)[1:])
    if (tag != TAG_ALIGNED and tag != TAG_BUFFERS) or len(data) < HEAD.size:
        raise NotAnItem(f"not a shmwal.Queue item (first byte {tag:#04x})")
    _tag, count, stream_length = HEAD.unpack_from(data)
    at = HEAD.size + 8 * count
    if at > len(data):
        raise NotAnItem("a shmwal.Queue item whose lengths do not add up")
    lengths = struct.unpack_from(f"<{count}Q", data, HEAD.size)
    align = ALIGN if tag == TAG_ALIGNED else 1
    stream_at = at
    at += stream_length
    starts = []
    for n in lengths:
        at += -at % align
        starts.append(at)
        at += n
    if at != len(data):
        raise NotAnItem("a shmwal.Queue item whose lengths do not add up")
    view = memoryview(data)
    own = type(data) is bytearray   # memory of its own: its slices are the buffers
    buffers = [view[start:start + n] if own else bytearray(view[start:start + n])
               for start, n in zip(starts, lengths)]
    return _loads(view[stream_at:stream_at + stream_length], buffers=buffers)
