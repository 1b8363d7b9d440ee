"""Shared fixtures: a private data directory per test, brokers that are always
stopped, and a check that a test leaves no processes or IPC objects behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

import shmwal
from shmwal.ipc import names

def pytest_configure(config):
    # A job a non-interactive shell starts in the background (`cmd &`, as CI scripts may)
    # begins with SIGINT ignored, and every process it starts inherits that through exec:
    # the tests that end `tail --follow` or `stat --watch` with Ctrl-C would then wait in
    # vain. A Python handler, unlike SIG_IGN, is reset to the default by exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# Processes a wider-scoped fixture keeps alive across tests (the NATS cluster's nodes):
# the per-test leftover check leaves these alone, and their fixture stops them.
LONG_LIVED_PIDS: set[int] = set()


def ipc_leftovers(root: str) -> list[str]:
    """POSIX IPC objects in /dev/shm that belong to the broker of ``root``."""
    prefix = names.ipc_prefix(root).lstrip("/")
    return sorted(n for n in os.listdir("/dev/shm") if prefix in n)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def start_broker(data_dir):
    """Factory: start_broker(**options) -> a started shmwal.Broker; all are stopped at teardown."""
    started: list[shmwal.Broker] = []

    def start(directory=None, **options):
        options.setdefault("block_size", 64 * 1024)
        options.setdefault("blocks_per_file", 4)
        # Consumed blocks go as soon as they can (as before Retention): the reclamation and reuse
        # tests count on it. Retention's default (16 MiB kept for replay) is tested in test_retention.py.
        options.setdefault("retention", shmwal.Retention(bytes=0))
        broker = shmwal.Broker(directory or data_dir, **options)
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()
    for broker in started:
        assert wait_until(lambda: not ipc_leftovers(broker.root), 5), ipc_leftovers(broker.root)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> the path of a fresh tmpfs of that size (unmounted at teardown); skips where not permitted."""
    mounted = []

    def mount(size: str) -> str:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                        f"{done.stderr.strip() or done.returncode}")
        mounted.append(str(mnt))
        return str(mnt)

    yield mount
    for mnt in mounted:
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


@pytest.fixture
def broker(start_broker):
    return start_broker()


@pytest.fixture
def client(broker):
    c = shmwal.connect(broker.data_dir, key=broker.key)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def no_queue_clients_left():
    """shmwal.Queue keeps one Client per directory for the whole process (embedded.py): a test
    that made Queues ends with them closed, and the brokers Queues started stopped, so that
    no later test inherits their mappings (a process it forks would map block files the
    test's broker deleted) or their brokers."""
    yield
    from shmwal import embedded
    embedded.stop_embedded()


@pytest.fixture(params=["fused", "piecewise"])
def copy_kernel(request):
    """hot.c's copy-and-checksum of large payloads both ways: fused_xxh3.h's one pass (where
    the CPU has AVX2) and the piece-wise path other CPUs take. The pure path has neither:
    its tests run once (as "piecewise")."""
    from shmwal.client.hot import native
    if native is None:
        if request.param == "fused":
            pytest.skip("the pure-Python path has no compiled copy")
        yield request.param
        return
    was = native.fused()
    if request.param == "fused" and not native.fused(True):
        pytest.skip("this CPU has no AVX2: the fused copy never runs here")
    native.fused(request.param == "fused")
    try:
        yield request.param
    finally:
        native.fused(was)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every process a test starts is gone when it ends (killed drills included)."""
    yield
    me = psutil.Process()

    def ours():
        return [c for c in me.children(recursive=True) if c.pid not in LONG_LIVED_PIDS]

    children = wait_until(lambda: not ours(), 10) or ours()
    leftover = [] if children is True else children
    for child in leftover:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    assert not leftover, f"the test left processes behind: {leftover}"


# ----------------------------------------------------------------------------- NATS

def nats_missing() -> str | None:
    """Why the NATS tests cannot run here, or None."""
    from shmwal.nats.cluster import server_binary
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (pip install 'shmwal[nats]')"
    if server_binary() is None:
        return "nats-server is not installed (apt-get install nats-server)"
    return None


@pytest.fixture(scope="session")
def nats_cluster():
    """A 3-node JetStream cluster on 127.0.0.1 for the whole session (tests isolate
    themselves by key: each key is its own set of streams)."""
    reason = nats_missing()
    if reason:
        pytest.skip(reason)
    from shmwal.nats.cluster import Cluster, scratch_parent
    cluster = Cluster(3, parent=scratch_parent()).start()
    LONG_LIVED_PIDS.update(cluster.pids)
    yield cluster
    LONG_LIVED_PIDS.difference_update(n.process.pid for n in cluster.nodes if n.process)
    cluster.stop()
