"""Stopping, killing and restarting the broker (API.md "Starting a broker",
"Delivery and durability", "Errors"): what survives, what is cleaned up, how
clients notice the broker's death and carry on, and block reclamation."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time

import psutil
import pytest

import shmwal
from shmwal.blocks.chain import read_block_header
from conftest import ipc_leftovers, wait_until
from helpers import (START_METHODS, Workers, append_until_unavailable, connect,  # noqa: F401
                     no_resource_tracker_left, parse_payload, payload, read_all, wait_for_entry)

KiB = 1024

# Policies are immutable values (options.py): one object serves every broker a test starts.
CONSISTENCIES = {
    "strict": shmwal.StrictlyAtOnce(),
    "at-least-once-10": shmwal.AtLeastOnce(persist_every=10),
}


def kill_broker(broker) -> float:
    """SIGKILL the broker process; reap it; return the monotonic time of the kill."""
    pid = broker.pid
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    broker.stop()  # only reaps: the process is dead or dying
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    return killed_at


def write_mixed(client, topic, n, seed, max_size=3000, start=0):
    """n entries of random sizes, singles and batches mixed, the first at offset ``start``;
    returns their payloads in offset order."""
    rng = random.Random(seed)
    datas = []
    while len(datas) < n:
        k = min(rng.choice([1, 1, 1, 5, 17]), n - len(datas))
        chunk = [rng.randbytes(rng.randrange(max_size)) for _ in range(k)]
        at = start + len(datas)
        if k == 1:
            assert client.append(topic, chunk[0]) == at
        else:
            assert client.batch_append(topic, chunk) == range(at, at + k)
        datas.extend(chunk)
    return datas


def read_mixed(client, topic, group, n, seed):
    """Take n entries for group with read_next and batch_read mixed; return them."""
    rng = random.Random(seed)
    got = []
    while len(got) < n:
        if rng.random() < 0.5 or n - len(got) < 5:
            entry = client.read_next(topic, group=group)
            assert entry is not None
            got.append(entry)
        else:
            k = rng.randint(2, min(20, n - len(got)))
            peek = client.batch_read(topic, 10**9, group=group, checkpoint=False)
            cap = sum(len(e.data) for e in peek[:k])
            batch = client.batch_read(topic, cap, group=group)
            assert len(batch) >= 1
            got.extend(batch)
    assert len(got) == n
    return got


def block_files(broker) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(broker.root, "blocks")) if n.endswith(".blk"))


def blocks_by_file(broker) -> dict[str, list]:
    """Block file -> what each of its slots holds: (topic, chain index) from the block's
    header, or None (a spare handed out ahead, a slot not handed out, a released block)."""
    root = os.path.join(broker.root, "blocks")
    found = {}
    for name in block_files(broker):
        with open(os.path.join(root, name), "rb") as f:
            data = f.read()
        slots = []
        for start in range(0, len(data) - broker.block_size + 1, broker.block_size):
            header = read_block_header(data, start)
            slots.append(None if header is None else (header[3], header[0]))
        found[name] = slots
    return found


# ============================================================================ clean stop

@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", CONSISTENCIES)
def test_clean_restart_keeps_every_entry_and_every_cursor(start_broker, mode):
    broker = start_broker(consistency=CONSISTENCIES[mode])
    with connect(broker) as client:
        datas = write_mixed(client, "t", 400, seed=1)
        other = write_mixed(client, "u", 30, seed=2)
        client.seek("t", 0, group="holder")  # a group at 0 keeps every block of "t"
        assert [e.data for e in read_mixed(client, "t", "g1", 123, seed=3)] == datas[:123]
        assert [e.data for e in read_mixed(client, "t", "g2", 7, seed=4)] == datas[:7]
        client.seek("t", 250, group="g3")
        assert [e.data for e in read_mixed(client, "u", "g1", 29, seed=5)] == other[:29]
    broker.stop()

    broker = start_broker(consistency=CONSISTENCIES[mode])
    with connect(broker) as client:
        positions = {g: client.position("t", group=g) for g in ("holder", "g1", "g2", "g3")}
        assert positions == {"holder": 0, "g1": 123, "g2": 7, "g3": 250}
        assert client.position("u", group="g1") == 29
        stats = client.stats()["topics"]
        assert (stats["t"]["next_offset"], stats["u"]["next_offset"]) == (400, 30)
        assert {g: v["position"] for g, v in stats["t"]["groups"].items()} == positions
        assert client.read_next("t", group="g1").offset == 123
        assert client.read_next("u", group="g1").data == other[29]
        assert [e.data for e in read_all(client, "t", "holder")] == datas
        assert client.append("t", b"after restart") == 400
        assert [e.offset for e in read_all(client, "t", "g3")] == list(range(250, 401))


@pytest.mark.timeout(60)
def test_clean_stop_leaves_no_ipc_objects_and_no_broker_process(start_broker):
    broker = start_broker()
    pid = broker.pid
    assert psutil.pid_exists(pid)
    with connect(broker) as client:
        for topic in ("a", "b", "c"):
            client.append(topic, b"x")
            client.read_next(topic, group="g")
        assert client.read_next("waited", timeout=0.01) is None
    broker.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert ipc_leftovers(broker.root) == []
    with pytest.raises(shmwal.BrokerUnavailable):
        shmwal.connect(broker.data_dir, key=broker.key, timeout=0.2)
    # and a stopped broker's directory starts again at once
    again = start_broker()
    with connect(again) as client:
        assert sorted(client.topics()) == ["a", "b", "c"]
    again.stop()
    assert ipc_leftovers(again.root) == []


# ============================================================================ SIGKILL

@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", CONSISTENCIES)
def test_sigkilled_broker_restarts_and_recovers_every_returned_entry_and_cursor(start_broker, tmp_path, mode):
    broker = start_broker(consistency=CONSISTENCIES[mode])
    client = connect(broker)
    try:
        client.seek("t", 0, group="holder")
        with Workers("fork", str(tmp_path / "w")) as workers:
            producer = workers.start(append_until_unavailable, client, "t", 1)
            # a consumer group moves while the producer writes
            read = []
            assert wait_until(lambda: client.stats()["topics"].get("t", {}).get("next_offset", 0) >= 300, 30)
            read.extend(read_mixed(client, "t", "g", 200, seed=9))
            assert wait_until(lambda: client.stats()["topics"]["t"]["next_offset"] >= 600, 30)
            killed_at = kill_broker(broker)
            result = workers.result(producer, 30)
        assert result["unavailable_at"] - killed_at < 2.0

        restarted = start_broker(consistency=CONSISTENCIES[mode])  # no BrokerAlreadyRunning
        with connect(restarted) as fresh:
            calls = result["calls"]
            returned = sum(count for _, count, _ in calls)
            entries = read_all(fresh, "t", "holder")
            # every returned append is there, and nothing of a call that raised
            assert [e.offset for e in entries] == list(range(returned))
            for first, count, first_seq in calls:
                for i in range(count):
                    assert parse_payload(entries[first + i].data) == (1, first_seq + i)
            assert [e.data for e in read] == [e.data for e in entries[:200]]
            position = fresh.position("t", group="g")
            if mode == "strict":
                assert position == 200
            else:
                assert 190 <= position <= 200  # may redeliver at most the last persist_every
            assert fresh.read_next("t", group="g").offset == position
            assert fresh.append("t", b"new") == returned
    finally:
        client.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_calls_raise_broker_unavailable_within_2s_of_its_death_and_the_same_client_recovers(
        start_broker, tmp_path, method):
    broker = start_broker()
    client = connect(broker)
    try:
        assert client.batch_append("t", [b"e0", b"e1", b"e2"]) == range(0, 3)
        assert [e.offset for e in client.batch_read("t", 4, group="g")] == [0, 1]
        client.seek("t", 0, group="holder")
        with Workers(method, str(tmp_path / "w")) as workers:
            ready = workers.Event()
            blocked = workers.start(wait_for_entry, client, "idle", "w", ready)
            assert ready.wait(30)
            killed_at = kill_broker(broker)

            # Appends may still land during the first 2 s; each one that returns must survive.
            landed = []
            deadline = killed_at + 2.0
            while time.monotonic() < deadline:
                try:
                    landed.append((client.append("t", payload(0, len(landed))), len(landed)))
                except shmwal.BrokerUnavailable:
                    break
            else:
                pytest.fail("append still worked 2 s after the broker died")
            while time.monotonic() < deadline:  # the contract's bound, to the letter
                time.sleep(0.01)

            calls = {
                "append": lambda: client.append("t", b"no"),
                "batch_append": lambda: client.batch_append("t", [b"no", b"no"]),
                "read_next": lambda: client.read_next("t", group="g"),
                "read_next(timeout=None)": lambda: client.read_next("idle", group="g", timeout=None),
                "read_next(timeout=1)": lambda: client.read_next("t", group="g", timeout=1),
                "batch_read": lambda: client.batch_read("t", 100, group="g"),
                "batch_read(timeout=None)": lambda: client.batch_read("idle", 100, group="g", timeout=None),
                "seek": lambda: client.seek("t", 0, group="g"),
                "position": lambda: client.position("t", group="g"),
                "topics": lambda: client.topics(),
                "stats": lambda: client.stats(),
            }
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(shmwal.BrokerUnavailable) as info:
                    call()
                assert isinstance(info.value, ConnectionError)
                assert time.monotonic() - started < 1.0, f"{name} took too long to fail"

            kind, when = workers.result(blocked, 10)
            assert kind == "unavailable"
            assert when - killed_at < 2.0, f"the blocked reader noticed after {when - killed_at:.2f} s"

        start_broker()
        # The same Client object works again once a broker runs (no reconnect by hand).
        def works():
            try:
                return client.topics()
            except shmwal.BrokerUnavailable:
                return None
        assert wait_until(works, 10) == ["t"]
        n = 3 + len(landed)
        assert client.append("t", b"back") == n
        assert client.position("t", group="g") == 2
        assert client.read_next("t", group="g").data == b"e2"
        entries = read_all(client, "t", "holder")
        assert [e.offset for e in entries] == list(range(n + 1))
        assert [e.data for e in entries] == [b"e0", b"e1", b"e2", *(payload(0, i) for _, i in landed), b"back"]
        assert [offset for offset, _ in landed] == list(range(3, n))
        assert client.stats()["topics"]["t"]["next_offset"] == n + 1
    finally:
        client.close()


# ============================================================================ options between runs

@pytest.mark.timeout(60)
def test_options_may_differ_between_runs_and_old_data_stays_readable(start_broker):
    runs = [
        dict(block_size=64 * KiB, blocks_per_file=4, fsync=shmwal.FsyncEvery(milliseconds=200),
             consistency=shmwal.StrictlyAtOnce()),
        dict(block_size=16 * KiB, blocks_per_file=2, fsync=shmwal.SyncEach(),
             consistency=shmwal.AtLeastOnce(persist_every=5)),
        dict(block_size=4 * KiB, blocks_per_file=7, fsync=shmwal.NoFsync(),
             consistency=shmwal.StrictlyAtOnce()),
        dict(block_size=128 * KiB, blocks_per_file=1, fsync=shmwal.FsyncEvery(milliseconds=5),
             consistency=shmwal.AtLeastOnce(persist_every=1000)),
    ]
    written: list[bytes] = []
    consumed = 0
    for i, options in enumerate(runs):
        broker = start_broker(**options)
        with connect(broker) as client:
            client.seek("t", 0, group="holder")
            assert [e.data for e in client.batch_read("t", 10**9, group="holder", checkpoint=False)] == written[:2000]
            assert client.position("t", group="g") == consumed
            written += write_mixed(client, "t", 150, seed=10 + i, max_size=5000, start=len(written))  # > 4 KiB entries too
            big = random.Random(i).randbytes(70 * KiB)  # larger than every block size but one
            assert client.append("t", big) == len(written)
            written.append(big)
            got = read_mixed(client, "t", "g", 60, seed=i)
            assert [e.data for e in got] == written[consumed:consumed + 60]
            consumed += 60
        broker.stop()
    broker = start_broker()
    with connect(broker) as client:
        assert [e.data for e in read_all(client, "t", "holder", max_bytes=100 * KiB)] == written
        assert client.position("t", group="g") == consumed


# ============================================================================ reclamation

@pytest.mark.timeout(60)
def test_consumed_block_files_are_deleted_within_10s_and_unread_topics_keep_theirs(broker):
    with connect(broker) as client:
        kept = [bytes([i % 256]) * 1000 for i in range(1200)]
        eaten = [bytes([(i * 7) % 256]) * 1000 + i.to_bytes(4, "little") for i in range(1200)]
        for i in range(0, 1200, 100):
            client.batch_append("kept", kept[i:i + 100])
        for i in range(0, 1200, 100):
            client.batch_append("eaten", eaten[i:i + 100])
        stats = client.stats()["topics"]
        eaten_files, kept_files = stats["eaten"]["files"], stats["kept"]["files"]
        assert eaten_files >= 4 and kept_files >= 4, stats
        # Which files must go is read from the blocks' headers, not counted: spares handed
        # out ahead of either writer (no header yet) and the file the broker prepares next
        # land wherever the broker's timing puts them, and they rightly stay.
        layout = blocks_by_file(broker)
        tail = max(chain for slots in layout.values() for block in slots if block and block[0] == "eaten"
                   for chain in [block[1]])
        must_go = {name for name, slots in layout.items()
                   if slots and all(block is not None and block[0] == "eaten" and block[1] < tail for block in slots)}
        kept_at = {name for name, slots in layout.items() if any(block and block[0] == "kept" for block in slots)}
        assert len(must_go) >= max(2, eaten_files - 3), layout

        assert [e.data for e in read_all(client, "eaten", "g", max_bytes=50_000)] == eaten
        # The consumed topic's files go (all but those holding its tail block, its spares or
        # another topic's blocks); "kept" loses nothing.
        assert wait_until(lambda: not must_go & set(block_files(broker)), 10), (must_go, block_files(broker))
        assert kept_at <= set(block_files(broker))
        after = client.stats()["topics"]
        assert after["eaten"]["first_offset"] > 0
        assert after["eaten"]["files"] <= 1
        assert (after["eaten"]["next_offset"], after["eaten"]["groups"]["g"]["lag"]) == (1200, 0)
        assert (after["kept"]["files"], after["kept"]["first_offset"], after["kept"]["entries"]) == (kept_files, 0, 1200)
        assert after["eaten"]["entries"] == 1200 - after["eaten"]["first_offset"]
        oldest = after["eaten"]["first_offset"]

    with connect(broker) as fresh:  # fresh mappings: what it reads is on disk
        # a new group, and a seek before the oldest kept entry, start at the oldest
        assert fresh.position("eaten", group="new") == oldest
        entry = fresh.read_next("eaten", group="new")
        assert (entry.offset, entry.data) == (oldest, eaten[oldest])
        fresh.seek("eaten", 0, group="late")
        assert fresh.position("eaten", group="late") == oldest
        assert [e.data for e in read_all(fresh, "eaten", "late")] == eaten[oldest:]
        # the tail block stays in use
        assert fresh.append("eaten", b"more") == 1200
        assert fresh.read_next("eaten", group="g").data == b"more"
        assert [e.data for e in read_all(fresh, "kept", "late")] == kept


# ============================================================================ fsync schedules

FSYNCS = {
    "sync-each": shmwal.SyncEach(),
    "no-fsync": shmwal.NoFsync(),
    "every-5ms": shmwal.FsyncEvery(milliseconds=5),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("schedule", FSYNCS)
def test_fsync_schedules_keep_entries_across_a_broker_kill_and_a_clean_restart(start_broker, schedule):
    broker = start_broker(fsync=FSYNCS[schedule])
    with connect(broker) as client:
        datas = write_mixed(client, "t", 300, seed=42)
        client.seek("t", 0, group="holder")
        assert [e.data for e in read_mixed(client, "t", "g", 100, seed=1)] == datas[:100]
        assert client.stats()["topics"]["t"]["blocks"] > 4
    kill_broker(broker)
    broker = start_broker(fsync=FSYNCS[schedule])
    with connect(broker) as client:
        assert client.position("t", group="g") == 100
        # A peek: "holder" stays at 0 and keeps every entry from reclamation (read to the end
        # and sought back, it left a moment in which the blocks below "g" could go).
        assert [e.data for e in client.batch_read("t", 10**9, group="holder", checkpoint=False)] == datas
        datas += write_mixed(client, "t", 50, seed=43, start=300)
        assert [e.data for e in read_mixed(client, "t", "g", 50, seed=2)] == datas[100:150]
    broker.stop()
    broker = start_broker(fsync=FSYNCS[schedule])
    with connect(broker) as client:
        assert client.position("t", group="g") == 150
        client.seek("t", 0, group="holder")
        assert [e.data for e in read_all(client, "t", "holder")] == datas


@pytest.mark.timeout(60)
def test_a_client_carries_on_with_a_broker_on_a_directory_made_anew(start_broker, tmp_path):
    """A new broker on a directory made anew numbers its block files from 0 again: a live
    client must let go of its mappings of the old files of those names, not write into
    them (its entries were lost: the new broker's readers found zeros, CorruptEntry)."""
    data_dir = str(tmp_path / "anew")
    broker = start_broker(data_dir)
    with shmwal.connect(data_dir) as client:
        for i in range(3):
            client.append("t", b"old %d" % i)
        assert client.read_next("t", group="g").data == b"old 0"   # the old file mapped for reads too
        broker.stop()
        shutil.rmtree(data_dir)
        start_broker(data_dir)
        deadline = time.monotonic() + 10
        while True:   # the first call after the restart may still find the old broker gone
            try:
                client.append("t", b"new 0")
                break
            except shmwal.BrokerUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        client.append("t", b"new 1")
        assert [client.read_next("t", group="g").data for _ in range(2)] == [b"new 0", b"new 1"]
        with shmwal.connect(data_dir) as other:
            assert [e.data for e in other.batch_read("t", 1 << 20, group="check")] == [b"new 0", b"new 1"]
