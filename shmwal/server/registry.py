"""The broker's bookkeeping of topics and groups: which exist, their meta files and semaphores.

One ``TopicState`` per topic, kept in ``Registry.topics`` for the broker's
life.  Topics and groups are made here (``open_topic``, ``open_group``), and
``broker.run`` names every semaphore so that the next broker can remove them
if this one is killed (server/startup.py sweeps them).  Only the control loop
changes the registry; the fsync thread reads a snapshot (``states``).
"""

from __future__ import annotations

import errno
import heapq
import json
import os
import threading

import posix_ipc

from ..blocks import layout as L
from ..blocks.allocator import no_space
from ..blocks.meta import TopicMeta
from ..errors import ShmwalError
from ..ipc import names
from ..ipc.fsio import make_private_dir, write_atomic
from .verify import topic_stats

REUSE_TTL = 1.0   # seconds a reclaimed block waits for its topic to reuse it, then it is freed


class TopicState:
    """What the broker tracks of one topic beyond its meta file."""

    __slots__ = ("meta", "sem", "sem_name", "synced_next", "synced_cursors", "synced_block", "seen_tail",
                 "busy", "moved_at", "groups", "free_slots")

    def __init__(self, meta: TopicMeta, sem_name: str):
        self.meta = meta
        # The group table's index: name -> slot (the meta file has the slots, scanned once
        # here), and the free slots below the high mark as a heap, lowest first (pages stay
        # dense).  The fsync thread reads ``groups`` through list(): a copy under the GIL.
        self.groups: dict[str, int] = meta.group_names()
        used = set(self.groups.values())
        self.free_slots = [slot for slot in range(meta.group_high()) if slot not in used]
        self.sem_name = sem_name
        self.sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREAT, mode=0o600, initial_value=0)
        self.synced_next = -1      # server/fsync.py: what the last pass made durable
        self.synced_cursors = -1
        self.synced_block = 0
        self.seen_tail = meta.get(L.H_TAIL_CHAIN)   # server/provisioning.py: the writer's block at its last look
        self.busy = False       # its writer moved to a new block since the last reclamation look
        self.moved_at = -REUSE_TTL   # monotonic time its writer last moved to a new block


class Registry:
    def __init__(self, root: str, prefix: str, run_id: int):
        self.root = root
        self.topics_dir = os.path.join(root, "topics")
        self.prefix = prefix
        self.run_id = run_id
        self.topics: dict[str, TopicState] = {}
        self.lock = threading.Lock()   # the fsync thread reads self.topics
        self.next_topic_id = 1

    def states(self) -> list[TopicState]:
        with self.lock:
            return list(self.topics.values())

    def adopt(self, meta: TopicMeta) -> TopicState:
        """Track a topic whose meta file exists (recovery, creation)."""
        self.next_topic_id = max(self.next_topic_id, meta.topic_id + 1)
        state = TopicState(meta, f"{self.prefix}_t{meta.topic_id}")
        with self.lock:
            self.topics[meta.name] = state
        return state

    def get(self, topic: str) -> TopicState:
        names.check_name(topic)
        state = self.topics.get(topic)
        if state is None:
            raise ShmwalError(f"no topic {topic}")
        return state

    def write_run_file(self) -> None:
        """broker.run: who runs here and which semaphores are its (for the next broker's sweep)."""
        write_atomic(os.path.join(self.root, "broker.run"), json.dumps({
            "pid": os.getpid(), "run_id": self.run_id, "prefix": self.prefix,
            "semaphores": sorted(t.sem_name for t in self.topics.values()),
        }).encode())

    # ------------------------------------------------------------------ ops (keyword arguments from a request)
    def open_topic(self, topic, create=False, **_):
        names.check_name(topic)
        state = self.topics.get(topic)
        if state is None:
            if not create:
                return None
            state = self._create_topic(topic)
        return {"path": state.meta.path, "sem": state.sem_name, "topic_id": state.meta.topic_id}

    def _create_topic(self, topic: str) -> TopicState:
        tdir = os.path.join(self.topics_dir, topic)
        make_private_dir(tdir)
        try:
            meta = TopicMeta.create(os.path.join(tdir, "meta"), topic, self.next_topic_id)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # TopicMeta.create allocates the header and group pages and the first chain page.
            raise no_space(self.topics_dir, L.CHAIN_AT + L.PAGE, f"the meta file of new topic {topic!r}") from None
        state = self.adopt(meta)
        self.write_run_file()
        return state

    def open_group(self, topic, group, create=True, start="earliest", **_):
        """The group's slot and generation: {"slot", "gen", "created"}; None if it does not
        exist and ``create`` is false (then nothing is made, not even the topic)."""
        names.check_name(topic)
        names.check_name(group, "group")
        if not (start in ("earliest", "latest") or (type(start) is int and start >= 0)):
            raise ValueError(f"bad start {start!r}")
        state = self.topics.get(topic)
        if state is None:
            if not create:
                return None
            state = self._create_topic(topic)
        meta = state.meta
        slot = state.groups.get(group)
        if slot is not None:
            return {"slot": slot, "gen": meta.group_word(slot, L.G_GEN), "created": False}
        if not create:
            return None
        if state.free_slots:
            slot = state.free_slots[0]
        elif meta.group_high() < L.GROUP_SLOTS:
            slot = meta.group_high()
        else:
            raise ShmwalError(f"topic {topic} has no room for more than {L.GROUP_SLOTS} groups")
        first, end = meta.get(L.H_FIRST_OFFSET), meta.get(L.H_NEXT_OFFSET)
        cursor = first if start == "earliest" else end if start == "latest" else min(max(start, first), end)
        gen = meta.init_group(slot, group, cursor)
        if state.free_slots and state.free_slots[0] == slot:
            heapq.heappop(state.free_slots)
        state.groups[group] = slot
        return {"slot": slot, "gen": gen, "created": True}

    def group_names(self, topic, **_):
        """The topic's groups, sorted (op ``groups``)."""
        names.check_name(topic)
        state = self.topics.get(topic)
        return sorted(state.groups) if state is not None else []

    def delete_group(self, topic, group, **_):
        """Delete a group; True if it existed.  Its slot is reused (layout.G_GEN)."""
        names.check_name(topic)
        names.check_name(group, "group")
        state = self.topics.get(topic)
        if state is None or group not in state.groups:
            return False
        slot = state.groups[group]
        state.meta.free_group(slot)
        del state.groups[group]
        heapq.heappush(state.free_slots, slot)
        state.busy = True   # what it held back may go at the next tick
        return True

    def visible_topics(self, **_):
        return sorted(name for name, t in self.topics.items() if t.meta.get(L.H_VISIBLE))

    def topic_stats(self) -> dict:
        return {name: topic_stats(t.meta, dict(t.groups)) for name, t in sorted(self.topics.items()) if t.meta.get(L.H_VISIBLE)}

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Remove every semaphore and unmap every meta file (clean shutdown)."""
        for state in self.topics.values():
            try:
                state.sem.unlink()
            except posix_ipc.ExistentialError:
                pass
            state.sem.close()
            state.meta.close()
