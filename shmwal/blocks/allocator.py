"""The block allocator: a plain object the broker drives.

Blocks are carved from sparse files in order, one slot of ``block_size``
bytes each; a block takes space only for its own capacity, allocated here
before it is handed out (the SIGBUS invariant: see files.py) and released
when it is freed.  A topic's first block is small
(``layout.block_capacity``), so a small topic takes little space.  A file is
deleted once every block it handed out has been reclaimed and it will hand
out no more (Walrus's scheme).  An entry larger than a block gets a "jumbo"
file holding one block of its own size.

Reuse: the broker hands a topic's reclaimed blocks back (``offer``) and
``alloc`` gives them to the same topic again before carving new ones.  Their
pages are already in memory (and allocated): on the machines measured a page
never touched costs 1-2.7 us to fault in against 0.05 us for one touched
before (README, "Benchmarks").  Only the same topic: its offsets only grow, so
whatever a reused block still holds has offsets below anything written into it
later, and every walker (readers, recovery, verify) stops at a record out of
sequence: stale bytes can never pass for entries, even after a power cut
that lost the new ones.  An offered block stays live (its file and its space
are kept) until it is reused or ``expire`` lets it go.
"""

from __future__ import annotations

import errno
import os
import time
from collections import deque

from . import layout as L
from .files import allocate, create_block_file, open_read_only, release


RELEASE_GRACE = 2.0   # seconds between a block being freed and its space being punched out


class BlockAllocator:
    def __init__(self, directory: str, block_size: int, blocks_per_file: int, next_file_id: int = 1,
                 submit=None):
        self.directory = directory
        self._submit = submit                # fn(callable, *args) -> Future, or None: all synchronous
        self._spare = None                   # (file_id, Future) of the next file being prepared
        self.block_size = block_size
        self.blocks_per_file = blocks_per_file
        self.next_file_id = max(1, next_file_id)
        self._current: int | None = None     # file handing out blocks
        self._next_block = 0
        self.live: dict[int, dict[int, int]] = {}   # file_id -> {offset of a block in use: its capacity}
        self._reusable: dict[str, deque] = {}   # topic -> (file_id, file_offset, offered at)
        # Files holding a block freed with its bytes kept (a zero-copy reader died with views
        # out): their space goes only with the file, so their blocks are not reused but freed,
        # and the file drains. Reused, they could circulate in a busy topic for ever.
        self._draining: set[int] = set()
        self.draining_changes = 0   # grows when a file starts draining (provisioning: spares there go)
        self.reused = 0                      # blocks handed out again (stats)
        # Freed blocks whose space goes after RELEASE_GRACE: (when, file_id, file_offset, capacity).
        # A reader that raced reclamation (a peek from an oldest offset it loaded just before)
        # may still look at a freed block for a moment; on tmpfs even a read of a hole
        # allocates a page, and on a full one that is a SIGBUS.  Deleting files waits too.
        self._releasing: deque = deque()

    def adopt(self, file_id: int, file_offset: int, capacity: int) -> None:
        """Recovery: a chain still uses this block."""
        self.live.setdefault(file_id, {})[file_offset] = capacity
        self.next_file_id = max(self.next_file_id, file_id + 1)

    def alloc(self, min_capacity: int, topic: str | None = None,
              chain_index: int | None = None, space: bool = True) -> tuple[int, int, int]:
        """A block of at least ``min_capacity`` bytes for ``topic``: (file_id, file_offset, capacity).

        Its ``capacity`` bytes have storage (allocated here, or kept since it was
        offered for reuse).  ``chain_index`` sizes a topic's first block small
        (layout.block_capacity); None: a full block.  A full disk raises
        OSError(ENOSPC) saying where and how much, and hands out nothing.

        ``space=False``: a block carved from a shared file comes without storage, for the caller
        to ``files.allocate`` off this thread before anyone may touch it (and to
        ``free`` if that fails); a reused block (``reused`` grew) has its storage.
        """
        wanted = self.block_size if chain_index is None else L.block_capacity(chain_index, self.block_size)
        capacity = max(wanted, (min_capacity + L.PAGE - 1) // L.PAGE * L.PAGE)
        if capacity > self.block_size:
            file_id = self._new_file(capacity)
            try:
                self._allocate(file_id, 0, capacity, topic)
            except OSError:
                self._unlink(file_id)
                raise
            self.live[file_id] = {0: capacity}
            return file_id, 0, capacity
        pool = self._reusable.get(topic)
        while pool:
            file_id, file_offset, _ = pool.pop()   # the most recently freed: warmest in the caches
            if file_id in self._draining:
                self.free(file_id, file_offset)
                continue
            self.reused += 1
            return file_id, file_offset, self.block_size
        if self._current is None or self._next_block >= self.blocks_per_file:
            self._start_file()
        file_offset = self._next_block * self.block_size
        if space:
            self._allocate(self._current, file_offset, capacity, topic)   # before the slot counts as taken
        self._next_block += 1
        self.live[self._current][file_offset] = capacity
        return self._current, file_offset, capacity

    def _allocate(self, file_id: int, file_offset: int, capacity: int, topic: str | None) -> None:
        try:
            allocate(self.directory, file_id, file_offset, capacity)
        except OSError as exc:
            release(self.directory, file_id, file_offset, capacity)   # what a failed fallocate may have kept (ext4)
            if exc.errno != errno.ENOSPC:
                raise
            if self._reusable or self._releasing:
                # Blocks kept for reuse only save page faults, and freed ones wait only for
                # stray readers: entries come first.
                self.expire(float("-inf"))
                self.release_due(float("inf"))
                return self._allocate(file_id, file_offset, capacity, topic)
            raise no_space(self.directory, capacity, f"a new block of topic {topic!r}" if topic else "a new block") \
                from None

    def open_first_file(self) -> None:
        """(broker start) Make the file the next blocks come from, and the one after it.

        Otherwise the first ``alloc_block`` creates them while its writer waits
        (a truncate and fsyncs of each file and the directory: 1-3 ms on ext4
        here), and the next file's fsyncs run while the first writers write.
        """
        if self._current is None:
            self._start_file()
        if self._spare is not None:
            try:
                self._spare[1].result()
            except OSError:
                pass   # _new_file tries again when it needs it, and raises then

    def _start_file(self) -> None:
        """Carve the next blocks from a new regular file."""
        self._current = self._new_file(self.block_size * self.blocks_per_file)
        self._next_block = 0
        self.live[self._current] = {}

    def _new_file(self, size: int) -> int:
        regular = size == self.block_size * self.blocks_per_file
        if regular and self._spare is not None:
            file_id, future = self._spare
            self._spare = None
            try:
                future.result()          # usually long done
            except OSError:
                pass                     # then try again now, and let it raise
            else:
                self._prepare_spare()
                return file_id
        file_id = self.next_file_id
        self.next_file_id += 1
        create_block_file(self.directory, file_id, size)
        if regular:
            self._prepare_spare()
        return file_id

    def _prepare_spare(self) -> None:
        """Make the next regular file off the caller's path (a sparse file, but its fsyncs take a while)."""
        if self._submit is None:
            return
        file_id = self.next_file_id
        self.next_file_id += 1
        self._spare = (file_id, self._submit(create_block_file, self.directory, file_id,
                                             self.block_size * self.blocks_per_file))

    def discard_spare(self) -> None:
        """At shutdown: the prepared file holds nothing; remove it."""
        spare, self._spare = self._spare, None
        if spare is None:
            return
        file_id, future = spare
        try:
            future.result()
        except OSError:
            return
        self._unlink(file_id)

    def _unlink(self, file_id: int) -> None:
        try:
            os.unlink(os.path.join(self.directory, L.block_file_name(file_id)))
        except OSError:
            pass

    def free(self, file_id: int, file_offset: int, release_space: bool = True) -> None:
        """A block nothing uses any more.  ``release_space=False`` keeps its bytes (a
        zero-copy view may still read them; the space then goes with its file)."""
        capacity = self.live.get(file_id, {}).pop(file_offset, None)
        if capacity and not release_space:
            self._draining.add(file_id)
            self.draining_changes += 1
            if file_id == self._current:
                self._current = None   # carve no more from it: once empty it can go
        if capacity and release_space:
            self._releasing.append((time.monotonic() + RELEASE_GRACE, file_id, file_offset, capacity))

    def release_due(self, now: float | None = None) -> None:
        """Punch out the space of the blocks freed at least RELEASE_GRACE before ``now``
        (``float("inf")``: all of them, at a clean stop or when the disk is full)."""
        now = time.monotonic() if now is None else now
        while self._releasing and self._releasing[0][0] <= now:
            _, file_id, file_offset, capacity = self._releasing.popleft()
            release(self.directory, file_id, file_offset, capacity)

    def draining(self, file_id: int) -> bool:
        return file_id in self._draining

    def offer(self, topic: str, file_id: int, file_offset: int) -> None:
        """A full block ``topic`` no longer uses, to give it again (it stays live and allocated meanwhile)."""
        if file_id in self._draining:
            self.free(file_id, file_offset)
            return
        self._reusable.setdefault(topic, deque()).append((file_id, file_offset, time.monotonic()))

    def expire(self, ttl: float) -> None:
        """Free the offered blocks not taken within ``ttl`` seconds (their space and files may then go)."""
        deadline = time.monotonic() - ttl
        for topic, pool in list(self._reusable.items()):
            while pool and pool[0][2] <= deadline:
                file_id, file_offset, _ = pool.popleft()
                self.free(file_id, file_offset)
            if not pool:
                del self._reusable[topic]

    def reusable(self, topic: str) -> int:
        return len(self._reusable.get(topic, ()))

    def reusable_bytes(self, topic: str) -> int:
        """Space the blocks offered back to ``topic`` keep (part of its disk use)."""
        return sum(self.live.get(f, {}).get(o, 0) for f, o, _ in self._reusable.get(topic, ()))

    def deletable(self) -> list[int]:
        """Files whose every handed-out block is free and that will hand out no more."""
        return [f for f, blocks in self.live.items() if not blocks and f != self._current]

    def stop_handing_out(self) -> None:
        """(clean stop) The current file hands out no more: ``deletable`` then includes it
        if it holds no block (the next broker starts a file of its own)."""
        self._current = None

    def forget(self, file_id: int) -> None:
        self.live.pop(file_id, None)
        self._draining.discard(file_id)

    def release_unclaimed(self) -> int:
        """(recovery) Queue for release the storage of every part of a kept file that no
        chain holds: blocks a killed broker had outside every chain (offered for reuse,
        freed within their grace, a spare prepared but not yet in a chain) and the tail of
        a small block's slot. Otherwise that space stays taken until the file is deleted,
        which for a file holding one retained block is never.

        A block whose header counts zero-copy pins keeps its bytes (a view may still read
        them, as ``free(release_space=False)`` keeps them); the rest goes after
        RELEASE_GRACE, as any freed block does. Returns the bytes queued.

        The file blocks are carved from now is left alone whenever this runs: its slots not
        handed out yet are no one's, but will be, within the grace."""
        when = time.monotonic() + RELEASE_GRACE
        queued = 0
        for file_id, blocks in self.live.items():
            if file_id == self._current:
                continue
            fd = open_read_only(os.path.join(self.directory, L.block_file_name(file_id)))
            if fd is None:
                continue
            try:
                size = os.fstat(fd).st_size
                for start, end in _uncovered(blocks, size):
                    for piece_start, piece_end in _slot_pieces(start, end, self.block_size):
                        if piece_start % self.block_size == 0 and _pins(fd, piece_start):
                            continue
                        self._releasing.append((when, file_id, piece_start, piece_end - piece_start))
                        queued += piece_end - piece_start
            finally:
                os.close(fd)
        return queued

    def existing_files(self) -> list[int]:
        found = []
        for name in os.listdir(self.directory):
            file_id = L.parse_block_file_name(name)
            if file_id is not None:
                found.append(file_id)
        return sorted(found)


def no_space(directory: str, needed: int, what: str) -> OSError:
    """ENOSPC that says which directory is full and how much was needed (still an OSError: callers catch it)."""
    try:
        st = os.statvfs(directory)
        free = f"{st.f_bavail * st.f_frsize:,} bytes free of {st.f_blocks * st.f_frsize:,}"
    except OSError:
        free = "free space unknown"
    return OSError(errno.ENOSPC, f"No space left on device: {directory} is full ({free}); "
                                 f"{what} needed {needed:,} bytes")


def _uncovered(blocks: dict[int, int], size: int) -> list[tuple[int, int]]:
    """The ranges of ``[0, size)`` outside every block (offset -> capacity)."""
    gaps, at = [], 0
    for start, capacity in sorted(blocks.items()) + [(size, 0)]:
        if start > at:
            gaps.append((at, min(start, size)))
        at = max(at, start + capacity)
    return [(a, b) for a, b in gaps if b > a]


def _slot_pieces(start: int, end: int, block_size: int):
    """``[start, end)`` cut at every slot boundary."""
    while start < end:
        piece_end = min(end, (start // block_size + 1) * block_size)
        yield start, piece_end
        start = piece_end


def _pins(fd: int, block_offset: int) -> int:
    """The zero-copy pins counted in the header of a block at ``block_offset`` (0 for a hole).
    Read with pread, not through a mapping: reading a hole through a mapping allocates a
    page on tmpfs (a SIGBUS when it is full), and most of what is looked at here is holes."""
    word = os.pread(fd, 8, block_offset + L.B_PINS)
    return int.from_bytes(word, "little") if len(word) == 8 else 0
