"""One asyncio event loop on a daemon thread, for a synchronous client of nats-py.

nats-py is asyncio only, and a ``Client`` is called from plain threads (any
number of them at once). Each NatsClient owns one loop running on its own
daemon thread; callers hand it coroutines with ``run_coroutine_threadsafe`` and
wait on the future with a deadline, so a call never waits past its timeout even
when the loop is stuck behind a dead server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from ..errors import BrokerUnavailable


class LoopThread:
    loop = None
    thread = None

    def __init__(self, name: str = "shmwal-nats"):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def call(self, coro, timeout: float | None):
        """Run ``coro`` on the loop; its result, its exception, or BrokerUnavailable at ``timeout``."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("a NatsClient method was called from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerUnavailable(f"no answer from NATS within {timeout} s") from None

    def stop(self, timeout: float = 5.0) -> None:
        loop, self.loop = self.loop, None
        if loop is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            loop.close()
