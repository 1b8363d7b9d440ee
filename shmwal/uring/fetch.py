"""What batch_read asks of io_uring: one submission for the ranges of a batch.

The reader plans the byte ranges exactly as it walks them with mmap and
decodes the result with the same codec; this object only owns the ring and
the page-aligned arena, and answers "auto"'s question: is this range in
memory already (then copying from the mapping is cheaper than any kernel
read) or not (then io_uring fetches it with all reads in flight at once)?
"""

from __future__ import annotations

import os

from .residency import resident_fraction
from .ring import ReadArena, Ring

RESIDENT_ENOUGH = 0.5     # "auto" reads through the mapping at or above this fraction
PROBE_BYTES = 1 << 20     # how much of the first range "auto" asks mincore about


class UringFetcher:
    def __init__(self, mode: str):
        self.mode = mode      # "uring": always; "auto": only for data not in memory
        self._pid = -1
        self._ring = None
        self._arena = None

    def worth_it(self, mapping, position: int, length: int) -> bool:
        if self.mode == "uring":
            return True
        return resident_fraction(mapping, position, min(length, PROBE_BYTES)) < RESIDENT_ENOUGH

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
