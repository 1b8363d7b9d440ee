"""Reclamation: blocks every group has read past, and retention no longer keeps, go back to the allocator.

The policy is pure (chain, cursors, retention, clock and pins in; what to free
and what to offer for reuse out), so it is tested without processes, with a
clock the test sets:

* ``reclaimable``: how far a topic's first block may move past what every
  group read.  The tail block (``published - 1``) is never reclaimed: a writer
  still uses it.
* ``plan``: ``reclaimable`` under a ``Retention``: consumed blocks stay while
  among the newest ``bytes`` of payload or younger than ``seconds``; past
  ``max_bytes`` the oldest blocks go even unread (``forced``).
* ``dispose``: which of the reclaimed blocks are offered back to their
  topic (``offer``) and which are freed (``free``).

``Reclaimer`` is the shell that applies it to shared memory: the order of
its stores is what makes a reclamation safe against readers and SIGKILL
(see ``reclaim_topic``), and it deletes files once their last block is gone.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..blocks import layout as L
from ..blocks.allocator import BlockAllocator
from ..blocks.files import BlockFiles
from ..blocks.codec import iter_records
from ..client.hot import native
from ..ipc import sync
from ..options import Retention
from .registry import REUSE_TTL, Registry, TopicState

RECLAIM_EVERY = 1.0        # seconds between reclamation passes
DELETE_GRACE = 2.0         # seconds between a file's last block being reclaimed and its unlink
MAX_REUSABLE = 16          # reclaimed blocks kept for reuse per topic (their files kept meanwhile)
UNREADABLE_PINS = -1       # a block whose pin word cannot be read: never reused

_PIN = struct.Struct("<Q")

Slot = tuple  # (file_id, file_offset, capacity, first_offset): blocks/meta.TopicMeta.chain


# ----------------------------------------------------------------------------- the policy (pure)

def reclaimable(slot: Callable[[int], Slot], first: int, published: int, cursors: Iterable[int]) -> int:
    """The new first block: past every block whose entries all lie below every group's cursor.

    ``slot(i)`` is chain slot ``i``; no groups (nobody read the topic yet): it keeps everything.
    """
    cursors = list(cursors)
    if not cursors:
        return first
    low = min(cursors)
    k = first
    while k + 1 < published and slot(k + 1)[3] <= low:   # block k ends where block k + 1 starts
        k += 1
    return k


@dataclass(frozen=True)
class Plan:
    first: int      # the topic's new first block
    forced: bool    # max_bytes took blocks that retention alone keeps: maybe unread by some group


def plan(slot: Callable[[int], Slot], first: int, published: int, allocated: int, cursors: Sequence[int],
         retention, *, payload: Callable[[int], int], tail_payload: Callable[[], int],
         sealed_at: Callable[[int], float], now: float) -> Plan:
    """Where the topic's first block moves to under ``retention`` (options.Retention).

    ``slot(i)``: chain slot i; blocks ``first .. published - 1`` hold entries, the last
    of them the tail; ``allocated``: slots handed out (spares included: they take
    space, so ``max_bytes`` counts them).  ``cursors``: every group's (none: the topic
    keeps everything, unless max_bytes).  ``payload(i)``: payload bytes of sealed
    block i; ``tail_payload()``: of the tail; ``sealed_at(i)``: when the writer left
    block i (its newest entry's age), on the clock ``now`` is read from.
    """
    tail = published - 1
    if tail <= first:
        return Plan(first, False)
    k = reclaimable(slot, first, published, cursors)
    if k > first and retention.bytes > 0:
        # Newest first: the first block with at least ``bytes`` of payload after it
        # ends the kept range; it and everything older may go.
        newer, i = tail_payload(), tail - 1
        while i >= first and newer < retention.bytes:
            newer += payload(i)
            i -= 1
        k = min(k, i + 1)
    if k > first and retention.seconds is not None:
        j = first
        while j < k and now - sealed_at(j) >= retention.seconds:
            j += 1
        k = j
    forced = False
    if retention.max_bytes is not None:
        total = sum(slot(i)[2] for i in range(k, allocated))
        while total > retention.max_bytes and k < tail:
            total -= slot(k)[2]
            k += 1
            forced = True
    return Plan(k, forced)


@dataclass
class Disposal:
    offer: list = field(default_factory=list)   # (file_id, file_offset): back to the topic for reuse
    free: list = field(default_factory=list)    # (file_id, file_offset): back to the allocator


def dispose(blocks: Sequence[Slot], pins: Sequence[int], *, writer_active: bool, block_size: int,
            room: int) -> Disposal:
    """Offer or free each reclaimed block.

    Reuse is for topics being written (``writer_active``: a block offered to an
    idle topic would only keep its file REUSE_TTL longer), for blocks of the
    standard size, while the topic has ``room`` for more, and only for blocks
    no zero-copy view pins (``pins``: layout.B_PINS of each block, loaded after
    the reclamation was published).
    """
    out = Disposal()
    for (file_id, file_offset, capacity, _first), pinned in zip(blocks, pins):
        if writer_active and capacity == block_size and room > 0 and pinned == 0:
            out.offer.append((file_id, file_offset))
            room -= 1
        else:
            out.free.append((file_id, file_offset))
    return out


def due_for_delete(pending: dict[int, float], deletable: Iterable[int], now: float) -> list[int]:
    """Files whose last block went at least DELETE_GRACE ago; ``pending`` (file -> when) is updated."""
    for file_id in deletable:
        pending.setdefault(file_id, now + DELETE_GRACE)
    due = [file_id for file_id, when in pending.items() if when <= now]
    for file_id in due:
        del pending[file_id]
    return due


# ----------------------------------------------------------------------------- the shell

class Reclaimer:
    def __init__(self, registry: Registry, allocator: BlockAllocator, files: BlockFiles, block_size: int,
                 retention=None, clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.allocator = allocator
        self.files = files
        self.block_size = block_size
        self.retention = Retention() if retention is None else retention
        self.clock = clock           # retention by seconds reads it (tests set it: server/main.py --clock-file)
        self.pending_delete: dict[int, float] = {}
        # Per topic, per sealed chain slot: when this broker saw the writer leave it (a block's
        # newest entry is that old; blocks sealed before this broker started count from its
        # start, so a restart never shortens retention), and its payload bytes (walked once).
        self._sealed: dict[str, dict[int, float]] = {}
        self._payload: dict[str, dict[int, int]] = {}
        self._sealed_upto: dict[str, int] = {}   # chain slots below it have a seal time
        # topic -> [(file_id, file_offset, until)]: reclaimed blocks a zero-copy view still
        # pinned, held back (live) for reuse once the pin goes, until REUSE_TTL has passed.
        # Freeing them at once made a topic read zero-copy fault fresh blocks in, while its
        # reader dropped the views of the block it left a moment after the reclamation.
        self.parked: dict[str, list] = {}
        self.on_delete = None   # called after a pass deleted block files (the broker tells its clients)

    def reclaim(self) -> None:
        """Free blocks every group has read past; delete files left with no live block."""
        for state in list(self.registry.topics.values()):
            self.reclaim_topic(state)
        self.allocator.expire(REUSE_TTL)
        self.allocator.release_due()
        deleted = False
        for file_id in due_for_delete(self.pending_delete, self.allocator.deletable(), time.monotonic()):
            self.allocator.forget(file_id)
            self.files.remove(file_id)
            deleted = True
        if deleted and self.on_delete is not None:
            self.on_delete()

    def reclaim_busy(self) -> None:
        """Between full passes, reclaim the topics whose writers moved on (so their blocks can be reused soon)."""
        for state in list(self.registry.topics.values()):
            if state.busy or state.meta.name in self.parked:
                state.busy = False
                self.reclaim_topic(state)

    def reclaim_topic(self, state: TopicState) -> None:
        meta = state.meta
        if meta.name in self.parked:
            self._unpark(state)
        cursors = [meta.group_word(slot, L.G_CURSOR) for slot in list(state.groups.values())]
        first, published = meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)
        allocated = min(meta.get(L.H_ALLOCATED_BLOCKS), L.CHAIN_SLOTS)
        sealed = self._sealed.setdefault(meta.name, {})
        sizes = self._payload.setdefault(meta.name, {})
        now = self.clock()
        for index in range(max(first, self._sealed_upto.get(meta.name, 0)), published - 1):
            sealed[index] = now
        self._sealed_upto[meta.name] = max(first, published - 1)

        def payload(index: int) -> int:
            found = sizes.get(index)
            if found is None:
                found = sizes[index] = self._payload_bytes(meta.chain(index), meta.chain(index + 1)[3])
            return found

        def tail_payload() -> int:
            kept = meta.get(L.H_BYTES) - meta.get(L.H_RECLAIMED_BYTES)
            return max(0, kept - sum(payload(i) for i in range(first, published - 1)))

        decided = plan(meta.chain, first, published, allocated, cursors, self.retention, payload=payload,
                       tail_payload=tail_payload, sealed_at=lambda index: sealed.get(index, now), now=now)
        k = decided.first
        if k == first:
            return
        blocks = [meta.chain(index) for index in range(first, k)]
        freed_bytes = sum(payload(index) for index in range(first, k))
        low = min(cursors) if cursors else None
        unread = [low is not None and meta.chain(index + 1)[3] > low for index in range(first, k)]
        for index in range(first, k):
            sealed.pop(index, None)
            sizes.pop(index, None)
        # Readers clamp to H_FIRST_OFFSET, so it moves before H_FIRST_BLOCK (a SIGKILL between
        # the two leaves a state the next broker takes as it is); H_FORCED_OFFSET before both,
        # so a reader that sees the new oldest entry knows what was dropped unread (read.py
        # lost_below). The atomic add after them is a full barrier: the pins are loaded only
        # once H_FIRST_BLOCK is visible (a zero-copy reader pins, then loads H_FIRST_BLOCK:
        # client/read.py _pinned_view).
        if decided.forced:
            meta.set(L.H_FORCED_OFFSET, meta.chain(k)[3])
        meta.set(L.H_FIRST_OFFSET, meta.chain(k)[3])
        meta.set(L.H_FIRST_BLOCK, k)
        sync.atomic_add(meta.base + L.H_RECLAIMED_BYTES, freed_bytes)
        pins = [self._pins(file_id, file_offset) for file_id, file_offset, _, _ in blocks]
        # A block dropped unread may have a stalled reader in it: never reused (its bytes
        # would change under that reader), only freed; read.py takes any damage it then
        # meets below the oldest kept entry for what it is.
        for (file_id, file_offset, _, _), n, dropped in zip(blocks, pins, unread):
            if dropped:
                self.allocator.free(file_id, file_offset, release_space=n == 0)
        read = [i for i, dropped in enumerate(unread) if not dropped]
        disposal = dispose([blocks[i] for i in read], [pins[i] for i in read],
                           writer_active=time.monotonic() - state.moved_at < REUSE_TTL,
                           block_size=self.block_size, room=MAX_REUSABLE - self.allocator.reusable(meta.name))
        for file_id, file_offset in disposal.offer:
            self.allocator.offer(meta.name, file_id, file_offset)
        pinned = {(file_id, file_offset): n for (file_id, file_offset, _, _), n in zip(blocks, pins) if n != 0}
        capacity = {(file_id, file_offset): cap for file_id, file_offset, cap, _ in blocks}
        until = time.monotonic() + REUSE_TTL
        for file_id, file_offset in disposal.free:
            n = pinned.get((file_id, file_offset), 0)
            if n > 0 and capacity[file_id, file_offset] == self.block_size:
                # Pinned now, maybe not in a moment: reuse it then (_unpark). No new pin can
                # take hold: H_FIRST_BLOCK is past it, and a reader that pins loads that after.
                self.parked.setdefault(meta.name, []).append((file_id, file_offset, until))
                continue
            # A pinned block's bytes stay (a zero-copy view reads them) until its file goes.
            self.allocator.free(file_id, file_offset, release_space=n == 0)

    def _unpark(self, state: TopicState) -> None:
        """Offer the parked blocks whose pins went (writer still active, room left); free
        those past their time; keep the rest parked."""
        name = state.meta.name
        now = time.monotonic()
        keep = []
        for file_id, file_offset, until in self.parked.pop(name, ()):
            pins = self._pins(file_id, file_offset)
            if pins == 0 and now - state.moved_at < REUSE_TTL and self.allocator.reusable(name) < MAX_REUSABLE:
                self.allocator.offer(name, file_id, file_offset)
            elif pins > 0 and now < until:
                keep.append((file_id, file_offset, until))
            else:
                self.allocator.free(file_id, file_offset, release_space=pins == 0)
        if keep:
            self.parked[name] = keep

    def _pins(self, file_id: int, file_offset: int) -> int:
        """Processes holding zero-copy views into the block (layout.B_PINS)."""
        try:
            return _PIN.unpack_from(self.files.map(file_id), file_offset + L.B_PINS)[0]
        except (OSError, ValueError, struct.error):
            return UNREADABLE_PINS

    def _payload_bytes(self, block: Slot, end: int) -> int:
        file_id, file_offset, capacity, first = block
        try:
            buf = self.files.map(file_id)
        except OSError:
            return 0
        start, limit = file_offset + L.BLOCK_HEADER_SIZE, file_offset + capacity
        if native is not None:
            return native.payload_bytes(buf, start, limit, first, end)
        # Stops at the first damage, as hot.c's payload_bytes does: stats, not data.
        return sum(sum(record.lengths) for record in iter_records(buf, start, limit, first, end))
