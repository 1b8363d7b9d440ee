"""shmwal: a multi-process, shared-memory, persisted log broker.

General layout
--------------
The public API is the names re-exported here; ``docs/API.md`` in the repository is its
reference (every name, parameter, error and guarantee) and ``docs/CLI.md`` the command
line's (generated from ``--help``: ``python -m shmwal.cli.docs``).

Folders by role:

* ``broker.py``     the ``Broker`` handle and the broker process's control loop
                    (selector, peer checks, framing, dispatch)
* ``server/``       the broker process's jobs: ``main`` (the process), ``startup``
                    (lock, sweep, recover, listen), ``recovery`` (making a topic
                    consistent at start), ``registry`` (topics and groups),
                    ``provisioning`` (blocks for writers), ``reclaim`` (blocks read
                    past: pure policy + shell), ``fsync`` (the schedule), ``verify``
                    (reading files without a broker, for ``shmwal stat | verify``)
* ``client/``       what producers and consumers run: ``facade`` (``connect``/``Client``,
                    control over a Unix socket), ``append`` and ``read`` (entries move
                    straight through the mapped files, never through the broker),
                    ``populate`` (faulting a writer's next block in), ``hot`` (the
                    compiled hot path, ``_native/hot.c``, if built)
* ``blocks/``       the on-disk formats: ``layout`` (every size and offset), ``codec``
                    (pure record encode/decode), ``meta`` (a topic's shared state),
                    ``chain`` (finding entries), ``files``, ``allocator``
* ``ipc/``          the OS helpers: ``sync`` (robust process-shared mutexes, atomics),
                    ``names``, ``control`` (length-prefixed JSON framing), ``fsio``,
                    ``libc``, ``priority`` (background threads at the lowest priority)
* ``uring/``        io_uring through ctypes, for batch reads of cold data
* ``mpqueue``       ``shmwal.Queue`` (``multiprocessing.Queue`` on a topic); ``objects``
                    pickles items with out-of-band buffers; ``embedded`` starts a broker
                    on first use
* ``aio/``          asyncio: ``connect_async``, reads woken by one waker thread per topic
* ``cli``           the ``shmwal`` command; ``bench`` the race; ``demo`` the demo
"""

from .client import Client, connect
from .entry import Entry, Payloads
from .errors import (BatchTooLarge, BrokerAlreadyRunning, BrokerUnavailable, ClientClosed,
                     CorruptEntry, EntryTooLarge, InvalidTopic, ShmwalError, Unsupported)
from .options import AtLeastOnce, FsyncEvery, NoFsync, Retention, StrictlyAtOnce, SyncEach

# Imported on first use: a producer or consumer process needs none of them, and they were
# most of `import shmwal` (the broker's own modules, asyncio, pickle): every worker process
# and every `shmwal` command paid for them at start.
_LAZY = {"Broker": ".broker", "Queue": ".mpqueue", "AsyncClient": ".aio", "connect_async": ".aio"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shmwal' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Broker", "Client", "connect", "Entry", "Payloads",
    "StrictlyAtOnce", "AtLeastOnce", "SyncEach", "FsyncEvery", "NoFsync", "Retention",
    "ShmwalError", "BrokerUnavailable", "BrokerAlreadyRunning", "InvalidTopic",
    "EntryTooLarge", "BatchTooLarge", "CorruptEntry", "ClientClosed", "Unsupported",
    "Queue", "connect_async", "AsyncClient",
]
__version__ = "0.1.0"
