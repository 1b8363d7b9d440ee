"""Helpers for the crash, corruption and bad-input drills (issue 3).

Nothing here imports shmwal's decoder or reader: files are located and
walked with the sizes and offsets of ``shmwal.blocks.layout`` only, so a bug
in the codec cannot hide a bug in a drill.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import signal
import struct
import time
from dataclasses import dataclass

from shmwal.blocks import layout as L

_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
FUTEX_TID_MASK = 0x3FFFFFFF    # linux/futex.h: the owner's TID in a (robust) futex word
FUTEX_OWNER_DIED = 0x40000000


# ----------------------------------------------------------------------------- time

class Deadline:
    """A monotonic deadline: ``left()`` seconds remain, ``expired()``."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def poll(predicate, timeout: float, interval: float = 0.005):
    """Call ``predicate`` until truthy or the monotonic deadline passes; return its last value."""
    deadline = Deadline(timeout)
    while True:
        value = predicate()
        if value or deadline.expired():
            return value
        time.sleep(min(interval, max(0.0, deadline.left())))


# ----------------------------------------------------------------------------- payloads
# A drill payload says who wrote it and carries its own checksum, so that any
# entry read back can be checked on its own:
#   magic u32 | writer u16 | incarnation u16 | seq u32 | index u16 | count u16 | body_len u32
#   | body | blake2b-8 of everything before it

PAYLOAD_MAGIC = 0xD5A1_1D05
PAYLOAD_HEAD = struct.Struct("<IHHIHHI")
PAYLOAD_SUM = 8


@dataclass(frozen=True)
class PayloadId:
    writer: int
    incarnation: int
    seq: int
    index: int
    count: int


def make_payload(writer: int, incarnation: int, seq: int, index: int, count: int,
                 body_len: int, rng: random.Random) -> bytes:
    head = PAYLOAD_HEAD.pack(PAYLOAD_MAGIC, writer, incarnation, seq, index, count, body_len)
    body = rng.randbytes(body_len)
    digest = hashlib.blake2b(head + body, digest_size=PAYLOAD_SUM).digest()
    return head + body + digest


def decode_payload(data: bytes) -> PayloadId:
    """The payload's identity, or ValueError if it is not a whole, intact drill payload."""
    if len(data) < PAYLOAD_HEAD.size + PAYLOAD_SUM:
        raise ValueError(f"payload of {len(data)} bytes is too short")
    magic, writer, incarnation, seq, index, count, body_len = PAYLOAD_HEAD.unpack_from(data)
    if magic != PAYLOAD_MAGIC:
        raise ValueError("bad payload magic")
    if len(data) != PAYLOAD_HEAD.size + body_len + PAYLOAD_SUM:
        raise ValueError(f"payload length {len(data)} does not match body_len {body_len}")
    digest = hashlib.blake2b(data[:-PAYLOAD_SUM], digest_size=PAYLOAD_SUM).digest()
    if digest != data[-PAYLOAD_SUM:]:
        raise ValueError("payload checksum mismatch")
    if not 0 <= index < count:
        raise ValueError(f"index {index} outside count {count}")
    return PayloadId(writer, incarnation, seq, index, count)


def payloads_digest(payloads) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in payloads:
        h.update(_Q.pack(len(p)))
        h.update(p)
    return h.hexdigest()


def offset_payload(offset: int, body_len: int = 24) -> bytes:
    """A payload that names its intended offset (consumer drills check entry.data against entry.offset)."""
    body = hashlib.blake2b(_Q.pack(offset), digest_size=32).digest()
    body = (body * (body_len // 32 + 1))[:body_len]
    return _Q.pack(offset) + body


def offset_payload_ok(offset: int, data: bytes) -> bool:
    return len(data) >= 8 and data == offset_payload(offset, len(data) - 8)


# ----------------------------------------------------------------------------- report files
# Child processes write one line per completed call with a single os.write on an
# O_APPEND descriptor: a SIGKILL leaves whole lines only (small writes to a
# regular file are not torn by a signal).

def open_report(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def read_report(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode().split("\n")
    return [line for line in lines[:-1] if line]  # a line without its newline was never finished


def report_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def instrument_lock_recovery(report_fd: int) -> None:
    """In a drill child: write ``D`` to the report each time a lock taker finds the holder dead.

    Wraps ``shmwal.ipc.sync.lock_contended`` (which every locking path of the
    writer and the readers goes through) without changing what it does.
    """
    from shmwal.ipc import sync

    original = sync.lock_contended

    def lock_contended(address, rc):
        died = original(address, rc)
        if died:
            os.write(report_fd, b"D\n")
        return died

    sync.lock_contended = lock_contended


# ----------------------------------------------------------------------------- processes

def kill_and_reap(process, sig=signal.SIGKILL, timeout: float = 10.0) -> None:
    """Signal a multiprocessing.Process and wait for it (no zombie is left)."""
    if process.pid is None:
        return
    try:
        os.kill(process.pid, sig)
    except ProcessLookupError:
        pass
    process.join(timeout)
    assert not process.is_alive(), f"process {process.pid} survived {sig!r}"


class Children:
    """Every process a drill starts; on exit each one still alive is SIGKILLed and reaped."""

    def __init__(self):
        self.procs = []

    def add(self, process):
        self.procs.append(process)
        return process

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.pid is not None and p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            if p.pid is not None:
                p.join(10)


# ----------------------------------------------------------------------------- meta files

def meta_path(root: str, topic: str) -> str:
    return os.path.join(root, "topics", topic, "meta")


class MetaView:
    """A read-only mapping of a topic meta file, read with layout offsets."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)

    def word(self, at: int) -> int:
        return _Q.unpack_from(self.mm, at)[0]

    def u32(self, at: int) -> int:
        return _I.unpack_from(self.mm, at)[0]

    def chain(self, index: int) -> tuple[int, int, int, int]:
        at = L.chain_slot_at(index)
        return tuple(self.word(at + f) for f in (L.C_FILE_ID, L.C_FILE_OFFSET, L.C_CAPACITY,
                                                 L.C_FIRST_OFFSET))

    def group_slot(self, group: str) -> int | None:
        raw = group.encode()
        for slot in range(min(self.word(L.H_GROUP_HIGH), L.GROUP_SLOTS)):
            at = L.group_slot_at(slot)
            if self.word(at + L.G_USED) and self.word(at + L.G_NAME_LEN) == len(raw) \
                    and self.mm[at + L.G_NAME:at + L.G_NAME + len(raw)] == raw:
                return slot
        return None

    def mutex_owner(self, mutex_at: int) -> int:
        """TID held in the futex word of the pthread mutex at ``mutex_at`` (0: free)."""
        return self.u32(mutex_at) & FUTEX_TID_MASK

    def writer_mutex_owner(self) -> int:
        return self.mutex_owner(L.H_WRITER_MUTEX)

    def group_mutex_owner(self, slot: int) -> int:
        return self.mutex_owner(L.group_slot_at(slot) + L.G_MUTEX)

    def cursor(self, slot: int) -> int:
        return self.word(L.group_slot_at(slot) + L.G_CURSOR)

    def close(self) -> None:
        self.mm.close()


def write_word(path: str, at: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(_Q.pack(value & 0xFFFFFFFFFFFFFFFF))


def read_word(path: str, at: int) -> int:
    with open(path, "rb") as f:
        f.seek(at)
        return _Q.unpack(f.read(8))[0]


# ----------------------------------------------------------------------------- block files

@dataclass(frozen=True)
class EntryLoc:
    """Where one entry lies on disk (absolute positions in its block file)."""
    offset: int
    path: str
    chain_index: int
    block_start: int         # the block's position in its file
    capacity: int
    record_pos: int          # its record's header
    record_count: int
    record_size: int
    index: int               # its index in the record
    table_pos: int           # its (length, digest) table entry
    payload_pos: int
    length: int

    @property
    def record_end(self) -> int:
        return self.record_pos + self.record_size


def block_path(root: str, file_id: int) -> str:
    return os.path.join(root, "blocks", L.block_file_name(file_id))


def locate_entries(root: str, topic: str) -> list[EntryLoc]:
    """Every published entry of ``topic``, walked with layout.RECORD_HEADER / TABLE_ENTRY.

    Call only on intact files (before corrupting them): it asserts the
    structure it walks.
    """
    view = MetaView(meta_path(root, topic))
    try:
        first_block = view.word(L.H_FIRST_BLOCK)
        published = view.word(L.H_PUBLISHED_BLOCKS)
        next_offset = view.word(L.H_NEXT_OFFSET)
        chain = [view.chain(i) for i in range(first_block, published)]
    finally:
        view.close()
    found = []
    for k, (file_id, file_offset, capacity, block_first) in enumerate(chain):
        index = first_block + k
        end_offset = chain[k + 1][3] if k + 1 < len(chain) else next_offset
        path = block_path(root, file_id)
        with open(path, "rb") as f:
            data = f.read()
        pos = file_offset + L.BLOCK_HEADER_SIZE
        off = block_first
        while off < end_offset:
            count, _left, first, data_bytes, _check = L.RECORD_HEADER.unpack_from(data, pos)
            assert first == off and 0 < count <= L.MAX_BATCH_ENTRIES, (path, pos, first, off, count)
            size = L.record_size(count, data_bytes)
            table = pos + L.RECORD_HEADER_SIZE
            at = table + count * L.TABLE_ENTRY_SIZE
            for i in range(count):
                length, _digest = L.TABLE_ENTRY.unpack_from(data, table + i * L.TABLE_ENTRY_SIZE)
                found.append(EntryLoc(off + i, path, index, file_offset, capacity, pos, count, size, i,
                                      table + i * L.TABLE_ENTRY_SIZE, at, length))
                at += length
            off += count
            pos += size
    assert not found or [e.offset for e in found] == list(range(found[0].offset, found[0].offset + len(found)))
    return found


def flip_byte(path: str, pos: int, mask: int = 0xFF) -> tuple[int, int]:
    """XOR one byte of a file with ``mask``; return (old, new)."""
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([old ^ mask]))
    return old, old ^ mask


def zero_range(path: str, start: int, end: int) -> None:
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))


# ----------------------------------------------------------------------------- filesystem

def tree(path: str) -> set[str]:
    """Every path under ``path`` (relative), directories with a trailing '/'."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        for d in dirnames:
            found.add(os.path.normpath(os.path.join(rel, d)) + "/")
        for f in filenames:
            found.add(os.path.normpath(os.path.join(rel, f)))
    return found


def private_mode(path: str) -> int:
    """The group/other permission bits of ``path`` (0 when private)."""
    return os.stat(path, follow_symlinks=False).st_mode & 0o077


def broker_log(root: str) -> str:
    """The text of the broker log of namespace ``root`` (``<root>/broker.log``, or the older
    ``<data_dir>/<key>.broker.log``)."""
    for path in (os.path.join(root, "broker.log"),
                 os.path.join(os.path.dirname(root), os.path.basename(root) + ".broker.log")):
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                return f.read()
    raise AssertionError(f"no broker log found for {root}")


def kill_inside_lock(lock_owner, victims: dict, timeout: float = 2.0):
    """SIGKILL one of ``victims`` (pid -> key) at an instant it holds a lock; return its key, or None.

    ``lock_owner()`` reads the TID in the lock's futex word (single-threaded victims: TID == pid).
    The owner is stopped (SIGSTOP) and the word read again: if it still names the owner, the
    owner is frozen inside its critical section and the SIGKILL lands there; otherwise it is
    let go (SIGCONT) and the next owner is tried.
    """
    deadline = Deadline(timeout)
    while not deadline.expired():
        pid = lock_owner()
        if pid not in victims:
            continue
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        if _stopped(pid) and lock_owner() == pid:
            os.kill(pid, signal.SIGKILL)
            return victims[pid]
        os.kill(pid, signal.SIGCONT)
    return None


def _stopped(pid: int, timeout: float = 1.0) -> bool:
    """Wait until ``pid`` is really stopped (SIGSTOP is delivered asynchronously)."""
    deadline = Deadline(timeout)
    while not deadline.expired():
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in "Tt":
                    return True
        except OSError:
            return False
    return False


def dump_stacks_on_sigusr1(report_path: str) -> None:
    """In a drill child: SIGUSR1 writes its Python stacks to ``<report_path>.stack``."""
    import faulthandler
    faulthandler.register(signal.SIGUSR1, file=open(report_path + ".stack", "w"), all_threads=True)


def stacks_of(pid: int, report_path: str) -> str:
    """Ask a child set up with dump_stacks_on_sigusr1 for its stacks; return them (or why not)."""
    stack = report_path + ".stack"
    try:
        wchan = open(f"/proc/{pid}/wchan").read()
        os.kill(pid, signal.SIGUSR1)
    except OSError as exc:
        return f"pid {pid}: {exc}"
    if poll(lambda: report_size(stack) > 0, 2):
        time.sleep(0.2)   # let faulthandler finish writing
        with open(stack) as f:
            text = f.read()
        main = text[text.rfind("Current thread"):] if "Current thread" in text else text
        return f"pid {pid} in {wchan}:\n{main[:1500]}"
    return f"pid {pid} in {wchan}: no stack dumped"
