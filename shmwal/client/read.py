"""Reading for a consumer group: find entries from shared counters and copy them out.

Each (topic, group) has one cursor in the meta file, shared by every process
reading with that group.  A read takes the group's robust mutex, reads the
cursor, copies the entries after it (checksums verified), moves the cursor
and releases: so within a group each entry goes to exactly one reader, and
with ``checkpoint=True`` the cursor has moved before the read returns
(StrictlyAtOnce: a reader killed after that point is never given the entry
again; killed before it, the cursor never moved and the next reader gets it).

A group's slot is given by the broker with its generation (layout.G_GEN):
every read checks the generation right after taking the group mutex, and a
mismatch (the group was deleted, its slot maybe reused) raises GroupGone,
upon which the client asks the broker for the group again (a read that names
a group creates it).

When Retention.max_bytes dropped entries this group had not read, the cursor
is below the oldest kept entry: the next checkpointed read moves it up and
adds what lay between to the group's G_SKIPPED, under the mutex (stats).

The group slot also keeps a hint (block and record position of the entry at
the cursor) so that a read is O(1) instead of a walk; it is trusted only when
``G_HINT_OFFSET`` equals the cursor.

Readers sleep on the topic's semaphore when there is nothing to read; see
append.py for why no wake-up is lost.
"""

from __future__ import annotations

import errno
import struct
import time
import weakref

import posix_ipc

from ..ipc import sync
from ..blocks import layout as L
from ..blocks.chain import find_block, walk_to
from ..blocks.codec import BadRecord, entry_bytes, read_record, xxh
from ..entry import Entry, make_entry
from ..errors import CorruptEntry
from . import heap
from .hot import native

_W_NEXT = L.H_NEXT_OFFSET // 8
_W_PUBLISHED = L.H_PUBLISHED_BLOCKS // 8
_W_FIRST_BLOCK = L.H_FIRST_BLOCK // 8
_W_FIRST_OFFSET = L.H_FIRST_OFFSET // 8
_W_FORCED = L.H_FORCED_OFFSET // 8
_W_CHAIN_FIRST = L.CHAIN_AT // 8 + L.C_FIRST_OFFSET // 8
NO_HINT = L.UNSET
_ALIGN_MASK = L.ALIGN - 1
_SINGLE_SALT = (1 << L.SEED_COUNT_SHIFT) ^ L.SEED_SALT   # what L.record_seed mixes in for count == 1
_GOLDEN = L.SEED_GOLDEN
_SINGLE = L.SINGLE_RECORD_SIZE
_U64 = L.U64_MASK
_group_unpack = struct.Struct("<QQQQ").unpack_from   # G_CURSOR, G_HINT_OFFSET, G_HINT_CHAIN, G_HINT_POS
_single_unpack = L.SINGLE_RECORD.unpack_from
_record_start = struct.Struct("<IIQ").unpack_from   # a record's count, batch_left, first offset
_trylock = sync.trylock
_unlock = sync.unlock_raw
_xxh = xxh
assert (L.G_HINT_OFFSET, L.G_HINT_CHAIN, L.G_HINT_POS) == (L.G_CURSOR + 8, L.G_CURSOR + 16, L.G_CURSOR + 24)
_decode = native.decode if native is not None else None
_DONE = native.DONE if native is not None else 0
_BLOCK_END = native.BLOCK_END if native is not None else 1
WAIT_SLICE = 0.25   # a sleeping reader looks at the broker's liveness this often
SPIN = 400          # publish-word loads before sleeping (~15 µs)


class _Overtaken(Exception):
    """Reclamation dropped the block a take was reading (see GroupReader._take)."""


class GroupGone(Exception):
    """The group this reader was made for was deleted (internal: the client asks again)."""


def lost_below(words, cursor: int) -> int:
    """Entries below the oldest kept one that a group at ``cursor`` never read and
    never will: those Retention.max_bytes dropped (layout.H_FORCED_OFFSET)."""
    return max(0, min(words[_W_FIRST_OFFSET], words[_W_FORCED]) - cursor)


def _unpin(mapping, word: int) -> None:
    if not mapping.closed:
        sync.atomic_add(word, -1)


class GroupReader:
    """Reads one topic for one group from this process."""

    def __init__(self, link, topic: str, group: str, meta, files, sem, slot: int, gen: int = 0):
        self.link = link
        self.topic = topic
        self.group = group
        self.stale = False      # set by the client when it drops its handles (a new broker)
        self.took_from = 0      # offset of the first entry of the last take (see read)
        self.took_bytes = 0     # payload bytes of the last take
        self._pin = None        # (block, mapping, view) pinned by the zero-copy take under way
        self.meta = meta
        self.files = files
        self.sem = sem
        self.words = meta.words
        at = L.group_slot_at(slot)
        self.group_page = at // L.PAGE * L.PAGE
        self.mutex = meta.base + at + L.G_MUTEX
        self.w_cursor = (at + L.G_CURSOR) // 8
        self.w_hint_offset = (at + L.G_HINT_OFFSET) // 8
        self.w_hint_chain = (at + L.G_HINT_CHAIN) // 8
        self.w_hint_pos = (at + L.G_HINT_POS) // 8
        self.w_gen = (at + L.G_GEN) // 8
        self.w_skipped = (at + L.G_SKIPPED) // 8
        self.gen = gen
        self.lost = 0           # entries the cursor jumps over in the take under way (see _take)
        self.at_cursor = at + L.G_CURSOR
        self._strict_sync = link.strict_sync   # handles are rebuilt when the broker changes
        self._mm = meta.mm
        self._fast_block = -1          # _fast's cache: the hint's block, its mapping and limit,
        self._fast_buf = None          # and the first offset of the block after it once that
        self._fast_limit = 0           # is published (NO_HINT until then)
        self._fast_next_first = NO_HINT
        self.waiters = meta.base + L.H_WAITERS
        self._blocks: dict[int, tuple] = {}   # chain slot -> (mmap, file_offset, capacity, first_offset, limit)
        self._record_key = None               # (chain slot, position) of the cached parsed record
        self._generation = files.generation   # of files' mappings that _blocks was filled from
        self._record = None
        # The compiled read_next (hot.c) unless every read must also msync
        # (SyncEach with StrictlyAtOnce).  ``hot_next(checkpoint)`` returns an
        # Entry, an int (nothing below that next offset) or None (general path).
        self._hot = None
        self._hot_block = -1
        self.hot_next = self._no_hot
        self.hot_next_view = self._no_hot   # the same, zero-copy (read_next(..., zero_copy=True))
        self.hot_next_writable = self._no_hot   # the same, the data a bytearray (shmwal.Queue's large items)
        # shmwal.Queue's get: ``hot_next_object(checkpoint, loads, below, miss)`` is
        # loads() of the next entry if hot_next would serve it and it is a plain pickle
        # shorter than ``below``, else ``miss`` with nothing read (the general path then).
        self.hot_next_object = self._no_object
        self.served = None      # the hot.c Reader when it serves reads (Client's Dispatch takes it)
        # batch_read's compiled take: ``hot_take(max_entries, max_bytes, checkpoint, payloads,
        # zero_copy)`` returns the entries (payloads: (first offset, their data)) when the
        # batch lies in the hint's block, an int (nothing below that next offset) or None
        # (the general path). Not with io_uring: its fetcher reads batches.
        self.hot_take = None
        if native is not None:
            self._hot = native.Reader(meta.mm, slot, gen, topic, sem.name)
            if not self._strict_sync:
                self.served = self._hot
                self.hot_next = self._hot.next
                self.hot_next_view = self._hot.next_view
                self.hot_next_writable = self._hot.next_writable
                self.hot_next_object = self._hot.next_object
                if link.fetcher is None:
                    self.hot_take = self._hot.take

    @staticmethod
    def _no_hot(checkpoint):
        return None

    @staticmethod
    def _no_object(checkpoint, loads, below, miss):
        return miss

    # ------------------------------------------------------------------ public
    def read(self, max_entries: int, max_bytes: int, checkpoint: bool, timeout, zero_copy: bool = False,
             seen_next: int | None = None, payloads: bool = False) -> list:
        """Take entries as batch_read does, waiting up to ``timeout`` for the first.

        See ``_read``; a group deleted under this reader is asked for again.
        """
        try:
            return self._read(max_entries, max_bytes, checkpoint, timeout, zero_copy, seen_next, payloads)
        except GroupGone:
            fresh = self.link.reader_again(self)
            return fresh.read(max_entries, max_bytes, checkpoint, timeout, zero_copy, payloads=payloads)

    def _read(self, max_entries: int, max_bytes: int, checkpoint: bool, timeout, zero_copy: bool = False,
              seen_next: int | None = None, payloads: bool = False) -> list:
        """Take entries as batch_read does, waiting up to ``timeout`` for the first.

        ``seen_next``: the caller has just looked and found nothing below this
        next offset, so the first thing to do is wait, not look again.
        ``payloads`` (batch_read_payloads): returns ``(first, data)``, each entry's
        data instead of the Entry and the offset of the first (None if none).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if seen_next is None:
                if max_entries == 1 and not zero_copy:
                    found = self.hot_next(checkpoint)
                    if found.__class__ is Entry:
                        return [found]
                elif self.hot_take is not None:
                    found = self.hot_take(max_entries, max_bytes, checkpoint, payloads, zero_copy)
                    if found.__class__ is list or found.__class__ is tuple:
                        return found
                else:
                    found = None
                if found is not None:
                    seen_next = found
                    if timeout == 0:
                        return (None, []) if payloads else []
            if seen_next is None:
                died = sync.lock(self.mutex)
                try:
                    taken = None
                    if died or zero_copy:
                        pass
                    elif max_entries == 1:
                        # read_next after a wait: the fast case, unless hot.c just tried it (above)
                        found = self._fast(checkpoint) if self.hot_next is self._no_hot else None
                        if found is not None:
                            taken = [found], 0
                    elif self.link.fetcher is not None:
                        taken = self._take_uring(max_entries, max_bytes, checkpoint, payloads)
                    entries, seen_next = taken or self._take(max_entries, max_bytes, checkpoint, died,
                                                             zero_copy=zero_copy, payloads=payloads)
                    took_from = self.took_from
                finally:
                    sync.unlock(self.mutex)
                if self.took_bytes > heap.retained and not zero_copy and entries:
                    heap.retain(self.took_bytes)   # freeing the batch must not give its memory back (heap.py)
                if entries or timeout == 0:
                    return (took_from if entries else None, entries) if payloads else entries
            if not self._spin(seen_next):
                if not self.sleep_until_grown(seen_next, deadline):
                    return (None, []) if payloads else []
                if self.stale:
                    # The client reconnected to a new broker meanwhile: go on with
                    # fresh handles (the meta file may have been rebuilt).
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    fresh = self.link.fresh_reader(self.topic, self.group)
                    return fresh.read(max_entries, max_bytes, checkpoint, left, zero_copy, payloads=payloads)
            seen_next = None

    def read_one(self, checkpoint: bool, timeout, found=None):
        """read_next: the fast path for a one-entry record at a valid hint, else ``_take``.

        ``_fast`` inlines what _take does for that case (see _take for the
        rules); any check that fails sends the read down the general path,
        under the same lock.  ``found`` is what ``hot_next`` returned, if the
        caller asked it already: an int means nothing below it to read.
        """
        if found is None and self.hop():   # the entry opens the next block: the fast path again
            found = self.hot_next(checkpoint)   # (the pure path's _fast, below, takes it itself)
        if found is not None:
            if found.__class__ is Entry:
                return found
            if timeout == 0:
                return None
            if self.hot_next is not self._no_hot:
                return self._read_wait(checkpoint, timeout)
            entries = self.read(1, L.MAX_ENTRY, checkpoint, timeout, seen_next=found)
            return entries[0] if entries else None
        mutex = self.mutex
        rc = _trylock(mutex)
        died = rc and sync.lock_contended(mutex, rc)
        try:
            # hot.c's next, when there is one, already found no fast case: straight to _take.
            found = None if died or self.hot_next is not self._no_hot else self._fast(checkpoint)
            if found is not None:
                return found
            entries, seen_next = self._take(1, L.MAX_ENTRY, checkpoint, died)
        except GroupGone:
            entries = None
        finally:
            _unlock(mutex)
        if entries is None:
            return self.link.reader_again(self).read_one(checkpoint, timeout)
        if entries:
            return entries[0]
        if timeout == 0:
            return None
        entries = self.read(1, L.MAX_ENTRY, checkpoint, timeout, seen_next=seen_next)
        return entries[0] if entries else None

    def _read_wait(self, checkpoint: bool, timeout):
        """read_one's wait through hot.c: take, spin, sleep and take again without
        coming back to Python in between (a wake-up costs ~3 us less), except
        every WAIT_SLICE to look at the broker's liveness and the deadline."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = WAIT_SLICE if deadline is None else max(0.0, min(WAIT_SLICE, deadline - time.monotonic()))
            found = self._hot.read_wait(checkpoint, wait)
            if found.__class__ is Entry:
                return found
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if found is None and self.hop():
                continue   # the entry opens the next block: hot.c serves it from there
            if found is None:   # the general path, for the time left
                entries = self.read(1, L.MAX_ENTRY, checkpoint, left)
                return entries[0] if entries else None
            self.link.check_alive()
            if self.stale:
                # The client reconnected to a new broker meanwhile: fresh handles (see read).
                fresh = self.link.fresh_reader(self.topic, self.group)
                entries = fresh.read(1, L.MAX_ENTRY, checkpoint, left)
                return entries[0] if entries else None
            if left == 0:
                return None

    def hop(self) -> bool:
        """Move the group's hint from the end of its block to the first record of the next one,
        when the cursor is that block's first entry and it is published; True if it moved.

        The compiled read (and ``_fast``) serve the hint's block only, and the general path
        that took the first entry of every block cost a 1 MiB ``shmwal.Queue`` item two
        passes over DRAM (a checksum of the mapped entry, then the copy out) where hot.c
        makes one: callers that got nothing from the fast path hop and ask it again.
        The hint is validated as ``_commit`` requires (the record there starts at the
        cursor) and stored in its order: G_HINT_OFFSET off first, on again last.
        """
        words = self.words
        cursor, following = words[self.w_cursor], words[self.w_hint_chain] + 1
        if words[self.w_hint_offset] != cursor or cursor >= words[_W_NEXT] \
                or following >= min(words[_W_PUBLISHED], L.CHAIN_SLOTS) \
                or words[_W_CHAIN_FIRST + following * 4] != cursor:
            return False   # checked again under the mutex; this is the cheap no
        mutex = self.mutex
        rc = _trylock(mutex)
        if rc and sync.lock_contended(mutex, rc):
            words[self.w_hint_offset] = NO_HINT   # as hot.c does: the dead reader may have half-moved it
            _unlock(mutex)
            return False
        try:
            if words[self.w_gen] != self.gen or words[self.w_cursor] != cursor \
                    or words[self.w_hint_offset] != cursor or words[self.w_hint_chain] + 1 != following \
                    or cursor < words[_W_FIRST_OFFSET]:
                return False
            try:
                buf, file_offset, _capacity, block_first, limit = self._block(following)
                pos = file_offset + L.BLOCK_HEADER_SIZE
                count, _batch_left, first = _record_start(buf, pos) if pos + _SINGLE <= limit else (0, 0, -1)
            except (OSError, ValueError):   # a file gone meanwhile: the general path reports it
                return False
            if block_first != cursor or first != cursor or count < 1:
                return False
            words[self.w_hint_offset] = NO_HINT
            words[self.w_hint_chain] = following
            words[self.w_hint_pos] = pos
            words[self.w_hint_offset] = cursor
            self._serve_hot(following)
            return True
        finally:
            _unlock(mutex)

    def _fast(self, checkpoint: bool):
        words = self.words
        mm = self._mm
        cursor, hint_offset, block, pos = _group_unpack(mm, self.at_cursor)
        if cursor != hint_offset or cursor >= words[_W_NEXT] or cursor < words[_W_FIRST_OFFSET] \
                or words[self.w_gen] != self.gen:
            return None   # _take knows what to do
        if block != self._fast_block:
            found = self._blocks.get(block)
            if found is None:
                return None
            self._fast_block, self._fast_buf, self._fast_limit = block, found[0], found[4]
            self._fast_next_first = NO_HINT
        next_first = self._fast_next_first
        if next_first == NO_HINT and block + 1 < words[_W_PUBLISHED]:
            # Published once, a block's first offset never changes: look it up once.
            next_first = self._fast_next_first = words[_W_CHAIN_FIRST + (block + 1) * 4]
        if cursor >= next_first:
            return None   # the entry is in a later block
        buf = self._fast_buf
        if pos + _SINGLE > self._fast_limit:
            return None
        try:
            count, batch_left, first, data_bytes, check, length, digest = _single_unpack(buf, pos)
        except ValueError:   # its file was deleted and the watcher closed the mapping
            self._fast_block = -1
            return None
        end = pos + _SINGLE + length
        if count != 1 or first != cursor or end > self._fast_limit:
            return None
        seed = (cursor * _GOLDEN) & _U64   # L.entry_seed
        data = buf[pos + _SINGLE:end]
        if _xxh(data, seed) != digest or length != data_bytes or \
                digest ^ seed ^ _SINGLE_SALT ^ (batch_left << L.SEED_BATCH_LEFT_SHIFT) ^ length != check:
            return None   # the general path reports it
        if checkpoint:
            self._commit(cursor + 1, block, (end + _ALIGN_MASK) & ~_ALIGN_MASK)
        return make_entry(Entry, (self.topic, cursor, data))

    def seek(self, offset: int) -> None:
        sync.lock(self.mutex)   # a dead holder's hint is voided by the commit anyway
        try:
            words = self.words
            if words[self.w_gen] != self.gen:
                raise GroupGone
            lost = lost_below(words, words[self.w_cursor])
            offset = max(offset, words[_W_FIRST_OFFSET])
            offset = min(offset, words[_W_NEXT])  # past the end: wait at the end
            self._commit(offset, lost=lost)   # lost before the seek: still lost (stats)
        finally:
            sync.unlock(self.mutex)

    def position(self) -> int:
        words = self.words
        position = max(words[self.w_cursor], words[_W_FIRST_OFFSET])
        if words[self.w_gen] != self.gen:
            raise GroupGone
        return position

    # ------------------------------------------------------------------ under the group mutex
    def _take(self, max_entries: int, max_bytes: int, checkpoint: bool, died: bool,
              resume: tuple | None = None, zero_copy: bool = False, payloads: bool = False):
        """``_take_once``, again from the oldest kept entry while reclamation overtakes it.

        A reader that stalled below what the broker keeps may find its block
        freed, its space released or the block reused (Retention.max_bytes
        drops unread blocks) while it reads: bytes that do not check out below
        H_FIRST_OFFSET are that, not damage, and the top of ``_take_once``
        clamps the cursor up (counting what the group lost).
        """
        while True:
            try:
                return self._take_once(max_entries, max_bytes, checkpoint, died, resume, zero_copy, payloads)
            except _Overtaken:
                died = True   # the hint is of a dropped block: not used

    def _take_once(self, max_entries: int, max_bytes: int, checkpoint: bool, died: bool,
                   resume: tuple | None = None, zero_copy: bool = False, payloads: bool = False):
        """Take entries from the cursor on, through the mapped files.

        ``resume`` = (next_offset, offset, block, position, entries, total)
        continues a batch that ``_take_uring`` started (same caps, same cursor rules).

        Damage (a record that does not check out, a payload that fails its
        checksum, a block file cut short or gone) ends a batch before it: the
        entries taken so far are returned and the cursor stops on the damaged
        entry, so the next call raises CorruptEntry with its offset, and
        ``seek(offset + 1)`` steps over it.  The hint stored with the cursor is
        only ever a position this take validated (see _commit).
        """
        words = self.words
        if resume is None:
            if words[self.w_gen] != self.gen:
                raise GroupGone
            cursor = words[self.w_cursor]
            next_offset = words[_W_NEXT]   # loaded before the chain: see append.py's publish order
            first_offset = words[_W_FIRST_OFFSET]
            hinted = not died and words[self.w_hint_offset] == cursor
            self.lost = 0
            if cursor < first_offset:
                self.lost = lost_below(words, cursor)
                cursor, hinted = first_offset, False
            self.took_from = cursor
            if cursor >= next_offset:
                return [], next_offset
            block, pos = -1, -1
            if hinted:
                block, pos = words[self.w_hint_chain], words[self.w_hint_pos]
                if not words[_W_FIRST_BLOCK] <= block < words[_W_PUBLISHED]:
                    block, pos = -1, -1   # not a block of this topic's chain: find it
            out = []
            total = 0
        else:
            next_offset, cursor, block, pos, out, total = resume
        published = words[_W_PUBLISHED]
        topic = self.topic
        c = cursor
        # Invariant: the record holding entry c starts at hint_pos of chain slot
        # hint_block, or c is the first entry of a later block (-1: not known).
        hint_block, hint_pos = (block, pos) if pos >= 0 else (-1, -1)
        decode = _decode
        try:
            while True:
                if block < 0 or (block + 1 < published and words[_W_CHAIN_FIRST + (block + 1) * 4] <= c):
                    block = find_block(self.meta, c, words[_W_FIRST_BLOCK], published)
                    pos = -1
                buf, file_offset, capacity, block_first, limit = self._block(block)
                if zero_copy:
                    buf = self._pinned_view(block, buf, file_offset)
                if pos >= 0 and decode is not None:
                    # hot.c's loop over records; what it hands back goes through the code below.
                    next_first = words[_W_CHAIN_FIRST + (block + 1) * 4] if block + 1 < published else NO_HINT
                    status, c, pos, taken = decode(buf, pos, limit, c, next_offset, next_first,
                                                   max_entries - len(out), max_bytes - total, bool(out),
                                                   None if payloads else topic, out, zero_copy, total)
                    total += taken
                    hint_block, hint_pos = block, pos   # decode checked every record up to pos
                    if status == _DONE:
                        return out, next_offset
                    if status == _BLOCK_END:
                        continue
                if pos < 0:
                    pos, record = walk_to(buf, file_offset, capacity, block_first, c)
                else:
                    try:
                        record = self._parse(block, buf, pos, limit)
                    except BadRecord:
                        record = None   # walk to it: what the block holds there decides
                    if record is None or not record.first_offset <= c < record.first_offset + record.count:
                        pos = -1
                        continue
                hint_block, hint_pos = block, pos
                index = c - record.first_offset
                lengths, sums, starts = record.lengths, record.sums, record.starts
                count = record.count
                append = out.append
                full = False
                # codec.entry_bytes, inlined: per entry, two calls cost as much as the copy.
                while index < count:
                    length = lengths[index]
                    if out and total + length > max_bytes:
                        full = True
                        break
                    start = starts[index]
                    data = buf[start:start + length]
                    if zero_copy or type(data) is not bytes:
                        data = data if zero_copy else bytes(data)
                    if _xxh(data, (c * _GOLDEN) & _U64) != sums[index]:  # L.entry_seed
                        if out:
                            return out, next_offset   # the next call raises for c
                        if resume is None and c < words[_W_FIRST_OFFSET]:
                            raise _Overtaken
                        raise CorruptEntry(topic, c)
                    append(data if payloads else make_entry(Entry, (topic, c, data)))
                    total += length
                    c += 1
                    index += 1
                    if len(out) >= max_entries or c >= next_offset:
                        full = True
                        break
                if index >= count:
                    pos += record.size
                    hint_pos = pos
                if full:
                    return out, next_offset
        except BadRecord as exc:
            if out:
                return out, next_offset
            if resume is None and c < words[_W_FIRST_OFFSET]:
                raise _Overtaken from None
            raise CorruptEntry(topic, c, str(exc)) from None
        except (OSError, ValueError) as exc:   # ValueError: a mapping the watcher closed (file deleted)
            if out:
                return out, next_offset
            if resume is None and c < words[_W_FIRST_OFFSET]:
                raise _Overtaken from None
            raise CorruptEntry(topic, c, f"block file unreadable: {exc}") from None
        finally:
            self._pin = None   # the entries' views hold their pins; the reader holds none
            self.took_bytes = total
            lost, self.lost = self.lost, 0   # counted by the take that moves the cursor past it
            if checkpoint and out:
                self._commit(c, hint_block, hint_pos, lost)

    def _take_uring(self, max_entries: int, max_bytes: int, checkpoint: bool, payloads: bool = False):
        """``_take`` for io_uring: plan the byte ranges, read them in one submission, decode.

        Returns None to let ``_take`` (mmap) do the read: when there is no
        valid hint (after a seek) and when the first record does not fit the
        planned ranges.  Decoding goes
        through the same codec functions as ``_take``.
        """
        words = self.words
        cursor = words[self.w_cursor]
        next_offset = words[_W_NEXT]
        if cursor >= next_offset or cursor < words[_W_FIRST_OFFSET] or words[self.w_hint_offset] != cursor \
                or words[self.w_gen] != self.gen:
            return None
        self.took_from = cursor
        published = words[_W_PUBLISHED]
        meta = self.meta
        block, pos = words[self.w_hint_chain], words[self.w_hint_pos]
        if block + 1 < published and words[_W_CHAIN_FIRST + (block + 1) * 4] <= cursor:
            block += 1
            file_id, file_offset, _cap, first = meta.chain(block)
            if first != cursor:
                return None
            pos = file_offset + L.BLOCK_HEADER_SIZE
        want = min(max_entries, next_offset - cursor)
        remaining = max_bytes + want * (L.RECORD_HEADER_SIZE + L.TABLE_ENTRY_SIZE + L.ALIGN) + L.PAGE
        plan = []          # (block, file_id, file position, length, arena offset)
        arena_at = 0
        b, p = block, pos
        while remaining > 0:
            file_id, file_offset, capacity, _first = meta.chain(b)
            n = min(file_offset + capacity - p, remaining)
            plan.append((b, file_id, p, n, arena_at))
            arena_at += (n + L.PAGE - 1) & ~(L.PAGE - 1)   # page-aligned destinations copy fastest
            remaining -= n
            if b + 1 >= published or words[_W_CHAIN_FIRST + (b + 1) * 4] >= next_offset:
                break
            b += 1
            p = meta.chain(b)[1] + L.BLOCK_HEADER_SIZE
        fetcher = self.link.fetcher
        files = self.files
        self._forget_dropped_files()   # the ring's reads sweep files (files.fd) without _block
        try:
            view, got = fetcher.read(files, plan, arena_at)
        except OSError:
            return None   # e.g. a reclaimed file: _take knows what to do
        topic = self.topic
        out = []
        total = 0
        c = cursor
        hint_block, hint_pos = block, pos
        full = False
        for (b, file_id, p, _n, at), length_read in zip(plan, got):
            if full or c >= next_offset or (b != block and meta.chain(b)[3] != c):
                break
            _f, file_offset, capacity, _first = meta.chain(b)
            block_end = file_offset + capacity
            # Positions are file positions; ``delta`` maps them into ``source``:
            # the arena while the planned range lasts, then the mapping itself
            # for a record the plan cut short (decoded alike, so batches match).
            source, delta, limit = view, at - p, at + length_read
            fpos = p
            while c < next_offset and not full:
                try:
                    record = read_record(source, fpos + delta, limit)
                except BadRecord:
                    if source is view and length_read < block_end - p:
                        source, delta, limit = files.map(file_id), 0, block_end
                        continue
                    break   # the block's records end here (or it is damaged: _take reports that)
                if not record.first_offset <= c < record.end_offset:
                    break
                index = c - record.first_offset
                while index < record.count:
                    length = record.lengths[index]
                    if out and total + length > max_bytes:
                        full = True
                        break
                    data = entry_bytes(source, record, index)
                    if data is None:
                        if not out:
                            raise CorruptEntry(topic, c)
                        full = True
                        break
                    out.append(data if payloads else make_entry(Entry, (topic, c, data)))
                    total += length
                    c += 1
                    index += 1
                    if len(out) >= max_entries:
                        full = True
                        break
                hint_block = b
                hint_pos = fpos + (record.size if index >= record.count else 0)
                fpos += record.size
        if not out:
            return None
        if not full and c < next_offset:
            # The planned ranges ran out before the caps did: the mapping finishes
            # the batch, so its boundaries are exactly those of an mmap read.
            took_from = self.took_from
            taken = self._take(max_entries, max_bytes, checkpoint, False,
                               (next_offset, c, hint_block, hint_pos, out, total), payloads=payloads)
            self.took_from = took_from
            return taken
        self.took_bytes = total
        if checkpoint:
            self._commit(c, hint_block, hint_pos)
        return out, next_offset

    def _pinned_view(self, block: int, mapping, file_offset: int) -> memoryview:
        """A read-only view of ``mapping`` whose slices pin ``block`` against reuse.

        The block's pin word (layout.B_PINS) counts this take's views of the block once,
        from now until every view sliced from the returned one is gone: the exporter is a
        ctypes array over the mapping, whose finalizer takes the pin back. The pin is an atomic add
        (a full barrier) and H_FIRST_BLOCK is loaded after it, while the broker stores
        H_FIRST_BLOCK, makes an atomic add, then loads the pins: so either the broker
        sees this pin and frees the block instead of reusing it, or we see the block
        reclaimed and back off (OSError: _take starts again from the oldest entry).
        """
        pin = self._pin
        if pin is not None and pin[0] == block and pin[1] is mapping:
            return pin[2]
        if file_offset + L.BLOCK_HEADER_SIZE > len(mapping):
            # A file cut short (damage): its pin word is not mapped, and storing there would fault.
            raise OSError(errno.ENODATA, f"block {block} lies past the end of its (truncated) file")
        if native is not None:
            # One object pins, holds the mapping and exports it read-only (hot.c PinnedView).
            exporter = native.PinnedView(mapping, file_offset + L.B_PINS)
            if self.words[_W_FIRST_BLOCK] > block:
                del exporter   # unpins
                raise OSError(errno.ESTALE, f"block {block} was reclaimed")
            view = memoryview(exporter)
        else:
            address, exporter = sync.buffer_address(mapping)
            word = address + file_offset + L.B_PINS
            sync.atomic_add(word, 1)
            if self.words[_W_FIRST_BLOCK] > block:
                sync.atomic_add(word, -1)
                raise OSError(errno.ESTALE, f"block {block} was reclaimed")
            weakref.finalize(exporter, _unpin, mapping, word)   # holds the mapping: still mapped then
            view = memoryview(exporter).cast("B").toreadonly()   # holds the exporter, so the pin
        self._pin = (block, mapping, view)
        return view

    def _forget_dropped_files(self) -> None:
        """Drop cached blocks whose files BlockFiles let go of (the broker deleted them)."""
        files = self.files
        if files.generation != self._generation:
            self._pin = None
            self._blocks.clear()
            self._record_key = self._record = None
            self._fast_block = -1
            self._generation = files.generation
            if self._hot is not None:
                self._hot.set_block(None)
                self._hot_block = -1

    def _block(self, block: int) -> tuple:
        found = self._blocks.get(block)
        if found is None:
            file_id, file_offset, capacity, first = self.meta.chain(block)
            mapping = self.files.map(file_id)   # may sweep deleted files: forget them next
            self._forget_dropped_files()
            # A file cut short (damage) maps shorter than its block: no read goes past the mapping.
            found = (mapping, file_offset, capacity, first, min(file_offset + capacity, len(mapping)))
            if len(self._blocks) > 64:
                self._blocks.clear()
            self._blocks[block] = found
        return found

    def _parse(self, block: int, buf, pos: int, limit: int):
        key = (block, pos)
        if key == self._record_key:
            return self._record
        record = read_record(buf, pos, limit)
        self._record_key, self._record = key, record
        return record

    def _commit(self, cursor: int, block: int = -1, pos: int = -1, lost: int = 0) -> None:
        """THE cursor commit (group mutex held): move the group's cursor to ``cursor``, with a
        hint that ``cursor`` starts at record ``pos`` of chain slot ``block``: only ever a position
        the caller validated (none, -1: the next take finds the block itself).

        Store order, argued once (hot.c's next_entry stores in the same order):
        G_HINT_OFFSET first, to the new cursor (or NO_HINT), which differs from the cursor
        still stored, so until the last store the hint is never trusted (it is used only
        when G_HINT_OFFSET equals the cursor); then the hint's block and position; then
        G_CURSOR, the commit itself, one aligned word store, read by others without the
        mutex (the broker's reclamation and fsync, ``position``). A reader killed anywhere
        in between leaves the old cursor and an ignored hint: the next reader takes the
        same entries again, as StrictlyAtOnce wants of a read that did not return.
        Under SyncEach + StrictlyAtOnce the group's page reaches the disk before the read
        returns.  ``lost``: entries below the oldest kept one that the cursor steps over
        (G_SKIPPED, a stat).
        """
        words = self.words
        if pos < 0:
            words[self.w_hint_offset] = NO_HINT
        else:
            words[self.w_hint_offset] = cursor
            words[self.w_hint_chain] = block
            words[self.w_hint_pos] = pos
        if lost:
            words[self.w_skipped] += lost
        words[self.w_cursor] = cursor
        if self._strict_sync:
            self._mm.flush(self.group_page, L.PAGE)
        if pos >= 0:
            self._serve_hot(block)

    def _serve_hot(self, block: int) -> None:
        """read_next's compiled path serves the hint's ``block`` from now on (if mapped here)."""
        if block != self._hot_block and self._hot is not None:
            found = self._blocks.get(block)
            if found is not None:
                self._hot.set_block(block, found[0], found[4], found[1] + L.B_PINS)
                self._hot_block = block

    # ------------------------------------------------------------------ sleeping
    def _spin(self, seen_next: int) -> bool:
        """Watch the publish word for a few microseconds before going to sleep.

        Under load the next entry is usually microseconds away; sleeping on the
        semaphore would cost the writer a futex wake and this reader a context
        switch per entry.  Idle, it costs ~SPIN loads per wake-up slice.
        """
        words = self.words
        for _ in range(SPIN):
            if words[_W_NEXT] != seen_next:
                return True
        return False

    def sleep_until_grown(self, seen_next: int, deadline) -> bool:
        """Sleep until the topic may have grown; False once the deadline passed."""
        wait = WAIT_SLICE
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return False
        if self._hot is not None:
            self._hot.wait(seen_next, wait)   # the same steps in C: ~1 us less per wake-up
            self.link.check_alive()
            return True
        sync.atomic_add(self.waiters, 1)  # a full barrier before the last look
        try:
            if self.words[_W_NEXT] == seen_next:
                try:
                    self.sem.acquire(wait)
                except posix_ipc.BusyError:
                    pass
        finally:
            sync.atomic_add(self.waiters, -1)
        self.link.check_alive()
        return True
