"""What appenders and readers need of their client: the narrow control protocol.

``Appender`` (append.py) and ``GroupReader`` (read.py) move entries through
the mapped files on their own; of the broker connection they need only this:
ask for a block, say that a writer moved to a new one, check that the broker
still lives, get a reader with fresh handles after a reconnect, the io_uring fetcher, and the two flags of the
broker's policy that change the per-entry path.  The ``Client`` makes one
``Link`` and refreshes its flags on every connect (handles built before a
reconnect are dropped then, so each appender and reader reads them once).
"""

from __future__ import annotations

import threading


_MOVED = {"op": "moved"}


class Link:
    __slots__ = ("_rpc", "_tell", "_check_alive", "_reader", "_reader_again", "fetcher", "sync_each",
                 "strict_sync")

    def __init__(self, rpc, check_alive, reader, fetcher, reader_again, tell):
        self._rpc = rpc                  # fn(op, **args) -> reply: one control request
        self._tell = tell                # fn(message): a one-way word to the broker, never answered
        self._check_alive = check_alive  # fn(): raises BrokerUnavailable if no broker answers
        self._reader = reader            # fn(topic, group, create) -> GroupReader
        self._reader_again = reader_again   # fn(GroupReader) -> GroupReader, for a deleted group
        self.fetcher = fetcher           # uring.fetch.UringFetcher, or None: batch reads map
        self.sync_each = False           # SyncEach: every append fsyncs before it returns
        self.strict_sync = False         # SyncEach and StrictlyAtOnce: every checkpoint too

    def alloc_block(self, topic: str, chain_index: int, min_capacity: int) -> None:
        """Ask the broker for chain slot ``chain_index`` (the caller holds the writer mutex)."""
        self._rpc("alloc_block", topic=topic, chain_index=chain_index, min_capacity=min_capacity,
                  tid=threading.get_native_id())

    def moved(self) -> None:
        """Say that a writer just moved to a new block, so that the broker looks at every
        writer now (server/provisioning.py) and readies the next spare, not at its next look.
        The only word told on the watch connection: the broker does not decode what comes
        after "watch" there (broker.py _readable), a turn of its loop is the whole effect."""
        self._tell(_MOVED)

    def check_alive(self) -> None:
        self._check_alive()

    def fresh_reader(self, topic: str, group: str):
        """The group's reader with the handles of the broker that runs now."""
        return self._reader(topic, group, create=True)

    def reader_again(self, reader):
        """A fresh reader for a group deleted under ``reader`` (the read names it: it is made anew)."""
        return self._reader_again(reader)
