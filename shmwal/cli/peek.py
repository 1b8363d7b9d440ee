"""Reading a topic at any offset without a consumer group (``shmwal tail`` without ``--group``).

A peek must not be a group: a group's cursor holds back the deletion of every
entry it has not read, so a tail that made one (and died before removing it)
would keep a topic's files for ever.  So the peeker reads the mapped files
directly, as ``shmwal verify`` does, and moves nothing.

Reading without a lock is safe because published entries never change while
their block is kept, and the peeker checks afterwards that it was kept:

* the writer publishes records and chain slots, then ``H_PUBLISHED_BLOCKS``,
  then ``H_NEXT_OFFSET`` (blocks/meta.py); the peeker loads ``H_NEXT_OFFSET``
  first and the chain after, so everything below that offset is there;
* the broker reclaims a block by storing ``H_FIRST_BLOCK`` past it before it
  hands the block to a writer again; the peeker copies a block's entries out,
  then loads ``H_FIRST_BLOCK``.  x86-64 keeps loads in order, so if that load
  still shows the block kept, every copy was made before any reuse could
  write into it.  Otherwise the copies are dropped and the peek goes on from
  the oldest kept entry, saying how many entries retention took meanwhile.

Checksums are verified as for any read; a damaged entry is reported, not returned.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ..blocks import layout as L
from ..blocks.chain import find_block, walk_to
from ..blocks.codec import BadRecord, entry_bytes, read_record
from ..blocks.files import BlockFiles
from ..blocks.meta import TopicMeta

_W_NEXT = L.H_NEXT_OFFSET // 8
_W_PUBLISHED = L.H_PUBLISHED_BLOCKS // 8
_W_FIRST_BLOCK = L.H_FIRST_BLOCK // 8
_W_FIRST_OFFSET = L.H_FIRST_OFFSET // 8


class Peeked(NamedTuple):
    entries: list          # (offset, data) in offset order, no gaps
    damaged: list          # (offset, what is wrong) for entries that could not be returned
    skipped: int           # entries below the asked offset that retention deleted first
    next: int              # the offset to ask for next


class Peeker:
    """Reads one topic's kept entries from its files, at any offset, for this process."""

    def __init__(self, root: str, topic: str):
        self.meta = TopicMeta(os.path.join(root, "topics", topic, "meta"), topic)
        self.words = self.meta.words
        self.files = BlockFiles(os.path.join(root, "blocks"))

    def first_offset(self) -> int:
        return self.words[_W_FIRST_OFFSET]

    def next_offset(self) -> int:
        return self.words[_W_NEXT]

    def read(self, offset: int, max_entries: int, max_bytes: int = 1 << 20) -> Peeked:
        """Entries from ``offset`` on, at most ``max_entries`` and (but for the first) ``max_bytes``."""
        words = self.words
        skipped = 0
        while True:
            next_offset = words[_W_NEXT]         # before the chain: see the module's docstring
            first_offset = words[_W_FIRST_OFFSET]
            if offset < first_offset:
                skipped += first_offset - offset
                offset = first_offset
            if offset >= next_offset or max_entries <= 0:
                return Peeked([], [], skipped, offset)
            published = words[_W_PUBLISHED]
            block = find_block(self.meta, offset, words[_W_FIRST_BLOCK], published)
            file_id, file_offset, capacity, block_first = self.meta.chain(block)
            block_end = self.meta.chain(block + 1)[3] if block + 1 < published else next_offset
            block_end = min(block_end, next_offset)
            try:
                found = self._copy(file_id, file_offset, capacity, block_first, offset,
                                   min(block_end, offset + max_entries), max_bytes)
            except OSError:
                found = None   # its file was deleted: the block was reclaimed (checked below)
            if words[_W_FIRST_BLOCK] > block:
                continue       # reclaimed under us: what was copied may be a newer writer's bytes
            if found is None:
                raise OSError(f"block file {L.block_file_name(file_id)} of topic {self.meta.name} is unreadable")
            entries, damaged, end = found
            return Peeked(entries, damaged, skipped, end)

    def _copy(self, file_id, file_offset, capacity, block_first, offset, end, max_bytes):
        buf = self.files.map(file_id)
        limit = file_offset + capacity
        entries: list = []
        damaged: list = []
        total = 0
        off = offset
        try:
            pos, record = walk_to(buf, file_offset, capacity, block_first, off)
        except BadRecord as exc:
            return entries, [(off, str(exc))], off + 1
        while off < end:
            for index in range(off - record.first_offset, record.count):
                if off >= end or (entries and total + record.lengths[index] > max_bytes):
                    return entries, damaged, off
                data = entry_bytes(buf, record, index)
                if data is None:
                    damaged.append((off, "checksum mismatch"))
                else:
                    entries.append((off, data))
                    total += len(data)
                off += 1
            if off >= end:
                break
            try:
                pos += record.size
                record = read_record(buf, pos, limit)
                if record.first_offset != off:
                    raise BadRecord(f"record at {pos} holds offset {record.first_offset}, expected {off}")
            except BadRecord:
                try:   # walk_to finds the records after a damaged one
                    pos, record = walk_to(buf, file_offset, capacity, block_first, off)
                except BadRecord as exc:
                    damaged.append((off, str(exc)))
                    return entries, damaged, off + 1
        return entries, damaged, off

    def close(self) -> None:
        self.files.close()
        self.meta.close()
