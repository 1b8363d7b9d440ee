"""The public contract (API.md) from a single process: writing, reading, limits,
validation, introspection, lifecycle and namespaces."""

from __future__ import annotations

import os
import random
import re
import threading
import time

import numpy as np
import psutil
import pytest

import shmwal
from conftest import ipc_leftovers, wait_until
from helpers import connect, every_call, expected_batches, read_all

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def next_offset(client, topic):
    """The topic's next offset as stats() reports it (0 for a topic that does not exist)."""
    t = client.stats()["topics"].get(topic)
    return 0 if t is None else t["next_offset"]


# ============================================================================ offsets

@pytest.mark.timeout(30)
def test_offsets_are_dense_per_topic_and_topics_are_independent(client):
    got = {"a": [], "b": [], "c": []}
    for i in range(30):
        for topic in ("a", "b") if i % 3 else ("a", "b", "c"):
            got[topic].append(client.append(topic, f"{topic}{i}".encode()))
    assert got["a"] == list(range(30))
    assert got["b"] == list(range(30))
    assert got["c"] == list(range(10))
    for topic in got:
        entries = read_all(client, topic)
        assert [e.offset for e in entries] == got[topic]
        assert all(e.topic == topic for e in entries)
    assert [e.data for e in read_all(client, "c", group="c2")] == [f"c{i}".encode() for i in range(0, 30, 3)]


@pytest.mark.timeout(30)
def test_batch_append_returns_the_range_of_its_offsets(client):
    assert client.append("t", b"x0") == 0
    assert client.batch_append("t", [b"x1", b"x2", b"x3"]) == range(1, 4)
    assert client.append("t", b"x4") == 4
    assert client.batch_append("t", (b"x5",)) == range(5, 6)
    assert client.batch_append("other", [b"y0", b"y1"]) == range(0, 2)
    entries = read_all(client, "t")
    assert [(e.offset, e.data) for e in entries] == [(i, f"x{i}".encode()) for i in range(6)]


@pytest.mark.timeout(30)
def test_empty_batch_writes_nothing_and_returns_an_empty_range(client):
    first = client.batch_append("fresh", [])
    assert isinstance(first, range) and len(first) == 0 and first.start == first.stop == 0
    assert "fresh" not in client.topics()
    assert client.read_next("fresh") is None
    client.batch_append("t", [b"a", b"b"])
    before = client.stats()["topics"]["t"]
    empty = client.batch_append("t", [])
    assert isinstance(empty, range) and len(empty) == 0 and empty.start == empty.stop == 2
    after = client.stats()["topics"]["t"]
    assert (after["entries"], after["next_offset"], after["bytes"]) == (before["entries"], before["next_offset"], before["bytes"])
    assert client.append("t", b"c") == 2
    assert [e.data for e in read_all(client, "t")] == [b"a", b"b", b"c"]
    assert client.append("fresh", b"z") == 0


# ============================================================================ data types

def _accepted_payloads():
    base = bytes(range(256)) * 3
    floats = np.arange(37, dtype=np.float64) * 1.5
    grid = np.arange(24, dtype=np.uint8).reshape(4, 6)
    mv = memoryview(bytearray(base))
    return [
        ("bytes", base, base),
        ("bytearray", bytearray(b"bytearray payload"), b"bytearray payload"),
        ("memoryview", memoryview(b"memoryview payload"), b"memoryview payload"),
        ("memoryview slice", mv[10:73], base[10:73]),
        ("numpy uint8", np.frombuffer(base, dtype=np.uint8).copy(), base),
        ("numpy float64", floats, floats.tobytes()),
        ("numpy 2-d C-contiguous", grid, grid.tobytes()),
        ("numpy contiguous slice", np.arange(100, dtype=np.uint8)[20:50], bytes(range(20, 50))),
        ("memoryview of numpy float64", memoryview(floats), floats.tobytes()),
    ]


@pytest.mark.timeout(30)
def test_accepted_data_types_round_trip_through_append_and_batch_append(client):
    cases = _accepted_payloads()
    assert len(cases[5][2]) == 37 * 8  # a float64 array counts its length in bytes
    for i, (label, data, expected) in enumerate(cases):
        assert client.append("single", data) == i, label
    assert client.batch_append("batch", [data for _, data, _ in cases]) == range(len(cases))
    for topic in ("single", "batch"):
        entries = read_all(client, topic)
        assert [e.offset for e in entries] == list(range(len(cases)))
        for entry, (label, _, expected) in zip(entries, cases):
            assert isinstance(entry.data, bytes), label
            assert entry.data == expected, label


_REJECTED = [
    ("str", "text"),
    ("int", 5),
    ("None", None),
    ("list", [1, 2, 3]),
    ("float", 1.5),
    ("non-contiguous numpy view", np.arange(20, dtype=np.uint8)[::2]),
    ("non-contiguous memoryview", memoryview(b"abcdefgh")[::2]),
    ("fortran-ordered numpy", np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4))),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("label,data", _REJECTED, ids=[label for label, _ in _REJECTED])
def test_rejected_data_types_raise_type_error_and_write_nothing(client, label, data):
    assert client.append("t", b"before") == 0
    with pytest.raises(TypeError):
        client.append("t", data)
    with pytest.raises(TypeError):
        client.batch_append("t", [b"good", data, b"good"])
    with pytest.raises(TypeError):
        client.append("untouched", data)
    assert "untouched" not in client.topics()
    assert client.append("t", b"after") == 1
    assert [e.data for e in read_all(client, "t")] == [b"before", b"after"]


@pytest.mark.timeout(30)
def test_empty_payload_round_trips(client):
    assert client.append("t", b"") == 0
    assert client.batch_append("t", [b"", b"x", b"", bytearray()]) == range(1, 5)
    assert client.append("t", np.zeros(0, dtype=np.uint8)) == 5
    entries = [client.read_next("t") for _ in range(6)]
    assert [(e.offset, e.data) for e in entries] == [(0, b""), (1, b""), (2, b"x"), (3, b""), (4, b""), (5, b"")]
    assert client.read_next("t") is None


# ============================================================================ names

_BAD_NAMES = ["", ".x", ".", "..", "a/b", "/abs", "a b", "tab\t", "é", "a\x00b", "x" * 256,
              b"x", 1, None, ["t"]]
_BAD_IDS = ["empty", "dot-start", "dot", "dotdot", "slash", "abs", "space", "tab", "non-ascii",
            "nul", "256-chars", "bytes", "int", "None", "list"]


def _name_calls(client, topic="t", group="default"):
    return {
        "append": lambda: client.append(topic, b"x"),
        "batch_append": lambda: client.batch_append(topic, [b"x"]),
        "read_next": lambda: client.read_next(topic, group=group),
        "read_next(timeout)": lambda: client.read_next(topic, group=group, timeout=0.01),
        "batch_read": lambda: client.batch_read(topic, 100, group=group),
        "seek": lambda: client.seek(topic, 0, group=group),
        "position": lambda: client.position(topic, group=group),
    }


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", _BAD_NAMES, ids=_BAD_IDS)
def test_invalid_topic_raises_invalid_topic_a_value_error(client, bad):
    client.append("good", b"g")
    for name, call in _name_calls(client, topic=bad).items():
        with pytest.raises(shmwal.InvalidTopic) as info:
            call()
        assert isinstance(info.value, ValueError), name
        assert isinstance(info.value, shmwal.ShmwalError), name
    assert client.topics() == ["good"]
    assert client.append("good", b"g") == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", _BAD_NAMES, ids=_BAD_IDS)
def test_invalid_group_raises_invalid_topic(client, bad):
    client.append("t", b"x")
    for name, call in _name_calls(client, group=bad).items():
        if name.startswith(("append", "batch_append")):
            continue
        with pytest.raises(shmwal.InvalidTopic):
            call()
    assert set(client.stats()["topics"]["t"]["groups"]) == set()
    assert client.read_next("t").offset == 0


@pytest.mark.timeout(30)
def test_names_of_255_allowed_characters_are_valid_topics_and_groups(client):
    long = "A" * 200 + "z9._-" * 11
    assert len(long) == 255
    for topic in (long, "a", "-", "_x", "x.", "a.b-c_D9", "a..b"):
        assert client.append(topic, topic.encode()) == 0
        entry = client.read_next(topic, group=long)
        assert (entry.topic, entry.offset, entry.data) == (topic, 0, topic.encode())
        assert client.position(topic, group=long) == 1
    assert long in client.topics()


# ============================================================================ limits

def _memory_allows(nbytes):
    return psutil.virtual_memory().available > nbytes + 2 * GiB


@pytest.mark.timeout(60)
@pytest.mark.skipif(not _memory_allows(GiB), reason="needs a (lazily zeroed) 1 GiB + 1 buffer")
def test_entry_over_1_gib_raises_entry_too_large_and_writes_nothing(client):
    client.append("t", b"first")
    huge = np.zeros(GiB + 1, dtype=np.uint8)  # calloc'd: pages are only touched if read
    try:
        with pytest.raises(shmwal.EntryTooLarge) as info:
            client.append("t", huge)
        assert isinstance(info.value, ValueError)
        with pytest.raises(shmwal.EntryTooLarge):
            client.batch_append("t", [b"small", huge])
        with pytest.raises(shmwal.EntryTooLarge):
            client.append("untouched", memoryview(huge))
    finally:
        del huge
    assert "untouched" not in client.topics()
    assert next_offset(client, "t") == 1
    assert client.append("t", b"second") == 1
    assert [e.data for e in read_all(client, "t")] == [b"first", b"second"]


@pytest.mark.timeout(30)
def test_batch_of_2001_entries_raises_batch_too_large_and_2000_fit(client):
    client.append("t", b"first")
    with pytest.raises(shmwal.BatchTooLarge) as info:
        client.batch_append("t", [b"e"] * 2001)
    assert isinstance(info.value, ValueError) and isinstance(info.value, shmwal.ShmwalError)
    assert next_offset(client, "t") == 1
    assert client.batch_append("t", [b"e"] * 2000) == range(1, 2001)
    assert client.append("t", b"last") == 2001
    entries = read_all(client, "t")
    assert [e.offset for e in entries] == list(range(2002))


@pytest.mark.timeout(60)
@pytest.mark.skipif(not _memory_allows(GiB), reason="needs a (lazily zeroed) 1 GiB buffer")
def test_batch_over_10_gib_raises_batch_too_large_before_writing_anything(client, broker):
    client.append("t", b"first")
    blocks_dir = os.path.join(broker.root, "blocks")

    def sizes():
        return {n: os.path.getsize(os.path.join(blocks_dir, n)) for n in os.listdir(blocks_dir)}
    # The broker prepares the next file in the background (created empty, then allocated): let it finish.
    assert wait_until(lambda: all(sizes().values()), 5), sizes()
    files_before = sizes()
    stats_before = client.stats()
    one_gib = np.zeros(GiB, dtype=np.uint8)  # 1 GiB is a valid entry; 11 of them are not a valid batch
    try:
        views = [memoryview(one_gib) for _ in range(11)]
        started = time.monotonic()
        with pytest.raises(shmwal.BatchTooLarge):
            client.batch_append("t", views)
        with pytest.raises(shmwal.BatchTooLarge):
            client.batch_append("untouched", views)
        elapsed = time.monotonic() - started
        del views
    finally:
        del one_gib
    assert client.stats() == stats_before
    # The broker may make its next file meanwhile (provisioning runs on its own): the refused
    # batches must have grown none of the files that were there.
    assert {n: s for n, s in sizes().items() if n in files_before} == files_before
    assert elapsed < 5, f"refusing the batch took {elapsed:.1f} s: it looked at the payloads first"
    assert "untouched" not in client.topics()
    assert client.append("t", b"second") == 1
    assert [e.data for e in read_all(client, "t")] == [b"first", b"second"]


# ============================================================================ reading: empty, timeouts

@pytest.mark.timeout(30)
def test_reads_of_an_unknown_or_drained_topic_return_none_or_empty_at_once(client):
    started = time.monotonic()
    assert client.read_next("unknown") is None
    assert client.batch_read("unknown", 1000) == []
    assert client.read_next("unknown", timeout=0) is None
    assert client.batch_read("unknown", 1000, timeout=0) == []
    client.append("t", b"x")
    assert client.read_next("t").data == b"x"
    assert client.read_next("t") is None
    assert client.batch_read("t", 1000, timeout=0) == []
    assert client.read_next("t", checkpoint=False, timeout=0) is None
    assert time.monotonic() - started < 1.0
    assert "unknown" not in client.topics()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("topic_state", ["unknown", "drained"])
def test_read_with_timeout_waits_that_long_on_an_empty_topic(client, topic_state):
    if topic_state == "drained":
        client.append("t", b"x")
        assert client.read_next("t").offset == 0
    for call in (lambda: client.read_next("t", timeout=0.2), lambda: client.batch_read("t", 100, timeout=0.2)):
        started = time.monotonic()
        result = call()
        elapsed = time.monotonic() - started
        assert result in (None, [])
        assert 0.15 <= elapsed < 5, elapsed
    if topic_state == "unknown":
        assert "t" not in client.topics()
    assert client.append("t", b"y") == (0 if topic_state == "unknown" else 1)
    assert client.read_next("t", timeout=0.2).data == b"y"


# ============================================================================ entries

@pytest.mark.timeout(30)
def test_entry_is_immutable_and_has_topic_offset_data(client):
    client.append("t", b"payload")
    for entry in (client.read_next("t", checkpoint=False), client.batch_read("t", 100)[0]):
        assert (entry.topic, entry.offset, entry.data) == ("t", 0, b"payload")
        assert type(entry.topic) is str and type(entry.offset) is int and type(entry.data) is bytes
        for field, value in (("topic", "u"), ("offset", 7), ("data", b"other")):
            with pytest.raises(AttributeError):
                setattr(entry, field, value)
        with pytest.raises(AttributeError):
            entry.extra = 1
        assert (entry.topic, entry.offset, entry.data) == ("t", 0, b"payload")


@pytest.mark.timeout(30)
def test_peeks_do_not_move_the_cursor(client):
    client.batch_append("t", [b"a", b"b", b"c"])
    for _ in range(3):
        assert client.read_next("t", checkpoint=False).offset == 0
        assert [e.offset for e in client.batch_read("t", 100, checkpoint=False)] == [0, 1, 2]
        assert client.position("t") == 0
    assert client.read_next("t").offset == 0
    assert client.position("t") == 1
    assert client.read_next("t", checkpoint=False).offset == 1
    assert [e.offset for e in client.batch_read("t", 100, checkpoint=False)] == [1, 2]
    assert [e.offset for e in client.batch_read("t", 100)] == [1, 2]
    assert client.position("t") == 3
    assert client.read_next("t", checkpoint=False) is None


# ============================================================================ seek / position

@pytest.mark.timeout(30)
def test_seek_and_position(client):
    client.batch_append("t", [f"e{i}".encode() for i in range(10)])
    assert client.position("t") == 0
    assert client.position("t", group="g") == 0
    client.seek("t", 6)
    assert client.position("t") == 6
    assert client.read_next("t").offset == 6
    assert client.position("t") == 7
    assert client.position("t", group="g") == 0  # cursors are per group
    client.seek("t", 3)  # backwards too
    assert [e.offset for e in client.batch_read("t", 10**6)] == list(range(3, 10))
    client.seek("t", 1000)  # past the end: waits at the end
    assert client.position("t") == 10
    assert client.read_next("t") is None
    assert client.append("t", b"e10") == 10
    entry = client.read_next("t")
    assert (entry.offset, entry.data) == (10, b"e10")
    for before_oldest in (-1, -10**6):
        client.seek("t", before_oldest)
        assert client.position("t") == 0
        assert client.read_next("t").offset == 0
    client.seek("t", 5, group="g")
    assert client.position("t", group="g") == 5
    assert client.position("t") == 1


@pytest.mark.timeout(30)
def test_a_new_group_starts_at_the_oldest_entry(client):
    client.batch_append("t", [b"a", b"b", b"c"])
    assert [e.offset for e in read_all(client, "t", group="first")] == [0, 1, 2]
    assert client.position("t", group="late") == 0
    assert client.read_next("t", group="late").offset == 0
    assert [e.offset for e in client.batch_read("t", 100, group="later")] == [0, 1, 2]


# ============================================================================ batch_read caps

@pytest.mark.timeout(30)
def test_batch_read_takes_entries_while_their_payloads_fit_in_max_bytes(client):
    sizes = [100, 100, 50, 300, 10, 10, 10, 500, 1, 0, 2]
    client.batch_append("t", [bytes([i]) * n for i, n in enumerate(sizes)])
    plan = [(250, [0, 1, 2]),      # 250 exactly: all three
            (299, [3]),            # 300 > 299: the first entry alone
            (30, [4, 5, 6]),       # 30 exactly
            (0, [7]),              # max_bytes=0: the first entry alone
            (10**6, [8, 9, 10])]
    for max_bytes, offsets in plan:
        entries = client.batch_read("t", max_bytes)
        assert [e.offset for e in entries] == offsets, max_bytes
        assert [e.data for e in entries] == [bytes([i]) * sizes[i] for i in offsets]
        assert len(entries) == 1 or sum(len(e.data) for e in entries) <= max_bytes
    assert client.batch_read("t", 10**6) == []


@pytest.mark.timeout(30)
def test_batch_read_counts_empty_entries_as_zero_bytes(client):
    # "takes entries in order from the cursor on while their payloads add up to at most
    # max_bytes": an empty payload adds nothing, so it still fits when the sum is exactly
    # max_bytes (or max_bytes is 0).
    client.batch_append("t", [b"x" * 10, b"y" * 10, b"", b"", b"z"])
    assert [e.offset for e in client.batch_read("t", 20)] == [0, 1, 2, 3]
    client.batch_append("u", [b"", b"", b"", b"w"])
    assert [e.offset for e in client.batch_read("u", 0)] == [0, 1, 2]
    assert [e.offset for e in client.batch_read("u", 0)] == [3]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("read", ["batch_read", "batch_read_payloads"])
@pytest.mark.parametrize("zero_copy", [False, True])
def test_an_entry_larger_than_max_bytes_comes_alone_even_before_an_empty_one(client, read, zero_copy):
    """API.md: the first entry alone when it is larger than max_bytes.  An empty entry after
    it does not fit either (100 + 0 > 50).  The compiled path once took both when they lay in
    separate records: the budget left (50 - 100) reached hot.c's decode clamped to 0."""
    client.append("t", b"x" * 100)      # one record each: the second is decoded by hot.c
    client.append("t", b"")
    client.append("t", b"y")
    client.batch_append("u", [b"x" * 100, b"", b"y"])   # one record

    def offsets(got):
        if read == "batch_read":
            return [e.offset for e in got]
        return list(range(got.first, got.first + len(got.data)))

    for topic in ("t", "u"):
        assert offsets(getattr(client, read)(topic, 50, zero_copy=zero_copy)) == [0], topic
        assert offsets(getattr(client, read)(topic, 1, zero_copy=zero_copy)) == [1, 2], topic


@pytest.mark.timeout(30)
def test_batch_read_payloads_is_batch_read_without_the_entries(client):
    """Payloads(first, data): data[i] is the entry at offset first + i; caps, cursor,
    peeks and waits as batch_read; with nothing read, first is the group's position."""
    assert client.batch_read_payloads("none", 100) == (0, [])
    assert isinstance(client.batch_read_payloads("none", 100), shmwal.Payloads)
    client.seek("t", 0, group="peek")
    client.batch_append("t", [b"a" * 10, b"b" * 10, b"c" * 10])
    client.batch_append("t", [b"d"] * 2000)
    client.batch_append("t", [b"d"] * 500)
    assert client.batch_read_payloads("t", 20) == (0, [b"a" * 10, b"b" * 10])
    assert client.position("t") == 2
    assert client.batch_read_payloads("t", 5) == (2, [b"c" * 10])     # the first alone when larger
    got = client.batch_read_payloads("t", 10**9)
    assert got.first == 3 and got.data == [b"d"] * 2000                # never more than 2,000
    assert client.batch_read_payloads("t", 10**9).first == 2003
    assert client.batch_read_payloads("t", 10**9) == (2503, [])
    peeked = client.batch_read_payloads("t", 25, group="peek", checkpoint=False)
    assert peeked == (0, [b"a" * 10, b"b" * 10])
    assert client.position("t", group="peek") == 0
    with pytest.raises(TypeError):
        client.batch_read_payloads("t", "100")
    with pytest.raises(ValueError):
        client.batch_read_payloads("t", -1)
    with pytest.raises(shmwal.InvalidTopic):
        client.batch_read_payloads("bad/name", 100)
    later = threading.Timer(0.2, lambda: client.append("t", b"late"))
    later.start()
    try:
        assert client.batch_read_payloads("t", 100, timeout=10) == (2503, [b"late"])
    finally:
        later.join()
    started = time.monotonic()
    assert client.batch_read_payloads("t", 100, timeout=0.3) == (2504, [])
    assert time.monotonic() - started >= 0.3


@pytest.mark.timeout(60)
def test_batch_read_never_returns_more_than_2000_entries(client):
    client.seek("t", 0, group="peek")   # joins before anything is consumed (or it may start later)
    assert client.batch_append("t", [b"a"] * 2000) == range(0, 2000)
    assert client.batch_append("t", [b"b"] * 2000) == range(2000, 4000)
    client.batch_append("t", [b"c"] * 500)
    first = client.batch_read("t", 10**9)
    second = client.batch_read("t", 10**9)
    third = client.batch_read("t", 10**9)
    assert [e.offset for e in first] == list(range(0, 2000))
    assert [e.offset for e in second] == list(range(2000, 4000))
    assert [e.offset for e in third] == list(range(4000, 4500))
    assert client.batch_read("t", 10**9) == []
    assert [e.offset for e in client.batch_read("t", 10**9, group="peek", checkpoint=False)] == list(range(2000))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("io", ["auto", "mmap", "uring"])
def test_batch_read_continues_across_block_and_file_boundaries(broker, io):
    try:
        client = connect(broker, io=io)
    except shmwal.ShmwalError as exc:
        if io == "uring":
            pytest.skip(f"io_uring refused here: {exc}")
        raise
    with client:
        rng = random.Random(7)  # no empty payloads here: test_batch_read_counts_empty_entries_as_zero_bytes
        sizes = [rng.choice([1, 17, 500, 1500, 3000, 9000]) for _ in range(500)]
        datas = [rng.randbytes(n) for n in sizes]
        written = []
        i = 0
        while i < len(datas):  # singles and batches mixed
            k = rng.randint(1, 30)
            if k < 10:
                written.append(client.append("t", datas[i]))
                i += 1
            else:
                written.extend(client.batch_append("t", datas[i:i + k]))
                i += k
        assert written == list(range(len(datas)))
        stats = client.stats()["topics"]["t"]
        assert stats["blocks"] >= 12 and stats["files"] >= 3, stats  # 64 KiB blocks, 4 per file

        for group in ("small", "block", "zero", "all", "one", "p-small", "p-block", "p-zero", "p-views"):
            client.seek("t", 0, group=group)   # all join first: none reads past what another needs
        for max_bytes, group in ((7000, "small"), (65536, "block"), (0, "zero")):
            plan = expected_batches(sizes, max_bytes)
            for batch in plan:
                entries = client.batch_read("t", max_bytes, group=group)
                assert [e.offset for e in entries] == batch, (max_bytes, batch[0])
                assert [e.data for e in entries] == [datas[o] for o in batch]
                # batch_read_payloads: the same batches, without the Entry objects
                first, data = client.batch_read_payloads("t", max_bytes, group="p-" + group)
                assert first == batch[0] and data == [datas[o] for o in batch], (max_bytes, batch[0])
                assert all(type(d) is bytes for d in data)
            assert client.batch_read("t", max_bytes, group=group) == []
            assert client.batch_read_payloads("t", max_bytes, group="p-" + group) == (len(datas), [])
        views = []
        while len(views) < len(datas):
            first, data = client.batch_read_payloads("t", 65536, group="p-views", zero_copy=True)
            assert first == len(views) and data and all(type(d) is memoryview and d.readonly for d in data)
            views += data
        assert [bytes(v) for v in views] == datas
        everything = client.batch_read("t", 10**9, group="all")
        assert [e.data for e in everything] == datas
        one_by_one = [client.read_next("t", group="one") for _ in range(len(datas))]
        assert [(e.offset, e.data) for e in one_by_one] == list(enumerate(datas))


@pytest.mark.timeout(60)
def test_entries_larger_than_a_block_round_trip_exactly(client):
    rng = random.Random(1)
    one = rng.randbytes(1 * MiB)
    five = rng.randbytes(5 * MiB)
    other = rng.randbytes(MiB + 3)
    for group in ("capped", "all"):   # join before "default" has read past anything (reclamation)
        client.seek("t", 0, group=group)
    assert client.append("t", b"s0") == 0
    assert client.append("t", one) == 1
    assert client.append("t", b"s1") == 2
    assert client.batch_append("t", [b"s2", np.frombuffer(five, dtype=np.uint8), b"s3"]) == range(3, 6)
    assert client.append("t", other) == 6
    assert client.append("t", b"s4") == 7
    expected = [b"s0", one, b"s1", b"s2", five, b"s3", other, b"s4"]
    got = [client.read_next("t") for _ in expected]
    assert [e.offset for e in got] == list(range(8))
    assert [e.data for e in got] == expected
    assert client.read_next("t") is None
    # batch_read with a small cap: a large entry comes alone, small ones are grouped
    for offsets in ([0], [1], [2, 3], [4], [5], [6], [7]):
        entries = client.batch_read("t", 100, group="capped")
        assert [e.offset for e in entries] == offsets
        assert [e.data for e in entries] == [expected[o] for o in offsets]
    everything = client.batch_read("t", 10 * MiB, group="all")
    assert [e.data for e in everything] == expected


@pytest.mark.timeout(60)
def test_batches_of_2000_entries_in_one_block_and_across_blocks(client):
    small = [i.to_bytes(8, "little") for i in range(2000)]  # 2000 x 8 B: one record in one 64 KiB block
    assert client.batch_append("one", small) == range(0, 2000)
    assert client.stats()["topics"]["one"]["blocks"] == 1
    assert [e.data for e in client.batch_read("one", 10**9)] == small

    client.append("many", b"before")
    big = [bytes([i % 256]) * 100 + i.to_bytes(4, "little") for i in range(2000)]  # ~210 KB: several blocks
    assert client.batch_append("many", big) == range(1, 2001)
    assert client.batch_append("many", big[::-1]) == range(2001, 4001)
    assert client.append("many", b"after") == 4001
    assert client.stats()["topics"]["many"]["blocks"] >= 6
    entries = read_all(client, "many", max_bytes=30_000)
    assert [e.offset for e in entries] == list(range(4002))
    assert [e.data for e in entries] == [b"before", *big, *big[::-1], b"after"]


# ============================================================================ introspection

@pytest.mark.timeout(30)
def test_topics_lists_topics_from_their_first_append(client):
    assert client.topics() == []
    assert client.read_next("waited", timeout=0.05) is None
    assert client.batch_read("waited2", 10, timeout=0.05) == []
    client.seek("sought", 0)
    assert client.topics() == []
    client.append("b", b"x")
    assert client.topics() == ["b"]
    client.batch_append("a", [b"x"])
    assert sorted(client.topics()) == ["a", "b"]
    client.append("waited", b"now")
    assert sorted(client.topics()) == ["a", "b", "waited"]
    assert client.read_next("waited", timeout=0.05).data == b"now"


@pytest.mark.timeout(30)
def test_stats_reports_entries_offsets_and_group_positions(client):
    sizes = [10, 0, 300, 7, 1000]
    client.batch_append("s", [b"x" * n for n in sizes[:3]])
    client.append("s", b"x" * sizes[3])
    client.append("s", b"x" * sizes[4])
    client.append("other", b"o")
    assert [e.offset for e in client.batch_read("s", 310, group="g1")] == [0, 1, 2]
    client.seek("s", 0, group="g2")
    client.seek("s", 4, group="g3")
    stats = client.stats()
    assert set(stats) >= {"topics"}
    assert set(stats["topics"]) == {"s", "other"}
    s = stats["topics"]["s"]
    assert set(s) >= {"entries", "bytes", "first_offset", "next_offset", "files", "blocks", "groups"}
    for key in ("entries", "bytes", "first_offset", "next_offset", "files", "blocks"):
        assert type(s[key]) is int, key
    assert (s["entries"], s["first_offset"], s["next_offset"]) == (5, 0, 5)
    assert s["bytes"] >= sum(sizes)
    assert s["files"] >= 1 and s["blocks"] >= 1
    assert {g: (v["position"], v["lag"]) for g, v in s["groups"].items()} == \
        {"g1": (3, 2), "g2": (0, 5), "g3": (4, 1)}
    for group in s["groups"].values():
        assert type(group["position"]) is int and type(group["lag"]) is int
    o = stats["topics"]["other"]
    assert (o["entries"], o["first_offset"], o["next_offset"], o["groups"]) == (1, 0, 1, {})
    client.read_next("s", group="g3")
    after = client.stats()["topics"]["s"]["groups"]["g3"]
    assert (after["position"], after["lag"]) == (5, 0)


# ============================================================================ lifecycle

@pytest.mark.timeout(30)
def test_client_is_a_context_manager_and_a_closed_client_raises(broker):
    with connect(broker) as client:
        assert isinstance(client, shmwal.Client)
        assert client.append("t", b"x") == 0
    calls = every_call(client, "t")
    for name, call in calls.items():
        with pytest.raises(shmwal.ShmwalError) as info:
            call()
        assert isinstance(info.value, shmwal.ClientClosed), name
    client.close()  # closing twice is harmless
    with connect(broker) as other:
        assert other.read_next("t").data == b"x"
        assert other.append("t", b"z") == 1


@pytest.mark.timeout(30)
def test_two_brokers_with_different_keys_share_a_data_dir_independently(start_broker, data_dir):
    b1 = start_broker(key="one")
    b2 = start_broker(key="two")
    assert b1.pid != b2.pid
    with shmwal.connect(data_dir, key="one") as c1, shmwal.connect(data_dir, key="two") as c2:
        assert c1.append("t", b"from one") == 0
        assert c1.append("t", b"from one again") == 1
        assert c2.append("t", b"from two") == 0
        assert c2.append("only-two", b"x") == 0
        assert c1.topics() == ["t"]
        assert sorted(c2.topics()) == ["only-two", "t"]
        assert [e.data for e in read_all(c1, "t")] == [b"from one", b"from one again"]
        assert [e.data for e in read_all(c2, "t")] == [b"from two"]
        assert c2.stats()["topics"]["t"]["groups"]["check"]["position"] == 1


@pytest.mark.timeout(30)
def test_keys_are_sanitised_into_directory_names(start_broker, data_dir):
    start_broker(key="a/b c")
    with shmwal.connect(data_dir, key="a/b c") as c:
        c.append("t", b"x")
    assert os.path.isdir(os.path.join(data_dir, "a_b_c"))
    assert os.listdir(os.path.join(data_dir, "a_b_c"))
    assert not os.path.exists(os.path.join(data_dir, "a"))

    start_broker(key="///")
    with shmwal.connect(data_dir, key="///") as c:
        c.append("t", b"y")
        assert [e.data for e in read_all(c, "t")] == [b"y"]
    dirs = sorted(n for n in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, n)))
    hashed = [n for n in dirs if re.fullmatch(r"ns_[0-9a-f]+", n)]
    assert len(hashed) == 1, dirs
    assert set(dirs) == {"a_b_c", hashed[0]}


@pytest.mark.timeout(30)
def test_second_broker_on_the_same_directory_and_key_raises(start_broker, data_dir, client):
    client.append("t", b"x")
    with pytest.raises(shmwal.BrokerAlreadyRunning) as info:
        shmwal.Broker(data_dir, block_size=64 * KiB, blocks_per_file=4).start()
    assert isinstance(info.value, shmwal.ShmwalError)
    assert client.append("t", b"y") == 1  # the first broker is unharmed
    assert [e.data for e in read_all(client, "t")] == [b"x", b"y"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("state", ["no-directory", "stopped-broker"])
def test_connect_without_a_broker_raises_broker_unavailable_within_the_timeout(start_broker, data_dir, state):
    if state == "stopped-broker":
        start_broker().stop()
    for timeout in (0.0, 0.5):
        started = time.monotonic()
        with pytest.raises(shmwal.BrokerUnavailable) as info:
            shmwal.connect(data_dir, timeout=timeout)
        elapsed = time.monotonic() - started
        assert isinstance(info.value, ConnectionError)
        assert elapsed < timeout + 1.0, elapsed


@pytest.mark.timeout(30)
def test_connect_waits_within_its_timeout_for_a_broker_that_starts(start_broker, data_dir):
    # A broker ran here before (a directory with no broker data fails at once:
    # test_connect_errors.py), so connect waits for one to start again.
    start_broker().stop()
    result = {}

    def connecting():
        try:
            result["client"] = shmwal.connect(data_dir, timeout=20)
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=connecting)
    thread.start()
    try:
        time.sleep(0.3)  # the connect is under way before the broker exists
        start_broker()
    finally:
        thread.join(25)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    with result["client"] as client:
        assert client.append("t", b"x") == 0


def _stop_and_check(broker):
    broker.stop()
    assert wait_until(lambda: not ipc_leftovers(broker.root), 5), ipc_leftovers(broker.root)


@pytest.mark.timeout(30)
def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    target = str(tmp_path / "from-env")
    monkeypatch.setenv("SHMWAL_DATA_DIR", target)
    monkeypatch.chdir(tmp_path)
    broker = shmwal.Broker(block_size=64 * KiB, blocks_per_file=4).start()
    try:
        with shmwal.connect() as client:
            assert client.append("t", b"env") == 0
        with shmwal.connect(target) as client:
            assert client.read_next("t").data == b"env"
        assert os.path.isdir(target)
        assert not os.path.exists(tmp_path / "shmwal_data")
    finally:
        _stop_and_check(broker)


@pytest.mark.timeout(30)
def test_data_dir_defaults_to_shmwal_data_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SHMWAL_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    broker = shmwal.Broker(block_size=64 * KiB, blocks_per_file=4).start()
    try:
        with shmwal.connect() as client:
            assert client.append("t", b"cwd") == 0
        assert os.path.isdir(tmp_path / "shmwal_data")
        with shmwal.connect(str(tmp_path / "shmwal_data")) as client:
            assert client.read_next("t").data == b"cwd"
    finally:
        _stop_and_check(broker)


@pytest.mark.timeout(60)
def test_threads_sharing_one_client_append_and_read_exactly_once(client):
    """Threads of one process share the mutexes (the blocking lock lets the GIL go)."""
    writers, per_writer, readers = 4, 1500, 2
    got: list[list] = [[] for _ in range(readers)]
    errors: list = []
    done = threading.Event()

    def write(tag):
        try:
            i = 0
            while i < per_writer:
                if i % 5 == 4 and i + 1 < per_writer:
                    client.batch_append("t", [b"%d:%d" % (tag, i), b"%d:%d" % (tag, i + 1)])
                    i += 2
                else:
                    client.append("t", b"%d:%d" % (tag, i))
                    i += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read(k):
        try:
            while not (done.is_set() and client.position("t", group="g") >= writers * per_writer):
                if k % 2:
                    e = client.read_next("t", group="g", timeout=0.05)
                    batch = [] if e is None else [e]
                else:
                    batch = client.batch_read("t", 64, group="g", timeout=0.05)
                got[k] += [(e.offset, e.data) for e in batch]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(readers)]
    threads += [threading.Thread(target=write, args=(t,)) for t in range(writers)]
    for t in threads:
        t.start()
    for t in threads[readers:]:
        t.join(40)
    done.set()
    for t in threads[:readers]:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    entries = sorted(got[0] + got[1])
    assert [o for o, _ in entries] == list(range(writers * per_writer))
    for tag in range(writers):
        seqs = [int(d.split(b":")[1]) for _, d in entries if d.split(b":")[0] == b"%d" % tag]
        assert seqs == list(range(per_writer))
