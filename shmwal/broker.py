"""The broker: owner of the block allocator and the offset index.

``Broker`` is the handle a program holds; it spawns ``python -m shmwal.server.main``
and talks to it only through signals and the ready pipe.  The broker process
(``BrokerServer``) then:

* holds ``broker.lock`` (flock: released by the kernel however it dies, so a
  killed broker never blocks the next one), sweeps what a killed predecessor
  left (socket, semaphores named in ``broker.run``), recovers every topic;
* answers control requests on ``broker.sock`` — topics, groups, blocks,
  stats — from one selector loop, so its own state needs no locks;
* fsyncs on the schedule (a thread of its own: an fsync may take long on a
  real disk and must not stall control requests), reclaims consumed blocks,
  and deletes files nothing uses any more.

It is never on the per-entry path: producers and consumers move entries
through the mapped files themselves (see client/append.py and client/read.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import posix_ipc

from .ipc import control, names, sync
from .blocks import layout as L
from .blocks.allocator import BlockAllocator
from .blocks.codec import BadRecord, read_record
from .blocks.files import BlockFiles
from .blocks.meta import TopicMeta, boot_hash
from .errors import BrokerAlreadyRunning, ShmwalError
from .ipc.fsio import make_private_dir, write_atomic
from .ipc.names import socket_address
from .client.hot import native
from .options import AtLeastOnce, FsyncEvery, NoFsync, StrictlyAtOnce, SyncEach
from .server.verify import topic_stats
from .server.recovery import rebuild_meta, recover_topic

log = logging.getLogger("shmwal.broker")

RECLAIM_EVERY = 1.0        # seconds between reclamation passes
PROVISION_EVERY = 0.02     # seconds between looks for writers about to need a block
SPARE_BLOCKS = 2           # blocks kept allocated (and faulted in) ahead of a busy writer
DELETE_GRACE = 2.0         # seconds between a file's last block being reclaimed and its unlink
REUSE_TTL = 1.0            # seconds a reclaimed block waits for its topic to reuse it, then it is freed
MAX_REUSABLE = 16          # reclaimed blocks kept for reuse per topic (their files kept meanwhile)
_SO_PEERCRED = struct.Struct("3i")


class chain_mutex:
    """``with chain_mutex(meta):`` holds the topic's chain mutex (see layout.H_CHAIN_MUTEX)."""

    def __init__(self, meta):
        self.address = meta.base + L.H_CHAIN_MUTEX

    def __enter__(self):
        sync.lock(self.address)   # a dead holder left at most a slot with capacity 0: nothing to repair

    def __exit__(self, *exc):
        sync.unlock(self.address)


# ----------------------------------------------------------------------------- per-topic state

_PIN = struct.Struct("<Q")


class TopicState:
    __slots__ = ("meta", "sem", "sem_name", "synced_next", "synced_cursors", "synced_block", "seen_tail",
                 "busy", "moved_at")

    def __init__(self, meta: TopicMeta, sem_name: str):
        self.meta = meta
        self.sem_name = sem_name
        self.sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREAT, mode=0o600, initial_value=0)
        self.synced_next = -1
        self.synced_cursors = -1
        self.synced_block = 0
        self.seen_tail = meta.get(L.H_TAIL_CHAIN)
        self.busy = False       # its writer moved to a new block since the last reclamation look
        self.moved_at = -REUSE_TTL   # monotonic time its writer last moved to a new block


# ----------------------------------------------------------------------------- the server

class BrokerServer:
    def __init__(self, root: str, consistency, fsync, block_size: int, blocks_per_file: int):
        self.root = root
        self.consistency = consistency
        self.fsync = fsync
        self.block_size = block_size
        self.blocks_per_file = blocks_per_file
        self.blocks_dir = os.path.join(root, "blocks")
        self.topics_dir = os.path.join(root, "topics")
        self.prefix = names.ipc_prefix(root)
        self.run_id = int.from_bytes(os.urandom(6), "little")
        self.topics: dict[str, TopicState] = {}
        self.topics_lock = threading.Lock()  # the syncer thread reads self.topics
        self.files = BlockFiles(self.blocks_dir)
        self.allocator: BlockAllocator | None = None
        self.pending_delete: dict[int, float] = {}
        self._stopping = False
        self._lock_fd = -1
        self._dir_fd = -1
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._conns: dict[socket.socket, control.FrameBuffer] = {}
        self._watchers: set[socket.socket] = set()
        self._syncer: threading.Thread | None = None
        self._sync_wakeup = threading.Event()
        self._next_topic_id = 1
        self._populate_broken = False
        # Disk work an appender must not wait for: the next block file, and
        # faulting in blocks handed out ahead (one thread each, so a long
        # populate never delays a file switch).
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmwal-files")
        self._faulting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shmwal-populate")

    # ------------------------------------------------------------------ start
    def open(self) -> None:
        make_private_dir(os.path.dirname(self.root))
        make_private_dir(self.root)
        self._lock_fd = os.open(os.path.join(self.root, "broker.lock"),
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise BrokerAlreadyRunning(f"a broker already runs on {self.root}") from None
        make_private_dir(self.blocks_dir)
        make_private_dir(self.topics_dir)
        self._sweep_previous_run()
        self._recover()
        self._listen()
        write_atomic(os.path.join(self.root, "broker.run"), json.dumps({
            "pid": os.getpid(), "run_id": self.run_id, "prefix": self.prefix,
            "semaphores": sorted(t.sem_name for t in self.topics.values()),
        }).encode())
        if not isinstance(self.fsync, NoFsync):
            self._syncer = threading.Thread(target=self._sync_loop, name="shmwal-fsync", daemon=True)
            self._syncer.start()

    def _sweep_previous_run(self) -> None:
        """Remove what a broker killed on this directory left behind.

        Its semaphores are found by their name prefix (derived from this
        directory) in /dev/shm, and by broker.run where that is readable; a
        damaged broker.run must not stop a broker from starting.
        """
        stale = set()
        try:
            with open(os.path.join(self.root, "broker.run"), "rb") as f:
                previous = json.load(f)
            if isinstance(previous, dict) and isinstance(previous.get("semaphores"), list):
                stale.update(n for n in previous["semaphores"] if isinstance(n, str) and n.startswith(self.prefix + "_"))
        except (OSError, ValueError):
            pass
        try:
            shm_prefix = "sem." + self.prefix.lstrip("/") + "_"
            stale.update("/" + n[4:] for n in os.listdir("/dev/shm") if n.startswith(shm_prefix))
        except OSError:
            pass
        for name in stale:
            try:
                posix_ipc.unlink_semaphore(name)
            except posix_ipc.ExistentialError:
                pass
        try:
            os.unlink(os.path.join(self.root, "broker.sock"))
        except FileNotFoundError:
            pass

    def _recover(self) -> None:
        current_boot = boot_hash()
        next_file = 1
        for file_id in BlockAllocator(self.blocks_dir, 1, 1).existing_files():
            next_file = max(next_file, file_id + 1)
        self.allocator = BlockAllocator(self.blocks_dir, self.block_size, self.blocks_per_file, next_file,
                                        submit=self._disk.submit)
        damaged = []
        for name in sorted(os.listdir(self.topics_dir)):
            tdir = os.path.join(self.topics_dir, name)
            try:
                names.check_name(name)
            except ShmwalError:
                log.warning("ignoring %s: not a topic name", tdir)
                continue
            try:
                os.unlink(os.path.join(tdir, "meta.new"))  # a topic whose creation was cut short
            except FileNotFoundError:
                pass
            path = os.path.join(tdir, "meta")
            try:
                meta = TopicMeta(path, name)
            except (OSError, ValueError) as exc:
                log.error("topic %s: meta file unusable (%s); rebuilding it from the block files", name, exc)
                damaged.append((name, path, {}))
                continue
            problem = self._adopt_topic(meta, current_boot)
            if problem is not None:
                log.error("topic %s: meta file damaged (%s); rebuilding it from the block files", name, problem)
                groups = {g: meta.get(L.group_slot_at(slot) + L.G_CURSOR) for g, slot in meta.group_names().items()}
                meta.close()
                damaged.append((name, path, groups))
        for name, path, groups in damaged:   # after the healthy ones: their topic ids are taken by then
            meta = rebuild_meta(path, name, self._next_topic_id, self.blocks_dir, self.files, groups)
            if meta is None:
                log.error("topic %s: no block names it; nothing to recover", name)
                continue
            problem = self._adopt_topic(meta, current_boot)
            if problem is not None:
                log.error("topic %s: the rebuilt meta file is unusable too (%s)", name, problem)
        # Files no chain refers to hold nothing anyone can read (their blocks were never handed out).
        for file_id in self.allocator.existing_files():
            if file_id not in self.allocator.live:
                log.info("deleting unreferenced block file %d", file_id)
                self._unlink_block_file(file_id)

    def _adopt_topic(self, meta: TopicMeta, current_boot: int) -> str | None:
        """Bring one topic's meta file into this broker: mutexes, tail, blocks, semaphore.

        Returns what is wrong with the meta file if it cannot be used (then nothing was adopted).
        """
        name = meta.name
        if meta.get(L.H_BOOT) != current_boot:
            meta.reinit_mutexes()
        report = recover_topic(meta, self.files)
        if report["problem"] is not None:
            return report["problem"]
        if report["truncated_from"] is not None or report["damaged"]:
            log.warning("topic %s recovered: %s", name, report)
        for index in range(meta.get(L.H_FIRST_BLOCK), meta.get(L.H_ALLOCATED_BLOCKS)):
            file_id, file_offset, capacity, _first = meta.chain(index)
            if capacity:   # 0: a slot whose writing was cut short
                self.allocator.adopt(file_id, file_offset)
        self._next_topic_id = max(self._next_topic_id, meta.topic_id + 1)
        self.topics[name] = TopicState(meta, f"{self.prefix}_t{meta.topic_id}")
        return None

    def _listen(self) -> None:
        self._dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        address = socket_address(self.root, self._dir_fd)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)
        try:
            listener.bind(address)
        finally:
            os.umask(old_umask)
        os.chmod(os.path.join(self.root, "broker.sock"), 0o600)
        listener.listen(256)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ)

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        next_reclaim = time.monotonic() + RECLAIM_EVERY
        while not self._stopping:
            self.provision()
            try:
                self.reclaim_busy()   # soon, so that their blocks are reused while still in memory
            except Exception:
                log.exception("reclamation of busy topics failed")
            timeout = max(0.0, min(PROVISION_EVERY, next_reclaim - time.monotonic()))
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._readable(key.fileobj)
            if time.monotonic() >= next_reclaim:
                try:
                    self.reclaim()
                except Exception:
                    log.exception("reclamation pass failed")
                next_reclaim = time.monotonic() + RECLAIM_EVERY

    def request_stop(self, *_args) -> None:
        self._stopping = True

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving the others
                log.warning("accept failed: %s", exc)
                return
            pid, uid, _gid = _SO_PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _SO_PEERCRED.size))
            if uid != os.getuid():
                log.warning("refused a client of uid %d (pid %d)", uid, pid)
                conn.close()
                continue
            conn.setblocking(False)
            self._conns[conn] = control.FrameBuffer()
            self._selector.register(conn, selectors.EVENT_READ)

    def _readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        try:
            messages = self._conns[conn].feed(data)
        except (control.ProtocolError, ValueError):
            self._drop(conn)
            return
        for message in messages:
            reply = self._handle(conn, message)
            if reply is None:
                continue
            try:
                conn.setblocking(True)
                conn.settimeout(5)
                control.send(conn, reply)
                conn.setblocking(False)
            except OSError:
                self._drop(conn)
                return

    def _drop(self, conn: socket.socket) -> None:
        self._conns.pop(conn, None)
        self._watchers.discard(conn)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _handle(self, conn, message):
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            return {"error": "ProtocolError", "message": "a request is a JSON object with an 'op'"}
        op = message["op"]
        handler = getattr(self, "op_" + op, None) if op.isidentifier() else None
        if handler is None:
            return {"error": "ProtocolError", "message": f"unknown op {op!r}"}
        if op == "watch":
            self._watchers.add(conn)
            return None
        try:
            return {"ok": handler(**{k: v for k, v in message.items() if k != "op"})}
        except ShmwalError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        except OSError as exc:
            return {"error": "OSError", "errno": exc.errno, "message": str(exc)}
        except (TypeError, ValueError, KeyError) as exc:
            return {"error": "ProtocolError", "message": f"bad {op} request: {exc}"}
        except Exception as exc:  # never let one request take the broker down
            log.exception("op %s failed", op)
            return {"error": "ShmwalError", "message": f"{op} failed: {exc}"}

    # ------------------------------------------------------------------ ops
    def op_hello(self, pid=None, **_):
        return {
            "run_id": self.run_id, "broker_pid": os.getpid(),
            "consistency": self.consistency.to_wire(), "fsync": self.fsync.to_wire(),
            "block_size": self.block_size,
        }

    def op_watch(self, **_):  # handled in _handle; here so that the op exists
        return None

    def op_open_topic(self, topic, create=False, **_):
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
        topic_id = self._next_topic_id
        meta = TopicMeta.create(os.path.join(tdir, "meta"), topic, topic_id)
        self._next_topic_id += 1
        state = TopicState(meta, f"{self.prefix}_t{topic_id}")
        with self.topics_lock:
            self.topics[topic] = state
        write_atomic(os.path.join(self.root, "broker.run"), json.dumps({
            "pid": os.getpid(), "run_id": self.run_id, "prefix": self.prefix,
            "semaphores": sorted(t.sem_name for t in self.topics.values()),
        }).encode())
        return state

    def op_open_group(self, topic, group, **_):
        names.check_name(topic)
        names.check_name(group, "group")
        state = self.topics.get(topic) or self._create_topic(topic)
        meta = state.meta
        existing = meta.group_names()
        if group in existing:
            return {"slot": existing[group]}
        used = set(existing.values())
        for slot in range(L.GROUP_SLOTS):
            if slot not in used:
                meta.init_group(slot, group, meta.get(L.H_FIRST_OFFSET))
                return {"slot": slot}
        raise ShmwalError(f"topic {topic} has no room for more than {L.GROUP_SLOTS} groups")

    def op_alloc_block(self, topic, chain_index, min_capacity, tid=None, **_):
        """Give chain slot ``chain_index`` of ``topic`` a block of at least ``min_capacity``.

        The caller holds the topic's writer mutex and waits for the answer, so
        the slots at and above H_PUBLISHED_BLOCKS are ours to write meanwhile.
        """
        names.check_name(topic)
        state = self.topics.get(topic)
        if state is None:
            raise ShmwalError(f"no topic {topic}")
        meta = state.meta
        chain_index, min_capacity = int(chain_index), int(min_capacity)
        if chain_index >= L.CHAIN_SLOTS:
            raise ShmwalError(f"topic {topic} has used all {L.CHAIN_SLOTS} chain slots")
        if not 0 < min_capacity <= L.MAX_BATCH_BYTES + L.BLOCK_HEADER_SIZE + (1 << 20):
            raise ValueError("implausible block capacity")
        with chain_mutex(meta):
            # The request may come from an appender that died after sending it:
            # act only for the one holding the writer mutex now (the slots are its).
            if tid is None or meta.writer_tid() != int(tid):
                raise ShmwalError("the requester no longer holds the topic's writer mutex")
            allocated = meta.get(L.H_ALLOCATED_BLOCKS)
            if not meta.get(L.H_PUBLISHED_BLOCKS) <= chain_index <= allocated:
                raise ShmwalError(f"chain slot {chain_index} is not the topic's next")
            if chain_index < allocated:
                old_file, old_offset, capacity, _ = meta.chain(chain_index)
                if capacity >= min_capacity:
                    return {"reused": True}
                if capacity:
                    self.allocator.free(old_file, old_offset)  # a pending block too small: replace it
            return {"file_id": self._allocate_slot(meta, chain_index, min_capacity)}

    def op_topics(self, **_):
        return sorted(name for name, t in self.topics.items() if t.meta.get(L.H_VISIBLE))

    def op_stats(self, **_):
        return {"topics": {name: topic_stats(t.meta) for name, t in sorted(self.topics.items())
                           if t.meta.get(L.H_VISIBLE)},
                "blocks_reused": self.allocator.reused}

    # ------------------------------------------------------------------ provisioning
    def provision(self) -> None:
        """Keep SPARE_BLOCKS blocks allocated ahead of every writer that moved to a new block.

        A writer then moves to its next block without asking us, and the
        block's pages are already faulted in (on a real disk, converting
        pre-allocated extents costs as much per entry as the rest of an append).
        Only slots at or above H_ALLOCATED_BLOCKS are written here, fields
        first and the count last, so a writer never sees half a slot.
        """
        for state in list(self.topics.values()):
            meta = state.meta
            tail = meta.get(L.H_TAIL_CHAIN)
            if tail == state.seen_tail:
                continue
            state.seen_tail = tail
            state.busy = True
            state.moved_at = time.monotonic()
            if tail == 2**64 - 1:
                continue
            fresh = []
            with chain_mutex(meta):
                while meta.get(L.H_ALLOCATED_BLOCKS) < min(tail + 1 + SPARE_BLOCKS, L.CHAIN_SLOTS):
                    index = meta.get(L.H_ALLOCATED_BLOCKS)
                    reused = self.allocator.reused
                    try:
                        self._allocate_slot(meta, index, L.BLOCK_HEADER_SIZE)
                    except OSError as exc:
                        log.warning("could not provision a block for %s: %s", meta.name, exc)
                        break
                    if self.allocator.reused == reused:   # a reused block's pages are in memory
                        fresh.append(meta.chain(index)[:3])
            for file_id, file_offset, capacity in fresh:   # outside the mutex: it takes a while
                self._populate(file_id, file_offset, capacity)

    def _allocate_slot(self, meta, chain_index: int, min_capacity: int) -> int:
        """Give chain slot ``chain_index`` a fresh block. Caller holds the topic's chain mutex."""
        if chain_index % (L.PAGE // L.CHAIN_SLOT) == 0:
            meta.reserve_chain_slot(chain_index)   # ENOSPC here is an error, not a SIGBUS later
        file_id, file_offset, capacity = self.allocator.alloc(min_capacity, meta.name)
        meta.set_chain_slot(chain_index, file_id, file_offset, capacity)
        if chain_index == meta.get(L.H_ALLOCATED_BLOCKS):
            meta.set(L.H_ALLOCATED_BLOCKS, chain_index + 1)
        return file_id

    def _populate(self, file_id: int, file_offset: int, capacity: int) -> None:
        if not self._populate_broken:
            self._faulting.submit(self._populate_now, file_id, file_offset, capacity)

    def _populate_now(self, file_id: int, file_offset: int, capacity: int) -> None:
        """(populate thread) Fault a block's pages in through a mapping of its own."""
        try:
            fd = os.open(self.files.path(file_id), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return   # reclaimed meanwhile
        try:
            with mmap.mmap(fd, file_offset + capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                sync.populate_write(mm, file_offset, capacity)   # lets the control loop run meanwhile
        except (OSError, ValueError):
            self._populate_broken = True  # not supported here: writers fault pages in themselves
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reclamation
    def reclaim(self) -> None:
        """Free blocks every group has read past; delete files left with no live block."""
        for state in list(self.topics.values()):
            self.reclaim_topic(state)
        self.allocator.expire(REUSE_TTL)
        now = time.monotonic()
        for file_id in self.allocator.deletable():
            self.pending_delete.setdefault(file_id, now + DELETE_GRACE)
        for file_id, when in list(self.pending_delete.items()):
            if when <= now:
                del self.pending_delete[file_id]
                self.allocator.forget(file_id)
                self._unlink_block_file(file_id)

    def reclaim_busy(self) -> None:
        """Between full passes, reclaim the topics whose writers moved on (so their blocks can be reused soon)."""
        for state in list(self.topics.values()):
            if state.busy:
                state.busy = False
                self.reclaim_topic(state)

    def reclaim_topic(self, state: TopicState) -> None:
        meta = state.meta
        groups = meta.group_names()
        if not groups:
            return  # nobody has read the topic yet: it keeps everything
        low = min(meta.get(L.group_slot_at(s) + L.G_CURSOR) for s in groups.values())
        first, published = meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)
        k = first
        # The tail block (published - 1) is never freed: a writer still uses it.
        while k + 1 < published and meta.chain(k + 1)[3] <= low:
            k += 1
        if k == first:
            return
        blocks = [meta.chain(index) for index in range(first, k)]
        freed_bytes = sum(self._block_payload_bytes(file_id, file_offset, capacity, block_first,
                                                    meta.chain(index + 1)[3])
                          for index, (file_id, file_offset, capacity, block_first) in enumerate(blocks, first))
        # Readers clamp to H_FIRST_OFFSET, so it moves before H_FIRST_BLOCK. The atomic add
        # after them is a full barrier: the pins are loaded only once H_FIRST_BLOCK is
        # visible (a zero-copy reader pins, then loads H_FIRST_BLOCK: reader._pinned_view).
        meta.set(L.H_FIRST_OFFSET, meta.chain(k)[3])
        meta.set(L.H_FIRST_BLOCK, k)
        sync.atomic_add(meta.base + L.H_RECLAIMED_BYTES, freed_bytes)
        # Reuse is for topics being written (a block offered to an idle topic would only
        # keep its file REUSE_TTL longer), and for blocks no zero-copy view pins.
        reusable = time.monotonic() - state.moved_at < REUSE_TTL
        for file_id, file_offset, capacity, _ in blocks:
            if (reusable and capacity == self.block_size and self.allocator.reusable(meta.name) < MAX_REUSABLE
                    and self._pins(file_id, file_offset) == 0):
                self.allocator.offer(meta.name, file_id, file_offset)
            else:
                self.allocator.free(file_id, file_offset)

    def _pins(self, file_id: int, file_offset: int) -> int:
        """Processes holding zero-copy views into the block (layout.B_PINS); -1: unreadable."""
        try:
            return _PIN.unpack_from(self.files.map(file_id), file_offset + L.B_PINS)[0]
        except (OSError, ValueError, struct.error):
            return -1

    def _block_payload_bytes(self, file_id, file_offset, capacity, first, end) -> int:
        try:
            buf = self.files.map(file_id)
        except OSError:
            return 0
        start = file_offset + L.BLOCK_HEADER_SIZE
        if native is not None:
            return native.payload_bytes(buf, start, file_offset + capacity, first, end)
        total = 0
        pos, off = start, first
        while off < end:
            try:
                record = read_record(buf, pos, file_offset + capacity)
            except BadRecord:
                break
            total += sum(record.lengths)
            off, pos = record.end_offset, pos + record.size
        return total

    def _unlink_block_file(self, file_id: int) -> None:
        self.files.drop(file_id)
        try:
            os.unlink(self.files.path(file_id))
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ fsync
    def _sync_loop(self) -> None:
        interval = self.fsync.milliseconds / 1000 if isinstance(self.fsync, FsyncEvery) else 0.2
        while not self._stopping:
            self._sync_wakeup.wait(interval)
            try:
                self.sync_all()
            except Exception:
                log.exception("fsync pass failed")

    def sync_all(self, force: bool = False) -> None:
        """fsync the block files and meta of every topic that changed since the last pass.

        Data before meta: a meta page that reaches the disk first could name
        entries whose bytes did not (recovery would then cut them, as a torn tail).
        """
        with self.topics_lock:
            states = list(self.topics.values())
        files = BlockFiles(self.blocks_dir) if threading.current_thread() is self._syncer else self.files
        for state in states:
            meta = state.meta
            next_offset = meta.get(L.H_NEXT_OFFSET)
            cursors = sum(meta.get(L.group_slot_at(s) + L.G_CURSOR) for s in meta.group_names().values())
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

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Clean shutdown: fsync everything, remove the socket and the semaphores."""
        self._stopping = True
        self._sync_wakeup.set()
        if self._syncer is not None:
            self._syncer.join(timeout=10)
        self._faulting.shutdown(wait=True, cancel_futures=True)
        if self.allocator is not None:
            self.allocator.discard_spare()
        self._disk.shutdown(wait=True)
        try:
            if self.allocator is not None:
                self.sync_all(force=True)
        finally:
            for conn in list(self._conns):
                self._drop(conn)
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                try:
                    os.unlink(os.path.join(self.root, "broker.sock"))
                except FileNotFoundError:
                    pass
            for state in self.topics.values():
                try:
                    state.sem.unlink()
                except posix_ipc.ExistentialError:
                    pass
                state.sem.close()
                state.meta.close()
            self.files.close()
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock last: nothing of ours is left for the next one


# ----------------------------------------------------------------------------- the public handle

class Broker:
    """Starts and stops a broker process for one data directory and key (API.md)."""

    def __init__(self, data_dir=None, *, key=None, consistency=None, fsync=None,
                 block_size: int = L.DEFAULT_BLOCK_SIZE, blocks_per_file: int = L.DEFAULT_BLOCKS_PER_FILE):
        self.data_dir = names.resolve_data_dir(data_dir)
        self.key = key
        self.root = names.namespace_dir(self.data_dir, key)
        self.consistency = StrictlyAtOnce() if consistency is None else consistency
        self.fsync = FsyncEvery(milliseconds=200) if fsync is None else fsync
        if not isinstance(self.consistency, (StrictlyAtOnce, AtLeastOnce)):
            raise TypeError("consistency must be shmwal.StrictlyAtOnce() or shmwal.AtLeastOnce(...)")
        if not isinstance(self.fsync, (SyncEach, FsyncEvery, NoFsync)):
            raise TypeError("fsync must be shmwal.SyncEach(), shmwal.FsyncEvery(...) or shmwal.NoFsync()")
        for label, value in (("block_size", block_size), ("blocks_per_file", blocks_per_file)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{label} must be an int")
        if not L.MIN_BLOCK_SIZE <= block_size <= L.MAX_BLOCK_SIZE or block_size % L.PAGE:
            raise ValueError(f"block_size must be a multiple of {L.PAGE} from {L.MIN_BLOCK_SIZE} to {L.MAX_BLOCK_SIZE}")
        if not 1 <= blocks_per_file <= 1 << 16:
            raise ValueError("blocks_per_file must be from 1 to 65536")
        self.block_size = block_size
        self.blocks_per_file = blocks_per_file
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 30.0) -> "Broker":
        if self._process is not None and self._process.poll() is None:
            return self
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-m", "shmwal.server.main", "--data-dir", self.data_dir,
                "--consistency", _consistency_arg(self.consistency), "--fsync", _fsync_arg(self.fsync),
                "--block-size", str(self.block_size), "--blocks-per-file", str(self.blocks_per_file),
                "--ready-fd", str(write_fd), "--die-with-parent", str(os.getpid())]
        if self.key is not None:
            argv += ["--key", names.sanitize_key(self.key)]   # the same namespace, and no NUL in argv
        make_private_dir(self.data_dir)
        make_private_dir(self.root)
        log_path = os.path.join(self.root, "broker.log")
        with open(log_path, "ab", buffering=0) as log_file:
            os.chmod(log_path, 0o600)
            try:
                self._process = subprocess.Popen(argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                                 stdout=log_file, stderr=log_file, close_fds=True)
            finally:
                os.close(write_fd)
        try:
            answer = _read_ready(read_fd, timeout)
        finally:
            os.close(read_fd)
        if answer.startswith("ready"):
            return self
        self._process.wait(timeout=10)
        self._process = None
        if answer.startswith("already-running"):
            raise BrokerAlreadyRunning(answer.partition(" ")[2] or f"a broker already runs on {self.root}")
        raise ShmwalError(f"broker failed to start: {answer or 'no answer'} (log: {log_path})")

    def stop(self, timeout: float = 10) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<shmwal.Broker {self.root!r} pid={self.pid}>"


def _consistency_arg(c) -> str:
    return "strict" if isinstance(c, StrictlyAtOnce) else f"at-least-once:{c.persist_every}"


def _fsync_arg(f) -> str:
    if isinstance(f, SyncEach):
        return "each"
    if isinstance(f, NoFsync):
        return "none"
    return repr(float(f.milliseconds))


def _read_ready(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(remaining * 1000):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
