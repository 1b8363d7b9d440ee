"""One asyncio event loop per NatsClient, driven by whichever thread needs it.

nats-py is asyncio only, and a ``Client`` is called from plain threads (any
number at once). Handing every call to a loop on another thread costs two
thread switches a call: 30-50 µs on a quiet machine, 300-1,200 µs measured
here on a loaded one, as much as the network round trip itself. So the thread
that calls drives the loop itself (``run_until_complete``) whenever nobody
else is driving it, and only a call that finds the loop busy (another thread's
call under way) hands its coroutine over (``run_coroutine_threadsafe``) and
waits, driving the loop itself if the other thread finished first.

Between calls the connection still needs serving (the server's pings, replies
that arrive late): a daemon *keeper* thread drives the loop once no call has
for ``IDLE`` seconds, and gives it back as soon as a call wants it.

Invariant: exactly one thread runs the loop at a time, the holder of
``driving``; a coroutine handed over is run by whoever holds it next.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

from ..errors import BrokerUnavailable

IDLE = 0.05      # seconds without a call before the keeper serves the connection
POLL = 0.002     # how often a call waiting for a handed-over coroutine looks for a free loop


class LoopThread:
    loop = None
    thread = None

    def __init__(self, name: str = "shmwal-nats"):
        self.loop = asyncio.new_event_loop()
        self.driving = threading.Lock()
        self.driver = None          # ident of the thread running the loop (re-entry check)
        self.last_call = time.monotonic()
        self.stopped = False
        self._keeper_done = None    # the future the keeper runs the loop until
        self.thread = threading.Thread(target=self._keep, name=name, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the keeper
    def _keep(self) -> None:
        while not self.stopped:
            idle = time.monotonic() - self.last_call
            if idle < IDLE:
                time.sleep(IDLE - idle)
                continue
            if not self.driving.acquire(timeout=IDLE):
                continue
            try:
                if self.stopped or time.monotonic() - self.last_call < IDLE:
                    continue
                self._keeper_done = self.loop.create_future()
                self.driver = threading.get_ident()
                self.loop.run_until_complete(self._keeper_done)
            finally:
                self._keeper_done = None
                self.driver = None
                self.driving.release()

    def _release_keeper(self) -> None:
        done = self._keeper_done
        if done is not None:
            try:
                self.loop.call_soon_threadsafe(_finish, done)
            except RuntimeError:
                pass   # the loop is closed

    # ------------------------------------------------------------------ calls
    def _drive(self, awaitable):
        """Run the loop in this thread until ``awaitable`` is done (``driving`` held)."""
        self.driver = threading.get_ident()
        try:
            return self.loop.run_until_complete(awaitable)
        finally:
            self.driver = None

    def call(self, coro, timeout: float | None):
        """Run ``coro`` on the loop; its result, its exception, or BrokerUnavailable at ``timeout``."""
        if self.driver == threading.get_ident():
            coro.close()
            raise RuntimeError("a NatsClient method was called from inside its own event loop")
        self.last_call = time.monotonic()
        try:
            if self.driving.acquire(blocking=False):
                try:
                    return self._run_inline(coro, timeout)
                finally:
                    self.driving.release()
            return self._hand_over(coro, timeout)
        finally:
            self.last_call = time.monotonic()

    def _run_inline(self, coro, timeout):
        # A timer that cancels the task, not asyncio.wait_for: that would add a second
        # task per call, a measurable share of a call that is itself ~100 µs of Python.
        task = self.loop.create_task(coro)
        expired = []
        timer = None
        if timeout is not None:
            timer = self.loop.call_later(timeout, lambda: expired.append(task.cancel()))
        try:
            return self._drive(task)
        except asyncio.CancelledError:
            if expired:
                raise BrokerUnavailable(f"no answer from NATS within {timeout} s") from None
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _hand_over(self, coro, timeout):
        self._release_keeper()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return future.result(POLL)
            except concurrent.futures.TimeoutError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                future.cancel()
                raise BrokerUnavailable(f"no answer from NATS within {timeout} s") from None
            if self.driving.acquire(blocking=False):
                # Whoever drove the loop has finished: drive it until ours is done.
                try:
                    if not future.done():
                        left = None if deadline is None else max(0.0, deadline - time.monotonic())
                        self._drive(asyncio.wait_for(asyncio.wrap_future(future, loop=self.loop), left))
                except asyncio.TimeoutError:
                    future.cancel()
                    raise BrokerUnavailable(f"no answer from NATS within {timeout} s") from None
                finally:
                    self.driving.release()
                return future.result(0)

    def stop(self, timeout: float = 5.0) -> None:
        loop = self.loop
        if loop is None or self.stopped:
            return
        self.stopped = True
        self._release_keeper()
        self.thread.join(timeout)
        if self.driving.acquire(timeout=timeout):
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()
                self.loop = None
            finally:
                self.driving.release()


def _finish(future) -> None:
    if not future.done():
        future.set_result(None)
