"""populate.block: the head of a block now, the rest on a thread; contents never change."""

import mmap
import os

import pytest

from shmwal import populate

pytestmark = pytest.mark.timeout(60)

BLOCK = 4 << 20


def _mapping(tmp_path, name: str, fill: bytes):
    path = tmp_path / name
    path.write_bytes(fill * (BLOCK // len(fill)))
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, BLOCK)
    finally:
        os.close(fd)


def _resident_pages(mm) -> int:
    """Pages of ``mm`` in this process's page tables (Rss of its /proc/self/smaps entry)."""
    import ctypes
    address = ctypes.addressof((ctypes.c_char * 1).from_buffer(mm))
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        start = int(line.split("-", 1)[0], 16) if "-" in line.split(" ", 1)[0] else None
        if start == address:
            rss = next(x for x in lines[i + 1:] if x.startswith("Rss:"))
            return int(rss.split()[1]) // 4
    raise AssertionError("mapping not found in smaps")


def test_a_block_is_populated_whole_and_unchanged(tmp_path):
    mm = _mapping(tmp_path, "a", b"0123456789abcdef")
    before = mm[:]
    populate.block(mm, 0, BLOCK, need=100)
    populate.settle()
    assert mm[:] == before
    if populate._works:
        assert _resident_pages(mm) == BLOCK // 4096
    mm.close()


def test_a_closed_mapping_does_not_stop_the_thread(tmp_path):
    populate.block(_mapping(tmp_path, "b0", b"w"), 0, BLOCK, need=1)   # the thread exists
    closed = _mapping(tmp_path, "b", b"x")
    closed.close()                      # its file was reclaimed before the thread got to it
    populate._submit(closed, 0, BLOCK)
    second = _mapping(tmp_path, "c", b"y")
    populate.block(second, 0, BLOCK, need=1)
    populate.settle()
    assert second[:] == b"y" * BLOCK
    if populate._works:
        assert _resident_pages(second) == BLOCK // 4096
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
            code = 0 if mm[:] == b"q" * BLOCK else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
