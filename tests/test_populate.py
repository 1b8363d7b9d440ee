"""populate.block: the head of a block now, the rest on a thread; contents never change."""

import ctypes
import gc
import mmap
import os
import signal
import threading
import time

import pytest

from shmwal.client import populate

pytestmark = pytest.mark.timeout(60)

BLOCK = 16 << 20
PAGES = BLOCK // 4096


@pytest.fixture(autouse=True)
def settled():
    yield
    populate.settle()


def test_a_block_is_populated_once_per_mapping(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(populate.sync, "populate_write", lambda mm, start, length: calls.append((start, length)))
    first, second = _mapping(tmp_path, "o1", b"1"), _mapping(tmp_path, "o2", b"2")
    for mm in (first, second, first, second):
        populate.block(mm, 0, populate.HEAD_BYTES, need=1)
    populate.block(first, populate.HEAD_BYTES, populate.HEAD_BYTES, need=1)
    assert calls == [(0, populate.HEAD_BYTES)] * 2 + [(populate.HEAD_BYTES, populate.HEAD_BYTES)]
    # Other tests' clients in this process may still have mappings in the table: count ours.
    gc.collect()
    known = len(populate._faulted)
    first.close()
    del first
    gc.collect()
    assert len(populate._faulted) == known - 1           # what it knew of a mapping goes with it
    assert populate._faulted[second] == {0}
    second.close()


def _mapping(tmp_path, name: str, fill: bytes):
    path = tmp_path / name
    path.write_bytes(fill * (BLOCK // len(fill)))
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, BLOCK)
    finally:
        os.close(fd)


def _resident_pages(mm) -> int:
    """Pages of ``mm`` in this process's page tables (Rss of its /proc/self/smaps entry).
    Read before anything reads the mapping: a read maps pages in too."""
    view = (ctypes.c_char * 1).from_buffer(mm)
    address = ctypes.addressof(view)
    del view
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        span = line.split(" ", 1)[0]
        if "-" in span and int(span.split("-", 1)[0], 16) == address:
            rss = next(x for x in lines[i + 1:] if x.startswith("Rss:"))
            return int(rss.split()[1]) // 4
    raise AssertionError("mapping not found in smaps")


def _exit_code(pid: int, within: float):
    """The child's exit code, or None after killing it if it did not end in time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_block_is_populated_whole_and_unchanged(tmp_path):
    mm = _mapping(tmp_path, "a", b"0123456789abcdef")
    assert _resident_pages(mm) == 0
    populate.block(mm, 0, BLOCK, need=100)
    populate.settle()
    if populate._works:
        assert _resident_pages(mm) == PAGES
    assert mm[:] == b"0123456789abcdef" * (BLOCK // 16)
    mm.close()


def test_the_head_is_populated_before_block_returns(tmp_path):
    mm = _mapping(tmp_path, "h", b"h")
    populate._lock.acquire()          # the thread cannot be handed the rest meanwhile
    try:
        caller = threading.Thread(target=populate.block, args=(mm, 0, BLOCK, 1))
        caller.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _resident_pages(mm) < populate.HEAD_BYTES // 4096:
            time.sleep(0.01)
        head_only = _resident_pages(mm)
    finally:
        populate._lock.release()
    caller.join(10)
    populate.settle()                 # the thread's export of the mapping ends before we close it
    if populate._works:
        # The head at least (the page cache may map a whole large folio around it), not the rest.
        assert populate.HEAD_BYTES // 4096 <= head_only < PAGES // 2
    mm.close()


def test_a_closed_mapping_does_not_stop_the_thread(tmp_path):
    populate.block(_mapping(tmp_path, "b0", b"w"), 0, BLOCK, need=1)   # the thread exists
    closed = _mapping(tmp_path, "b", b"x")
    closed.close()                      # its file was reclaimed before the thread got to it
    populate._submit(closed, 0, BLOCK)
    second = _mapping(tmp_path, "c", b"y")
    populate.block(second, 0, BLOCK, need=1)
    populate.settle()
    if populate._works:
        assert _resident_pages(second) == PAGES
    assert second[:] == b"y" * BLOCK
    second.close()


def test_a_forked_child_gets_a_thread_of_its_own(tmp_path):
    populate.block(_mapping(tmp_path, "d", b"p"), 0, BLOCK, need=1)
    populate.settle()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            mm = _mapping(tmp_path, "e", b"q")
            populate.block(mm, 0, BLOCK, need=1)
            populate.settle()
            code = 0 if (not populate._works or _resident_pages(mm) == PAGES) and mm[:] == b"q" * BLOCK else 2
        finally:
            os._exit(code)
    assert _exit_code(pid, within=20.0) == 0


def test_a_fork_while_another_thread_submits_leaves_the_child_a_free_lock(tmp_path):
    populate._lock.acquire()          # as if another thread were inside _submit at the fork
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mm = _mapping(tmp_path, "f", b"r")
                populate._submit(mm, 0, BLOCK)            # would hang on an inherited held lock
                populate.settle()
                code = 0 if mm[:] == b"r" * BLOCK else 2
            finally:
                os._exit(code)
    finally:
        populate._lock.release()
    assert _exit_code(pid, within=20.0) == 0
