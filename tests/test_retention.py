"""Retention (API.md "Groups and retention"): the pure policy with a clock the test sets,
then real brokers: what a late group sees, delete_group letting files go, max_bytes with a
stalled group (skipped counts exactly what it lost), retention by bytes and by seconds."""

from __future__ import annotations

import os
import time

import pytest

import shmwal
from shmwal.server.reclaim import plan

from conftest import wait_until
from helpers import Workers, connect, no_resource_tracker_left, read_all  # noqa: F401  (autouse fixture)

KiB = 1024
BLOCK = 64 * KiB
ENTRY = 1000          # payload bytes: ~60 entries a 64 KiB block
# Blocks 0..4 of 10 entries each, block 4 the tail; block i sealed at time 100 * i.
CHAIN = [(1, i * BLOCK, BLOCK, 10 * i) for i in range(5)] + [(1, 5 * BLOCK, BLOCK, 50), (1, 6 * BLOCK, BLOCK, 60)]


def _plan(cursors, retention, now=1000.0, published=5, allocated=5):
    return plan(CHAIN.__getitem__, 0, published, allocated, cursors, retention,
                payload=lambda i: 10 * ENTRY, tail_payload=lambda: 10 * ENTRY,
                sealed_at=lambda i: 100.0 * i, now=now)


# ----------------------------------------------------------------------------- the policy, pure

@pytest.mark.parametrize("cursors, retention, expected", [
    ([50], shmwal.Retention(bytes=0), 4),                  # all read, nothing kept: up to the tail
    ([25], shmwal.Retention(bytes=0), 2),                  # never past what a group has not read
    ([], shmwal.Retention(bytes=0), 0),                    # no group yet: it keeps everything
    ([50], shmwal.Retention(bytes=20 * ENTRY), 3),         # tail + block 3 hold the newest 20 entries' bytes
    ([50], shmwal.Retention(bytes=20 * ENTRY + 1), 2),
    ([50], shmwal.Retention(bytes=10**9), 0),
    ([50], shmwal.Retention(bytes=0, seconds=750), 3),     # blocks 0..2 sealed > 750 s before 1000
    ([50], shmwal.Retention(bytes=0, seconds=10**6), 0),
    ([50], shmwal.Retention(bytes=20 * ENTRY, seconds=850), 2),   # either keeps: the stricter wins
])
def test_plan_keeps_unread_and_retained_blocks(cursors, retention, expected):
    decided = _plan(cursors, retention)
    assert (decided.first, decided.forced) == (expected, False)


def test_plan_retention_by_seconds_follows_the_clock():
    retention = shmwal.Retention(bytes=0, seconds=300)
    assert [_plan([50], retention, now=t).first for t in (0, 300, 399, 400, 550, 10**6)] == [0, 1, 1, 2, 3, 4]


@pytest.mark.parametrize("cursors, max_bytes, expected", [
    ([0], 7 * BLOCK, (0, False)),      # 7 blocks handed out (2 of them spares): they fit
    ([0], 5 * BLOCK, (2, True)),       # the oldest go, unread
    ([0], 0, (4, True)),               # the tail always stays
    ([], 6 * BLOCK, (1, True)),        # a topic nobody read keeps its files, subject to max_bytes
    ([45], 10 * BLOCK, (0, False)),
    ([45], 6 * BLOCK, (1, True)),      # read, kept by retention bytes, dropped by max_bytes
])
def test_plan_max_bytes_drops_the_oldest_blocks_even_unread(cursors, max_bytes, expected):
    retention = shmwal.Retention(bytes=10**9, max_bytes=max_bytes)
    decided = _plan(cursors, retention, published=5, allocated=7)
    assert (decided.first, decided.forced) == expected


def test_retention_rejects_bad_values():
    for bad, error in [({"bytes": -1}, ValueError), ({"bytes": 1.5}, TypeError), ({"bytes": True}, TypeError),
                       ({"seconds": -1}, ValueError), ({"seconds": float("nan")}, ValueError),
                       ({"seconds": "1"}, TypeError), ({"max_bytes": -5}, ValueError),
                       ({"max_bytes": 2.0}, TypeError)]:
        with pytest.raises(error):
            shmwal.Retention(**bad)
    with pytest.raises(TypeError):
        shmwal.Broker("/tmp/x", retention={"bytes": 0})


# ----------------------------------------------------------------------------- real brokers

def _append(client, topic, n, first=0):
    return [client.append(topic, b"%08d" % i + b"." * (ENTRY - 8)) for i in range(first, first + n)]


def _offsets(entries):
    return [e.offset for e in entries]


def _stats(client, topic="t"):
    return client.stats()["topics"][topic]


def _topic_blocks_gone(client, topic="t"):
    return _stats(client, topic)["first_offset"] > 0


@pytest.mark.timeout(120)
def test_a_late_group_sees_all_that_default_retention_keeps(start_broker, tmp_path):
    broker = start_broker(retention=shmwal.Retention())   # the default: 16 MiB kept for replay
    client = connect(broker)
    try:
        assert _append(client, "t", 3000) == list(range(3000))   # ~3 MB, 50 blocks
        assert _offsets(read_all(client, "t", "early")) == list(range(3000))
        # Everything was read, and it all stays (within 16 MiB): a late group sees it all.
        with Workers("fork", str(tmp_path / "w")) as workers:
            late = workers.start(_read_late, client, "t", "late", "earliest")
            assert workers.result(late) == list(range(3000))
        client.create_group("t", "new", start="latest")
        _append(client, "t", 5, first=3000)
        assert _offsets(read_all(client, "t", "new")) == list(range(3000, 3005))
        client.seek("t", 0, group="early")
        assert client.position("t", group="early") == 0
    finally:
        client.close()


def _read_late(client, topic, group, start):
    assert client.create_group(topic, group, start=start)
    return _offsets(read_all(client, topic, group))


@pytest.mark.timeout(120)
def test_retention_by_bytes_keeps_the_newest_bytes_and_seek_zero_goes_to_the_oldest_kept(start_broker):
    keep = 256 * KiB
    broker = start_broker(retention=shmwal.Retention(bytes=keep))
    client = connect(broker)
    try:
        _append(client, "t", 3000)
        assert _offsets(read_all(client, "t", "early")) == list(range(3000))
        _append(client, "t", 60, first=3000)   # the writer moves on: a busy topic is looked at within a tick
        assert _offsets(read_all(client, "t", "early")) == list(range(3000, 3060))
        assert wait_until(lambda: _topic_blocks_gone(client), 10), _stats(client)
        first = _stats(client)["first_offset"]
        kept = 3060 - first
        # At least ``keep`` bytes of the newest payload stay, and not a whole block more than that.
        assert keep <= kept * ENTRY < keep + 2 * BLOCK, (first, kept)
        client.create_group("t", "late")
        assert _offsets(read_all(client, "t", "late")) == list(range(first, 3060))
        client.seek("t", 0, group="late")
        assert client.position("t", group="late") == first
        assert client.read_next("t", group="late").offset == first
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_delete_group_lets_files_go(start_broker):
    broker = start_broker(retention=shmwal.Retention(bytes=0))
    client = connect(broker)
    blocks_dir = os.path.join(broker.root, "blocks")
    try:
        client.create_group("t", "stalled")
        _append(client, "t", 2000)       # ~32 blocks, 8 files of 4
        files_before = set(os.listdir(blocks_dir))
        assert _offsets(read_all(client, "t", "fast")) == list(range(2000))
        assert _stats(client)["first_offset"] == 0          # "stalled" holds everything
        assert client.delete_group("t", "stalled")
        assert wait_until(lambda: _topic_blocks_gone(client), 10), _stats(client)
        # Files whose every block went are deleted within API.md's 10 s.
        assert wait_until(lambda: len(files_before - set(os.listdir(blocks_dir))) >= 6, 10), \
            (sorted(files_before), sorted(os.listdir(blocks_dir)))
        assert client.groups("t") == ["fast"]
    finally:
        client.close()


def _write(client, topic, n):
    started = time.monotonic()
    offsets = _append(client, topic, n)
    return offsets, time.monotonic() - started


@pytest.mark.timeout(120)
def test_max_bytes_drops_the_block_a_reader_is_in(start_broker):
    """A reader in the middle of a block, served by the compiled path, when max_bytes drops
    that block unread: its next read starts at the oldest kept entry and counts what it lost,
    never an entry of the dropped block. The block stays intact here (a zero-copy view of
    another group pins it, so the broker frees it without releasing its space): only the
    check against the oldest kept entry (H_FIRST_OFFSET, hot.c next_entry) stands between
    the reader and its bytes."""
    cap = 8 * BLOCK
    broker = start_broker(retention=shmwal.Retention(bytes=0, max_bytes=cap))
    client = connect(broker)
    try:
        _append(client, "t", 30)
        pinning = client.read_next("t", group="viewer", zero_copy=True)
        assert pinning.offset == 0 and isinstance(pinning.data, memoryview)
        assert _offsets([client.read_next("t", group="slow") for _ in range(3)]) == [0, 1, 2]
        total = 3000                                       # ~50 blocks: six times the cap
        _append(client, "t", total - 30, first=30)
        assert wait_until(lambda: _stats(client)["blocks"] * BLOCK <= cap, 10), _stats(client)
        first = _stats(client)["first_offset"]
        assert first > 60                                  # the reader's block went
        entry = client.read_next("t", group="slow")
        assert entry.offset == first and entry.data == b"%08d" % first + b"." * (ENTRY - 8)
        assert _stats(client)["groups"]["slow"] == {"position": first + 1, "lag": total - first - 1,
                                                      "skipped": first - 3}
        assert bytes(pinning.data) == b"%08d" % 0 + b"." * (ENTRY - 8)   # the view still shows it
        del pinning
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_max_bytes_with_a_stalled_group(start_broker, tmp_path):
    cap = 8 * BLOCK
    broker = start_broker(retention=shmwal.Retention(bytes=0, max_bytes=cap))
    client = connect(broker)
    total = 6000                         # ~100 blocks: twelve times the cap
    try:
        client.create_group("t", "stalled")
        assert client.read_next("t", group="stalled") is None
        with Workers("fork", str(tmp_path / "w")) as workers:
            offsets, _took = workers.result(workers.start(_write, client, "t", total), timeout=150)
        assert offsets == list(range(total))           # the writer never failed (nor blocked for good)
        # Once the broker caught up: the topic's blocks fit the cap (the tail and spares included).
        assert wait_until(lambda: _stats(client)["blocks"] * BLOCK <= cap, 10), _stats(client)
        stats = _stats(client)
        first = stats["first_offset"]
        assert first > 0 and stats["groups"]["stalled"] == {"position": first, "lag": total - first,
                                                             "skipped": first}
        got = read_all(client, "t", "stalled")
        assert _offsets(got) == list(range(first, total))    # it reads on from the oldest kept entry
        assert all(e.data == b"%08d" % e.offset + b"." * (ENTRY - 8) for e in got)
        stats = _stats(client)
        assert stats["groups"]["stalled"] == {"position": total, "lag": 0, "skipped": first}
        assert first + len(got) == total                     # skipped is exactly what it lost
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_retention_by_seconds_follows_the_broker_clock(start_broker, data_dir, tmp_path):
    clock = tmp_path / "clock"
    clock.write_text("0")
    broker = start_broker(retention=shmwal.Retention(bytes=0, seconds=3600), _clock_file=str(clock))
    client = connect(broker)
    try:
        _append(client, "t", 1000)
        assert _offsets(read_all(client, "t", "g")) == list(range(1000))
        # A block's age counts from the reclamation pass that first sees it sealed (one a
        # second): let two pass at time 0, or a block seen first after the jump is younger.
        time.sleep(2.5)
        clock.write_text("1800")                       # half an hour later: still kept
        deadline = time.monotonic() + 2.5              # two full reclamation passes (one a second)
        while time.monotonic() < deadline:
            assert _stats(client)["first_offset"] == 0
            time.sleep(0.05)
        clock.write_text("3601")                       # an hour later: consumed blocks go
        assert wait_until(lambda: _stats(client)["blocks"] == 1, 10), repr(_stats(client))   # all but the tail
        stats = _stats(client)
        assert stats["first_offset"] > 0
        client.create_group("t", "late")
        assert _offsets(read_all(client, "t", "late")) == list(range(stats["first_offset"], 1000))
    finally:
        client.close()
