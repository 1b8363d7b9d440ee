"""Disk full recovers by consuming, with idle clients connected (issue 11, item 4).

Before: on a full tmpfs, consuming everything made the broker delete the consumed
block files (31 -> 7), but an idle, caught-up client still mapped 24 deleted files,
so their space was never released and appends kept failing.  Now consumed blocks
give their space back as they are freed, and every client lets go of its mappings of
deleted files at the broker's word (idle ones included).

Client work runs in forked children (a store to a page a full tmpfs cannot back is a
SIGBUS: it must not take the test runner down).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import time

import pytest

import shmwal
from conftest import wait_until
from drill_helpers import offset_payload, offset_payload_ok
from helpers import read_all

TOPIC = "full"
ENTRY = 3000
IDLE = 3
CTX = multiprocessing.get_context("fork")


def _fill(data_dir, start, result, hold_for=None):
    """Append until the disk is full; put (entries appended, the error that stopped it).

    ``hold_for``: a group made before the first append, so everything appended waits for it
    (with Retention(bytes=0) the idle readers' catching up would otherwise free it all).
    """
    client = shmwal.connect(data_dir)
    if hold_for is not None:
        client.create_group(TOPIC, hold_for)
    n = start
    error = None
    try:
        while n < start + 100_000:
            client.append(TOPIC, offset_payload(n, ENTRY))
            n += 1
    except OSError as exc:
        error = exc.errno
    except shmwal.ShmwalError as exc:
        error = str(exc)
    client.close()
    result.put((n - start, error))


def _idle_reader(data_dir, group, caught_up, release, result):
    """Read everything in ``group`` (mapping every file), say so, then sit idle, connected."""
    client = shmwal.connect(data_dir)
    entries = read_all(client, TOPIC, group, 1 << 20)
    bad = sum(not offset_payload_ok(e.offset, e.data) for e in entries)
    caught_up.put((os.getpid(), len(entries), bad))
    release.wait(120)
    client.close()
    result.put("done")


def _consume(data_dir, group, result):
    client = shmwal.connect(data_dir)
    got = len(read_all(client, TOPIC, group, 1 << 20))
    client.close()
    result.put(got)


def _child(target, *args, **kwargs):
    queue = CTX.Queue()
    p = CTX.Process(target=target, args=(*args, queue), kwargs=kwargs)
    p.start()
    return p, queue


def _result(p, queue, timeout=60):
    out = queue.get(timeout=timeout)
    p.join(10)
    return out


def _deleted_block_maps(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return [line.split()[-2] for line in f if ".blk (deleted)" in line]
    except OSError:
        return []


@pytest.mark.timeout(180)
def test_consuming_frees_a_full_disk_with_idle_clients_connected(tmpfs, start_broker):
    small_fs = tmpfs("6m")
    data_dir = os.path.join(small_fs, "data")
    start_broker(data_dir, block_size=32 * 1024, blocks_per_file=4)
    p, q = _child(_fill, data_dir, 0, hold_for="work")
    filled, error = _result(p, q)
    print(f"\nfull after {filled} appends of {ENTRY} B ({error})")
    assert filled >= 300 and error in (errno.ENOSPC,) or "space" in str(error).lower(), (filled, error)

    release = CTX.Event()
    caught_up = CTX.Queue()
    idle = []
    try:
        for i in range(IDLE):
            idle.append(_child(_idle_reader, data_dir, f"idle{i}", caught_up, release))
        pids = []
        for _ in range(IDLE):
            pid, got, bad = caught_up.get(timeout=60)
            assert (got, bad) == (filled, 0), f"an idle reader read {got} of {filled} ({bad} damaged)"
            pids.append(pid)
        p, q = _child(_consume, data_dir, "work")
        assert _result(p, q) == filled
        # The broker deletes the consumed files (all but the tail's) and says so: idle
        # clients unmap them within moments, not never.
        blocks = os.path.join(data_dir, "default", "blocks")
        before = len(os.listdir(blocks))
        assert wait_until(lambda: len(os.listdir(blocks)) <= 3, 15), (before, os.listdir(blocks))
        stuck = wait_until(lambda: not any(_deleted_block_maps(pid) for pid in pids), 5) or \
            {pid: _deleted_block_maps(pid) for pid in pids}
        assert stuck is True, f"idle clients still map deleted block files: {stuck}"

        # Every group has read everything: the broker frees and deletes the blocks, and the
        # idle clients let go of the deleted files, so appends work again.
        deadline = time.monotonic() + 30
        total = 0
        while time.monotonic() < deadline:
            p, q = _child(_fill, data_dir, filled + total)
            more, error = _result(p, q)
            total += more
            if total >= filled // 2:
                break
            time.sleep(0.5)
        print(f"after consuming: {total} more appends; idle clients map deleted files: "
              f"{[len(_deleted_block_maps(pid)) for pid in pids]}")
        assert total >= filled // 2, f"consuming freed room for only {total} of {filled} entries ({error})"
        stuck = {pid: _deleted_block_maps(pid) for pid in pids}
        assert not any(stuck.values()), f"idle clients still map deleted block files: {stuck}"
    finally:
        release.set()
        for p, q in idle:
            try:
                q.get(timeout=30)
            except Exception:
                pass
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
