"""Records to bytes and back: pure functions over any buffer.

No files, no locks, no processes: the writer, the mmap reader, the io_uring
reader, recovery and ``shmwal verify`` all go through these functions, so
"both return the same entries" holds by construction.

Invariant (fuzzed in tests): any bytes either decode to records whose every
entry matches its checksum, or raise ``BadRecord`` (a bad header or table:
nothing in the record can be trusted) or yield a per-entry ``bad`` mark
(that entry's payload does not match).  Never any other exception.
"""

from __future__ import annotations

import sys
from array import array
from itertools import accumulate
from typing import NamedTuple, Sequence

import xxhash

from . import layout as L

xxh = xxhash.xxh3_64_intdigest
_header_unpack = L.RECORD_HEADER.unpack_from
_single_pack = L.SINGLE_RECORD.pack_into
_table_pack = L.TABLE_ENTRY.pack
# Tables are (length, digest) pairs of little-endian u64: an array("Q") on this
# (little-endian, x86-64) machine, so no numpy on the data path: importing it
# starts an OpenBLAS thread that spins on a CPU for ~50 ms in every process.
assert sys.byteorder == "little" and array("Q").itemsize == 8


class BadRecord(Exception):
    """The record header or table is damaged: the record cannot be located or trusted."""


class Record(NamedTuple):
    pos: int            # where the record starts in its buffer
    count: int
    batch_left: int
    first_offset: int
    size: int           # bytes from pos to the next record (aligned)
    data_at: int        # where the first payload starts
    lengths: list       # payload length of each entry
    sums: list          # xxh3_64 of each payload
    starts: list        # absolute position of each payload

    @property
    def end_offset(self) -> int:
        return self.first_offset + self.count


# ---------------------------------------------------------------- encoding

def encode_single(buf, pos: int, offset: int, payload, length: int, batch_left: int = 0) -> int:
    """Write a one-entry record at ``pos``; return the position after it.

    The reference for the inlined copy in writer.Appender.append.
    """
    digest = xxh(payload, L.entry_seed(offset))
    check = digest ^ L.record_seed(1, batch_left, offset, length)
    _single_pack(buf, pos, 1, batch_left, offset, length, check, length, digest)
    start = pos + L.SINGLE_RECORD_SIZE
    buf[start:start + length] = payload
    return pos + L.align(L.SINGLE_RECORD_SIZE + length)


def encode_record(buf, pos: int, first_offset: int, batch_left: int,
                  payloads: Sequence, lengths: Sequence[int]) -> int:
    """Write several entries as one record at ``pos``; return the position after it."""
    count = len(payloads)
    if count == 1:
        return encode_single(buf, pos, first_offset, payloads[0], lengths[0], batch_left)
    data_bytes = sum(lengths)
    seed = L.entry_seed
    table = array("Q", bytes(16 * count))
    table[0::2] = array("Q", lengths)
    table[1::2] = array("Q", [xxh(p, seed(first_offset + i)) for i, p in enumerate(payloads)])
    table_bytes = table.tobytes()
    check = xxh(table_bytes, L.record_seed(count, batch_left, first_offset, data_bytes))
    L.RECORD_HEADER.pack_into(buf, pos, count, batch_left, first_offset, data_bytes, check)
    at = pos + L.RECORD_HEADER_SIZE
    buf[at:at + len(table_bytes)] = table_bytes
    at += len(table_bytes)
    for payload, length in zip(payloads, lengths):
        buf[at:at + length] = payload
        at += length
    return pos + L.record_size(count, data_bytes)


# ---------------------------------------------------------------- decoding

def read_record(buf, pos: int, limit: int) -> Record:
    """Parse and check the record header and table at ``pos`` (payloads unchecked).

    ``limit`` is where the block (or the valid part of the buffer) ends.
    Raises BadRecord if anything about the header or table is off.
    """
    limit = min(limit, len(buf))   # a truncated file maps shorter than its block says
    if pos < 0 or pos + L.RECORD_HEADER_SIZE > limit:
        raise BadRecord(f"record header at {pos} runs past {limit}")
    try:
        count, batch_left, first_offset, data_bytes, check = _header_unpack(buf, pos)
    except Exception as exc:  # a buffer shorter than it claims
        raise BadRecord(str(exc)) from None
    if not 0 < count <= L.MAX_BATCH_ENTRIES or batch_left >= L.MAX_BATCH_ENTRIES:
        raise BadRecord(f"record at {pos}: implausible count {count}/{batch_left}")
    table_at = pos + L.RECORD_HEADER_SIZE
    data_at = table_at + count * L.TABLE_ENTRY_SIZE
    size = L.record_size(count, data_bytes)
    if data_bytes > L.MAX_BATCH_BYTES or pos + size > limit:
        raise BadRecord(f"record at {pos}: {data_bytes} data bytes run past {limit}")
    table = bytes(buf[table_at:data_at])
    seed = L.record_seed(count, batch_left, first_offset, data_bytes)
    if count == 1:
        length, digest = L.TABLE_ENTRY.unpack(table)
        if length != data_bytes or digest ^ seed != check:
            raise BadRecord(f"record at {pos}: header check mismatch")
        return Record(pos, 1, batch_left, first_offset, size, data_at, [length], [digest], [data_at])
    if xxh(table, seed) != check:
        raise BadRecord(f"record at {pos}: header check mismatch")
    parsed = array("Q")
    parsed.frombytes(table)
    lengths = parsed[0::2].tolist()
    if sum(lengths) != data_bytes:
        raise BadRecord(f"record at {pos}: lengths do not add up to {data_bytes}")
    starts = list(accumulate(lengths[:-1], initial=data_at))
    return Record(pos, count, batch_left, first_offset, size, data_at,
                  lengths, parsed[1::2].tolist(), starts)


def entry_bytes(buf, record: Record, index: int, copy: bool = True):
    """The payload of entry ``index`` of ``record``, or None if its checksum fails.

    ``copy=False`` returns a slice of ``buf`` itself (zero-copy: a memoryview
    when ``buf`` is one), checked all the same.
    """
    start = record.starts[index]
    data = buf[start:start + record.lengths[index]]
    if copy and type(data) is not bytes:
        data = bytes(data)
    if xxh(data, L.entry_seed(record.first_offset + index)) != record.sums[index]:
        return None
    return data


def find_next_record(buf, start: int, limit: int, after_offset: int, max_offset: int) -> Record | None:
    """The first valid record at or after ``start`` whose first offset lies in (after_offset, max_offset).

    Used past a damaged record: its length cannot be trusted, so the next
    record is found by looking at every 8-byte boundary.  numpy picks the
    candidates (a plausible count and first offset) and ``read_record``
    confirms them, so damage costs a vector scan, not a Python loop.
    """
    import numpy as np   # here only: damage is rare, and numpy costs every process a spinning thread
    start = L.align(start)
    end = limit - L.RECORD_HEADER_SIZE
    if end < start:
        return None
    try:
        words = np.frombuffer(buf, dtype="<u8", count=(end - start) // 8 + 2, offset=start)
    except (ValueError, TypeError):
        return None
    low = words[:-1] & 0xFFFFFFFF                  # count (u32) | batch_left (u32) at +0
    firsts = words[1:]                             # first_offset at +8
    candidates = np.nonzero((low >= 1) & (low <= L.MAX_BATCH_ENTRIES)
                            & (firsts > after_offset) & (firsts < max_offset))[0]
    for index in candidates.tolist():
        try:
            return read_record(buf, start + index * 8, limit)
        except BadRecord:
            continue
    return None


def iter_records(buf, pos: int, limit: int, first: int | None, end: int, on_damage=None):
    """Yield, in order, the records of a block that hold offsets ``first`` up to ``end``.

    THE record walker: the reader's and appender's ``chain.walk_to``, recovery,
    ``shmwal verify``, the rebuild of a lost meta file and the broker's count of
    reclaimed bytes all walk through here (``hot.c``'s ``payload_bytes`` is its
    compiled twin, with ``on_damage`` None).  The walk starts at ``pos``, where
    the record holding ``first`` starts (``first`` None: whatever that record
    holds), and ends once a record reaches ``end``; the last record yielded may
    hold offsets past ``end`` (the caller decides what they mean).

    A record that does not check out, or holds other offsets than the next ones,
    is damage.  With ``on_damage`` None the walk stops there.  Otherwise the next
    intact record whose first offset lies in (offset, end) is looked for (a
    damaged header's length cannot be trusted, so ``find_next_record`` scans),
    ``on_damage(offset, found, exc)`` is told (``found``: that record, or None),
    and the walk goes on from ``found`` (ends when None).  ``on_damage`` may
    raise to end the walk with an error.
    """
    off = first
    while off is None or off < end:
        try:
            record = read_record(buf, pos, limit)
            if off is not None and record.first_offset != off:
                raise BadRecord(f"record at {pos} holds offset {record.first_offset}, expected {off}")
        except BadRecord as exc:
            if on_damage is None or off is None:
                return
            record = find_next_record(buf, pos + L.ALIGN, limit, off, end)
            on_damage(off, record, exc)
            if record is None:
                return
        yield record
        off, pos = record.end_offset, record.pos + record.size
