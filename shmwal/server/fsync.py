"""The fsync schedule: a thread of its own that makes written entries and cursors durable.

An fsync may take long on a real disk and must not stall control requests,
so it runs beside the control loop.  Every ``FsyncEvery`` interval (every
``SYNC_EACH_SWEEP`` under ``SyncEach``), each topic that changed since the last pass
gets its block files fsynced, then its meta file.
"""

from __future__ import annotations

import logging
import threading

from ..blocks import layout as L
from ..blocks.files import BlockFiles
from ..options import FsyncEvery, NoFsync
from .registry import Registry

log = logging.getLogger("shmwal.broker")

SYNC_EACH_SWEEP = 0.2   # seconds between passes when the policy has no interval of its own


class Syncer:
    def __init__(self, registry: Registry, files: BlockFiles, policy):
        self.registry = registry
        self.files = files
        self.policy = policy
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wakeup = threading.Event()

    def start(self) -> None:
        if isinstance(self.policy, NoFsync):
            return
        self._thread = threading.Thread(target=self._loop, name="shmwal-fsync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = self.policy.milliseconds / 1000 if isinstance(self.policy, FsyncEvery) else SYNC_EACH_SWEEP
        while not self._stopping:
            self._wakeup.wait(interval)
            try:
                self.sync_all()
            except Exception:
                log.exception("fsync pass failed")

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def sync_all(self, force: bool = False) -> None:
        """fsync the block files and meta of every topic that changed since the last pass.

        Data before meta: a meta page that reaches the disk first could name
        entries whose bytes did not (recovery would then cut them, as a torn tail).
        """
        # The control loop maps and drops files in self.files: the thread keeps descriptors of its own.
        files = BlockFiles(self.files.directory) if threading.current_thread() is self._thread else self.files
        for state in self.registry.states():
            meta = state.meta
            next_offset = meta.get(L.H_NEXT_OFFSET)
            cursors = sum(meta.group_word(slot, L.G_CURSOR) for slot in list(state.groups.values()))
            if not force and next_offset == state.synced_next and cursors == state.synced_cursors:
                continue
            published = meta.get(L.H_PUBLISHED_BLOCKS)
            start = max(meta.get(L.H_FIRST_BLOCK), min(state.synced_block, published - 1))
            for file_id in sorted({meta.chain(i)[0] for i in range(start, published)}):
                try:
                    files.fsync(file_id)
                except OSError:
                    pass  # reclaimed meanwhile
            meta.flush(upto=published)
            state.synced_next, state.synced_cursors, state.synced_block = next_offset, cursors, published
        if files is not self.files:
            files.close()
