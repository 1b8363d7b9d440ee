"""The broker: owner of the block allocator and the offset index.

``Broker`` is the handle a program holds; it spawns ``python -m shmwal.server.main``
and talks to it only through signals and the ready pipe.  The broker process
(``BrokerServer``, below) starts up (server/startup.py: lock, sweep, recover,
listen), then answers control requests on ``broker.sock`` from one selector
loop, so its own state needs no locks.  Its jobs live in ``server/``:

* ``registry``      topics and groups (ops ``open_topic``, ``open_group``, ``topics``)
* ``provisioning``  blocks for writers (op ``alloc_block``; spare blocks ahead; populate thread)
* ``reclaim``       blocks every group has read past, back to the allocator; file deletion
* ``fsync``         the fsync schedule (a thread of its own)

It is never on the per-entry path: producers and consumers move entries
through the mapped files themselves (see client/append.py and client/read.py).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

from .blocks import layout as L
from .blocks.files import BlockFiles
from .errors import BrokerAlreadyRunning, BrokerUnavailable, ShmwalError
from .ipc import control, names
from .ipc.fsio import make_private_dir
from .options import AtLeastOnce, FsyncEvery, NoFsync, Retention, StrictlyAtOnce, SyncEach
from .server import startup
from .server.fsync import Syncer
from .server.provisioning import Provisioner
from .server.reclaim import RECLAIM_EVERY, Reclaimer
from .server.recovery import StartInterrupted
from .server.registry import Registry
from .timeouts import check_timeout, seconds_or_inf

log = logging.getLogger("shmwal.broker")

PROVISION_EVERY = 0.02     # seconds between looks for writers about to need a block
IDLE_LOOK_EVERY = 0.32     # the longest the loop sleeps while nothing moves (PROVISION_EVERY doubled)
RECV_CHUNK = 65536
REPLY_TIMEOUT = 5.0        # seconds a reply may take to go out before its client is dropped
_SO_PEERCRED = struct.Struct("3i")
WATCH_FILES_DELETED = b"d"   # on a client's watch connection: drop your mappings of deleted block files


class BrokerServer:
    def __init__(self, root: str, consistency, fsync, block_size: int, blocks_per_file: int,
                 retention: Retention | None = None, clock=time.monotonic):
        self.root = root
        self.retention = Retention() if retention is None else retention
        self.clock = clock
        self.consistency = consistency
        self.fsync = fsync
        self.block_size = block_size
        self.blocks_per_file = blocks_per_file
        self.blocks_dir = os.path.join(root, "blocks")
        self.prefix = names.ipc_prefix(root)
        self.run_id = int.from_bytes(os.urandom(6), "little")
        self.registry = Registry(root, self.prefix, self.run_id)
        self.files = BlockFiles(self.blocks_dir)
        self.syncer = Syncer(self.registry, self.files, fsync)
        self.provisioner: Provisioner | None = None   # from open() on
        self.reclaimer: Reclaimer | None = None
        self._stopping = False
        self._lock_fd = -1
        self._dir_fd = -1
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._conns: dict[socket.socket, control.FrameBuffer] = {}
        self._watchers: set[socket.socket] = set()   # clients' watch connections (files_deleted)
        # Threads of ours (a spare block's storage is ready) wake the loop through this pair.
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)
        # Control ops: keyword arguments from the request (keys a newer client adds are ignored).
        self._ops = {
            "hello": self._hello,
            "open_topic": self.registry.open_topic,
            "open_group": self.registry.open_group,
            "groups": self.registry.group_names,
            "delete_group": self.registry.delete_group,
            "topics": self.registry.visible_topics,
            "stats": self._stats,
        }

    # ------------------------------------------------------------------ start
    def open(self) -> None:
        make_private_dir(os.path.dirname(self.root))
        make_private_dir(self.root)
        self._lock_fd = startup.take_lock(self.root)
        make_private_dir(self.blocks_dir)
        make_private_dir(self.registry.topics_dir)
        startup.sweep_previous_run(self.root, self.prefix)
        self.provisioner = Provisioner(self.registry, self.files, self.blocks_dir, self.block_size,
                                       self.blocks_per_file, startup.next_file_id(self.blocks_dir),
                                       wake=self._wake)
        self._ops["alloc_block"] = self.provisioner.alloc_block
        self.reclaimer = Reclaimer(self.registry, self.provisioner.allocator, self.files, self.block_size,
                                   self.retention, self.clock)
        self.reclaimer.on_delete = self.files_deleted
        startup.recover_topics(self.registry, self.provisioner.allocator, self.files, self._stop_requested)
        self.provisioner.allocator.open_first_file()
        self._listener, self._dir_fd = startup.listen(self.root)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self.registry.write_run_file()
        self.syncer.start()

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        next_reclaim = time.monotonic() + RECLAIM_EVERY
        look_every = PROVISION_EVERY
        while not self._stopping:
            active = self.provisioner.look() or bool(self.reclaimer.parked)
            try:
                self.reclaimer.reclaim_busy()   # soon, so that their blocks are reused while still in memory
            except Exception:
                log.exception("reclamation of busy topics failed")
            self.provisioner.ready()
            # Idle, the loop looks less and less often (an idle broker used ~0.6% of a CPU
            # at 50 looks a second): a writer leaving a full block says so ("moved") and a
            # request wakes the loop anyway; what else moved is seen within IDLE_LOOK_EVERY.
            look_every = PROVISION_EVERY if active else min(2 * look_every, IDLE_LOOK_EVERY)
            timeout = max(0.0, min(look_every, next_reclaim - time.monotonic()))
            events = self._selector.select(timeout)
            if events:
                look_every = PROVISION_EVERY
            for key, _ in events:
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wakeup_r:
                    self._drain_wakeups()
                else:
                    self._readable(key.fileobj)
            if time.monotonic() >= next_reclaim:
                try:
                    self.reclaimer.reclaim()
                except Exception:
                    log.exception("reclamation pass failed")
                next_reclaim = time.monotonic() + RECLAIM_EVERY

    def request_stop(self, *_args) -> None:
        self._stopping = True

    def _wake(self) -> None:
        """(any thread) Make the loop go round now instead of at its next tick."""
        try:
            self._wakeup_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass   # a wake-up is pending already
        except OSError:
            pass   # closed: the loop has stopped

    def _drain_wakeups(self) -> None:
        try:
            while self._wakeup_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def files_deleted(self) -> None:
        """Tell every client that block files went: an idle one still maps them, and a deleted
        file's pages stay allocated while any process maps it (a full disk stayed full)."""
        for conn in list(self._watchers):
            try:
                conn.send(WATCH_FILES_DELETED, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass   # its buffer is full of earlier notes: it has one to act on already
            except OSError:
                self._drop(conn)

    def _stop_requested(self) -> None:
        """Raises once a stop was asked for: recovery at start waits no longer (a SIGTERM arrived)."""
        if self._stopping:
            raise StartInterrupted("asked to stop while starting")

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
            data = conn.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if conn in self._watchers:
            # After its "watch", a client's watch connection carries only "moved" notes
            # (client Link.moved), whose whole effect is this turn of the loop: nothing in
            # them needs decoding (a writer of 1 MiB entries sends ~1,000 a second).
            return
        try:
            messages = self._conns[conn].feed(data)
        except (control.ProtocolError, ValueError):
            self._drop(conn)
            return
        for message in messages:
            reply = self._handle(message)
            if reply is None:
                if isinstance(message, dict) and message.get("op") == "watch":
                    self._watchers.add(conn)
                continue
            try:
                conn.setblocking(True)
                conn.settimeout(REPLY_TIMEOUT)
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

    def _handle(self, message):
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            return {"error": "ProtocolError", "message": "a request is a JSON object with an 'op'"}
        op = message["op"]
        if op == "watch":
            return None   # a client's second connection: never answered, its EOF tells the client we died
        if op == "moved":
            return None   # one-way, on that connection (client Link.moved): the loop provisions next
        handler = self._ops.get(op)
        if handler is None:
            return {"error": "ProtocolError", "message": f"unknown op {op!r}"}
        try:
            return {"ok": handler(**{k: v for k, v in message.items() if k != "op"})}
        except ShmwalError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        except OSError as exc:
            return {"error": "OSError", "errno": exc.errno, "message": self._os_error_message(exc)}
        except (TypeError, ValueError, KeyError) as exc:
            return {"error": "ProtocolError", "message": f"bad {op} request: {exc}"}
        except Exception as exc:  # never let one request take the broker down
            log.exception("op %s failed", op)
            return {"error": "ShmwalError", "message": f"{op} failed: {exc}"}

    def _os_error_message(self, exc: OSError) -> str:
        """The text of an OSError for the client (which raises OSError(errno, text) again: no "[Errno N]" here)."""
        text = exc.strerror or str(exc)
        if exc.filename is not None:
            text += f": {exc.filename}"
        if exc.errno == errno.ENOSPC and " is full" not in text:   # blocks/allocator.no_space says more
            text += f" ({self.root} is full)"
        return text

    # ------------------------------------------------------------------ ops of the server itself
    def _hello(self, pid=None, **_):
        return {
            "run_id": self.run_id, "broker_pid": os.getpid(),
            "consistency": self.consistency.to_wire(), "fsync": self.fsync.to_wire(),
            "block_size": self.block_size,
        }

    def _stats(self, **_):
        topics = self.registry.topic_stats()
        for name, stats in topics.items():   # kept for its reuse, or a spare on the way: space too
            stats["disk_bytes"] += self.provisioner.allocator.reusable_bytes(name) + \
                self.provisioner.readying_bytes(name)
        return {"topics": topics, "blocks_reused": self.provisioner.allocator.reused}

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Clean shutdown: fsync everything, remove the socket and the semaphores."""
        self._stopping = True
        self.syncer.stop()
        if self.provisioner is not None:
            self.provisioner.close()
        try:
            if self.provisioner is not None:
                self.syncer.sync_all(force=True)
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
            self.registry.close()
            self.files.close()
            self._selector.unregister(self._wakeup_r)
            self._wakeup_r.close()
            self._wakeup_w.close()
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock last: nothing of ours is left for the next one


# ----------------------------------------------------------------------------- the public handle

class Broker:
    """Starts and stops a broker process for one data directory and key.

    ``data_dir=None``: ``$SHMWAL_DATA_DIR``, else ``./shmwal_data``; the files go in
    ``data_dir/<sanitized key>/``. ``consistency``: ``StrictlyAtOnce()`` (default) or
    ``AtLeastOnce(persist_every=N)``; ``fsync``: ``SyncEach()``, ``FsyncEvery(milliseconds=M)``
    (default 200 ms) or ``NoFsync()``; ``block_size`` (a multiple of 4096) and
    ``blocks_per_file`` (1 to 65536) size the block files. Bad options raise
    ``TypeError``/``ValueError`` here, before anything starts. ``with Broker(...)``
    starts on enter and stops on exit. docs/API.md "Starting a broker".
    """

    def __init__(self, data_dir=None, *, key=None, consistency=None, fsync=None,
                 block_size: int = L.DEFAULT_BLOCK_SIZE, blocks_per_file: int = L.DEFAULT_BLOCKS_PER_FILE,
                 retention: Retention | None = None, _clock_file: str | None = None):
        self.retention = Retention() if retention is None else retention
        if not isinstance(self.retention, Retention):
            raise TypeError("retention must be shmwal.Retention(...)")
        # Tests only: the broker's retention clock runs this many seconds (a float in the file) ahead.
        self._clock_file = _clock_file
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
        """The broker process's id while this handle runs one, else ``None``."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 30.0) -> "Broker":
        """Spawn the broker process; return once it accepts clients.

        It lives until ``stop()`` or until the *process* that started it ends
        (not the thread: a broker started from ``asyncio.to_thread`` or a pool
        outlives the thread).  Raises BrokerAlreadyRunning, or ShmwalError
        (BrokerUnavailable when it did not become ready within ``timeout``
        seconds); whatever was started is stopped before it raises.
        """
        wait = seconds_or_inf(check_timeout(timeout))
        if self._process is not None and self._process.poll() is None:
            return self
        log_path = os.path.join(self.root, "broker.log")
        try:
            make_private_dir(self.data_dir)
            make_private_dir(self.root)
            # Clients connecting meanwhile wait for this broker rather than fail at once (names.broker_ran).
            os.close(os.open(os.path.join(self.root, "broker.lock"),
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            raise ShmwalError(f"cannot prepare {self.root} for a broker: {exc}") from exc
        argv = [sys.executable, "-m", "shmwal.server.main", "--data-dir", self.data_dir,
                "--consistency", _consistency_arg(self.consistency), "--fsync", _fsync_arg(self.fsync),
                "--block-size", str(self.block_size), "--blocks-per-file", str(self.blocks_per_file),
                *_retention_args(self.retention),
                *(["--clock-file", self._clock_file] if self._clock_file else []),
                "--ready-fd", str(write_fd), "--die-with-parent", str(os.getpid())]
        if self.key is not None:
            argv += ["--key", names.sanitize_key(self.key)]   # the same namespace, and no NUL in argv
        try:
            try:
                with open(log_path, "ab", buffering=0) as log_file:
                    os.chmod(log_path, 0o600)
                    self._process = subprocess.Popen(argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                                     stdout=log_file, stderr=log_file, close_fds=True)
            finally:
                os.close(write_fd)
            answer = _read_ready(read_fd, wait)
        except OSError as exc:
            self._give_up()
            raise ShmwalError(f"could not start a broker on {self.root}: {exc}") from exc
        except BaseException:   # KeyboardInterrupt while waiting: leave nothing running
            self._give_up()
            raise
        finally:
            os.close(read_fd)
        if answer.startswith("ready"):
            return self
        self._give_up()
        if answer.startswith("already-running"):
            raise BrokerAlreadyRunning(answer.partition(" ")[2] or f"a broker already runs on {self.root}")
        if not answer:
            raise BrokerUnavailable(f"the broker of {self.root} was not ready within {timeout} s and was "
                                    f"stopped (log: {log_path})")
        raise ShmwalError(f"broker failed to start: {answer} (log: {log_path})")

    def _give_up(self) -> None:
        """Stop the process start() spawned (it said no, or said nothing in time) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
            if process.poll() is None:
                process.send_signal(sig)   # SIGTERM: a clean stop, also for one that is exiting anyway
            try:
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self, timeout: float = 10) -> None:
        """Stop the broker cleanly (SIGTERM): writes and cursors flushed and fsynced, its IPC
        objects removed; killed if it has not stopped within ``timeout`` seconds. A handle
        that runs nothing: no-op."""
        wait = check_timeout(timeout)
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<shmwal.Broker {self.root!r} pid={self.pid}>"


def _retention_args(retention: Retention) -> list[str]:
    args = ["--retention-bytes", str(retention.bytes)]
    if retention.seconds is not None:
        args += ["--retention-seconds", repr(float(retention.seconds))]
    if retention.max_bytes is not None:
        args += ["--max-bytes", str(retention.max_bytes)]
    return args


def _consistency_arg(c) -> str:
    return "strict" if isinstance(c, StrictlyAtOnce) else f"at-least-once:{c.persist_every}"


def _fsync_arg(f) -> str:
    if isinstance(f, SyncEach):
        return "each"
    if isinstance(f, NoFsync):
        return "none"
    return repr(float(f.milliseconds))


def _read_ready(fd: int, timeout: float) -> str:
    """The broker's one-line answer on the ready pipe ("" if none within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(None if remaining == math.inf else min(remaining * 1000, 2**31 - 1)):
            continue   # a slice of a long wait ran out: look at the deadline again
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
