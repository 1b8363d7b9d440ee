"""The block allocator: a plain object the broker drives (no processes, no locks).

Blocks are carved from pre-allocated files in order and never reused: a file
is deleted once every block it handed out has been reclaimed and it will
hand out no more (Walrus's scheme).  An entry larger than a block gets a
"jumbo" file holding one block of its own size.

Creating a file (fallocate, fsync, fsync of the directory) can take long on
a real disk, and an appender asking for a block waits holding its topic's
writer mutex.  So, given a ``submit`` (an executor's), the allocator keeps
the next file prepared in the background: a file switch then costs nothing.
"""

from __future__ import annotations

import os

from . import layout as L
from .files import create_block_file


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
        self.live: dict[int, set[int]] = {}  # file_id -> offsets of blocks in use

    def adopt(self, file_id: int, file_offset: int) -> None:
        """Recovery: a chain still uses this block."""
        self.live.setdefault(file_id, set()).add(file_offset)
        self.next_file_id = max(self.next_file_id, file_id + 1)

    def alloc(self, min_capacity: int) -> tuple[int, int, int]:
        """A fresh block of at least ``min_capacity`` bytes: (file_id, file_offset, capacity)."""
        if min_capacity > self.block_size:
            capacity = (min_capacity + L.PAGE - 1) // L.PAGE * L.PAGE
            file_id = self._new_file(capacity)
            self.live[file_id] = {0}
            return file_id, 0, capacity
        if self._current is None or self._next_block >= self.blocks_per_file:
            self._current = self._new_file(self.block_size * self.blocks_per_file)
            self._next_block = 0
            self.live[self._current] = set()
        file_offset = self._next_block * self.block_size
        self._next_block += 1
        self.live[self._current].add(file_offset)
        return self._current, file_offset, self.block_size

    def _new_file(self, size: int) -> int:
        regular = size == self.block_size * self.blocks_per_file
        if regular and self._spare is not None:
            file_id, future = self._spare
            self._spare = None
            try:
                future.result()          # usually long done
            except OSError:
                pass                     # e.g. ENOSPC then: try again now, and let it raise
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
            os.unlink(os.path.join(self.directory, L.block_file_name(file_id)))
        except OSError:
            pass

    def free(self, file_id: int, file_offset: int) -> None:
        self.live.get(file_id, set()).discard(file_offset)

    def deletable(self) -> list[int]:
        """Files whose every handed-out block is free and that will hand out no more."""
        return [f for f, blocks in self.live.items() if not blocks and f != self._current]

    def forget(self, file_id: int) -> None:
        self.live.pop(file_id, None)

    def existing_files(self) -> list[int]:
        found = []
        for name in os.listdir(self.directory):
            file_id = L.parse_block_file_name(name)
            if file_id is not None:
                found.append(file_id)
        return sorted(found)
