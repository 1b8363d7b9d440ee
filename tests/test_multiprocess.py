"""Real processes sharing one broker (API.md "Writing", "Reading", "Connecting"):
concurrent producers, work queues, publish/subscribe, blocked readers, and
Clients handed to workers under both "fork" and "spawn"."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
import textwrap
import time
import zlib

import psutil
import pytest

import shmwal
from conftest import wait_until
from helpers import (START_METHODS, Workers, consume, no_resource_tracker_left, parse_payload,  # noqa: F401
                     payload, produce, use_client, use_pickled_client, wait_for_entry)


def connect(broker):
    return shmwal.connect(broker.data_dir, key=broker.key)


def read_everything(client, topic, group="verify"):
    out = []
    while True:
        batch = client.batch_read(topic, 10**9, group=group)
        if not batch:
            return out
        out.extend(batch)


def check_producers(entries, calls_by_tag, counts):
    """Every offset once; each producer's entries in its order; each call where it said."""
    assert [e.offset for e in entries] == list(range(sum(counts.values())))
    seqs = collections.defaultdict(list)
    where = {}
    for e in entries:
        tag, seq = parse_payload(e.data)
        seqs[tag].append(seq)
        where[tag, seq] = e.offset
    for tag, n in counts.items():
        assert seqs[tag] == list(range(n)), f"producer {tag}'s entries are missing or out of order"
    for tag, calls in calls_by_tag.items():
        for first, count, first_seq in calls:
            # a call's entries sit at the offsets it returned, back to back
            assert [where[tag, first_seq + i] for i in range(count)] == list(range(first, first + count))


@pytest.fixture
def wait_lag_zero():
    def wait(client, topic, groups, timeout=30):
        def drained():
            t = client.stats()["topics"].get(topic)
            return t is not None and all(g in t["groups"] and t["groups"][g]["lag"] == 0 for g in groups)
        assert wait_until(drained, timeout, 0.02), client.stats()["topics"].get(topic)
    return wait


# ============================================================================ producers

@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_concurrent_producers_get_dense_offsets_with_contiguous_batches(broker, client, tmp_path, method):
    counts = {tag: 1500 for tag in range(4)}
    with Workers(method, str(tmp_path / "w")) as workers:
        go = workers.Event()
        procs = {tag: workers.start(produce, client, "t", tag, n, 100 + tag, 40, 300, go)
                 for tag, n in counts.items()}
        go.set()  # all four write at once
        calls = {tag: workers.result(p, 60) for tag, p in procs.items()}
    entries = read_everything(client, "t")
    check_producers(entries, calls, counts)
    stats = client.stats()["topics"]["t"]
    assert (stats["entries"], stats["next_offset"]) == (6000, 6000)
    assert stats["blocks"] > 4  # the race crossed block boundaries


# ============================================================================ consumers

@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_consumers_sharing_a_group_receive_each_entry_once_while_producers_run(
        broker, client, tmp_path, method, wait_lag_zero):
    counts = {0: 1500, 1: 1500}
    client.seek("t", 0, group="verify")  # holds every block for the check at the end
    with Workers(method, str(tmp_path / "w")) as workers:
        done = workers.Event()
        readies = [workers.Event() for _ in range(3)]
        consumers = [workers.start(consume, client, "t", "queue", ready, done, 7 + i, 1500)
                     for i, ready in enumerate(readies)]
        for ready in readies:  # consumers wait on the live tail before anything is written
            assert ready.wait(30)
        go = workers.Event()
        producers = {tag: workers.start(produce, client, "t", tag, n, tag, 10, 200, go)
                     for tag, n in counts.items()}
        go.set()
        calls = {tag: workers.result(p, 60) for tag, p in producers.items()}
        wait_lag_zero(client, "t", ["queue"])
        done.set()
        received = [workers.result(p, 30) for p in consumers]
    total = sum(counts.values())
    offsets = [o for got in received for o, _ in got]
    assert sorted(offsets) == list(range(total)), "an entry was lost or delivered twice in the group"
    for got in received:
        assert [o for o, _ in got] == sorted(o for o, _ in got), "a consumer got entries out of order"
    assert sum(1 for got in received if got) >= 2, [len(got) for got in received]
    by_offset = {o: d for got in received for o, d in got}
    entries = read_everything(client, "t")
    assert [(e.offset, e.data) for e in entries] == sorted(by_offset.items())
    check_producers(entries, calls, counts)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_every_group_receives_every_entry(broker, client, tmp_path, method, wait_lag_zero):
    counts = {0: 1000, 1: 1000}
    groups = {"g1": 1, "g2": 2}  # two groups: one with a single consumer, one with two
    client.seek("t", 0, group="verify")  # holds every block for the check at the end
    with Workers(method, str(tmp_path / "w")) as workers:
        done = workers.Event()
        consumers = []
        for group, n in groups.items():
            for i in range(n):
                ready = workers.Event()
                consumers.append((group, workers.start(consume, client, "t", group, ready, done, i, 700)))
                assert ready.wait(30)
        go = workers.Event()
        producers = [workers.start(produce, client, "t", tag, n, 50 + tag, 10, 100, go) for tag, n in counts.items()]
        go.set()
        for p in producers:
            workers.result(p, 60)
        wait_lag_zero(client, "t", list(groups))
        done.set()
        received = collections.defaultdict(list)
        for group, p in consumers:
            received[group].extend(workers.result(p, 30))
    expected = [(e.offset, e.data) for e in read_everything(client, "t")]
    assert len(expected) == sum(counts.values())
    for group in groups:
        assert sorted(received[group]) == expected, f"group {group} missed or repeated entries"


@pytest.mark.timeout(60)
def test_reader_waiting_on_a_topic_gets_it_once_it_appears(broker, client, tmp_path):
    with Workers("fork", str(tmp_path / "w")) as workers:
        ready = workers.Event()
        proc = workers.start(wait_for_entry, client, "appears-later", "g", ready)
        assert ready.wait(30)
        assert "appears-later" not in client.topics()
        assert client.append("appears-later", b"first") == 0
        kind, _when, offset, data = workers.result(proc, 10)
    assert (kind, offset, data) == ("entry", 0, b"first")
    assert client.topics() == ["appears-later"]


# ============================================================================ blocked readers

@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_blocked_reader_idles_cheaply_and_wakes_at_once_on_append(broker, client, tmp_path, method):
    client.append("t", b"old")
    client.seek("t", 1, group="g")
    with Workers(method, str(tmp_path / "w")) as workers:
        ready = workers.Event()
        proc = workers.start(wait_for_entry, client, "t", "g", ready)
        assert ready.wait(30)
        ps = psutil.Process(proc.pid)
        # Measure the reader's CPU use over 2 s while it waits in read_next(timeout=None).
        t0, c0 = time.monotonic(), sum(ps.cpu_times()[:2])
        deadline = t0 + 2.0
        while time.monotonic() < deadline:
            assert proc.is_alive(), "the blocked reader returned without an entry"
            time.sleep(0.05)
        t1, c1 = time.monotonic(), sum(ps.cpu_times()[:2])
        assert proc.is_alive()
        share = (c1 - c0) / (t1 - t0)
        assert share < 0.02, f"a waiting reader used {share:.1%} of a core"
        sent = time.monotonic()
        assert client.append("t", b"wake up") == 1
        kind, received, offset, data = workers.result(proc, 10)
    assert (kind, offset, data) == ("entry", 1, b"wake up")
    latency = received - sent
    assert latency < 2.0, f"the reader woke {latency:.3f} s after the append"


# ============================================================================ Clients in workers

@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_client_passed_to_a_worker_works_there(broker, client, tmp_path, method):
    client.append("shared", payload(99, 0))
    with Workers(method, str(tmp_path / "w")) as workers:
        procs = [workers.start(use_client, client, "shared", 1, 25),  # as a Process argument
                 workers.start(use_pickled_client, pickle.dumps(client), "shared", 2, 25)]  # as pickled bytes
        results = [workers.result(p, 30) for p in procs]
    for tag, result in zip((1, 2), results):
        assert result["pid"] != os.getpid()
        assert result["topics"] == ["shared"] and result["stats_next"]
        read = dict(result["read"])
        assert read[0] == payload(99, 0)  # the worker sees what the parent wrote
        for i, offset in enumerate(result["offsets"]):
            assert read[offset] == payload(tag, i, 10)
        for i, offset in enumerate(range(*result["batch"])):
            assert read[offset] == payload(tag, 25 + i, 3)
    entries = read_everything(client, "shared")
    assert len(entries) == 1 + 2 * 50
    seen = collections.Counter(parse_payload(e.data)[0] for e in entries)
    assert seen == {99: 1, 1: 50, 2: 50}
    assert client.append("shared", b"parent still works") == 101


@pytest.mark.timeout(60)
def test_another_program_connects_and_exchanges_entries(broker, client):
    client.append("t", b"from the test")
    program = textwrap.dedent("""
        import sys, shmwal
        with shmwal.connect(sys.argv[1], key=sys.argv[2] if sys.argv[2] else None, timeout=10) as c:
            e = c.read_next("t", group="other", timeout=10)
            assert (e.offset, e.data) == (0, b"from the test"), e
            print(c.append("t", b"from another program"))
    """)
    done = subprocess.run([sys.executable, "-c", program, broker.data_dir, broker.key or ""],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert [e.data for e in read_everything(client, "t")] == [b"from the test", b"from another program"]
    assert client.position("t", group="other") == 1


@pytest.mark.timeout(30)
def test_unpickled_client_is_connected_and_independent(broker, client):
    clone = pickle.loads(pickle.dumps(client))
    assert isinstance(clone, shmwal.Client) and clone is not client
    try:
        assert clone.append("t", b"from clone") == 0
        assert client.read_next("t").data == b"from clone"
    finally:
        clone.close()
    assert client.append("t", b"after the clone closed") == 1
    assert client.topics() == ["t"]


@pytest.mark.timeout(60)
def test_parent_client_keeps_working_while_and_after_forked_children_use_it(broker, client, tmp_path):
    assert client.append("t", payload(0, 0)) == 0
    assert client.read_next("t", group="parent").offset == 0
    client.seek("t", 0, group="after")  # holds every block for the check at the end
    n_parent = 1
    with Workers("fork", str(tmp_path / "w")) as workers:
        procs = [workers.start(use_client, client, "t", tag, 40) for tag in (1, 2, 3)]
        # the parent keeps using the same client (data path and control) while they run
        while any(p.is_alive() for p in procs):
            client.append("t", payload(0, n_parent))
            n_parent += 1
            assert client.stats()["topics"]["t"]["next_offset"] >= n_parent
            assert client.topics() == ["t"]
            client.batch_read("t", 500, group="parent")
        results = [workers.result(p, 30) for p in procs]
    assert len({r["pid"] for r in results}) == 3
    assert client.append("brand-new", b"x") == 0  # a new topic: a control request after the forks
    assert sorted(client.topics()) == ["brand-new", "t"]
    entries = read_everything(client, "t", group="after")
    seen = collections.Counter(parse_payload(e.data)[0] for e in entries)
    assert seen == {0: n_parent, 1: 80, 2: 80, 3: 80}
    assert [e.offset for e in entries] == list(range(n_parent + 240))
    assert client.stats()["topics"]["t"]["groups"]["after"]["lag"] == 0


_LARGE_WRITER = r"""
import sys, zlib, shmwal
data_dir, key, n = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
with shmwal.connect(data_dir, key=key) as c:
    for i in range(n):
        size = 32768 + (i * 7919) % 200_000          # across hot.c's STREAM_MIN and its pieces
        body = bytes([i % 251]) * size
        if i % 3 == 2:
            c.batch_append("large", [body, body[:40_000]])
        else:
            c.append("large", body)
"""


@pytest.mark.timeout(120)
def test_large_entries_read_while_written_streaming_are_never_torn(start_broker):
    """Entries from 32 KiB are stored with streaming stores (weakly ordered) and published after
    a fence: readers in another process taking them while they are written, by read_next and by
    batch_read, see every byte, never a CorruptEntry. Blocks of 8 MiB, so that the compiled
    writer takes most of them (it hands an entry that opens a block to the Python path)."""
    broker = start_broker(block_size=8 << 20)
    client = connect(broker)
    n = 300
    client.create_group("large", "next")
    client.create_group("large", "batch")
    writer = subprocess.Popen([sys.executable, "-c", _LARGE_WRITER, broker.data_dir, broker.key or "", str(n)],
                              stderr=subprocess.PIPE, text=True)
    expected = []
    for i in range(n):
        size = 32768 + (i * 7919) % 200_000
        expected.append(bytes([i % 251]) * size)
        if i % 3 == 2:
            expected.append(expected[-1][:40_000])
    got_next, got_batch = [], []
    try:
        deadline = time.monotonic() + 90
        while (len(got_next) < len(expected) or len(got_batch) < len(expected)) and time.monotonic() < deadline:
            if len(got_next) < len(expected):
                e = client.read_next("large", group="next", timeout=0.05)
                if e is not None:
                    got_next.append(e.data)
            got_batch += [e.data for e in client.batch_read("large", 1 << 20, group="batch")]
        assert writer.wait(30) == 0, writer.stderr.read()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        client.close()
    assert len(got_next) == len(expected) and len(got_batch) == len(expected)
    assert [zlib.crc32(d) for d in got_next] == [zlib.crc32(d) for d in expected]
    assert [zlib.crc32(d) for d in got_batch] == [zlib.crc32(d) for d in expected]
