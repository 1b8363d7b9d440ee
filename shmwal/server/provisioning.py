"""Blocks for writers: handed out on request (``alloc_block``) and ahead of need (``look``, ``ready``).

An appender that fills its block moves to the next chain slot.  If the
broker already put a block there (SPARE_BLOCKS ahead of every
writer that moved), the appender never asks; otherwise it asks with
``alloc_block`` while holding the topic's writer mutex.  Either way the broker
writes only slots at or above ``H_ALLOCATED_BLOCKS`` (fields first, the count
last), under the topic's chain mutex, so a writer never sees half a slot.

Disk work no appender may wait for runs on threads of its own: the next
block file (the allocator prepares it ahead), the storage of blocks handed out
ahead (the spares thread: fallocating a 10 MiB block on tmpfs takes ~3.5 ms,
and done on the control loop it held up every request behind it, a fresh
topic's first ``alloc_block`` included), and faulting those blocks in (the
populate thread), so a long populate never delays a file switch.

A topic's first block is small (``layout.block_capacity``) and nothing is
readied ahead of it: a topic of a few entries keeps 64 KiB.  Leaving that
block says nothing of a writer's pace: only moves out of full blocks make it
busy.

The spares and populate threads run at the lowest priority: on a machine
whose cores the producers and consumers keep busy, they took CPU from the
very writers they work for.  A writer that needs a spare still on the way
waits for it (``alloc_block``), and then a core is free for that thread.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ..blocks import layout as L
from ..blocks.allocator import BlockAllocator, no_space
from ..blocks.files import BlockFiles, allocate
from ..blocks.meta import TopicMeta
from ..errors import ShmwalError
from ..ipc import priority, sync
from .registry import Registry

log = logging.getLogger("shmwal.broker")

SPARE_BLOCKS = 2           # blocks kept allocated (and faulted in) ahead of a busy writer
BUSY_WITHIN = 1.0          # s: a writer that moved to a new block this soon after its last move is busy
MAX_REQUEST_SLACK = 1 << 20   # alloc_block: capacity a request may ask beyond the largest batch and a header


class chain_mutex:
    """``with chain_mutex(meta):`` holds the topic's chain mutex (see layout.H_CHAIN_MUTEX)."""

    def __init__(self, meta: TopicMeta):
        self.address = meta.base + L.H_CHAIN_MUTEX

    def __enter__(self):
        sync.lock(self.address)   # a dead holder left at most a slot with capacity 0: nothing to repair

    def __exit__(self, *exc):
        sync.unlock(self.address)


class _Readying:
    """A spare block whose storage the spares thread is allocating: in no chain slot yet."""

    __slots__ = ("index", "file_id", "file_offset", "capacity", "future")

    def __init__(self, index, file_id, file_offset, capacity, future):
        self.index, self.file_id, self.file_offset, self.capacity = index, file_id, file_offset, capacity
        self.future = future


class Provisioner:
    def __init__(self, registry: Registry, files: BlockFiles, blocks_dir: str, block_size: int,
                 blocks_per_file: int, next_file_id: int, wake=lambda: None):
        self.registry = registry
        self.files = files
        self._wake = wake   # (any thread) makes the control loop take a turn soon
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmwal-files")
        self._spares = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmwal-spares",
                                          initializer=priority.lower_this_thread)
        self._faulting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmwal-populate",
                                            initializer=priority.lower_this_thread)
        self._populate_broken = False
        self._wanted: dict[str, int] = {}         # topic -> chain slots to have allocated ahead of its writer
        self._readying: dict[str, _Readying] = {}   # at most one a topic, so its slots fill in order
        self._draining_seen = 0
        self.allocator = BlockAllocator(blocks_dir, block_size, blocks_per_file, next_file_id,
                                        submit=self._disk.submit)

    # ------------------------------------------------------------------ on request
    def alloc_block(self, topic, chain_index, min_capacity, tid=None, **_):
        """Give chain slot ``chain_index`` of ``topic`` a block of at least ``min_capacity``.

        The caller holds the topic's writer mutex and waits for the answer, so
        the slots at and above H_PUBLISHED_BLOCKS are ours to write meanwhile.
        """
        meta = self.registry.get(topic).meta
        chain_index, min_capacity = int(chain_index), int(min_capacity)
        if topic in self._readying:
            self._settle(topic)   # its storage is on the way: sooner than starting another
        if chain_index >= L.CHAIN_SLOTS:
            raise ShmwalError(f"topic {topic} has used all {L.CHAIN_SLOTS} chain slots")
        if not 0 < min_capacity <= L.MAX_BATCH_BYTES + L.BLOCK_HEADER_SIZE + MAX_REQUEST_SLACK:
            raise ValueError("implausible block capacity")
        with chain_mutex(meta):
            # The request may come from an appender that died after sending it:
            # act only for the one holding the writer mutex now (the slots are its).
            if tid is None or meta.writer_tid() != int(tid):
                raise ShmwalError("the requester no longer holds the topic's writer mutex")
            allocated = meta.get(L.H_ALLOCATED_BLOCKS)
            if not meta.get(L.H_PUBLISHED_BLOCKS) <= chain_index <= allocated:
                raise ShmwalError(f"chain slot {chain_index} is not the topic's next")
            if chain_index < allocated:
                old_file, old_offset, capacity, _ = meta.chain(chain_index)
                if capacity >= min_capacity:
                    return {"reused": True}
                if capacity:
                    self.allocator.free(old_file, old_offset)  # a pending block too small: replace it
            return {"file_id": self._allocate_slot(meta, chain_index, min_capacity)}

    # ------------------------------------------------------------------ ahead of need
    # Keep SPARE_BLOCKS blocks allocated ahead of every busy writer, in two steps the
    # broker's loop takes each turn with the busy topics' reclamation between them:
    # ``look`` notes which writers moved, ``ready`` readies their spares (a block just
    # reclaimed is reused when it can be). A writer then moves to its next block without
    # asking us, and the block's pages are already faulted in (on a real disk,
    # converting pre-allocated extents costs as much per entry as the rest of an
    # append). Spares cost space, so only for writers that fill blocks (moved twice
    # within BUSY_WITHIN, or past two blocks between two looks: a topic of a few entries
    # gets none, and its first block is small anyway), and only while the filesystem
    # keeps room (``_room_for``): a writer that finds no spare asks for its block itself.
    # A writer that moves says so (the "moved" message, client Link.moved), which wakes
    # the loop: a full block lasts milliseconds under load, and an idle loop looks only
    # every IDLE_LOOK_EVERY (broker.py).
    def look(self) -> bool:
        """Note which writers moved since the last look and how many spares each wants.
        True when there is anything to follow up: a writer moved, or spares are wanted
        or on the way."""
        self._settle()
        moved = False
        if self.allocator.draining_changes != self._draining_seen:
            self._draining_seen = self.allocator.draining_changes
            self._release_spares_in_draining_files()
        for state in list(self.registry.topics.values()):
            meta = state.meta
            tail = meta.get(L.H_TAIL_CHAIN)
            if tail == state.seen_tail:
                continue
            seen, state.seen_tail = state.seen_tail, tail
            state.busy = moved = True
            now = time.monotonic()
            previous_move, state.moved_at = state.moved_at, now
            if tail == L.NO_BLOCK:
                continue
            if tail == 0 or self._small(tail - 1):
                continue   # only the small first block filled so far
            moved_over = tail + 1 if seen == L.NO_BLOCK else tail - seen   # blocks filled since our last look
            if moved_over >= 2 or now - previous_move <= BUSY_WITHIN:
                self._want(meta.name, tail + 1 + SPARE_BLOCKS)
        return moved or bool(self._wanted) or bool(self._readying)

    def ready(self) -> None:
        """Start readying what ``look`` found wanted, one spare a topic at a time; blocks the
        topic's own reclamation offered go in at once, as many as are wanted."""
        for topic in list(self._wanted):
            while self._ready_next(topic):
                pass

    def _release_spares_in_draining_files(self) -> None:
        """A spare reused from a file that now drains (allocator.free, release_space=False)
        would keep that file, and the kept block's space, for as long as its writer is idle:
        give back the spares of every topic that has one there (its next move asks again)."""
        for state in list(self.registry.topics.values()):
            meta = state.meta
            published = meta.get(L.H_PUBLISHED_BLOCKS)
            unused = range(published, min(meta.get(L.H_ALLOCATED_BLOCKS), L.CHAIN_SLOTS))
            if any(meta.chain(i)[3] == L.UNSET and self.allocator.draining(meta.chain(i)[0]) for i in unused):
                self._wanted.pop(meta.name, None)
                self._release_spares(meta)   # re-checks each slot under the chain mutex

    def _small(self, chain_index: int) -> bool:
        """Whether the block at ``chain_index`` is one of a topic's small first ones."""
        return L.block_capacity(chain_index, self.allocator.block_size) < self.allocator.block_size

    def _want(self, topic: str, slots: int) -> None:
        self._wanted[topic] = max(self._wanted.get(topic, 0), min(slots, L.CHAIN_SLOTS))

    def _ready_next(self, topic: str) -> bool:
        """Start readying ``topic``'s next spare, if it wants one and none is on the way.
        True when it placed a block now (one the topic's reclamation offered: its storage and
        pages are there already), so the next may go in too. Placing them all in one turn,
        rather than one a turn of the loop, halved the loop turns of a writer of large
        entries: each costs ~40 us of Python, while the pair it serves has both cores busy."""
        if topic in self._readying:
            return False
        meta = self.registry.topics[topic].meta
        with chain_mutex(meta):
            index = meta.get(L.H_ALLOCATED_BLOCKS)
            if index >= self._wanted[topic] or (not self.allocator.reusable(topic) and not self._room_for(index)):
                del self._wanted[topic]
                return False
            reused = self.allocator.reused
            try:
                self._reserve_chain_page(meta, index)
                file_id, file_offset, capacity = self.allocator.alloc(L.BLOCK_HEADER_SIZE, topic, index, space=False)
            except OSError as exc:
                log.warning("could not provision a block for %s: %s", topic, exc)
                del self._wanted[topic]
                return False
            if self.allocator.reused != reused:   # a reclaimed block of this topic: storage and pages in memory
                self._fill_slot(meta, index, file_id, file_offset, capacity)
        if self.allocator.reused != reused:
            return True
        future = self._spares.submit(allocate, self.allocator.directory, file_id, file_offset, capacity)
        self._readying[topic] = _Readying(index, file_id, file_offset, capacity, future)
        future.add_done_callback(lambda _: self._wake())
        return False

    def _settle(self, wait_for: str | None = None) -> None:
        """Put the spares whose storage is ready (and ``wait_for``'s, waiting) in their chain slots."""
        for topic, spare in list(self._readying.items()):
            if topic != wait_for and not spare.future.done():
                continue
            del self._readying[topic]
            try:
                spare.future.result()
            except OSError as exc:
                log.warning("could not provision a block for %s: %s", topic, exc)
                self._wanted.pop(topic, None)
                self.allocator.free(spare.file_id, spare.file_offset)   # and what a failed fallocate kept
                continue
            meta = self.registry.topics[topic].meta
            with chain_mutex(meta):
                # Only into the slot it was readied for: meanwhile a writer may have asked
                # for that slot itself (alloc_block waits for a spare on the way, but a
                # request can come while we place another).
                placed = meta.get(L.H_ALLOCATED_BLOCKS) == spare.index
                if placed:
                    self._fill_slot(meta, spare.index, spare.file_id, spare.file_offset, spare.capacity)
            if placed:
                self._populate(spare.file_id, spare.file_offset, spare.capacity)
            else:
                self.allocator.free(spare.file_id, spare.file_offset)

    def readying_bytes(self, topic: str) -> int:
        """Storage of ``topic``'s spare on the way (part of its disk use)."""
        spare = self._readying.get(topic)
        return spare.capacity if spare is not None else 0

    def _room_for(self, chain_index: int) -> bool:
        """Whether a spare for ``chain_index`` leaves the filesystem room: at least two
        full blocks and a quarter of it free afterwards.  Spares only save a writer a
        request; on a small filesystem (a container's 64 MiB /dev/shm) that space is
        better left for entries, which a writer's own request then gets."""
        try:
            st = os.statvfs(self.allocator.directory)
        except OSError:
            return False
        free_after = st.f_bavail * st.f_frsize - L.block_capacity(chain_index, self.allocator.block_size)
        return free_after >= max(2 * self.allocator.block_size, st.f_blocks * st.f_frsize // 4)

    def _allocate_slot(self, meta: TopicMeta, chain_index: int, min_capacity: int) -> int:
        """Give chain slot ``chain_index`` a fresh block. Caller holds the topic's chain mutex."""
        self._reserve_chain_page(meta, chain_index)
        file_id, file_offset, capacity = self.allocator.alloc(min_capacity, meta.name, chain_index)
        self._fill_slot(meta, chain_index, file_id, file_offset, capacity)
        return file_id

    @staticmethod
    def _reserve_chain_page(meta: TopicMeta, chain_index: int) -> None:
        if chain_index % L.CHAIN_SLOTS_PER_PAGE == 0:
            try:
                meta.reserve_chain_slot(chain_index)   # ENOSPC here is an error, not a SIGBUS later
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                raise no_space(os.path.dirname(meta.path), L.PAGE,
                               f"the next page of topic {meta.name!r}'s chain") from None

    @staticmethod
    def _fill_slot(meta: TopicMeta, chain_index: int, file_id: int, file_offset: int, capacity: int) -> None:
        """Fields first, the count last: a writer never sees half a slot. Under the chain mutex."""
        meta.set_chain_slot(chain_index, file_id, file_offset, capacity)
        if chain_index == meta.get(L.H_ALLOCATED_BLOCKS):
            meta.set(L.H_ALLOCATED_BLOCKS, chain_index + 1)

    def _release_spares(self, meta: TopicMeta) -> None:
        """(clean stop, or spares in a draining file) Take back the blocks handed out
        ahead that no writer moved into.

        Under the chain mutex, from the top down: the count shrinks before a
        block's space goes, so a broker killed midway leaves no slot pointing at
        a hole.  A slot a writer moved into has its first offset set (it does that
        under this mutex); there the walk stops.  A writer that moves on later
        finds fewer slots and asks for its block (``alloc_block``).
        """
        with chain_mutex(meta):
            index = meta.get(L.H_ALLOCATED_BLOCKS)
            published = meta.get(L.H_PUBLISHED_BLOCKS)
            while index > published and meta.chain(index - 1)[3] == L.UNSET:
                index -= 1
                file_id, file_offset, capacity, _ = meta.chain(index)
                meta.set(L.H_ALLOCATED_BLOCKS, index)
                meta.set(L.chain_slot_at(index) + L.C_CAPACITY, 0)
                if capacity:
                    self.allocator.free(file_id, file_offset)

    def _populate(self, file_id: int, file_offset: int, capacity: int) -> None:
        if not self._populate_broken:
            self._faulting.submit(self._populate_now, file_id, file_offset, capacity)

    def _populate_now(self, file_id: int, file_offset: int, capacity: int) -> None:
        """(populate thread) Fault a block's pages in through a mapping of its own."""
        try:
            fd = os.open(self.files.path(file_id), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return   # reclaimed meanwhile
        try:
            with mmap.mmap(fd, file_offset + capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                sync.populate_write(mm, file_offset, capacity)   # lets the control loop run meanwhile
        except (OSError, ValueError):
            self._populate_broken = True  # not supported here: writers fault pages in themselves
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Stop the disk threads and give back what holds no entry: the spares, the
        blocks kept for reuse, the prepared next file and files left with no block
        (a stopped broker leaves only what is kept)."""
        self._faulting.shutdown(wait=True, cancel_futures=True)
        self._spares.shutdown(wait=True)
        for spare in self._readying.values():   # in no chain slot: nothing to take back there
            self.allocator.free(spare.file_id, spare.file_offset)
        self._readying.clear()
        for state in list(self.registry.topics.values()):
            try:
                self._release_spares(state.meta)
            except Exception:   # a damaged meta file must not stop the others' shutdown
                log.exception("could not release the spare blocks of %s", state.meta.name)
        self.allocator.expire(float("-inf"))
        self.allocator.release_due(float("inf"))
        self.allocator.stop_handing_out()
        for file_id in self.allocator.deletable():
            self.allocator.forget(file_id)
            self.files.remove(file_id)
        self.allocator.discard_spare()
        self._disk.shutdown(wait=True)
