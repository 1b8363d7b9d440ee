"""Shared fixtures: a private data directory per test, brokers that are always
stopped, and a check that a test leaves no processes or IPC objects behind."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import shmwal
from shmwal.ipc import names


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
def broker(start_broker):
    return start_broker()


@pytest.fixture
def client(broker):
    c = shmwal.connect(broker.data_dir, key=broker.key)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every process a test starts is gone when it ends (killed drills included)."""
    yield
    me = psutil.Process()
    children = wait_until(lambda: not me.children(recursive=True), 10) or me.children(recursive=True)
    leftover = [] if children is True else children
    for child in leftover:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    assert not leftover, f"the test left processes behind: {leftover}"
