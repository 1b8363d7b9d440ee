"""How much of a file range is in the page cache, via mincore(2).

``io="auto"`` asks this before a batch: resident data is cheapest to copy out
of an mmap; cold data is faster through io_uring, which keeps many disk reads
in flight where mmap faults them in one at a time.

mincore reports page-cache residency of a *file* mapping whether or not this
process has touched the pages -- but since Linux 5.2 only if the caller owns
the file or may write to it; otherwise it reports just the pages mapped into
this process, i.e. it under-reports. shmwal's block files are its own.
"""

from __future__ import annotations

import ctypes
import mmap
import operator
import os
import sys

from ..ipc.libc import function as libc_function, oserror

__all__ = ["resident_fraction"]

_PAGE = mmap.PAGESIZE
_LOW_BIT = bytes(b & 1 for b in range(256))  # vec bytes: bit 0 = resident, rest reserved
_MAP_FAILED = ctypes.c_void_p(-1).value

if sys.platform.startswith("linux"):
    _mincore = libc_function("mincore", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p))
    _mmap = libc_function("mmap", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_long), ctypes.c_void_p)
    _munmap = libc_function("munmap", (ctypes.c_void_p, ctypes.c_size_t))


class _Py_buffer(ctypes.Structure):
    # Include/pybuffer.h (stable ABI since 3.11).
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_GetBuffer.argtypes = (ctypes.py_object, ctypes.POINTER(_Py_buffer), ctypes.c_int)
_GetBuffer.restype = ctypes.c_int
_ReleaseBuffer = ctypes.pythonapi.PyBuffer_Release
_ReleaseBuffer.argtypes = (ctypes.POINTER(_Py_buffer),)
_ReleaseBuffer.restype = None


_oserror = oserror


def _fraction(address: int, length: int) -> float:
    """Fraction of the pages under ``[address, address+length)`` that are resident."""
    start = address & ~(_PAGE - 1)
    npages = (address + length - start + _PAGE - 1) // _PAGE
    vec = ctypes.create_string_buffer(npages)
    if _mincore(start, npages * _PAGE, vec) != 0:
        raise _oserror(f"mincore({start:#x}, {npages} pages)")
    return vec.raw.translate(_LOW_BIT).count(1) / npages


def resident_fraction(mm_or_fd, offset: int, length: int) -> float:
    """Fraction (0.0-1.0) of the pages of a range that are in memory.

    ``mm_or_fd`` is an ``mmap.mmap`` (``offset`` counts from its start; any
    access mode) or a file descriptor open for reading (``offset`` is a file
    offset; the range is mapped briefly, never touched). A zero-length range
    is 1.0: nothing to fetch. Pages past end of file count as not resident.
    """
    offset, length = operator.index(offset), operator.index(length)
    if offset < 0 or length < 0:
        raise ValueError("negative offset or length")
    if length == 0:
        return 1.0
    if isinstance(mm_or_fd, int):
        return _fd_fraction(mm_or_fd, offset, length)
    view = _Py_buffer()
    _GetBuffer(mm_or_fd, ctypes.byref(view), 0)  # holds an export: no close meanwhile
    try:
        if offset + length > view.len:
            raise ValueError(f"range [{offset}, {offset + length}) outside a {view.len}-byte buffer")
        # An mmap starts on a page boundary, so rounding down stays inside it.
        return _fraction(view.buf + offset, length)
    finally:
        _ReleaseBuffer(ctypes.byref(view))


def _fd_fraction(fd: int, offset: int, length: int) -> float:
    start = offset - offset % _PAGE
    size = offset + length - start
    addr = _mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if addr is None or addr == _MAP_FAILED:
        raise _oserror(f"mmap(fd={fd}, offset={start}, length={size}) for mincore")
    try:
        return _fraction(addr + (offset - start), length)
    finally:
        if _munmap(addr, size) != 0:
            raise _oserror("munmap")


# --------------------------------------------------------------- whole files (benchmarks, tests)

def _open_each(paths):
    """Read-only descriptors of the files of ``paths`` that exist (a broker may remove some)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            yield fd
        finally:
            os.close(fd)


def files_resident_fraction(paths) -> float:
    """Fraction of the bytes of ``paths`` in the page cache (1.0 for no bytes)."""
    total = resident = 0
    for fd in _open_each(paths):
        size = os.fstat(fd).st_size
        resident += resident_fraction(fd, 0, size) * size
        total += size
    return resident / total if total else 1.0


def evict_files(paths) -> None:
    """Write ``paths`` back and drop them from the page cache (a cold start, without a reboot)."""
    os.sync()
    for fd in _open_each(paths):
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
