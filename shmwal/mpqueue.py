"""``shmwal.Queue``: the ``multiprocessing.Queue`` interface on a topic and a group.

Each ``put`` appends one entry (the pickled item, objects.py) to the topic
named after the queue; each ``get`` reads the next entry for the group, so
within a group every item goes to one getter, in put order (FIFO across all
putters, since the topic's offsets order every append).

Unlike ``multiprocessing.Queue`` there is no feeder thread: ``put`` returns
once the item is in the log and visible to every getter, so ``close``,
``join_thread`` and ``cancel_join_thread`` have nothing to flush, and an item
that was put survives the death of any process (the putter's included).

``qsize()`` is the topic's next offset minus the group's cursor: exact when
nothing moves, and like ``multiprocessing.Queue.qsize`` only a snapshot while
others put and get. ``maxsize`` is enforced against that snapshot, so
putters racing each other can together pass it by up to one item each
(``multiprocessing.Queue`` counts with a semaphore and cannot); a full queue
is waited on by looking at the size again with a growing pause (up to
``FULL_POLL_MAX``), because consumers post no wake-up when they take.
"""

from __future__ import annotations

import pickle
import queue as _stdlib_queue
import time

from . import embedded, objects
from .entry import Entry
from .blocks import layout as L
from .ipc import names
from .timeouts import check_timeout

Empty = _stdlib_queue.Empty
Full = _stdlib_queue.Full
LARGE = 64 * 1024        # items at least this big are read zero-copy (one copy out, not two)
FULL_POLL_MIN = 50e-6
FULL_POLL_MAX = 5e-3
_W_NEXT = L.H_NEXT_OFFSET // 8
_PROTOCOL = objects.PROTOCOL
_TAG_PICKLE = objects.TAG_PICKLE
_dumps = pickle.dumps
_loads = pickle.loads
_MISS = object()   # get's fast path: "not served here", never an item (pickle cannot make it)


class Queue:
    """A process-shared FIFO of Python objects, persisted in a shmwal topic.

    ``name`` is the topic (API.md's topic rules; a bad one raises ``InvalidTopic``),
    ``group`` the consumer group whose getters share the items (another group gets
    every item again). ``maxsize <= 0``: unbounded. ``data_dir=None``: ``$SHMWAL_DATA_DIR``
    if set, else a temporary directory of this process's own, removed at its exit.
    With no broker running on the directory, this starts one that lives as long as
    this process; a running one is used as it is (``BrokerUnavailable`` if none
    answers in 5 s after starting).
    """

    def __init__(self, name: str, maxsize: int = 0, *, data_dir=None, key=None, group: str = "default"):
        names.check_name(name, "queue name")
        names.check_name(group, "group")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        directory, temporary = embedded.resolve(data_dir)
        self._name = name
        self._maxsize = max(0, maxsize)   # as multiprocessing: <= 0 means no bound
        self._data_dir = directory
        self._key = key
        self._group = group
        self._closed = False
        self._client = None
        self._read_large = False   # the last item read was large: read the next zero-copy
        self._forget_handles()
        self._client = embedded.client_for(directory, key, temporary=temporary)

    # ------------------------------------------------------------------ multiprocessing.Queue
    def put(self, obj, block: bool = True, timeout=None) -> None:
        """Append ``obj`` (pickled, protocol 5) once there is room (``maxsize``).

        Returns once the item is in the log and visible to every getter. A full
        queue: with ``block=False`` raises ``queue.Full`` at once, else waits up to
        ``timeout`` seconds (None: for ever) and then raises ``queue.Full``. An object
        that does not pickle raises pickle's own error and writes nothing. Closed:
        ``ValueError``.
        """
        if self._closed:
            self._check_closed()
        if block and timeout is not None:
            timeout = _check_timeout(timeout)
        if self._maxsize:
            self._wait_for_room(block, timeout)
        if type(obj) is not bytes:
            buffers = []
            stream = _dumps(obj, _PROTOCOL, buffer_callback=buffers.append)
            if not buffers:   # the common case, kept short: one pickle, one append
                # The topic's appender straight (hot.c), while the client that made it
                # is connected and has not dropped it; else Client.append.
                appender = self._hot_appender
                if appender is None or appender.stale or not self._client._alive \
                        or appender.hot_append(stream) < 0:
                    self._append(stream)
                return
            parts, total = objects.with_buffers(stream, buffers)
        else:
            parts, total = objects.encode(obj)
        client = self._client or self._connect()
        if len(parts) > 1 and total >= LARGE:
            with client.reserve(self._name, total) as slot:   # copied once: straight into the block
                slot.fill(parts)
        else:
            client.append(self._name, objects.gather(parts, total))

    def get(self, block: bool = True, timeout=None):
        """Take the group's next item, in put order; it goes to no other getter of the group.

        Nothing there: with ``block=False`` raises ``queue.Empty`` at once, else waits
        up to ``timeout`` seconds (None: for ever; woken by the put, no polling) and
        then raises ``queue.Empty``. Arrays and bytearrays come back writable, owning
        their memory. Closed: ``ValueError``. An item taken that does not unpickle here
        (its class cannot be imported in this process; an entry no Queue wrote) raises what
        unpickling raised, carrying the item, which no other getter of the group will get:
        ``exc.shmwal_offset`` and ``exc.shmwal_item`` (its bytes: ``Queue.decode`` them).
        """
        if self._closed:
            self._check_closed()
        if block and timeout is not None:
            timeout = _check_timeout(timeout)   # a bad one raises before anything is read
        # The common case, kept short: the group's reader (hot.c) reads and unpickles the
        # next item if it is a plain pickle under LARGE that Client.read_next's first try
        # would serve, while the client that made that reader is connected and has not
        # dropped it. Anything else (nothing there yet, another shape, a large item, a new
        # block, a deleted group, a dead broker) goes the long way, with nothing read.
        # After a large item the same, for whatever comes next: hot.c copies it into a
        # bytearray while checking it, whose slices decode hands out as the buffers.
        reader = self._hot_reader
        if reader is not None and not reader.stale and self._client._alive:
            if not self._read_large:
                try:
                    obj = reader.hot_next_object(True, _loads, LARGE, _MISS)
                except Exception as exc:   # hot.c put the item's offset and bytes on it
                    self._not_unpickled(exc, getattr(exc, "shmwal_offset", None), getattr(exc, "shmwal_item", None))
                    raise
                if obj is not _MISS:
                    return obj
            else:
                entry = self._next_large(reader)
                if entry.__class__ is int and block:
                    entry, timeout = self._wait_large(reader, entry, timeout)
                if entry.__class__ is Entry:
                    return self._unpack(entry.data, entry.offset)
        return self._get(block, timeout)

    @staticmethod
    def _next_large(reader):
        """hot.c's read of the next item into a bytearray: an Entry, an int (nothing below
        that next offset) or None (the long way)."""
        entry = reader.hot_next_writable(True)
        if entry is None and reader.hop():   # the item opens the next block
            entry = reader.hot_next_writable(True)
        return entry

    def _wait_large(self, reader, seen_next: int, timeout):
        """get's wait after a large item: until the topic grows, then the item through
        hot.c's one pass (copied and checked together). The long way would take it as a
        zero-copy read, checksummed, then copied out by decode: two passes over a 1 MiB
        array in DRAM. Returns (what _next_large returned, the timeout left for the long
        way); raises Empty once the timeout has passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        entry = seen_next
        while entry.__class__ is int:
            if not reader.sleep_until_grown(entry, deadline):
                raise Empty
            if reader.stale or not self._client._alive:
                entry = None   # a new broker or none: the long way finds out
                break
            entry = self._next_large(reader)
        return entry, None if deadline is None else max(0.0, deadline - time.monotonic())

    def _get(self, block, timeout):
        wait = 0.0 if not block else timeout   # checked by get
        client = self._client or self._connect()
        # Zero-copy after a large item: decode copies its buffers out once (not twice).
        entry = client.read_next(self._name, group=self._group, timeout=wait, zero_copy=self._read_large)
        if entry is None:
            raise Empty
        data, offset = entry.data, entry.offset
        del entry   # the view alone keeps its block pinned, and only until decoded
        self._hot_reader = client._readers.get((self._name, self._group))
        return self._unpack(data, offset)

    def _unpack(self, data, offset: int):
        """The item an entry's ``data`` holds; a large one switches get's fast path to large items."""
        self._read_large = len(data) >= LARGE
        try:
            return _loads(data) if data[0] == _TAG_PICKLE else objects.decode(data)
        except Exception as exc:
            self._not_unpickled(exc, offset, data)
            raise

    def _not_unpickled(self, exc: Exception, offset, data) -> None:
        """An item taken that does not unpickle in this process (its class not importable
        here, a foreign entry): the cursor has moved past it, and no other getter of the
        group will get it, so the error carries it: ``exc.shmwal_offset`` (its offset in the
        topic) and ``exc.shmwal_item`` (its bytes, for ``objects.decode`` or a log), and says so."""
        if data is None:
            return   # not one of ours (the compiled path annotates what it took)
        exc.shmwal_offset = offset
        exc.shmwal_item = bytes(data)   # never the mapped view: it would pin its block
        exc.add_note(f"shmwal.Queue {self._name!r} (group {self._group!r}): the item at offset "
                     f"{offset} did not unpickle here. It was taken, and no other getter of the "
                     f"group gets it: its bytes are this exception's shmwal_item.")

    @staticmethod
    def decode(item):
        """The object an item's bytes hold, as ``get`` makes it: for ``exc.shmwal_item`` of an
        item that did not unpickle (see ``get``), once its class can be imported."""
        return objects.decode(item)

    def put_nowait(self, obj) -> None:
        """``put(obj, False)``."""
        self.put(obj, False)

    def get_nowait(self):
        """``get(False)``."""
        return self.get(False)

    def qsize(self) -> int:
        """Items put and not yet taken by this queue's group (a snapshot while others put and get)."""
        reader = self._reader()
        return max(0, reader.words[_W_NEXT] - reader.position())

    def empty(self) -> bool:
        """``qsize() == 0`` (a snapshot, as for multiprocessing)."""
        return self.qsize() == 0

    def full(self) -> bool:
        """``qsize() >= maxsize`` for a bounded queue; never for an unbounded one."""
        return bool(self._maxsize) and self.qsize() >= self._maxsize

    def close(self) -> None:
        """No more put or get through this object (the queue itself and its items stay)."""
        self._closed = True

    def join_thread(self) -> None:
        """As multiprocessing: only after close(); puts are already in the log, nothing to wait for."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: no feeder thread holds unwritten items."""

    # ------------------------------------------------------------------ beyond multiprocessing
    @property
    def name(self) -> str:
        return self._name

    @property
    def group(self) -> str:
        return self._group

    @property
    def data_dir(self) -> str:
        return self._data_dir

    def __reduce__(self):
        # Its address only: the process that unpickles it connects on first use.
        return (_rebuild, (self._name, self._maxsize, self._data_dir, self._key, self._group))

    def __repr__(self) -> str:
        return f"<shmwal.Queue {self._name!r} group={self._group!r} in {self._data_dir!r}>"

    # ------------------------------------------------------------------ internals
    def _append(self, stream) -> None:
        """``Client.append`` of a plain pickle; put's fast path then uses the appender it used."""
        client = self._client or self._connect()
        client.append(self._name, stream)
        self._hot_appender = client._appenders.get(self._name)

    def _connect(self):
        self._forget_handles()
        self._client = embedded.client_for(self._data_dir, self._key, start=False)
        return self._client

    def _reader(self):
        client = self._client or self._connect()
        reader = client._readers.get((self._name, self._group))
        if reader is None:
            reader = client._reader(self._name, self._group, create=True)
        return reader

    def _forget_handles(self) -> None:
        # The fast paths' handles, taken from the client after a call the long way.
        self._hot_reader = None      # get's: the group's GroupReader
        self._hot_appender = None    # put's: the topic's Appender

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def _wait_for_room(self, block: bool, timeout) -> None:
        if self.qsize() < self._maxsize:
            return
        if not block:
            raise Full
        timeout = None if timeout is None else _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FULL_POLL_MIN
        while self.qsize() >= self._maxsize:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Full
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, FULL_POLL_MAX)


def _check_timeout(timeout) -> float | None:
    """The project's rule (timeouts.py: huge or infinite is None, for ever; NaN and non-numbers
    raise), except that a negative timeout waits no time, as multiprocessing.Queue's does."""
    if not isinstance(timeout, bool) and isinstance(timeout, (int, float)) and timeout < 0:
        return 0.0
    return check_timeout(timeout)


def _rebuild(name, maxsize, data_dir, key, group) -> Queue:
    q = Queue.__new__(Queue)
    q._name, q._maxsize, q._data_dir, q._key, q._group = name, maxsize, data_dir, key, group
    q._closed = False
    q._client = None
    q._read_large = False
    q._forget_handles()
    return q
