"""The client: control through the broker, data straight through the mapped files.

A Client keeps two connections to the broker: one for requests, and one it
only watches, from a daemon thread, so that the broker's death (EOF) is
known at once without a system call on the hot path.  Once the broker is
gone every call raises BrokerUnavailable; each later call tries to reach a
broker again (a cheap connect that fails at once while none runs), and when
one answers the same Client carries on.

After fork() the child's Client drops its inherited sockets (they are the
parent's conversation) and reconnects on first use; pickling a Client sends
only its address, so a spawned worker connects on its own.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref

import posix_ipc

from ..ipc import control, names
from ..blocks import layout as L
from ..blocks.files import BlockFiles
from ..blocks.meta import TopicMeta
from ..entry import Entry, Payloads
from ..errors import (BrokerAlreadyRunning, BrokerUnavailable, ClientClosed, InvalidTopic,
                     ShmwalError)
from ..options import StrictlyAtOnce, SyncEach, consistency_from_wire, fsync_from_wire
from ..timeouts import check_timeout, seconds_or_inf
from .read import GroupGone, GroupReader
from .append import Appender
from .link import Link
from .reserve import Slot, check_nbytes
from .hot import native

IO_MODES = ("auto", "uring", "mmap")
RETRY_EVERY = 0.05     # how often a call on a dead client may try to reach a broker again
RPC_TIMEOUT = 10.0
_CLIENTS: "weakref.WeakSet[Client]" = weakref.WeakSet()
_MAX_ENTRY = L.MAX_ENTRY   # a global, not an attribute of one, on reserve's per-entry path
_ERRORS = {cls.__name__: cls for cls in (InvalidTopic, ShmwalError, BrokerAlreadyRunning)}


def connect(data_dir=None, *, key=None, timeout: float = 5.0, io: str = "auto", **remote) -> "Client":
    """Connect to the broker of ``data_dir`` and ``key``; return a :class:`Client`.

    ``data_dir=None``: ``$SHMWAL_DATA_DIR``, else ``./shmwal_data``. ``timeout``: seconds
    to wait for a broker that is starting (``None``: 5). ``io``: how ``batch_read``
    reads, ``"auto"`` | ``"uring"`` | ``"mmap"``. Raises ``BrokerUnavailable`` when no
    broker answers (at once where none ever ran), ``ValueError`` for a bad ``io``.
    ``data_dir`` ``"nats://host:port[,host:port...]"``: the same API on NATS JetStream
    (``shmwal.nats``, imported only then; ``remote`` takes its options).
    docs/API.md "Connecting".
    """
    if isinstance(data_dir, str) and data_dir.startswith(("nats://", "tls://")):
        from ..nats.client import NatsClient
        return NatsClient(data_dir, key=key, timeout=timeout, io=None if io == "auto" else io, **remote)
    if remote:
        raise TypeError(f"unexpected keyword arguments for a local client: {sorted(remote)}")
    return Client(data_dir, key=key, timeout=timeout, io=io)


class Client:
    """A connection to one broker; every method may be called from any thread.

    Entries move through the mapped block files, never through the broker. When the
    broker dies, calls raise ``BrokerUnavailable`` (within 2 s, none hangs) until a
    broker runs again on the same directory; then this same Client carries on.
    ``consistency`` and ``fsync`` say what the broker runs with. A Client pickles to
    its address: unpickled in another process it connects there. After ``close()``
    every call raises ``ClientClosed``. docs/API.md has the full contract.
    """

    def __init__(self, data_dir=None, *, key=None, timeout: float = 5.0, io: str = "auto",
                 _lazy: bool = False):
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {IO_MODES}, not {io!r}")
        checked = check_timeout(timeout)
        self._data_dir = names.resolve_data_dir(data_dir)
        self._given_dir = data_dir   # for messages: the directory as the user named it
        self._key = key
        self._root = names.namespace_dir(self._data_dir, key)
        self._timeout = 5.0 if timeout is None else seconds_or_inf(checked)
        self._io = io
        self._rpc_lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._watch: socket.socket | None = None
        self._dispatch = None
        self._alive = False
        self._closed = False
        self._connected_once = False
        self._next_attempt = 0.0
        self._run_id = None
        self.consistency = None
        self.fsync = None
        self.broker_pid = None
        self._files = BlockFiles(os.path.join(self._root, "blocks"))
        self._reset_handles()
        self._io_uring = _make_fetcher(io)
        # This instance's append, read_next, batch_read and reserve are hot.c's (dispatch.h)
        # where it is built: it serves what the compiled paths serve and calls the methods
        # below, with the same arguments, for everything else.  Not under a subclass that
        # overrides them; batch_read not with io="uring" (its fetcher reads batches).
        if native is not None and type(self).append is Client.append and type(self).read_next is Client.read_next:
            batches = self._io_uring is None and type(self).batch_read is Client.batch_read
            slots = type(self).reserve is Client.reserve
            self._dispatch = native.Dispatch(self, Client.append, Client.read_next,
                                             Client.batch_read if batches else None,
                                             Client.reserve if slots else None)
            self.append = self._dispatch.append
            self.read_next = self._dispatch.read_next
            if batches:
                self.batch_read = self._dispatch.batch_read
            if slots:
                self.reserve = self._dispatch.reserve
        _CLIENTS.add(self)
        self._link = Link(self._rpc, self._check_alive, self._reader, self._io_uring, self._reader_again,
                          self._tell)
        if not _lazy:
            self._connect(self._timeout)

    # ================================================================== data path
    def append(self, topic, data) -> int:
        """Append one entry; return its offset (0, 1, 2, ... per topic, no gaps).

        ``data``: any C-contiguous bytes-like object, up to 1 GiB (``TypeError``,
        ``EntryTooLarge``). ``topic``: 1 to 255 of ``[A-Za-z0-9._-]``, not starting with
        ``.`` (``InvalidTopic``); it exists from its first append. Returns once the
        entry is visible to readers and as durable as the fsync schedule promises; a
        call that raised wrote nothing.
        """
        # _appender_for, inlined: on the per-entry path a call costs as much as the lookup.
        if not self._alive:
            self._revive()
        try:
            appender = self._appenders[topic]
        except (KeyError, TypeError):
            appender = self._appender(topic)
        offset = appender.hot_append(data)   # hot.c, or -1: the general path below
        if offset >= 0:
            return offset
        return appender.append(data)

    def batch_append(self, topic, items) -> range:
        """Append ``items`` atomically; return the range of their offsets, in order.

        Readers see all of the batch or none of it, and no other writer's entry lands
        between its entries, whoever writes at once and whoever is killed on the way.
        At most 2,000 entries and 10 GiB (``BatchTooLarge``); an empty batch writes
        nothing and returns an empty range. Errors as for :meth:`append`.
        """
        return self._appender_for(topic).batch_append(items)

    def reserve(self, topic, nbytes) -> Slot:
        """A zero-copy write (API.md "Zero-copy writes"): ``with client.reserve(topic, n) as slot:``
        fill ``slot.buffer`` (a writable memoryview of ``n`` bytes in the mapped block);
        the entry is published when the block ends normally, ``slot.offset`` then says
        where, and nothing is published when it raises.  Other writers of the topic
        wait while the block runs.  Bad arguments raise here, before anything is taken."""
        if nbytes.__class__ is not int or not 0 <= nbytes <= _MAX_ENTRY:
            check_nbytes(nbytes)   # raises the right error (an int subclass passes it)
        try:
            appender = self._appenders[topic]   # its name was checked when it was made
        except (KeyError, TypeError):
            names.check_name(topic)
            # Made now, not at __enter__: then hot.c's slot serves the first reserve of a
            # topic too. The topic is not visible before its first entry is published.
            appender = self._appender_for(topic)
        # hot.c's slot costs about an append; client/reserve.py's Slot is the reference
        # (SHMWAL_PURE_PYTHON=1, SyncEach) and looks the appender up again at __enter__.
        hot_reserve = appender.hot_reserve
        if hot_reserve is not None and self._alive:
            return hot_reserve(nbytes)
        return Slot(self._appender_for, topic, nbytes)

    def _appender_for(self, topic) -> Appender:
        if not self._alive:
            self._revive()
        try:
            return self._appenders[topic]
        except (KeyError, TypeError):
            return self._appender(topic)

    def read_next(self, topic, *, group="default", checkpoint=True, timeout=0.0, zero_copy: bool = False):
        """The group's next entry (an :class:`Entry`), or ``None`` if none came in time.

        Each (topic, group) has one cursor shared by every process: within a group each
        entry goes to one reader; every group sees every entry. ``checkpoint=False``
        peeks (the cursor stays). ``timeout``: ``0`` returns at once, ``None`` waits as
        long as it takes, a number waits up to that many seconds. ``zero_copy=True``:
        ``Entry.data`` is a read-only memoryview into the mapped block (checksum
        verified). A damaged entry raises ``CorruptEntry`` and the cursor stays on it.
        """
        if timeout is not None and (timeout != 0.0 or type(timeout) is not float):
            timeout = check_timeout(timeout)
        if not self._alive:
            self._revive()
        try:
            reader = self._readers[topic, group]
        except (KeyError, TypeError):
            reader = self._reader(topic, group, create=timeout != 0)
            if reader is None:
                return None
        if zero_copy:
            found = reader.hot_next_view(checkpoint)   # hot.c: an Entry of a pinned view, or as hot_next
            if found is None and reader.hop():   # the entry opens the next block
                found = reader.hot_next_view(checkpoint)
            if found.__class__ is Entry:
                return found
            if found is not None and timeout == 0:
                return None
            entries = reader.read(1, L.MAX_ENTRY, checkpoint, timeout, True)
            return entries[0] if entries else None
        found = reader.hot_next(checkpoint)   # hot.c: an Entry, or what read_one needs to know
        if found.__class__ is Entry:
            return found
        return reader.read_one(checkpoint, timeout, found)

    def batch_read(self, topic, max_bytes, *, group="default", checkpoint=True, timeout=0.0,
                   zero_copy: bool = False) -> list:
        """The group's next entries (a list of :class:`Entry`), up to ``max_bytes`` of payload.

        Takes entries in order from the cursor while their payloads add up to at most
        ``max_bytes``, except that an entry larger than ``max_bytes`` comes alone; never
        more than 2,000. Waiting, ``checkpoint`` and errors as for :meth:`read_next`
        (the wait is for the first entry; nothing came: ``[]``); the next call goes on
        where this one stopped. ``zero_copy=True``: each ``Entry.data`` is a read-only
        memoryview into the mapped block (checksum verified, no copy), valid for as
        long as it is referenced, even after the block is reclaimed.
        """
        reader, timeout = self._batch_reader(topic, max_bytes, group, timeout)
        if reader is None:
            return []
        return reader.read(L.MAX_READ_ENTRIES, max_bytes, checkpoint, timeout, zero_copy)

    def batch_read_payloads(self, topic, max_bytes, *, group="default", checkpoint=True, timeout=0.0,
                            zero_copy: bool = False) -> Payloads:
        """``batch_read`` without an Entry per entry: ``Payloads(first, data)``, where
        ``data[i]`` is the payload of the entry at offset ``first + i``.

        Same entries, caps, cursor, waiting, checksums and errors as ``batch_read``
        (which it is, less the objects): for small entries, making and freeing an
        Entry (a tuple, an int) cost about as much as the rest of the read.
        """
        reader, timeout = self._batch_reader(topic, max_bytes, group, timeout)
        if reader is not None:
            first, data = reader.read(L.MAX_READ_ENTRIES, max_bytes, checkpoint, timeout, zero_copy,
                                      payloads=True)
            if data:
                return Payloads(first, data)
        return Payloads(self.position(topic, group=group), [])

    def _batch_reader(self, topic, max_bytes, group, timeout):
        """The checks both batch reads make, and the group's reader (None: nothing to read
        and no wait asked for) with the checked timeout."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        timeout = check_timeout(timeout)
        if not self._alive:
            self._revive()
        try:
            return self._readers[topic, group], timeout
        except (KeyError, TypeError):
            return self._reader(topic, group, create=timeout != 0), timeout

    def seek(self, topic, offset, *, group="default") -> None:
        """Move the group's cursor: its next read returns ``offset``.

        Past the end: the group waits at the end. Before the oldest kept entry: it
        starts at the oldest. ``seek(topic, bad.offset + 1)`` steps over a
        ``CorruptEntry``. Creates the group if it does not exist.
        """
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if not self._alive:
            self._revive()
        reader = self._reader(topic, group, create=True)
        try:
            reader.seek(max(0, offset))
        except GroupGone:
            self._reader_again(reader).seek(max(0, offset))

    def position(self, topic, *, group="default") -> int:
        """The offset the group reads next (a group that does not exist: where it would
        start, the oldest kept entry; nothing is created)."""
        if not self._alive:
            self._revive()
        names.check_name(topic)
        names.check_name(group, "group")
        reader = self._readers.get((topic, group))
        if reader is not None:
            try:
                return reader.position()
            except GroupGone:
                self._forget_reader(reader)
        handle = self._topic(topic, create=False)
        if handle is None:
            return 0
        reader = self._reader(topic, group, create=False, make_group=False)
        if reader is None:
            return handle[0].get(L.H_FIRST_OFFSET)  # a new group starts at the oldest kept entry
        try:
            return reader.position()
        except GroupGone:   # deleted this instant: it does not exist
            self._forget_reader(reader)
            return handle[0].get(L.H_FIRST_OFFSET)

    # ================================================================== groups
    def create_group(self, topic, group, *, start="earliest") -> bool:
        """Make ``group`` of ``topic`` (API.md "Groups and retention"); True if it is new.

        ``start``: "earliest" (the oldest entry still kept), "latest" (the next
        entry to be written) or an offset (clamped to those two).  A group that
        exists already is left as it is.
        """
        names.check_name(topic)
        names.check_name(group, "group")
        start = check_start(start)
        answer = self._rpc("open_group", topic=topic, group=group, create=True, start=start)
        return bool(answer["created"])

    def groups(self, topic) -> list[str]:
        """The topic's groups, sorted (none for a topic that does not exist)."""
        names.check_name(topic)
        return self._rpc("groups", topic=topic)

    def delete_group(self, topic, group) -> bool:
        """Delete ``group``: its cursor goes and it holds no entry back; True if it existed.

        A later read or seek naming the group creates it anew (at the oldest kept entry).
        """
        names.check_name(topic)
        names.check_name(group, "group")
        deleted = self._rpc("delete_group", topic=topic, group=group)
        reader = self._readers.get((topic, group))
        if reader is not None:
            self._forget_reader(reader)
        return bool(deleted)

    # ================================================================== introspection
    def topics(self) -> list[str]:
        """The names of the topics that exist, as a list of str."""
        return self._rpc("topics")

    def stats(self) -> dict:
        """``{"topics": {topic: {...}}}``: per topic ``entries``, ``bytes``, ``first_offset``,
        ``next_offset``, ``files``, ``blocks`` and ``groups: {group: {"position", "lag"}}``
        (ints; see docs/API.md "Introspection" for every key)."""
        return self._rpc("stats")

    @property
    def io(self) -> str:
        """How ``batch_read`` reads: ``"auto"``, ``"uring"`` or ``"mmap"`` (as connected)."""
        return self._io

    # ================================================================== lifecycle
    def close(self) -> None:
        """Let go of the broker connection and the mappings; later calls raise
        ``ClientClosed``. Closing twice is fine; ``with connect(...) as client:`` closes."""
        if self._closed:
            return
        self._closed = True
        self._set_alive(False)
        self._drop_connections()
        self._reset_handles()
        if self._io_uring is not None:
            self._io_uring.close()
        self._files.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        return (_restore, (self._data_dir, self._key, self._timeout, self._io))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._alive else "disconnected")
        return f"<shmwal.Client {self._root!r} {state}>"

    def __del__(self):
        try:
            self._drop_connections()
        except Exception:
            pass

    # ================================================================== handles
    def _reset_handles(self) -> None:
        # Marked, not only dropped: a read waiting in a reader picks up fresh handles, and
        # shmwal.Queue, which keeps the handles its last call used, takes new ones.
        for handle in (*getattr(self, "_readers", {}).values(), *getattr(self, "_appenders", {}).values()):
            handle.stale = True
        if self._dispatch is not None:
            self._dispatch.forget_all()
        self._topic_handles: dict[str, tuple] = {}
        self._appenders: dict[str, Appender] = {}
        self._readers: dict[tuple, GroupReader] = {}

    def _topic(self, topic: str, create: bool):
        handle = self._topic_handles.get(topic)
        if handle is None:
            answer = self._rpc("open_topic", topic=topic, create=create)
            if answer is None:
                return None
            path = answer["path"]
            expected = os.path.join(self._root, "topics", topic, "meta")
            if os.path.realpath(path) != os.path.realpath(expected):
                raise ShmwalError(f"broker named an unexpected meta file {path!r}")
            handle = (TopicMeta(expected, topic), posix_ipc.Semaphore(answer["sem"]))
            self._topic_handles[topic] = handle
        return handle

    def _appender(self, topic) -> Appender:
        names.check_name(topic)
        meta, sem = self._topic(topic, create=True)
        appender = Appender(self._link, topic, meta, self._files, sem)
        self._appenders[topic] = appender
        if self._dispatch is not None and appender.served is not None:
            self._dispatch.add_appender(topic, appender.served)
        return appender

    def _reader(self, topic, group, create: bool, make_group: bool = True):
        names.check_name(topic)
        names.check_name(group, "group")
        reader = self._readers.get((topic, group))
        if reader is not None:
            return reader
        handle = self._topic(topic, create=create)
        if handle is None:
            return None
        meta, sem = handle
        # The broker knows every group by name (a dict); its answer is cached with the
        # reader.  ``make_group`` False: only a group that exists (position()).
        answer = self._rpc("open_group", topic=topic, group=group, create=make_group)
        if answer is None:
            return None
        reader = GroupReader(self._link, topic, group, meta, self._files, sem, answer["slot"], answer["gen"])
        self._readers[topic, group] = reader
        if self._dispatch is not None and reader.served is not None:
            self._dispatch.add_reader(topic, group, reader.served)
        return reader

    def _forget_reader(self, reader) -> None:
        if self._readers.get((reader.topic, reader.group)) is reader:
            del self._readers[reader.topic, reader.group]
            if self._dispatch is not None:
                self._dispatch.forget_reader(reader.topic, reader.group)

    def _reader_again(self, reader) -> GroupReader:
        """A fresh reader for a group deleted under ``reader`` (the read names it: it is made again)."""
        self._forget_reader(reader)
        return self._reader(reader.topic, reader.group, create=True)

    # ================================================================== control connection
    def _rpc(self, op: str, **args):
        with self._rpc_lock:
            if not self._alive:
                self._revive()
            sock = self._sock
            try:
                control.send(sock, {"op": op, **args})
                reply = control.recv(sock)
            except (OSError, control.ProtocolError, ValueError, AttributeError):
                reply = None
            if reply is None:
                self._mark_dead()
                raise BrokerUnavailable(f"the broker of {self._root} went away")
        if "error" in reply:
            kind = reply["error"]
            if kind == "OSError":
                raise OSError(reply.get("errno") or 0, reply.get("message", ""))
            raise _ERRORS.get(kind, ShmwalError)(reply.get("message", kind))
        return reply["ok"]

    def _check_alive(self) -> None:
        if not self._alive:
            self._revive()

    def _revive(self) -> None:
        """Reach a broker again, or raise BrokerUnavailable (never waits long)."""
        if self._closed:
            raise ClientClosed("this client was closed")
        with self._rpc_lock:
            if self._alive:
                return
            now = time.monotonic()
            if not self._connected_once:
                self._connect(self._timeout)
                return
            if now < self._next_attempt:
                raise BrokerUnavailable(f"no broker answers on {self._root}")
            self._next_attempt = now + RETRY_EVERY
            self._connect(0.0)

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            try:
                self._open_connections()
                return
            except (OSError, control.ProtocolError, ValueError) as exc:
                last_error = exc
                self._drop_connections()
            if not self._connected_once and not names.broker_ran(self._root):
                # Nothing to wait for: no broker has ever run here (a restarting one has).
                raise BrokerUnavailable(names.no_broker_message(self._given_dir, self._key, self._data_dir,
                                                                ever_ran=False)) from None
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(names.no_broker_message(self._given_dir, self._key, self._data_dir,
                                                                ever_ran=True, waited=timeout,
                                                                error=last_error)) from None
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _open_connections(self) -> None:
        from ..ipc.names import socket_address
        dir_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            address = socket_address(self._root, dir_fd)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._sock = sock
            sock.settimeout(RPC_TIMEOUT)
            sock.connect(address)
            watch = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._watch = watch
            watch.connect(address)
        finally:
            os.close(dir_fd)
        control.send(sock, {"op": "hello", "pid": os.getpid()})
        hello = control.recv(sock)
        if not isinstance(hello, dict) or "ok" not in hello:
            raise control.ProtocolError("no hello from the broker")
        info = hello["ok"]
        control.send(watch, {"op": "watch"})
        if self._run_id is not None and info["run_id"] != self._run_id:
            self._reset_handles()  # a new broker: semaphores may be new objects
            self._files.release_deleted()   # and its directory may be new: files of the same names
        self._run_id = info["run_id"]
        self.broker_pid = info["broker_pid"]
        self.consistency = consistency_from_wire(info["consistency"])
        self.fsync = fsync_from_wire(info["fsync"])
        self._link.sync_each = isinstance(self.fsync, SyncEach)
        self._link.strict_sync = self._link.sync_each and isinstance(self.consistency, StrictlyAtOnce)
        thread = threading.Thread(target=_watch_broker, args=(watch, weakref.ref(self)),
                                  name="shmwal-watch", daemon=True)
        self._set_alive(True)
        self._connected_once = True
        thread.start()

    def _mark_dead(self) -> None:
        self._set_alive(False)
        self._drop_connections()

    def _set_alive(self, alive: bool) -> None:
        """``_alive``, here and in the Dispatch (which serves calls only while it is True)."""
        self._alive = alive
        if self._dispatch is not None:
            self._dispatch.alive = alive

    def _tell(self, message) -> None:
        """Send ``message`` on the watch connection, which the broker never answers: a hint,
        dropped when that connection is gone or its buffer full. A frame this small goes
        whole or not at all (one skb on a Unix stream socket), so the stream stays framed."""
        watch = self._watch
        if watch is None:
            return
        try:
            watch.send(control.encode(message), socket.MSG_DONTWAIT)
        except OSError:
            pass

    def _drop_connections(self) -> None:
        sock, self._sock = self._sock, None
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.shutdown(socket.SHUT_RDWR)  # ends the watcher thread's recv
            except OSError:
                pass
            watch.close()
        if sock is not None:
            sock.close()

    def _after_fork_in_child(self) -> None:
        # The inherited sockets carry the parent's conversation: forget them
        # without shutting them down (that would cut the parent off too).
        for attr in ("_sock", "_watch"):
            sock = getattr(self, attr)
            setattr(self, attr, None)
            if sock is not None:
                try:
                    os.close(sock.detach())  # only the child's copy of the descriptor
                except OSError:
                    pass
        self._rpc_lock = threading.RLock()
        self._set_alive(False)
        self._next_attempt = 0.0


def check_start(start):
    """create_group's ``start``: "earliest", "latest" or an offset >= 0."""
    if isinstance(start, str):
        if start not in ("earliest", "latest"):
            raise ValueError(f'start must be "earliest", "latest" or an offset, not {start!r}')
        return start
    if isinstance(start, bool) or not isinstance(start, int):
        raise TypeError(f'start must be "earliest", "latest" or an int offset, not {type(start).__name__}')
    if start < 0:
        raise ValueError(f"start offset must be >= 0, got {start}")
    return start


def _make_fetcher(io: str):
    """The io_uring reader for batch_read, or None where batch reads go through mmap."""
    if io != "uring":
        # "auto" means the faster of the two, and on the machines measured that
        # is the mapping, cold backlog included: a backlog read is sequential
        # (one range a batch, nothing to overlap), kernel readahead serves page
        # faults as well as it serves io_uring, and decoding, not I/O, bounds
        # small entries.  scripts/bench_uring.py (two runs): io_uring/mmap
        # 0.73-0.95x warm, 0.86-0.94x cold, 64 KiB cold once 1.10x inside a
        # 0.50-1.56x spread (README).  The mincore check "auto" would need
        # costs up to 45 us a batch on top.  Re-measure before changing this.
        return None
    from ..uring import probe
    from ..uring.fetch import UringFetcher
    reason = probe()
    if reason is not None:
        raise ShmwalError(f'io="uring" is not available here: {reason}')
    return UringFetcher()


def _watch_broker(sock: socket.socket, client_ref) -> None:
    """The watch connection: EOF is the broker's death; a byte says it deleted block files
    (idle clients included must let go of them: their space stays allocated while mapped)."""
    try:
        while sock.recv(64):
            client = client_ref()
            if client is not None:
                client._files.release_deleted()
            del client
    except OSError:
        pass
    client = client_ref()
    if client is not None and client._watch is sock:
        client._set_alive(False)


def _restore(data_dir, key, timeout, io) -> Client:
    return Client(data_dir, key=key, timeout=timeout, io=io, _lazy=True)


def _after_fork() -> None:
    for client in list(_CLIENTS):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)
