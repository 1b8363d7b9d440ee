"""Block files: create (broker), map (everyone), fsync and delete (broker).

A process maps each block file it touches once, whole and shared, and keeps
the mapping: every later access is a slice of memory.  Mappings of files the
broker deleted stay valid until dropped, so a reader never faults on a file
reclaimed under it; ``drop`` releases them once the topic moved past.
"""

from __future__ import annotations

import errno
import mmap
import os
import time

from . import layout as L


def create_block_file(directory: str, file_id: int, size: int) -> str:
    """Create and pre-allocate a block file (0600, never overwriting one)."""
    path = os.path.join(directory, L.block_file_name(file_id))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            os.close(fd)
            fd = -1
            os.unlink(path)
            raise
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


class BlockFiles:
    """This process's mappings (and, on demand, descriptors) of one namespace's block files."""

    SWEEP_EVERY = 1.0  # seconds between looks for mapped files the broker deleted

    def __init__(self, directory: str):
        self.directory = directory
        self._maps: dict[int, mmap.mmap] = {}
        self._fds: dict[int, int] = {}
        self._next_sweep = 0.0
        self.generation = 0   # bumped whenever a mapping is dropped: callers' caches go stale

    def path(self, file_id: int) -> str:
        return os.path.join(self.directory, L.block_file_name(file_id))

    def map(self, file_id: int) -> mmap.mmap:
        mm = self._maps.get(file_id)
        if mm is None:
            self.maybe_sweep()   # a new file to map: a good moment to let go of deleted ones
            fd = os.open(self.path(file_id), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                if os.fstat(fd).st_size == 0:   # mmap refuses empty files: a damaged (truncated) one
                    raise OSError(errno.ENODATA, f"block file {L.block_file_name(file_id)} is empty")
                mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            self._maps[file_id] = mm
        return mm

    def fd(self, file_id: int) -> int:
        fd = self._fds.get(file_id)
        if fd is None:
            self.maybe_sweep()
            fd = os.open(self.path(file_id), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            self._fds[file_id] = fd
        return fd

    def fsync(self, file_id: int) -> None:
        os.fdatasync(self.fd(file_id))

    def drop(self, file_id: int) -> None:
        mm = self._maps.pop(file_id, None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a zero-copy view still uses it; it is unmapped when that goes
        fd = self._fds.pop(file_id, None)
        if fd is not None:
            os.close(fd)

    def remove(self, file_id: int) -> None:
        """(broker) Delete a block file nothing uses any more."""
        self.drop(file_id)
        try:
            os.unlink(self.path(file_id))
        except FileNotFoundError:
            pass

    def maybe_sweep(self) -> None:
        """Drop the mappings of files the broker deleted (rate-limited).

        A deleted file's pages stay allocated while any process maps it, so a
        long-lived client must let go of what reclamation removed.  Called on
        every map/fd miss (a move to a new file), never on the hot path;
        users holding mappings watch ``generation`` to drop their caches.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_EVERY
        # Descriptors too: io_uring reads and fsyncs open files they may never map.
        gone = [f for f in {**self._maps, **self._fds} if not os.path.exists(self.path(f))]
        for file_id in gone:
            self.drop(file_id)
        if gone:
            self.generation += 1

    def mapped(self) -> list[int]:
        return list(self._maps)

    def close(self) -> None:
        for file_id in list(self._maps) + list(self._fds):
            self.drop(file_id)
