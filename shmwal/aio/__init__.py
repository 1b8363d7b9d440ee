"""asyncio: ``await shmwal.connect_async(...)`` and awaitable reads that wake on publish.

A read is a non-blocking read (``timeout=0``) made on the event loop's thread;
when it finds nothing it awaits a future that the topic's waker thread
(waker.py: one per client and topic, not one per read) resolves when an
appender publishes. Then the read is made again.

Cancellation safety, by construction: the only ``await`` in a read is on that
future, and it comes after a non-blocking read that found nothing (so moved
no cursor) and before the next one. The non-blocking read and the ``return``
of what it found run in one step of the task, with no ``await`` between them,
so a cancellation is delivered either before the read (at the await: no
cursor moved, the entry stays for the group's next read) or not at all (the
task has returned its entry). A future already resolved when the task is
cancelled changes nothing: the task resumes with CancelledError at the await,
before reading.

Appends run on the loop's thread too: they never wait for a reader, only for
the topic's writer mutex (held for a copy) and, rarely, for the broker to hand
out a block. Under ``SyncEach`` an append's fsync holds the loop meanwhile.
"""

from __future__ import annotations

import asyncio

from ..client import Client
from ..timeouts import check_timeout
from ..errors import ClientClosed
from .waker import TopicWaker

__all__ = ["AsyncClient", "connect_async"]


def connect_async(data_dir=None, *, key=None, timeout: float = 5.0, io: str = "auto") -> "_Connecting":
    """``await connect_async(...)`` -> AsyncClient, or ``async with connect_async(...) as client``."""
    return _Connecting(data_dir, key, timeout, io)


class _Connecting:
    def __init__(self, data_dir, key, timeout, io):
        self._args = (data_dir, key, timeout, io)
        self._client = None

    async def _open(self) -> "AsyncClient":
        data_dir, key, timeout, io = self._args
        check_timeout(timeout)
        # Connecting may wait up to ``timeout`` for a broker: not on the loop's thread.
        client = await asyncio.to_thread(Client, data_dir, key=key, timeout=timeout, io=io)
        return AsyncClient(client)

    def __await__(self):
        return self._open().__await__()

    async def __aenter__(self) -> "AsyncClient":
        self._client = await self._open()
        return self._client

    async def __aexit__(self, *exc) -> None:
        await self._client.close()


class AsyncClient:
    """The ``Client`` API for asyncio (API.md "asyncio"); ``.client`` is the Client underneath."""

    def __init__(self, client: Client):
        self.client = client
        self._wakers: dict[str, TopicWaker] = {}
        self._closed = False

    # ------------------------------------------------------------------ writing
    async def append(self, topic, data) -> int:
        """``Client.append``, on the loop's thread (it waits for no reader)."""
        return self.client.append(topic, data)

    async def batch_append(self, topic, items) -> range:
        """``Client.batch_append``, on the loop's thread."""
        return self.client.batch_append(topic, items)

    # ------------------------------------------------------------------ reading
    async def read_next(self, topic, *, group="default", checkpoint=True, timeout=None):
        """``Client.read_next``, awaiting the next entry (``timeout=None``: for ever; a
        number: then ``None``). Cancelled before it returned, it took nothing."""
        client = self.client

        def take():
            return client.read_next(topic, group=group, checkpoint=checkpoint, timeout=0.0)

        return await self._read(topic, take, timeout)

    async def batch_read(self, topic, max_bytes, *, group="default", checkpoint=True, timeout=None,
                         zero_copy: bool = False) -> list:
        """``Client.batch_read``, awaiting the first entry (``timeout``: then ``[]``).
        Cancelled before it returned, it took nothing."""
        client = self.client

        def take():
            return client.batch_read(topic, max_bytes, group=group, checkpoint=checkpoint, timeout=0.0,
                                     zero_copy=zero_copy)

        return await self._read(topic, take, timeout)

    async def subscribe(self, topic, *, group="default"):
        """Every entry of ``topic`` for ``group``, waiting for new ones, until cancelled."""
        while True:
            yield await self.read_next(topic, group=group)

    async def _read(self, topic, take, timeout):
        timeout = check_timeout(timeout)
        found = take()   # also checks the names, and that the client is open
        if found or timeout == 0:
            return found
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            waker = self._waker(topic)
            seen = waker.published()   # before the read: a publish after this wakes us (waker.py)
            found = take()
            if found:
                return found   # no await between the read and here: see the module docstring
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return found
            await self._wait(waker, seen, left)
            if self._closed:
                raise ClientClosed("this client was closed while the read waited")

    @staticmethod
    async def _wait(waker: TopicWaker, seen: int, left) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waker.add(future, seen)
        timer = None if left is None else loop.call_later(left, _resolve, future)
        try:
            if waker.published() == seen:   # else the topic moved while registering: read again
                await future
        finally:
            waker.discard(future)
            if timer is not None:
                timer.cancel()

    def _waker(self, topic: str) -> TopicWaker:
        waker = self._wakers.get(topic)
        client = self.client
        if waker is None or waker.run_id != client._run_id:
            if waker is not None:
                waker.close()
            waker = self._wakers[topic] = TopicWaker(client, topic)
        return waker

    # ------------------------------------------------------------------ the rest, as Client
    async def seek(self, topic, offset, *, group="default") -> None:
        """``Client.seek``."""
        self.client.seek(topic, offset, group=group)

    async def position(self, topic, *, group="default") -> int:
        """``Client.position``."""
        return self.client.position(topic, group=group)

    async def topics(self) -> list:
        """``Client.topics``."""
        return self.client.topics()

    async def stats(self) -> dict:
        """``Client.stats``."""
        return self.client.stats()

    async def close(self) -> None:
        """Wake every waiting read (they then raise ``ClientClosed``), end the waker threads, close the Client."""
        self._closed = True
        wakers, self._wakers = list(self._wakers.values()), {}
        for waker in wakers:
            waker.close()
        for waker in wakers:   # each ends within a slice; the loop runs meanwhile
            await asyncio.to_thread(waker.join)
        self.client.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<shmwal.AsyncClient of {self.client!r}>"


def _resolve(future) -> None:
    if not future.done():
        future.set_result(None)
