"""Keeping the memory of big batch reads in the process (glibc's malloc trim threshold).

A copying ``batch_read`` of large entries makes one ``bytes`` object per entry, all
from malloc's main heap; when the caller drops the batch they are freed together,
the free space at the top of the heap passes ``M_TRIM_THRESHOLD`` (128 KiB by
default) and glibc hands it back to the kernel, which faults every page in again,
zeroed, for the next batch.  Measured (64 KiB entries, one process): 92 page faults
per MB read with 1 MiB budgets, 242 (every page) with 64 MiB budgets, none for
``read_next``; batches ran at a third to a half of ``read_next``'s speed per byte.

So once a batch has copied ``total`` bytes, the trim threshold is raised to three
times that (never lowered, at most ``MAX_RETAINED``): the next batch reuses the freed
memory.  Three, not two: a caller that keeps the previous batch while it reads the next
(``while batch := client.batch_read(...)``) has two batches in use, and freed they leave
a free top of the heap of about 2B, which a threshold of 2B could trim (64 KiB entries,
64 MiB budgets, ``python scripts/bench_batch_memory.py --budgets 64MiB``: 167 page faults a
MB on every pass, 0.0 with 3B).  The cost is the point: a process that read a batch of B
bytes keeps up to about 3B of freed heap for later allocations instead of returning it (as
with ``MALLOC_TRIM_THRESHOLD_=3B``).  Setting the trim threshold stops glibc's dynamic
mmap threshold, so ``M_MMAP_THRESHOLD`` is set with it, to 32 MiB, the highest value
that dynamic threshold reaches: entries up to that size keep coming from the heap,
as they did once glibc had adapted.

Process-wide by nature (mallopt has no narrower scope), done only by processes
that read batches of more than 64 KiB, only on glibc, and never where the user
chose malloc settings (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``GLIBC_TUNABLES`` naming either) or set ``SHMWAL_KEEP_MALLOC=1``.
"""

from __future__ import annotations

import ctypes
import os
import platform

from ..ipc.libc import function as libc_function
from .hot import native

M_TRIM_THRESHOLD = -1          # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20      # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
MAX_RETAINED = 1 << 30         # a trim threshold above this would keep too much for too little
RETAIN_FACTOR = 3              # the trim threshold over the largest batch (module docstring)
DEFAULT_TRIM = 128 << 10       # glibc's M_TRIM_THRESHOLD default


def _mallopt():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if os.environ.get("SHMWAL_KEEP_MALLOC", "") not in ("", "0"):
        return None
    if any(name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return None
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "trim_threshold" in tunables or "mmap_threshold" in tunables:
        return None
    try:
        return libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    except AttributeError:   # not glibc
        return None


_set = _mallopt()
# Batches copying at most this much are left alone: freeing them never passes the
# default trim threshold by much, and a batch read of small entries pays nothing.
retained = DEFAULT_TRIM // 2 if _set is not None else MAX_RETAINED


def _keep(value: int) -> None:
    """``retained`` = value, here and in hot.c: its batch take (Reader.take) copies no more,
    so that every batch that needs ``retain`` takes the Python read, which calls it."""
    global retained
    retained = value
    if native is not None:
        native.retained_bytes(value)


def retain(total: int) -> None:
    """A batch just copied ``total`` bytes into new objects: keep their memory when they go."""
    if total <= retained:
        return
    threshold = min(MAX_RETAINED, max(RETAIN_FACTOR * total, 1 << 20))
    if retained < DEFAULT_TRIM and _set(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        _keep(MAX_RETAINED)   # refused: leave malloc as it is for good
        return
    if _set(M_TRIM_THRESHOLD, threshold) != 1:
        _keep(MAX_RETAINED)
        return
    _keep(threshold // RETAIN_FACTOR if threshold < MAX_RETAINED else MAX_RETAINED)


def settle() -> bool:
    """Put malloc where glibc's own tuning takes a long-running process once it has freed a
    32 MiB block (mmap threshold 32 MiB, trim threshold 64 MiB), whatever this process or
    the parent it forked from freed before; False where malloc is left alone (as above).

    For benchmarks: a forked child inherits its parent's thresholds, and a queue that
    allocates a fresh 1 MiB object per message ran 10x slower or faster depending on them
    (shmwal/bench/workers.py settles every contender's processes alike)."""
    if _set is None:
        return False
    if _set(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or _set(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD) != 1:
        return False
    _keep(max(retained, 2 * MMAP_THRESHOLD // RETAIN_FACTOR))
    return True


_keep(retained)
