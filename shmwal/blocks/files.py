"""Block files: create, allocate and release space (broker), map (everyone), fsync and delete (broker).

A block file is sparse: it is made at its full size but takes no space until
the broker allocates a block's range in it (``allocate``), and a block that
goes back to the free pool gives its space back (``release``).  So a topic's
files grow with its data, not by a whole file at a time.

The invariant that keeps writers safe: **every byte a writer may store to is
allocated before the block is handed out.**  Writers store through MAP_SHARED
mappings, and a store into an unallocated hole of a file on a full filesystem
is a SIGBUS, not an error; ``posix_fallocate`` beforehand turns a full disk
into an ENOSPC the broker reports.  ``BlockAllocator.alloc`` is the only
place that hands blocks out and it allocates each one first; ``release`` is
called only for blocks no chain, no writer and no zero-copy view uses.

A process maps each block file it touches once, whole and shared, and keeps
the mapping: every later access is a slice of memory.  Reading a hole gives
zeros (walkers stop there: no record has a zero header), never a fault, since
the file has its full size.  Mappings of files the broker deleted stay valid
until dropped, so a reader never faults on a file reclaimed under it; ``drop``
releases them once the topic moved past.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time

from . import layout as L
from ..ipc.fsio import fsync_dir
from ..ipc.libc import function as libc_function

_fallocate = libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def create_block_file(directory: str, file_id: int, size: int) -> str:
    """Create a sparse block file of ``size`` bytes (0600, never overwriting one).

    It takes no space yet: ``allocate`` gives each block its storage when the
    block is handed out.  Durable before it is used: file, then directory.
    """
    path = os.path.join(directory, L.block_file_name(file_id))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            fd = -1
            os.unlink(path)
            raise
    finally:
        if fd >= 0:
            os.close(fd)
    fsync_dir(directory)
    return path


def allocate(directory: str, file_id: int, offset: int, length: int) -> None:
    """Give ``[offset, offset + length)`` of a block file storage (see the module docstring).

    Raises OSError (ENOSPC on a full filesystem) and then has allocated
    nothing a writer will be told about.
    """
    fd = os.open(os.path.join(directory, L.block_file_name(file_id)), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.posix_fallocate(fd, offset, length)
    finally:
        os.close(fd)


def release(directory: str, file_id: int, offset: int, length: int) -> bool:
    """Give a free block's storage back (punch a hole; the file keeps its size).

    Only for blocks nothing reads or writes any more: their bytes become
    zeros.  Returns False where the filesystem cannot punch holes (the space
    then goes with the file).
    """
    try:
        fd = os.open(os.path.join(directory, L.block_file_name(file_id)), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False   # deleted meanwhile: its space is gone with it
    try:
        return _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0
    finally:
        os.close(fd)


def open_read_only(path: str) -> int | None:
    """A read-only descriptor of a block file (never through a symlink), or None if it is gone."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None


def allocated_bytes(path: str) -> int:
    """What a file takes on disk (st_blocks, in 512-byte units: not its apparent size); 0 if gone."""
    try:
        return os.stat(path, follow_symlinks=False).st_blocks * 512
    except OSError:
        return 0


class BlockFiles:
    """This process's mappings (and, on demand, descriptors) of one namespace's block files."""

    SWEEP_EVERY = 1.0  # seconds between looks for mapped files the broker deleted

    def __init__(self, directory: str):
        self.directory = directory
        self._maps: dict[int, mmap.mmap] = {}
        self._fds: dict[int, int] = {}
        # (st_dev, st_ino) of the file a file id's mapping and descriptor hold: a broker
        # started on a directory made anew numbers its files from 0 again, and a path
        # that names another file than ours is as gone as a deleted one (_replaced).
        self._ids: dict[int, tuple[int, int]] = {}
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
                st = os.fstat(fd)
                if st.st_size == 0:   # mmap refuses empty files: a damaged (truncated) one
                    raise OSError(errno.ENODATA, f"block file {L.block_file_name(file_id)} is empty")
                mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            self._hold(file_id, st)
            self._maps[file_id] = mm
        return mm

    def fd(self, file_id: int) -> int:
        fd = self._fds.get(file_id)
        if fd is None:
            self.maybe_sweep()
            fd = os.open(self.path(file_id), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            self._hold(file_id, os.fstat(fd))
            self._fds[file_id] = fd
        return fd

    def _hold(self, file_id: int, st: os.stat_result) -> None:
        """Note which file ``file_id`` now names; handles of another file under it go."""
        identity = (st.st_dev, st.st_ino)
        if self._ids.get(file_id, identity) != identity:
            self.drop(file_id)
        self._ids[file_id] = identity

    def _replaced(self, file_id: int) -> bool:
        """Whether the path no longer names the file we hold (deleted, or another one since)."""
        try:
            st = os.stat(self.path(file_id))
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ids.get(file_id)

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
        self._ids.pop(file_id, None)

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
        gone = [f for f in {**self._maps, **self._fds} if self._replaced(f)]
        for file_id in gone:
            self.drop(file_id)
        if gone:
            self.generation += 1

    def release_deleted(self) -> None:
        """(any thread, e.g. a client's watcher) Unmap the files the broker deleted (or
        replaced: a broker on a directory made anew).

        Only mappings: a descriptor may be in use by an io_uring read on another
        thread, and closing it there could hand its number to another file (the
        next map/fd miss sweeps those).  A mapping a zero-copy view or the
        compiled path still exports stays (close raises BufferError, kept by
        drop); any other user of a closed one is a reader of a reclaimed block,
        which reads a closed mapping as a block file gone (reader._take).
        """
        gone = [f for f in list(self._maps) if self._replaced(f)]
        for file_id in gone:
            mm = self._maps.pop(file_id, None)
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    pass
        if gone:
            self.generation += 1

    def mapped(self) -> list[int]:
        return list(self._maps)

    def close(self) -> None:
        for file_id in list(self._maps) + list(self._fds):
            self.drop(file_id)
