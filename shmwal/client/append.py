"""Appending: reserve, copy into the mapped block, publish — no broker on the way.

An append holds the topic's writer mutex (robust, in the meta file) while it
copies its records behind the published end and then publishes them with one
store of ``H_NEXT_OFFSET``.  So:

* offsets are dense and ordered: only the mutex holder assigns them;
* a batch is atomic: its records are all published by the same store;
* a writer killed anywhere leaves nothing visible: its records lie beyond
  ``H_NEXT_OFFSET``, and the next locker (told by EOWNERDEAD) recomputes the
  tail from published state and overwrites them;
* the broker is asked at most for a new block (it keeps spare blocks ready, so rarely).

Readers are woken after the mutex is released: the release is a locked
instruction, a full barrier, so the load of ``H_WAITERS`` after it cannot be
satisfied before the publishing store is visible (the one reordering x86-64
allows).  A reader increments ``H_WAITERS`` (also a locked instruction) before
its last look at ``H_NEXT_OFFSET``; between them no wake-up is lost.
"""

from __future__ import annotations

import os
import struct

from . import populate
from ..ipc import sync
from ..blocks import layout as L
from ..blocks.chain import find_block, walk_to, write_block_header
from ..blocks.codec import encode_record, xxh
from ..errors import BatchTooLarge, EntryTooLarge, ShmwalError
from .hot import native

NO_BLOCK = L.NO_BLOCK
_W_NEXT = L.H_NEXT_OFFSET // 8
_W_PUBLISHED = L.H_PUBLISHED_BLOCKS // 8
_W_TAIL_POS = L.H_TAIL_POS // 8
_W_TAIL_CHAIN = L.H_TAIL_CHAIN // 8
_W_TAIL_OFFSET = L.H_TAIL_OFFSET // 8
_W_WAITERS = L.H_WAITERS // 8
_W_SYNCED_NEXT = L.H_SYNCED_NEXT // 8
_W_BYTES = L.H_BYTES // 8
_W_VISIBLE = L.H_VISIBLE // 8
_SINGLE = L.SINGLE_RECORD_SIZE  # record header + one table entry
_ALIGN_MASK = L.ALIGN - 1
_SINGLE_SALT = (1 << L.SEED_COUNT_SHIFT) ^ L.SEED_SALT   # what L.record_seed mixes in for count == 1
_GOLDEN = L.SEED_GOLDEN
_U64 = L.U64_MASK
assert L.record_seed(1, 0, 5, 7) == L.entry_seed(5) ^ _SINGLE_SALT ^ 7
# Shared words are stored one by one through the memoryview (one aligned
# 8-byte move each), never with struct.pack_into: it zeroes the field before
# writing it, and the broker reads H_TAIL_CHAIN without the writer mutex.
# unpack_from does no such thing, so loads may be grouped.
_tail_unpack = struct.Struct("<QQQ").unpack_from   # H_TAIL_POS, H_TAIL_CHAIN, H_TAIL_OFFSET
_trylock = sync.trylock
_unlock = sync.unlock_raw
_xxh = xxh
_single_pack = L.SINGLE_RECORD.pack_into
# Long payloads hash fastest through hot.c's cpuid-dispatched xxh3 (same digest).
_hash = native.xxh3_64 if native is not None else xxh
assert L.H_TAIL_CHAIN == L.H_TAIL_POS + 8 and L.H_TAIL_OFFSET == L.H_TAIL_POS + 16


def as_payload(data) -> memoryview:
    """A flat byte view of ``data``, or TypeError (API.md: any C-contiguous bytes-like object)."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
    except ValueError as exc:   # a released memoryview: no bytes to take (batches say TypeError too)
        raise TypeError(f"data is not a usable bytes-like object: {exc}") from None
    if not view.c_contiguous:
        raise TypeError("data must be C-contiguous")
    if view.ndim != 1 or view.itemsize != 1:
        if view.nbytes == 0:
            return memoryview(b"")   # cast() refuses shapes with a zero in them
        view = view.cast("B")
    return view


def batch_list(items) -> list:
    """``items`` of a batch_append as a list, or TypeError / BatchTooLarge (API.md): the checks
    every backend makes before it looks at one item."""
    if isinstance(items, (bytes, bytearray, memoryview, str)):
        raise TypeError("items must be a sequence of bytes-like objects, not one bytes-like object")
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"items must be an iterable of bytes-like objects, not {type(items).__name__}") from None
    if len(items) > L.MAX_BATCH_ENTRIES:
        raise BatchTooLarge(f"a batch holds at most {L.MAX_BATCH_ENTRIES} entries, got {len(items)}")
    return items


class _Lengths:
    """``lengths[i]`` of a batch checked by hot.c's measure, computed only where asked."""

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = items

    def __getitem__(self, i: int) -> int:
        return memoryview(self.items[i]).nbytes


class Appender:
    """Appends to one topic from this process (built by Client). Its caches change only under the writer mutex."""

    def __init__(self, link, topic: str, meta, files, sem):
        self.link = link
        self.topic = topic
        self.meta = meta
        self.files = files
        self.sem = sem
        self.words = meta.words
        self.mutex = meta.base + L.H_WRITER_MUTEX
        self._block = NO_BLOCK      # chain slot the cached buffer/limit belong to
        self._first_append = not meta.get(L.H_VISIBLE)
        self._sync_each = link.sync_each     # handles are rebuilt when the broker (and so this) changes
        self._meta_mm = meta.mm
        self._buf = None
        self._limit = 0
        self.stale = False          # set by the client when it drops its handles (a new broker)
        # The compiled single-entry paths (hot.c), unless every append must
        # also fsync (SyncEach: the general path does that).  ``hot_append``
        # returns the offset, or -1 to say "take append()"; ``hot_reserve(n)``
        # makes a compiled reserve slot (None: client/reserve.py's Slot), which
        # hands what it cannot do to reserve_begin/commit/abort below (so it
        # holds this Appender; hot.c's only weakly, being held by it).
        self._hot = None
        self.hot_append = self._no_hot
        self.hot_reserve = None
        self.served = None          # the hot.c Appender when it serves appends (Client's Dispatch takes it)
        if native is not None:
            self._hot = native.Appender(meta.mm, sem.name, self)
            if not self._sync_each:
                self.hot_append = self._hot.append
                self.hot_reserve = self._hot.slot
                self.served = self._hot

    @staticmethod
    def _no_hot(data) -> int:
        return -1

    # ------------------------------------------------------------------ public paths
    def append(self, data) -> int:
        # The per-entry path: every call and attribute lookup here costs about
        # as much as the copy, so encode_single is inlined (codec.py is the
        # reference; tests check both produce the same bytes).
        if type(data) is bytes:
            length = len(data)
        else:
            data = as_payload(data)
            length = data.nbytes
        if length > L.MAX_ENTRY:
            raise EntryTooLarge(f"an entry holds at most {L.MAX_ENTRY} bytes, got {length}")
        words = self.words
        mutex = self.mutex
        rc = _trylock(mutex)
        died = rc and sync.lock_contended(mutex, rc)
        try:
            offset = words[_W_NEXT]
            pos, block, tail_offset = _tail_unpack(self._meta_mm, L.H_TAIL_POS)
            if died or tail_offset != offset:
                self._recompute_tail()
                pos, block, tail_offset = _tail_unpack(self._meta_mm, L.H_TAIL_POS)
            if block != self._block:
                self._load_block(block)
            size = (_SINGLE + _ALIGN_MASK + length) & ~_ALIGN_MASK   # L.record_size(1, length)
            end = pos + size
            if end > self._limit:
                block, pos = self._next_block(offset, size)
                end = pos + size
            seed = (offset * _GOLDEN) & _U64   # L.entry_seed
            digest = _xxh(data, seed)
            buf = self._buf
            # check = digest ^ L.record_seed(1, 0, offset, length)
            _single_pack(buf, pos, 1, 0, offset, length, digest ^ seed ^ _SINGLE_SALT ^ length,
                         length, digest)
            buf[pos + _SINGLE:pos + _SINGLE + length] = data
            self._publish(block, end, offset + 1, length)
        finally:
            _unlock(mutex)
        self._after_publish()
        return offset

    def batch_append(self, items) -> range:
        views, lengths, total = self._check_batch(items)
        if not views:
            n = self.words[_W_NEXT]
            return range(n, n)
        words = self.words
        died = sync.lock(self.mutex)
        try:
            if died or words[_W_TAIL_OFFSET] != words[_W_NEXT]:
                self._recompute_tail()
            first = offset = words[_W_NEXT]
            block = words[_W_TAIL_CHAIN]
            pos = words[_W_TAIL_POS]
            if block != self._block:
                self._load_block(block)
            first_block = block
            count = len(views)
            hot = self._hot
            i = 0
            while i < count:
                if hot is not None and self._buf is not None:
                    pos, j = hot.encode_run(pos, offset, views, i)
                else:
                    j = self._fitting(pos, lengths, i, count)
                    if j > i:
                        pos = encode_record(self._buf, pos, offset, count - j, views[i:j], lengths[i:j])
                if j == i:
                    # Not even one more entry fits here: the rest of the batch goes on in a new block.
                    block, pos = self._next_block(offset, L.record_size(1, lengths[i]))
                    continue
                offset += j - i
                i = j
            self._publish(block, pos, offset, total, first_block)
        finally:
            sync.unlock(self.mutex)
        self._after_publish()
        return range(first, offset)

    # ------------------------------------------------------------------ reserve (zero-copy writes)
    def reserve_begin(self, length: int):
        """Take the writer mutex and make room for one entry of ``length`` bytes.

        Returns ``(place, view)``: ``view`` is the writable payload area in the
        mapped block, ``place`` what ``reserve_commit``/``reserve_abort`` need.
        The mutex stays held until one of them runs (other writers wait): the
        entry's offset is the next one, and nothing may land before it.  A
        process killed meanwhile leaves the mutex to the kernel's robust list:
        the next locker gets EOWNERDEAD and rebuilds the tail from published
        state, so the unpublished record is overwritten (as for a killed append).
        """
        words = self.words
        died = sync.lock(self.mutex)
        moved = False
        try:
            if died or words[_W_TAIL_OFFSET] != words[_W_NEXT]:
                self._recompute_tail()
            offset = words[_W_NEXT]
            block = words[_W_TAIL_CHAIN]
            pos = words[_W_TAIL_POS]
            if block != self._block:
                self._load_block(block)
            size = (_SINGLE + _ALIGN_MASK + length) & ~_ALIGN_MASK   # L.record_size(1, length)
            if pos + size > self._limit:
                moved = True
                block, pos = self._next_block(offset, size)
            start = pos + _SINGLE
            view = memoryview(self._buf)[start:start + length]
        except BaseException:
            self._abort_locked(moved)
            raise
        return (offset, block, pos, length, moved, pos + size), view

    def reserve_commit(self, place, digest: int | None = None) -> int:
        """Checksum and publish the reserved entry (as append does), then release the mutex.
        ``digest``: the payload's checksum, taken as it was copied in (hot.c Slot.fill)."""
        offset, block, pos, length, _moved, end = place
        try:
            seed = (offset * _GOLDEN) & _U64   # L.entry_seed
            buf = self._buf
            start = pos + _SINGLE
            if digest is None:
                # Through a memoryview: a slice of the mmap itself is a copy of the payload.
                digest = _hash(memoryview(buf)[start:start + length], seed)
            _single_pack(buf, pos, 1, 0, offset, length, digest ^ seed ^ _SINGLE_SALT ^ length,
                         length, digest)
            self._publish(block, end, offset + 1, length)
        finally:
            _unlock(self.mutex)   # ours since reserve_begin: unlocking cannot fail
        self._after_publish()
        return offset

    def reserve_abort(self, place) -> None:
        """Publish nothing: the offset stays the next entry's; release the mutex."""
        self._abort_locked(place[4])

    def _abort_locked(self, moved: bool) -> None:
        try:
            if moved:
                # _next_block moved the tail words to a block nothing was published in:
                # rebuild them from published state (the slot stays pending, reused next time).
                self._recompute_tail()
        finally:
            sync.unlock(self.mutex)

    # ------------------------------------------------------------------ publishing
    def _publish(self, block: int, end: int, next_offset: int, nbytes: int, first_block: int | None = None) -> None:
        """THE publish (writer mutex held; records and chain slots already written): make
        entries up to ``next_offset`` visible.  hot.c's Appender_append stores in the same order.

        Store order, argued once: the tail bookkeeping (H_TAIL_*) first, then
        H_PUBLISHED_BLOCKS, H_BYTES, H_VISIBLE (a topic's first publish), and
        H_NEXT_OFFSET last: a reader that sees an entry also sees its topic listed.  x86-64 keeps stores
        in order, so a reader that loads the new H_NEXT_OFFSET (readers load it
        before the chain and the records) also sees the records, the chain slot
        of a new block and H_PUBLISHED_BLOCKS.  A writer killed before the last
        store published nothing: H_TAIL_OFFSET != H_NEXT_OFFSET tells the next
        locker to rebuild the tail from published state (_recompute_tail).
        With SyncEach, the entries (blocks ``first_block``..``block``) reach the disk
        before any of these stores (_sync_before_publish).
        """
        words = self.words
        if self._sync_each:
            self._sync_before_publish(block if first_block is None else first_block, block, next_offset)
        words[_W_TAIL_POS] = end
        words[_W_TAIL_CHAIN] = block
        words[_W_TAIL_OFFSET] = next_offset
        if words[_W_PUBLISHED] != block + 1:   # a store avoided: the line readers poll
            words[_W_PUBLISHED] = block + 1
        words[_W_BYTES] += nbytes
        if self._first_append:
            words[_W_VISIBLE] = 1   # the topic exists from its first entry (a reader may have made it empty)
            self._first_append = False
        words[_W_NEXT] = next_offset

    def _sync_before_publish(self, first_block: int, block: int, next_offset: int) -> None:
        """SyncEach, under the writer mutex, before the publish: an entry is visible only once it is on disk.

        The blocks' records first (fdatasync), then a durable note of the new end
        (H_SYNCED_NEXT, with the chain slots and H_PUBLISHED_BLOCKS, msync'ed): a
        power cut after this keeps the entries even if the page holding the
        publish word, stored next, never reached the disk (recovery walks to
        H_SYNCED_NEXT).  Readers never look at H_SYNCED_NEXT, so nothing is
        visible before the publish.
        """
        for b in range(first_block if first_block != NO_BLOCK else 0, block + 1):
            os.fdatasync(self.files.fd(self.meta.chain(b)[0]))
        words = self.words
        words[_W_PUBLISHED] = block + 1   # before the publish, as _publish stores it
        words[_W_SYNCED_NEXT] = next_offset
        self.meta.flush(upto=block + 1)

    def _after_publish(self) -> None:
        """What follows a publish once the mutex is released: wake the readers asleep on the topic."""
        if self.words[_W_WAITERS]:
            self.wake()

    def _fitting(self, pos: int, lengths, i: int, count: int) -> int:
        """The end j of the entries i..j-1 that fit in one record at ``pos`` (as hot.c's encode_run)."""
        room = self._limit - pos
        j, used = i, L.RECORD_HEADER_SIZE
        while j < count:
            grown = used + L.TABLE_ENTRY_SIZE + lengths[j]
            if L.align(grown) > room:
                break
            used = grown
            j += 1
        return j

    @staticmethod
    def _check_batch(items):
        items = batch_list(items)
        if native is not None:
            # One C pass checks every item; hot.c's encode_run reads them as they are.
            total, longest = native.measure(items)
            if longest > L.MAX_ENTRY:
                raise EntryTooLarge(f"an entry holds at most {L.MAX_ENTRY} bytes, got {longest}")
            if total > L.MAX_BATCH_BYTES:
                raise BatchTooLarge(f"a batch holds at most {L.MAX_BATCH_BYTES} bytes, got {total}")
            return items, _Lengths(items), total
        views = [item if type(item) is bytes else as_payload(item) for item in items]
        lengths = list(map(len, views))  # as_payload's views are flat bytes: len == nbytes
        for n in lengths:
            if n > L.MAX_ENTRY:
                raise EntryTooLarge(f"an entry holds at most {L.MAX_ENTRY} bytes, got {n}")
        total = sum(lengths)
        if total > L.MAX_BATCH_BYTES:
            raise BatchTooLarge(f"a batch holds at most {L.MAX_BATCH_BYTES} bytes, got {total}")
        return views, lengths, total

    # ------------------------------------------------------------------ blocks
    def _load_block(self, block: int) -> None:
        if block == NO_BLOCK:
            self._buf, self._limit = None, 0
        else:
            file_id, file_offset, capacity, _first = self.meta.chain(block)
            self._buf = self.files.map(file_id)
            self._limit = file_offset + capacity
        self._block = block
        if self._hot is not None:
            self._hot.set_block(None if block == NO_BLOCK else block, self._buf, self._limit)

    def _next_block(self, offset: int, record_bytes: int) -> tuple[int, int]:
        """Move the tail to the next chain slot (asking the broker for a block if need be).

        Pending slots (>= H_PUBLISHED_BLOCKS) are read and claimed under the
        chain mutex, which the broker holds while it fills or replaces one; it
        does that only for the current holder of the writer mutex (us), so a
        request from an appender that died meanwhile cannot pull a block from
        under us.
        """
        words = self.words
        meta = self.meta
        current = words[_W_TAIL_CHAIN]
        block = 0 if current == NO_BLOCK else current + 1
        need = L.BLOCK_HEADER_SIZE + record_bytes
        chain = meta.base + L.H_CHAIN_MUTEX
        for attempt in range(3):
            sync.lock(chain)
            try:
                usable = block < meta.get(L.H_ALLOCATED_BLOCKS) and meta.chain(block)[2] >= need
                if usable:
                    self._load_block(block)
                    file_id, file_offset, capacity, _ = meta.chain(block)
                    write_block_header(self._buf, file_offset, block, offset, capacity, self.topic)
                    meta.set(L.chain_slot_at(block) + L.C_FIRST_OFFSET, offset)
            finally:
                sync.unlock(chain)
            if usable:
                break
            self.link.alloc_block(self.topic, block, need)
        else:
            raise ShmwalError(f"no block for {self.topic} after {attempt + 1} requests")
        populate.block(self._buf, file_offset, capacity, need)
        # The tail words are re-set on publish; until then the new block is only ours.
        words[_W_TAIL_CHAIN] = block
        words[_W_TAIL_POS] = file_offset + L.BLOCK_HEADER_SIZE
        words[_W_TAIL_OFFSET] = NO_BLOCK  # not consistent until published: a death here is repaired
        if block > 1:
            # A full block lasts milliseconds under load (10 MiB at 5 GB/s): waiting for the
            # broker's next look (20 ms at best) left the writer without a spare, asking itself.
            # Not on leaving the first block: small (layout.block_capacity), it says nothing
            # of the writer's pace, the broker ignores that move, and the word only took CPU
            # from a fresh topic's first writes (quick race, 100 B: ~0.85x without this test).
            self.link.moved()
        return block, file_offset + L.BLOCK_HEADER_SIZE

    def _recompute_tail(self) -> None:
        """Rebuild the tail bookkeeping from published state (a writer died, or a batch failed).

        Called with the mutex held.  Everything beyond H_NEXT_OFFSET is
        garbage to overwrite; chain slots past the tail block are pending
        blocks to reuse.
        """
        words = self.words
        meta = self.meta
        next_offset = words[_W_NEXT]
        published = words[_W_PUBLISHED]
        first = meta.get(L.H_FIRST_BLOCK)
        if published == 0 or published <= first:
            words[_W_TAIL_CHAIN] = NO_BLOCK
            words[_W_TAIL_POS] = 0
        else:
            block = find_block(meta, next_offset, first, published)
            file_id, file_offset, capacity, block_first = meta.chain(block)
            pos, _ = walk_to(self.files.map(file_id), file_offset, capacity, block_first, next_offset,
                             append_position=True)
            words[_W_TAIL_CHAIN] = block
            words[_W_TAIL_POS] = pos
            words[_W_PUBLISHED] = block + 1
        words[_W_TAIL_OFFSET] = next_offset
        if words[_W_SYNCED_NEXT] > next_offset:
            words[_W_SYNCED_NEXT] = next_offset   # a dead writer's unpublished entries are overwritten now
        # Forget the cached block whole, its limit too: a topic with nothing published has
        # tail NO_BLOCK again, and a stale limit would let the next record land in the old block.
        self._load_block(NO_BLOCK)

    # ------------------------------------------------------------------ after publishing
    def wake(self) -> None:
        """Post the topic semaphore for sleeping readers (bounded by how many sleep)."""
        waiting = self.words[_W_WAITERS]
        if waiting > L.MAX_SANE_WAITERS:  # an underflow (a reader killed between its add and subtract)
            return
        sem = self.sem
        missing = waiting - sem.value
        for _ in range(min(missing, 64)):
            sem.release()
