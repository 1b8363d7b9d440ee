"""Finding entries in a topic's chain of blocks (shared by writer, reader and recovery).

A topic's blocks form a chain (slots in its meta file).  Within a block,
records lie back to back from BLOCK_HEADER_SIZE on, each holding entries
``first_offset .. first_offset + count - 1``; the next block's slot says at
which offset it takes over.  Positions here are absolute positions in the
block file (``file_offset`` + position in the block).
"""

from __future__ import annotations

import zlib

from . import layout as L
from .codec import BadRecord, Record, iter_records


def find_block(meta, offset: int, lo: int, hi: int) -> int:
    """The last chain slot in [lo, hi) whose first offset is <= ``offset`` (lo if none)."""
    words = meta.words
    base = L.CHAIN_AT // 8 + 3  # C_FIRST_OFFSET word of slot 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if words[base + mid * 4] <= offset:
            lo = mid
        else:
            hi = mid
    return lo


def walk_to(buf, block_start: int, capacity: int, block_first: int, target: int,
            append_position: bool = False) -> tuple[int, Record | None]:
    """Walk a block's records to ``target`` (codec.iter_records).

    Returns (position of the record holding ``target``, that record); with
    ``append_position``, ``target`` is the offset right after the block's
    last published record and the result is (where its record goes, None).
    A damaged record on the way is stepped over (the records after it are
    intact and findable); ``target`` inside the damage raises BadRecord, as
    does a walk whose records do not lead to ``target``.
    """
    def lost(off, found, exc):
        if found is None:
            raise BadRecord(f"offset {target}: {exc}") from None

    pos = block_start + L.BLOCK_HEADER_SIZE
    off = block_first
    end = target if append_position else target + 1
    for record in iter_records(buf, pos, block_start + capacity, block_first, end, lost):
        if not append_position and target < record.end_offset:
            return record.pos, record
        off, pos = record.end_offset, record.pos + record.size
    if append_position and off == target:
        return pos, None
    raise BadRecord(f"offset {target} is not in the block starting at {block_first}")


def topic_hash(topic: str) -> int:
    return zlib.crc32(topic.encode())


def write_block_header(buf, block_start: int, chain_index: int, first_offset: int,
                       capacity: int, topic: str) -> None:
    raw = topic.encode()
    L.BLOCK_HEADER.pack_into(buf, block_start, L.BLOCK_MAGIC, chain_index, first_offset,
                             capacity, topic_hash(topic), len(raw))
    buf[block_start + L.BLOCK_NAME_AT:block_start + L.BLOCK_NAME_AT + len(raw)] = raw


def read_block_header(buf, block_start: int):
    """(chain_index, first_offset, capacity, topic) of a block, or None if it has no valid header."""
    try:
        magic, chain_index, first_offset, capacity, thash, n = L.BLOCK_HEADER.unpack_from(buf, block_start)
    except Exception:
        return None
    if magic != L.BLOCK_MAGIC or not 0 < n <= 255:
        return None
    raw = bytes(buf[block_start + L.BLOCK_NAME_AT:block_start + L.BLOCK_NAME_AT + n])
    if zlib.crc32(raw) != thash:
        return None
    return chain_index, first_offset, capacity, raw.decode("ascii", "replace")
