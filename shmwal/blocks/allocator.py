"""The block allocator: a plain object the broker drives (no processes, no locks).

Blocks are carved from pre-allocated files in order and never reused: a file
is deleted once every block it handed out has been reclaimed and it will
hand out no more (Walrus's scheme).  An entry larger than a block gets a
"jumbo" file holding one block of its own size.
"""

from __future__ import annotations

import os

from . import layout as L
from .files import create_block_file


class BlockAllocator:
    def __init__(self, directory: str, block_size: int, blocks_per_file: int, next_file_id: int = 1):
        self.directory = directory
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
        file_id = self.next_file_id
        create_block_file(self.directory, file_id, size)
        self.next_file_id += 1
        return file_id

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
