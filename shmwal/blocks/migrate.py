"""Upgrading a topic meta file written by an older shmwal (API.md: what was written stays readable).

Version 2 had 256 group slots between the header page and the chain; version 3
(layout.py) puts the chain right after the header and GROUP_SLOTS slots after
the chain.  The broker upgrades at start, before it maps the file, by writing a
version 3 file beside it and renaming it over the old one: a crash at any
point leaves either the old file whole (and a ``meta.v3`` to sweep) or the new
one whole.  Mutexes are initialised afresh in the new file: no process can hold
them there (clients of an earlier broker still map the old inode; they drop
their handles when they meet the new broker).
"""

from __future__ import annotations

import logging
import mmap
import os

from . import layout as L
from ..ipc.fsio import replacing
from .meta import init_mutexes

log = logging.getLogger("shmwal.broker")
_Q = 8
UPGRADE_SUFFIX = ".v3"


def needs_upgrade(path: str) -> bool:
    """True for a version 2 meta file (by size, magic and version word)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != L.V2_META_SIZE:
            return False
        head = os.pread(fd, 16, 0)
    finally:
        os.close(fd)
    return len(head) == 16 and int.from_bytes(head[:8], "little") == L.META_MAGIC \
        and int.from_bytes(head[8:], "little") == L.V2_META_VERSION


def upgrade_v2(path: str) -> int:
    """Rewrite the version 2 meta file at ``path`` as version 3; returns the groups carried over."""
    tmp = path + UPGRADE_SUFFIX
    with open(path, "rb") as f, mmap.mmap(f.fileno(), L.V2_META_SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as old:
        words = memoryview(old).cast("Q")
        try:
            first_block = words[L.H_FIRST_BLOCK // _Q]
            allocated = min(words[L.H_ALLOCATED_BLOCKS // _Q], L.CHAIN_SLOTS)
            used = [slot for slot in range(L.V2_GROUP_SLOTS)
                    if words[(L.V2_GROUPS_AT + slot * L.GROUP_SLOT + L.G_USED) // _Q]]
        finally:
            words.release()
        high = used[-1] + 1 if used else 0
        with replacing(path, tmp) as fd:
            os.ftruncate(fd, L.META_SIZE)
            # Storage first, for every page written below (a store to a hole on a full disk is a SIGBUS).
            os.posix_fallocate(fd, 0, L.CHAIN_AT + L.PAGE)
            chain_lo = L.chain_slot_at(first_block) // L.PAGE * L.PAGE
            chain_hi = L.chain_slot_at(allocated)
            if chain_hi > chain_lo:
                os.posix_fallocate(fd, chain_lo, chain_hi - chain_lo)
            os.posix_fallocate(fd, L.GROUPS_AT, max(L.PAGE, L.group_slot_at(high) - L.GROUPS_AT))
            with mmap.mmap(fd, L.META_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as new:
                new[0:L.PAGE] = old[0:L.PAGE]
                if chain_hi > L.chain_slot_at(first_block):
                    lo = L.chain_slot_at(first_block) - L.CHAIN_AT
                    hi = chain_hi - L.CHAIN_AT
                    new[L.CHAIN_AT + lo:L.CHAIN_AT + hi] = old[L.V2_CHAIN_AT + lo:L.V2_CHAIN_AT + hi]
                for slot in range(high):
                    src = L.V2_GROUPS_AT + slot * L.GROUP_SLOT
                    if slot in used:
                        new[L.group_slot_at(slot):L.group_slot_at(slot + 1)] = old[src:src + L.GROUP_SLOT]
                init_mutexes(new, high)
                nw = memoryview(new).cast("Q")
                nw[L.H_GROUP_HIGH // _Q] = high
                nw[L.H_FORCED_OFFSET // _Q] = 0
                nw[L.H_GROUPS // _Q] = len(used)
                nw[L.H_VERSION // _Q] = L.META_VERSION
                nw.release()
                new.flush()
    log.info("%s: meta file upgraded from version 2 (%d group(s))", path, len(used))
    return len(used)
