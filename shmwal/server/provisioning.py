"""Blocks for writers: handed out on request (``alloc_block``) and ahead of need (``provision``).

An appender that fills its block moves to the next chain slot.  If the
broker already put a block there (``provision``: SPARE_BLOCKS ahead of every
writer that moved), the appender never asks; otherwise it asks with
``alloc_block`` while holding the topic's writer mutex.  Either way the broker
writes only slots at or above ``H_ALLOCATED_BLOCKS`` (fields first, the count
last), under the topic's chain mutex, so a writer never sees half a slot.

Disk work no appender may wait for runs on two threads of its own: the next
block file (the allocator prepares it ahead), and faulting in blocks handed
out ahead (the populate thread), so a long populate never delays a file switch.
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
from ..blocks.files import BlockFiles
from ..blocks.meta import TopicMeta
from ..errors import ShmwalError
from ..ipc import sync
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


class Provisioner:
    def __init__(self, registry: Registry, files: BlockFiles, blocks_dir: str, block_size: int,
                 blocks_per_file: int, next_file_id: int):
        self.registry = registry
        self.files = files
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmwal-files")
        self._faulting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmwal-populate")
        self._populate_broken = False
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
    def provision(self) -> None:
        """Keep SPARE_BLOCKS blocks allocated ahead of every busy writer.

        A writer then moves to its next block without asking us, and the
        block's pages are already faulted in (on a real disk, converting
        pre-allocated extents costs as much per entry as the rest of an append).
        Spares cost space, so only for writers that fill blocks (moved twice
        within BUSY_WITHIN, or past two blocks between two looks: a topic of a
        few entries gets none, and its first blocks are small anyway), and only while the filesystem keeps room
        (``_room_for``): a writer that finds no spare asks for its block itself.
        """
        for state in list(self.registry.topics.values()):
            meta = state.meta
            tail = meta.get(L.H_TAIL_CHAIN)
            if tail == state.seen_tail:
                continue
            seen, state.seen_tail = state.seen_tail, tail
            state.busy = True
            now = time.monotonic()
            previous_move, state.moved_at = state.moved_at, now
            if tail == L.NO_BLOCK:
                continue
            moved_over = tail + 1 if seen == L.NO_BLOCK else tail - seen   # blocks filled since our last look
            if moved_over < 2 and now - previous_move > BUSY_WITHIN:
                continue
            fresh = []
            with chain_mutex(meta):
                while meta.get(L.H_ALLOCATED_BLOCKS) < min(tail + 1 + SPARE_BLOCKS, L.CHAIN_SLOTS):
                    index = meta.get(L.H_ALLOCATED_BLOCKS)
                    reused = self.allocator.reused
                    if not self.allocator.reusable(meta.name) and not self._room_for(index):
                        break
                    try:
                        self._allocate_slot(meta, index, L.BLOCK_HEADER_SIZE)
                    except OSError as exc:
                        log.warning("could not provision a block for %s: %s", meta.name, exc)
                        break
                    if self.allocator.reused == reused:   # a reused block's pages are in memory
                        fresh.append(meta.chain(index)[:3])
            for file_id, file_offset, capacity in fresh:   # outside the mutex: it takes a while
                self._populate(file_id, file_offset, capacity)

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
        if chain_index % L.CHAIN_SLOTS_PER_PAGE == 0:
            try:
                meta.reserve_chain_slot(chain_index)   # ENOSPC here is an error, not a SIGBUS later
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                raise no_space(os.path.dirname(meta.path), L.PAGE,
                               f"the next page of topic {meta.name!r}'s chain") from None
        file_id, file_offset, capacity = self.allocator.alloc(min_capacity, meta.name, chain_index)
        meta.set_chain_slot(chain_index, file_id, file_offset, capacity)
        if chain_index == meta.get(L.H_ALLOCATED_BLOCKS):
            meta.set(L.H_ALLOCATED_BLOCKS, chain_index + 1)
        return file_id

    def _release_spares(self, meta: TopicMeta) -> None:
        """(clean stop) Take back the blocks handed out ahead that no writer moved into.

        Under the chain mutex, from the top down: the count shrinks before a
        block's space goes, so a broker killed midway leaves no slot pointing at
        a hole.  A slot a writer moved into has its first offset set (it does that
        under this mutex); there the walk stops.  Clients append only through a
        live broker, so none moves on meanwhile; the next broker provisions anew.
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
        for state in list(self.registry.topics.values()):
            try:
                self._release_spares(state.meta)
            except Exception:   # a damaged meta file must not stop the others' shutdown
                log.exception("could not release the spare blocks of %s", state.meta.name)
        self.allocator.expire(float("-inf"))
        self.allocator.release_due(float("inf"))
        for file_id in self.allocator.deletable():
            self.allocator.forget(file_id)
            self.files.remove(file_id)
        self.allocator.discard_spare()
        self._disk.shutdown(wait=True)
