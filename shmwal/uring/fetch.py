"""What batch_read asks of io_uring: one submission for the ranges of a batch.

The reader plans the byte ranges exactly as it walks them with mmap and
decodes the result with the same codec; this object only owns the ring and
the page-aligned arena (one per process: a ring cannot cross fork()).
"""

from __future__ import annotations

import os

from .ring import ReadArena, Ring


class UringFetcher:
    def __init__(self):
        self._pid = -1
        self._ring = None
        self._arena = None

    def read(self, files, plan, total: int):
        """Read every (block, file_id, position, length, arena offset) of ``plan``; return (view, bytes read each)."""
        if self._pid != os.getpid():   # a ring cannot cross fork(): the child makes its own
            self._ring, self._arena = Ring(256), ReadArena(1 << 20)
            self._pid = os.getpid()
        self._arena.reserve(total)
        requests = [(files.fd(file_id), position, length, at) for _b, file_id, position, length, at in plan]
        got = self._ring.read_ranges(requests, self._arena, allow_short=True)
        return self._arena.view(total), got

    def close(self) -> None:
        if self._pid == os.getpid():
            self._ring.close()
            self._arena.close()
        self._ring = self._arena = None
        self._pid = -1
