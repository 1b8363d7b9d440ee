"""One thread per (client, topic) that sleeps where readers sleep and wakes asyncio futures.

Facts this relies on (client/append.py, client/read.py):

* A reader that finds nothing adds 1 to the topic's ``H_WAITERS`` (a locked
  instruction, a full barrier), looks at ``H_NEXT_OFFSET`` once more, and
  sleeps on the topic's POSIX semaphore; every appender, after publishing,
  posts the semaphore ``H_WAITERS - value`` times (at most 64). So a sleeper
  that saw the old offset is posted once the new one is published.
* Posts are not addressed: whoever sleeps takes one. A waiter that goes back
  to sleep before the others woke can take a post meant for another one
  (which then wakes at the end of its slice, ``WAIT_SLICE``, 0.25 s later).

What this means here:

* Waiting reads register a future with the offset they last saw
  (``published()``, loaded *before* their non-blocking read). The thread
  resolves every future whose offset differs from the current one, and sleeps
  on the semaphore, as one reader, only while futures are left that saw the
  current offset. It adds nothing to ``H_WAITERS`` while no read waits, so
  appenders make no system call for an idle async client.
* It does not steal posts. After a real wake-up every future is resolved and
  the thread sleeps again only once the event loop re-registered a read that
  found nothing, which is after the loop thread ran: by then the other
  sleepers woken with it have long taken their posts. A post taken while the
  offset did not move (one meant for a sleeper that has not run yet, or one
  left over by a sleeper that timed out) is handed back when other sleepers
  are short of posts, and the thread pauses ``HAND_BACK_PAUSE`` so that one of
  them, not this thread, takes it.
* No polling: the thread sleeps in the semaphore; every ``WAIT_SLICE`` it
  looks at the broker's liveness (a dead broker or a new one resolves every
  future, so that the reads raise or pick up new handles) and at ``close``.
"""

from __future__ import annotations

import threading
import time

import posix_ipc

from ..blocks import layout as L
from ..ipc import sync

_W_NEXT = L.H_NEXT_OFFSET // 8
_W_WAITERS = L.H_WAITERS // 8
WAIT_SLICE = 0.25
HAND_BACK_PAUSE = 0.001
WAITERS_SANE = 1 << 20     # above: an underflow left by a reader killed mid-sleep (as append.py)


def _resolve(future) -> None:
    if not future.done():
        future.set_result(None)


class TopicWaker:
    """Wakes this process's asyncio reads of one topic when an appender publishes."""

    def __init__(self, client, topic: str):
        meta, sem = client._topic(topic, create=True)   # as a waiting read: the topic may not exist yet
        self.client = client
        self.run_id = client._run_id
        self._meta = meta                 # keeps the mapping under ``words`` alive
        self.words = meta.words
        self._waiters = meta.base + L.H_WAITERS
        self._sem = sem
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict = {}          # future -> the publish word its read saw
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=f"shmwal-waker-{topic}", daemon=True)
        self._thread.start()

    def published(self) -> int:
        return self.words[_W_NEXT]

    def add(self, future, seen: int) -> None:
        with self._cond:
            self._pending[future] = seen
            self._cond.notify()

    def discard(self, future) -> None:
        with self._cond:
            self._pending.pop(future, None)

    def close(self) -> None:
        """Resolve every waiting read and let the thread end (within a slice)."""
        with self._cond:
            self.closed = True
            self._cond.notify()
            ready = list(self._pending)
            self._pending.clear()
        self._wake(ready)

    def join(self, timeout: float = WAIT_SLICE * 4) -> None:
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                current = self.words[_W_NEXT]
                ready = [f for f, seen in self._pending.items() if seen != current]
                for future in ready:
                    del self._pending[future]
                left = bool(self._pending)
            self._wake(ready)
            if left and not self._sleep(current):
                with self._cond:   # the broker went or changed: every read looks for itself
                    ready = list(self._pending)
                    self._pending.clear()
                self._wake(ready)

    @staticmethod
    def _wake(futures) -> None:
        for future in futures:
            try:
                future.get_loop().call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass   # its loop is closed: nobody waits for it any more

    def _sleep(self, seen: int) -> bool:
        """Sleep as one reader until the publish word may have moved off ``seen``, or a slice
        passed. False: the client lost its broker, or has a new one (these handles are stale)."""
        words = self.words
        took_post = False
        sync.atomic_add(self._waiters, 1)   # a full barrier before the last look (module docstring)
        try:
            if words[_W_NEXT] == seen:
                try:
                    self._sem.acquire(WAIT_SLICE)
                    took_post = True
                except posix_ipc.BusyError:
                    pass
        finally:
            sync.atomic_add(self._waiters, -1)
        if took_post and words[_W_NEXT] == seen:
            others = words[_W_WAITERS]
            if 0 < others < WAITERS_SANE and others > self._sem.value:
                self._sem.release()          # not ours: a sleeper short of a post takes it
                time.sleep(HAND_BACK_PAUSE)
        client = self.client
        return client._alive and client._run_id == self.run_id and not client._closed
