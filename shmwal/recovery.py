"""Bringing a topic back to a consistent, published state at broker start.

Runs under the topic's writer mutex, so appenders of a previous broker's
clients (which outlive it) are simply held back while it looks.  What it
trusts: ``H_NEXT_OFFSET`` from the meta file, confirmed by walking the tail
block.  Records past a broken header (a torn tail after a power cut) are cut
off, back to the start of their batch; a payload that fails its checksum is
kept, reported, and raises CorruptEntry when read.
"""

from __future__ import annotations

import logging

from . import sync
from .blocks import layout as L
from .blocks.chain import find_block
from .blocks.codec import BadRecord, entry_bytes, read_record

log = logging.getLogger("shmwal.broker")
NO_BLOCK = 2**64 - 1


def recover_topic(meta, files) -> dict:
    """Verify and repair one topic's tail; return what was found (for the log and stats)."""
    report = {"topic": meta.name, "truncated_from": None, "damaged": 0}
    sync.lock(meta.base + L.H_WRITER_MUTEX)
    try:
        _recover_locked(meta, files, report)
    finally:
        sync.unlock(meta.base + L.H_WRITER_MUTEX)
    return report


def _recover_locked(meta, files, report) -> None:
    next_offset = meta.get(L.H_NEXT_OFFSET)
    published = meta.get(L.H_PUBLISHED_BLOCKS)
    first_block = meta.get(L.H_FIRST_BLOCK)
    if published == 0 or published <= first_block:
        meta.set(L.H_TAIL_CHAIN, NO_BLOCK)
        meta.set(L.H_TAIL_OFFSET, next_offset)
        return
    k = find_block(meta, next_offset, first_block, published)
    file_id, file_offset, capacity, block_first = meta.chain(k)
    try:
        buf = files.map(file_id)
    except OSError as exc:
        log.error("topic %s: tail block file %s unreadable (%s)", meta.name, file_id, exc)
        report["damaged"] += 1
        meta.set(L.H_DAMAGE, meta.get(L.H_DAMAGE) + 1)
        return
    limit = file_offset + capacity
    pos = file_offset + L.BLOCK_HEADER_SIZE
    off = block_first
    # The tail ends after the last record whose header checks out and that closes
    # its batch: past a broken header nothing can be located (a torn tail: cut).
    # A payload that fails its checksum is kept and reported: cutting it would
    # also cut every good entry after it.
    tail_off, tail_pos = off, pos
    damaged = 0
    while off < next_offset:
        try:
            record = read_record(buf, pos, limit)
        except BadRecord:
            damaged += 1
            break
        if record.first_offset != off or record.end_offset > next_offset:
            damaged += 1
            break
        payload_ok = all(entry_bytes(buf, record, i) is not None for i in range(record.count))
        off = record.end_offset
        pos += record.size
        if not payload_ok:
            damaged += 1  # kept: reads raise CorruptEntry for it, and seek steps over it
        if record.batch_left == 0:
            tail_off, tail_pos = off, pos
    if tail_off < next_offset:
        log.warning("topic %s: cutting torn tail %d..%d", meta.name, tail_off, next_offset - 1)
        report["truncated_from"] = next_offset
        meta.set(L.H_NEXT_OFFSET, tail_off)
        _clamp_cursors(meta, tail_off)
    if damaged:
        report["damaged"] = damaged
        meta.set(L.H_DAMAGE, meta.get(L.H_DAMAGE) + damaged)
    meta.set(L.H_TAIL_POS, tail_pos)
    meta.set(L.H_TAIL_CHAIN, k)
    meta.set(L.H_PUBLISHED_BLOCKS, k + 1)
    meta.set(L.H_TAIL_OFFSET, meta.get(L.H_NEXT_OFFSET))


def _clamp_cursors(meta, end: int) -> None:
    for slot in meta.group_names().values():
        at = L.group_slot_at(slot) + L.G_CURSOR
        if meta.get(at) > end:
            meta.set(at, end)
