"""A broker started on first use, for programs that only want a queue.

``shmwal.Queue`` calls ``client_for(data_dir, key)``: if a broker answers on
that directory it is used as it is; if none does, this process starts one
that lives as long as this process (the broker dies with its parent, and a
clean exit stops it through ``atexit``). ``data_dir=None`` means a private
temporary directory, removed at exit with everything in it.

Several processes may race to start the broker of one directory: the loser
gets ``BrokerAlreadyRunning`` and connects to the winner's.

One Client per (directory, key) per process serves every Queue there; a
forked child inherits it and the Client reconnects by itself (facade.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading

from .broker import Broker
from .client import connect
from .errors import BrokerAlreadyRunning, BrokerUnavailable
from .ipc import names
from .options import NoFsync

# The broker's block size (a 1 MiB array fits nine times), in files of 8 blocks rather
# than 100: block files take disk as data comes (a small queue ~100 KiB), but a 1 GiB
# apparent size for a queue nobody configured surprises whoever lists the directory.
BLOCK_SIZE = 10 << 20
BLOCKS_PER_FILE = 8

_lock = threading.Lock()
_clients: dict[tuple, object] = {}   # (data_dir, key) -> Client, for this process
_temp_dir: str | None = None         # this process's private directory (data_dir=None)
_owner_pid = os.getpid()             # who started what below (a forked child did not)
_started: list[tuple[Broker, str | None]] = []   # brokers this process started, and a directory to remove


def private_dir() -> str:
    """This process's temporary data directory, made on first use (0700)."""
    global _temp_dir
    with _lock:
        if _temp_dir is None:
            _temp_dir = tempfile.mkdtemp(prefix="shmwal-queue-")
        return _temp_dir


def client_for(data_dir: str, key, *, temporary: bool = False, start: bool = True, timeout: float = 5.0):
    """This process's Client of (``data_dir``, ``key``), starting a broker there if none runs
    (and ``start``: a Queue unpickled in a worker only connects to the one its maker used)."""
    where = (data_dir, key)
    client = _clients.get(where)
    if client is not None:
        return client
    with _lock:
        client = _clients.get(where)
        if client is None:
            if start:
                client = _connect_or_start(data_dir, key, temporary, timeout)
            else:
                client = connect(data_dir, key=key, timeout=timeout)
            _clients[where] = client
        return client


def _connect_or_start(data_dir: str, key, temporary: bool, timeout: float):
    try:
        return connect(data_dir, key=key, timeout=0.0)
    except BrokerUnavailable:
        pass
    broker = Broker(data_dir, key=key, block_size=BLOCK_SIZE, blocks_per_file=BLOCKS_PER_FILE,
                    # A temporary directory is deleted at exit: fsyncing it buys nothing
                    # (NoFsync still survives the death of any process).
                    fsync=NoFsync() if temporary else None)
    try:
        broker.start()
    except BrokerAlreadyRunning:
        pass   # another process won the race: use its broker
    else:
        if not _started:
            atexit.register(_stop_started)
        _started.append((broker, data_dir if temporary else None))
    return connect(data_dir, key=key, timeout=timeout)


def _stop_started() -> None:
    if os.getpid() != _owner_pid:
        return   # a forked child that exits through atexit: the brokers are its parent's
    for client in list(_clients.values()):
        client.close()
    _clients.clear()
    while _started:
        broker, directory = _started.pop()
        broker.stop()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def stop_embedded() -> None:
    """Stop the brokers this process started (and remove their temporary files) now.

    What ``atexit`` does anyway; for programs and tests that go on running.
    """
    global _temp_dir
    with _lock:
        _stop_started()
        _temp_dir = None


def _after_fork_in_child() -> None:
    global _lock, _owner_pid, _started, _temp_dir
    _lock = threading.Lock()   # the parent's may have been held by another thread
    # The child did not start the parent's brokers: it neither stops them nor
    # removes their directories, and a Queue(data_dir=None) it makes gets its own.
    _started = []
    _temp_dir = None
    _owner_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def resolve(data_dir) -> tuple[str, bool]:
    """``(directory, temporary)`` for a Queue's ``data_dir`` argument."""
    if data_dir is None:
        if os.environ.get("SHMWAL_DATA_DIR"):
            return names.resolve_data_dir(None), False
        return private_dir(), True
    return names.resolve_data_dir(data_dir), False
