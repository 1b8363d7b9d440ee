"""Batch reads of large entries keep their memory: no page faults batch after batch (issue 13).

Each big batch used to allocate fresh memory for its bytes objects, which glibc gave back
to the kernel when the batch was freed and faulted in again for the next (client/heap.py).
Counted in a fresh process (its own malloc state): minor page faults while reading the same
data again with the same budget, after one warm-up pass.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from helpers import connect

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the trim threshold is glibc's")

_READER = r"""
import json, resource, sys
import shmwal
data_dir, key, budget, zero_copy = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), sys.argv[4] == "1"
hold = sys.argv[5] == "1"      # the previous batch lives while the next is read
client = shmwal.connect(data_dir, key=key)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def read_all():
    client.seek("big", 0, group="g")
    got = 0
    batch = None
    while True:
        if not hold:
            batch = None
        batch = client.batch_read("big", budget, group="g", zero_copy=zero_copy)
        if not batch:
            return got
        got += sum(len(e.data) for e in batch)
read_all()                     # warm-up: the first batch of a size faults its memory in once
before = faults()
got = read_all()
print(json.dumps({"faults": faults() - before, "pages": got // 4096}))
client.close()
"""

ENTRY = 64 * 1024
ENTRIES = 600      # ~39 MB


@pytest.fixture
def big_topic(start_broker):
    broker = start_broker(block_size=4 << 20)
    with connect(broker) as client:
        # A group that never reads: the reader's second pass (a seek back to 0) finds every
        # entry still there (under start_broker's Retention(bytes=0) the broker may free what
        # the first pass read before the second starts).
        client.create_group("big", "keep")
        payload = bytes(range(256)) * (ENTRY // 256)
        for start in range(0, ENTRIES, 50):
            client.batch_append("big", [payload] * 50)
    return broker


def _faults(broker, budget: int, zero_copy: bool = False, keep_malloc: bool = False, hold: bool = False) -> dict:
    env = dict(os.environ)
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "SHMWAL_KEEP_MALLOC"):
        env.pop(name, None)
    if keep_malloc:
        env["SHMWAL_KEEP_MALLOC"] = "1"
    done = subprocess.run([sys.executable, "-c", _READER, broker.data_dir, broker.key or "", str(budget),
                           "1" if zero_copy else "0", "1" if hold else "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("hold", [False, True], ids=["dropped", "held"])
@pytest.mark.parametrize("budget", [1 << 20, 8 << 20, 64 << 20], ids=["1MiB", "8MiB", "64MiB"])
def test_batches_of_large_entries_reuse_their_memory(big_topic, budget, hold):
    """``held``: the caller keeps each batch while it reads the next, as ``while batch :=
    client.batch_read(...)`` does (two batches' memory in use at once)."""
    result = _faults(big_topic, budget, hold=hold)
    assert result["pages"] == ENTRIES * ENTRY // 4096
    # Every page of every batch faulted in before: ~9,600 here. Some are left for the
    # interpreter's own allocations and the client's threads.
    assert result["faults"] < result["pages"] // 20, result


def test_without_the_setting_batches_fault_their_memory_in_again(big_topic):
    """The check above can fail: with malloc left as it is, most pages fault again."""
    result = _faults(big_topic, 8 << 20, keep_malloc=True)
    assert result["faults"] > result["pages"] // 2, result


def test_zero_copy_batches_allocate_no_payload_memory(big_topic):
    result = _faults(big_topic, 8 << 20, zero_copy=True)
    assert result["faults"] < result["pages"] // 20, result


@pytest.mark.timeout(60)
@pytest.mark.parametrize("keep", ["", "1"])
def test_settle_sets_the_long_running_thresholds_unless_malloc_is_left_alone(keep):
    """shmwal bench settles every contender's processes alike (bench/workers.py); a later
    batch read's retain never lowers what settle set; SHMWAL_KEEP_MALLOC=1 leaves malloc alone."""
    code = ("from shmwal.client import heap\n"
            "settled = heap.settle(); after = heap.retained\n"
            "heap.retain(4 << 20)\n"
            "print(settled, after, heap.retained)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["SHMWAL_KEEP_MALLOC"] = keep
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, env=env)
    assert done.returncode == 0, done.stderr
    if keep:
        assert done.stdout.split() == ["False", str(1 << 30), str(1 << 30)]
    else:
        assert done.stdout.split() == ["True", str((64 << 20) // 3), str((64 << 20) // 3)]
