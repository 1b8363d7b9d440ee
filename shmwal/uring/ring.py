"""Batched file reads through io_uring, with ctypes only.

Some facts about io_uring
-------------------------
* ``io_uring_setup`` returns an fd; we mmap three regions from it at the
  magic offsets in ``abi``: the SQ ring (head, tail, mask, index array), the
  CQ ring (head, tail, mask, CQE array) and the SQE array. Since 5.4
  (``IORING_FEAT_SINGLE_MMAP``) both rings come from one mapping.
* Every counter has exactly one writer. We write the SQEs, the SQ index array
  and the SQ *tail*; the kernel writes the SQ *head* as it consumes SQEs. The
  kernel writes the CQEs and the CQ *tail*; we write the CQ *head* once we have
  read the CQEs. Counters are free-running u32s; a slot is ``counter & mask``.
* Without SQPOLL (we never ask for it) the kernel reads the SQ tail only
  inside ``io_uring_enter``, which our own thread calls. Completions are
  posted from whatever context finishes the I/O (IRQ, task work, io-wq worker
  on another CPU): the kernel stores the CQE, then store-releases the CQ tail,
  and may reuse a slot as soon as it sees our CQ head move past it.
* ``io_uring_enter(to_submit, min_complete, GETEVENTS)`` returns how many
  SQEs it consumed. If it consumed fewer than asked it returns without
  waiting; if it consumed any, a signal during the wait is *not* reported
  (you get the count, with fewer than ``min_complete`` CQEs ready); ``EINTR``
  comes back only when it consumed nothing, so retrying is always safe.
* A read's buffer address is written by the kernel until its CQE is posted,
  possibly by a worker thread after ``io_uring_enter`` has returned.
* One READ SQE yields exactly one CQE (no links, no multishot, no
  ``IOSQE_CQE_SKIP_SUCCESS``), so ``sq_tail - cq_head`` *is* the number of
  reads not yet reaped. The kernel makes the CQ twice the SQ; we never have
  more than ``sq_entries`` reads unreaped, so the CQ cannot overflow.

Memory ordering
---------------
* x86-64 is TSO: loads are not reordered with loads, stores not with stores,
  and a load not with a later store; only store -> later load may be. So the
  acquire (load CQ tail, then the CQEs) and release (finish reading CQEs, then
  store CQ head; write SQEs, then store SQ tail) we need are plain MOVs there.
  The one pattern that needs a full fence, reading ``IORING_SQ_NEED_WAKEUP``
  after storing the SQ tail, exists only with SQPOLL.
* From Python, every head/tail access goes through a ``ctypes.c_uint32`` laid
  over the ring (``_Word``): its getter and setter are one ``memcpy`` of a
  constant 4 bytes, which compilers emit as a single aligned MOV, so the kernel
  never sees a torn counter. NOT ``struct.pack_into``: it ``memset``s the field
  to zero before writing the value, so another CPU can read a transient 0 (we
  measured 34,626 zeros in 15 M reads across two processes); a CQ head that
  briefly reads 0 makes the kernel think the CQ is full. ``struct`` is fine
  for SQEs (the kernel reads them only inside our own ``io_uring_enter``) and
  for unpacking CQEs (unpack does no pre-zeroing). The interpreter runs these
  C calls in program order and cannot reorder across them.
* Other architectures (aarch64) need real acquire/release instructions
  (``__atomic_load_4``/``__atomic_store_4`` from libatomic would do, at ~0.4 us a
  call, a few calls a batch). That path is untested here, so ``Ring`` refuses to
  run off x86-64 and ``probe()`` says so.

What a dead process leaves: nothing. A ring is private to the process that
made it (the fd is O_CLOEXEC; a forked child's copy refuses to be used). When
a process dies the kernel closes the fd, unmaps the rings and cancels or
finishes whatever was in flight. The only hazard lives inside a running
process: a read still in flight into memory that has been freed. So
``read_ranges`` never returns or raises with a read in flight -- it drains
first, even on KeyboardInterrupt -- and holds an export on the buffer
(the "pin") until every read into it is reaped.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import operator
import os
import platform
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from struct import Struct

from . import abi
from ..ipc.libc import function as libc_function, oserror

__all__ = ["Ring", "ReadArena", "ShortRead", "probe", "disabled_by_env", "plan_reads", "MAX_READ"]

# One READ moves at most this much; bigger ranges are split. IORING_OP_READ
# takes a u32 length, returns an s32, and the kernel caps any single read at
# MAX_RW_COUNT (2 GiB - 4 KiB); 1 GiB stays clear of all three.
MAX_READ = 1 << 30

_M32 = 0xFFFFFFFF
_U32 = Struct("I")  # only for the SQ index array, written before first use
_Word = ctypes.c_uint32  # ring counters: one 4-byte MOV each, see "Memory ordering"
_SQE = Struct(abi.SQE_FORMAT)
_CQE = Struct(abi.CQE_FORMAT)
_SQE_SIZE = _SQE.size
_CQE_SIZE = _CQE.size
_READ = int(abi.IORING_OP_READ)
_GETEVENTS = int(abi.IORING_ENTER_GETEVENTS)
_FD_MIN, _FD_MAX = -(1 << 31), (1 << 31) - 1
_OFF_MAX = (1 << 63) - 1  # loff_t
_RETRYABLE_RES = (errno.EINTR, errno.EAGAIN)  # a CQE with these is resubmitted
_MAX_RETRIES = 8

_SUPPORTED_MACHINES = ("x86_64",)  # see "Memory ordering"

if sys.platform == "linux":
    # Two handles on syscall(2), one per signature.
    _sys_setup = libc_function("syscall", (ctypes.c_long, ctypes.c_uint, ctypes.c_void_p), ctypes.c_long)
    _sys_enter = libc_function("syscall", (ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                                           ctypes.c_void_p, ctypes.c_size_t), ctypes.c_long)

# Bumped in every forked child: a Ring remembers the generation it was built in.
_fork_generation = 0
# Pins of reads we could not drain before closing their ring: kept forever so
# the kernel never writes into memory that was handed out again.
_STRANDED: list = []


def _unsupported_platform() -> str | None:
    if sys.platform != "linux":
        return f"io_uring needs Linux (this is {sys.platform})"
    machine = platform.machine()
    if machine not in _SUPPORTED_MACHINES:
        return (f"shmwal's io_uring binding supports x86-64 only (this is {machine}): "
                "it relies on x86-64 store ordering for the ring counters")
    return None


class ShortRead(OSError, EOFError):
    """A read hit end of file before its range was filled (``allow_short=False``)."""

    def __init__(self, fd: int, offset: int, wanted: int, got: int):
        super().__init__(f"short read from fd {fd} at offset {offset}: wanted {wanted} "
                         f"bytes, got {got} (end of file)")
        self.fd, self.offset, self.wanted, self.got = fd, offset, wanted, got

    def __reduce__(self):
        return (type(self), (self.fd, self.offset, self.wanted, self.got))


def plan_reads(requests: Sequence, buffer_size: int) -> tuple[list, list]:
    """Validate ``requests`` and turn them into reads. Pure; no I/O.

    Returns ``(reqs, ops)``: ``reqs`` the requests as int 4-tuples, ``ops`` a
    list of ``[fd, file_offset, buffer_offset, length, first_req, end_req]``.
    A request is merged into the previous read when it continues it in the
    file *and* in the buffer (same fd); reads are split at ``MAX_READ``.
    Zero-length requests produce no read. Raises ``ValueError`` before
    anything is submitted if any request is out of range.
    """
    reqs = []
    ops: list = []
    last = None
    index = operator.index
    for r, req in enumerate(requests):
        fd, off, length, boff = req
        fd, off, length, boff = index(fd), index(off), index(length), index(boff)
        if not _FD_MIN <= fd <= _FD_MAX:
            raise ValueError(f"request {r}: fd {fd} out of range")
        if off < 0 or length < 0 or boff < 0:
            raise ValueError(f"request {r}: negative offset or length {req!r}")
        if off + length > _OFF_MAX:
            raise ValueError(f"request {r}: file range past 2**63 {req!r}")
        if boff + length > buffer_size:
            raise ValueError(f"request {r}: buffer range [{boff}, {boff + length}) "
                             f"exceeds the {buffer_size}-byte buffer")
        reqs.append((fd, off, length, boff))
        while length:
            if (last is not None and last[0] == fd and last[3] < MAX_READ
                    and last[1] + last[3] == off and last[2] + last[3] == boff):
                take = min(length, MAX_READ - last[3])
                last[3] += take
                last[5] = r + 1
            else:
                take = min(length, MAX_READ)
                last = [fd, off, boff, take, r, r + 1]
                ops.append(last)
            off += take
            boff += take
            length -= take
    return reqs, ops


class Ring:
    """One io_uring instance for batched reads. Not shared across processes.

    Thread-safe in the simple way: calls on one ring are serialised by a lock.
    """

    # Class defaults make close() and __del__ safe on a half-built object.
    _fd = -1
    _sq_mm = _cq_mm = _sqe_mm = None
    _sq_head = _sq_tail_w = _cq_head_w = _cq_tail = None  # _Word views into the rings
    _closed = True
    _pins: list | tuple = ()
    _sq_tail = _cq_head = 0
    sq_entries = cq_entries = 0

    def __init__(self, entries: int = 256):
        entries = operator.index(entries)
        if not 1 <= entries <= abi.IORING_MAX_ENTRIES:
            raise ValueError(f"entries must be in [1, {abi.IORING_MAX_ENTRIES}], got {entries}")
        reason = _unsupported_platform()
        if reason:
            raise OSError(errno.ENOSYS, reason)
        self._lock = threading.Lock()
        self._generation = _fork_generation
        self._pins = []  # buffer exports that reads in flight point into
        params = abi.io_uring_params()
        fd = _sys_setup(abi.NR_io_uring_setup, entries, ctypes.addressof(params))
        if fd < 0:
            raise oserror(f"io_uring_setup(entries={entries})")
        self._fd = fd
        try:
            self._map(params)
        except BaseException:
            self._release()
            raise
        self._closed = False

    def _map(self, p: abi.io_uring_params) -> None:
        sq, cq = p.sq_off, p.cq_off
        self.sq_entries, self.cq_entries, self.features = p.sq_entries, p.cq_entries, p.features
        sq_size = sq.array + p.sq_entries * 4
        cq_size = cq.cqes + p.cq_entries * _CQE_SIZE
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        prot = mmap.PROT_READ | mmap.PROT_WRITE

        def map_region(size, offset):
            return mmap.mmap(self._fd, size, flags=flags, prot=prot, offset=offset)

        if p.features & abi.IORING_FEAT_SINGLE_MMAP:
            self._sq_mm = self._cq_mm = map_region(max(sq_size, cq_size), abi.IORING_OFF_SQ_RING)
        else:
            self._sq_mm = map_region(sq_size, abi.IORING_OFF_SQ_RING)
            self._cq_mm = map_region(cq_size, abi.IORING_OFF_CQ_RING)
        self._sqe_mm = map_region(p.sq_entries * _SQE_SIZE, abi.IORING_OFF_SQES)

        # Kernel-written: SQ head, CQ tail. Ours: SQ tail, CQ head.
        self._sq_head = _Word.from_buffer(self._sq_mm, sq.head)
        self._sq_tail_w = _Word.from_buffer(self._sq_mm, sq.tail)
        self._cq_head_w = _Word.from_buffer(self._cq_mm, cq.head)
        self._cq_tail = _Word.from_buffer(self._cq_mm, cq.tail)
        self._cqes_off = cq.cqes
        self._sq_mask = _Word.from_buffer(self._sq_mm, sq.ring_mask).value
        self._cq_mask = _Word.from_buffer(self._cq_mm, cq.ring_mask).value
        if self._sq_mask != p.sq_entries - 1 or self._cq_mask != p.cq_entries - 1:
            raise OSError(errno.EINVAL, "io_uring ring masks disagree with params")
        # Slot i of the SQE array is always SQ index i: written once, here.
        for i in range(p.sq_entries):
            _U32.pack_into(self._sq_mm, sq.array + 4 * i, i)
        # Local copies of our two counters, as unbounded ints; the ring holds
        # them mod 2**32. sq_tail - cq_head = reads queued and not yet reaped.
        self._sq_tail = self._sq_tail_w.value
        self._cq_head = self._cq_head_w.value

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        """Drain anything in flight, unmap the rings, close the fd. Idempotent."""
        if self._closed:
            self._release()  # half-built: whatever exists; no-op when done
            return
        if self._generation != _fork_generation:
            # A forked child's copy: the reads in flight (if any) belong to the
            # parent and target the parent's memory. Drop our fd and mappings
            # only; our lock may have been copied while held.
            self._closed = True
            self._pins = []
            self._release()
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._sq_tail != self._cq_head:
                    self._drain()
            finally:
                if self._sq_tail != self._cq_head:
                    _STRANDED.extend(self._pins)  # could not drain: never free them
                self._pins = []
                self._release()

    def _release(self) -> None:
        for name in ("_sq_head", "_sq_tail_w", "_cq_head_w", "_cq_tail"):
            self.__dict__.pop(name, None)  # drop their exports so the mmaps can close
        for name in ("_sqe_mm", "_cq_mm", "_sq_mm"):
            mm = self.__dict__.pop(name, None)
            if mm is not None and not mm.closed:
                mm.close()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<Ring sq_entries={self.sq_entries} {state}>"

    def _check(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed io_uring Ring")
        if self._generation != _fork_generation:
            raise RuntimeError("this Ring belongs to the parent process; "
                               "create a new Ring after fork()")

    # -- ring primitives ---------------------------------------------------------
    def _enter(self, to_submit: int, min_complete: int) -> int:
        flags = _GETEVENTS if min_complete else 0
        while True:
            n = _sys_enter(abi.NR_io_uring_enter, self._fd, to_submit, min_complete,
                           flags, None, 0)
            if n >= 0:
                return n
            exc = oserror(f"io_uring_enter(to_submit={to_submit}, min_complete={min_complete})")
            if exc.errno != errno.EINTR:  # EINTR: nothing was consumed, same call again
                raise exc

    def _submit_and_wait(self, wait_nr: int) -> tuple[int, int]:
        """Publish the SQ tail, submit what the kernel has not taken, wait.

        Returns ``(pending, consumed)``.
        """
        self._sq_tail_w.value = self._sq_tail & _M32
        pending = (self._sq_tail - self._sq_head.value) & _M32
        try:
            return pending, self._enter(pending, wait_nr)
        except OSError as exc:
            in_kernel = self._sq_tail - self._cq_head - pending
            if exc.errno not in (errno.EAGAIN, errno.EBUSY) or not in_kernel:
                raise
            # No memory for more requests right now, or a CQ backlog: let one
            # submitted read finish and let the caller loop.
            self._enter(0, 1)
            return pending, 0

    def _withdraw(self, pending: int) -> None:
        # Take back SQEs the kernel refused. Safe without SQPOLL: the kernel
        # reads our SQ tail only inside io_uring_enter, which has returned.
        self._sq_tail -= pending
        self._sq_tail_w.value = self._sq_tail & _M32

    def _drain(self) -> None:
        """Wait for every read still in flight; discard its completion."""
        while self._sq_tail != self._cq_head:
            pending, consumed = self._submit_and_wait(self._sq_tail - self._cq_head)
            ktail = self._cq_tail.value
            if ktail == self._cq_head & _M32 and pending and not consumed:
                self._withdraw(pending)
            self._cq_head += (ktail - self._cq_head) & _M32
            self._cq_head_w.value = self._cq_head & _M32
        self._pins.clear()

    # -- the one operation -------------------------------------------------------
    def read_ranges(self, requests: Sequence, buffer, *, allow_short: bool = False):
        """Read ``(fd, file_offset, length, buffer_offset)`` ranges into ``buffer``.

        ``buffer`` is a ``ReadArena`` or any writable contiguous buffer (page
        aligned for speed: ``ReadArena``). Every range must fit in it; ranges
        should not overlap in the buffer. ``fd``s should be regular files: a
        pipe or socket read waits for data like read(2) would.

        Returns ``None``; with ``allow_short=True``, the list of bytes read per
        request (less than asked where end of file came first). Raises, only
        after every submitted read has completed: ``OSError`` for the first
        failed request (in request order), else ``ShortRead`` for the first
        request cut short by end of file (unless ``allow_short``).
        """
        self._check()
        if isinstance(buffer, ReadArena):
            buffer = buffer._target()
        with memoryview(buffer) as mv:
            if mv.readonly:
                raise TypeError("read_ranges needs a writable buffer")
            nbytes = mv.nbytes
        reqs, ops = plan_reads(requests, nbytes)
        with self._lock:
            self._check()
            if self._sq_tail != self._cq_head:
                self._drain()  # an earlier call was interrupted mid-flight
            if ops:
                pin = (ctypes.c_char * nbytes).from_buffer(buffer)
                self._pins.append(pin)
                got, left, err = self._run(ops, ctypes.addressof(pin))
            else:
                got = left = err = ()
        return _outcome(reqs, ops, got, left, err, allow_short)

    def _run(self, ops: list, base: int) -> tuple[list, list, list]:
        n = len(ops)
        fds = [op[0] for op in ops]
        pos = [op[1] for op in ops]
        dst = [base + op[2] for op in ops]
        left = [op[3] for op in ops]
        got = [0] * n
        err = [0] * n
        retries: dict[int, int] = {}
        again: deque[int] = deque()  # partly read or retryable: submit the rest
        next_op = 0
        failed = False  # after a hard error, submit nothing new
        cap = self.sq_entries
        half = max(1, cap // 2)
        sq_mask, cq_mask = self._sq_mask, self._cq_mask
        sqes, cq_mm, cqes_off = self._sqe_mm, self._cq_mm, self._cqes_off
        cq_tail, cq_head_w = self._cq_tail, self._cq_head_w
        pack_sqe, unpack_cqe = _SQE.pack_into, _CQE.unpack_from
        try:
            while True:
                if not failed:
                    tail = self._sq_tail
                    room = cap - (tail - self._cq_head)
                    while room and (again or next_op < n):
                        if again:
                            k = again.popleft()
                        else:
                            k = next_op
                            next_op += 1
                        pack_sqe(sqes, (tail & sq_mask) * _SQE_SIZE, _READ, 0, 0, fds[k],
                                 pos[k], dst[k], left[k], 0, k, 0, 0, 0, 0, 0)
                        tail += 1
                        self._sq_tail = tail
                        room -= 1
                outstanding = self._sq_tail - self._cq_head
                if not outstanding:
                    break
                more = not failed and (again or next_op < n)
                pending, consumed = self._submit_and_wait(half if more else outstanding)
                head = self._cq_head
                ktail = cq_tail.value  # acquire: CQEs are read after this load
                avail = (ktail - head) & _M32
                if not avail and pending and not consumed:
                    self._withdraw(pending)
                    raise OSError(errno.EAGAIN, "io_uring_enter accepted no reads")
                for _ in range(avail):
                    k, res, _flags = unpack_cqe(cq_mm, cqes_off + (head & cq_mask) * _CQE_SIZE)
                    head += 1
                    want = left[k]
                    if res == want:
                        got[k] += res
                        left[k] = 0
                    elif 0 < res < want:  # short but not EOF: read the rest
                        got[k] += res
                        left[k] = want - res
                        pos[k] += res
                        dst[k] += res
                        again.append(k)
                    elif res == 0:
                        pass  # end of file: left[k] stays > 0
                    elif res < 0 and -res in _RETRYABLE_RES and retries.get(k, 0) < _MAX_RETRIES:
                        retries[k] = retries.get(k, 0) + 1
                        again.append(k)
                    elif res < 0:
                        err[k] = -res
                        failed = True
                    else:
                        err[k] = errno.EIO  # more than asked: never from a sane kernel
                        failed = True
                # CQEs read; only now may the kernel reuse their slots (release).
                self._cq_head = head
                cq_head_w.value = head & _M32
        finally:
            if self._sq_tail != self._cq_head:
                self._drain()  # interrupted: no read may outlive this call
            self._pins.clear()
        return got, left, err


def _outcome(reqs, ops, got, left, err, allow_short):
    for k, e in enumerate(err):
        if e:
            fd, off, _boff, length = ops[k][:4]
            exc = OSError(e, os.strerror(e))
            exc.add_note(f"io_uring read of fd {fd}, offset {off}, {length} bytes")
            raise exc
    if not any(left):
        return [r[2] for r in reqs] if allow_short else None
    counts = [0] * len(reqs)
    for k, (_fd, _off, b0, _length, first, end) in enumerate(ops):
        b1 = b0 + got[k]  # reads fill their span from the start
        for r in range(first, end):
            rb0, rb1 = reqs[r][3], reqs[r][3] + reqs[r][2]
            counts[r] += max(0, min(b1, rb1) - max(b0, rb0))
    if allow_short:
        return counts
    for r, (fd, off, length, _boff) in enumerate(reqs):
        if counts[r] < length:
            raise ShortRead(fd, off, length, counts[r])
    raise AssertionError("a read stopped short but every request is complete")


class ReadArena:
    """A reusable, page-aligned, anonymous-mmap read buffer.

    Page alignment matters: a misaligned destination made kernel copies ~10x
    slower (measured: a 16-byte misalignment), and one long-lived mapping avoids malloc's trim/mmap
    thresholds on big batches. Growing maps a new region of the next power of
    two and does *not* keep the contents; views taken earlier stay valid (they
    keep the old region alive until released).
    """

    _mm = None
    _address = 0

    def __init__(self, capacity: int = 1 << 20):
        self._allocate(operator.index(capacity))

    def _allocate(self, n: int) -> None:
        size = max(mmap.PAGESIZE, 1 << max(0, n - 1).bit_length())
        mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
        probe_export = ctypes.c_char.from_buffer(mm)
        address = ctypes.addressof(probe_export)
        del probe_export  # drop the export at once, so close() works
        old, self._mm, self._address = self._mm, mm, address
        _close_if_unexported(old)

    def _target(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError("ReadArena is closed")
        return self._mm

    @property
    def capacity(self) -> int:
        return len(self._target())

    @property
    def address(self) -> int:
        self._target()
        return self._address

    def reserve(self, n: int) -> None:
        """Make the arena at least ``n`` bytes (contents lost if it grows)."""
        n = operator.index(n)
        if n < 0:
            raise ValueError("negative size")
        if n > len(self._target()):
            self._allocate(n)

    def view(self, n: int) -> memoryview:
        """A writable memoryview of the first ``n`` bytes, growing if needed."""
        self.reserve(n)
        return memoryview(self._mm)[:n]

    def close(self) -> None:
        """Release the arena; live views keep their memory until released."""
        mm, self._mm = self._mm, None
        _close_if_unexported(mm)

    def __enter__(self) -> "ReadArena":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_if_unexported(mm) -> None:
    if mm is None:
        return
    try:
        mm.close()
    except BufferError:
        pass  # views (or a read's pin) hold it; unmapped when the last goes


# -- can we use it here? ----------------------------------------------------------
_UNSET = object()
_probe_cache = _UNSET


def disabled_by_env() -> bool:
    """True when ``SHMWAL_DISABLE_IO_URING`` is set to anything but 0/false/no/off/empty."""
    value = os.environ.get("SHMWAL_DISABLE_IO_URING", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def probe() -> str | None:
    """``None`` if io_uring works in this process, else why not (cached).

    Builds a tiny ring and reads a temp file through it, so "works" means a
    real read succeeded. Ignores ``SHMWAL_DISABLE_IO_URING`` (see
    ``disabled_by_env``): this reports what the kernel allows.
    """
    global _probe_cache
    if _probe_cache is _UNSET:
        _probe_cache = _probe_uncached()
    return _probe_cache


def _probe_uncached() -> str | None:
    reason = _unsupported_platform()
    if reason:
        return reason
    try:
        ring = Ring(4)
    except OSError as exc:
        return _setup_failure_reason(exc)
    try:
        with ring, ReadArena(4096) as arena, tempfile.TemporaryFile() as f:
            data = bytes(range(256)) * 13  # 3328 bytes
            f.write(data)
            f.flush()
            fd = f.fileno()
            ring.read_ranges([(fd, 0, 1000, 0), (fd, 1000, 2328, 1000)], arena)
            if bytes(arena.view(len(data))) != data:
                return "io_uring read returned wrong bytes"
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        hint = " (IORING_OP_READ needs Linux 5.6)" if exc.errno == errno.EINVAL else ""
        return f"io_uring read failed: {name}{hint}: {exc}"
    except Exception as exc:  # a reason, never an exception, from probe()
        return f"io_uring self-test failed: {exc!r}"
    return None


def _read_proc(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _setup_failure_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    status = _read_proc("/proc/self/status") or ""
    seccomp = any(line.split() == ["Seccomp:", "2"] for line in status.splitlines())
    seccomp_hint = "a seccomp filter is active in this process (Docker's default profile blocks io_uring)"
    if exc.errno == errno.ENOSYS:
        hint = "kernel too old (< 5.1), built without CONFIG_IO_URING, or hidden by a sandbox"
        if seccomp:
            hint += "; " + seccomp_hint
    elif exc.errno == errno.EPERM:
        disabled = (_read_proc("/proc/sys/kernel/io_uring_disabled") or "").strip()
        if disabled == "2":
            hint = "kernel.io_uring_disabled=2: io_uring is off for every process"
        elif disabled == "1":
            hint = ("kernel.io_uring_disabled=1: only members of kernel.io_uring_group "
                    "or CAP_SYS_ADMIN may create rings")
        elif seccomp:
            hint = seccomp_hint
        else:
            hint = "denied by a security module or sandbox"
    elif exc.errno == errno.ENOMEM:
        hint = "ring memory is charged to RLIMIT_MEMLOCK before Linux 5.12; raise `ulimit -l`"
    elif exc.errno in (errno.EMFILE, errno.ENFILE):
        hint = "out of file descriptors"
    else:
        hint = exc.strerror or "unexpected error"
    return f"io_uring_setup failed: {name} ({hint})"


def _after_fork_in_child() -> None:
    global _fork_generation, _probe_cache
    _fork_generation += 1
    _probe_cache = _UNSET


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
