"""shmwal: a multi-process, shared-memory, persisted log broker.

General layout
--------------
The public API (``../shared/API.md``) is the names re-exported here, plus two additions:
``batch_read(zero_copy=True)`` and ``batch_read_payloads`` (``Payloads``).

Roles, one module each:

* ``broker``        the broker process: block allocator, offset index, fsync
                    schedule, reclamation, recovery at start (``Broker`` handle)
* ``client``        ``connect``/``Client``: control over a Unix socket; data
                    moves through ``writer`` (append) and ``reader`` (read)
                    straight in the mapped files, never through the broker
* ``sync``          robust process-shared mutexes and atomic counters (ctypes)
* ``populate``      faulting a writer's next block in, mostly on a thread
* ``hot``           the compiled hot path (``_native/hot.c``), if built
* ``blocks/``       the on-disk formats: ``layout`` (every size and offset),
                    ``codec`` (pure record encode/decode), ``meta`` (a topic's
                    shared state), ``chain`` (finding entries), ``files``,
                    ``allocator``
* ``recovery``      making a topic consistent at broker start
* ``uring/``        io_uring through ctypes, for batch reads of cold data
* ``control``       the control protocol (length-prefixed JSON)
* ``cli``           ``shmwal broker | stat | verify | bench``
"""

from .broker import Broker
from .client import Client, connect
from .entry import Entry, Payloads
from .errors import (BatchTooLarge, BrokerAlreadyRunning, BrokerUnavailable, ClientClosed,
                     CorruptEntry, EntryTooLarge, InvalidTopic, ShmwalError)
from .options import AtLeastOnce, FsyncEvery, NoFsync, StrictlyAtOnce, SyncEach

__all__ = [
    "Broker", "Client", "connect", "Entry", "Payloads",
    "StrictlyAtOnce", "AtLeastOnce", "SyncEach", "FsyncEvery", "NoFsync",
    "ShmwalError", "BrokerUnavailable", "BrokerAlreadyRunning", "InvalidTopic",
    "EntryTooLarge", "BatchTooLarge", "CorruptEntry", "ClientClosed",
]
__version__ = "0.1.0"
