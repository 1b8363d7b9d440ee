"""Every word of a topic's meta file is untrusted at broker start (issue 11).

``inspect_topic`` lists what is wrong, each finding with the byte offset in the
meta file it is about and how start repairs it; recovery applies the repairs,
and ``shmwal verify`` prints the same findings, so the two agree by construction.
Anything these checks cannot repair in place is a ``problem`` for
recovery.check_meta, and the meta file is then rebuilt from the block headers.

* Mutexes (the writer, chain and group mutexes): a word that no lock call can
  use (glibc then returns EINVAL for ever) or a lock word naming a holder that
  does not exist or does not map this file (it would never be released: the
  broker hung in futex_wait at start) is re-initialised, and any thread
  sleeping on it is woken.  A live holder is waited for, with a deadline.
* Counters and names (visible, groups in use, the name, sleeping readers):
  rebuilt from what they count.
* Group slots: a used slot needs a valid, unique name (else it is dropped: its
  readers start the group again at the oldest entry), and a cursor no further
  than the end (else the group waits for ever for entries that never come).
* Chain slots: each published block's header must name this topic and chain
  index (the slot of another topic's block would hand its entries out as
  ours: entry checksums bind an entry to its offset, not to its topic).
"""

from __future__ import annotations

import collections
import mmap
import os
import re
from typing import Callable, NamedTuple

from ..blocks import layout as L
from ..blocks.chain import read_block_header, write_block_header
from ..blocks.codec import BadRecord, read_record
from ..errors import ShmwalError
from ..ipc import names, sync

_NONZERO = re.compile(rb"[^\x00]")
WAITERS_SANE = 1 << 20   # more readers asleep than this is an underflow or damage (append.wake agrees)


class Finding(NamedTuple):
    at: int                          # byte offset in the meta file
    what: str
    repair: Callable[[], None]


def used_slots(meta, stored: int | None = None) -> list[int]:
    """Group slots whose in-use word is set, up to the storage the table has (H_GROUP_HIGH is
    checked, not trusted: word_findings).

    One strided slice of the words: a Python loop over tens of thousands of slots
    would cost every start a good part of a second a topic.
    """
    stored = meta.stored_group_slots() if stored is None else stored
    first, step = (L.GROUPS_AT + L.G_USED) // 8, L.GROUP_SLOT // 8
    flags = meta.words[first:first + stored * step:step].tobytes()
    return sorted({m.start() // 8 for m in _NONZERO.finditer(flags)})


def mutexes(meta) -> list[tuple[int, str]]:
    """(offset, name) of the mutexes worth a close look: the writer and chain mutexes, and every
    group slot's (slots ever used keep an initialised mutex, used again by the next group made
    there) whose kind word is not the one mutex_init writes or whose lock word is not free.

    Strided slices of the words pick them: thousands of slots, one Python loop over the few.
    """
    found = [(L.H_WRITER_MUTEX, "writer mutex"), (L.H_CHAIN_MUTEX, "chain mutex")]
    stored = meta.stored_group_slots()
    slots = min(max(meta.get(L.H_GROUP_HIGH), max(used_slots(meta, stored), default=-1) + 1), stored)
    step = L.GROUP_SLOT // 8
    kind_at = (L.GROUPS_AT + L.G_MUTEX + 16) // 8
    lock_at = (L.GROUPS_AT + L.G_MUTEX) // 8
    kind = sync.mutex_image()[16:24]
    kinds = meta.words[kind_at:kind_at + slots * step:step].tobytes()
    locks = meta.words[lock_at:lock_at + slots * step:step].tobytes()
    # Whole-table comparisons in C first: at start nearly every slot is fine.
    odd_kind = kinds != kind * slots
    held = any(locks[i::8].strip(b"\0") for i in range(4))   # the low 32 bits: the futex word
    if odd_kind or held:
        for slot in range(slots):
            at = slot * 8
            if kinds[at:at + 8] != kind or locks[at:at + 4] != b"\0\0\0\0":
                found.append((L.group_slot_at(slot) + L.G_MUTEX, f"mutex of group slot {slot}"))
    return found


def _maps_file(tid: int, path: str) -> bool:
    """Whether thread ``tid`` runs and its process maps ``path`` (only such a thread can hold a lock in it)."""
    try:
        st = os.stat(path)
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino} "
        with open(f"/proc/{tid}/maps") as f:
            return any(wanted in line for line in f)
    except OSError:
        return False


def mutex_findings(meta) -> list[Finding]:
    findings = []
    for at, label in mutexes(meta):
        raw = bytes(meta.mm[at:at + sync.MUTEX_IMAGE_BYTES])
        damage = sync.mutex_damage(raw)
        if damage is None:
            holder = sync.mutex_holder(raw)
            if holder and not _maps_file(holder, meta.path) \
                    and bytes(meta.mm[at:at + sync.MUTEX_IMAGE_BYTES]) == raw:   # not just released
                damage = f"it is held by thread {holder}, which does not run or does not map this file"
        if damage is not None:
            findings.append(Finding(at, f"{label} damaged: {damage}; re-initialised",
                                    lambda at=at: reinit_mutex(meta, at)))
    return findings


def reinit_mutex(meta, at: int) -> None:
    """A new, unlocked mutex at ``at``; threads asleep on the old word wake up and take it."""
    meta.mm[at:at + L.MUTEX_BYTES] = bytes(L.MUTEX_BYTES)
    sync.mutex_init(meta.base + at)
    sync.wake_all(meta.base + at)


def word_findings(meta) -> list[Finding]:
    """Counters, names and group slots (not the chain: chain_findings)."""
    get, findings = meta.get, []

    def setter(at, value):
        return lambda: meta.set(at, value)

    next_offset = get(L.H_NEXT_OFFSET)
    visible = 1 if next_offset > 0 else get(L.H_VISIBLE)
    if get(L.H_VISIBLE) not in (0, 1) or visible != get(L.H_VISIBLE):
        findings.append(Finding(L.H_VISIBLE, f"visible flag {get(L.H_VISIBLE):#x} with {next_offset} entries; "
                                             f"set to {min(visible, 1)}", setter(L.H_VISIBLE, min(visible, 1))))
    raw = meta.name.encode()
    if get(L.H_NAME_LEN) != len(raw) or bytes(meta.mm[L.H_NAME:L.H_NAME + len(raw)]) != raw:
        def rename():
            meta.set(L.H_NAME_LEN, len(raw))
            meta.mm[L.H_NAME:L.H_NAME + len(raw)] = raw
        findings.append(Finding(L.H_NAME_LEN, "topic name does not match its directory; rewritten", rename))
    if get(L.H_WAITERS) > WAITERS_SANE:
        findings.append(Finding(L.H_WAITERS, f"sleeping-reader count {get(L.H_WAITERS):#x}; set to 0",
                                setter(L.H_WAITERS, 0)))
    # Only slots with storage are looked at: reading a hole of a mapped tmpfs file
    # allocates the page (SEEK_DATA finds the storage, touching nothing).  The high
    # mark must lie between the last slot in use and the end of that storage: below a
    # used slot, a new group could be made on top of it; past the storage, a group
    # slot would be used with no page behind it (a SIGBUS on a full disk).
    stored = meta.stored_group_slots()
    slots = used_slots(meta, stored)
    high = get(L.H_GROUP_HIGH)
    in_use = max(slots, default=-1) + 1
    # Past the storage the mark is damaged, and the slots above the last one in use may never
    # have had a mutex: they become fresh slots again (init_group gives them storage and a mutex).
    right_high = in_use if high > stored else max(high, in_use)
    if high != right_high:
        findings.append(Finding(L.H_GROUP_HIGH, f"group high mark {high:#x} (slots in use up to "
                                                f"{max(slots, default=-1) + 1}, {stored} with storage); "
                                                f"set to {right_high}", setter(L.H_GROUP_HIGH, right_high)))
    seen, used = set(), 0
    for slot in slots:
        at = L.group_slot_at(slot)
        flag = get(at + L.G_USED)
        n = get(at + L.G_NAME_LEN)
        name = bytes(meta.mm[at + L.G_NAME:at + L.G_NAME + n]) if 0 < n <= 255 else b""
        try:
            group = name.decode("ascii")
            names.check_name(group, "group")
        except (UnicodeDecodeError, ShmwalError):
            group = None
        if group is None or group in seen:
            why = "no valid name" if group is None else f"the name of another slot ({group})"
            findings.append(Finding(at + L.G_USED, f"group slot {slot} has {why}; dropped", setter(at + L.G_USED, 0)))
            continue
        seen.add(group)
        used += 1
        if flag != 1:
            findings.append(Finding(at + L.G_USED, f"group slot {slot} in-use flag {flag:#x}; set to 1",
                                    setter(at + L.G_USED, 1)))
        if get(at + L.G_CURSOR) > next_offset:
            findings.append(Finding(at + L.G_CURSOR, f"cursor of group {group} ({get(at + L.G_CURSOR)}) past the "
                                                     f"end ({next_offset}); set to the end",
                                    setter(at + L.G_CURSOR, next_offset)))
    if get(L.H_GROUPS) != used:
        findings.append(Finding(L.H_GROUPS, f"group count {get(L.H_GROUPS)}, {used} in use; set to {used}",
                                setter(L.H_GROUPS, used)))
    return findings


def chain_findings(meta, files) -> tuple[list[Finding], str | None]:
    """Published chain slots against their blocks' headers: (repairs, a problem that needs a rebuild)."""
    findings = []
    first, published = meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)
    capacities = collections.Counter(meta.chain(k)[2] for k in range(first, published))
    elsewhere = None   # (chain index -> where a header names it), scanned once if needed
    for k in range(first, published):
        file_id, file_offset, capacity, block_first = meta.chain(k)
        at = L.chain_slot_at(k)
        try:
            buf = files.map(file_id)
            header = _read_header_alone(buf, file_offset)
        except (OSError, ValueError):
            buf = header = None
        if header is None or header[3] != meta.name or header[0] != k:
            # Either the slot or the block's header is damaged: a header naming this
            # slot somewhere else says it was the slot (its file or offset word).
            if elsewhere is None:
                from .recovery import find_topic_blocks
                elsewhere = {}
                for index, f_id, f_off, cap, f_first in find_topic_blocks(files.directory, meta.name):
                    elsewhere.setdefault(index, []).append((f_first != block_first if index == k else 0,
                                                            f_id, f_off, cap, f_first))
            found = sorted(c for c in elsewhere.get(k, ()) if (c[1], c[2]) != (file_id, file_offset))
            if found:
                _, f_id, f_off, f_cap, f_first = found[0]

                def move(w=at, f_id=f_id, f_off=f_off, f_cap=f_cap, f_first=f_first):
                    # The whole slot from the block's header: the slot's other words may be hit too.
                    meta.set(w + L.C_CAPACITY, 0)
                    meta.set(w + L.C_FILE_ID, f_id)
                    meta.set(w + L.C_FILE_OFFSET, f_off)
                    meta.set(w + L.C_FIRST_OFFSET, f_first)
                    meta.set(w + L.C_CAPACITY, f_cap)
                findings.append(Finding(at, f"chain slot {k} names file {file_id} +{file_offset}, which does not "
                                            f"hold it; its block is in file {f_id} +{f_off}: set from the block", move))
                continue
            if header is not None:
                return findings, (f"chain slot {k} (meta +{at}) points at a block of "
                                  f"{header[3] if header[3] != meta.name else 'chain slot %d' % header[0]}")
            if buf is not None and file_offset + L.BLOCK_HEADER_SIZE <= len(buf):
                # The header alone is damaged: the slot stands; the header is written again
                # (so that the next start need not look for the block elsewhere).
                findings.append(Finding(at, f"chain slot {k}: the header of its block (file {file_id} "
                                            f"+{file_offset}) is damaged; rewritten from the slot",
                                        lambda b=buf, k=k, o=file_offset, f=block_first, c=capacity:
                                        write_block_header(b, o, k, f, c, meta.name)))
            continue   # (or its file is lost: its entries read as CorruptEntry, verify names them)
        h_index, h_first, h_capacity, h_topic = header
        if h_first != block_first:
            # One of the two was damaged: the block's first record says which.
            try:
                record_first = read_record(buf, file_offset + L.BLOCK_HEADER_SIZE, file_offset + capacity).first_offset
            except BadRecord:
                record_first = None
            if record_first == h_first:
                findings.append(Finding(at + L.C_FIRST_OFFSET, f"chain slot {k}: first offset {block_first}, its "
                                        f"block starts at {h_first}; set from the block",
                                        lambda w=at + L.C_FIRST_OFFSET, v=h_first: meta.set(w, v)))
        if h_capacity != capacity:
            # The size the other blocks have (or, alone, the one that fits its file) is the undamaged one.
            size = len(buf)
            right = max((capacity, h_capacity), key=lambda c: (capacities[c] - (c == capacity), file_offset + c <= size,
                                                              -c))
            if right != capacity:
                findings.append(Finding(at + L.C_CAPACITY, f"chain slot {k}: capacity {capacity}, its block says "
                                        f"{h_capacity}; set from the block",
                                        lambda w=at + L.C_CAPACITY, v=h_capacity: meta.set(w, v)))
    return findings, None


def _read_header_alone(buf: mmap.mmap, file_offset: int):
    """A block's header, read without the kernel's readahead around it.

    A fault in a mapping reads ahead (128 KiB and more): header by header, start-up made
    every small block of a cold backlog resident, which then read through the page cache
    instead of io_uring (tests/test_uring_batch.py cold_backlog). MADV_RANDOM on the
    header's page alone, then back to normal, so the mapping's areas merge again.
    """
    page = file_offset - file_offset % L.PAGE
    if page + L.PAGE > len(buf):
        return read_block_header(buf, file_offset)
    buf.madvise(mmap.MADV_RANDOM, page, L.PAGE)
    try:
        return read_block_header(buf, file_offset)
    finally:
        buf.madvise(mmap.MADV_NORMAL, page, L.PAGE)
