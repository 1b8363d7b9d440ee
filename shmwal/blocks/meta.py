"""The topic meta file: one topic's shared state, mapped by the broker and every client.

Who writes what (the invariants each reader relies on):

* Under the topic's writer mutex, only the appender writes the tail words
  (``H_TAIL_*``), chain slots at or above ``H_PUBLISHED_BLOCKS``,
  ``H_PUBLISHED_BLOCKS`` and ``H_NEXT_OFFSET``.  Publish order: records and
  chain slots first, then ``H_PUBLISHED_BLOCKS``, then ``H_NEXT_OFFSET``
  last (x86-64 keeps stores in order, so a reader that sees the new
  ``H_NEXT_OFFSET`` sees everything before it).
* The broker alone writes ``H_ALLOCATED_BLOCKS`` and the file fields of new
  chain slots (while the requesting appender holds the writer mutex and
  waits), and ``H_FIRST_BLOCK``/``H_FIRST_OFFSET`` when it reclaims.
* Under a group's mutex, only that group's readers write its cursor and hint.
  The cursor is the truth; the hint is used only when ``G_HINT_OFFSET``
  equals the cursor, so a reader killed between the two stores leaves a
  stale hint that is simply ignored.
* The broker alone makes and deletes groups (``init_group``/``free_group``),
  under the group's mutex once the slot was ever used, and bumps ``G_GEN``
  when it frees one.  A reader checks ``G_GEN`` against the generation it was
  given right after taking the mutex, before it trusts the cursor: a deleted
  or reused slot is never read or moved through a stale handle.  A delete
  moves ``G_GEN`` before it clears ``G_USED``: a broker killed between the two
  leaves a group that still exists, whose old handles already fail the check.
* A SIGKILL anywhere leaves the file consistent for the next lock holder:
  robust mutexes report the death, and ``H_TAIL_OFFSET != H_NEXT_OFFSET``
  tells the next appender to recompute the tail from published state.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
import zlib

from . import layout as L
from ..ipc import sync
from ..ipc.fsio import replacing

_Q = 8


def boot_hash() -> int:
    """A number that changes when the machine reboots (mutex words from an old boot are void)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return zlib.crc32(f.read()) or 1
    except OSError:  # pragma: no cover - not Linux
        return 1


def init_mutexes(mm, group_high: int) -> None:
    """Fresh robust mutexes in the meta file mapped by ``mm``: the writer and chain mutexes,
    and those of the group slots below ``group_high``, free ones too (a freed slot's mutex is
    used again with the slot).  Only where no process can hold one: a file not yet renamed
    into place, or at broker start.  The one list of a meta file's mutexes."""
    base, pin = sync.buffer_address(mm)
    try:
        sync.mutex_init(base + L.H_WRITER_MUTEX)
        sync.mutex_init(base + L.H_CHAIN_MUTEX)
        for slot in range(group_high):
            sync.mutex_init(base + L.group_slot_at(slot) + L.G_MUTEX)
    finally:
        del pin


class TopicMeta:
    """A mapping of ``topics/<topic>/meta``. Cheap word access through ``self.words``."""

    __slots__ = ("path", "name", "mm", "words", "base", "_pin", "topic_id")

    def __init__(self, path: str, name: str):
        self.path = path
        self.name = name
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size != L.META_SIZE:
                raise ValueError(f"{path}: meta file has the wrong size")
            self.mm = mmap.mmap(fd, L.META_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.words = memoryview(self.mm).cast("Q")
        self.base, self._pin = sync.buffer_address(self.mm)
        if self.words[L.H_MAGIC // _Q] != L.META_MAGIC:
            self.close()
            raise ValueError(f"{path}: not a shmwal topic meta file")
        self.topic_id = self.words[L.H_TOPIC_ID // _Q]

    # ------------------------------------------------------------ creation (broker)
    @classmethod
    def create(cls, path: str, name: str, topic_id: int) -> "TopicMeta":
        # Written as path.new and renamed: the topic appears whole; a crash before the
        # rename leaves only a .new to sweep.
        with replacing(path, path + ".new") as fd:
            os.ftruncate(fd, L.META_SIZE)
            # The file stays sparse, but every page anyone will store to is
            # reserved first: a store to a hole on a full filesystem is a SIGBUS,
            # not an error.  Chain pages are reserved as slots are handed out,
            # group pages as their first slot is used, except the first one: the
            # first FIRST_GROUP_PAGE_SLOTS groups can be made on a full disk.
            os.posix_fallocate(fd, 0, L.CHAIN_AT + L.PAGE)
            os.posix_fallocate(fd, L.GROUPS_AT, L.PAGE)
            with mmap.mmap(fd, L.PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                words = memoryview(mm).cast("Q")
                words[L.H_VERSION // _Q] = L.META_VERSION
                words[L.H_BOOT // _Q] = boot_hash()
                words[L.H_TOPIC_ID // _Q] = topic_id
                words[L.H_TAIL_CHAIN // _Q] = L.NO_BLOCK  # no block yet
                raw = name.encode()
                words[L.H_NAME_LEN // _Q] = len(raw)
                mm[L.H_NAME:L.H_NAME + len(raw)] = raw
                init_mutexes(mm, group_high=0)
                words[L.H_MAGIC // _Q] = L.META_MAGIC  # last: a half-made file is never taken for a topic
                words.release()
        return cls(path, name)

    def reserve_chain_slot(self, index: int) -> None:
        """Make sure the page holding chain slot ``index`` has storage (broker, before handing it out)."""
        page = L.chain_slot_at(index) // L.PAGE * L.PAGE
        if page >= L.CHAIN_AT + L.PAGE:
            self._reserve(page)

    def reinit_mutexes(self) -> None:
        """After a reboot: every mutex word may name a TID of the old boot. Broker start only."""
        init_mutexes(self.mm, self.group_high())
        self.words[L.H_BOOT // _Q] = boot_hash()

    # ------------------------------------------------------------ words
    def get(self, at: int) -> int:
        return self.words[at // _Q]

    def set(self, at: int, value: int) -> None:
        self.words[at // _Q] = value

    def writer_tid(self) -> int:
        """The thread id holding the writer mutex, 0 if none (glibc robust mutex: the futex word)."""
        return self.words[L.H_WRITER_MUTEX // _Q] & L.FUTEX_TID_MASK

    def set_chain_slot(self, index: int, file_id: int, file_offset: int, capacity: int) -> None:
        """Point chain slot ``index`` at a block. Caller holds H_CHAIN_MUTEX.

        Capacity is zeroed first and stored last: a slot half-written by a
        holder that died reads as "no usable block".
        """
        w = (L.CHAIN_AT + index * L.CHAIN_SLOT) // _Q
        words = self.words
        words[w + 2] = 0
        words[w] = file_id
        words[w + 1] = file_offset
        words[w + 3] = L.UNSET   # first offset: set by the appender that moves in
        words[w + 2] = capacity

    def chain(self, index: int) -> tuple[int, int, int, int]:
        """(file_id, file_offset, capacity, first_offset) of chain slot ``index``."""
        w = (L.CHAIN_AT + index * L.CHAIN_SLOT) // _Q
        words = self.words
        return words[w], words[w + 1], words[w + 2], words[w + 3]

    # ------------------------------------------------------------ group table
    def group_high(self) -> int:
        """Slots ever used (every scan stops here; above it the file may have no storage)."""
        return min(self.words[L.H_GROUP_HIGH // _Q], L.GROUP_SLOTS)

    def stored_group_slots(self) -> int:
        """Group slots up to the last page of the table that has storage (SEEK_DATA: reads nothing)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            end, at = L.GROUPS_AT, L.GROUPS_AT
            while True:
                try:
                    at = os.lseek(fd, at, os.SEEK_DATA)
                except OSError:   # ENXIO: no data after ``at``
                    break
                if at >= L.META_SIZE:
                    break
                end = min(os.lseek(fd, at, os.SEEK_HOLE), L.META_SIZE)
                at = end
        finally:
            os.close(fd)
        return (end - L.GROUPS_AT) // L.GROUP_SLOT

    def group_names(self) -> dict[str, int]:
        """Names of the groups in use -> slot (a scan: for the broker's start, stat and recovery)."""
        found = {}
        words, mm = self.words, self.mm
        for slot in range(self.group_high()):
            at = L.group_slot_at(slot)
            if words[(at + L.G_USED) // _Q]:
                n = words[(at + L.G_NAME_LEN) // _Q]
                if 0 < n <= 255:
                    found[bytes(mm[at + L.G_NAME:at + L.G_NAME + n]).decode("ascii", "replace")] = slot
        return found

    def group_word(self, slot: int, field: int) -> int:
        return self.words[(L.group_slot_at(slot) + field) // _Q]

    def init_group(self, slot: int, name: str, cursor: int) -> int:
        """Make ``slot`` the group ``name`` starting at ``cursor`` (broker only); returns its generation.

        A slot below H_GROUP_HIGH was used before: its mutex is initialised and a
        reader of the group that had it may still lock it, so it is rewritten under
        that mutex and never re-initialised (G_GEN already moved when it was freed).
        A slot at the high mark gets storage first (no SIGBUS on a full disk), then
        a fresh mutex; the mark moves only once the slot is whole.
        """
        at = L.group_slot_at(slot)
        w = self.words
        high = self.group_high()
        fresh = slot >= high
        if fresh:
            if slot != high:
                raise ValueError(f"group slot {slot} skips the high mark {high}")
            if at >= L.GROUPS_AT + L.PAGE:   # the first page has its storage from the start
                self._reserve(at // L.PAGE * L.PAGE)
            self.mm[at:at + L.GROUP_SLOT] = bytes(L.GROUP_SLOT)
            sync.mutex_init(self.base + at + L.G_MUTEX)
        else:
            self.lock_group(slot)
        try:
            w[(at + L.G_USED) // _Q] = 0
            raw = name.encode()
            self.mm[at + L.G_NAME:at + L.G_NAME + len(raw)] = raw
            w[(at + L.G_NAME_LEN) // _Q] = len(raw)
            w[(at + L.G_HINT_OFFSET) // _Q] = L.UNSET
            w[(at + L.G_CURSOR) // _Q] = cursor
            w[(at + L.G_READS) // _Q] = 0
            w[(at + L.G_SKIPPED) // _Q] = 0
            w[(at + L.G_USED) // _Q] = 1  # last: scans take used slots only
            if fresh:
                w[L.H_GROUP_HIGH // _Q] = slot + 1
        finally:
            if not fresh:
                sync.unlock(self.base + at + L.G_MUTEX)
        w[L.H_GROUPS // _Q] += 1
        return w[(at + L.G_GEN) // _Q]

    def free_group(self, slot: int) -> None:
        """Delete the group in ``slot`` (broker only): under its mutex, so no read is half-way
        through it, the slot goes out of use and its generation moves on."""
        at = L.group_slot_at(slot)
        w = self.words
        self.lock_group(slot)
        try:
            w[(at + L.G_GEN) // _Q] += 1   # first: see the module's invariants
            w[(at + L.G_HINT_OFFSET) // _Q] = L.UNSET
            w[(at + L.G_USED) // _Q] = 0
        finally:
            sync.unlock(self.base + at + L.G_MUTEX)
        w[L.H_GROUPS // _Q] = max(0, w[L.H_GROUPS // _Q] - 1)

    def lock_group(self, slot: int, timeout: float = 2.0) -> None:
        """Take a group's mutex for the broker, which must not hang on a stopped reader."""
        address = self.base + L.group_slot_at(slot) + L.G_MUTEX
        deadline = time.monotonic() + timeout
        while True:
            rc = sync.trylock(address)
            if rc == 0:
                return
            if rc != errno.EBUSY:
                sync.lock_contended(address, rc)   # a dead holder: the slot is rewritten anyway
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"group slot {slot} of {self.name} stayed locked")
            time.sleep(0.001)

    def _reserve(self, at: int) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.posix_fallocate(fd, at, L.PAGE)
        finally:
            os.close(fd)

    def flush(self, upto: int | None = None) -> None:
        """msync the header, the group slots in use (and chain slots up to ``upto``)."""
        length = L.CHAIN_AT if upto is None else L.chain_slot_at(upto)
        self.mm.flush(0, (length + L.PAGE - 1) // L.PAGE * L.PAGE)
        groups_end = L.group_slot_at(self.group_high())
        if groups_end > L.GROUPS_AT:
            self.mm.flush(L.GROUPS_AT, (groups_end - L.GROUPS_AT + L.PAGE - 1) // L.PAGE * L.PAGE)

    def close(self) -> None:
        try:
            self.words.release()
        except Exception:
            pass
        self._pin = None
        try:
            self.mm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes when it does

