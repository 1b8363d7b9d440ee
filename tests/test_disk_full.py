"""Disk full (issue 3, item 7), on a small tmpfs the test mounts (skipped where it cannot).

A broker with small blocks runs on an 8 MiB tmpfs; a client appends until an
append fails.  It must fail with ``OSError(ENOSPC)`` or a ``ShmwalError``
that says the disk is full, and write nothing; the broker must stay up;
every entry appended before must read back -- also for a consumer group that
starts only now; after the filesystem is made larger (remount), appends work
again.

All client work runs in forked children: on a full tmpfs a write to a mapped
page that has no backing page yet is a SIGBUS, and a SIGBUS must not take the
test runner down -- it is reported as the child's death instead.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import time

import psutil
import pytest

import shmwal
from drill_helpers import offset_payload, offset_payload_ok
from helpers import read_all

TOPIC = "full"
ENTRY = 4000
CTX = multiprocessing.get_context("fork")


def _space_error(exc) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc).lower()
    return isinstance(exc, shmwal.ShmwalError) and ("space" in text or "enospc" in text or "full" in text)


def _describe(exc):
    return {"type": type(exc).__name__, "errno": getattr(exc, "errno", None), "message": str(exc)[:300],
            "space": _space_error(exc)}


def _fill(data_dir, result):
    client = shmwal.connect(data_dir)
    out = {}
    count = 0
    try:
        while count < 100_000:
            client.append(TOPIC, offset_payload(count, ENTRY))
            count += 1
    except Exception as exc:
        out["append"] = _describe(exc)
    out["count"] = count
    try:
        client.batch_append(TOPIC, [offset_payload(count + i, ENTRY) for i in range(20)])
        out["batch"] = "ok"
    except Exception as exc:
        out["batch"] = _describe(exc)
    out["next_after_batch"] = client.stats()["topics"][TOPIC]["next_offset"]
    try:
        client.append("fresh-topic", b"x" * 100)
        out["new_topic"] = "ok"
    except Exception as exc:
        out["new_topic"] = _describe(exc)
    client.close()
    result.put(out)


def _read_all(data_dir, group, result):
    client = shmwal.connect(data_dir)
    got = [(e.offset, offset_payload_ok(e.offset, e.data)) for e in read_all(client, TOPIC, group, 1 << 20)]
    out = {"offsets": [o for o, _ in got], "bad": [o for o, ok in got if not ok],
           "next": client.stats()["topics"][TOPIC]["next_offset"]}
    client.close()
    result.put(out)


def _append_more(data_dir, n, result):
    client = shmwal.connect(data_dir)
    start = client.stats()["topics"][TOPIC]["next_offset"]
    offsets = [client.append(TOPIC, offset_payload(start + i, ENTRY)) for i in range(n)]
    client.batch_append(TOPIC, [offset_payload(start + n + i, ENTRY) for i in range(20)])
    client.close()
    result.put({"start": start, "offsets": offsets})


def _run(target, *args, timeout=60):
    """Run ``target(*args, queue)`` in a forked child; return what it put, or fail with how it died."""
    queue = CTX.Queue()
    p = CTX.Process(target=target, args=(*args, queue))
    p.start()
    deadline = time.monotonic() + timeout
    out = None
    while out is None and time.monotonic() < deadline:
        try:
            out = queue.get(timeout=0.2)
        except Exception:
            if not p.is_alive():
                break
    p.join(10)
    if p.is_alive():
        p.kill()
        p.join()
    queue.close()
    queue.join_thread()
    assert out is not None, f"{target.__name__} died (exit code {p.exitcode}: -7 is SIGBUS) without a result"
    return out


def _fill_to_the_last_byte(path) -> int:
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    n = f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
                written += n
    return written


def _broker_alive(broker) -> bool:
    try:
        return psutil.Process(broker.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(120)
def test_disk_full_fails_cleanly_loses_nothing_and_recovers(tmpfs, start_broker):
    small_fs = tmpfs("8m")
    data_dir = os.path.join(small_fs, "data")
    broker = start_broker(data_dir, block_size=16 * 1024, blocks_per_file=4)
    filled = _run(_fill, data_dir)
    count = filled["count"]
    print(f"\ndisk full after {count} appends of {ENTRY} B: {filled}")
    assert count >= 200, f"only {count} appends fitted in 8 MiB"
    assert "append" in filled, "appends never failed on a full 8 MiB filesystem"
    assert filled["append"]["space"], f"an append on a full disk raised {filled['append']}, not ENOSPC"
    assert filled["batch"] != "ok" and filled["batch"]["space"], f"a batch on a full disk: {filled['batch']}"
    assert filled["next_after_batch"] == count, "a failed append or batch wrote entries"
    assert filled["new_topic"] == "ok" or filled["new_topic"]["space"], \
        f"creating a topic on a full disk raised {filled['new_topic']}"
    assert _broker_alive(broker), "the broker died when the disk filled up"

    # Now fill the last free bytes too: not one page is left for anything.
    filler = os.path.join(small_fs, "filler")
    filled_bytes = _fill_to_the_last_byte(filler)
    print(f"filler took the last {filled_bytes} bytes")
    assert os.statvfs(small_fs).f_bavail == 0
    again = _run(_fill, data_dir)
    assert again["count"] == 0 and again["append"]["space"] and again["next_after_batch"] == count, again
    assert again["new_topic"] == "ok" or again["new_topic"]["space"], again
    assert _broker_alive(broker), "the broker died on a completely full disk"

    # Everything appended before reads back, for a group that starts now (while the disk is full).
    read = _run(_read_all, data_dir, "late")
    assert _broker_alive(broker), "the broker died creating a group on a full disk"
    assert read["next"] == count
    assert read["offsets"] == list(range(count)) and not read["bad"], \
        f"entries lost or damaged on a full disk: read {len(read['offsets'])} of {count}, bad {read['bad'][:5]}"

    # Free space: appends work again, and read back after what was there.
    os.unlink(filler)
    assert subprocess.run(["mount", "-o", "remount,size=64m", small_fs]).returncode == 0
    more = _run(_append_more, data_dir, 100)
    assert more["start"] == count and more["offsets"] == list(range(count, count + 100))
    after = _run(_read_all, data_dir, "late")
    assert after["offsets"] == list(range(count, count + 120)) and not after["bad"]
    broker.stop()
