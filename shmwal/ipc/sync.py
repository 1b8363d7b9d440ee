"""Cross-process locks and atomic counters in shared, file-backed memory.

Some facts this module relies on
--------------------------------
* Locks are glibc ``pthread_mutex_t`` set PTHREAD_PROCESS_SHARED and
  PTHREAD_MUTEX_ROBUST.  The futex word holds the owner's TID; when a holder
  dies (SIGKILL included) the kernel walks its robust list, marks the word
  OWNER_DIED and wakes a waiter, whose lock call then returns EOWNERDEAD.  So
  no lock outlives its holder, and the next locker *knows* the previous one
  died mid-critical-section and repairs what it guarded before going on.
* The type is ERRORCHECK so that a thread re-locking what it holds gets
  EDEADLK (a bug, reported) instead of hanging.
* ``trylock`` and ``unlock`` go through ``PyDLL`` (the GIL stays held: they
  never block, and skipping the GIL round-trip halves their cost).  A
  contended lock falls back to the blocking ``pthread_mutex_lock`` through
  ``CDLL``, which releases the GIL: another thread of this process may be
  the holder and needs the GIL to finish.
* Memory ordering: shmwal targets x86-64 (TSO).  There, aligned 8-byte loads
  and stores are not torn, stores become visible in program order and loads
  are not reordered with other loads; the only reordering is a later load
  passing an earlier store.  Every ``lock``/``unlock`` and atomic add is a
  locked instruction, i.e. a full barrier.  Each place that depends on this
  says so.  Plain loads and stores go through ``memoryview.cast("Q")`` item
  access, which compiles to one aligned 8-byte move.
* Atomic read-modify-write on a counter goes through libatomic's
  ``__atomic_fetch_add_8`` (a ``lock xadd``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from ..blocks import layout as L
from ..errors import ShmwalError
from .libc import libc, libc_with_gil, oserror

if platform.machine() not in ("x86_64", "AMD64"):  # pragma: no cover - documented limitation
    raise ImportError("shmwal relies on x86-64 memory ordering (see shmwal/ipc/sync.py)")

_libc = libc
_plibc = libc_with_gil


def _load_libatomic() -> ctypes.PyDLL:
    # By its soname first: find_library costs an ldconfig run and ctypes.util's import,
    # ~13 ms of every process's start.
    try:
        return ctypes.PyDLL("libatomic.so.1")
    except OSError:
        from ctypes.util import find_library
        return ctypes.PyDLL(find_library("atomic") or "libatomic.so.1")


_libatomic = _load_libatomic()

PTHREAD_PROCESS_SHARED = 1
PTHREAD_MUTEX_ROBUST = 1
PTHREAD_MUTEX_ERRORCHECK = 2
EOWNERDEAD = errno.EOWNERDEAD
ENOTRECOVERABLE = errno.ENOTRECOVERABLE


def _fn(lib, name, argtypes, restype=ctypes.c_int):
    f = getattr(lib, name)
    f.argtypes = argtypes
    f.restype = restype
    return f


_vp = ctypes.c_void_p
_trylock = _fn(_plibc, "pthread_mutex_trylock", [_vp])
_unlock = _fn(_plibc, "pthread_mutex_unlock", [_vp])
_lock_blocking = _fn(_libc, "pthread_mutex_lock", [_vp])


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_clocklock = _fn(_libc, "pthread_mutex_clocklock", [_vp, ctypes.c_int, ctypes.POINTER(_timespec)])
_consistent = _fn(_plibc, "pthread_mutex_consistent", [_vp])
_mutex_init = _fn(_libc, "pthread_mutex_init", [_vp, _vp])
_attr_init = _fn(_libc, "pthread_mutexattr_init", [_vp])
_attr_setpshared = _fn(_libc, "pthread_mutexattr_setpshared", [_vp, ctypes.c_int])
_attr_setrobust = _fn(_libc, "pthread_mutexattr_setrobust", [_vp, ctypes.c_int])
_attr_settype = _fn(_libc, "pthread_mutexattr_settype", [_vp, ctypes.c_int])
_attr_destroy = _fn(_libc, "pthread_mutexattr_destroy", [_vp])
_fetch_add = _fn(_libatomic, "__atomic_fetch_add_8", [_vp, ctypes.c_uint64, ctypes.c_int], ctypes.c_uint64)
_madvise = _fn(_libc, "madvise", [_vp, ctypes.c_size_t, ctypes.c_int])
_SEQ_CST = 5
PAGE = 4096


class LockError(ShmwalError):
    """A shared lock is unusable (a bug or a damaged file), with the errno that said so."""


def mutex_init(address: int) -> None:
    """Initialise a robust, process-shared, error-checking mutex at ``address``.

    Only safe while no other process can touch it: at topic creation, or at
    broker start after a reboot (no process of the old boot survives).
    """
    attr = ctypes.create_string_buffer(64)
    for rc in (_attr_init(attr),
               _attr_setpshared(attr, PTHREAD_PROCESS_SHARED),
               _attr_setrobust(attr, PTHREAD_MUTEX_ROBUST),
               _attr_settype(attr, PTHREAD_MUTEX_ERRORCHECK),
               _mutex_init(address, attr)):
        if rc:
            raise LockError(f"pthread mutex init failed: {os.strerror(rc)}")
    _attr_destroy(attr)


# The hot paths inline ``trylock(address) or lock_contended(address, rc)``
# and ``unlock_raw(address)``; a call to a Python wrapper costs as much as
# the lock itself.
trylock = _trylock
unlock_raw = _unlock


def lock(address: int) -> bool:
    """Take the mutex; return True if its previous holder died holding it.

    On True the caller owns the lock and must repair whatever the lock guards
    before relying on it (the mutex itself is already marked consistent).
    """
    rc = _trylock(address)
    if rc == 0:
        return False
    return lock_contended(address, rc)


def lock_contended(address: int, rc: int) -> bool:
    """The slow half of ``lock``: ``rc`` is what trylock returned."""
    if rc == errno.EBUSY:
        rc = _lock_blocking(address)
    return _locked(address, rc)


def _locked(address: int, rc: int) -> bool:
    """What a lock call's ``rc`` means: False taken, True taken from a dead holder (made
    consistent here), else LockError."""
    if rc == 0:
        return False
    if rc == EOWNERDEAD:
        _consistent(address)
        return True
    raise LockError(f"pthread_mutex_lock: {errno.errorcode.get(rc, rc)} ({os.strerror(rc)})")


LOCK_SLICE = 0.1   # seconds a deadline lock waits at a time: signal handlers run between slices
CLOCK_MONOTONIC = 1
FUTEX_TID_MASK = L.FUTEX_TID_MASK   # the one copy: layout.py (hot.c's header is generated from it)
FUTEX_OWNER_DIED = 0x40000000


class LockTimeout(LockError):
    """A lock with a deadline (broker start) was still held when the deadline passed."""


def lock_before(address: int, deadline: float, should_stop=None) -> bool:
    """``lock``, giving up at ``deadline`` (time.monotonic()): LockTimeout.

    Waits in slices of LOCK_SLICE with the GIL released, so that the
    process's signal handlers run in between (a broker asked to stop while
    it waits at start does stop) and ``should_stop()`` is asked each time
    (it raises to give up).  A mutex whose word names a holder that will never
    release it (a damaged file) must not hang the broker: the caller decides
    what to do with it once the deadline passed.
    """
    import time
    rc = _trylock(address)
    while rc == errno.EBUSY:
        if should_stop is not None:
            should_stop()
        now = time.monotonic()
        if now >= deadline:
            raise LockTimeout(f"a lock at {address:#x} was still held after the deadline")
        until = min(deadline, now + LOCK_SLICE)
        whole = int(until)
        spec = _timespec(whole, int((until - whole) * 1e9))
        rc = _clocklock(address, CLOCK_MONOTONIC, ctypes.byref(spec))
        if rc == errno.ETIMEDOUT:
            rc = errno.EBUSY
    return _locked(address, rc)


def _mutex_image() -> bytes:
    """The bytes of a freshly initialised, unlocked mutex as mutex_init makes it (glibc's layout)."""
    buf = ctypes.create_string_buffer(MUTEX_IMAGE_BYTES)
    mutex_init(ctypes.addressof(buf))
    return buf.raw


MUTEX_IMAGE_BYTES = 40   # sizeof(pthread_mutex_t) on x86-64 glibc


def mutex_damage(raw: bytes) -> str | None:
    """What makes the mutex in ``raw`` (its MUTEX_IMAGE_BYTES bytes) unusable, or None.

    glibc's pthread_mutex_t: int __lock (the futex word: holder TID | flags), unsigned
    __count, int __owner, unsigned __nusers, int __kind, short __spins, short
    __elision, and the robust-list links.  __kind, __spins and __elision are fixed
    for our kind of mutex (a wrong __kind makes every lock call fail with EINVAL);
    __count only counts for recursive mutexes (glibc leaves 1 in ours after a
    lock); __lock may name a holder, which the caller checks is alive.
    """
    image = _MUTEX_IMAGE
    if raw[16:24] != image[16:24]:
        return "its kind is not a robust, process-shared, error-checking mutex"
    word = int.from_bytes(raw[0:4], "little")
    if word and not word & FUTEX_OWNER_DIED and not word & FUTEX_TID_MASK:
        return f"its lock word {word:#x} names no holder"
    return None


def mutex_image() -> bytes:
    """The bytes mutex_init writes (an unlocked mutex of our kind)."""
    return _MUTEX_IMAGE


def mutex_holder(raw: bytes) -> int:
    """The TID the mutex's lock word names as its holder (0: none, or one that died)."""
    word = int.from_bytes(raw[0:4], "little")
    return 0 if word & FUTEX_OWNER_DIED else word & FUTEX_TID_MASK


_SYS_FUTEX = 202   # x86-64
_FUTEX_WAKE = 1
_syscall = _fn(_libc, "syscall", [ctypes.c_long, _vp, ctypes.c_int, ctypes.c_int], ctypes.c_long)


def wake_all(address: int) -> None:
    """Wake every thread asleep on the futex word at ``address`` (after re-initialising a mutex
    that named a holder who will never wake them)."""
    _syscall(_SYS_FUTEX, address, _FUTEX_WAKE, 2**31 - 1)


def unlock(address: int) -> None:
    rc = _unlock(address)
    if rc:
        raise LockError(f"pthread_mutex_unlock: {errno.errorcode.get(rc, rc)} ({os.strerror(rc)})")


_MUTEX_IMAGE = _mutex_image()


def atomic_add(address: int, delta: int) -> int:
    """Atomically add ``delta`` (two's complement for negatives) to the u64 at ``address``; return the old value."""
    return _fetch_add(address, delta & 0xFFFFFFFFFFFFFFFF, _SEQ_CST)


MADV_POPULATE_WRITE = 23   # Linux 5.14+


def populate_write(mapping, offset: int, length: int) -> None:
    """Fault ``mapping[offset:offset + length]`` in for writing, without holding the GIL.

    ``mmap.madvise`` holds the GIL for the whole call, and populating a
    fresh 10 MiB block takes 3-25 ms here: the broker's control loop (block
    requests) stood still behind its populate thread.  Raises OSError (e.g.
    EINVAL on kernels before 5.14).
    """
    start = offset & ~(PAGE - 1)
    end = min(len(mapping), offset + length)
    if end <= start:
        return
    view = (ctypes.c_char * (end - start)).from_buffer(mapping, start)
    try:
        if _madvise(ctypes.addressof(view), end - start, MADV_POPULATE_WRITE) != 0:
            raise oserror("madvise(MADV_POPULATE_WRITE)")
    finally:
        del view   # the mapping can be closed once this returns


def buffer_address(buffer) -> tuple[int, object]:
    """Base address of a writable buffer (an mmap), and the ctypes view that pins it.

    Keep the second value alive as long as the address is used, and drop it
    before closing the mmap.
    """
    view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    return ctypes.addressof(view), view
